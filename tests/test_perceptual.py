"LPIPS and DISTS (gan_engine.perceptual) against values from the reference packages (tests/fixtures/perceptual)."
import importlib.util, json, sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import gan_engine.perceptual as P
from gan_engine.perceptual import (
    DISTS, DISTSMetric, LPIPS, LPIPSMetric, VGG16Features, find_dists_head, find_lpips_head, find_vgg16_weights,
    load_vgg16_weights, vgg16_torchvision_keymap,
)

FIX = Path(__file__).resolve().parent / "fixtures" / "perceptual"   # made by make_reference.py (lpips 0.1.4, DISTS_pytorch 0.1)
_spec = importlib.util.spec_from_file_location("perceptual_fixture_data", FIX / "fixture_data.py")
fd = importlib.util.module_from_spec(_spec); _spec.loader.exec_module(fd)
REF = json.loads((FIX / "reference.json").read_text())
CASES = {c["name"]: c for c in REF["cases"]}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    "The fixture's deterministic weights, written as the reference packages' files (and the trunk in our key names)."
    d = tmp_path_factory.mktemp("perceptual")
    tv = fd.vgg16_state_dict()
    km = vgg16_torchvision_keymap()
    torch.save(tv, d / "vgg16_tv.pth")
    torch.save({km[k]: v for k, v in tv.items()}, d / "vgg16_ours.pt")
    torch.save(fd.lpips_head_state_dict(), d / "lpips_vgg.pth")
    torch.save(fd.dists_head_state_dict(), d / "dists_weights.pt")
    return d


@pytest.fixture(scope="module")
def lpips(files): return LPIPS(files / "vgg16_tv.pth", files / "lpips_vgg.pth")


@pytest.fixture(scope="module")
def dists(files): return DISTS(files / "vgg16_tv.pth", files / "dists_weights.pt")


def _images(name):
    c = CASES[name]
    return fd.image_pair(c["seed"], *c["shape"][:1], *c["shape"][2:], c["kind"])


def test_fixture_matches_its_generator():
    assert REF["packages"] == {"lpips": "0.1.4", "DISTS_pytorch": "0.1"}
    assert REF["seeds"] == {"vgg16": fd.VGG_SEED, "lpips_head": fd.LPIPS_HEAD_SEED, "dists_head": fd.DISTS_HEAD_SEED}
    assert [(c["name"], c["seed"], *c["shape"][:1], *c["shape"][2:], c["kind"]) for c in REF["cases"]] == list(fd.CASES)


# ---------------------------------------------------------------- against the reference packages
@pytest.mark.parametrize("name", list(CASES))
def test_lpips_matches_reference(lpips, name):
    x, y = _images(name)
    with torch.no_grad(): got = lpips(2 * x - 1, 2 * y - 1)
    torch.testing.assert_close(got, torch.tensor(CASES[name]["lpips"]), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name", list(CASES))
def test_dists_matches_reference(dists, name):
    x, y = _images(name)
    with torch.no_grad(): got = dists(x, y)
    torch.testing.assert_close(got, torch.tensor(CASES[name]["dists"]), rtol=1e-4, atol=1e-6)


def test_reference_values_not_degenerate():
    for key in ("lpips", "dists"):
        vals = {n: c[key] for n, c in CASES.items()}
        assert all(v == 0 for v in vals["identical_64"]) and min(vals["blur_noise_64"] + vals["shift_48x80"]) > 1e-3
        assert vals["unrelated_odd_45x37"][0] > 2 * max(vals["blur_noise_64"])     # unrelated images are further apart


def test_own_key_names_load_the_same(files, lpips, dists):
    x, y = _images("shift_48x80")
    with torch.no_grad():
        torch.testing.assert_close(LPIPS(files / "vgg16_ours.pt", files / "lpips_vgg.pth")(2 * x - 1, 2 * y - 1),
                                   lpips(2 * x - 1, 2 * y - 1), rtol=0, atol=0)
        torch.testing.assert_close(DISTS(files / "vgg16_ours.pt", files / "dists_weights.pt")(x, y), dists(x, y), rtol=0, atol=0)


def test_identical_and_symmetric(lpips, dists):
    x, y = _images("blur_noise_64")
    with torch.no_grad():
        assert torch.equal(lpips(x, x), torch.zeros(3))
        assert dists(x, x).abs().max() < 1e-6
        torch.testing.assert_close(lpips(2 * x - 1, 2 * y - 1), lpips(2 * y - 1, 2 * x - 1), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(dists(x, y), dists(y, x), rtol=1e-5, atol=1e-7)


def test_lpips_gives_gradients_to_inputs(lpips):
    x, y = _images("unrelated_odd_45x37")
    x = (2 * x - 1).requires_grad_(True)
    lpips(x, 2 * y - 1).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


# ---------------------------------------------------------------- metrics
def test_metrics_mean_over_batches_of_mixed_sizes(files):
    lp = LPIPSMetric((0, 255), vgg_weights=files / "vgg16_tv.pth", head_weights=files / "lpips_vgg.pth")
    ds = DISTSMetric((0, 255), vgg_weights=files / "vgg16_tv.pth", head_weights=files / "dists_weights.pt")
    for name in CASES:
        x, y = _images(name)
        lp.update(x * 255, y * 255); ds.update(x * 255, y * 255)
    for m, key in ((lp, "lpips"), (ds, "dists")):
        want = torch.tensor([v for c in REF["cases"] for v in c[key]]).mean()
        torch.testing.assert_close(m.compute(), want, rtol=1e-4, atol=1e-7)
        assert m.higher_is_better is False and m.full_state_update is False


def test_metrics_multispectral_bands(files):
    x, y = _images("blur_noise_64")
    ms = lambda im: torch.cat([im[:, 2:3], torch.rand(3, 1, 64, 64), im[:, 1:2], torch.rand(3, 1, 64, 64), im[:, 0:1]], 1)
    lp = LPIPSMetric((-1, 1), bands=[4, 2, 0], vgg_weights=files / "vgg16_tv.pth", head_weights=files / "lpips_vgg.pth")
    ds = DISTSMetric((-1, 1), bands=[4, 2, 0], vgg_weights=files / "vgg16_tv.pth", head_weights=files / "dists_weights.pt")
    lp.update(ms(2 * x - 1), ms(2 * y - 1)); ds.update(ms(2 * x - 1), ms(2 * y - 1))
    torch.testing.assert_close(lp.compute(), torch.tensor(CASES["blur_noise_64"]["lpips"]).mean(), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(ds.compute(), torch.tensor(CASES["blur_noise_64"]["dists"]).mean(), rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match=r"Expected `bands` to be 3 band indices"):
        lp.update(x[:, :2], y[:, :2])
    one = DISTSMetric((0, 1), vgg_weights=files / "vgg16_tv.pth", head_weights=files / "dists_weights.pt")
    one.update(x[:, :1], y[:, :1])                                 # one band, repeated to 3
    with torch.no_grad():
        torch.testing.assert_close(one.compute(), DISTS(files / "vgg16_tv.pth", files / "dists_weights.pt")(
            x[:, :1].expand(-1, 3, -1, -1), y[:, :1].expand(-1, 3, -1, -1)).mean())


def test_metric_checkpoint_has_no_vgg_and_follows_device(files):
    m = LPIPSMetric((0, 1), vgg_weights=files / "vgg16_tv.pth", head_weights=files / "lpips_vgg.pth")
    parent = nn.ModuleDict({"lpips": m, "dists": DISTSMetric((0, 1), vgg_weights=files / "vgg16_tv.pth",
                                                            head_weights=files / "dists_weights.pt")})
    assert list(m.state_dict()) == [] and list(parent.state_dict()) == []
    assert list(parent.parameters()) == [] and list(m.net.state_dict()) == []
    parent.to("meta")
    assert m.net.vgg.conv5_3.weight.device.type == "meta" and m.net.head0.device.type == "meta"
    assert parent["dists"].net.alpha.device.type == "meta"
    assert m.net.vgg.conv1_1.weight.dtype == torch.float32
    assert m.net.training is False and m.net.vgg.train().training is False


def test_metric_empty_and_value_range(files):
    m = DISTSMetric((0, 1), vgg_weights=files / "vgg16_tv.pth", head_weights=files / "dists_weights.pt")
    assert m.compute().isnan()
    with pytest.raises(ValueError, match=r"Expected `value_range` to be \(low, high\)"):
        DISTSMetric((1, 0), vgg_weights=files / "vgg16_tv.pth", head_weights=files / "dists_weights.pt")
    with pytest.raises(ValueError, match="Expected `preds` and `target` to have the same shape"):
        m.update(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 16))


# ---------------------------------------------------------------- weight files
def test_missing_files_name_the_argument(files, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(P, "_package_file", lambda *a: None)      # as if neither package were installed
    with pytest.raises(FileNotFoundError, match=r"`vgg_weights` is None and torchvision's cached file .*vgg16-397923af\.pth"):
        LPIPS(None, files / "lpips_vgg.pth")
    with pytest.raises(FileNotFoundError, match=r"nope\.pth` \(`vgg_weights`\) but it does not exist; nothing is downloaded"):
        DISTSMetric((0, 1), vgg_weights=tmp_path / "nope.pth", head_weights=files / "dists_weights.pt")
    with pytest.raises(FileNotFoundError, match=r"`head_weights` is None and no installed `lpips` package .*nothing is downloaded"):
        LPIPSMetric((0, 1), vgg_weights=files / "vgg16_tv.pth")
    with pytest.raises(FileNotFoundError, match=r"`head_weights` is None and no installed `DISTS_pytorch` package holds weights\.pt"):
        DISTS(files / "vgg16_tv.pth")
    with pytest.raises(FileNotFoundError, match=r"head\.pt` \(`Validation\.lpips_weights`\)"):
        find_lpips_head(tmp_path / "head.pt", key="Validation.lpips_weights")
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth").write_bytes((files / "vgg16_tv.pth").read_bytes())
    assert find_vgg16_weights() == tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth"
    assert torch.equal(load_vgg16_weights(VGG16Features()).conv1_1.bias, fd.vgg16_state_dict()["features.0.bias"])


@pytest.mark.parametrize("package,rel,finder", [("lpips", "weights/v0.1/vgg.pth", find_lpips_head),
                                                ("DISTS_pytorch", "weights.pt", find_dists_head)])
def test_installed_package_located_without_import(tmp_path, monkeypatch, package, rel, finder):
    pkg = tmp_path / package
    (pkg / rel).parent.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('must not be imported: it would import torchvision')\n")
    (pkg / rel).write_bytes(b"")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, package, raising=False)
    assert finder() == pkg / rel
    assert package not in sys.modules


def test_wrong_files_are_named(files, tmp_path):
    heads = fd.lpips_head_state_dict()
    torch.save({**heads, "lin2.model.1.weight": torch.zeros(1, 128, 1, 1)}, tmp_path / "lp.pth")
    with pytest.raises(ValueError, match=r"lp\.pth` to hold the LPIPS v0\.1 VGG heads; wrong shapes: \['lin2\.model\.1\.weight: "
                                         r"expected \(1, 256, 1, 1\) but got \(1, 128, 1, 1\)'\]"):
        LPIPS(files / "vgg16_tv.pth", tmp_path / "lp.pth")
    torch.save({"alpha": torch.rand(1, 1475, 1, 1)}, tmp_path / "ds.pt")
    with pytest.raises(ValueError, match=r"ds\.pt` to hold the DISTS alpha and beta; missing keys: \['beta'\]"):
        DISTS(files / "vgg16_tv.pth", tmp_path / "ds.pt")
    torch.save(fd.lpips_head_state_dict(), tmp_path / "heads_as_vgg.pth")     # a head file given as the trunk
    with pytest.raises(ValueError, match=r"heads_as_vgg\.pth` to hold VGG-16 weights; missing keys: \['conv1_1\.weight'"):
        LPIPS(tmp_path / "heads_as_vgg.pth", files / "lpips_vgg.pth")
    tv = fd.vgg16_state_dict(); tv["features.28.weight"] = tv["features.28.weight"][:, :256]   # a VGG-19-like mismatch
    torch.save(tv, tmp_path / "vgg_bad.pth")
    with pytest.raises(ValueError, match=r"wrong shapes: \['conv5_3\.weight: expected \(512, 512, 3, 3\) but got \(512, 256, 3, 3\)'\]"):
        DISTS(tmp_path / "vgg_bad.pth", files / "dists_weights.pt")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(ValueError, match=r"tensor\.pt` to hold the DISTS weights \(a dict of tensors\) but got Tensor"):
        DISTS(files / "vgg16_tv.pth", tmp_path / "tensor.pt")
    torch.save({"alpha": nn.Identity()}, tmp_path / "pickled.pt")            # weights_only refuses arbitrary objects
    with pytest.raises(ValueError, match=r"pickled\.pt` to hold the LPIPS VGG heads \(tensors only\) but loading failed"):
        LPIPS(files / "vgg16_tv.pth", tmp_path / "pickled.pt")


def test_validation_logs_lpips_and_dists_of_the_validation_outputs_and_ranks_checkpoints(files, tmp_path):
    "A run with Validation.perceptual_metrics: val/lpips and val/dists are the metrics of what validation produced."
    import lightning as L
    from gan_engine.testing import fit_tiny, tiny_config
    samples = Path(__file__).resolve().parents[1] / "data_samples"
    seen = []
    class Outputs(L.Callback):   # the outputs of the last validation
        def on_validation_epoch_start(self, trainer, m): seen.clear()
        def on_validation_batch_end(self, trainer, m, outputs, batch, batch_idx, dataloader_idx=0):
            seen.append((outputs["sr"].detach().clone(), outputs["hr"].clone()))
    cfg = tiny_config(samples, ["Validation.perceptual_metrics=[lpips, dists]", f"Validation.vgg16_weights={files / 'vgg16_tv.pth'}",
                                f"Validation.lpips_weights={files / 'lpips_vgg.pth'}", f"Validation.dists_weights={files / 'dists_weights.pt'}",
                                "Callbacks.checkpoint.monitor=val/lpips", "Callbacks.checkpoint.mode=min", "Callbacks.checkpoint.save_top_k=1",
                                "Training.max_steps=4", "Training.val_every_n_steps=2", "Logging.logger=none"])
    module, trainer = fit_tiny(cfg, [Outputs()], run_dir=tmp_path, num_sanity_val_steps=0)
    metric_keys = [k for k in module.state_dict() if k.startswith("val_metrics.")]
    assert not any("lpips" in k or "dists" in k for k in metric_keys), metric_keys   # no VGG, no head in checkpoints
    last = seen
    ref_l = LPIPSMetric((0, 255), vgg_weights=files / "vgg16_tv.pth", head_weights=files / "lpips_vgg.pth")
    ref_d = DISTSMetric((0, 255), vgg_weights=files / "vgg16_tv.pth", head_weights=files / "dists_weights.pt")
    for sr, hr in last: ref_l.update(sr, hr); ref_d.update(sr, hr)
    logged = trainer.callback_metrics
    assert float(logged["val/lpips"]) == pytest.approx(float(ref_l.compute()), rel=1e-5)
    assert float(logged["val/dists"]) == pytest.approx(float(ref_d.compute()), rel=1e-5)
    ckpt = trainer.checkpoint_callback
    assert ckpt.monitor == "val/lpips" and ckpt.mode == "min"
    assert "val_lpips=" in Path(ckpt.best_model_path).name


def test_missing_weight_files_stop_fit_before_anything_is_written(tmp_path):
    from gan_engine.registry import ConfigError
    from gan_engine.testing import tiny_config
    from gan_engine.trainer import prepare
    samples = Path(__file__).resolve().parents[1] / "data_samples"
    cfg = tiny_config(samples, ["Validation.perceptual_metrics=[dists]", f"Validation.vgg16_weights={tmp_path / 'none.pth'}",
                                f"Logging.output_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match=r"'dists' needs its weight files: .*Validation.vgg16_weights"):
        prepare(cfg)
    assert not (tmp_path / "run").exists()


def test_inpainting_validates_with_perceptual_metrics(files, tmp_path):
    "The inpainting task keeps its own metrics (which take the mask) and gets LPIPS of its composites beside them."
    from gan_engine.testing import fit_tiny, tiny_config
    samples = Path(__file__).resolve().parents[1] / "data_samples"
    cfg = tiny_config(samples, ["Validation.perceptual_metrics=[lpips]", f"Validation.vgg16_weights={files / 'vgg16_tv.pth'}",
                                f"Validation.lpips_weights={files / 'lpips_vgg.pth'}", "Training.max_steps=2",
                                "Training.val_every_n_steps=2", "Logging.logger=none", "Data.lr_patch_size=16"], task="inpaint")
    module, trainer = fit_tiny(cfg, run_dir=tmp_path, num_sanity_val_steps=0)
    logged = trainer.callback_metrics
    assert 0 < float(logged["val/lpips"]) < 10 and "val/psnr_hole" in logged


def test_lpips_loss_trains_and_its_files_are_checked_before_anything_is_written(files, tmp_path):
    "Training.Losses.perceptual_metric: lpips, through fit: the term is logged; a missing head stops prepare() naming the key."
    import math
    from gan_engine.registry import ConfigError
    from gan_engine.testing import fit_tiny, tiny_config
    from gan_engine.trainer import prepare
    samples = Path(__file__).resolve().parents[1] / "data_samples"
    over = ["Training.Losses.perceptual_weight=0.5", "Training.Losses.perceptual_metric=lpips",
            f"Training.Losses.perceptual_weights={files / 'vgg16_tv.pth'}", f"Training.Losses.lpips_weights={files / 'lpips_vgg.pth'}",
            "Training.max_steps=3", "Logging.logger=none", "Data.lr_patch_size=16"]
    module, trainer = fit_tiny(tiny_config(samples, over), run_dir=tmp_path / "ok", limit_val_batches=0)
    v = float(module.train_values["train/perceptual"])
    assert math.isfinite(v) and v > 0
    assert not any("net" in k or "vgg" in k for k in module.state_dict())
    cfg = tiny_config(samples, [*over, f"Training.Losses.lpips_weights={tmp_path / 'none.pth'}", f"Logging.output_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match=r"'lpips' needs its weight files: .*`Training.Losses.lpips_weights`"):
        prepare(cfg)
    assert not (tmp_path / "run").exists()
