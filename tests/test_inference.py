"Inference: checkpoint loading (EMA / raw / weight files / errors), seam-free tiling, Predictor, predict_path."
import logging
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from gan_engine.checkpoint import write_weight_files
from gan_engine.config import save_config
from gan_engine.data import DataError, GANDataModule, probe_image, read_image
from gan_engine.checkpoint import EMA_KEY as EMA_CHECKPOINT_KEY
from gan_engine.generators import build_generator
from gan_engine.inference import (CheckpointError, Predictor, blend_window, load_predictor, output_format,
                                  predict_path, predict_tiled, tile_starts, write_image)
from gan_engine.module import GANModule
from gan_engine.testing import fit_tiny, tiny_config
from gan_engine.normalise import ScaleOffset

SAMPLES = Path(__file__).resolve().parents[1] / "data_samples"
warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*LeafSpec.*")
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec", "ignore:.*does not have many workers")


# ---------------------------------------------------------------- a real checkpoint, trained for a few steps
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    "(module, checkpoint path, config) after 6 CPU steps; EMA decay 0.9 without warm-up so EMA != raw."
    tmp = tmp_path_factory.mktemp("ckpt")
    cfg = tiny_config(SAMPLES, ["Training.max_steps=6", "Training.EMA.decay=0.9", "Training.EMA.use_num_updates=false",
                                "Generator.block_type=res"])
    module, trainer = fit_tiny(cfg.override("Logging.logger=none", "Trainer.enable_checkpointing=false"), limit_val_batches=0)
    path = tmp / "last.ckpt"
    trainer.save_checkpoint(path)
    module.eval()
    return module, path, cfg


def lr_batch(b=1, h=24, w=20, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (b, 3, h, w)).astype(np.float32))


def expected(module, lr, raw=False):
    lo, hi = module.value_range
    with torch.no_grad(): return module(lr, raw=raw).clamp(lo, hi)


def test_checkpoint_gives_module_output_ema_and_raw(run):
    module, path, _ = run
    lr = lr_batch(2)
    ema, raw = expected(module, lr), expected(module, lr, raw=True)
    assert (ema - raw).abs().max() > 0.5            # the weight sets differ, so the comparison below can fail
    p = load_predictor(path)
    assert p.weights == "ema" and p.value_range == (0.0, 255.0) and p.scale == 2 and p.in_bands == 3
    torch.testing.assert_close(p(lr), ema, atol=1e-3, rtol=0)
    torch.testing.assert_close(load_predictor(path, raw=True)(lr), raw, atol=1e-3, rtol=0)
    one = p(lr[0].numpy())                           # (C,H,W) numpy in -> numpy out
    assert isinstance(one, np.ndarray) and one.dtype == np.float32 and one.shape == (3, 48, 40)
    np.testing.assert_allclose(one, ema[0].numpy(), atol=1e-3)


def test_checkpoint_does_not_touch_global_rng(run):
    _, path, _ = run
    torch.manual_seed(123); a = torch.rand(3)
    torch.manual_seed(123); load_predictor(path); b = torch.rand(3)
    torch.testing.assert_close(a, b)


def test_weight_files_with_config(run, tmp_path):
    module, path, cfg = run
    g_file, e_file = write_weight_files(torch.load(path, weights_only=True), tmp_path / "x.ckpt")
    yaml_path = save_config(cfg, tmp_path / "config.yaml")
    lr = lr_batch()
    p = load_predictor(e_file, config=yaml_path, value_range=(0, 255))
    assert p.weights == "x.generator_ema.pt"
    torch.testing.assert_close(p(lr), expected(module, lr), atol=1e-3, rtol=0)
    torch.testing.assert_close(load_predictor(g_file, config=cfg.to_dict(), value_range=(0, 255))(lr),
                               expected(module, lr, raw=True), atol=1e-3, rtol=0)
    with pytest.raises(CheckpointError, match="pass the run's `config`"): load_predictor(e_file)


def test_missing_ema_warns_and_uses_raw(run, tmp_path):
    module, path, _ = run
    state = torch.load(path, weights_only=True)
    del state[EMA_CHECKPOINT_KEY]
    torch.save(state, tmp_path / "noema.ckpt")
    with pytest.warns(UserWarning, match="no EMA generator weights"):
        p = load_predictor(tmp_path / "noema.ckpt")
    assert p.weights == "raw"
    lr = lr_batch()
    torch.testing.assert_close(p(lr), expected(module, lr, raw=True), atol=1e-3, rtol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")               # raw=True asks for the training weights: no warning
        load_predictor(tmp_path / "noema.ckpt", raw=True)


def test_load_errors(run, tmp_path):
    _, path, cfg = run
    state = torch.load(path, weights_only=True)
    with pytest.raises(FileNotFoundError, match="nope.ckpt' was not found"): load_predictor(tmp_path / "nope.ckpt")
    with pytest.raises(CheckpointError, match="is a folder"): load_predictor(tmp_path)
    (tmp_path / "junk.ckpt").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match=r"junk.ckpt' to be a checkpoint readable with torch.load\(weights_only=True\)"):
        load_predictor(tmp_path / "junk.ckpt")
    torch.save({"state_dict": {"net.weight": torch.zeros(1)}}, tmp_path / "foreign.ckpt")
    with pytest.raises(CheckpointError, match="foreign.ckpt' to be a gan_engine checkpoint.*no 'hyper_parameters' entry"):
        load_predictor(tmp_path / "foreign.ckpt")
    torch.save({"state_dict": state["state_dict"], "hyper_parameters": {"lr": 1}}, tmp_path / "nocfg.ckpt")
    with pytest.raises(CheckpointError, match="no 'config' entry"): load_predictor(tmp_path / "nocfg.ckpt")
    torch.save({"state_dict": {"discriminator.w": torch.zeros(1)}, "hyper_parameters": state["hyper_parameters"]},
               tmp_path / "nogen.ckpt")
    with pytest.raises(CheckpointError, match=r"no 'generator\.\*' entries"): load_predictor(tmp_path / "nogen.ckpt")
    torch.save({"epoch": 3, "optimizer": [1, 2]}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="or a generator state_dict but got keys"): load_predictor(tmp_path / "other.ckpt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="to hold a checkpoint dict but got a list"): load_predictor(tmp_path / "list.pt")


class NotAllowed:  # an arbitrary class in a pickle: weights_only loading refuses it, nothing runs
    def __reduce__(self): return (print, ("code from a checkpoint ran",))


def test_pickled_code_is_not_run(tmp_path, capsys):
    torch.save({"state_dict": {}, "x": NotAllowed()}, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match="weights_only"): load_predictor(tmp_path / "evil.ckpt")
    assert "code from a checkpoint ran" not in capsys.readouterr().out


def test_mismatched_weights_list_keys_and_shapes(run, tmp_path):
    _, path, cfg = run
    with pytest.raises(CheckpointError, match=r"shape mismatches \(\d+\): \['head.0.weight: \(8, 3, 3, 3\) in the file, "
                                              r"\(16, 3, 3, 3\) expected"):
        load_predictor(path, config=cfg.override("Generator.n_channels=16"))
    with pytest.raises(CheckpointError, match=r"(missing|unexpected) \(\d+\): \['blocks\.1"):
        load_predictor(path, config=cfg.override("Generator.n_blocks=2"))
    with pytest.raises(CheckpointError, match="n_blocks=2"):   # names the config it tried
        load_predictor(path, config=cfg.override("Generator.n_blocks=2"))


def test_import_paths_in_checkpoint_config_refused(run, tmp_path):
    _, path, _ = run
    state = torch.load(path, weights_only=True)
    state["hyper_parameters"]["config"]["Generator"]["model_type"] = "os:system"
    torch.save(state, tmp_path / "imp.ckpt")
    with pytest.raises(CheckpointError, match="Generator.model_type: 'os:system'.*trust_imports=True"):
        load_predictor(tmp_path / "imp.ckpt")


def test_value_range_needed_for_weight_file(run, tmp_path):
    _, path, cfg = run
    _, e_file = write_weight_files(torch.load(path, weights_only=True), tmp_path / "x.ckpt")
    with pytest.raises(Exception, match="value_range"): load_predictor(e_file, config=cfg)


# ---------------------------------------------------------------- tiling
def pointwise(t):
    return torch.sigmoid(3 * F.interpolate(t, scale_factor=2, mode="nearest") - 1) * t.new_tensor([1, 2, 3])[:, None, None]


@pytest.mark.parametrize("shape,tile,overlap,bs", [((1, 3, 37, 23), 8, 2, 1), ((2, 3, 37, 23), 16, 5, 3),
                                                   ((1, 3, 20, 50), 10, 0, 4), ((2, 3, 9, 30), 12, 4, 2),
                                                   ((1, 3, 5, 7), 64, 8, 4), ((1, 3, 31, 31), 31, 15, 1)])
def test_pointwise_generator_tiles_exactly(shape, tile, overlap, bs):
    x = torch.rand(shape)
    out = predict_tiled(pointwise, x, 2, tile, overlap, batch_size=bs)
    assert out.shape == (shape[0], 3, shape[2] * 2, shape[3] * 2)
    torch.testing.assert_close(out, pointwise(x), atol=1e-6, rtol=0)


def test_tile_starts_cover_and_end_at_border():
    for n in range(1, 60):
        for tile in (1, 5, 8, 13):
            for overlap in range(0, (tile - 1) // 2 + 1):
                s = tile_starts(n, tile, overlap)
                size = min(tile, n)
                assert s[0] == 0 and s[-1] + size == n and s == sorted(set(s))
                assert all(b - a <= tile - overlap for a, b in zip(s, s[1:]))   # neighbours overlap >= overlap


@pytest.mark.parametrize("window", ["cosine", "linear"])
@pytest.mark.parametrize("overlap,margin", [(4, 0), (4, 1), (4, 2), (6, 1), (0, 0)])
def test_windows_sum_to_one_and_cover(window, overlap, margin):
    # a row of tiles at regular spacing: the normalising sum is exactly 1; irregular last tile: sum > 0 everywhere
    for n in (30, 33):
        tile, scale = 10, 3
        starts = tile_starts(n, tile, overlap)
        total = torch.zeros(n * scale, dtype=torch.float64)
        for s in starts:
            total[s * scale:(s + tile) * scale] += blend_window(tile, scale, overlap, margin, s > 0, s + tile < n, window)
        assert total.min() > 0.2
        if n == 30 and (n - tile) % (tile - overlap) == 0: torch.testing.assert_close(total, torch.ones_like(total))


def conv_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 5, padding=2),
                         nn.Upsample(scale_factor=2), nn.Conv2d(8, 3, 3, padding=1)).eval()  # radius 3.5 LR px


def receptive_radius(fn, scale, bands=3, size=41):
    "LR pixels from a changed input pixel to the farthest changed output pixel."
    x = torch.rand(1, bands, size, size)
    y = x.clone(); y[..., size // 2, size // 2] += 1
    with torch.no_grad(): d = (fn(x) - fn(y)).abs().amax(dim=(0, 1))
    idx = (d > 1e-6).nonzero()
    centre = (size // 2 + 0.5) * scale
    return int(np.ceil(max((idx + 0.5 - centre).abs().max().item() / scale, 0)))


def test_conv_generator_tiles_exactly_when_margin_covers_receptive_field():
    net = conv_net()
    r = receptive_radius(net, 2)
    assert r == 4
    x = torch.rand(2, 3, 45, 61)
    with torch.no_grad():
        full = net(x)
        tiled = predict_tiled(net, x, 2, tile=2 * (2 * r) + 3, overlap=2 * r, margin=r, batch_size=3)
        short = predict_tiled(net, x, 2, tile=2 * (2 * r) + 3, overlap=2 * r, margin=r - 2)
    torch.testing.assert_close(tiled, full, atol=1e-5, rtol=0)
    assert (short - full).abs().max() > 1e-4        # a margin below the receptive field is not exact: the test can fail


def test_pasting_without_overlap_shows_seams_only_at_tile_borders():
    net = conv_net()
    x = torch.rand(1, 3, 40, 60)
    with torch.no_grad():
        full, pasted = net(x), predict_tiled(net, x, 2, tile=20, overlap=0)
    err = (pasted - full).abs().amax(dim=(0, 1))      # tiles at rows 0, 20 and columns 0, 20, 40: seams at 40, 80
    seam = torch.zeros_like(err, dtype=torch.bool)
    for s in (40,): seam[s - 8:s + 8] = True
    for s in (40, 80): seam[:, s - 8:s + 8] = True
    assert err[38:42].max() > 1e-2 and err[:, 78:82].max() > 1e-2
    assert err[~seam].max() < 1e-6


def test_blending_smooths_a_global_receptive_field():
    # output = the tile's mean everywhere: no overlap can make it exact, but blending removes the step
    def tile_mean(t): return t.mean(dim=(1, 2, 3), keepdim=True).expand(-1, 1, t.shape[2] * 2, t.shape[3] * 2)
    x = torch.linspace(0, 1, 80).repeat(1, 1, 16, 1)   # a horizontal ramp: tile means differ
    pasted = predict_tiled(tile_mean, x, 2, tile=24, overlap=0)
    blended = predict_tiled(tile_mean, x, 2, tile=24, overlap=8)
    jump = lambda y: (y[..., 1:] - y[..., :-1]).abs().max()
    assert jump(pasted) > 0.2                          # a visible step between tiles
    assert jump(blended) < 0.25 * jump(pasted)         # spread over the overlap instead


def test_trained_generator_tiles(run):
    module, path, _ = run
    p = load_predictor(path)
    r = receptive_radius(lambda t: p(t * 255), 2)
    x = lr_batch(1, 60, 70)
    full = p(x)
    exact = p.predict(x, tile=4 * r + 1, overlap=2 * r, margin=r)
    default = p.predict(x, tile=40, overlap=16)
    pasted = p.predict(x, tile=32, overlap=0)
    assert (exact - full).abs().max() < 1e-3                           # 0-255 units
    assert (default - full).abs().max() < 0.1
    assert (pasted - full).abs().max() > 1.0


def test_tiling_argument_errors():
    x = torch.rand(1, 3, 8, 8)
    for kw, msg in [(dict(tile=0, overlap=0), "Expected `tile` to be an int >= 1"),
                    (dict(tile=8, overlap=-1), "Expected `overlap` to be an int >= 0"),
                    (dict(tile=8, overlap=4), r"Expected `tile` to be greater than 2 \* `overlap` = 8 but got 8"),
                    (dict(tile=8.0, overlap=1), "Expected `tile` to be an int >= 1 .* but got 8.0"),
                    (dict(tile=9, overlap=4, margin=3), r"Expected `margin` to be an int in \[0, `overlap` // 2 = 2\]"),
                    (dict(tile=9, overlap=2, batch_size=0), "Expected `batch_size` to be an int >= 1"),
                    (dict(tile=9, overlap=2, window="hann"), "Expected `window` to be one of")]:
        with pytest.raises(ValueError, match=msg): predict_tiled(pointwise, x, 2, **kw)
    with pytest.raises(ValueError, match=r"Expected `lr` to be a \(C,H,W\) or \(B,C,H,W\) tensor"):
        predict_tiled(pointwise, torch.rand(8, 8), 2, 4, 1)
    with pytest.raises(ValueError, match=r"Expected `fn` to return a \(4, C, 8, 8\) tensor for tiles of \(4, 3, 4, 4\)"):
        predict_tiled(lambda t: t, x, 2, tile=4, overlap=1)


# ---------------------------------------------------------------- Predictor
def test_predictor_cond_is_repeated_per_tile():
    cfg = tiny_config(SAMPLES, ["Model.cond_dim=4"])
    g = build_generator(cfg)
    p = Predictor(g, {"lr": ScaleOffset(255.0), "hr": ScaleOffset(255.0)}, (0, 255), scale=2, in_bands=3, cond_dim=4)
    x, c = lr_batch(2, 30, 34), torch.randn(2, 4)
    full = p(x, c)
    with torch.no_grad():
        torch.testing.assert_close(full, (g(x / 255, c) * 255).clamp(0, 255), atol=1e-3, rtol=0)
    torch.testing.assert_close(p.predict(x, c, tile=25, overlap=12, margin=6), full, atol=1e-3, rtol=0)
    torch.testing.assert_close(p(x[:1], c[0]), full[:1], atol=1e-3, rtol=0)   # (E,) applies to the whole batch
    with pytest.raises(ValueError, match=r"Expected `cond` of shape \(2, 4\) \(Model.cond_dim\) but got None"): p(x)
    with pytest.raises(ValueError, match=r"Expected `cond` of shape \(4,\) or \(2, 4\)"): p(x, torch.zeros(2, 5))


def test_predictor_bands_and_shapes():
    p = Predictor(conv_net(), {"lr": ScaleOffset(1.0), "hr": ScaleOffset(1.0)}, (0, 1), scale=2, in_bands=3)
    with pytest.raises(ValueError, match=r"Expected `lr` to have 3 bands \(Model.in_bands\) but got 4"):
        p(torch.rand(1, 4, 8, 8))
    with pytest.raises(ValueError, match=r"Expected `lr` to be a \(C,H,W\) or \(B,C,H,W\) array or tensor"):
        p(torch.rand(8, 8))
    out = p(torch.rand(3, 5, 7) * 3 - 1)
    assert out.shape == (3, 10, 14) and out.min() >= 0 and out.max() <= 1      # clamped to the value range


class Divisible(nn.Module):
    "A per-pixel ×2 generator that only accepts sizes divisible by 4 (like a U-Net)."
    scale, in_bands, out_bands, size_multiple = 2, 3, 3, 4
    def forward(self, x):
        assert x.shape[-2] % 4 == 0 and x.shape[-1] % 4 == 0, x.shape
        return pointwise(x)


def test_predictor_pads_to_size_multiple():
    p = Predictor(Divisible(), {"lr": ScaleOffset(1.0), "hr": ScaleOffset(1.0)})
    x = torch.rand(1, 3, 10, 13)
    torch.testing.assert_close(p(x), pointwise(x), atol=1e-6, rtol=0)
    torch.testing.assert_close(p.predict(x, tile=7, overlap=2), pointwise(x), atol=1e-6, rtol=0)


def test_predictor_autocast_bf16(run):
    _, path, _ = run
    x = lr_batch()
    a, b = load_predictor(path)(x), load_predictor(path, dtype="bf16")(x)
    assert b.dtype == torch.float32 and (a - b).abs().max() < 8        # bf16 has ~3 significant digits; 0-255 units
    with pytest.raises(ValueError, match="Expected `dtype` to be None, a torch dtype or one of"):
        load_predictor(path, dtype="int8")


def test_from_module_does_not_change_the_module(run):
    module, _, _ = run
    module.train()
    p = Predictor.from_module(module)
    assert module.training and module.generator.training and p.weights == "ema"
    lr = lr_batch()
    module.eval()
    torch.testing.assert_close(p(lr), expected(module, lr), atol=1e-3, rtol=0)


# ---------------------------------------------------------------- files
def test_output_format_and_write_roundtrip(tmp_path):
    assert output_format("a.npy", 4, np.uint16) == (".npy", np.uint16)
    assert output_format("a.tif", 4, np.float64) == (".tif", np.float32)
    assert output_format("a.jpeg", 3, np.uint8) == (".png", np.uint8)
    assert output_format("a.png", 1, np.uint16) == (".png", np.uint16)
    assert output_format("a.png", 3, np.int32) == (".npy", np.int32)
    rng = np.random.default_rng(0)
    for arr, name in [(rng.integers(0, 256, (1, 5, 6)).astype(np.uint8), "l.png"),
                      (rng.integers(0, 256, (2, 5, 6)).astype(np.uint8), "la.png"),
                      (rng.integers(0, 256, (4, 5, 6)).astype(np.uint8), "rgba.png"),
                      (rng.integers(0, 65536, (1, 5, 6)).astype(np.uint16), "l16.png"),
                      (rng.integers(0, 65536, (4, 5, 6)).astype(np.uint16), "ms.tif"),
                      (rng.random((3, 5, 6)).astype(np.float32), "f.tiff"),
                      (rng.random((2, 5, 6)).astype(np.float32), "f.npy")]:
        back, meta = read_image(write_image(arr, tmp_path / name))
        np.testing.assert_array_equal(back, arr.astype(np.float32))
        assert meta["dtype"] == str(arr.dtype)


@pytest.fixture
def folder(tmp_path):
    src = tmp_path / "in"; src.mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (21, 30, 3)).astype(np.uint8)).save(src / "a.png")
    Image.fromarray(rng.integers(0, 256, (16, 11, 3)).astype(np.uint8)).save(src / "b.jpg")
    np.save(src / "c.npy", (rng.random((3, 17, 12)) * 255).astype(np.float32))
    np.save(src / "d.npy", rng.integers(0, 256, (13, 9, 3)).astype(np.uint8))        # channel-last on disk
    (src / "notes.txt").write_text("not an image")
    return src


def test_predict_path_folder(run, folder, tmp_path):
    _, path, _ = run
    p = load_predictor(path)
    out = predict_path(p, folder, tmp_path / "out", tile=12, overlap=2, suffix="_sr")
    assert [o.name for o in out] == ["a_sr.png", "b_sr.png", "c_sr.npy", "d_sr.npy"]
    for o, (shape, dtype) in zip(out, [((3, 42, 60), np.uint8), ((3, 32, 22), np.uint8), ((3, 34, 24), np.float32),
                                       ((3, 26, 18), np.uint8)]):
        assert probe_image(o) == (shape, np.dtype(dtype)), o
    c = np.load(folder / "c.npy")
    np.testing.assert_array_equal(np.load(out[2]), p.predict(c, tile=12, overlap=2))
    a = read_image(folder / "a.png")[0]
    np.testing.assert_array_equal(read_image(out[0])[0], np.rint(p.predict(a, tile=12, overlap=2)))
    one = predict_path(p, folder / "a.png", tmp_path / "single")            # a file, untiled
    assert one == [tmp_path / "single" / "a.png"]
    np.testing.assert_array_equal(read_image(one[0])[0], np.rint(p(a)))


def test_predict_path_errors(run, folder, tmp_path):
    _, path, _ = run
    p = load_predictor(path)
    np.save(folder / "e.npy", np.zeros((4, 8, 8), np.float32))
    with pytest.raises(DataError, match="e.npy' to have 3 bands"): predict_path(p, folder, tmp_path / "o1")
    assert not (tmp_path / "o1").exists()                                  # nothing written before the check
    (folder / "e.npy").unlink()
    (folder / "f.png").write_bytes(b"broken")
    with pytest.raises(DataError, match="f.png"): predict_path(p, folder, tmp_path / "o2")
    (folder / "f.png").unlink()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "a.jpeg")  # a.png and a.jpeg -> a.png twice
    with pytest.raises(DataError, match="would both be written to"): predict_path(p, folder, tmp_path / "o3")
    (folder / "a.jpeg").unlink()
    with pytest.raises(DataError, match="not to overwrite it"): predict_path(p, folder, folder)
    with pytest.raises(FileNotFoundError, match="missing.png' was not found"): predict_path(p, folder / "missing.png", tmp_path)
    with pytest.raises(DataError, match="notes.txt"): predict_path(p, folder / "notes.txt", tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="to be a folder but"): predict_path(p, folder, tmp_path / "file")


def test_predict_path_warns_outside_value_range(run, tmp_path):
    _, path, _ = run
    src = tmp_path / "in"; src.mkdir()
    np.save(src / "big.npy", np.full((3, 6, 6), 1000.0, np.float32))
    with pytest.warns(UserWarning, match=r"big.npy' has values in \[1000, 1000\], outside the model's value range \[0, 255\]"):
        predict_path(load_predictor(path), src, tmp_path / "out")


# ---------------------------------------------------------------- whole scenes, streamed (issue 14)
@pytest.mark.parametrize("layout,dtype", [("chw", np.float32), ("hwc", np.uint8)])
def test_cli_predict_streams_npy_scenes_bit_identical_to_the_in_memory_path(run, tmp_path, layout, dtype):
    from gan_engine.cli import main
    from gan_engine.inference import load_predictor, _to_dtype
    _, path, _ = run
    scene = np.random.default_rng(3).integers(0, 256, (3, 53, 47)).astype(dtype)
    src = tmp_path / "in"; src.mkdir()
    np.save(src / "scene.npy", scene if layout == "chw" else scene.transpose(1, 2, 0))
    assert main(["predict", "--ckpt", str(path), "--input", str(src), "--output", str(tmp_path / "out"), "--tile", "16", "--overlap", "4"]) == 0
    got = np.load(tmp_path / "out" / "scene.npy", mmap_mode="r")
    want = load_predictor(path).predict(scene.astype(np.float32), tile=16, overlap=4)
    assert got.dtype == np.dtype(dtype) and np.array_equal(np.asarray(got), _to_dtype(want, np.dtype(dtype)))


def test_cli_predict_geotiff_keeps_its_georeferencing(run, tmp_path):
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import from_origin
    from gan_engine.cli import main
    from gan_engine.inference import load_predictor, _to_dtype
    _, path, _ = run
    src = tmp_path / "in"; src.mkdir()
    scene = np.random.default_rng(4).integers(1, 256, (3, 37, 45)).astype(np.uint8); scene[:, -5:, -7:] = 0
    with rasterio.open(src / "s2.tif", "w", driver="GTiff", width=45, height=37, count=3, dtype="uint8", crs="EPSG:32632",
                       transform=from_origin(600000, 5000000, 10, 10), nodata=0) as d:
        d.write(scene); d.descriptions = ("red", "green", "blue")
    assert main(["predict", "--ckpt", str(path), "--input", str(src), "--output", str(tmp_path / "out"), "--tile", "16", "--overlap", "4"]) == 0
    with rasterio.open(tmp_path / "out" / "s2.tif") as o:
        assert (o.crs.to_epsg(), o.width, o.height, o.nodata, o.descriptions) == (32632, 90, 74, 0, ("red", "green", "blue"))
        assert (o.transform.a, o.transform.e, o.transform.c, o.transform.f) == (5.0, -5.0, 600000.0, 5000000.0)
        got = o.read()
    want = _to_dtype(load_predictor(path).predict(scene.astype(np.float32), tile=16, overlap=4), np.dtype(np.uint8))
    assert np.array_equal(got[:, :64, :76], want[:, :64, :76]) and got[:, -10:, -14:].max() == 0
