"""Issue 9: one step clock, one checkpoint path, and every workflow resumes exactly.

Each test here failed on the code before the issue (the failing behaviour is named in its docstring) and
checks the behaviour users rely on, on the paths they take: `fit()` with the config, `fit(resume=last.ckpt)`,
`trainer.validate(ckpt_path=...)`, the `gan-engine` command, a real `kill -9`, and DDP across two "nodes".
"""
import json, math, os, random, signal, socket, subprocess, sys, time
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from gan_engine.callbacks import GANEarlyStopping, build_callbacks
from gan_engine.health import TrainingHealth
from gan_engine.checkpoint import (EMA_KEY, generator_weights, load_state_file, read_checkpoint, state_part,
                                   weight_paths)
from gan_engine.cli import main
from gan_engine.config import ConfigError, ConfigWarning, load_config
from gan_engine.data import GANDataModule
from gan_engine.inference import load_predictor
from gan_engine.loggers import DataFrameLogger
from gan_engine.module import GANModule
from gan_engine.testing import fit_tiny, tiny_config
from gan_engine.steps import StepPlan
from gan_engine.trainer import build_trainer, fit

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "data_samples"
QUIET = ["Trainer.enable_progress_bar=false", "Trainer.enable_model_summary=false"]
pytestmark = [pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
              pytest.mark.filterwarnings("ignore:.*LeafSpec.*"),
              pytest.mark.filterwarnings("ignore:.*exists and is not empty.*"),
              pytest.mark.filterwarnings("ignore:.*smaller than the logging interval.*")]


def tiny(*overrides):
    return tiny_config(SAMPLES, list(overrides))


def cfg_in(path, *overrides):
    "The tiny config writing its run under `path` (3 training batches per epoch)."
    return tiny(f"Logging.output_dir={path}", *QUIET, *overrides)


BARE = ["Logging.logger=none", "Callbacks.health.enabled=false", "Trainer.enable_checkpointing=false"]
NO_VAL = {"limit_val_batches": 0}


def run_steps(cfg, max_steps, callbacks=(), **kw):
    "`max_steps` generator steps of `cfg` (its step plan unchanged) through the real Trainer (`fit_tiny`), only the test's callbacks."
    return fit_tiny(cfg.override(*BARE), callbacks, max_steps=max_steps, **kw)


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def tensors(x, prefix=""):
    "Every tensor and number in a nested checkpoint structure, by path."
    if isinstance(x, torch.Tensor): return {prefix: x}
    if isinstance(x, dict): return {k: v for key, val in x.items() for k, v in tensors(val, f"{prefix}/{key}").items()}
    if isinstance(x, (list, tuple)): return {k: v for i, val in enumerate(x) for k, v in tensors(val, f"{prefix}[{i}]").items()}
    if isinstance(x, (int, float)) and not isinstance(x, bool): return {prefix: torch.tensor(float(x))}
    return {}


def training_state(ckpt):
    "What must be identical after an exact resume: weights, EMA, optimiser and schedule states, counters."
    return {**tensors(ckpt["state_dict"], "state_dict"), **tensors(ckpt[EMA_KEY], "ema"),
            **tensors(ckpt["optimizer_states"], "optim"), **tensors(ckpt["lr_schedulers"], "sched"),
            "g_step": torch.tensor(ckpt["gan_engine"]["g_step"]), "d_step": torch.tensor(ckpt["gan_engine"]["d_step"]),
            "global_step": torch.tensor(ckpt["global_step"])}


def assert_same_state(a, b):
    sa, sb = training_state(a), training_state(b)
    assert sa.keys() == sb.keys()
    differ = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not differ, f"{len(differ)} of {len(sa)} entries differ, e.g. {differ[:5]}"


# ------------------------------------------------------------------------------------------- one step clock
class LRs(L.Callback):
    "The learning rates each generator step uses (read just before the step)."
    def __init__(self): self.g, self.d = [], []
    def on_train_batch_start(self, trainer, m, batch, batch_idx):
        opts = m._optimizers()
        self.g.append(opts[0].param_groups[0]["lr"]); self.d.append(opts[1].param_groups[0]["lr"])


def schedule(step, origin, warmup, total, min_ratio=0.0, decay="cosine"):
    "The documented schedule: warm-up from `origin`, then cosine to `total`, all in generator steps."
    t = max(0, step - origin)
    if t < warmup: return (t + 1) / warmup
    if decay != "cosine": return 1.0
    span = total - origin - warmup
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, (t - warmup) / span)))


@pytest.mark.parametrize("pretrain,interval,d_warmup", [(4, 1, 2), (0, 3, 2), (6, 2, 0)])
def test_both_cosine_schedules_run_on_the_generator_clock(pretrain, interval, d_warmup):
    """Before: the D schedule was stepped once per D update, so with pretraining or d_update_interval > 1 its
    cosine never reached its end; its warm-up also counted from step 0."""
    cfg = tiny(f"Training.g_pretrain_steps={pretrain}", f"Training.d_update_interval={interval}", "Data.repeat=4",
               "Schedulers.decay=cosine", "Schedulers.g_warmup_steps=3", f"Schedulers.d_warmup_steps={d_warmup}",
               "Schedulers.cosine_min_ratio=0.0", "Optimizers.optim_g_lr=0.001", "Optimizers.optim_d_lr=0.002")
    lrs = LRs()
    module, _ = run_steps(cfg, 12, [lrs], **NO_VAL)
    want_g = [1e-3 * schedule(s, 0, 3, 12) for s in range(12)]
    want_d = [2e-3 * schedule(s, pretrain, d_warmup, 12) for s in range(12)]
    assert lrs.g == pytest.approx(want_g, rel=1e-9, abs=1e-15)
    assert lrs.d == pytest.approx(want_d, rel=1e-9, abs=1e-15)
    first = pretrain                                  # the discriminator's first update uses its first warm-up value
    assert lrs.d[first] == pytest.approx(2e-3 / d_warmup if d_warmup else 2e-3 * schedule(first, pretrain, 0, 12))
    # after the last step both schedules stand at the cosine's end (min_ratio 0), whatever the cadence
    scheds = module._schedulers()
    assert [s.last_epoch for s in scheds] == [12, 12]
    assert [o.param_groups[0]["lr"] for o in module._optimizers()] == pytest.approx([0.0, 0.0], abs=1e-15)
    assert module.d_step == StepPlan.from_config(cfg).d_updates_done(12)


def test_plateau_schedules_count_validations_on_the_generator_clock():
    """The D plateau ignores validations before it joins; both react to a metric that never improves
    (the bicubic baseline's PSNR is the same at every validation). Before: the D schedule counted them all."""
    cfg = tiny("Training.g_pretrain_steps=4", "Training.d_update_interval=2", "Data.repeat=4", "Schedulers.decay=plateau",
               "Schedulers.metric_g=val/psnr_bicubic", "Schedulers.metric_d=val/psnr_bicubic", "Schedulers.mode_g=max",
               "Schedulers.mode_d=max", "Schedulers.patience_g=1", "Schedulers.patience_d=1",
               "Optimizers.optim_g_lr=0.001", "Optimizers.optim_d_lr=0.002")
    lrs = LRs()
    run_steps(cfg.override("Training.val_every_n_steps=2"), 12, [lrs])
    # validations after steps 2, 4, 6, ...: G best at 2, halves after the 2nd bad one (step 6), again at 10;
    # D joins at step 4: best at 4, bad at 6 and 8, halves after step 8
    assert lrs.g == pytest.approx([1e-3] * 6 + [5e-4] * 4 + [2.5e-4] * 2)
    assert lrs.d == pytest.approx([2e-3] * 8 + [1e-3] * 4)


def test_generator_only_checkpoint_holds_the_finished_step():
    """Callbacks run before the module's on_train_batch_end: before, a checkpoint at step N stored g_step N-1
    and an EMA one update short."""
    cfg = tiny("Training.Losses.adv_loss_beta=0", "Data.repeat=4", "Training.EMA.decay=0.5",
               "Training.EMA.use_num_updates=false", "Schedulers.decay=cosine", "Schedulers.g_warmup_steps=2")
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        ck = ModelCheckpoint(dirpath=d, every_n_train_steps=3, save_top_k=-1, filename="{step}")
        module, _ = run_steps(cfg, 6, [ck], **NO_VAL)
        assert module.automatic_optimization
        at3 = read_checkpoint(Path(d) / "step=3.ckpt")
    assert at3["gan_engine"]["g_step"] == 3 and at3["global_step"] == 3
    assert (at3[EMA_KEY]["num_updates"], at3[EMA_KEY]["last_g_step"]) == (3, 3)
    assert at3["lr_schedulers"][0]["last_epoch"] == 3
    ref, _ = run_steps(cfg, 3, **NO_VAL)   # a run that simply ends after step 3
    assert same(at3[EMA_KEY]["shadow"], ref.ema.module.state_dict())
    assert same(state_part(at3, "generator"), ref.generator.state_dict())


class Terms(L.Callback):
    def __init__(self): self.rows = []
    def on_train_batch_end(self, trainer, m, *a):
        cm = m.train_values   # every step's values (Lightning sees them at the loggers' interval)
        if "train/feature_matching" in cm:
            self.rows.append((m.g_step - 1, float(cm["train/feature_matching_w"] / cm["train/feature_matching"]),
                              float(cm["train/adv_w"] / cm["train/adv"])))


def test_feature_matching_ramps_with_the_adversarial_weight():
    "Before: feature matching jumped to its full weight when pretraining ended, while the adversarial term ramped."
    cfg = tiny("Training.Losses.feature_matching_weight=2.0", "Training.g_pretrain_steps=2", "Training.adv_loss_ramp_steps=4",
               "Data.repeat=4")
    terms = Terms()
    run_steps(cfg, 8, [terms], **NO_VAL)
    assert [s for s, _, _ in terms.rows] == list(range(2, 8))
    ramp = {s: min(1.0, (s - 2 + 1) / 4) for s in range(2, 8)}
    for s, fm_w, adv_w in terms.rows:
        assert fm_w == pytest.approx(2.0 * ramp[s], rel=1e-5), s
        assert adv_w == pytest.approx(0.01 * ramp[s], rel=1e-5), s


# ----------------------------------------------------------------------------------------- one checkpoint path
def test_weight_files_as_safetensors(tmp_path):
    "Weight files in both formats: equal to the checkpoint's weights, tensors only, and usable for prediction."
    run = fit(cfg_in(tmp_path / "run", "Training.max_steps=4", "Training.val_every_n_steps=2",
                     "Callbacks.checkpoint.weights_format=both"))
    last = run.run_dir / "checkpoints" / "last.ckpt"
    raw, ema = generator_weights(read_checkpoint(last))
    for fmt in ("pt", "safetensors"):
        g, e = weight_paths(last, fmt)
        assert same(load_state_file(g), raw) and same(load_state_file(e), ema)
    data = weight_paths(last, "safetensors")[1].read_bytes()
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])          # a JSON header, then raw tensors
    assert header["__metadata__"] == {"gan_engine": "generator", "weights": "ema"}
    lr = torch.rand(1, 3, 12, 12) * 255
    want = load_predictor(last)(lr)
    got = load_predictor(weight_paths(last, "safetensors")[1], config=run.run_dir / "config.yaml", value_range=(0, 255))(lr)
    assert torch.equal(got, want)


# ------------------------------------------------------------------------------- every workflow resumes exactly
class StopAt(L.Callback):
    "Ends a run after generator step `n`, as a crash or a stop request would."
    def __init__(self, n): self.n = n
    def on_train_batch_end(self, trainer, *a):
        if trainer.global_step == self.n: trainer.should_stop = True


@pytest.mark.parametrize("stop", [5, 6, 7])   # a validation step, an epoch end, mid-epoch (3 batches an epoch)
def test_fit_resumed_from_last_ckpt_equals_one_run(tmp_path, stop):
    """`fit(resume=<run>/checkpoints/last.ckpt)` with the default (plateau) schedule reaches bit-identical weights,
    EMA, optimiser and schedule states as one uninterrupted run. Before: other batches after resume."""
    ov = ["Training.max_steps=12", "Training.val_every_n_steps=5", "Schedulers.decay=plateau", "Schedulers.patience_g=0",
          "Schedulers.patience_d=0", "Training.g_pretrain_steps=3", "Training.d_update_interval=2", "Trainer.log_every_n_steps=1"]
    one = fit(cfg_in(tmp_path / "one", *ov))
    part = fit(cfg_in(tmp_path / "two", *ov), callbacks=[StopAt(stop)])
    last = part.run_dir / "checkpoints" / "last.ckpt"
    assert read_checkpoint(last)["global_step"] == stop
    resumed = fit(cfg_in(tmp_path / "two", *ov), resume=last)
    assert resumed.run_dir == part.run_dir and resumed.module.g_step == 12
    assert_same_state(read_checkpoint(one.run_dir / "checkpoints" / "last.ckpt"), read_checkpoint(last))
    a, b = (pd.read_csv(r.run_dir / "metrics.csv", index_col="step") for r in (one, resumed))
    pd.testing.assert_series_equal(a["train/loss_g"].dropna(), b["train/loss_g"].dropna())   # one history, same values


@pytest.mark.parametrize("stop", [2, 3, 4])   # mid-epoch, the epoch's last batch, the next epoch's first
def test_stop_and_resume_without_validation_keeps_the_data_order(tmp_path, stop):
    """Validation off and a checkpoint every 3 steps: the stop's checkpoint ends Lightning's epoch early, so on resume
    Lightning starts (or ends) an epoch where the data pass has not; the loader continues its own pass. Before: the
    resumed run trained on another epoch's batches from the step after the stop."""
    ov = ["Training.max_steps=7", "Training.g_pretrain_steps=2", "Training.val_every_n_steps=0", "Trainer.limit_val_batches=0",
          "Callbacks.checkpoint.every_n_steps=3", "Trainer.log_every_n_steps=1"]
    one = fit(cfg_in(tmp_path / "one", *ov))
    part = fit(cfg_in(tmp_path / "two", *ov), callbacks=[StopAt(stop)])
    resumed = fit(cfg_in(tmp_path / "two", *ov), resume=part.run_dir / "checkpoints" / "last.ckpt")
    assert resumed.module.g_step == 7
    a, b = (pd.read_csv(r.run_dir / "metrics.csv", index_col="step") for r in (one, resumed))
    pd.testing.assert_series_equal(a["train/loss_g"].dropna(), b["train/loss_g"].dropna())
    assert same(one.module.state_dict(), resumed.module.state_dict())


def test_pretrained_run_continues_adversarially(tmp_path):
    "A run that is all pretraining has its discriminator: resuming with a larger max_steps trains it."
    first = fit(cfg_in(tmp_path / "run", "Training.max_steps=4", "Training.g_pretrain_steps=4", "Training.val_every_n_steps=2"))
    assert first.module.discriminator is not None and first.module.d_step == 0
    more = fit(first.module.cfg.override("Training.max_steps=10"), resume=first.run_dir / "checkpoints" / "last.ckpt")
    assert (more.module.g_step, more.module.d_step, more.trainer.global_step) == (10, 6, 10)
    assert more.module.d_loss is not None and "train/loss_d" in more.metrics


class Captured(L.Callback):
    def on_train_start(self, trainer, m):
        self.g = {k: v.clone() for k, v in m.generator.state_dict().items()}
        self.d = {k: v.clone() for k, v in m.discriminator.state_dict().items()} if m.discriminator is not None else None
        self.lr_d = m._optimizers()[1].param_groups[0]["lr"] if m.discriminator is not None else None


@pytest.mark.parametrize("given", [False, True])
def test_generator_only_run_continues_adversarially(tmp_path, given):
    """A checkpoint of a generator-only run (automatic optimisation, no discriminator) continues with a GAN config:
    a fresh or a given discriminator, said in a warning. Before: `Missing key(s) ... discriminator`."""
    g_only = cfg_in(tmp_path / "run", "Training.Losses.adv_loss_beta=0", "Training.max_steps=4", "Training.val_every_n_steps=2",
                    "Schedulers.decay=cosine", "Schedulers.d_warmup_steps=2", "Optimizers.optim_d_lr=0.002")
    first = fit(g_only)
    assert first.module.discriminator is None and first.module.automatic_optimization
    last = first.run_dir / "checkpoints" / "last.ckpt"
    saved = read_checkpoint(last)
    extra = ["Training.Losses.adv_loss_beta=0.01", "Training.max_steps=10", "Training.g_pretrain_steps=0"]
    if given:
        donor = GANModule(tiny("Discriminator.base_channels=8")).discriminator
        torch.save(donor.state_dict(), tmp_path / "d.pt")
        extra.append(f"Model.load_discriminator={tmp_path / 'd.pt'}")
    cap = Captured()
    with pytest.warns(UserWarning, match="generator-only run: the discriminator starts "
                                         + (f"from {tmp_path / 'd.pt'}" if given else "fresh") + " at generator step 4"):
        more = fit(g_only.override(*extra), resume=last, callbacks=[cap])
    m = more.module
    assert not m.automatic_optimization and (m.g_step, m.d_step, more.trainer.global_step) == (10, 6, 10)
    assert same(cap.g, state_part(saved, "generator"))                        # the generator continued
    if given: assert same(cap.d, torch.load(tmp_path / "d.pt", weights_only=True))
    assert cap.lr_d == pytest.approx(0.002 / 2)                                # its schedule joins at step 4: warm-up 1/2


@pytest.mark.parametrize("decay", ["plateau", "cosine", "none"])
def test_validate_outside_fit_for_every_schedule_keeps_the_callers_rng(tmp_path, decay):
    """`trainer.validate(ckpt_path=...)` works with every schedule and leaves the caller's random state alone.
    Before: the plateau schedule crashed (no schedulers outside fit) and loading reset the global RNG."""
    run = fit(cfg_in(tmp_path / "run", f"Schedulers.decay={decay}", "Training.max_steps=4", "Training.val_every_n_steps=2"))
    last = run.run_dir / "checkpoints" / "last.ckpt"
    cfg = run.module.cfg
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    module, dm = GANModule(cfg), GANDataModule(cfg)
    torch.manual_seed(1234)
    out = trainer.validate(module, datamodule=dm, ckpt_path=last, weights_only=True, verbose=False)
    after = torch.rand(4)
    torch.manual_seed(1234)
    assert torch.equal(after, torch.rand(4))
    assert out[0]["val/psnr"] == pytest.approx(float(run.trainer.callback_metrics["val/psnr"]), rel=1e-5)


def test_cli_validate_with_the_default_plateau_schedule(tmp_path, capsys, monkeypatch):
    run = fit(cfg_in(tmp_path / "run", "Schedulers.decay=plateau", "Training.max_steps=4", "Training.val_every_n_steps=2"))
    monkeypatch.chdir(ROOT)
    assert main(["validate", "--ckpt", str(run.run_dir / "checkpoints" / "last.ckpt")]) == 0   # its own stored config
    out = capsys.readouterr().out
    assert "val/psnr: " in out and "val/ssim: " in out


CHILD = '''
import io, os, sys, time
from pathlib import Path
flag, pause_after = os.environ.get("PAUSE_FLAG"), int(os.environ.get("PAUSE_AFTER", "0"))
if flag:  # stop for good halfway through a later write of last.ckpt, so the kill lands inside it
    import gan_engine.checkpoint as ck
    real, seen = ck.write_atomic, []
    def paused(path, write):
        if Path(path).name != "last.ckpt": return real(path, write)
        seen.append(path)
        if len(seen) <= pause_after: return real(path, write)
        def half(f):
            buf = io.BytesIO(); write(buf); data = buf.getvalue()
            f.write(data[:len(data) // 2]); f.flush(); os.fsync(f.fileno())
            Path(flag).write_text(str(len(data)))
            time.sleep(600)
        return real(path, half)
    ck.write_atomic = paused
from gan_engine.cli import main
sys.exit(main(sys.argv[1:]))
'''
CLI_TINY = ["Generator.n_channels=8", "Generator.n_blocks=1", "Discriminator.base_channels=8", "Data.repeat=1",
            "Training.max_steps=12", "Training.g_pretrain_steps=3", "Schedulers.g_warmup_steps=0",
            "Training.val_every_n_steps=2", "Callbacks.checkpoint.every_n_steps=3", *QUIET]


def _gan_engine(script, args, env=None, wait=True):
    e = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    e.pop("GAN_ENGINE_RUN_DIR", None)
    cmd = [sys.executable, str(script), *args]
    if wait: return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=e, cwd=ROOT)
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=e, cwd=ROOT)


def _wait_for(cond, proc, timeout=240):
    end = time.time() + timeout
    while not cond():
        if proc.poll() is not None: raise AssertionError(f"the training process ended early: {proc.stderr.read()[-2000:]}")
        if time.time() > end: proc.kill(); raise AssertionError("timed out waiting for the training process")
        time.sleep(0.02)


@pytest.mark.parametrize("moment", ["inside a checkpoint write", "at an arbitrary moment"])
def test_kill_9_then_resume_reaches_the_uninterrupted_weights(tmp_path, moment):
    """A real `gan-engine train` process killed with SIGKILL leaves a loadable last.ckpt, and `gan-engine train
    --resume` continues to the same weights as an uninterrupted run. Before: Lightning's writer could leave a
    truncated checkpoint, and the resumed run fed other batches."""
    script = tmp_path / "child.py"; script.write_text(CHILD)
    ref = _gan_engine(script, ["train", f"Logging.output_dir={tmp_path}/ref", *CLI_TINY])
    assert ref.returncode == 0, ref.stderr[-3000:]
    run, flag = tmp_path / "run", tmp_path / "paused"
    env = {"PAUSE_FLAG": str(flag), "PAUSE_AFTER": "2"} if moment.startswith("inside") else {}
    proc = _gan_engine(script, ["train", f"Logging.output_dir={run}", *CLI_TINY], env, wait=False)
    last = run / "checkpoints" / "last.ckpt"
    if env:
        _wait_for(flag.exists, proc)                          # halfway through the 3rd write of last.ckpt (step 6)
    else:
        _wait_for(last.exists, proc)
        time.sleep(random.Random(os.getpid()).uniform(0.0, 0.4))
    os.kill(proc.pid, signal.SIGKILL); proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    state = read_checkpoint(last)                                # the previous checkpoint, whole
    if env:
        assert state["global_step"] == 4 and any(p.name.startswith(".last.ckpt.tmp-") for p in last.parent.iterdir())
    res = _gan_engine(script, ["train", "--resume", str(last), *QUIET])
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1] == f"Run directory: {run.resolve()}"
    assert not any(p.name.startswith(".last.ckpt.tmp-") for p in last.parent.iterdir())    # leftovers cleaned up
    assert_same_state(read_checkpoint(tmp_path / "ref" / "checkpoints" / "last.ckpt"), read_checkpoint(last))


# -------------------------------------------------------------------------------------- the trainer contract
def test_the_trainer_reference_example_passes_through(tmp_path):
    "The reference page's own `Trainer:` example. Before: `gradient_clip_algorithm` was refused."
    with pytest.warns(ConfigWarning, match="Trainer.gradient_clip_algorithm='norm' moved to Optimizers.gradient_clip_algorithm"):
        cfg = load_config({"Trainer": {"enable_progress_bar": True, "log_every_n_steps": 50,
                                       "gradient_clip_algorithm": "norm", "detect_anomaly": False}})
    t = build_trainer(cfg.override(f"Logging.output_dir={tmp_path}"), tmp_path)
    assert (t.log_every_n_steps, cfg.Optimizers.gradient_clip_algorithm) == (50, "norm")
    with pytest.warns(ConfigWarning):
        cfg = load_config({"Trainer": {"max_steps": 40, "precision": "bf16-mixed", "default_root_dir": str(tmp_path / "x")}})
    assert (cfg.Training.max_steps, cfg.Training.precision, cfg.Logging.output_dir) == (40, "bf16", str(tmp_path / "x"))


# no batch statistics anywhere (res blocks, no norm in D), and Adam made SGD-like (eps 1): plain Adam turns float
# rounding in near-zero gradients into +-lr steps, which would hide what is compared here
ACC = ["Training.g_pretrain_steps=0", "Training.adv_loss_ramp_steps=0", "Training.Losses.adv_loss_beta=0.1",
       "Generator.block_type=res", "Discriminator.norm=none", "Data.repeat=4", "Training.EMA.decay=0.5",
       "Optimizers.eps=1.0", "Optimizers.optim_g_lr=0.01", "Optimizers.optim_d_lr=0.01"]


def _weights(m):
    out = {f"g.{k}": v for k, v in m.generator.state_dict().items()}
    if m.discriminator is not None: out.update({f"d.{k}": v for k, v in m.discriminator.state_dict().items()})
    return out


def _max_diff(a, b):
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.mark.parametrize("adversarial", [True, False])
def test_gradient_accumulation_equals_a_larger_batch(tmp_path, adversarial):
    """`accumulate_grad_batches: 2` of batch 2 = batch 4 through `fit()`, for the G/D pair (gan_engine's micro-batches
    under manual optimisation) and for a generator alone (Lightning's). Before: refused."""
    extra = [*ACC, "Training.max_steps=5", "Training.val_every_n_steps=0", "Trainer.limit_val_batches=0",
             "Logging.logger=none", "Callbacks.lr_monitor=false", *([] if adversarial else ["Training.Losses.adv_loss_beta=0"])]
    big = fit(cfg_in(tmp_path / "big", *extra, "Data.train_batch_size=4")).module
    run = fit(cfg_in(tmp_path / "acc", *extra, "Data.train_batch_size=2", "Training.accumulate_grad_batches=2"))
    small = fit(cfg_in(tmp_path / "small", *extra, "Data.train_batch_size=2")).module
    acc, t = run.module, run.trainer
    assert (acc.g_step, t.global_step, acc.d_step) == (5, 5, 5 if adversarial else 0)
    a, b, c = _weights(big), _weights(acc), _weights(small)
    # float rounding only (measured: 7e-9 with the discriminator, 5e-6 for Lightning's own accumulation), while
    # half the batch without accumulation trains visibly differently (1.3e-3)
    assert _max_diff(a, b) < 2e-5 and _max_diff(a, c) > 5e-4
    if not adversarial:                                # a user's own Trainer must accumulate too: said at once
        with pytest.raises(ConfigError, match="pass Trainer\\(accumulate_grad_batches=2\\)"):
            cfg = tiny(*extra, "Training.accumulate_grad_batches=2")
            L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False).fit(GANModule(cfg), datamodule=GANDataModule(cfg))


class Recorder(L.Callback):
    "A user's callback, named in the config by import path."
    def __init__(self, tag="x"): self.tag, self.steps = tag, []
    def on_train_batch_end(self, trainer, *a): self.steps.append(trainer.global_step)


def test_callbacks_and_loggers_in_lightning_class_path_form(tmp_path):
    cfg = cfg_in(tmp_path / "run", "Training.max_steps=4", "Training.val_every_n_steps=2", "Trainer.log_every_n_steps=1")
    cfg = load_config({**cfg.to_dict(), "Trainer": {**cfg.Trainer, "callbacks": [
        {"class_path": "test_training_state.Recorder", "init_args": {"tag": "mine"}}],
        "logger": [{"class_path": "CSVLogger", "init_args": {"save_dir": str(tmp_path / "csv"), "name": "extra"}}]}})
    run = fit(cfg)
    rec = next(c for c in run.trainer.callbacks if isinstance(c, Recorder))
    assert (rec.tag, rec.steps) == ("mine", [1, 2, 3, 4])
    extra = pd.read_csv(next((tmp_path / "csv" / "extra").rglob("metrics.csv")))
    assert extra["train/loss_g"].notna().sum() >= 3 and (run.run_dir / "metrics.csv").exists()


def test_early_stopping_written_as_the_reference_writes_it(tmp_path):
    "`Callbacks.early_stopping` with monitor/mode/patience switches it on. Before: silently off without `enabled`."
    cfg = load_config({**cfg_in(tmp_path / "run", "Training.max_steps=12", "Training.val_every_n_steps=2").to_dict(),
                       "Callbacks": {"early_stopping": {"monitor": "val/psnr_bicubic", "mode": "max", "patience": 1}}})
    assert any(isinstance(c, GANEarlyStopping) for c in build_callbacks(cfg, tmp_path))
    run = fit(cfg)
    assert run.trainer.global_step == 4             # the baseline never improves: best at 2, patience 1 runs out at 4


def test_lr_monitor_without_a_logger_says_so(tmp_path):
    with pytest.warns(ConfigWarning, match="Callbacks.lr_monitor: the run has no logger"):
        cbs = build_callbacks(cfg_in(tmp_path, "Logging.logger=none"), tmp_path)
    assert not any(type(c).__name__ == "LearningRateMonitor" for c in cbs)


class NormProbe(GANModule):
    "Computes each network's gradient norm before gan_engine's hook runs (the reference for the logged one)."
    seen = []
    def on_before_optimizer_step(self, optimizer):
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        ref = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
        super().on_before_optimizer_step(optimizer)
        after = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
        NormProbe.seen.append((self.g_step, self._network_of(optimizer), float(ref), float(after)))


def test_gradient_norms_are_logged_at_their_interval_and_watched(tmp_path):
    NormProbe.seen = []
    cfg = tiny("Logging.grad_norm_every_n_steps=2", "Training.g_pretrain_steps=2", "Data.repeat=4",
               "Optimizers.gradient_clip_val_g=0.0001")
    health = TrainingHealth(grad_norm_limit=1e-6, stall_window=0)
    with pytest.warns(Warning, match="exploding_gradients"):
        _, trainer = run_steps(cfg, 6, [health], module=NormProbe, logger=DataFrameLogger(tmp_path), log_every_n_steps=1,
                               **NO_VAL)
    df = trainer.logger.df
    assert df["train/grad_norm_g"].dropna().index.tolist() == [1, 3, 5]       # generator steps 2, 4, 6
    assert df["train/grad_norm_d"].dropna().index.tolist() == [3, 5]          # the discriminator joins at step 3
    ref = {(s, w): r for s, w, r, _ in NormProbe.seen}
    for row, s in ((1, 1), (3, 3), (5, 5)):
        assert df.loc[row, "train/grad_norm_g"] == pytest.approx(ref[(s, "g")], rel=1e-5)   # before clipping
    assert all(after <= 1e-4 * 1.001 for _, w, _, after in NormProbe.seen if w == "g")
    assert [(e["kind"], e["step"]) for e in health.events] == [("exploding_gradients", s) for s in (2, 4, 6)]


# --------------------------------------------------------------------------------------- beyond one machine
NODE = '''
import json, os, sys, warnings
warnings.filterwarnings("ignore")
from pathlib import Path
import lightning as L
from gan_engine.testing import tiny_config
from gan_engine.trainer import StopOnRequest, fit

class AskToStop(L.Callback):  # only the first node asks, as a user at rank 0's notebook would
    def __init__(self, stopper): self.stopper = stopper
    def on_train_batch_end(self, trainer, *a):
        if trainer.global_rank == 0 and trainer.global_step == 3: self.stopper.request()

samples, out, report = sys.argv[1:4]
stopper = StopOnRequest()
cfg = tiny_config(samples, [f"Logging.output_dir={out}", "Trainer.accelerator=cpu", "Trainer.devices=1", "Trainer.num_nodes=2",
                            "Trainer.strategy=ddp", "Trainer.enable_progress_bar=false", "Training.max_steps=40",
                            "Training.val_every_n_steps=2", "Data.repeat=2"])
run = fit(cfg, callbacks=[AskToStop(stopper), stopper])
t = run.trainer
Path(report, f"rank{t.global_rank}.json").write_text(json.dumps(
    {"rank": t.global_rank, "world": t.world_size, "node": int(os.environ["NODE_RANK"]), "run_dir": str(run.run_dir),
     "step": t.global_step, "saved": str(stopper.saved), "strategy": type(t.strategy).__name__}))
'''


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def test_two_nodes_share_one_run_directory_and_stop_together(tmp_path):
    """Two "nodes" of one CPU process each (Lightning's NODE_RANK/LOCAL_RANK environment), a shared run directory
    that already holds an older run. Before: node 1 chose a run directory of its own, and a stop request on rank 0
    left rank 1 waiting in the next collective."""
    script, out, rep = tmp_path / "node.py", tmp_path / "runs" / "gan", tmp_path / "report"
    script.write_text(NODE); rep.mkdir(); out.mkdir(parents=True)
    (out / "config.yaml").write_text("older: run\n")                           # so rank 0 picks runs/gan-2
    port = str(_free_port())
    procs = []
    for node in (0, 1):
        env = {**os.environ, "PYTHONWARNINGS": "ignore", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
               "WORLD_SIZE": "2", "NODE_RANK": str(node), "LOCAL_RANK": "0"}
        env.pop("GAN_ENGINE_RUN_DIR", None)
        procs.append(subprocess.Popen([sys.executable, str(script), str(SAMPLES), str(out), str(rep)], env=env,
                                      cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        results = [p.communicate(timeout=300) for p in procs]                  # a hang would time out here
    finally:
        for p in procs: p.kill()
    assert all(p.returncode == 0 for p in procs), [r[1][-3000:] for r in results]
    reports = [json.loads((rep / f"rank{i}.json").read_text()) for i in (0, 1)]
    run = tmp_path / "runs" / "gan-2"
    assert [(r["rank"], r["node"], r["world"]) for r in reports] == [(0, 0, 2), (1, 1, 2)]
    assert [r["run_dir"] for r in reports] == [str(run)] * 2
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["gan", "gan-2"]     # no third directory
    assert [r["step"] for r in reports] == [3, 3]                                     # both stopped at the same step
    assert all(r["saved"] == str(run / "checkpoints" / "stopped-step=3.ckpt") for r in reports)
    assert all(r["strategy"] == "DDPStrategy" for r in reports)                       # `ddp` kept find_unused
    ck = read_checkpoint(run / "checkpoints" / "stopped-step=3.ckpt")
    assert ck["gan_engine"]["g_step"] == 3 and weight_paths(run / "checkpoints" / "stopped-step=3.ckpt")[1].exists()
    assert (run / "config.yaml").exists() and (run / "metrics.csv").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (16-mixed uses a GradScaler there)")
def test_16_mixed_with_both_optimisers_and_r1_on_gpu(tmp_path):
    cfg = tiny("Training.precision=16", "Training.g_pretrain_steps=1", "Training.Losses.r1_gamma=1.0", "Data.repeat=4",
               "Trainer.accelerator=gpu")
    module, trainer = run_steps(cfg, 6, accelerator="gpu", precision="16-mixed", **NO_VAL)
    assert (module.g_step, module.d_step) == (6, 5)
    assert trainer.precision_plugin.scaler is not None
    assert all(torch.isfinite(p).all() for p in module.parameters())
