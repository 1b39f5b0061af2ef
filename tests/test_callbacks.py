"Callbacks: checkpoint weight files and rotation, monitors, early stopping, LR monitor, extra validation, training health."
import math, os, warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torchmetrics.functional.image import peak_signal_noise_ratio, spectral_angle_mapper

from gan_engine.callbacks import (GANCheckpoint, GANEarlyStopping, SpectralMetrics, ValidationHook, build_callbacks,
                                  checkpoint_callbacks, extra_validation_callbacks)
from gan_engine.health import TrainingHealth, TrainingHealthWarning
from gan_engine.checkpoint import weight_paths, write_weight_files

GENERATOR_SUFFIX, EMA_SUFFIX = ".generator.pt", ".generator_ema.pt"
from gan_engine.config import ConfigError
from gan_engine.data import GANDataModule
from gan_engine.loggers import DataFrameLogger
from gan_engine.module import GANModule
from gan_engine.testing import fit_tiny, tiny_config

SAMPLES = Path(__file__).resolve().parents[1] / "data_samples"
warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*exists and is not empty.*")
warnings.filterwarnings("ignore", ".*LeafSpec.*")


def cfg_of(*overrides):
    return tiny_config(SAMPLES, ["Data.repeat=2", *overrides])


BARE = ["Training.val_every_n_steps=2", "Logging.logger=none", "Callbacks.health.enabled=false",
        "Trainer.enable_checkpointing=false"]


def fit(cfg, callbacks=(), module=None, ckpt_path=None, **kw):
    "The tiny run through the real Trainer (`fit_tiny`), validation every 2 generator steps, only the test's callbacks."
    return fit_tiny(cfg.override(*BARE), callbacks, module, ckpt_path=ckpt_path, **kw)


def load(p):
    return torch.load(p, map_location="cpu", weights_only=True)


def same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


def finite(ckpt):
    return all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


class NaNAt(GANModule):
    "Generator weights turn NaN just before generator step `nan_at`."
    nan_at = 5
    def training_step(self, batch, batch_idx):
        if self.g_step == self.nan_at - 1:
            with torch.no_grad(): next(self.generator.parameters()).fill_(float("nan"))
        return super().training_step(batch, batch_idx)


ALERTS = []
def record_alert(kind, message, step): ALERTS.append((kind, message, step))

RECORDERS = []
class OutputsRecorder(ValidationHook):
    "Keeps the last validation epoch's outputs (for reference metrics)."
    def __init__(self): self.sr, self.hr = [], []; RECORDERS.append(self)
    def reset(self, pl_module): self.sr, self.hr = [], []
    def update(self, pl_module, outputs, batch):
        self.sr.append(outputs["sr"].detach().clone()); self.hr.append(outputs["hr"].detach().clone())


# ---------------------------------------------------------------------------------------------- checkpoints
def test_topk_rotation_keeps_weight_files_with_their_checkpoint(tmp_path):
    ck = GANCheckpoint(tmp_path, filename="{step}", monitor="train/g_step", mode="max", save_top_k=2)
    removed = []
    orig = ck._remove_checkpoint
    def spy(trainer, filepath): removed.append(Path(filepath).name); orig(trainer, filepath)
    ck._remove_checkpoint = spy
    module, trainer = fit(cfg_of("Training.max_steps=8"), [ck])
    assert {"step=2.ckpt", "step=4.ckpt"} <= set(removed)           # rotation happened
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(f"{s}{x}" for s in ("step=6", "step=8", "last") for x in (".ckpt", GENERATOR_SUFFIX, EMA_SUFFIX))
    for stem in ("step=6", "step=8", "last"):
        full = load(tmp_path / f"{stem}.ckpt")                      # every file loads with weights_only=True
        g, e = (load(p) for p in weight_paths(tmp_path / f"{stem}.ckpt"))
        assert same_state(g, {k[len("generator."):]: v for k, v in full["state_dict"].items() if k.startswith("generator.")})
        assert same_state(e, full["gan_engine_ema"]["shadow"])
    g, e = (load(p) for p in weight_paths(tmp_path / "last.ckpt"))
    assert same_state(g, module.generator.state_dict()) and same_state(e, module.ema.module.state_dict())
    assert not same_state(g, e)                                     # raw and EMA really differ
    fresh = GANModule(cfg_of()).generator
    fresh.load_state_dict(e)                                        # plain state_dicts a new generator accepts


def test_last_is_the_newest_state_even_when_the_metric_worsens(tmp_path):
    # mode=min on a growing metric: only step 2 is ever top-1; Lightning alone would leave last.ckpt at step 2
    ck = GANCheckpoint(tmp_path, filename="{step}", monitor="train/g_step", mode="min", save_top_k=1)
    module, _ = fit(cfg_of("Training.max_steps=9"), [ck])
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["last.ckpt", "step=2.ckpt"]
    assert load(tmp_path / "last.ckpt")["global_step"] == 9         # saved again when training ended (step 9)
    assert same_state(load(weight_paths(tmp_path / "last.ckpt")[0]), module.generator.state_dict())


def test_last_as_link(tmp_path):
    ck = GANCheckpoint(tmp_path, filename="{step}", monitor="train/g_step", mode="max", save_top_k=1, save_last="link")
    module, _ = fit(cfg_of("Training.max_steps=6"), [ck])
    last = tmp_path / "last.ckpt"
    assert last.is_symlink() and last.resolve().name == "step=6.ckpt"
    for link, target in zip(weight_paths(last), weight_paths(tmp_path / "step=6.ckpt")):
        assert link.is_symlink() and link.resolve() == target.resolve()
    assert same_state(load(weight_paths(last)[1]), module.ema.module.state_dict())
    assert sorted(p.name for p in tmp_path.iterdir() if not p.is_symlink()) == \
        sorted(f"step=6{x}" for x in (".ckpt", GENERATOR_SUFFIX, EMA_SUFFIX))


def test_checkpoints_from_config_with_periodic_saves(tmp_path):
    cfg = cfg_of("Training.max_steps=6", "Callbacks.checkpoint.every_n_steps=3", "Callbacks.checkpoint.save_top_k=1")
    fit(cfg, checkpoint_callbacks(cfg, tmp_path))
    names = {p.name for p in tmp_path.iterdir()}
    for stem in ("periodic-step=3", "periodic-step=6", "last"):
        assert {stem + x for x in (".ckpt", GENERATOR_SUFFIX, EMA_SUFFIX)} <= names
    best = [n for n in names if n.startswith("step=") and n.endswith(".ckpt")]
    assert len(best) == 1 and "-val_psnr=" in best[0]
    assert all(finite(load(p)) for p in tmp_path.glob("*.ckpt"))
    assert checkpoint_callbacks(cfg.override("Trainer.enable_checkpointing=false"), tmp_path) == []


def test_write_weight_files_for_a_checkpoint_saved_elsewhere(tmp_path):
    module, trainer = fit(cfg_of("Training.max_steps=2"))
    trainer.save_checkpoint(tmp_path / "manual.ckpt")
    written = write_weight_files(load(tmp_path / "manual.ckpt"), tmp_path / "manual.ckpt")
    assert [p.name for p in written] == ["manual" + GENERATOR_SUFFIX, "manual" + EMA_SUFFIX]
    assert same_state(load(written[0]), module.generator.state_dict())
    with pytest.raises(ValueError, match="Expected the checkpoint's `state_dict` to hold 'gen.\\*' entries"):
        write_weight_files(load(tmp_path / "manual.ckpt"), tmp_path / "x.ckpt", prefix="gen")


def test_unknown_monitors_name_the_key_and_the_logged_metrics(tmp_path):
    with pytest.raises(ConfigError, match=r"Callbacks.checkpoint.monitor: metric 'val/psnrr' is never logged "
                                          r"\(did you mean 'val/psnr'\?\); logged metrics: \[.*'val/ssim'"):
        fit(cfg_of("Training.max_steps=2"), [GANCheckpoint(tmp_path, monitor="val/psnrr")])
    with pytest.raises(ConfigError, match=r"Callbacks.early_stopping.monitor: metric 'val/loss' is never logged.*"
                                          r"'train/loss_g'"):
        fit(cfg_of("Training.max_steps=2"), [GANEarlyStopping("val/loss")])


def test_argument_errors_name_the_value_and_the_allowed_set():
    with pytest.raises(ValueError, match=r"Expected `mode` to be one of \('min', 'max'\) but got 'best'"):
        GANCheckpoint(mode="best")
    with pytest.raises(ValueError, match=r"Expected `save_last` to be one of"):
        GANCheckpoint(save_last="copy")
    with pytest.raises(ValueError, match="Expected `save_top_k` to be -1, 0 or 1 without a `monitor`"):
        GANCheckpoint(monitor=None, save_top_k=3)
    with pytest.raises(ValueError, match="Expected `patience` to be an int >= 0 but got -1"):
        GANEarlyStopping(patience=-1)
    with pytest.raises(ValueError, match=r"Expected `action` to be one of \('warn', 'stop'\) but got 'halt'"):
        TrainingHealth(action="halt")
    with pytest.raises(ValueError, match="Expected `d_fake_threshold` to be a probability in"):
        TrainingHealth(d_fake_threshold=2)
    with pytest.raises(ConfigError, match="Callbacks.health.alert: module 'os' has no attribute 'nope'"):
        TrainingHealth(alert="os:nope")
    with pytest.raises(ValueError, match="Expected `alert` to be a callable or an import path"):
        TrainingHealth(alert="print")


# ------------------------------------------------------------------------------ early stopping, LR monitor
def test_early_stopping_stops():
    es = GANEarlyStopping("train/lr_g", mode="max", patience=2)     # a constant: never improves
    _, trainer = fit(cfg_of("Training.max_steps=12"), [es])
    assert trainer.global_step == 6 and es.wait_count == 2           # validations at 2 (best), 4, 6 -> stop


def test_build_callbacks_and_lr_monitor(tmp_path):
    cfg = cfg_of("Training.max_steps=6", "Callbacks.early_stopping.enabled=true")  # D joins at step 5
    cbs = build_callbacks(cfg, tmp_path)
    assert [type(c).__name__ for c in cbs] == ["LearningRateMonitor", "GANEarlyStopping", "TrainingHealth", "GANCheckpoint"]
    assert cbs[-1].dirpath == os.path.realpath(tmp_path / "checkpoints")
    _, trainer = fit_tiny(cfg.override("Training.val_every_n_steps=2"), run_dir=tmp_path, log_every_n_steps=1)  # the same, built by the real Trainer
    assert [type(c).__name__ for c in trainer.callbacks if type(c).__name__ in [type(x).__name__ for x in cbs]] == \
        ["LearningRateMonitor", "GANEarlyStopping", "TrainingHealth", "GANCheckpoint"]
    cols = set(trainer.logger.df.columns)
    for name in ("lr/generator", "lr/discriminator"):
        assert any(c == name or c.startswith(name + "/") for c in cols), sorted(cols)
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    none = build_callbacks(cfg.override("Logging.logger=none", "Trainer.enable_checkpointing=false",
                                        "Callbacks.early_stopping.enabled=false"), tmp_path)
    assert [type(c).__name__ for c in none] == ["TrainingHealth"]


# ---------------------------------------------------------------------------------------- extra validation
def test_extra_validation_by_name_and_import_path_match_torchmetrics():
    RECORDERS.clear()
    cfg = cfg_of("Training.max_steps=2", "Callbacks.extra_validation=[spectral, 'test_callbacks:OutputsRecorder']")
    cbs = extra_validation_callbacks(cfg)
    assert [type(c).__name__ for c in cbs] == ["SpectralMetrics", "OutputsRecorder"] and RECORDERS == [cbs[1]]
    module, trainer = fit(cfg, cbs)
    sr, hr = torch.cat(RECORDERS[0].sr), torch.cat(RECORDERS[0].hr)
    assert sr.shape[1] == 3 and len(sr) == 4                        # all 4 validation images, RGB
    m = trainer.callback_metrics
    for b in range(3):
        ref = peak_signal_noise_ratio(sr[:, b:b + 1], hr[:, b:b + 1], data_range=module.value_range, dim=(1, 2, 3))
        assert torch.isclose(m[f"val/psnr_band/{b}"], ref, atol=1e-4), (b, m[f"val/psnr_band/{b}"], ref)
    ang = torch.rad2deg(spectral_angle_mapper(sr, hr, reduction="none"))
    assert torch.isclose(m["val/sam_deg"], ang[~ang.isnan()].mean(), atol=1e-4)


def test_extra_validation_via_import_path_of_a_builtin_and_band_names():
    cfg = cfg_of("Callbacks.extra_validation=['gan_engine.callbacks:SpectralMetrics']", "Data.band_names=[r, g, b]")
    (cb,) = extra_validation_callbacks(cfg)
    assert isinstance(cb, SpectralMetrics) and cb.band_names == ["r", "g", "b"]
    with pytest.raises(ConfigError, match="Callbacks.extra_validation: unknown extra validation callback 'spectal'"):
        extra_validation_callbacks(cfg.override("Callbacks.extra_validation=[spectal]"))
    with pytest.raises(ConfigError, match="'builtins:repr' gave str; expected a lightning Callback"):
        extra_validation_callbacks(cfg.override("Callbacks.extra_validation=['builtins:repr']"))


def test_validation_hook_needs_outputs():
    class Silent(GANModule):
        def validation_step(self, batch, batch_idx): super().validation_step(batch, batch_idx)
    with pytest.raises(TypeError, match=r"Expected `validation_step` of Silent to return a dict with keys \['sr', 'hr'\]"):
        fit(cfg_of("Training.max_steps=2"), [SpectralMetrics()], module=Silent)


# ------------------------------------------------------------------------------------------- training health
def test_nonfinite_loss_stops_before_any_broken_checkpoint(tmp_path):
    ALERTS.clear()
    health = TrainingHealth(action="stop", alert="test_callbacks:record_alert")
    ck = GANCheckpoint(tmp_path / "ck", filename="{step}", monitor="train/g_step", mode="max")
    with pytest.warns(TrainingHealthWarning, match=r"nonfinite_loss.*generator step 5: .*train/loss_g=nan"):
        _, trainer = fit(cfg_of("Training.max_steps=12"), [health, ck], module=NaNAt, logger=DataFrameLogger(tmp_path),
                         log_every_n_steps=1)
    assert trainer.global_step == 5 and [(k, s) for k, _, s in ALERTS] == [("nonfinite_loss", 5)]
    assert [e["kind"] for e in health.events] == ["nonfinite_loss"] and health.nonfinite_step == 5
    df = trainer.logger.df
    assert df["health/nonfinite_loss"].dropna().to_dict() == {4: 1.0}  # the row of step 5's train metrics
    assert math.isnan(df.loc[4, "train/loss_g"])
    assert "val/psnr" not in df or df["val/psnr"].dropna().index.max() < 4  # no validation of NaN weights
    ckpts = sorted(p.name for p in (tmp_path / "ck").glob("*.ckpt"))
    assert ckpts == ["last.ckpt", "step=2.ckpt", "step=4.ckpt"]
    assert all(finite(load(p)) for p in (tmp_path / "ck").glob("*.ckpt"))
    assert load(tmp_path / "ck" / "last.ckpt")["global_step"] == 4
    assert all(torch.isfinite(v).all() for p in (tmp_path / "ck").glob("*.pt") for v in load(p).values()
               if v.is_floating_point())


def test_nonfinite_stop_also_holds_lightnings_own_checkpoint(tmp_path):
    ck = ModelCheckpoint(tmp_path, filename="{step}", save_top_k=-1, save_last=True)
    with pytest.warns(TrainingHealthWarning):
        _, trainer = fit(cfg_of("Training.max_steps=12"), [TrainingHealth(action="stop"), ck], module=NaNAt)
    assert trainer.global_step == 5
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["last.ckpt", "step=2.ckpt", "step=4.ckpt"]
    assert all(finite(load(p)) for p in tmp_path.glob("*.ckpt"))


def test_warn_only_keeps_training_but_never_saves_nonfinite_weights(tmp_path):
    ck = GANCheckpoint(tmp_path, filename="{step}", monitor="train/g_step", mode="max", save_top_k=-1)
    health = TrainingHealth(action="warn")
    with pytest.warns(UserWarning, match="GANCheckpoint: no checkpoint saved at step 6: some weights are not finite"):
        _, trainer = fit(cfg_of("Training.max_steps=8"), [health, ck], module=NaNAt)
    assert trainer.global_step == 8 and [e["step"] for e in health.events] == [5]
    assert [s for s, _ in ck.refused] == [6, 8]
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["last.ckpt", "step=2.ckpt", "step=4.ckpt"]
    assert load(tmp_path / "last.ckpt")["global_step"] == 4


class DWins(GANModule):
    "The logged D(real)/D(fake) say the discriminator wins completely."
    def _discriminator_step(self, items):
        out = super()._discriminator_step(items)
        out.update(d_real=torch.tensor(0.95), d_fake=torch.tensor(0.002))
        return out


def test_discriminator_that_wins_is_reported_and_stops(tmp_path):
    ALERTS.clear()
    health = TrainingHealth(action="stop", d_win_steps=3, alert=record_alert)
    with pytest.warns(TrainingHealthWarning, match=r"discriminator wins completely: D\(real\)=0.95 > 0.891 .* for 3 "
                                                   r"consecutive generator steps \(up to step 7\)"):
        _, trainer = fit(cfg_of("Training.max_steps=12"), [health], module=DWins, logger=DataFrameLogger(tmp_path),
                         log_every_n_steps=1)
    assert trainer.global_step == 7                                  # D joins at step 5 (after 4 pretraining steps)
    assert [(k, s) for k, _, s in ALERTS] == [("discriminator_wins", 7)]
    assert trainer.logger.df["health/discriminator_wins"].dropna().to_dict() == {6: 1.0}
    assert not health.blocks_checkpoints                             # weights are fine: checkpoints stay allowed


def test_honest_discriminator_and_healthy_run_report_nothing():
    health = TrainingHealth(action="stop", d_win_steps=1, stall_window=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrainingHealthWarning)
        _, trainer = fit(cfg_of("Training.max_steps=8"), [health])
    assert trainer.global_step == 8 and health.events == []


def test_stalled_generator_reported_per_window_and_phase():
    # the generator's learning rate is constant: no window ever improves; the window restarts with the phase
    health = TrainingHealth(stall_window=2, stall_tolerance=0.01, stall_monitor="train/lr_g")
    with pytest.warns(TrainingHealthWarning, match=r"train/lr_g has stalled: its mean over generator steps 3-4"):
        fit(cfg_of("Training.max_steps=8"), [health])
    assert [(e["kind"], e["step"]) for e in health.events] == [("generator_stalled", 4), ("generator_stalled", 8)]


def test_health_state_round_trip_through_a_checkpoint(tmp_path):
    health = TrainingHealth(d_win_steps=50, stall_window=4)
    ck = GANCheckpoint(tmp_path, filename="{step}", monitor="train/g_step")
    fit(cfg_of("Training.max_steps=7"), [health, ck], module=DWins)
    assert health.d_win_streak == 3 and health._stall["count"] > 0
    state = load(tmp_path / "last.ckpt")["callbacks"]["TrainingHealth"]
    again = TrainingHealth(d_win_steps=50, stall_window=4)
    again.load_state_dict(state)
    assert again.state_dict() == health.state_dict()
    # resuming continues the streak and the window where they were
    resumed = TrainingHealth(d_win_steps=5, stall_window=4)
    with pytest.warns(TrainingHealthWarning, match="for 5 consecutive generator steps"):
        fit(cfg_of("Training.max_steps=9"), [resumed, GANCheckpoint(tmp_path / "b", monitor="train/g_step")], module=DWins,
            ckpt_path=tmp_path / "last.ckpt")
    assert [(e["kind"], e["step"]) for e in resumed.events] == [("discriminator_wins", 9)]


DDP_SCRIPT = '''
import json, sys, warnings
warnings.filterwarnings("ignore")
from pathlib import Path
import torch, lightning as L
from gan_engine.callbacks import GANCheckpoint, SpectralMetrics
from gan_engine.health import TrainingHealth
from gan_engine.data import GANDataModule
from gan_engine.module import GANModule
from gan_engine.testing import fit_tiny, tiny_config

class NaNOnRank1(GANModule):
    def training_step(self, batch, batch_idx):
        if self.g_step == 4 and self.global_rank == 1:
            with torch.no_grad(): next(self.generator.parameters()).fill_(float("nan"))
        return super().training_step(batch, batch_idx)

samples, out = sys.argv[1], Path(sys.argv[2])
cfg = tiny_config(samples, ["Data.repeat=2", "Training.max_steps=12"])
L.seed_everything(0, verbose=False)
health = TrainingHealth(action="stop")
t = L.Trainer(max_steps=12, accelerator="cpu", devices=2, strategy="ddp_find_unused_parameters_true", logger=False,
              enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, val_check_interval=2,
              check_val_every_n_epoch=None,
              callbacks=[health, SpectralMetrics(), GANCheckpoint(out, filename="{step}", monitor="train/g_step")])
t.fit(NaNOnRank1(cfg), datamodule=GANDataModule(cfg))
(out / f"rank{t.global_rank}.json").write_text(json.dumps(
    {"step": t.global_step, "kinds": [e["kind"] for e in health.events],
     "psnr_band": float(t.callback_metrics["val/psnr_band/0"]), "psnr": float(t.callback_metrics["val/psnr"])}))
'''


def test_two_process_ddp_agrees_on_health_and_metrics(tmp_path):
    "A NaN on rank 1 only stops both ranks at the same step (no hang); epoch metrics are identical on both ranks."
    import json, subprocess, sys
    if not torch.distributed.is_available(): pytest.skip("torch.distributed not available")
    script, out = tmp_path / "ddp_health.py", tmp_path / "out"
    script.write_text(DDP_SCRIPT); out.mkdir()
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    r = subprocess.run([sys.executable, str(script), str(SAMPLES), str(out)], capture_output=True, text=True,
                       timeout=300, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    reports = [json.loads((out / f"rank{i}.json").read_text()) for i in (0, 1)]
    assert [x["step"] for x in reports] == [5, 5] and all(x["kinds"] == ["nonfinite_loss"] for x in reports)
    assert reports[0]["psnr_band"] == reports[1]["psnr_band"]
    assert sorted(p.name for p in out.glob("*.ckpt")) == ["last.ckpt", "step=2.ckpt", "step=4.ckpt"]
    assert all(finite(load(p)) for p in out.glob("*.ckpt"))
