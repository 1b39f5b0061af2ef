"Bring your own component: extra loss terms (`Training.Losses.extra`, the loss-term registry) and a generator, a loss term, a normaliser and an extra-validation callback of your own, by import path and by registry, through a real fit()."
import math, textwrap

import pytest
import torch
import torch.nn as nn

from gan_engine.callbacks import EXTRA_VALIDATION
from gan_engine.generators import GENERATORS
from gan_engine.losses import LOSS_TERMS, GeneratorLoss, extra_loss_terms, gradient_l1_loss, l1_loss
from gan_engine.normalise import NORMALISERS
from gan_engine.registry import ConfigError
from gan_engine.testing import tiny_config
from gan_engine.trainer import fit, prepare

FAST = ["Training.max_steps=4", "Training.g_pretrain_steps=2", "Training.adv_loss_ramp_steps=1",
        "Training.val_every_n_steps=2", "Trainer.log_every_n_steps=1", "Callbacks.health.enabled=false",
        "Callbacks.checkpoint.save_top_k=1"]

# a package the tests write and import by path: one component of each kind
COMPONENTS = '''
import torch, torch.nn as nn, torch.nn.functional as F
from gan_engine.callbacks import ValidationHook
from gan_engine.normalise import ScaleOffset

class BicubicPlusConv(nn.Module):
    "Bicubic upsampling plus a learned 3x3 correction (a generator builder: called with the config)."
    def __init__(self, cfg):
        super().__init__()
        self.scale = cfg.Generator.scaling_factor
        self.conv = nn.Conv2d(cfg.Model.in_bands, cfg.Model.out_bands, 3, padding=1)
    def forward(self, x):
        up = F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return up + self.conv(up)

def mean_colour_l1(sr, hr):
    "L1 between the per-band means of sr and hr."
    return (sr.mean((2, 3)) - hr.mean((2, 3))).abs().mean()

class ScaledL1:
    "A loss-term class built with from_config: L1 divided by Training.Losses.max_val."
    built_with = None
    def __init__(self, max_val): self.max_val = max_val
    @classmethod
    def from_config(cls, cfg):
        cls.built_with = cfg.Training.Losses.max_val
        return cls(cfg.Training.Losses.max_val)
    def __call__(self, sr, hr): return (sr - hr).abs().mean() / self.max_val

def signed_unit(value_range=None):
    "A normaliser factory: the data range onto [-1, 1]."
    lo, hi = value_range
    return ScaleOffset(hi - lo, lo, signed=True)

class MaxError(ValidationHook):
    "Largest absolute error of the epoch, in raw units: val/max_abs_error."
    def reset(self, pl_module): self.worst = None
    def update(self, pl_module, outputs, batch):
        e = (outputs["sr"] - outputs["hr"]).abs().amax()
        self.worst = e if self.worst is None else torch.maximum(self.worst, e)
    def compute(self, pl_module): return {} if self.worst is None else {"val/max_abs_error": self.worst}
'''


@pytest.fixture
def components(tmp_path, monkeypatch):
    "A package `my_components` on sys.path (removed from sys.modules afterwards)."
    pkg = tmp_path / "pkgs" / "my_components"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "parts.py").write_text(textwrap.dedent(COMPONENTS))
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    yield "my_components.parts"
    import sys
    for m in [m for m in sys.modules if m.startswith("my_components")]: del sys.modules[m]


@pytest.fixture
def registered():
    "Registers components by name for one test and removes them afterwards."
    added = []
    def reg(registry, name, obj):
        registry.register(name, obj); added.append((registry, name))
    yield reg
    for registry, name in added: registry._items.pop(name.lower(), None)


# ---------------------------------------------------------------- extra loss terms inside the content loss
def test_custom_term_value_inside_the_content_loss(registered):
    registered(LOSS_TERMS, "corner", lambda sr, hr: (sr[..., 0, 0] - hr[..., 0, 0]).abs().mean())
    G = GeneratorLoss(l1_weight=1.0, extra={"corner": 3.0, "gradient_l1": 0.5})
    sr, hr = torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)
    sr[0, 0, 0, 0] = 2.0                            # one pixel of the first sample off by 2
    total, terms = G.reconstruction(sr, hr)
    l1 = 2.0 / 32                                   # 2 over 2*16 pixels
    corner = 2.0 / 2                                # mean over the batch of |corner difference|
    grad = 2.0 / 24 + 2.0 / 24                      # the pixel is in 1 vertical and 1 horizontal step of 24 each
    assert terms["corner"].item() == pytest.approx(corner)
    assert terms["corner_w"].item() == pytest.approx(3.0 * corner)
    assert terms["gradient_l1"].item() == pytest.approx(grad)
    assert total.item() == pytest.approx(l1 + 3.0 * corner + 0.5 * grad)
    assert sorted(terms) == ["corner", "corner_w", "gradient_l1", "gradient_l1_w", "l1", "l1_w"]


def test_terms_carry_gradients_and_zero_weight_skips():
    calls = []
    def spy(sr, hr):
        calls.append(1); return (sr - hr).square().mean()
    import gan_engine.losses as L
    L._spy_for_test = spy                           # an import path into a module that exists
    try:
        G = GeneratorLoss(l1_weight=0.0, extra={"gan_engine.losses:_spy_for_test": 0.0, "fft_l1": 1.0})
        sr = torch.rand(1, 2, 8, 8, requires_grad=True)
        total, terms = G(sr, torch.rand(1, 2, 8, 8))
        total.backward()
        assert calls == [] and "_spy_for_test" not in terms      # weight 0: built, never computed
        assert sr.grad is not None and sr.grad.abs().sum() > 0
    finally: del L._spy_for_test


def test_class_terms_built_from_config_or_without_arguments(components):
    from gan_engine.config import load_config
    cfg = load_config({"Training": {"Losses": {"max_val": 2.0, "extra": {
        f"{components}:ScaledL1": 1.0, "torch.nn:SmoothL1Loss": 1.0}}}})
    G = GeneratorLoss.from_config(cfg)
    assert set(G.extra) == {"ScaledL1", "SmoothL1Loss"}
    assert G.extra["ScaledL1"][0].max_val == 2.0 and isinstance(G.extra["SmoothL1Loss"][0], nn.SmoothL1Loss)
    sr, hr = torch.full((1, 1, 4, 4), 0.5), torch.zeros(1, 1, 4, 4)
    total, terms = G.reconstruction(sr, hr)
    assert terms["ScaledL1"].item() == pytest.approx(0.25)
    assert terms["SmoothL1Loss"].item() == pytest.approx(0.5 * 0.25)       # 0.5 x^2 below beta = 1
    assert total.item() == pytest.approx(l1_loss(sr, hr).item() + 0.25 + 0.125)


def test_nn_module_terms_stay_out_of_the_state_dict():
    G = GeneratorLoss(extra={"torch.nn:L1Loss": 1.0})
    assert G.state_dict() == {}


# ---------------------------------------------------------------- errors, at build time
@pytest.mark.parametrize("extra, message", [
    ({"gradient_l2": 1.0}, "Training.Losses.extra.gradient_l2: unknown loss term 'gradient_l2' (did you mean "
                           "'gradient_l1'?); expected one of ['fft_l1', 'focal_frequency', 'gradient_l1', 'lowpass_l1'] or an import path"),
    ({"fft_l1": -0.5}, "Training.Losses.extra.fft_l1: weight -0.5 must be a finite number >= 0"),
    ({"fft_l1": "high"}, "Training.Losses.extra.fft_l1: weight 'high' must be a finite number >= 0"),
    ({"fft_l1": True}, "Training.Losses.extra.fft_l1: weight True must be a finite number >= 0"),
    ({"fft_l1": math.inf}, "Training.Losses.extra.fft_l1: weight inf must be a finite number >= 0"),
    ({"math:pi": 1.0}, "Training.Losses.extra.math:pi: 'math:pi' is a float, not a loss term"),
    ({"math:no_such": 1.0}, "Training.Losses.extra.math:no_such: module 'math' has no attribute 'no_such'"),
    ({"not_a_pkg_xyz.mod:f": 1.0}, "Training.Losses.extra.not_a_pkg_xyz.mod:f: cannot import module 'not_a_pkg_xyz.mod'"),
    ({"torch.nn.functional:l1_loss": 1.0, "torch.nn:functional.l1_loss": 1.0},
     "Training.Losses.extra.torch.nn:functional.l1_loss: it would be logged as 'l1_loss', like 'torch.nn.functional:l1_loss'"),
    ({"torch.nn:Conv2d": 1.0}, "Training.Losses.extra.torch.nn:Conv2d: building torch.nn.Conv2d failed (TypeError"),
])
def test_bad_extra_terms_are_config_errors(extra, message):
    with pytest.raises(ConfigError) as e: extra_loss_terms(extra)
    assert message in str(e.value)


def test_taken_labels_and_all_problems_at_once(registered):
    registered(LOSS_TERMS, "psnr", gradient_l1_loss)
    with pytest.raises(ConfigError) as e: extra_loss_terms({"psnr": 1.0, "fft": 1.0, "fft_l1": -1})
    assert len(e.value.problems) == 3
    assert "Training.Losses.extra.psnr: it would be logged as 'psnr', which gan_engine logs already" in str(e.value)
    with pytest.raises(ConfigError, match="must be a mapping"): extra_loss_terms(["fft_l1"])


def test_non_scalar_term_names_itself():
    G = GeneratorLoss(extra={"torch:sub": 1.0})
    with pytest.raises(ValueError, match=r"Expected loss term 'sub' \(Training.Losses.extra\) to return a scalar tensor "
                                         r"but got a tensor of shape \(1, 1, 4, 4\)"):
        G(torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4))


def test_fit_refuses_a_bad_term_before_training(tmp_path):
    cfg = tiny_config(overrides=[f"Logging.output_dir={tmp_path}/run", *FAST]).override("Training.Losses.extra={fft_ll: 1.0}")
    with pytest.raises(ConfigError, match=r"Training.Losses.extra.fft_ll: unknown loss term 'fft_ll' \(did you mean 'fft_l1'\?\)"):
        prepare(cfg)


# ---------------------------------------------------------------- the four components in a real fit()
def test_fit_with_components_by_import_path(components, tmp_path):
    cfg = tiny_config(overrides=[f"Logging.output_dir={tmp_path}/run", *FAST])
    cfg = cfg.override(f"Generator.model_type={components}:BicubicPlusConv",
                       f"Data.normalization.lr={components}:signed_unit", f"Data.normalization.hr={components}:signed_unit",
                       f"Callbacks.extra_validation=['{components}:MaxError']",
                       f"Training.Losses.extra={{'{components}:mean_colour_l1': 0.5, 'gradient_l1': 0.1}}")
    run = fit(cfg)
    m = run.module
    assert type(m.generator).__name__ == "BicubicPlusConv"
    assert [type(m.normalisers[b]).__name__ for b in ("lr", "hr")] == ["ScaleOffset", "ScaleOffset"]
    assert m.normalisers["hr"].signed and m.normalisers["hr"].factor.item() == 255
    df = run.metrics
    train = df[["train/mean_colour_l1", "train/mean_colour_l1_w", "train/gradient_l1"]].dropna()
    assert len(train) == 4 and (train["train/mean_colour_l1"] >= 0).all()
    assert train["train/mean_colour_l1_w"].to_numpy() == pytest.approx(0.5 * train["train/mean_colour_l1"].to_numpy())
    val = df[["val/max_abs_error", "val/mean_colour_l1", "val/psnr"]].dropna()
    assert len(val) == 2 and ((val["val/max_abs_error"] > 0) & (val["val/max_abs_error"] <= 255)).all()


def test_fit_with_components_by_registry(components, registered, tmp_path):
    import importlib
    parts = importlib.import_module(components)
    registered(GENERATORS, "bicubic_plus_conv", parts.BicubicPlusConv)
    registered(LOSS_TERMS, "mean_colour", parts.mean_colour_l1)
    registered(NORMALISERS, "signed_unit", parts.signed_unit)
    registered(EXTRA_VALIDATION, "max_error", parts.MaxError)
    cfg = tiny_config(overrides=[f"Logging.output_dir={tmp_path}/run", *FAST, "Generator.model_type=bicubic_plus_conv",
                                 "Data.normalization.lr=signed_unit", "Data.normalization.hr=signed_unit",
                                 "Callbacks.extra_validation=[max_error]", "Training.Losses.extra={mean_colour: 1.0}"])
    run = fit(cfg)
    assert isinstance(run.module.generator, parts.BicubicPlusConv)
    df = run.metrics
    assert df["train/mean_colour"].notna().sum() == 4 and df["val/max_abs_error"].notna().sum() == 2
