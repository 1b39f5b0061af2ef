"""Issue 15, reliability: the disk fills up (or the run folder turns read-only) while a run writes.

Simulated with a failing writer: from a chosen write on, `open(..., "w")` of the matching files under the run
directory gives a file whose `write` stores half the data and then raises `OSError(ENOSPC)`, as a full disk does.
The contract: the previous checkpoints, weight files and metrics.csv stay byte-identical, no half-written file is
left under a real name or as a temporary file, and training stops at once with a message that names the file and
the OS error (a run that cannot save would lose its work, so it does not go on silently).
"""
import builtins, errno, logging, os
from pathlib import Path

import pytest
import torch

from gan_engine.checkpoint import read_checkpoint, save_atomic
from gan_engine.cli import main
from gan_engine.config import save_config
from gan_engine.images import DataError
from gan_engine.loggers import DataFrameLogger
from gan_engine.testing import tiny_config
from gan_engine.trainer import fit

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "data_samples"
QUIET = ["Trainer.enable_progress_bar=false", "Trainer.enable_model_summary=false"]
SHORT = ["Training.max_steps=8", "Training.val_every_n_steps=2", "Trainer.limit_val_batches=1", "Data.repeat=1",
         "Training.g_pretrain_steps=2", "Training.adv_loss_ramp_steps=0", "Logging.images_every_n_steps=0", *QUIET]
ENOSPC = os.strerror(errno.ENOSPC)   # "No space left on device"
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
pytestmark = [pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
              pytest.mark.filterwarnings("ignore:.*LeafSpec.*"),
              pytest.mark.filterwarnings("ignore:.*exists and is not empty.*"),
              pytest.mark.filterwarnings("ignore:.*smaller than the logging interval.*")]


def cfg_in(path, *overrides):
    return tiny_config(SAMPLES, [f"Logging.output_dir={path}", *SHORT, *overrides])


class _HalfWriter:
    "A file that stores half of the first write, then fails as a full disk does."
    def __init__(self, f, disk): self._f, self._disk = f, disk
    def write(self, data):
        self._f.write(data[:len(data) // 2]); self._f.flush()
        raise OSError(errno.ENOSPC, ENOSPC)
    def __getattr__(self, name): return getattr(self._f, name)
    def __enter__(self): return self
    def __exit__(self, *exc): self._f.close()


class FullDisk:
    "Patch `open`: writes of files under `root` whose name contains one of `names` fail from the (after+1)-th on."
    def __init__(self, monkeypatch, root:Path, names=("ckpt",), after:int=0):
        self.root, self.names, self.after = Path(root).resolve(), names, after
        self.writes, self.failures, self.before, self.failed_names = 0, 0, None, []
        real = builtins.open
        def fake(file, mode="r", *args, **kwargs):
            p = Path(os.fspath(file)) if isinstance(file, (str, os.PathLike)) else None
            if (p is not None and any(c in mode for c in "wax+") and self.root in p.resolve().parents
                    and any(n in p.name for n in self.names)):
                self.writes += 1
                if self.writes > self.after:
                    if self.before is None: self.before = snapshot(self.root)   # just before the first failing write
                    self.failed_names.append(p.name); self.failures += 1   # one per file that could not be written
                    return _HalfWriter(real(file, mode, *args, **kwargs), self)
            return real(file, mode, *args, **kwargs)
        monkeypatch.setattr(builtins, "open", fake)


def snapshot(root:Path)->dict:
    return {p.relative_to(root): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def leftovers(root:Path)->list:
    return [p.name for p in Path(root).rglob("*") if ".tmp" in p.name]


def assert_kept(disk:FullDisk, exclude=("images",)):
    "Every file there before the failing write is byte-identical now, and nothing half-written is left."
    assert disk.before is not None, "the failing write never happened"
    root = disk.root
    now = snapshot(root)
    for rel, data in disk.before.items():
        if set(rel.parts) & set(exclude) or rel.name == "metrics.csv" and "metrics.csv" not in disk.names: continue
        assert rel in now, f"{rel} was removed"
        assert now[rel] == data, f"{rel} changed"
    assert not leftovers(root), f"temporary files left: {leftovers(root)}"


# ------------------------------------------------------------------------------------------- unit level
def test_write_atomic_keeps_the_old_file_and_names_the_error(tmp_path, monkeypatch):
    p = tmp_path / "last.ckpt"
    save_atomic({"a": torch.ones(2)}, p)
    old = p.read_bytes()
    disk = FullDisk(monkeypatch, tmp_path)
    with pytest.raises(OSError) as e: save_atomic({"a": torch.zeros(1000)}, p)
    assert isinstance(e.value, DataError) and e.value.errno == errno.ENOSPC
    assert str(p) in str(e.value) and ENOSPC in str(e.value), str(e.value)
    assert p.read_bytes() == old and not leftovers(tmp_path) and disk.failures == 1


def test_metrics_csv_write_keeps_the_old_file(tmp_path, monkeypatch):
    "Before: a failed write left `metrics.csv.tmp` behind and raised pandas' bare OSError."
    lg = DataFrameLogger(tmp_path, flush_every_n_steps=1)
    lg.log_metrics({"loss": 1.0}, step=0)
    old = lg.metrics_path.read_bytes()
    disk = FullDisk(monkeypatch, tmp_path, names=("metrics.csv",))
    with pytest.raises(DataError) as e: lg.log_metrics({"loss": 0.5}, step=1)
    assert str(lg.metrics_path) in str(e.value) and ENOSPC in str(e.value), str(e.value)
    assert lg.metrics_path.read_bytes() == old and not leftovers(tmp_path)
    with pytest.warns(UserWarning, match="metrics.csv"): lg.finalize("failed")   # never hides the run's own error
    assert disk.failures == 2 and lg.metrics_path.read_bytes() == old
    with pytest.raises(DataError, match="metrics.csv"): lg.finalize("success")   # a finished run must say so


def test_image_write_keeps_no_half_png(tmp_path, monkeypatch):
    lg = DataFrameLogger(tmp_path)
    FullDisk(monkeypatch, tmp_path, names=(".png",))
    with pytest.raises(DataError, match=f"step_0000003.png.*{ENOSPC}"):
        lg.log_image("val/panels", [torch.zeros(8, 8, 3, dtype=torch.uint8).numpy()], step=3)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


# ---------------------------------------------------------------------------------- during a real run
@pytest.mark.parametrize("after", [2, 3], ids=["new top-k checkpoint fails", "last.ckpt overwrite fails"])
def test_checkpoint_write_fails_mid_run(tmp_path, monkeypatch, after):
    "Checkpoints at steps 2 (top-k + last) and 4: the write after `after` good ones fails."
    disk = FullDisk(monkeypatch, tmp_path, names=("ckpt",), after=after)
    with pytest.raises(DataError) as e: fit(cfg_in(tmp_path))
    msg = str(e.value)
    failed = disk.failed_names[0].split(".tmp-")[0].lstrip(".")
    assert failed in msg and ENOSPC in msg and "stop" in msg, msg
    assert disk.failures == 1, f"{disk.failures} failing writes: {disk.failed_names}"   # stopped at the first
    assert_kept(disk)
    ckpts = next(tmp_path.rglob("last.ckpt")).parent
    assert read_checkpoint(ckpts / "last.ckpt")["global_step"] == 2        # the previous one, whole and loadable
    assert not (ckpts / failed).exists() or failed == "last.ckpt"


def test_metrics_write_fails_mid_run(tmp_path, monkeypatch):
    "metrics.csv (written at the first logged step and every 2 steps) fails at its 3rd write: the run stops there."
    disk = FullDisk(monkeypatch, tmp_path, names=("metrics.csv",), after=2)
    cfg = cfg_in(tmp_path)
    with pytest.raises(DataError) as e:
        fit(cfg, logger=DataFrameLogger(tmp_path / "run", flush_every_n_steps=2))
    assert "metrics.csv" in str(e.value) and ENOSPC in str(e.value) and "stop" in str(e.value), str(e.value)
    assert_kept(disk)
    assert disk.failures <= 2   # the failing write, and at most the final flush (which only warns)


def test_disk_full_everywhere_cli(tmp_path, monkeypatch, capsys):
    "`gan-engine train`: every run file fails from the 3rd write on: exit 2, one paragraph naming the file and the error."
    cfg_file = save_config(cfg_in(tmp_path / "runs"), tmp_path / "config.yaml")
    disk = FullDisk(monkeypatch, tmp_path / "runs", names=("ckpt", "metrics.csv", ".pt", ".png"), after=3)
    rc = main(["train", "--config", str(cfg_file)])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and err.startswith("gan-engine train: error:"), err
    assert ENOSPC in err and disk.failed_names[0].split(".tmp-")[0].lstrip(".") in err, err
    assert_kept(disk)
    assert disk.failures <= 2, disk.failed_names
