"GANModule: CPU fit smoke tests (pretrain -> adversarial, D cadence, ramp, EMA swap, resume, bf16, clipping)."
import math
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio

from gan_engine.data import GANDataModule
from gan_engine.module import GANModule
from gan_engine.testing import fit_tiny, tiny_config
from gan_engine.steps import StepPlan

SAMPLES = Path(__file__).resolve().parents[1] / "data_samples"
warnings.filterwarnings("ignore", ".*does not have many workers.*")


BARE = ["Logging.logger=none", "Callbacks.health.enabled=false", "Trainer.enable_checkpointing=false"]
NO_VAL = {"limit_val_batches": 0}


def fit(cfg, max_steps, ckpt_path=None, callbacks=(), module=None, **kw):
    "`max_steps` generator steps of `cfg` through the real Trainer (`fit_tiny`), without the config's logger, health and checkpoints."
    return fit_tiny(cfg.override(f"Training.max_steps={max_steps}", *BARE), callbacks, module, ckpt_path=ckpt_path, **kw)


class Steps(L.Callback):
    "Records what each generator step did."
    def __init__(self): self.rows = []
    def on_train_batch_end(self, trainer, m, outputs, batch, batch_idx):
        self.rows.append((m.g_step, m.d_step, trainer.global_step, float(m.train_values["train/phase"])))


@pytest.mark.parametrize("interval,pretrain,steps", [(1, 3, 9), (2, 0, 7), (4, 5, 14)])
def test_discriminator_cadence_and_step_counts(interval, pretrain, steps):
    cfg = tiny_config(SAMPLES, [f"Training.d_update_interval={interval}", f"Training.g_pretrain_steps={pretrain}",
                                "Data.repeat=8"])
    rec = Steps()
    module, t = fit(cfg, steps, callbacks=[rec], **NO_VAL)
    assert module.g_step == steps == t.global_step  # Lightning's step counts generator steps only
    assert module.d_step == math.ceil((steps - pretrain) / interval)
    assert [r[3] for r in rec.rows] == [0.0] * pretrain + [1.0] * (steps - pretrain)
    assert all(r[0] == r[2] for r in rec.rows)


def test_generator_only_uses_automatic_optimisation_and_no_discriminator():
    cfg = tiny_config(SAMPLES, ["Training.Losses.adv_loss_beta=0", "Data.repeat=4"])
    assert not StepPlan.from_config(cfg).adversarial
    module, t = fit(cfg, 5, **NO_VAL)
    assert module.automatic_optimization and module.discriminator is None
    assert not any("discriminator" in k for k in module.state_dict())
    assert module.g_step == t.global_step == 5
    assert module.ema.num_updates == 5


class WeightsAroundValidation(L.Callback):
    "Training weights just before and just after each validation, and the weights validation saw."
    def __init__(self): self.before, self.after, self.seen = [], [], []
    def _w(self, m): return {k: v.detach().clone() for k, v in m.generator.state_dict().items()}
    def on_train_batch_end(self, trainer, m, *a): self.last = self._w(m)
    def on_validation_batch_start(self, trainer, m, *a): self.seen.append(self._w(m))
    def on_train_epoch_end(self, trainer, m):
        # runs after validation in the epoch loop; the EMA callback has restored the weights by now
        self.before.append(self.last); self.after.append(self._w(m))


def test_validation_uses_ema_and_restores_training_weights():
    cfg = tiny_config(SAMPLES, ["Training.EMA.decay=0.5", "Training.EMA.use_num_updates=false"])
    rec = WeightsAroundValidation()
    module, t = fit(cfg.override("Training.val_every_n_steps=3"), 6, callbacks=[rec])  # validation after steps 3 and 6
    assert len(rec.before) == 2
    for b, a in zip(rec.before, rec.after):
        assert all(torch.equal(b[k], a[k]) for k in b)  # bit-for-bit restore
    ema = module.ema.module.state_dict()
    assert all(torch.equal(rec.seen[-1][k], ema[k]) for k in ema)  # validation saw the EMA weights
    assert not all(torch.equal(rec.seen[-1][k], rec.before[-1][k]) for k in ema)  # which differ from live ones
    # the logged PSNR is the EMA generator's PSNR on the fixed validation crops
    dm = GANDataModule(cfg); dm.setup()
    psnrs = []
    with torch.no_grad():
        for batch in dm.val_dataloader():
            out = module(batch["lr"]).clamp(0, 255)  # forward uses the EMA generator
            psnrs += [peak_signal_noise_ratio(o[None], h[None], data_range=(0, 255)) for o, h in zip(out, batch["hr"])]
    assert t.callback_metrics["val/psnr"].item() == pytest.approx(torch.stack(psnrs).mean().item(), rel=1e-5)
    assert "val/psnr_bicubic" in t.callback_metrics and "val/ssim" in t.callback_metrics


def _state(module):
    return {"g": module.generator.state_dict(), "d": module.discriminator.state_dict(),
            "ema": module.ema.module.state_dict(), "steps": (module.g_step, module.d_step, module.ema.num_updates)}


# 3 batches per epoch: steps 6 and 9 end an epoch, 7 is mid-epoch (the loader resumes at its position)
@pytest.mark.parametrize("at", [6, 7, 9])
def test_resume_is_identical_to_one_run(tmp_path, at):
    from lightning.pytorch.callbacks import ModelCheckpoint
    cfg = tiny_config(SAMPLES, ["Training.g_pretrain_steps=4", "Training.d_update_interval=2"])
    # every_n_train_steps counts generator steps, because global_step does
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=at, save_top_k=-1, filename="{step}")
    one, _ = fit(cfg, 12, callbacks=[ckpt], enable_checkpointing=True)
    path = tmp_path / f"step={at}.ckpt"
    torch.load(path, weights_only=True)  # checkpoints load without executing code
    resumed, t2 = fit(cfg, 12, ckpt_path=path)
    a, b = _state(one), _state(resumed)
    assert a["steps"] == b["steps"] == (12, 4, 12)
    assert t2.global_step == 12
    for part in ("g", "d", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)


def test_bf16_run_has_finite_losses():
    cfg = tiny_config(SAMPLES, ["Training.g_pretrain_steps=2", "Data.repeat=4"])
    losses = []
    class Losses(L.Callback):
        def on_train_batch_end(self, trainer, m, *a):
            losses.append({k: float(v) for k, v in m.train_values.items() if k.startswith("train/loss")})
    module, t = fit(cfg, 6, callbacks=[Losses()], precision="bf16-mixed", **NO_VAL)
    assert module.g_step == 6 and module.d_step == 4
    assert all(math.isfinite(v) for row in losses for v in row.values())
    assert "train/loss_d" in losses[-1]


class ClipProbe(GANModule):
    "Records gradient norms right after gan_engine's clipping."
    norms = []
    def on_before_optimizer_step(self, optimizer):
        super().on_before_optimizer_step(optimizer)
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        self.norms.append((self._network_of(optimizer), torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])).item()))


def test_gradient_clipping_per_optimiser():
    cfg = tiny_config(SAMPLES, ["Training.g_pretrain_steps=1", "Optimizers.gradient_clip_val_g=0.01",
                                "Optimizers.gradient_clip_val_d=0.02", "Data.repeat=4"])
    ClipProbe.norms = []
    fit(cfg, 4, module=ClipProbe, **NO_VAL)
    g = [n for w, n in ClipProbe.norms if w == "g"]; d = [n for w, n in ClipProbe.norms if w == "d"]
    assert len(g) == 4 and len(d) == 3
    assert max(g) <= 0.01 * 1.001 and max(d) <= 0.02 * 1.001


def test_trainer_gradient_clip_val_is_translated_not_a_crash():
    cfg = tiny_config(SAMPLES, ["Trainer.gradient_clip_val=0.5"])
    assert cfg.Optimizers.gradient_clip_val == 0.5 and "gradient_clip_val" not in cfg.Trainer


def test_predict_uses_ema_and_raw_on_request():
    cfg = tiny_config(SAMPLES, ["Training.EMA.decay=0.5", "Training.EMA.use_num_updates=false", "Data.repeat=4"])
    module, t = fit(cfg, 4, **NO_VAL)
    lr = torch.rand(2, 3, 8, 8) * 255
    with torch.no_grad():
        ema_out, raw_out = module(lr), module(lr, raw=True)
        want = module.denormalise(module.ema.module(module.normalisers["lr"](lr)))
    assert torch.allclose(ema_out, want) and not torch.allclose(ema_out, raw_out)
    preds = t.predict(module, torch.utils.data.DataLoader([{"lr": lr}], batch_size=None))
    assert torch.allclose(preds[0], ema_out, atol=1e-5)


class LDLProbe(L.Callback):
    "LDL recomputed before each generator step from the step's own batch, generator and EMA copy."
    def __init__(self): self.expected, self.logged = [], []
    def on_train_batch_start(self, trainer, m, batch, batch_idx):
        from gan_engine.losses import ldl_loss
        from gan_engine.module import _buffers_kept
        with torch.no_grad(), _buffers_kept(m.generator):
            normed = m.normalise_batch(batch)
            x, cond = m.task.generator_input(normed, train=True)
            out, ema = m.task.compose(normed, m.generator(x)), m.task.compose(normed, m.ema.module(x))
            self.expected.append(float(ldl_loss(out, m.task.target(normed), ema, m.cfg.Training.Losses.ldl_kernel)))
    def on_train_batch_end(self, trainer, m, outputs, batch, batch_idx):
        v = m.train_values.get("train/ldl")
        self.logged.append(None if v is None else float(v))


def test_ldl_term_uses_the_ema_output_while_adversarial():
    cfg = tiny_config(SAMPLES, ["Training.g_pretrain_steps=2", "Training.Losses.ldl_weight=2.0", "Training.Losses.ldl_kernel=3",
                                "Training.EMA.decay=0.5", "Data.repeat=8"])
    probe = LDLProbe()
    module, t = fit(cfg, 6, callbacks=[probe], **NO_VAL)
    assert probe.logged[:2] == [None, None]                       # pretraining: no adversarial term, no LDL
    assert all(v is not None and v > 0 for v in probe.logged[2:])
    assert probe.logged[2:] == pytest.approx(probe.expected[2:], rel=1e-4)
    # the same run without the EMA copy is refused before anything trains
    from gan_engine.registry import ConfigError
    with pytest.raises(ConfigError, match="Training.EMA.enabled"):
        tiny_config(SAMPLES, ["Training.Losses.ldl_weight=1", "Training.EMA.enabled=false"])


class IncomingLR(GANModule):
    "Keeps each training batch's LR as the data loader gave it, before the online degradation."
    def on_after_batch_transfer(self, batch, dataloader_idx):
        if self._trainer is not None and self.trainer.training: self.__dict__.setdefault("incoming", []).append(batch["lr"].clone())
        return super().on_after_batch_transfer(batch, dataloader_idx)


def _paired_folders(tmp_path):
    "data_samples/sr/train as HR, and LR partner files that no degradation would make (inverted, box-downscaled)."
    from PIL import Image
    import numpy as np
    hr_dir, lr_dir = tmp_path / "hr", tmp_path / "lr"
    hr_dir.mkdir(); lr_dir.mkdir()
    for f in sorted((SAMPLES / "sr" / "train").iterdir())[:6]:
        im = np.asarray(Image.open(f).convert("RGB"))
        h, w = (im.shape[0] // 2) * 2, (im.shape[1] // 2) * 2
        Image.fromarray(im[:h, :w]).save(hr_dir / f"{f.stem}.png")
        small = im[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean((1, 3))
        Image.fromarray((255 - small).round().astype(np.uint8)).save(lr_dir / f"{f.stem}.png")
    return hr_dir, lr_dir


@pytest.mark.parametrize("rate", [0.0, 0.5, 1.0])
def test_online_degradation_mixes_real_lr_files_at_the_rate(tmp_path, rate):
    from gan_engine.degrade import degrade_training_batch
    hr_dir, lr_dir = _paired_folders(tmp_path)
    cfg = tiny_config(SAMPLES, [f"Data.train_dir={hr_dir}", f"Data.train_lr_dir={lr_dir}", "Data.val_fraction=0.3", "Data.val_dir=null",
                                "Data.degradation.online.enabled=true", f"Data.degradation.online.real_lr_rate={rate}",
                                "Data.train_batch_size=8", "Data.repeat=4"])
    keep = []
    class Seen(L.Callback):
        def on_train_batch_start(self, trainer, m, batch, batch_idx): keep.append((batch["hr"].clone(), batch["lr"].clone()))
    module, _ = fit(cfg, 3, callbacks=[Seen()], module=IncomingLR, **NO_VAL)
    kept = made = 0
    for step, ((hr, lr), files) in enumerate(zip(keep, module.incoming)):
        expected, params = degrade_training_batch(hr, module.value_range, 2, cfg.Training.seed, step, module.online_degradation,
                                                  real_lr=files, real_lr_rate=rate)
        assert torch.equal(lr, expected)
        for i, p in enumerate(params):
            real = p == [{"real LR file": True}]
            assert torch.equal(lr[i], files[i]) == real    # the inverted files never come out of the degradation
            kept, made = kept + real, made + (not real)
    if rate == 0: assert (kept, made) == (0, 24)
    elif rate == 1: assert (kept, made) == (24, 0)
    else: assert 0 < kept < 24, kept                   # some of each at 0.5


def test_online_validation_keeps_the_lr_files_of_a_paired_split(tmp_path):
    "Validation split off paired training data: its LR files stay; only items without a file are made by the recipe."
    hr_dir, lr_dir = _paired_folders(tmp_path)
    cfg = tiny_config(SAMPLES, [f"Data.train_dir={hr_dir}", f"Data.train_lr_dir={lr_dir}", "Data.val_fraction=0.3", "Data.val_dir=null",
                                "Data.degradation.online.enabled=true", "Data.degradation.online.validate=true", "Data.repeat=2"])
    seen = []
    class Val(L.Callback):
        def on_validation_batch_start(self, trainer, m, batch, batch_idx, dataloader_idx=0):
            seen.append((batch["lr"].clone(), [x["lr_source"] for x in batch["meta"]]))
    module, _ = fit(cfg.override("Training.val_every_n_steps=2"), 2, callbacks=[Val()], num_sanity_val_steps=0)
    dm = GANDataModule(module.cfg); dm.setup("validate")
    files = next(iter(dm.val_dataloader()))["lr"]
    assert seen and all(src is not None for _, srcs in seen for src in srcs)
    assert torch.equal(seen[0][0], files[:len(seen[0][0])])    # the inverted files, untouched


def test_real_lr_rate_needs_paired_files_and_the_online_recipe():
    from gan_engine.registry import ConfigError
    with pytest.raises(ConfigError, match="Data.degradation.online.real_lr_rate: 0.5 .* Data.train_lr_dir"):
        tiny_config(SAMPLES, ["Data.degradation.online.enabled=true", "Data.degradation.online.real_lr_rate=0.5"])
    with pytest.raises(ConfigError, match="real_lr_rate"):
        tiny_config(SAMPLES, ["Data.degradation.online.real_lr_rate=1.5"])


def test_online_degradation_draws_apart_for_each_accumulated_batch():
    "Generator-only with Lightning's accumulation: the k-th loader batch of a step draws as `part=k` of that step."
    from gan_engine.degrade import degrade_training_batch
    cfg = tiny_config(SAMPLES, ["Training.Losses.adv_loss_beta=0", "Training.accumulate_grad_batches=2", "Data.repeat=8",
                                "Data.degradation.online.enabled=true"])
    seen = []
    class Seen(L.Callback):
        def on_train_batch_start(self, trainer, m, batch, batch_idx): seen.append((m.g_step, batch["hr"].clone(), batch["lr"].clone()))
    module, _ = fit(cfg, 3, callbacks=[Seen()], **NO_VAL)
    assert [s for s, _, _ in seen] == [0, 0, 1, 1, 2, 2]
    for k, (step, hr, lr) in enumerate(seen):
        expected, _ = degrade_training_batch(hr, module.value_range, 2, cfg.Training.seed, step, module.online_degradation, part=k % 2)
        assert torch.equal(lr, expected), k
