"Dense mechanism tests for gan_engine.losses (tiny tensors; the notebook holds the worked examples)."
import math

import pytest
from gan_engine.registry import ConfigError
import torch
import torch.nn as nn
from torchmetrics.functional.image import (
    multiscale_structural_similarity_index_measure as tm_ms_ssim,
    structural_similarity_index_measure as tm_ssim,
)

import gan_engine.losses as L
from gan_engine.losses import (
    AdversarialLoss, DiscriminatorLoss, GeneratorLoss, PerceptualLoss, R1Penalty, VGG19Features,
    adversarial_weight, charbonnier_loss, feature_matching_loss, gradient_penalty, l1_loss,
    load_vgg19_weights, ms_ssim_loss, mse_loss, r1_penalty, sam_loss, select_bands, spectral_angle,
    ssim_loss, tv_loss, vgg19_torchvision_keymap,
)

SAME_SHAPE = "Expected `sr` and `hr` to have the same shape but got"


def _pair(c=3, h=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, c, h, h, generator=g), torch.rand(2, c, h, h, generator=g)


# ---------------------------------------------------------------- reconstruction
@pytest.mark.parametrize("fn", [l1_loss, mse_loss, charbonnier_loss, ssim_loss, sam_loss])
def test_pixel_losses_zero_on_identical_and_positive_otherwise(fn):
    x, y = _pair()
    assert fn(x, x.clone()).abs().item() < 1e-6
    assert fn(x, y).item() > 1e-3


@pytest.mark.parametrize("fn", [l1_loss, mse_loss, charbonnier_loss, ssim_loss, ms_ssim_loss, sam_loss])
def test_shape_mismatch_errors(fn):
    x = torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match=SAME_SHAPE):
        fn(x, torch.rand(1, 4, 16, 16))           # band mismatch
    with pytest.raises(ValueError, match=SAME_SHAPE):
        fn(x, torch.rand(1, 3, 32, 32))           # size mismatch


def test_weight_map_normalisation_and_zero_mask():
    x, y = _pair()
    w = torch.zeros(2, 1, 16, 16); w[:, :, :8] = 2.0    # only the top half, weight value irrelevant
    ref = (x - y).abs()[:, :, :8].mean()
    torch.testing.assert_close(l1_loss(x, y, w), ref)
    torch.testing.assert_close(mse_loss(x, y, w), (x - y).square()[:, :, :8].mean())
    xr = x.clone().requires_grad_(True)
    z = l1_loss(xr, y, torch.zeros(2, 1, 16, 16))          # documented: all-zero mask -> 0, no NaN
    z.backward()
    assert z.item() == 0.0 and torch.count_nonzero(xr.grad) == 0
    with pytest.raises(ValueError, match=r"Expected `weight` to have shape \(B, 1, H, W\)"):
        l1_loss(x, y, torch.ones(2, 1, 8, 8))


def test_charbonnier_gradient_matches_formula():
    x, y = _pair(seed=1)
    x.requires_grad_(True)
    charbonnier_loss(x, y, eps=0.1).backward()
    d = (x - y).detach()
    torch.testing.assert_close(x.grad, d / torch.sqrt(d * d + 0.01) / d.numel())


def test_ssim_window_mapping_gives_requested_window():
    for win in range(3, 23, 2):
        s = L._ssim_sigma(win)
        assert int(3.5 * s + 0.5) * 2 + 1 == win          # torchmetrics' Gaussian window size rule
    with pytest.raises(ValueError, match="odd"):
        L._ssim_sigma(8)


def test_ssim_matches_torchmetrics_and_masked_mean_of_map():
    x, y = _pair()
    torch.testing.assert_close(ssim_loss(x, y, max_val=2.0), 1 - tm_ssim(x, y, data_range=2.0))
    w = torch.zeros(2, 1, 16, 16); w[..., 4:12, 4:12] = 1
    _, smap = tm_ssim(x, y, data_range=1.0, return_full_image=True, reduction="none")
    torch.testing.assert_close(ssim_loss(x, y, w), 1 - smap[..., 4:12, 4:12].mean())


def test_ms_ssim_matches_torchmetrics():
    x, y = _pair(h=32)
    betas = (0.3, 0.3, 0.4)
    ref = 1 - tm_ms_ssim(x, y, data_range=1.0, sigma=1.5 * 5 / 11, kernel_size=5, betas=betas, normalize="relu")
    torch.testing.assert_close(ms_ssim_loss(x, y, win=5, betas=betas), ref)
    assert ms_ssim_loss(x, x, win=5, betas=betas).abs().item() < 1e-6
    with pytest.raises(ValueError, match="at least 176x176"):
        ms_ssim_loss(torch.rand(1, 3, 128, 128), torch.rand(1, 3, 128, 128))


def test_sam_matches_acos_reference_and_known_angles():
    x, y = _pair(c=5, seed=3)
    cos = (x * y).sum(1) / (x.norm(dim=1) * y.norm(dim=1))
    torch.testing.assert_close(sam_loss(x, y), torch.acos(cos).mean(), atol=1e-5, rtol=1e-5)
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0]]).T.reshape(1, 2, 1, 2)   # two pixels
    b = torch.tensor([[0.0, 1.0], [1.0, 1.0]]).T.reshape(1, 2, 1, 2)   # 90° and 45°
    torch.testing.assert_close(spectral_angle(a, b).flatten(), torch.tensor([math.pi / 2, math.pi / 4]))
    w = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2)
    torch.testing.assert_close(sam_loss(a, b, w), torch.tensor(math.pi / 4))


def test_sam_gradients_finite_and_gradcheck():
    x = torch.rand(1, 3, 2, 2, dtype=torch.float64) + 0.1
    y = torch.rand(1, 3, 2, 2, dtype=torch.float64) + 0.1
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: sam_loss(a, y), (x,))
    for a, b in [(y.clone(), y), (torch.zeros_like(y), y), (torch.zeros_like(y), torch.zeros_like(y))]:
        a.requires_grad_(True)
        v = sam_loss(a, b)
        v.backward()
        assert torch.isfinite(v) and torch.isfinite(a.grad).all()
        assert v.item() == 0.0


def test_tv_hand_value():
    x = torch.tensor([[0.0, 1.0, 3.0], [2.0, 2.0, 2.0]]).view(1, 1, 2, 3)
    # vertical |2-0|,|2-1|,|2-3| -> mean 4/3 ; horizontal 1,2,0,0 -> mean 3/4
    torch.testing.assert_close(tv_loss(x), torch.tensor(4 / 3 + 3 / 4))


def test_fullgraph_compile_of_hot_paths():
    x, y = _pair(); w = torch.rand(2, 1, 16, 16)
    for fn, args in [(l1_loss, (x, y, w)), (sam_loss, (x, y, w)), (ssim_loss, (x, y, w)),
                     (AdversarialLoss("hinge", True).g_loss, (torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)))]:
        torch._dynamo.reset()
        torch.testing.assert_close(torch.compile(fn, backend="eager", fullgraph=True)(*args), fn(*args))


# ---------------------------------------------------------------- perceptual
@pytest.fixture
def vgg_file(tmp_path):
    torch.manual_seed(0)
    ref = VGG19Features(["relu2_2"])
    path = tmp_path / "vgg.pt"
    torch.save(ref.state_dict(), path)
    return path, ref


def test_torchvision_keymap_covers_all_16_convs():
    km = vgg19_torchvision_keymap()
    assert len(km) == 32
    idx = sorted({int(k.split(".")[1]) for k in km})
    assert idx == [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]
    full = VGG19Features(["relu5_4"])
    assert set(km.values()) == set(full.state_dict())


def test_vgg_loading_errors(vgg_file, tmp_path):
    path, ref = vgg_file
    with pytest.raises(FileNotFoundError, match=r"missing.pt` \(Training.Losses.perceptual_weights\) but it does not exist"):
        load_vgg19_weights(VGG19Features(["relu1_1"]), tmp_path / "missing.pt")
    import os
    old, os.environ["TORCH_HOME"] = os.environ.get("TORCH_HOME"), str(tmp_path)   # an empty torch hub cache
    try:
        with pytest.raises(FileNotFoundError, match="is null and torchvision's cached file"):
            load_vgg19_weights(VGG19Features(["relu1_1"]), None)
    finally:
        if old is None: del os.environ["TORCH_HOME"]
        else: os.environ["TORCH_HOME"] = old
    bad = dict(ref.state_dict()); bad["conv1_2.weight"] = torch.zeros(64, 3, 3, 3)
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"wrong shapes: \['conv1_2.weight: expected \(64, 64, 3, 3\) but got \(64, 3, 3, 3\)'\]"):
        load_vgg19_weights(VGG19Features(["relu2_2"]), tmp_path / "bad.pt")
    tv = {"features.0.weight": ref.conv1_1.weight, "features.0.bias": ref.conv1_1.bias}
    torch.save(tv, tmp_path / "tv.pt")
    with pytest.raises(ValueError, match=r"missing keys: \['conv1_2.weight', 'conv1_2.bias'\]"):
        load_vgg19_weights(VGG19Features(["relu1_2"]), tmp_path / "tv.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="state_dict"):
        load_vgg19_weights(VGG19Features(["relu1_2"]), tmp_path / "list.pt")


def test_perceptual_frozen_not_checkpointed_and_moves(vgg_file):
    path, ref = vgg_file
    pl = PerceptualLoss(path, {"relu1_2": 1.0, "relu2_2": 0.5})
    parent = nn.Module(); parent.loss = pl; parent.head = nn.Linear(1, 1)
    assert set(parent.state_dict()) == {"head.weight", "head.bias"}       # no vgg keys
    assert len(list(parent.parameters())) == 2
    assert all(not p.requires_grad for p in pl.vgg.parameters())
    parent.train()
    assert not pl.vgg.training
    parent.to(torch.float64)
    assert pl.vgg.conv2_2.weight.dtype == torch.float64 and pl.mean.dtype == torch.float64
    parent.float()
    torch.testing.assert_close(pl.vgg.conv2_2.weight, ref.conv2_2.weight)   # loaded values


def test_perceptual_values_gradients_and_bands(vgg_file):
    path, ref = vgg_file
    pl = PerceptualLoss(path, {"relu1_2": 1.0, "relu2_2": 0.5})
    x, y = _pair(c=4, h=8)
    assert pl(x, x).item() == 0.0
    # hand reference: ImageNet-normalised first 3 bands through the reference trunk
    m, s = torch.tensor(L.IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(L.IMAGENET_STD).view(1, 3, 1, 1)
    both = VGG19Features(["relu1_2", "relu2_2"]); both.load_state_dict(ref.state_dict())
    fx, fy = both((x[:, :3] - m) / s), both((y[:, :3] - m) / s)
    exp = (fx["relu1_2"] - fy["relu1_2"]).abs().mean() + 0.5 * (fx["relu2_2"] - fy["relu2_2"]).abs().mean()
    torch.testing.assert_close(pl(x, y), exp)
    assert pl(x, y).item() == pl(x, y).item()                               # deterministic bands
    xr = x.clone().requires_grad_(True)
    pl(xr, y).backward()
    assert xr.grad[:, :3].abs().sum() > 0 and xr.grad[:, 3].abs().sum() == 0
    assert all(p.grad is None for p in pl.vgg.parameters())
    one = x[:, :1]
    torch.testing.assert_close(select_bands(one), one.repeat(1, 3, 1, 1))
    with pytest.raises(ValueError, match="2-band input"):
        select_bands(x[:, :2])
    plb = PerceptualLoss(path, {"relu1_2": 1.0}, bands=[3, 2, 1])
    assert plb(x, y).item() != PerceptualLoss(path, {"relu1_2": 1.0})(x, y).item()
    pl11 = PerceptualLoss(path, {"relu1_2": 1.0}, input_range=(-1, 1))
    torch.testing.assert_close(pl11(x * 2 - 1, y * 2 - 1), PerceptualLoss(path, {"relu1_2": 1.0})(x, y))


# ---------------------------------------------------------------- adversarial
def _sp(v):  # softplus: BCE(x, 1) = sp(-x), BCE(x, 0) = sp(x)
    return math.log1p(math.exp(v))


R, Fk = torch.tensor([[1.0], [3.0]]), torch.tensor([[0.0], [-2.0]])   # mean R = 2, mean F = -1


def test_label_smoothing_bce():
    d = AdversarialLoss("bce", label_smoothing=True).d_loss(R, Fk)
    real = sum(-(0.9 * math.log(1 / (1 + math.exp(-r))) + 0.1 * math.log(1 - 1 / (1 + math.exp(-r)))) for r in (1, 3)) / 2
    torch.testing.assert_close(d, torch.tensor(real + (_sp(0) + _sp(-2)) / 2))
    assert AdversarialLoss("hinge", label_smoothing=True).real_label == 1.0   # not used by hinge


def test_relativistic_hand_values():
    # r~ = R - mean(F) = [2, 4];  f~ = F - mean(R) = [-2, -4]
    bce = AdversarialLoss("bce", relativistic=True)
    torch.testing.assert_close(bce.d_loss(R, Fk), torch.tensor((_sp(-2) + _sp(-4)) / 2 + (_sp(-2) + _sp(-4)) / 2))
    torch.testing.assert_close(bce.g_loss(Fk, R), torch.tensor((_sp(2) + _sp(4)) / 2 + (_sp(2) + _sp(4)) / 2))
    ls = AdversarialLoss("lsgan", relativistic=True)
    torch.testing.assert_close(ls.d_loss(R, Fk), torch.tensor((1 + 9) / 2 + (1 + 9) / 2))
    torch.testing.assert_close(ls.g_loss(Fk, R), torch.tensor((9 + 25) / 2 + (9 + 25) / 2))
    hi = AdversarialLoss("hinge", relativistic=True)
    torch.testing.assert_close(hi.d_loss(R, Fk), torch.tensor(0.0))
    torch.testing.assert_close(hi.g_loss(Fk, R), torch.tensor((3 + 5) / 2 + (3 + 5) / 2))
    with pytest.raises(ValueError, match="Expected `real_logits`"):
        hi.g_loss(Fk)


def test_relativistic_g_loss_detaches_real():
    r = R.clone().requires_grad_(True); f = Fk.clone().requires_grad_(True)
    AdversarialLoss("bce", relativistic=True).g_loss(f, r).backward()
    assert r.grad is None and f.grad.abs().sum() > 0


@pytest.mark.parametrize("t", ["bce", "lsgan", "hinge", "wasserstein"])
@pytest.mark.parametrize("rel", [False, True])
def test_adversarial_direction_per_pixel_logits(t, rel):
    if rel and t == "wasserstein":
        with pytest.raises(ValueError, match="relativistic_average_d"):
            AdversarialLoss(t, rel)
        return
    L_ = AdversarialLoss(t, rel)
    hi_, lo_ = torch.full((2, 1, 3, 3), 2.0), torch.full((2, 1, 3, 3), -2.0)
    assert L_.d_loss(hi_, lo_) < L_.d_loss(lo_, hi_)
    assert L_.g_loss(hi_, lo_) < L_.g_loss(lo_, hi_)
    f = torch.zeros(2, 1, 3, 3, requires_grad=True)
    L_.g_loss(f, torch.zeros(2, 1, 3, 3)).backward()
    assert (f.grad < 0).all()        # gradient descent raises the fake logits


def test_unknown_adv_type():
    with pytest.raises(ValueError, match="Expected `adv_loss_type` to be one of"):
        AdversarialLoss("wgan")


class _Lin(nn.Module):
    "Per-pixel linear D: logits(b,1,h,w) = sum_c w_c x(b,c,h,w); ∇ of the summed logits is w per pixel."
    def __init__(self, w):
        super().__init__(); self.w = nn.Parameter(w.view(1, -1, 1, 1))
    def forward(self, x):
        return (x * self.w).sum(1, keepdim=True), [x]


def test_gradient_penalty_per_pixel_and_param_grad():
    w = torch.tensor([0.5, -0.25, 1.0])
    D = _Lin(w)
    real, fake = torch.rand(2, 3, 2, 2), torch.rand(2, 3, 2, 2)
    gp = gradient_penalty(D, real, fake)          # tuple output accepted
    # per-sample gradient = w at each of 4 pixels -> norm 2*||w||
    torch.testing.assert_close(gp, (2 * w.norm() - 1) ** 2)
    gp.backward()
    assert D.w.grad.abs().sum() > 0                # create_graph: penalty trains D
    with pytest.raises(ValueError, match="Expected `real` and `fake` to have the same shape"):
        gradient_penalty(D, real, fake[:1])


def test_r1_per_pixel_and_lazy_in_discriminator_loss():
    w = torch.tensor([0.5, -0.25, 1.0]); D = _Lin(w)
    real = torch.rand(2, 3, 2, 2).requires_grad_(True)
    torch.testing.assert_close(r1_penalty(D(real)[0], real, 3.0), 3.0 / 2 * 4 * w.square().sum())
    DL = DiscriminatorLoss("bce", r1_gamma=3.0, r1_interval=3)
    assert [DL.r1_due(s) for s in range(4)] == [True, False, False, True]
    rl, fl = D(real)[0], D(torch.rand(2, 3, 2, 2))[0]
    tot, terms = DL(rl, fl, real=real, d_step=0)
    torch.testing.assert_close(terms["r1_w"], 3 * terms["r1"])
    torch.testing.assert_close(tot, AdversarialLoss("bce").d_loss(rl, fl) + terms["r1_w"])
    tot1, terms1 = DL(rl, fl, real=real, d_step=1)
    assert "r1" not in terms1 and "gp" not in terms1
    assert not R1Penalty(0.0).due(0)
    with pytest.raises(ValueError, match="Expected `d_fn`, `real` and `fake`"):
        DiscriminatorLoss("wasserstein")(rl, fl)


def test_feature_matching_detaches_real():
    r = [torch.ones(1, 2, 2, 2, requires_grad=True)]
    f = [torch.zeros(1, 2, 2, 2, requires_grad=True)]
    v = feature_matching_loss(r, f); v.backward()
    assert v.item() == 1.0 and r[0].grad is None and f[0].grad.abs().sum() > 0
    with pytest.raises(ValueError, match="same shape"):
        feature_matching_loss(r, [torch.zeros(1, 2, 4, 4)])


def test_adversarial_weight_ramp():
    lin = [adversarial_weight(s, 3, 4, 2.0) for s in range(9)]
    assert lin == [0, 0, 0, 0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    cos = [adversarial_weight(s, 3, 4, 2.0, "cosine") for s in range(9)]
    assert cos[:3] == [0, 0, 0] and cos[6:] == [2.0] * 3
    assert all(a < b for a, b in zip(cos[3:7], cos[4:7]))
    assert cos[3] < lin[3] and abs(cos[4] - 1.0) < 1e-12   # cosine starts slower, meets at the middle
    assert adversarial_weight(3, 3, 0, 2.0) == 2.0 and adversarial_weight(2, 3, 0, 2.0) == 0.0


# ---------------------------------------------------------------- composite
def test_generator_loss_terms_and_weight_map(vgg_file):
    path, _ = vgg_file
    x, y = _pair()
    w = torch.zeros(2, 1, 16, 16); w[..., :8, :] = 1
    G = GeneratorLoss(l1_weight=2.0, charbonnier_weight=0.5, ssim_weight=1.0, perceptual_weight=0.1,
                      perceptual_weights=path, perceptual_layers={"relu1_2": 1.0})
    tot, terms = G(x, y, weight=w)
    assert set(terms) == {f"{k}{s}" for k in ("l1", "charbonnier", "ssim", "perceptual") for s in ("", "_w")}
    torch.testing.assert_close(terms["l1"], l1_loss(x, y, w))
    torch.testing.assert_close(terms["ssim"], ssim_loss(x, y, w))
    for k in ("l1", "charbonnier", "ssim", "perceptual"):
        torch.testing.assert_close(terms[f"{k}_w"], G.weights[k] * terms[k])
    torch.testing.assert_close(tot, sum(terms[f"{k}_w"] for k in ("l1", "charbonnier", "ssim", "perceptual")))
    assert not any(k.startswith("perceptual") or "vgg" in k for k in G.state_dict())
    assert all(not t.requires_grad for t in terms.values())


def test_zero_weight_terms_never_computed(monkeypatch):
    def boom(*a, **k): raise AssertionError("should not be called")
    monkeypatch.setattr(L, "PerceptualLoss", boom)
    monkeypatch.setattr(L, "ssim_loss", boom)
    G = GeneratorLoss(l1_weight=1.0, perceptual_weight=0.0, ssim_weight=0.0, perceptual_weights="/nope.pt")
    x, y = _pair()
    tot, terms = G(x, y)
    assert set(terms) == {"l1", "l1_w"} and G.perceptual is None
    with pytest.raises(AssertionError, match="should not be called"):
        GeneratorLoss(perceptual_weight=1.0, perceptual_weights="/nope.pt")
    monkeypatch.undo()
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        GeneratorLoss(perceptual_weight=1.0, perceptual_weights="/nope.pt")
    with pytest.raises(FileNotFoundError, match="Training.Losses.perceptual_weights"):   # LPIPS: a VGG-16, never downloaded
        GeneratorLoss(perceptual_weight=1.0, perceptual_metric="lpips")
    with pytest.raises(ConfigError, match="Training.Losses.perceptual_metric: unknown perceptual network 'alex'"):
        GeneratorLoss(perceptual_weight=1.0, perceptual_metric="alex")


def test_generator_adversarial_part_and_feature_matching():
    G = GeneratorLoss(feature_matching_weight=2.0, adv_loss_type="hinge")
    fl = torch.tensor([[1.0], [3.0]])
    rf, ff = [torch.zeros(1, 2, 2, 2)], [torch.ones(1, 2, 2, 2)]
    tot, terms = G.adversarial(fl, adv_weight=0.1, real_feats=rf, fake_feats=ff)
    torch.testing.assert_close(terms["adv"], torch.tensor(-2.0))
    torch.testing.assert_close(tot, torch.tensor(0.1 * -2.0 + 2.0 * 1.0))
    with pytest.raises(ValueError, match="feature matching"):
        G.adversarial(fl)
    x, y = _pair()
    rec, _ = G.reconstruction(x, y)
    tot2, terms2 = G(x, y, fake_logits=fl, adv_weight=0.1, real_feats=rf, fake_feats=ff)
    torch.testing.assert_close(tot2, rec + tot)
    assert {"l1", "adv", "adv_w", "feature_matching", "feature_matching_w"} <= set(terms2)


def test_from_config(vgg_file):
    from gan_engine.config import load_config
    path, _ = vgg_file
    cfg = load_config({"Training": {"label_smoothing": False, "Losses": {
        "l1_weight": 0.5, "sam_weight": 0.2, "perceptual_weight": 0.3, "perceptual_weights": str(path),
        "perceptual_layers": {"relu2_2": 1.0}, "perceptual_bands": [2, 1, 0], "charbonnier_eps": 0.01,
        "adv_loss_type": "wasserstein", "gp_weight": 5.0}}})
    G = GeneratorLoss.from_config(cfg)
    assert G.perceptual.bands == [2, 1, 0] and G.perceptual.layer_weights == {"relu2_2": 1.0}
    assert (G.weights["l1"], G.weights["sam"], G.charbonnier_eps, G.adv.loss_type) == (0.5, 0.2, 0.01, "wasserstein")
    D = DiscriminatorLoss.from_config(cfg)
    assert (D.gp_weight, D.adv.real_label, D.r1.gamma) == (5.0, 1.0, 0.0)
