"""Issue 14: the speed switches (`Training.channels_last`, `compile`, `matmul_precision`) do what they say, change
no result beyond float rounding, and keep checkpoints interchangeable; `train_values` reaches Lightning only on the
steps something reads it there."""
import math
from pathlib import Path

import lightning as L
import pytest
import torch

from gan_engine.checkpoint import read_checkpoint, state_part
from gan_engine.config import ConfigError
from gan_engine.module import GANModule
from gan_engine.testing import fit_tiny, tiny_config

NO_VAL = ["Trainer.limit_val_batches=0"]


def _convs(net): return [m.weight for m in net.modules() if isinstance(m, torch.nn.Conv2d)]


def test_channels_last_trains_the_same_networks_in_nhwc_and_its_checkpoints_load_in_either_layout(tmp_path):
    plain, _ = fit_tiny([*NO_VAL, "Training.max_steps=6"])
    fast, t = fit_tiny([*NO_VAL, "Training.max_steps=6", "Training.channels_last=true"], run_dir=tmp_path)
    for net in (fast.generator, fast.discriminator, fast.ema.module):
        assert all(w.is_contiguous(memory_format=torch.channels_last) for w in _convs(net))
    assert not any(w.is_contiguous(memory_format=torch.channels_last) and w.shape[-1] > 1 and not w.is_contiguous()
                   for w in _convs(plain.generator))
    assert (fast.g_step, fast.d_step) == (plain.g_step, plain.d_step) == (6, 2)
    a, b = plain.state_dict(), fast.state_dict()
    assert a.keys() == b.keys()
    for k in a:   # the same computation up to the order of float sums in the convolutions
        if a[k].is_floating_point(): torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-4, msg=k)
    ckpt = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    weights = state_part(ckpt, "generator")
    again = GANModule(tiny_config(overrides=NO_VAL))    # a contiguous module and a channels-last one take them alike
    nhwc = GANModule(tiny_config(overrides=[*NO_VAL, "Training.channels_last=true"])); nhwc.configure_model()
    again.generator.load_state_dict(weights); nhwc.generator.load_state_dict(weights)
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in _convs(nhwc.generator))
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(nhwc.generator.eval()(x.contiguous(memory_format=torch.channels_last)),
                                   again.generator.eval()(x), rtol=1e-4, atol=1e-5)


def test_compile_compiles_in_place_and_keeps_the_state_dict_names():
    m = GANModule(tiny_config(overrides=["Training.compile=both", "Data.value_range=[0,1]"]))
    names = list(m.state_dict())
    m.configure_model(); m.configure_model()
    assert m.generator._compiled_call_impl is not None and m.discriminator._compiled_call_impl is not None
    assert list(m.state_dict()) == names
    g_only = GANModule(tiny_config(overrides=["Training.compile=generator", "Data.value_range=[0,1]"]))
    g_only.configure_model()
    assert g_only.generator._compiled_call_impl is not None and g_only.discriminator._compiled_call_impl is None


def test_a_compiled_generator_trains():
    m, t = fit_tiny([*NO_VAL, "Training.max_steps=3", "Training.g_pretrain_steps=3", "Training.compile=generator"])
    assert m.g_step == 3 and m.generator._compiled_call_impl is not None
    assert all(math.isfinite(float(v)) for k, v in m.train_values.items() if k.startswith("train/loss"))


def test_compiling_a_discriminator_that_does_not_exist_is_refused():
    with pytest.raises(ConfigError, match=r"Training.compile: 'discriminator'.*no discriminator.*'generator' or 'none'"):
        tiny_config(overrides=["Training.compile=discriminator", "Training.Losses.adv_loss_beta=0"])
    with pytest.raises(ConfigError, match=r"Training.compile.*'none'.*'both'"):
        tiny_config(overrides=["Training.compile=generatr"])


def test_matmul_precision_is_set_and_null_leaves_it():
    before = torch.get_float32_matmul_precision()
    try:
        GANModule(tiny_config(overrides=["Training.matmul_precision=medium", "Data.value_range=[0,1]"])).configure_model()
        assert torch.get_float32_matmul_precision() == "medium"
        torch.set_float32_matmul_precision("highest")
        GANModule(tiny_config(overrides=["Data.value_range=[0,1]"])).configure_model()
        assert torch.get_float32_matmul_precision() == "highest"
    finally:
        torch.set_float32_matmul_precision(before)


class LogCalls(L.Callback):
    "Which steps reached Lightning's self.log (their train/g_step in callback_metrics changed) and what health saw."
    def __init__(self): self.logged, self.values = [], []
    def on_train_batch_end(self, trainer, m, *a):
        self.logged.append(float(trainer.callback_metrics.get("train/g_step", -1)))
        self.values.append(float(m.train_values["train/g_step"]))


def test_train_values_reach_lightning_on_the_loggers_steps_and_every_step_when_monitored():
    rec = LogCalls()
    m, t = fit_tiny([*NO_VAL, "Training.max_steps=12"], callbacks=[rec], log_every_n_steps=5)
    assert rec.values == [float(s) for s in range(1, 13)]            # every step, for health and callbacks
    assert rec.logged == [-1.0] * 4 + [5.0] * 5 + [10.0] * 2 + [12.0]  # the loggers' steps 5 and 10, and the last
    watch = LogCalls()
    class Watches(L.Callback):
        monitor = "train/loss_g"
    fit_tiny([*NO_VAL, "Training.max_steps=4"], callbacks=[watch, Watches()], log_every_n_steps=50)
    assert watch.logged == [1.0, 2.0, 3.0, 4.0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    fit_tiny([*NO_VAL, "Training.max_steps=4", "Training.g_pretrain_steps=4"], run_dir=d)
    return d / "checkpoints" / "last.ckpt"


def _predict(ckpt, out, *flags):
    from gan_engine.cli import main
    from PIL import Image
    src = Path(__file__).resolve().parents[1] / "data_samples" / "sr" / "val" / "astronaut_00.png"
    assert main(["predict", "--ckpt", str(ckpt), "--input", str(src), "--output", str(out), *flags]) == 0
    import numpy as np
    return np.asarray(Image.open(out / "astronaut_00.png")).astype(int)


def test_predict_fast_paths_give_the_default_output(checkpoint, tmp_path):
    import numpy as np
    ref = _predict(checkpoint, tmp_path / "ref", "--tile", "24", "--overlap", "4")
    one = _predict(checkpoint, tmp_path / "one", "--tile", "24", "--overlap", "4", "--tile-batch", "1", "--channels-last")
    assert np.abs(one - ref).max() <= 1                      # float rounding only, after 8-bit quantisation
    bf16 = _predict(checkpoint, tmp_path / "bf16", "--tile", "24", "--overlap", "4", "--precision", "bf16")
    assert bf16.shape == ref.shape and 0 < np.abs(bf16 - ref).mean() < 2   # bf16 really ran, and stays close


def test_predict_refuses_a_tile_batch_below_one(checkpoint, tmp_path, capsys):
    from gan_engine.cli import main
    src = Path(__file__).resolve().parents[1] / "data_samples" / "sr" / "val"
    assert main(["predict", "--ckpt", str(checkpoint), "--input", str(src), "--output", str(tmp_path / "o"),
                 "--tile-batch", "0"]) != 0
    assert "--tile-batch: expected at least 1 tile per call but got 0" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_predictor_runs_in_inference_mode(checkpoint):
    from gan_engine.inference import load_predictor
    p = load_predictor(checkpoint, channels_last=True)
    out = p(torch.rand(1, 3, 8, 8) * 255)
    assert out.is_inference() and p.channels_last and "channels_last=True" in repr(p)


@pytest.mark.parametrize("precision,dtype", [("32", torch.float32), ("bf16", torch.bfloat16)])
def test_precision_sets_the_dtype_the_networks_compute_in(precision, dtype):
    seen = {}
    class Hook(L.Callback):
        def on_fit_start(self, trainer, m):
            for name, net in (("g", m.generator), ("d", m.discriminator)):
                net.register_forward_hook(lambda mod, i, o, name=name: seen.setdefault(name, set()).add(o.dtype))
    m, t = fit_tiny([*NO_VAL, "Training.max_steps=5", "Training.g_pretrain_steps=2", f"Training.precision={precision}"],
                    callbacks=[Hook()])
    assert t.precision == {"32": "32-true", "bf16": "bf16-mixed"}[precision]
    assert seen == {"g": {dtype}, "d": {dtype}}
    assert all(p.dtype == torch.float32 for p in m.parameters())   # mixed precision: the weights stay float32
