"Dense tests of gan_engine.discriminators: shapes, features, spectral norm, conditioning, gradients, builders."
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from gan_engine.config import ConfigError, load_config
from gan_engine.discriminators import DISCRIMINATORS
from gan_engine.discriminators import (NORMS, PatchGANDiscriminator, Projection, StandardDiscriminator,
                                       UNetDiscriminator, build_discriminator, build_patchgan_discriminator,
                                       build_standard_discriminator, build_unet_discriminator, make_norm)
from gan_engine.generators import SRResNet

BANDS = (1, 3, 4, 13)
HR_SIZES = {2: 8, 3: 12, 4: 16, 8: 32}  # HR side for a 4-pixel LR input at each scale


def tiny(kind, bands, **kw):
    if kind == "standard": return StandardDiscriminator(bands, **{"n_blocks": 4, "base_channels": 4, "linear_size": 8, **kw})
    if kind == "patchgan": return PatchGANDiscriminator(bands, **{"n_layers": 2, "base_channels": 4, **kw})
    return UNetDiscriminator(bands, **{"depth": 2, "base_channels": 4, **kw})


def logit_shape(kind, size):
    return {"standard": (2, 1), "patchgan": (2, 1, size // 4, size // 4), "unet": (2, 1, size, size)}[kind]


KINDS = ("standard", "patchgan", "unet")


def assert_all_grads(model):
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"


# --- shapes -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("scale", sorted(HR_SIZES))
@pytest.mark.parametrize("bands", BANDS)
def test_logit_shapes(kind, scale, bands):
    torch.manual_seed(0)
    size = HR_SIZES[scale]
    d = tiny(kind, bands)
    y = d(torch.randn(2, bands, size, size))
    assert y.shape == logit_shape(kind, size) and torch.isfinite(y).all()


def test_generator_output_feeds_discriminator():
    "SR output of every scale and band count is accepted by every discriminator."
    for bands in (1, 13):
        for scale in (2, 3, 4, 8):
            g = SRResNet(bands, scaling_factor=scale, n_channels=4, n_blocks=1)
            sr = g(torch.randn(2, bands, 4, 4))
            for kind in KINDS:
                assert tiny(kind, bands)(sr).shape == logit_shape(kind, 4 * scale)


def test_standard_any_size_and_rectangular():
    d = tiny("standard", 3)
    for h, w in [(1, 1), (7, 13), (40, 24)]:
        assert d(torch.randn(2, 3, h, w)).shape == (2, 1)


def test_standard_channel_progression():
    d = StandardDiscriminator(3, n_blocks=8, base_channels=64)
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 512, 512]
    assert [c.stride[0] for c in convs] == [1, 2, 1, 2, 1, 2, 1, 2]
    assert d.fc[1].in_features == 512 * 36 and d.fc[1].out_features == 1024


def test_patchgan_rectangular_and_depth():
    d = PatchGANDiscriminator(3, n_layers=3, base_channels=4)
    assert d(torch.randn(2, 3, 16, 40)).shape == (2, 1, 2, 5)


def test_unet_rectangular():
    assert tiny("unet", 2, depth=3)(torch.randn(2, 2, 8, 24)).shape == (2, 1, 8, 24)


# --- features from the same pass ----------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_features_are_from_the_same_pass(kind):
    torch.manual_seed(0)
    d = tiny(kind, 3).eval()
    x = torch.randn(2, 3, 16, 16)
    logits, feats = d(x, return_features=True)
    assert isinstance(feats, list) and len(feats) >= 3
    torch.testing.assert_close(logits, d(x))
    last = feats[-1]
    head = d.out(d.fc(d.pool(last))) if kind == "standard" else d.out(last)
    torch.testing.assert_close(head, logits)  # the last feature is exactly what the head consumed


@pytest.mark.parametrize("kind", KINDS)
def test_feature_matching_gradient_reaches_input(kind):
    d = tiny(kind, 3)
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    _, feats = d(x, return_features=True)
    sum(f.abs().mean() for f in feats).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


# --- norms and spectral norm --------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["standard", "patchgan"])
@pytest.mark.parametrize("norm", NORMS)
def test_norm_choice(kind, norm):
    d = tiny(kind, 3, norm=norm)
    types = {type(m) for m in d.modules()}
    assert (nn.BatchNorm2d in types) == (norm == "batch")
    assert (nn.InstanceNorm2d in types) == (norm == "instance")
    assert d(torch.randn(2, 3, 16, 16)).shape == logit_shape(kind, 16)


def test_norm_unknown():
    with pytest.raises(ValueError, match="`norm` \\(Discriminator.norm\\) to be one of batch, instance, none but got 'layer'"):
        make_norm("layer", 3)
    with pytest.raises(ValueError, match="but got 'group'"):
        StandardDiscriminator(3, norm="group")


@pytest.mark.parametrize("kind", KINDS)
def test_spectral_norm_flag(kind):
    on, off = tiny(kind, 3, use_spectral_norm=True), tiny(kind, 3, use_spectral_norm=False)
    n_on = sum(hasattr(m, "parametrizations") for m in on.modules())
    n_off = sum(hasattr(m, "parametrizations") for m in off.modules())
    assert n_off == 0 and n_on > 0
    if kind != "unet":  # every conv and linear layer
        assert n_on == sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in on.modules())
    else:  # Real-ESRGAN: all but the first and the last conv
        assert n_on == sum(isinstance(m, nn.Conv2d) for m in on.modules()) - 2


def test_spectral_norm_bounds_the_weight():
    torch.manual_seed(0)
    d = tiny("standard", 3, use_spectral_norm=True)
    for _ in range(20): d(torch.randn(2, 3, 8, 8))  # power iterations in training mode
    w = d.fc[1].weight
    assert abs(torch.linalg.matrix_norm(w, ord=2).item() - 1) < 0.05


# --- conditioning -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_projection_conditioning(kind):
    torch.manual_seed(0)
    d = tiny(kind, 3, cond_dim=5).eval()
    x, c = torch.randn(2, 3, 16, 16), torch.randn(2, 5)
    base = d(x, c)
    assert (base - d(x, -c)).abs().max() > 1e-4
    # the projection term is linear in the embedding and zero for a zero embedding
    l2, l0 = d(x, -c), d(x, torch.zeros(2, 5))
    torch.testing.assert_close(base + l2, 2 * l0)
    d.proj, d.cond_dim = None, 0
    torch.testing.assert_close(l0, d(x))


def test_projection_module():
    p = Projection(3, 4)
    f, c = torch.randn(2, 4), torch.randn(2, 3)
    torch.testing.assert_close(p(f, c), (p.embed.weight @ c.T).T.mul(f).sum(1, keepdim=True))


@pytest.mark.parametrize("kind", KINDS)
def test_cond_errors(kind):
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(ValueError, match=r"Expected `cond` of shape \(2, 5\) \(Model.cond_dim\) but got None"):
        tiny(kind, 3, cond_dim=5)(x)
    with pytest.raises(ValueError, match="Expected `cond` to be None"):
        tiny(kind, 3)(x, torch.randn(2, 5))


# --- gradients ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,kw", [
    ("standard", {}), ("standard", {"norm": "instance", "use_spectral_norm": True, "cond_dim": 4}),
    ("standard", {"norm": "none", "cond_dim": 4}),
    ("patchgan", {}), ("patchgan", {"norm": "instance", "use_spectral_norm": True, "cond_dim": 4}),
    ("patchgan", {"norm": "none"}),
    ("unet", {}), ("unet", {"use_spectral_norm": False, "cond_dim": 4}), ("unet", {"skip_connection": False}),
])
def test_gradients_reach_every_parameter(kind, kw):
    torch.manual_seed(0)
    d = tiny(kind, 4, **kw)
    cond = torch.randn(2, 4) if kw.get("cond_dim") else None
    d(torch.randn(2, 4, 16, 16), cond).sum().backward()
    assert_all_grads(d)


# --- errors -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_band_mismatch(kind):
    with pytest.raises(ValueError, match=r"Expected `x` to have 4 bands \(the discriminator's in_bands, Model.out_bands\) but got 3"):
        tiny(kind, 4)(torch.randn(2, 3, 16, 16))
    with pytest.raises(ValueError, match="4-D tensor"):
        tiny(kind, 3)(torch.randn(3, 16, 16))


def test_size_errors():
    with pytest.raises(ValueError, match=r"divisible by 4 \(U-Net discriminator depth 2\) but got 16×10"):
        tiny("unet", 3)(torch.randn(2, 3, 16, 10))
    with pytest.raises(ValueError, match=r"at least 4×4 \(PatchGAN with 2 stride-2 layers, norm batch\) but got 3×8"):
        tiny("patchgan", 3)(torch.randn(2, 3, 3, 8))
    with pytest.raises(ValueError, match=r"at least 8×8 .* but got 6×6"):
        tiny("patchgan", 3, norm="instance")(torch.randn(2, 3, 6, 6))
    with pytest.raises(ValueError, match=r"at least 5×5"):
        tiny("standard", 3, norm="instance")(torch.randn(2, 3, 4, 4))
    tiny("standard", 3, norm="instance")(torch.randn(2, 3, 5, 5))  # the bound is tight


def test_constructor_errors():
    with pytest.raises(ValueError, match="`n_blocks` \\(Discriminator.n_blocks\\)"):
        StandardDiscriminator(3, n_blocks=0)
    with pytest.raises(ValueError, match="`n_layers` \\(Discriminator.n_blocks\\)"):
        PatchGANDiscriminator(3, n_layers=0)
    with pytest.raises(ValueError, match="`depth` \\(Discriminator.n_blocks\\)"):
        UNetDiscriminator(3, depth=0)


# --- compile-friendliness -----------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_compiles_without_graph_breaks(kind):
    torch._dynamo.reset()
    torch.manual_seed(0)
    d = tiny(kind, 3, cond_dim=4, use_spectral_norm=True).eval()
    x, c = torch.randn(2, 3, 16, 16), torch.randn(2, 4)
    compiled = torch.compile(d, backend="eager", fullgraph=True)
    logits, feats = compiled(x, c, return_features=True)
    torch.testing.assert_close(logits, d(x, c))
    assert len(feats) == len(d(x, c, return_features=True)[1])


# --- builders -----------------------------------------------------------------------------------

def _cfg(**disc):
    return load_config({"Model": {"in_bands": 4, "out_bands": 13},
                        "Discriminator": {"n_blocks": 2, "base_channels": 4, "linear_size": 8, **disc}})


@pytest.mark.parametrize("kind,cls", [("standard", StandardDiscriminator), ("patchgan", PatchGANDiscriminator),
                                      ("unet", UNetDiscriminator)])
def test_build_from_config(kind, cls):
    d = build_discriminator(_cfg(model_type=kind))
    assert type(d).__name__ == cls.__name__ and d.in_bands == 13  # judges Model.out_bands images
    assert d(torch.randn(2, 13, 16, 16)).shape == logit_shape(kind, 16)


def test_build_reads_keys():
    d = build_discriminator(_cfg(norm="instance", use_spectral_norm=True, base_channels=6, linear_size=5))
    assert d.norm == "instance" and len(d.blocks) == 2 and d.blocks[0][0].out_channels == 6
    assert d.out.in_features == 5 and hasattr(d.out, "parametrizations")
    p = build_discriminator(_cfg(model_type="patchgan", n_blocks=3))
    assert p.n_layers == 3
    u = build_discriminator(_cfg(model_type="unet", n_blocks=1).override("Model.cond_dim=2"))
    assert u.depth == 1 and u.cond_dim == 2


def test_builders_fill_model_defaults_for_null():
    "`null` n_blocks / use_spectral_norm give each model its own default."
    cfg = load_config({"Discriminator": {"base_channels": 4, "linear_size": 8}})
    assert cfg.Discriminator.n_blocks is None and cfg.Discriminator.use_spectral_norm is None
    assert len(build_standard_discriminator(cfg).blocks) == 8
    p = build_patchgan_discriminator(cfg)
    assert p.n_layers == 3 and not any(hasattr(m, "parametrizations") for m in p.modules())
    u = build_unet_discriminator(cfg)
    assert u.depth == 3 and u.in_bands == 3 and any(hasattr(m, "parametrizations") for m in u.modules())


def test_build_by_import_path_and_registration():
    d = build_discriminator(_cfg(model_type="gan_engine.discriminators:build_patchgan_discriminator"))
    assert type(d).__name__ == "PatchGANDiscriminator"
    DISCRIMINATORS.register("tiny_test_disc", lambda cfg: nn.Conv2d(cfg.Model.out_bands, 1, 1))
    try:
        assert isinstance(build_discriminator(_cfg(model_type="tiny_test_disc")), nn.Conv2d)
    finally:
        DISCRIMINATORS._items.pop("tiny_test_disc", None)
    with pytest.raises(ConfigError, match="patchgan"):
        _cfg(model_type="patchgn")
