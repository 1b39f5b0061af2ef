"Dense tests of gan_engine.generators: shapes, gradients, ICNR, errors, compile-friendliness, builders."
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gan_engine.config import load_config
from gan_engine.generators import GENERATORS
from gan_engine.registry import ConfigError
from gan_engine.generators import (BLOCK_TYPES, SCALES, PixelShuffleUp, SRResNet, UNetGenerator, Upsampler,
                                   build_generator, check_image, count_parameters, icnr_, make_block,
                                   upsample_stages)

BANDS = (1, 3, 4, 13)
TINY = dict(n_channels=8, n_blocks=1, reduction=4, growth_channels=4)


def tiny_sr(in_bands, scale, block_type="standard", **kw):
    return SRResNet(in_bands, kw.pop("out_bands", None), scale, block_type, **{**TINY, **kw})


def assert_all_grads(model):
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"


def subpixel_spread(y, r):
    "Largest max-min difference inside any r×r sub-pixel group."
    g = y.unflatten(-2, (-1, r)).unflatten(-1, (-1, r))
    return (g.amax(dim=(-3, -1)) - g.amin(dim=(-3, -1))).max().item()


# --- shapes -------------------------------------------------------------------------------------

@pytest.mark.parametrize("block_type", BLOCK_TYPES)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("bands", BANDS)
def test_srresnet_shapes(block_type, scale, bands):
    torch.manual_seed(0)
    g = tiny_sr(bands, scale, block_type)
    y = g(torch.randn(2, bands, 5, 6))
    assert y.shape == (2, bands, 5 * scale, 6 * scale)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("in_bands,out_bands", [(1, 3), (4, 13), (13, 1)])
def test_srresnet_band_change(in_bands, out_bands):
    g = tiny_sr(in_bands, 4, out_bands=out_bands)
    assert g(torch.randn(1, in_bands, 4, 4)).shape == (1, out_bands, 16, 16)
    assert (g.in_bands, g.out_bands, g.scale) == (in_bands, out_bands, 4)


def test_n_blocks_and_kernels():
    g = SRResNet(3, scaling_factor=2, n_channels=8, n_blocks=3, large_kernel_size=5, small_kernel_size=5)
    assert len(g.blocks) == 3
    assert g.head[0].kernel_size == (5, 5) and g.tail.kernel_size == (5, 5)
    assert g.blocks[0].body[0].kernel_size == (5, 5)
    assert g(torch.randn(1, 3, 4, 4)).shape == (1, 3, 8, 8)
    assert len(SRResNet(3, n_blocks=0, n_channels=8).blocks) == 0


@pytest.mark.parametrize("bands", BANDS)
def test_unet_shapes(bands):
    g = UNetGenerator(bands, n_channels=8, depth=2, extra_in_channels=1)
    assert g(torch.randn(2, bands + 1, 16, 12)).shape == (2, bands, 16, 12)
    g = UNetGenerator(bands, out_bands=2, n_channels=4, depth=3)
    assert g(torch.randn(1, bands, 8, 16)).shape == (1, 2, 8, 16)
    assert (g.scale, g.size_multiple) == (1, 8)


def test_unet_channels_capped():
    g = UNetGenerator(3, n_channels=2, depth=5)
    assert max(m.out_channels for m in g.modules() if isinstance(m, nn.Conv2d)) == 16  # 8 × n_channels


# --- gradients ----------------------------------------------------------------------------------

@pytest.mark.parametrize("block_type", BLOCK_TYPES)
def test_srresnet_gradients_reach_every_parameter(block_type):
    torch.manual_seed(0)
    g = SRResNet(4, 3, 3, block_type, n_channels=8, n_blocks=2, reduction=4, growth_channels=4, cond_dim=5,
                 global_residual="none")
    g(torch.randn(2, 4, 5, 5), torch.randn(2, 5)).sum().backward()
    assert_all_grads(g)


def test_unet_gradients_reach_every_parameter():
    torch.manual_seed(0)
    g = UNetGenerator(3, 2, n_channels=4, depth=3, extra_in_channels=2, cond_dim=6)
    g(torch.randn(2, 5, 8, 8), torch.randn(2, 6)).sum().backward()
    assert_all_grads(g)


def test_input_gradient_flows():
    g = tiny_sr(3, 2, global_residual="nearest")
    x = torch.randn(1, 3, 4, 4, requires_grad=True)
    g(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


# --- ICNR ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("r", [2, 3])
def test_icnr_weight_groups_equal(r):
    w = torch.empty(8 * r * r, 5, 3, 3)
    icnr_(w, r)
    groups = w.view(8, r * r, 5, 3, 3)
    assert torch.equal(groups, groups[:, :1].expand_as(groups))
    assert groups[:, 0].std() > 0  # not a constant fill


@pytest.mark.parametrize("r", [2, 3])
def test_icnr_removes_checkerboard(r):
    torch.manual_seed(0)
    x = torch.randn(2, 8, 6, 5)
    assert subpixel_spread(PixelShuffleUp(8, r, use_icnr=True)(x), r) < 1e-6
    assert subpixel_spread(PixelShuffleUp(8, r, use_icnr=False)(x), r) > 1e-2


def test_icnr_stage_is_nearest_upsampling_of_a_conv():
    "A fresh ICNR stage equals nearest-neighbour upsampling of one sub-filter's convolution."
    torch.manual_seed(0)
    up, x = PixelShuffleUp(4, 2, use_icnr=True), torch.randn(1, 4, 5, 5)
    sub = F.conv2d(x, up.conv.weight[::4], up.conv.bias[::4], padding=1)
    torch.testing.assert_close(up(x), up.act(F.interpolate(sub, scale_factor=2, mode="nearest")))


@pytest.mark.parametrize("scale", [4, 8])
def test_icnr_multi_stage_last_stage_group_equal(scale):
    torch.manual_seed(0)
    y = Upsampler(4, scale, use_icnr=True)(torch.randn(1, 4, 3, 3))
    assert y.shape == (1, 4, 3 * scale, 3 * scale)
    assert subpixel_spread(y, 2) < 1e-6


def test_icnr_rejects_bad_channels():
    with pytest.raises(ValueError, match="multiple of 4 output channels but got 6"):
        icnr_(torch.empty(6, 2, 3, 3), 2)


def test_upsample_stages():
    assert [upsample_stages(s) for s in SCALES] == [[], [2], [3], [2, 2], [2, 2, 2]]
    for bad in (5, 6, 16, 0):
        with pytest.raises(ValueError, match=f"one of 1, 2, 3, 4, 8 but got {bad}"):
            upsample_stages(bad)


# --- global residual and conditioning -----------------------------------------------------------

@pytest.mark.parametrize("mode", ["nearest", "bilinear", "bicubic"])
def test_global_residual_adds_interpolated_input(mode):
    g = tiny_sr(3, 2, global_residual=mode)
    nn.init.zeros_(g.tail.weight); nn.init.zeros_(g.tail.bias)
    x = torch.randn(1, 3, 4, 5)
    kw = {} if mode == "nearest" else {"align_corners": False}
    torch.testing.assert_close(g(x), F.interpolate(x, scale_factor=2, mode=mode, **kw))


def test_no_global_residual_by_default():
    g = tiny_sr(3, 2)
    nn.init.zeros_(g.tail.weight); nn.init.zeros_(g.tail.bias)
    assert g(torch.randn(1, 3, 4, 4)).abs().max() == 0


@pytest.mark.parametrize("make", [lambda: SRResNet(3, scaling_factor=2, n_channels=8, n_blocks=2, cond_dim=4),
                                  lambda: UNetGenerator(3, n_channels=4, depth=2, cond_dim=4)])
def test_film_identity_at_init_then_conditioned(make):
    torch.manual_seed(0)
    g = make().eval()
    x, c = torch.randn(2, 3, 8, 8), torch.randn(2, 4)
    torch.testing.assert_close(g(x, c), g(x, torch.zeros(2, 4)))  # zero-initialised FiLM
    with torch.no_grad():
        for m in g.modules():
            if type(m).__name__ == "FiLM": m.proj.weight.normal_(std=0.5)
    assert (g(x, c) - g(x, torch.zeros(2, 4))).abs().max() > 1e-3
    # samples are conditioned independently: changing one sample's cond leaves the other's output
    c2 = c.clone(); c2[1] = -c2[1]
    torch.testing.assert_close(g(x, c2)[0], g(x, c)[0])


# --- errors -------------------------------------------------------------------------------------

def test_band_mismatch_message():
    with pytest.raises(ValueError, match=r"Expected `x` to have 4 bands \(Model.in_bands\) but got 3"):
        tiny_sr(4, 2)(torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match=r"4-D tensor of shape \(B, 3, H, W\) but got shape \(3, 4, 4\)"):
        tiny_sr(3, 2)(torch.randn(3, 4, 4))
    with pytest.raises(ValueError, match=r"Model.in_bands 3 \+ Generator.extra_in_channels 1\) but got 3"):
        UNetGenerator(3, n_channels=4, depth=1, extra_in_channels=1)(torch.randn(1, 3, 4, 4))


def test_unet_spatial_divisibility_message():
    g = UNetGenerator(3, n_channels=4, depth=3)
    with pytest.raises(ValueError, match=r"divisible by 8 \(2\*\*Generator.unet_depth, depth 3\) but got 12×16"):
        g(torch.randn(1, 3, 12, 16))


def test_cond_errors():
    g = tiny_sr(3, 2, cond_dim=4)
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"Expected `cond` of shape \(2, 4\) \(Model.cond_dim\) but got None"):
        g(x)
    with pytest.raises(ValueError, match=r"but got shape \(2, 3\)"):
        g(x, torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"but got shape \(1, 4\)"):
        g(x, torch.randn(1, 4))
    with pytest.raises(ValueError, match="Expected `cond` to be None"):
        tiny_sr(3, 2)(x, torch.randn(2, 4))


def test_constructor_errors():
    with pytest.raises(ValueError, match="`small_kernel_size` to be a positive odd integer but got 4"):
        SRResNet(3, small_kernel_size=4)
    with pytest.raises(ValueError, match="`out_bands` to equal `in_bands` \\(3\\)"):
        SRResNet(3, 4, global_residual="bicubic")
    with pytest.raises(ValueError, match="global_residual"):
        SRResNet(3, global_residual="area")
    with pytest.raises(ValueError, match="one of standard, res, rcab, rrdb, lka but got 'rdb'"):
        make_block("rdb", 8)
    with pytest.raises(ValueError, match="`depth` \\(Generator.unet_depth\\)"):
        UNetGenerator(3, depth=0)
    with pytest.raises(ValueError, match="one of 1, 2, 3, 4, 8 but got 6"):
        SRResNet(3, scaling_factor=6)


def test_check_image_rejects_non_tensor():
    with pytest.raises(ValueError, match="but got a list"):
        check_image([1, 2], 3)


# --- compile-friendliness -----------------------------------------------------------------------

@pytest.mark.parametrize("make,args", [
    (lambda: SRResNet(3, 3, 2, "rcab", n_channels=8, n_blocks=2, reduction=4, cond_dim=4, global_residual="bicubic"),
     lambda: (torch.randn(2, 3, 6, 6), torch.randn(2, 4))),
    (lambda: SRResNet(3, 2, 3, "lka", n_channels=8, n_blocks=1),
     lambda: (torch.randn(2, 3, 6, 6),)),
    (lambda: UNetGenerator(3, n_channels=4, depth=2, extra_in_channels=1, cond_dim=4),
     lambda: (torch.randn(2, 4, 8, 8), torch.randn(2, 4))),
])
def test_compiles_without_graph_breaks(make, args):
    "fullgraph=True fails on any graph break, e.g. data-dependent Python control flow in forward."
    torch._dynamo.reset()
    torch.manual_seed(0)
    g, a = make().eval(), args()
    compiled = torch.compile(g, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(*a), g(*a))


# --- registry builders --------------------------------------------------------------------------

def _cfg(**gen):
    return load_config({"Model": {"in_bands": 4, "out_bands": 13},
                        "Generator": {"n_channels": 8, "n_blocks": 2, "reduction": 4, "growth_channels": 4,
                                      "scaling_factor": 3, **gen},
                        "Data": {"scale": 3}})


@pytest.mark.parametrize("block_type", BLOCK_TYPES)
def test_build_srresnet_from_config(block_type):
    g = build_generator(_cfg(block_type=block_type))
    assert (type(g).__name__, g.block_type, g.in_bands, g.out_bands, g.scale) == ("SRResNet", block_type, 4, 13, 3)
    assert len(g.blocks) == 2
    assert g(torch.randn(1, 4, 4, 4)).shape == (1, 13, 12, 12)


def test_build_esrgan_forces_rrdb():
    g = build_generator(_cfg(model_type="esrgan", block_type="standard"))
    assert g.block_type == "rrdb"


def test_build_reads_kernel_and_icnr_keys():
    g = build_generator(_cfg(large_kernel_size=7, small_kernel_size=5, use_icnr=False, res_scale=0.5, block_type="res"))
    assert g.head[0].kernel_size == (7, 7) and g.blocks[0].body[0].kernel_size == (5, 5)
    assert g.blocks[0].res_scale == 0.5
    w = g.upsample[0].conv.weight.view(8, 9, 8, 5, 5)
    assert not torch.equal(w, w[:, :1].expand_as(w))  # ICNR off


def test_build_cond_dim():
    cfg = _cfg().override("Model.cond_dim=5")
    g = build_generator(cfg)
    assert g.cond_dim == 5 and g(torch.randn(1, 4, 4, 4), torch.randn(1, 5)).shape == (1, 13, 12, 12)


def test_build_unet():
    cfg = _cfg().override("Model.task=inpaint", "Generator.scaling_factor=1", "Generator.model_type=unet",
                          "Generator.unet_depth=2", "Generator.extra_in_channels=1")
    g = build_generator(cfg)
    assert (type(g).__name__, g.depth, g.extra_in_channels) == ("UNetGenerator", 2, 1)
    assert g(torch.randn(1, 5, 8, 8)).shape == (1, 13, 8, 8)
    with pytest.raises(ConfigError, match="needs Generator.scaling_factor 1"):
        build_generator(_cfg(model_type="unet"))


def test_build_by_import_path():
    g = build_generator(_cfg(model_type="gan_engine.generators:build_esrgan"))
    assert g.block_type == "rrdb"


def test_user_registered_generator():
    class Tiny(nn.Module):
        def __init__(self, cfg):
            super().__init__(); self.conv = nn.Conv2d(cfg.Model.in_bands, cfg.Model.out_bands, 1)
        def forward(self, x, cond=None): return F.interpolate(self.conv(x), scale_factor=3)
    GENERATORS.register("tiny_test_generator", Tiny)
    try:
        g = build_generator(_cfg(model_type="tiny_test_generator"))
        assert isinstance(g, Tiny) and g(torch.randn(1, 4, 2, 2)).shape == (1, 13, 6, 6)
    finally:
        GENERATORS._items.pop("tiny_test_generator", None)


def test_builder_must_return_module():
    GENERATORS.register("not_a_module_test", lambda cfg: "oops")
    try:
        with pytest.raises(TypeError, match="to return a torch.nn.Module but got str"):
            build_generator(_cfg(model_type="not_a_module_test"))
    finally:
        GENERATORS._items.pop("not_a_module_test", None)


def test_unknown_generator_names_choices():
    with pytest.raises(ConfigError, match="srresnet"):
        _cfg(model_type="srgann")


def test_default_parameter_counts_on_meta():
    with torch.device("meta"):
        std, rrdb = SRResNet(3), SRResNet(3, block_type="rrdb")
    assert count_parameters(std) == 1_548_547
    # one RRDB: 3 dense blocks of 5 convs (64+32i -> 32, last -> 64), 3x3 with bias
    dense = sum((64 + 32 * i) * (32 if i < 4 else 64) * 9 + (32 if i < 4 else 64) for i in range(5))
    assert count_parameters(rrdb) - count_parameters(std) == 16 * (3 * dense - (2 * 9 * 64 * 64 + 2 * 128 + 64)) + (64 - 128)  # body conv: bias vs BN
