"Dense tests of gan_engine.ema: GeneratorEMA against a hand-written reference, swaps, state, EMACallback in a Trainer."
import copy
import io
import itertools
import logging
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
import lightning as L

from gan_engine.config import load_config
from gan_engine.checkpoint import EMA_KEY as EMA_CHECKPOINT_KEY, ema_state as ema_weights_from_checkpoint
from gan_engine.ema import EMACallback, GeneratorEMA

logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
pytestmark = [pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
              pytest.mark.filterwarnings("ignore:.*GPU available but not used.*"),
              pytest.mark.filterwarnings("ignore:.*predict returned None.*")]


def tiny_gen(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                         nn.Conv2d(3, 1, 3, padding=1)).to(dtype)


def perturb(model, gen):
    "Change every parameter randomly and run a train-mode forward so BatchNorm buffers change too."
    with torch.no_grad():
        for p in model.parameters(): p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
        model.train(); model(torch.randn(2, 1, 4, 4, generator=gen, dtype=next(model.parameters()).dtype))


def all_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def snapshot(m: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


# ----------------------------------------------------------------------------------------------------------------
# GeneratorEMA against a hand-written reference
# ----------------------------------------------------------------------------------------------------------------
def reference_run(model, steps, decay, update_after_step, use_num_updates, every_n_steps, buffers, seed=1):
    "Plain Python EMA over state_dict tensors, stepped alongside a GeneratorEMA; yields (step, ref, ema)."
    ema = GeneratorEMA(model, decay=decay, update_after_step=update_after_step, use_num_updates=use_num_updates,
                       every_n_steps=every_n_steps, buffers=buffers)
    pnames = {n for n, _ in model.named_parameters()}
    ref = snapshot(model)
    n = 0
    gen = torch.Generator().manual_seed(seed)
    for step in range(1, steps + 1):
        perturb(model, gen)
        live = snapshot(model)
        used = ema.update(model, step)
        if step <= update_after_step:
            ref = {k: v.clone() for k, v in live.items()}
            assert used == 0.0
        elif step % every_n_steps == 0:
            d = min(decay, (1 + n) / (10 + n)) if use_num_updates else decay
            assert used == pytest.approx(d)
            for k in ref:
                average = k in pnames or (buffers == "average" and ref[k].is_floating_point())
                ref[k] = d * ref[k] + (1 - d) * live[k] if average else live[k].clone()
            n += 1
        else:
            assert used is None
        assert ema.num_updates == n and ema.last_g_step == step
        yield step, ref, ema


@pytest.mark.parametrize("use_num_updates,update_after_step,every_n_steps,buffers",
                         [(True, 0, 1, "copy"), (False, 0, 1, "copy"), (True, 3, 1, "copy"),
                          (True, 0, 3, "copy"), (False, 2, 2, "average"), (True, 4, 3, "average")])
def test_update_matches_reference(use_num_updates, update_after_step, every_n_steps, buffers):
    model = tiny_gen(dtype=torch.float64)
    for step, ref, ema in reference_run(model, 12, 0.8, update_after_step, use_num_updates, every_n_steps, buffers):
        got = ema.module.state_dict()
        for k in ref:
            assert got[k].dtype == ref[k].dtype
            torch.testing.assert_close(got[k], ref[k], rtol=0, atol=1e-12, msg=f"{k} at step {step}")


def test_warmup_n_is_count_of_earlier_averaging_updates():
    ema = GeneratorEMA(nn.Linear(1, 1), decay=0.99, update_after_step=5, every_n_steps=2)
    m = nn.Linear(1, 1)
    got = [ema.update(m, s) for s in range(1, 12)]
    # steps 1..5 copy; 6, 8, 10 average with n = 0, 1, 2; odd steps after 5 are skipped
    assert got == [0.0] * 5 + [pytest.approx(1 / 10), None, pytest.approx(2 / 11), None, pytest.approx(3 / 12), None]
    assert ema.effective_decay(0) == pytest.approx(0.1) and ema.effective_decay(10 ** 6) == 0.99
    assert GeneratorEMA(m, decay=0.5, use_num_updates=False).effective_decay(0) == 0.5


def test_copy_phase_tracks_model_then_averaging_starts_from_current_weights():
    m = nn.Linear(1, 1, bias=False)
    ema = GeneratorEMA(m, decay=0.5, update_after_step=2, use_num_updates=False)
    for step, c in [(1, 10.0), (2, 20.0)]:
        with torch.no_grad(): m.weight.fill_(c)
        ema.update(m, step)
        assert ema.module.weight.item() == c
    with torch.no_grad(): m.weight.fill_(30.0)
    ema.update(m, 3)
    assert ema.module.weight.item() == 25.0  # 0.5 * 20 + 0.5 * 30: starts from step-2 weights, not init


def test_g_step_default_and_validation():
    m = nn.Linear(1, 1)
    ema = GeneratorEMA(m, decay=0.9)
    ema.update(m); ema.update(m)
    assert ema.last_g_step == 2 and ema.num_updates == 2
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="Expected `g_step`"): ema.update(m, bad)


def test_decay_edges():
    m = nn.Linear(2, 1)
    with pytest.raises(ValueError, match=r"Expected `decay` to be a float in \[0, 1\) but got 1.0"):
        GeneratorEMA(m, decay=1.0)                     # the config's range: 1 would never move from the first weights
    ema = GeneratorEMA(m, decay=0.999999, use_num_updates=False)
    init = snapshot(ema.module)
    perturb_lin = lambda: [p.data.add_(1.0) for p in m.parameters()]
    perturb_lin(); ema.update(m, 1)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(snapshot(ema.module).values(), init.values()))  # almost frozen
    ema0 = GeneratorEMA(m, decay=0.0, use_num_updates=False)
    perturb_lin(); ema0.update(m, 1)
    assert all_equal(snapshot(ema0.module), snapshot(m))  # decay 0: exact copy


def test_buffers_copy_vs_average_and_integer_buffers():
    gen = torch.Generator().manual_seed(3)
    m = tiny_gen(dtype=torch.float64)
    e_copy = GeneratorEMA(m, decay=0.5, use_num_updates=False, buffers="copy")
    e_avg = GeneratorEMA(m, decay=0.5, use_num_updates=False, buffers="average")
    before = m[1].running_mean.clone()
    perturb(m, gen)
    e_copy.update(m, 1); e_avg.update(m, 1)
    assert torch.equal(e_copy.module[1].running_mean, m[1].running_mean)
    torch.testing.assert_close(e_avg.module[1].running_mean, 0.5 * before + 0.5 * m[1].running_mean, rtol=0, atol=1e-12)
    for e in (e_copy, e_avg):  # integer buffer always copied
        assert e.module[1].num_batches_tracked.item() == m[1].num_batches_tracked.item() == 1
        assert e.module[1].num_batches_tracked.dtype == torch.long


def test_shadow_is_frozen_independent_plain_object():
    m = tiny_gen()
    m[0].weight.grad = torch.ones_like(m[0].weight)
    ema = GeneratorEMA(m)
    assert not isinstance(ema, nn.Module)
    assert all(not p.requires_grad and p.grad is None for p in ema.module.parameters())
    assert not ema.module.training
    ema.update(m, 1)
    assert all(not p.requires_grad for p in ema.module.parameters())  # still frozen after updates
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(ema.module.parameters(), m.parameters()))
    x = torch.randn(1, 1, 4, 4)
    assert torch.equal(ema(x), ema.module(x))


def test_bad_arguments_and_mismatched_model():
    m = tiny_gen()
    with pytest.raises(TypeError, match="Expected `model`"): GeneratorEMA(object())
    for kw, pat in [({"decay": -0.1}, "decay"), ({"decay": True}, "decay"), ({"update_after_step": -1}, "update_after_step"),
                    ({"every_n_steps": 0}, "every_n_steps"), ({"buffers": "mean"}, "buffers")]:
        with pytest.raises(ValueError, match=f"Expected `{pat}`"): GeneratorEMA(m, **kw)
    ema = GeneratorEMA(m)
    with pytest.raises(ValueError, match="same parameters"): ema.update(nn.Linear(1, 1), 1)
    with pytest.raises(ValueError, match="same parameters"): ema.copy_to(nn.Conv2d(1, 1, 3))


# ----------------------------------------------------------------------------------------------------------------
# Devices and dtypes
# ----------------------------------------------------------------------------------------------------------------
def test_device_setting_keeps_shadow_there_and_converts_live_tensors():
    m = tiny_gen()
    ema = GeneratorEMA(m, decay=0.5, use_num_updates=False, device="cpu")
    assert ema.device == torch.device("cpu")
    assert all(t.device.type == "cpu" for t in itertools.chain(ema.module.parameters(), ema.module.buffers()))
    # the live model changes dtype: the update converts live tensors to the shadow's (same path as a device change)
    m.double()
    s0 = ema.module[0].weight.clone()
    with torch.no_grad(): m[0].weight.add_(1.0)
    ema.update(m, 1)
    assert ema.module[0].weight.dtype == torch.float32
    torch.testing.assert_close(ema.module[0].weight, 0.5 * s0 + 0.5 * m[0].weight.float())
    before = snapshot(m)
    with ema.swap(m):
        assert m[0].weight.dtype == torch.float64
        assert torch.equal(m[0].weight, ema.module[0].weight.double())
    assert all_equal(snapshot(m), before)
    assert ema.to(None).device is None and ema.to("cpu").device == torch.device("cpu")


def test_inference_mode_swap_leaves_updatable_tensors():
    "Validation runs under inference_mode: nothing the EMA keeps may become an inference tensor."
    m = tiny_gen()
    ema = GeneratorEMA(m)
    with torch.inference_mode():
        ema.store(m); ema.copy_to(m); ema.restore(m)
        ema.to("cpu")
    assert not any(t.is_inference() for t in itertools.chain(ema.module.parameters(), ema.module.buffers()))
    ema.update(m, 1)  # in-place update outside inference mode still works
    loss = m(torch.randn(1, 1, 4, 4)).sum(); loss.backward()  # and the live model still trains
    assert m[0].weight.grad is not None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_model_with_cpu_shadow_and_follow():
    m = tiny_gen().cuda()
    ema = GeneratorEMA(m, decay=0.5, use_num_updates=False, device="cpu")
    s0 = ema.module[0].weight.clone()
    with torch.no_grad(): m[0].weight.add_(1.0)
    ema.update(m, 1)
    assert ema.module[0].weight.device.type == "cpu"
    torch.testing.assert_close(ema.module[0].weight, 0.5 * s0 + 0.5 * m[0].weight.cpu())
    before = snapshot(m)
    with torch.inference_mode(), ema.swap(m):
        assert torch.equal(m[0].weight.cpu(), ema.module[0].weight)
    assert all_equal(snapshot(m), before)
    follow = GeneratorEMA(tiny_gen())  # built on CPU, model moved later: shadow follows lazily
    g = tiny_gen().cuda()
    with torch.inference_mode(), follow.swap(g): pass
    follow.update(g, 1)
    assert follow.module[0].weight.is_cuda and not follow.module[0].weight.is_inference()


# ----------------------------------------------------------------------------------------------------------------
# Swaps and state
# ----------------------------------------------------------------------------------------------------------------
def test_swap_restores_bit_for_bit_and_keeps_parameter_objects():
    gen = torch.Generator().manual_seed(5)
    m = tiny_gen()
    ema = GeneratorEMA(m, decay=0.7)
    for s in range(1, 4): perturb(m, gen); ema.update(m, s)
    before = snapshot(m)
    params = list(m.parameters()); ptrs = [p.data_ptr() for p in params]
    with ema.swap(m) as same:
        assert same is m
        assert all_equal(snapshot(m), snapshot(ema.module))
        assert not all_equal(snapshot(m), before)
        with pytest.raises(RuntimeError, match="Expected `restore\\(\\)`"): ema.store(m)
    assert all_equal(snapshot(m), before)
    assert list(m.parameters()) == params and [p.data_ptr() for p in params] == ptrs
    assert not ema.is_swapped
    with pytest.raises(RuntimeError, match="Expected `store\\(\\)`"): ema.restore(m)


def test_swap_restores_after_exception_and_rejects_other_model():
    m = tiny_gen()
    ema = GeneratorEMA(m)
    with torch.no_grad(): ema.module[0].weight.add_(1.0)
    before = snapshot(m)
    with pytest.raises(KeyError):
        with ema.swap(m): raise KeyError("boom")
    assert all_equal(snapshot(m), before)
    ema.store(m)
    with pytest.raises(RuntimeError, match="model given to `store"): ema.restore(tiny_gen(1))
    ema.restore(m)


def test_state_round_trip_gives_bit_identical_continuation():
    def run(steps, resume_at=None):
        gen = torch.Generator().manual_seed(11)
        m = tiny_gen()
        ema = GeneratorEMA(m, decay=0.9, update_after_step=2, every_n_steps=2)
        for s in range(1, steps + 1):
            perturb(m, gen); ema.update(m, s)
            if s == resume_at:
                buf = io.BytesIO(); torch.save(ema.state_dict(), buf); buf.seek(0)
                ema = GeneratorEMA(tiny_gen(seed=99), decay=0.9, update_after_step=2, every_n_steps=2)
                ema.load_state_dict(torch.load(buf, weights_only=True))
        return ema
    a, b = run(9), run(9, resume_at=5)
    assert all_equal(snapshot(a.module), snapshot(b.module))
    assert (a.num_updates, a.last_g_step) == (b.num_updates, b.last_g_step) == (3, 9)
    st = a.state_dict()
    assert st["settings"] == {"decay": 0.9, "update_after_step": 2, "use_num_updates": True, "every_n_steps": 2,
                              "device": None, "buffers": "copy"}
    fresh = tiny_gen(seed=7); fresh.load_state_dict(st["shadow"])  # shadow keys are the generator's own
    assert all_equal(snapshot(fresh), snapshot(a.module))


def test_load_state_dict_errors():
    ema = GeneratorEMA(tiny_gen())
    with pytest.raises(ValueError, match="Expected `state`"): ema.load_state_dict({"shadow": {}})
    bad = GeneratorEMA(nn.Linear(1, 1)).state_dict()
    with pytest.raises(ValueError, match="match the generator"): ema.load_state_dict(bad)


def test_from_config():
    m = tiny_gen()
    cfg = load_config({"Training": {"EMA": {"decay": 0.95, "update_after_step": 7, "use_num_updates": False,
                                             "every_n_steps": 3, "device": "cpu"}}})
    ema = GeneratorEMA.from_config(m, cfg)
    assert (ema.decay, ema.update_after_step, ema.use_num_updates, ema.every_n_steps, ema.device) == \
           (0.95, 7, False, 3, torch.device("cpu"))
    d = GeneratorEMA.from_config(m, load_config({}))
    assert (d.decay, d.update_after_step, d.use_num_updates, d.every_n_steps, d.device) == (0.999, 0, True, 1, None)
    assert GeneratorEMA.from_config(m, {"Training": {"EMA": {"enabled": False}}}) is None


# ----------------------------------------------------------------------------------------------------------------
# EMACallback in a real Trainer
# ----------------------------------------------------------------------------------------------------------------
class TinyGAN(L.LightningModule):
    "Manual optimisation with two optimisers (G and a stand-in D), so global_step = 2 x batches."
    def __init__(self, seed=0, own_ema=None, ema_attr=True):
        super().__init__()
        self.generator = tiny_gen(seed)
        self.critic = nn.Linear(1, 1)
        if ema_attr: self.ema = own_ema(self.generator) if own_ema else None
        self.automatic_optimization = False
        self.g_steps, self.val_seen, self.test_seen, self.after_batch = 0, [], [], []
        self.fail_in_validation = False

    def training_step(self, batch, i):
        opt_g, opt_d = self.optimizers()
        loss = F.mse_loss(self.generator(batch[0]), batch[1])
        opt_g.zero_grad(); self.manual_backward(loss); opt_g.step()
        self.g_steps += 1
        if getattr(self, "module_updates", False): self.ema.update(self.generator, self.g_steps)
        d = self.critic(torch.ones(1, 1)).pow(2).sum()
        opt_d.zero_grad(); self.manual_backward(d); opt_d.step()

    def on_train_batch_end(self, *a):
        self.after_batch.append(snapshot(self.generator))

    def validation_step(self, batch, i):
        if self.fail_in_validation: raise RuntimeError("validation failed")
        self.val_seen.append(snapshot(self.generator))
        self.log("val_loss", F.mse_loss(self.generator(batch[0]), batch[1]))

    def test_step(self, batch, i):
        self.test_seen.append(snapshot(self.generator))

    def predict_step(self, batch, i):
        return self.generator(batch[0])

    def configure_optimizers(self):
        return [torch.optim.SGD(self.generator.parameters(), lr=0.05),
                torch.optim.SGD(self.critic.parameters(), lr=0.05)]


class Recorder(L.Callback):
    "Generator weights at validation start/end, as seen from its place in the callback list."
    def __init__(self): self.start, self.end = [], []
    def on_validation_start(self, trainer, pl_module): self.start.append(snapshot(pl_module.generator))
    def on_validation_end(self, trainer, pl_module): self.end.append(snapshot(pl_module.generator))


def loader(n=8, bs=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 6, 6, generator=g)
    return DataLoader(TensorDataset(x, x.flip(-1)), batch_size=bs)


def trainer(callbacks, **kw):
    base = dict(accelerator="cpu", devices=1, enable_checkpointing=False, logger=False, enable_progress_bar=False,
                enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=1)
    base.update(kw)
    return L.Trainer(callbacks=callbacks, **base)


def test_callback_owned_ema_counts_generator_steps_and_validates_with_ema():
    model = TinyGAN()
    before, after = Recorder(), Recorder()
    cb = EMACallback(decay=0.8, update_after_step=1)
    t = trainer([before, cb, after], max_steps=8, val_check_interval=2, num_sanity_val_steps=1)
    init = snapshot(model.generator)
    t.fit(model, loader(), loader())
    assert cb.owns_ema and isinstance(model.ema, GeneratorEMA)
    assert t.global_step == 8 and model.g_steps == 4
    assert model.ema.last_g_step == 4 and model.ema.num_updates == 3  # step 1 copies, 2..4 average
    # reference EMA from the weights after each generator step (batch)
    ref, n = None, 0
    for s, w in enumerate(model.after_batch, start=1):
        if s <= 1: ref = {k: v.clone() for k, v in w.items()}; continue
        d = min(0.8, (1 + n) / (10 + n)); n += 1
        ref = {k: (d * ref[k] + (1 - d) * w[k]) if k in dict(model.generator.named_parameters()) else w[k].clone()
               for k in ref}
    for k, v in model.ema.module.state_dict().items():
        torch.testing.assert_close(v, ref[k], rtol=0, atol=1e-6)
    # sanity check + validation after batches 2 and 4: EMA weights inside, training weights restored after
    assert len(before.start) == len(after.end) == len(model.val_seen) == 3
    assert all_equal(before.start[0], init) and all_equal(after.end[0], init)
    for i in range(3):
        assert all_equal(after.start[i], model.val_seen[i]) and all_equal(before.end[i], model.val_seen[i])
        assert all_equal(before.start[i], after.end[i])  # bit for bit
    assert all_equal(before.start[1], model.after_batch[1]) and not all_equal(model.val_seen[1], model.after_batch[1])
    assert all_equal(model.val_seen[2], snapshot(model.ema.module))
    assert all_equal(snapshot(model.generator), model.after_batch[-1])
    assert "ema" not in " ".join(model.state_dict())  # the EMA is not a registered submodule


def test_module_owned_ema_is_only_swapped():
    mk = lambda g: GeneratorEMA(g, decay=0.5)
    model = TinyGAN(own_ema=mk); model.module_updates = True
    cb = EMACallback()
    rec = Recorder()
    t = trainer([cb, rec], max_steps=6, val_check_interval=3)
    t.fit(model, loader(), loader())
    assert not cb.owns_ema
    assert model.ema.num_updates == 3 and model.ema.last_g_step == 3  # only the module's three updates
    assert all_equal(rec.start[-1], snapshot(model.ema.module)) and all_equal(rec.end[-1], model.after_batch[-1])


def test_callback_with_settings_uses_module_ema_when_present():
    model = TinyGAN(own_ema=lambda g: GeneratorEMA(g, decay=0.5)); model.module_updates = True
    cb = EMACallback(decay=0.9)
    own = model.ema
    trainer([cb], max_steps=4, limit_val_batches=0).fit(model, loader())
    assert model.ema is own and not cb.owns_ema and own.num_updates == 2


def test_disabled_ema_skips_swap_and_checkpoint(tmp_path):
    model = TinyGAN()  # ema = None
    rec = Recorder()
    t = trainer([EMACallback(), rec], max_steps=4, val_check_interval=2)
    t.fit(model, loader(), loader())
    assert all_equal(model.val_seen[-1], model.after_batch[-1]) and all_equal(rec.start[-1], rec.end[-1])
    t.save_checkpoint(tmp_path / "a.ckpt")
    assert EMA_CHECKPOINT_KEY not in torch.load(tmp_path / "a.ckpt", weights_only=True)


def test_protocol_errors_at_setup():
    class NoGen(TinyGAN):
        def __init__(self):
            super().__init__(); del self.generator; self.net = tiny_gen()
        def configure_optimizers(self): return torch.optim.SGD(self.net.parameters(), lr=0.1)
    with pytest.raises(AttributeError, match="Expected `pl_module.generator`"):
        trainer([EMACallback(decay=0.9)], max_steps=1).fit(NoGen(), loader())
    with pytest.raises(AttributeError, match="Expected `pl_module.ema`"):
        trainer([EMACallback()], max_steps=1).fit(TinyGAN(ema_attr=False), loader())
    bad = TinyGAN(); bad.ema = "not an ema"
    with pytest.raises(TypeError, match="GeneratorEMA or None"):
        trainer([EMACallback()], max_steps=1).fit(bad, loader())
    with pytest.raises(ValueError, match="Expected `decay`"): EMACallback(decay=2.0)


def test_weights_restored_when_validation_raises():
    model = TinyGAN(own_ema=lambda g: GeneratorEMA(g, decay=0.5))
    with torch.no_grad(): model.ema.module[0].weight.add_(3.0)
    before = snapshot(model.generator)
    model.fail_in_validation = True
    with pytest.raises(RuntimeError, match="validation failed"):
        trainer([EMACallback()]).validate(model, loader(), verbose=False)
    assert all_equal(snapshot(model.generator), before) and not model.ema.is_swapped


def test_test_and_predict_use_ema_weights():
    model = TinyGAN(own_ema=lambda g: GeneratorEMA(g, decay=0.5))
    with torch.no_grad(): model.ema.module[0].weight.add_(1.0)
    before = snapshot(model.generator)
    t = trainer([EMACallback()])
    t.test(model, loader(), verbose=False)
    assert all_equal(model.test_seen[0], snapshot(model.ema.module))
    preds = t.predict(model, loader(n=2))
    x = next(iter(loader(n=2)))[0]
    with torch.no_grad(): torch.testing.assert_close(preds[0], model.ema(x), rtol=0, atol=0)
    assert all_equal(snapshot(model.generator), before)


def test_checkpoint_resume_is_bit_identical(tmp_path):
    "fit 2 batches -> save -> resume to 4 batches equals an uninterrupted 4-batch fit (EMA and generator)."
    # one batch per epoch: Lightning re-reads a plain DataLoader from its start after a resume, so only with
    # identical batches is the data sequence of both runs the same
    kw = dict(limit_val_batches=0)
    full = TinyGAN()
    trainer([EMACallback(decay=0.8, update_after_step=1)], max_steps=8, **kw).fit(full, loader(n=2))
    first = TinyGAN()
    t1 = trainer([EMACallback(decay=0.8, update_after_step=1)], max_steps=4, **kw)
    t1.fit(first, loader(n=2))
    t1.save_checkpoint(tmp_path / "half.ckpt")
    ckpt = torch.load(tmp_path / "half.ckpt", weights_only=True)
    assert ckpt[EMA_CHECKPOINT_KEY]["last_g_step"] == 2 and ckpt[EMA_CHECKPOINT_KEY]["num_updates"] == 1
    assert not any(k.startswith("ema.") for k in ckpt["state_dict"])
    assert all_equal(ema_weights_from_checkpoint(ckpt), snapshot(first.ema.module))
    resumed = TinyGAN(seed=5)  # different init: everything must come from the checkpoint
    t2 = trainer([EMACallback(decay=0.8, update_after_step=1)], max_steps=8, **kw)
    t2.fit(resumed, loader(n=2), ckpt_path=tmp_path / "half.ckpt")
    assert (resumed.ema.last_g_step, resumed.ema.num_updates) == (full.ema.last_g_step, full.ema.num_updates) == (4, 3)
    assert all_equal(snapshot(resumed.ema.module), snapshot(full.ema.module))
    assert all_equal(snapshot(resumed.generator), snapshot(full.generator))


def test_validate_from_checkpoint_uses_saved_ema(tmp_path):
    model = TinyGAN()
    t = trainer([EMACallback(decay=0.5)], max_steps=6, limit_val_batches=0)
    t.fit(model, loader())
    t.save_checkpoint(tmp_path / "c.ckpt")
    other = TinyGAN(seed=3)
    trainer([EMACallback(decay=0.5)]).validate(other, loader(), ckpt_path=tmp_path / "c.ckpt", verbose=False)
    assert all_equal(other.val_seen[0], snapshot(model.ema.module))
    assert all_equal(snapshot(other.generator), snapshot(model.generator))
    assert other.ema.num_updates == model.ema.num_updates == 3


@pytest.mark.parametrize("drop_callbacks", [False, True])
def test_checkpoint_without_ema_state_warns_and_copies_loaded_generator(tmp_path, drop_callbacks):
    model = TinyGAN()
    t = trainer([EMACallback(decay=0.5)], max_steps=4, limit_val_batches=0)
    t.fit(model, loader())
    t.save_checkpoint(tmp_path / "c.ckpt")
    ckpt = torch.load(tmp_path / "c.ckpt", weights_only=True)
    del ckpt[EMA_CHECKPOINT_KEY]
    if drop_callbacks: del ckpt["callbacks"]  # like a weights-only checkpoint: Lightning skips on_load_checkpoint
    torch.save(ckpt, tmp_path / "noema.ckpt")
    trained = snapshot(model.generator)
    other = TinyGAN(seed=9)
    init = snapshot(other.generator)
    assert not all_equal(init, trained)
    with pytest.warns(UserWarning, match="initialising the generator EMA from the loaded generator"):
        trainer([EMACallback(decay=0.5)]).validate(other, loader(), ckpt_path=tmp_path / "noema.ckpt", verbose=False)
    assert all_equal(snapshot(other.ema.module), trained) and other.ema.num_updates == 0
    assert all_equal(other.val_seen[0], trained)


def test_resume_fit_without_ema_state_starts_from_loaded_weights(tmp_path):
    model = TinyGAN()
    t = trainer([], max_steps=4, limit_val_batches=0)  # trained without any EMA
    t.fit(model, loader(n=4))
    t.save_checkpoint(tmp_path / "c.ckpt")
    trained = snapshot(model.generator)
    other = TinyGAN(seed=4)
    rec = []
    class Peek(L.Callback):
        def on_train_start(self, trainer, pl_module): rec.append(snapshot(pl_module.ema.module))
    with pytest.warns(UserWarning, match="no EMA state"):
        trainer([EMACallback(decay=0.5), Peek()], max_steps=6, limit_val_batches=0).fit(
            other, loader(n=4), ckpt_path=tmp_path / "c.ckpt")
    assert all_equal(rec[0], trained)  # at train start the EMA is the loaded generator, never the random init
    assert other.ema.last_g_step == 3  # g_step continues from the restored loop (batch count), not global_step


def test_checkpoint_saved_mid_swap_keeps_training_weights(tmp_path):
    class SavesInValidation(TinyGAN):
        def on_validation_epoch_end(self):
            self.live_during_val = snapshot(self.generator)
            self.trainer.save_checkpoint(tmp_path / "mid.ckpt")
    model = SavesInValidation(own_ema=lambda g: GeneratorEMA(g, decay=0.5)); model.module_updates = True
    trainer([EMACallback()], max_steps=4, val_check_interval=2).fit(model, loader(), loader())
    ckpt = torch.load(tmp_path / "mid.ckpt", weights_only=True)
    gen_sd = {k[len("generator."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("generator.")}
    assert all_equal(model.live_during_val, ckpt[EMA_CHECKPOINT_KEY]["shadow"])  # EMA was swapped in
    assert all_equal(gen_sd, model.after_batch[-1])  # but the checkpoint holds the training weights
