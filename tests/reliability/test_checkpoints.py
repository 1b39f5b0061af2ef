"""Issue 15, reliability: checkpoint and weight files that are hostile, from another network, cut short or incomplete.

Every path a user takes with a file (`gan-engine predict --ckpt`, `validate --ckpt`, `train --resume`,
`load_predictor`, `fit(resume=...)`, `Model.load_checkpoint`, `GANCheckpointIO`, `load_state_file`,
`GANModule.load_from_checkpoint`) either refuses it with a message that names the file and says what is wrong,
or goes on with a stated default. Nothing in a file ever runs code.
"""
import logging, os, pickle, random
from pathlib import Path

import pytest
import torch

from gan_engine.checkpoint import (EMA_KEY, STATE_KEY, CheckpointError, GANCheckpointIO, load_state_file,
                                   read_checkpoint, save_state_file, weight_paths)
from gan_engine.cli import main
from gan_engine.config import ConfigError, save_config
from gan_engine.inference import load_predictor
from gan_engine.module import GANModule
from gan_engine.testing import tiny_config
from gan_engine.trainer import fit

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "data_samples"
QUIET = ["Trainer.enable_progress_bar=false", "Trainer.enable_model_summary=false"]
SHORT = ["Training.max_steps=4", "Training.val_every_n_steps=2", "Trainer.limit_val_batches=1", "Data.repeat=1",
         "Training.g_pretrain_steps=2", "Training.adv_loss_ramp_steps=0", "Logging.images_every_n_steps=0", *QUIET]
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
pytestmark = [pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
              pytest.mark.filterwarnings("ignore:.*LeafSpec.*"),
              pytest.mark.filterwarnings("ignore:.*exists and is not empty.*"),
              pytest.mark.filterwarnings("ignore:.*smaller than the logging interval.*")]


def cfg_in(path, *overrides):
    return tiny_config(SAMPLES, [f"Logging.output_dir={path}", *SHORT, *overrides])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    "A real 4-step run (validation at steps 2 and 4): its run directory, last.ckpt and config."
    tmp = tmp_path_factory.mktemp("run")
    r = fit(cfg_in(tmp))
    last = r.run_dir / "checkpoints" / "last.ckpt"
    assert last.is_file()
    return r.run_dir, last, r.module.cfg


# ------------------------------------------------------------------------------------------ hostile files
class RunsCode:
    "Unpickling this calls os.system: a marker file appears if anything ever unpickles it."
    def __init__(self, marker): self.marker = str(marker)
    def __reduce__(self): return (os.system, (f"touch {self.marker}",))


def hostile_files(folder:Path, marker:Path, last:Path)->dict:
    "name -> file, each written the way a user could meet it."
    folder.mkdir(exist_ok=True)
    good = torch.load(last, weights_only=True)
    evil = {**good, "extra": RunsCode(marker)}            # a real checkpoint with one poisoned entry
    files = {}
    files["evil zip"] = folder / "evil.ckpt"; torch.save(evil, files["evil zip"], pickle_protocol=2)
    files["evil legacy"] = folder / "evil_legacy.ckpt"
    torch.save(evil, files["evil legacy"], _use_new_zipfile_serialization=False)
    files["evil raw pickle"] = folder / "evil_raw.ckpt"
    files["evil raw pickle"].write_bytes(pickle.dumps(RunsCode(marker), protocol=2))
    data = last.read_bytes()
    files["truncated"] = folder / "half.ckpt"; files["truncated"].write_bytes(data[:len(data) // 2])
    files["empty"] = folder / "empty.ckpt"; files["empty"].write_bytes(b"")
    files["random bytes"] = folder / "random.ckpt"
    files["random bytes"].write_bytes(random.Random(0).randbytes(4096))
    return files


WHAT = {"evil zip": "not a plain-weights checkpoint", "evil legacy": "not a plain-weights checkpoint",
        "evil raw pickle": "not a plain-weights checkpoint", "truncated": "truncated or corrupt",
        "empty": "is empty (0 bytes)", "random bytes": "truncated or corrupt"}


@pytest.fixture(scope="module")
def bad(run, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    marker = tmp / "pwned"
    return hostile_files(tmp / "files", marker, run[1]), marker


def _python_paths(run, tmp):
    "name -> a callable taking a file: the Python ways into a checkpoint."
    run_dir, last, cfg = run
    return {
        "read_checkpoint": read_checkpoint,
        "load_state_file": load_state_file,
        "GANCheckpointIO": lambda p: GANCheckpointIO().load_checkpoint(p),
        "load_predictor": load_predictor,
        "fit(resume=)": lambda p: fit(cfg_in(tmp / "resumed"), resume=p),
        "Model.load_checkpoint": lambda p: fit(cfg_in(tmp / "init", f"Model.load_checkpoint={p}")),
    }


@pytest.mark.parametrize("kind", list(WHAT))
def test_python_paths_refuse_and_name_the_file(run, bad, tmp_path, kind):
    """Before: a pickle was refused with torch's own 'Weights only load failed' text (which also suggests
    weights_only=False), truncated, empty and random files all read 'loading failed: <torch error>'."""
    files, marker = bad
    f = files[kind]
    for name, load in _python_paths(run, tmp_path).items():
        with pytest.raises(CheckpointError) as e: load(f)
        msg = str(e.value)
        assert str(f) in msg and WHAT[kind] in msg, f"{name}: {msg}"
        assert "weights_only=False" not in msg, f"{name} suggests unsafe loading: {msg}"
    assert not marker.exists(), "code from a checkpoint ran"


@pytest.mark.parametrize("kind", ["evil zip", "evil raw pickle", "truncated", "empty"])
def test_load_from_checkpoint_never_runs_code(run, bad, kind):
    "Lightning's own `GANModule.load_from_checkpoint` (not a gan_engine path) refuses too and runs nothing."
    files, marker = bad
    with pytest.raises(Exception):
        GANModule.load_from_checkpoint(files[kind], weights_only=True)
    with pytest.raises(Exception):
        GANModule.load_from_checkpoint(files[kind])   # Lightning's default
    assert not marker.exists()


def _cli(capsys, argv):
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return rc, err


def _one_paragraph(err):
    return "Traceback" not in err and err.strip().count("\n\n") == 0 and err.startswith("gan-engine ")


@pytest.mark.parametrize("kind", list(WHAT))
def test_cli_refuses_with_one_paragraph(run, bad, tmp_path, capsys, kind):
    "predict --ckpt, validate --ckpt and train --resume (with and without --config): exit 2, one paragraph naming the file."
    run_dir, last, cfg = run
    files, marker = bad
    f = files[kind]
    cfg_file = save_config(cfg, tmp_path / "config.yaml")
    cases = {"predict": ["predict", "--ckpt", f, "--input", SAMPLES / "sr" / "val", "--output", tmp_path / "out"],
             "validate": ["validate", "--ckpt", f],
             "train --resume": ["train", "--resume", f],
             "train --resume --config": ["train", "--resume", f, "--config", cfg_file, f"Logging.output_dir={tmp_path}/r"]}
    for name, argv in cases.items():
        rc, err = _cli(capsys, argv)
        assert rc == 2 and _one_paragraph(err), f"{name}: rc={rc}\n{err[-3000:]}"
        assert str(f) in err and WHAT[kind] in err, f"{name}: {err}"
    assert not marker.exists()




@pytest.mark.parametrize("kind", ["evil zip", "truncated", "empty"])
def test_cli_validate_with_config_refuses_with_one_paragraph(run, bad, tmp_path, capsys, kind):
    run_dir, last, cfg = run
    files, marker = bad
    f = files[kind]
    rc, err = _cli(capsys, ["validate", "--ckpt", f, "--config", save_config(cfg, tmp_path / "config.yaml")])
    assert not marker.exists()
    assert rc == 2 and _one_paragraph(err) and str(f) in err and WHAT[kind] in err, f"rc={rc}\n{err[-3000:]}"


def test_weight_files_truncated_empty_random(run, tmp_path):
    ".pt and .safetensors generator weight files cut short, empty or random: refused naming the file, nothing loads."
    run_dir, last, cfg = run
    for fmt in ("pt", "safetensors"):
        g, _ = weight_paths(last, fmt)
        if not g.exists(): save_state_file(load_state_file(weight_paths(last, "pt")[0]), g)
        data = g.read_bytes()
        for kind, content in {"truncated": data[:len(data) // 2], "empty": b"",
                              "random bytes": random.Random(1).randbytes(2048)}.items():
            f = tmp_path / f"{kind.replace(' ', '_')}.generator.{fmt}"
            f.write_bytes(content)
            for load in (load_state_file, lambda p: load_predictor(p, config=cfg, value_range=(0, 255))):
                with pytest.raises(CheckpointError, match="Expected '" + str(f).replace("\\", "\\\\")) as e: load(f)
                assert "truncated" in str(e.value) or "empty" in str(e.value) or "safetensors" in str(e.value), str(e.value)


def test_pickle_in_a_weights_file_never_runs(tmp_path):
    "A generator `.pt` weights file whose unpickling would run code."
    marker = tmp_path / "pwned"
    f = tmp_path / "x.generator.pt"
    torch.save({"head.0.weight": torch.zeros(1), "x": RunsCode(marker)}, f, pickle_protocol=2)
    for load in (load_state_file, lambda p: load_predictor(p, config=tiny_config(SAMPLES), value_range=(0, 255))):
        with pytest.raises(CheckpointError, match="not a plain-weights checkpoint"): load(f)
    assert not marker.exists()


# ---------------------------------------------------------------------------------- another architecture
OTHER = ["Generator.n_channels=16", "Generator.n_blocks=2"]


@pytest.fixture(scope="module")
def other(run, tmp_path_factory):
    "A real checkpoint of another generator (16 channels, 2 blocks) and its weight file."
    tmp = tmp_path_factory.mktemp("other")
    r = fit(cfg_in(tmp, *OTHER, "Training.max_steps=2", "Training.val_every_n_steps=0", "Trainer.limit_val_batches=0"))
    return r.run_dir / "checkpoints" / "last.ckpt"


MISMATCH = r"head\.0\.weight: \(16, 3, 3, 3\) in the file, \(8, 3, 3, 3\) expected"


def test_other_architecture_predict(run, other, tmp_path, capsys):
    "load_predictor / predict with a config that builds another generator: the file and the mismatched parameters."
    run_dir, last, cfg = run
    g, _ = weight_paths(other, "pt")
    for f, call in ((other, lambda: load_predictor(other, config=cfg)),
                    (g, lambda: load_predictor(g, config=cfg, value_range=(0, 255)))):
        with pytest.raises(CheckpointError, match=MISMATCH) as e: call()
        assert str(f) in str(e.value), str(e.value)


def test_other_architecture_model_load_checkpoint(other, tmp_path):
    with pytest.raises(ConfigError, match="Model.load_checkpoint: .*last.ckpt.* does not match.*head.0.weight"):
        fit(cfg_in(tmp_path / "b", f"Model.load_checkpoint={other}"))




def test_other_architecture_resume(run, other, tmp_path):
    "fit(resume=) with a config that builds other networks than the checkpoint's."
    with pytest.raises(CheckpointError, match=MISMATCH) as e: fit(cfg_in(tmp_path / "a"), resume=other)
    assert str(other) in str(e.value), str(e.value)


@pytest.mark.parametrize("how", ["validate --config", "validate overrides", "train --resume --config"])
def test_other_architecture_cli(run, other, tmp_path, capsys, how):
    "validate/train with a config that builds another generator than the checkpoint's: one paragraph naming the file."
    run_dir, last, cfg = run
    cfg_file = save_config(cfg, tmp_path / "config.yaml")
    argv = {"validate --config": ["validate", "--ckpt", other, "--config", cfg_file],
            "validate overrides": ["validate", "--ckpt", other, "Generator.n_channels=8", "Generator.n_blocks=1"],
            "train --resume --config": ["train", "--resume", other, "--config", cfg_file,
                                        f"Logging.output_dir={tmp_path}/r"]}[how]
    rc, err = _cli(capsys, argv)
    assert rc == 2 and _one_paragraph(err), f"rc={rc}\n{err[-3000:]}"
    assert str(other) in err and "head.0.weight" in err, err


# --------------------------------------------------------------------- checkpoints without EMA or counters
def _without(last:Path, folder:Path, *keys)->Path:
    state = torch.load(last, weights_only=True)
    for k in keys: state.pop(k, None)
    for cb in list(state.get("callbacks", {})):      # the EMA callback's own entry, if any
        if "EMA" in cb and EMA_KEY in keys: state["callbacks"].pop(cb)
    out = folder / f"no_{'_'.join(keys)}.ckpt"
    torch.save(state, out)
    return out


def test_predict_without_ema_falls_back_with_a_warning(run, tmp_path, capsys):
    run_dir, last, cfg = run
    f = _without(last, tmp_path, EMA_KEY)
    with pytest.warns(UserWarning, match=f"'{f}' has no EMA generator weights .*using the training weights"):
        p = load_predictor(f)
    assert p.weights == "raw"
    with pytest.warns(UserWarning, match="no EMA generator weights"):
        rc, err = _cli(capsys, ["predict", "--ckpt", f, "--input", SAMPLES / "sr" / "val", "--output", tmp_path / "o"])
    assert rc == 0, err


def test_resume_without_ema_starts_it_from_the_generator(run, tmp_path):
    "Resuming continues; the stated default: the EMA restarts from the loaded generator weights."
    run_dir, last, cfg = run
    f = _without(last, tmp_path, EMA_KEY)
    with pytest.warns(UserWarning, match="no EMA state.*initialising the generator EMA from the loaded generator"):
        r = fit(cfg_in(tmp_path / "r", "Training.max_steps=6"), resume=f)
    assert r.module.g_step == 6 and r.trainer.global_step == 6


def test_resume_without_counters_is_stated(run, tmp_path):
    """A checkpoint without gan_engine's training state (step counters, random states): resuming continues from
    Lightning's own step counter, with a warning naming what is missing. Before: 'step counters start at 0' while
    Lightning went on from the checkpoint's step, so the generator re-ran its pretraining and its schedules."""
    run_dir, last, cfg = run
    f = _without(last, tmp_path, STATE_KEY)
    with pytest.warns(UserWarning, match="no gan_engine training state") as w:
        r = fit(cfg_in(tmp_path / "r", "Training.max_steps=6"), resume=f)
    msgs = " ".join(str(x.message) for x in w)
    assert r.trainer.global_step == 6
    assert r.module.g_step == 6, f"g_step {r.module.g_step} != global_step 6: {msgs}"
