"Mechanism tests for gan_engine.data: readers, degradation, crops, augmentation, bad data, DataModule."
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from gan_engine.render import bands_to_rgb
from gan_engine.data import (DataError, GANDataModule, IMAGE_EXTENSIONS, ResumableSampler, SRDataset, augment, collate,
                             crop_position, degrade, dtype_value_range, gaussian_blur, list_images, probe_image,
                             read_image, split_files)

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "data_samples"
RNG = np.random.default_rng(0)


def _png(path, arr):
    Image.fromarray(arr).save(path)
    return path


def _folder(tmp_path, name, n=3, shape=(3, 32, 32), dtype=np.uint8, ext=".npy", hi=255):
    d = tmp_path / name
    d.mkdir()
    for i in range(n):
        a = RNG.integers(0, hi, shape).astype(dtype)
        if ext == ".npy": np.save(d / f"im{i}.npy", a)
        else: Image.fromarray(np.moveaxis(a, 0, -1).squeeze()).save(d / f"im{i}{ext}")
    return d


# ---------------------------------------------------------------- readers
def test_png_rgb_uint8_channel_first(tmp_path):
    a = RNG.integers(0, 256, (7, 5, 3), dtype=np.uint8)
    x, m = read_image(_png(tmp_path / "a.png", a))
    assert x.dtype == np.float32 and x.shape == (3, 7, 5)
    np.testing.assert_array_equal(x, a.transpose(2, 0, 1))
    assert m["value_range"] == (0.0, 255.0) and m["band_names"] == ["R", "G", "B"] and m["bands"] == 3
    assert m["source"].endswith("a.png") and m["dtype"] == "uint8"


def test_png_greyscale_rgba_palette_16bit(tmp_path):
    g = RNG.integers(0, 256, (6, 4), dtype=np.uint8)
    x, m = read_image(_png(tmp_path / "g.png", g))
    assert x.shape == (1, 6, 4) and m["band_names"] == ["L"]
    np.testing.assert_array_equal(x[0], g)
    rgba = RNG.integers(0, 256, (4, 4, 4), dtype=np.uint8)
    x, m = read_image(_png(tmp_path / "rgba.png", rgba))
    assert x.shape == (4, 4, 4) and m["band_names"] == ["R", "G", "B", "A"]
    Image.fromarray(g).convert("P").save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png")[0].shape == (3, 6, 4)
    w = RNG.integers(0, 65536, (5, 6)).astype(np.uint16)
    Image.fromarray(w).save(tmp_path / "w.png")
    x, m = read_image(tmp_path / "w.png")
    assert m["value_range"] == (0.0, 65535.0) and m["dtype"] == "uint16"
    np.testing.assert_array_equal(x[0], w)
    assert probe_image(tmp_path / "w.png") == ((1, 5, 6), np.dtype("uint16"))


def test_jpeg(tmp_path):
    a = np.full((8, 8, 3), 120, np.uint8)
    Image.fromarray(a).save(tmp_path / "a.jpg", quality=95)
    Image.fromarray(a).save(tmp_path / "b.JPEG", quality=95)
    for f in ("a.jpg", "b.JPEG"):
        x, m = read_image(tmp_path / f)
        assert x.shape == (3, 8, 8) and abs(float(x.mean()) - 120) < 2 and m["value_range"] == (0.0, 255.0)


@pytest.mark.parametrize("dtype,vr", [(np.uint8, (0.0, 255.0)), (np.uint16, (0.0, 65535.0)), (np.float32, (0.0, 1.0))])
def test_npy_dtypes_and_layouts(tmp_path, dtype, vr):
    a = (RNG.random((5, 9, 7)) * 200).astype(dtype)
    np.save(tmp_path / "chw.npy", a)
    x, m = read_image(tmp_path / "chw.npy")
    np.testing.assert_array_equal(x, a.astype(np.float32))
    assert m["value_range"] == vr and m["bands"] == 5 and m["band_names"] is None
    np.save(tmp_path / "hwc.npy", a.transpose(1, 2, 0))  # last axis strictly smallest -> channel-last
    np.testing.assert_array_equal(read_image(tmp_path / "hwc.npy")[0], a.astype(np.float32))
    np.save(tmp_path / "hw.npy", a[0])
    assert read_image(tmp_path / "hw.npy")[0].shape == (1, 9, 7)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_tiff(tmp_path, dtype):
    tifffile = pytest.importorskip("tifffile")
    a = (RNG.random((4, 6, 8)) * 200).astype(dtype)
    tifffile.imwrite(tmp_path / "a.tif", a, photometric="minisblack")
    x, m = read_image(tmp_path / "a.tif")
    np.testing.assert_array_equal(x, a.astype(np.float32))
    assert m["value_range"] == dtype_value_range(dtype)
    assert probe_image(tmp_path / "a.tif") == ((4, 6, 8), np.dtype(dtype))


def test_tiff_without_tifffile_names_the_package(tmp_path, monkeypatch):
    (tmp_path / "a.tiff").write_bytes(b"II*\x00")
    monkeypatch.setitem(sys.modules, "tifffile", None)
    with pytest.raises(DataError, match="pip install tifffile"):
        read_image(tmp_path / "a.tiff")


def test_value_range_and_band_names_override(tmp_path):
    np.save(tmp_path / "m.npy", np.zeros((4, 3, 3), np.uint16))
    x, m = read_image(tmp_path / "m.npy", value_range=[0, 10000], band_names=["B2", "B3", "B4", "B8"])
    assert m["value_range"] == (0.0, 10000.0) and m["band_names"] == ["B2", "B3", "B4", "B8"]
    with pytest.raises(DataError, match=r"m\.npy.*3 bands.*but got 4"):
        read_image(tmp_path / "m.npy", band_names=["a", "b", "c"])


def test_dtype_value_range():
    assert dtype_value_range(np.uint8) == (0, 255) and dtype_value_range(np.uint16) == (0, 65535)
    assert dtype_value_range(np.float64) == (0, 1) and dtype_value_range(np.bool_) == (0, 1)


# ---------------------------------------------------------------- bad files
def test_corrupt_and_truncated_files(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"junk\.png.*could not read"):
        read_image(tmp_path / "junk.png")
    good = _png(tmp_path / "good.png", RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    data = good.read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"trunc\.png.*could not read"):
        read_image(tmp_path / "trunc.png")
    (tmp_path / "bad.npy").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"bad\.npy.*could not read"):
        read_image(tmp_path / "bad.npy")
    with pytest.raises(DataError, match=r"bad\.npy.*could not read"):
        probe_image(tmp_path / "bad.npy")
    np.save(tmp_path / "four_d.npy", np.zeros((1, 2, 3, 4)))
    with pytest.raises(DataError, match=r"four_d\.npy.*2-D \(H,W\) or 3-D"):
        read_image(tmp_path / "four_d.npy")


def test_nonfinite_rejected_unless_allowed(tmp_path):
    a = np.ones((2, 4, 4), np.float32); a[1, 2, 3] = np.inf; a[0, 0, 0] = np.nan
    np.save(tmp_path / "nf.npy", a)
    with pytest.raises(DataError, match=r"nf\.npy.*finite.*2 NaN/Inf.*allow_nonfinite"):
        read_image(tmp_path / "nf.npy")
    x, _ = read_image(tmp_path / "nf.npy", allow_nonfinite=True)
    assert np.isnan(x).sum() == 1 and np.isinf(x).sum() == 1


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match=r"Data\.train_dir.*missing.*was not found"):
        list_images(tmp_path / "missing", key="Data.train_dir")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"empty.*\.png, \.jpg, \.jpeg, \.npy, \.tif, \.tiff.*found none"):
        list_images(tmp_path / "empty")
    with pytest.raises(DataError, match=r"\.png.*found none"):
        SRDataset(tmp_path / "empty", extensions=[".png"])
    assert [p.suffix for p in list_images(_folder(tmp_path, "ok", ext=".png"))] == [".png"] * 3


def test_dataset_bad_data_errors(tmp_path):
    d = _folder(tmp_path, "rgb", n=2, shape=(3, 24, 40))
    with pytest.raises(DataError, match=r"im0\.npy.*4 bands \(Model\.in_bands\) but got 3"):
        SRDataset(d, scale=2, lr_patch_size=8, in_bands=4)
    with pytest.raises(DataError, match=r"im0\.npy.*at least 32x32 px.*lr_patch_size 8.*scale 4.*got 24x40"):
        SRDataset(d, scale=4, lr_patch_size=8)
    assert len(SRDataset(d, scale=2, lr_patch_size=8, in_bands=3)) == 2
    mixed = tmp_path / "mixed"; mixed.mkdir()
    np.save(mixed / "a.npy", np.zeros((1, 16, 16), np.uint8)); np.save(mixed / "b.npy", np.zeros((1, 16, 16), np.uint16))
    with pytest.raises(DataError, match=r"b\.npy.*uint16.*a\.npy.*uint8.*Data\.value_range"):
        SRDataset(mixed, scale=2, lr_patch_size=4)
    assert SRDataset(mixed, scale=2, lr_patch_size=4, value_range=(0, 1000)).value_range == (0.0, 1000.0)
    nf = tmp_path / "nf"; nf.mkdir()
    a = np.zeros((1, 16, 16), np.float32); a[0, 3, 3] = np.nan
    np.save(nf / "n.npy", a)
    ds = SRDataset(nf, scale=2, lr_patch_size=4)  # headers fine; values checked on read
    with pytest.raises(DataError, match=r"n\.npy.*NaN/Inf"):
        ds[0]
    assert torch.isnan(SRDataset(nf, scale=2, lr_patch_size=8, allow_nonfinite=True, train=False)[0]["hr"]).any()
    bad = tmp_path / "corrupt"; bad.mkdir(); (bad / "x.png").write_bytes(b"nope")
    with pytest.raises(DataError, match=r"x\.png.*could not read"):
        SRDataset(bad, scale=2, lr_patch_size=4)


def test_paired_errors(tmp_path):
    hr = tmp_path / "hr"; lr = tmp_path / "lr"; hr.mkdir(); lr.mkdir()
    for n in ("a", "b"): np.save(hr / f"{n}.npy", np.zeros((2, 16, 16), np.float32))
    np.save(lr / "a.npy", np.zeros((2, 8, 8), np.float32))
    with pytest.raises(DataError, match=r"LR partner.*Data\.train_lr_dir.*none for b\.npy"):
        SRDataset(hr, scale=2, lr_patch_size=4, lr_dir=lr)
    np.save(lr / "b.npy", np.zeros((2, 8, 7), np.float32))
    with pytest.raises(DataError, match=r"b\.npy.*8x8 px.*b\.npy' 16x16.*got 8x7"):
        SRDataset(hr, scale=2, lr_patch_size=4, lr_dir=lr)
    np.save(lr / "b.npy", np.zeros((2, 8, 8), np.float32))
    np.save(lr / "c.npy", np.zeros((2, 8, 8), np.float32))
    with pytest.raises(DataError, match=r"HR partner.*none for c\.npy"):
        SRDataset(hr, scale=2, lr_patch_size=4, lr_dir=lr)
    (lr / "c.npy").unlink()
    np.save(lr / "b.npy", np.zeros((3, 8, 8), np.float32))
    with pytest.raises(DataError, match=r"b\.npy.*2 bands.*got 3"):
        SRDataset(hr, scale=2, lr_patch_size=4, lr_dir=lr)


# ---------------------------------------------------------------- degradation
@pytest.mark.parametrize("scale", [2, 3, 4, 8])
def test_degrade_sizes(scale):
    hr = torch.rand(2, 3, 24 * 2, 24) * 255
    assert degrade(hr, scale).shape == (2, 3, 48 // scale, 24 // scale)
    assert degrade(hr[0], scale, blur_sigma=1.0, noise_std=1.0).shape == (3, 48 // scale, 24 // scale)
    with pytest.raises(ValueError, match=f"divisible by scale {scale} but got 49x24"):
        degrade(torch.rand(1, 49, 24), scale)


def test_degrade_values():
    # constant images stay constant; an antialiased x2 bicubic of a checkerboard is (nearly) its mean
    test = torch.full((1, 16, 16), 9.0)
    torch.testing.assert_close(degrade(test, 4), torch.full((1, 4, 4), 9.0))
    cb = (torch.arange(16)[:, None] + torch.arange(16)[None]) % 2 * 10.0
    assert (degrade(cb[None], 2)[0, 2:-2, 2:-2] - 5).abs().max() < 1.0  # antialiasing removes the pattern
    x = torch.rand(1, 3, 32, 32) * 100
    torch.testing.assert_close(degrade(x, 4), F.interpolate(x, scale_factor=0.25, mode="bicubic", antialias=True))
    plain = degrade(x, 4, antialias=False)
    torch.testing.assert_close(plain, F.interpolate(x, scale_factor=0.25, mode="bicubic", antialias=False))
    assert not torch.allclose(plain, degrade(x, 4))
    # blur happens before downscaling
    torch.testing.assert_close(degrade(x, 2, blur_sigma=1.2), degrade(gaussian_blur(x, 1.2), 2))
    assert degrade(torch.full((1, 8, 8), 300.0), 2, noise_std=50, clip=(0, 255)).max() <= 255


def test_degrade_noise_reproducible_and_sized():
    hr = torch.zeros(1, 256, 256)
    a = degrade(hr, 2, noise_std=3.0, generator=torch.Generator().manual_seed(1))
    b = degrade(hr, 2, noise_std=3.0, generator=torch.Generator().manual_seed(1))
    c = degrade(hr, 2, noise_std=3.0, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c) and abs(float(a.std()) - 3.0) < 0.1


def test_gaussian_blur_matches_reference():
    x = torch.zeros(1, 1, 21, 21); x[..., 10, 10] = 1.0
    y = gaussian_blur(x, 2.0)[0, 0]
    r = torch.arange(-10, 11, dtype=torch.float64)
    ref = torch.exp(-(r[:, None] ** 2 + r[None] ** 2) / 8)
    ref[(r[:, None].abs() > 6) | (r[None].abs() > 6)] = 0  # kernel radius ceil(3*sigma)
    torch.testing.assert_close(y.double(), ref / ref.sum(), atol=1e-6, rtol=1e-4)


# ---------------------------------------------------------------- crops, augmentation, datasets
def test_crop_positions_cover_range():
    g = torch.Generator().manual_seed(0)
    pos = {crop_position((6, 5), 4, True, g) for _ in range(200)}
    assert pos == {(t, l) for t in range(3) for l in range(2)}
    assert crop_position((6, 5), 4, False) == (1, 0)


def test_augment_same_transform_for_all():
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(64):
        x = torch.arange(2 * 6 * 6.).view(2, 6, 6)
        out, ops = augment({"a": x, "b": x * 2, "m": x[:1]}, generator=g)
        torch.testing.assert_close(out["b"], out["a"] * 2); torch.testing.assert_close(out["m"], out["a"][:1])
        seen.add((ops["hflip"], ops["vflip"], ops["rot90"]))
    assert len(seen) == 16
    out, ops = augment({"a": x}, hflip=False, vflip=False, rot90=False, generator=g)
    assert torch.equal(out["a"], x) and ops == dict(hflip=False, vflip=False, rot90=0)


def test_on_the_fly_lr_is_degraded_hr_crop(tmp_path):
    d = _folder(tmp_path, "hr", n=2, shape=(3, 40, 36), dtype=np.uint8)
    ds = SRDataset(d, scale=4, lr_patch_size=6, augment=dict(hflip=False, vflip=False, rot90=False))
    torch.manual_seed(0)
    for k in range(6):
        it = ds[k % 2]
        full = torch.from_numpy(read_image(it["meta"]["source"])[0])
        t, l, h, w = it["meta"]["crop_hr"]
        assert (h, w) == (24, 24) and it["meta"]["crop_lr"] == (t // 4, l // 4, 6, 6) and t % 4 == 0 and l % 4 == 0
        torch.testing.assert_close(it["hr"], full[:, t:t + h, l:l + w])
        torch.testing.assert_close(it["lr"], degrade(full[:, t:t + h, l:l + w], 4).clamp(0, 255))


@pytest.mark.parametrize("scale", [2, 3, 4, 8])
def test_paired_alignment_survives_augmentation(tmp_path, scale):
    # LR = s x s block means of HR: equivariant under flips/rot90, so alignment is checkable exactly
    hr_d, lr_d = tmp_path / "hr", tmp_path / "lr"; hr_d.mkdir(); lr_d.mkdir()
    for i in range(2):
        hr = RNG.random((2, 4 * scale, 6 * scale)).astype(np.float32)
        np.save(hr_d / f"{i}.npy", hr)
        np.save(lr_d / f"{i}.npy", F.avg_pool2d(torch.from_numpy(hr)[None], scale)[0].numpy())
    ds = SRDataset(hr_d, scale=scale, lr_patch_size=3, lr_dir=lr_d)
    torch.manual_seed(0)
    ops = set()
    for k in range(40):
        it = ds[k % 2]
        assert it["lr"].shape == (2, 3, 3) and it["hr"].shape == (2, 3 * scale, 3 * scale)
        torch.testing.assert_close(it["lr"], F.avg_pool2d(it["hr"][None], scale)[0], rtol=1e-5, atol=1e-6)
        ops.add(tuple(it["meta"]["augment"].values()))
        assert it["meta"]["lr_source"].endswith(f"{k % 2}.npy")
    assert len(ops) > 4  # augmentation really happened


def test_on_the_fly_alignment_under_augmentation(tmp_path):
    d = _folder(tmp_path, "hr", n=1, shape=(1, 32, 32), dtype=np.float32, hi=1)
    np.save(d / "im0.npy", RNG.random((1, 32, 32)).astype(np.float32))
    ds = SRDataset(d, scale=2, lr_patch_size=8, clip=False)
    torch.manual_seed(1)
    for _ in range(16):  # bicubic degradation commutes with flips and 90-degree rotations
        it = ds[0]
        torch.testing.assert_close(it["lr"], degrade(it["hr"], 2), atol=1e-5, rtol=1e-4)


def test_training_randomness_follows_torch_seed(tmp_path):
    d = _folder(tmp_path, "hr", n=1, shape=(3, 64, 64))
    ds = SRDataset(d, scale=2, lr_patch_size=8, noise_std=2.0)
    torch.manual_seed(5); a = ds[0]
    torch.manual_seed(5); b = ds[0]
    torch.manual_seed(6); c = ds[0]
    assert torch.equal(a["lr"], b["lr"]) and a["meta"]["crop_hr"] == b["meta"]["crop_hr"]
    assert not torch.equal(a["lr"], c["lr"])


def test_validation_is_fixed_centre_crop_without_augmentation(tmp_path):
    d = _folder(tmp_path, "val", n=3, shape=(3, 40, 48))
    ds = SRDataset(d, scale=4, lr_patch_size=6, train=False, noise_std=5.0, seed=3)
    assert ds.augment == dict(hflip=False, vflip=False, rot90=False)
    torch.manual_seed(0); a = [ds[i] for i in range(3)]
    torch.manual_seed(1); b = [ds[i] for i in range(3)]
    for x, y in zip(a, b): assert torch.equal(x["lr"], y["lr"]) and torch.equal(x["hr"], y["hr"])
    assert a[0]["meta"]["crop_hr"] == (8, 12, 24, 24)  # LR grid 10x12, patch 6 -> (2, 3)
    assert [Path(x["meta"]["source"]).name for x in a] == ["im0.npy", "im1.npy", "im2.npy"]
    other = SRDataset(d, scale=4, lr_patch_size=6, train=False, noise_std=5.0, seed=4)
    assert not torch.equal(other[0]["lr"], a[0]["lr"])


def test_whole_images_and_repeat(tmp_path):
    d = _folder(tmp_path, "w", n=2, shape=(1, 12, 16))
    ds = SRDataset(d, scale=4, lr_patch_size=None, train=False)
    it = ds[1]
    assert it["hr"].shape == (1, 12, 16) and it["lr"].shape == (1, 3, 4)
    assert len(SRDataset(d, scale=4, lr_patch_size=2, repeat=5)) == 10
    np.save(d / "odd.npy", np.zeros((1, 13, 16), np.uint8))
    with pytest.raises(DataError, match=r"odd\.npy.*divisible by Data\.scale 4.*13x16"):
        SRDataset(d, scale=4, lr_patch_size=None)


def test_meta_contents(tmp_path):
    d = _folder(tmp_path, "m", n=1, shape=(4, 32, 32), dtype=np.uint16, hi=10000)
    it = SRDataset(d, scale=2, lr_patch_size=8, value_range=(0, 10000), band_names=list("RGBN"), in_bands=4)[0]
    m = it["meta"]
    assert m["value_range"] == (0.0, 10000.0) and m["band_names"] == list("RGBN") and m["scale"] == 2
    assert m["source"].endswith("im0.npy") and m["lr_source"] is None and m["dtype"] == "uint16"
    assert set(m["augment"]) == {"hflip", "vflip", "rot90"} and m["degradation"]["antialias"] is True


def test_transform_and_collate_pass_through_optional_keys(tmp_path):
    d = _folder(tmp_path, "t", n=2, shape=(3, 16, 16))
    def add(item):
        item["mask"] = torch.ones(1, *item["hr"].shape[-2:]); item["cond"] = torch.zeros(5); item["prompt"] = "a cat"
        return item
    ds = SRDataset(d, scale=2, lr_patch_size=4, transform=add)
    b = collate([ds[0], ds[1]])
    assert b["lr"].shape == (2, 3, 4, 4) and b["hr"].shape == (2, 3, 8, 8) and b["mask"].shape == (2, 1, 8, 8)
    assert b["cond"].shape == (2, 5) and b["prompt"] == ["a cat", "a cat"]
    assert isinstance(b["meta"], list) and len(b["meta"]) == 2 and isinstance(b["meta"][0], dict)
    with pytest.raises(ValueError, match="keys"):
        collate([ds[0], {k: v for k, v in ds[1].items() if k != "mask"}])


def test_bands_to_rgb_fixed_mapping():
    x = torch.stack([torch.full((2, 2), float(v)) for v in (0, 100, 200, 255)])
    out = bands_to_rgb(x, (3, 0, 1), value_range=(0, 255))
    np.testing.assert_allclose(out[0, 0], [1.0, 0.0, 100 / 255], rtol=1e-6)
    np.testing.assert_array_equal(bands_to_rgb(x, (3, 0, 1), (0, 255)), out)  # deterministic
    with pytest.raises(ValueError, match="3 indices below 4"):
        bands_to_rgb(x, (0, 1, 4))


# ---------------------------------------------------------------- split and DataModule
def test_split_files_deterministic():
    files = [Path(f"f{i}.png") for i in range(20)]
    tr, va = split_files(files, 0.25, seed=1)
    assert len(va) == 5 and len(tr) == 15 and not set(tr) & set(va)
    assert split_files(list(reversed(files)), 0.25, seed=1) == (tr, va)
    assert split_files(files, 0.25, seed=2)[1] != va
    assert split_files(files, 0.0) == (sorted(files), [])


def _cfg(in_bands=3, **data):
    from gan_engine.config import load_config
    return load_config({"Data": data, "Model": {"in_bands": in_bands}})


def test_datamodule_from_config_with_val_dir():
    dm = GANDataModule(_cfg(train_dir=str(SAMPLES / "sr" / "train"), val_dir=str(SAMPLES / "sr" / "val"),
                            train_batch_size=4, val_batch_size=2, lr_patch_size=16))
    tl, vl = dm.train_dataloader(), dm.val_dataloader()
    assert isinstance(tl.sampler, ResumableSampler) and tl.sampler.shuffle
    assert isinstance(vl.sampler, torch.utils.data.SequentialSampler)
    b = next(iter(tl))
    assert b["lr"].shape == (4, 3, 16, 16) and b["hr"].shape == (4, 3, 64, 64) and len(b["meta"]) == 4
    v1 = [x["hr"] for x in vl]; v2 = [x["hr"] for x in dm.val_dataloader()]
    assert len(v1) == 2 and all(torch.equal(a, c) for a, c in zip(v1, v2))
    assert dm.value_range == (0.0, 255.0) and dm.data_range == 255.0 and dm.band_names == ["R", "G", "B"]
    assert dm.in_bands == 3 and tl.num_workers == 0 and tl.prefetch_factor is None


def test_datamodule_val_fraction_split_and_workers(tmp_path):
    d = _folder(tmp_path, "all", n=10, shape=(4, 16, 16), dtype=np.uint16, hi=10000)
    cfg = _cfg(train_dir=str(d), val_fraction=0.2, scale=2, lr_patch_size=4, num_workers=2, prefetch_factor=3,
               value_range=[0, 10000], band_names=["R", "G", "B", "NIR"], train_batch_size=3, in_bands=4)
    dm = GANDataModule(cfg); dm.setup()
    tr = {f.name for f in dm.train_dataset.files}; va = {f.name for f in dm.val_dataset.files}
    assert len(va) == 2 and len(tr) == 8 and not tr & va
    dm2 = GANDataModule(cfg); dm2.setup()
    assert {f.name for f in dm2.val_dataset.files} == va  # same seed, same split
    tl = dm.train_dataloader()
    assert tl.num_workers == 2 and tl.prefetch_factor == 3 and tl.persistent_workers and tl.drop_last
    assert dm.value_range == (0.0, 10000.0) and dm.band_names == ["R", "G", "B", "NIR"]


def test_datamodule_reports_band_mismatch():
    cfg = _cfg(train_dir=str(SAMPLES / "sr" / "train"), val_dir=str(SAMPLES / "sr" / "val"), in_bands=4)
    with pytest.raises(DataError, match=r"astronaut_00\.png.*4 bands \(Model\.in_bands\) but got 3"):
        GANDataModule(cfg).setup()


def test_samples_are_as_documented():
    tr, va = list_images(SAMPLES / "sr" / "train"), list_images(SAMPLES / "sr" / "val")
    assert len(tr) >= 12 and len(va) >= 4
    for f in tr + va:
        (c, h, w), dt = probe_image(f)
        assert c == 3 and dt == np.uint8 and 128 <= min(h, w) <= 192
    for f in list_images(SAMPLES / "multispectral" / "train") + list_images(SAMPLES / "multispectral" / "val"):
        x, m = read_image(f)
        assert x.shape[0] == 4 and m["dtype"] == "uint16" and x.min() >= 0 and x.max() <= 10000
    total = sum(p.stat().st_size for p in SAMPLES.rglob("*") if p.is_file())
    assert total < 5 * 2**20


def test_uint16_reflectance_gets_its_range_from_the_data_and_the_run_records_it(tmp_path):
    "The 4-band sample is uint16 reflectance 0-10000: not the dtype's 0-65535 (issue 14: inflated PSNR before)."
    from gan_engine.config import load_config
    from gan_engine.testing import tiny_config
    from gan_engine.trainer import fit
    ms = SAMPLES / "multispectral"
    cfg = tiny_config(SAMPLES, [f"Data.train_dir={ms / 'train'}", f"Data.val_dir={ms / 'val'}", "Model.in_bands=4",
                                     "Training.max_steps=2", "Training.val_every_n_steps=2", f"Logging.output_dir={tmp_path}/run"])
    run = fit(cfg)
    assert run.module.value_range == (0.0, 10000.0)
    assert load_config(run.run_dir / "config.yaml").Data.value_range == [0.0, 10000.0]
    assert run.trainer.callback_metrics["val/psnr"] < 45             # measured on 0-10000, not inflated by 0-65535
    own = tiny_config(SAMPLES, [f"Data.train_dir={ms / 'train'}", f"Data.val_dir={ms / 'val'}", "Model.in_bands=4",
                                     "Data.value_range=[0, 65535]"])
    from gan_engine.data import GANDataModule
    assert GANDataModule(own).value_range == (0.0, 65535.0)           # a range that is set always wins
