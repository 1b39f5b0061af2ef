"""Issue 11: inpainting with masks, trained through the same engine, measured in the hole and inspected mid-training.

The paths users take: masks from files and generated ones through `GANDataModule`, `fit()` with the inpainting
config, resume from `last.ckpt`, `gan-engine train --preset inpaint`, `validate`, `predict --mask` (tiled), and
the inspector's New mask button while a run trains in the background.
"""
import time, warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from gan_engine.checkpoint import read_checkpoint
from gan_engine.cli import main, quickstart_config
from gan_engine.config import ConfigError, load_config
from gan_engine.data import GANDataModule, check_paths
from gan_engine.images import DataError, read_image
from gan_engine.inference import load_predictor, predict_path
from gan_engine.masks import MaskGenerator, read_mask
from gan_engine.module import GANModule
from gan_engine.tasks import RegionMetric, biharmonic_fill, fill_holes, region_values
from gan_engine.testing import tiny_config
from gan_engine.trainer import fit, fit_in_background

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "data_samples"
QUIET = ["Trainer.enable_progress_bar=false", "Trainer.enable_model_summary=false"]
pytestmark = [pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
              pytest.mark.filterwarnings("ignore:.*LeafSpec.*"),
              pytest.mark.filterwarnings("ignore:.*exists and is not empty.*"),
              pytest.mark.filterwarnings("ignore:.*smaller than the logging interval.*")]


def tiny_in(path, *overrides):
    "The tiny inpainting config (16-px crops, 2-level U-Net) writing its run under `path`."
    return tiny_config(SAMPLES, [f"Logging.output_dir={path}", *QUIET, *overrides], task="inpaint")


def keep_of(mask, like):
    return mask.expand_as(like) == 0


# ------------------------------------------------------------------------------------------------ mask files
def _write(path, hole: np.ndarray, fmt: str):
    if fmt == "png": Image.fromarray((hole * 255).astype(np.uint8)).save(path)
    elif fmt == "npy": np.save(path, hole.astype(bool))
    else:
        import tifffile
        tifffile.imwrite(path, hole.astype(np.float32))


@pytest.mark.parametrize("fmt", ["png", "npy", "tif"])
def test_mask_files_read_in_every_format_and_both_conventions(tmp_path, fmt):
    hole = np.zeros((10, 12)); hole[2:5, 3:9] = 1
    _write(tmp_path / f"m.{fmt}", hole, fmt)
    m = read_mask(tmp_path / f"m.{fmt}", size=(10, 12))
    assert m.shape == (1, 10, 12) and m.dtype == torch.float32
    assert torch.equal(m[0], torch.from_numpy(hole).float())
    assert torch.equal(read_mask(tmp_path / f"m.{fmt}", invert=True)[0], 1 - torch.from_numpy(hole).float())


def _mask_folder(tmp_path, n=3, size=(40, 48), bad=None):
    "Images with masks/ beside them; `bad` = (image index, what) writes one wrong mask."
    d = tmp_path / "imgs"; (d / "masks").mkdir(parents=True)
    for i in range(n):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (*size, 3), dtype=np.uint8)).save(d / f"im{i}.png")
        hole = np.zeros(size, np.uint8); hole[5:20, 10:30] = 255
        if bad is not None and bad[0] == i:
            hole = {"rgb": np.stack([hole] * 3, -1), "size": hole[:20], "none": hole * 0, "all": hole * 0 + 255,
                    "missing": hole}[bad[1]]
        if bad is None or bad != (i, "missing"): Image.fromarray(hole).save(d / "masks" / f"im{i}.png")
    return d


def files_cfg(d, *ov):
    return load_config({"Model": {"task": "inpaint"}, "Generator": {"unet_depth": 2, "n_channels": 8},
                        "Data": {"train_dir": str(d), "val_fraction": 0.34, "lr_patch_size": 16, "train_batch_size": 2,
                                 "val_batch_size": 2, "masks": {"source": "files"}}}, list(ov))


@pytest.mark.parametrize("what,needle", [
    ("missing", "got none for im1.png"),
    ("size", "to be 40x48 px like its image 'im1.png' but got 20x48"),
    ("rgb", "to have one channel but got 3: set Data.masks.channels"),
])
def test_bad_mask_files_fail_when_the_data_is_built_naming_the_file(tmp_path, what, needle):
    d = _mask_folder(tmp_path, bad=(1, what))
    with pytest.raises(DataError, match=needle.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        GANDataModule(files_cfg(d)).setup()


@pytest.mark.parametrize("what,needle", [("none", "to mark a hole but it has none"), ("all", "to keep some pixels but all")])
def test_masks_without_a_hole_or_all_hole_are_refused_naming_the_file(tmp_path, what, needle):
    d = _mask_folder(tmp_path, bad=(0, what))
    dm = GANDataModule(files_cfg(d, "Data.val_fraction=0.5")); dm.setup()
    ds = dm.train_dataset if any(f.name == "im0.png" for f in dm.train_dataset.files) else dm.val_dataset
    i = [f.name for f in ds.files].index("im0.png")
    with pytest.raises(DataError, match=f"im0.png` {needle}"): ds[i]


def test_mask_files_follow_the_crop_and_augmentation_and_channel_rules(tmp_path):
    d = _mask_folder(tmp_path, bad=(2, "rgb"))
    dm = GANDataModule(files_cfg(d, "Data.masks.channels=any")); dm.setup()
    for k in range(6):
        it = dm.train_dataset[(k % len(dm.train_dataset), 50 + k)]
        assert it["mask"].shape == (1, 16, 16) and it["meta"]["mask"]["kind"] == "file"
        assert set(it["mask"].unique().tolist()) <= {0.0, 1.0}
    # a missing masks folder is reported by the config checks, before anything is written
    bare = tmp_path / "bare"; bare.mkdir()
    for f in list(d.glob("*.png"))[:2]: (bare / f.name).write_bytes(f.read_bytes())
    with pytest.raises(ConfigError, match="masks/ folder inside each image folder"): check_paths(files_cfg(bare))
    with pytest.raises(ConfigError, match="Data.masks.dir: mask folder"):
        fit(files_cfg(bare, f"Logging.output_dir={tmp_path / 'run'}"))
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------- generated masks
@pytest.mark.parametrize("kind", ["box", "stroke", "blob"])
def test_generated_masks_meet_the_hole_area_range(kind):
    gen = MaskGenerator({kind: 1}, hole_area=(0.08, 0.2), count=(1, 5))
    for seed in range(60):
        h, w = [(16, 16), (32, 48), (64, 64), (17, 29)][seed % 4]
        m, k = gen(h, w, rng=seed)
        assert k == kind and m.shape == (1, h, w)
        assert set(m.unique().tolist()) == {0.0, 1.0}
        assert 0.08 <= float(m.mean()) <= 0.2 + 1e-9


def test_validation_masks_are_fixed_per_item_across_runs_and_training_masks_vary(tmp_path):
    cfg = tiny_in(tmp_path)
    a, b = GANDataModule(cfg), GANDataModule(cfg)   # two runs of one config
    va, vb = next(iter(a.val_dataloader())), next(iter(b.val_dataloader()))
    assert torch.equal(va["mask"], vb["mask"]) and torch.equal(va["mask"], next(iter(a.val_dataloader()))["mask"])
    area = va["mask"].mean((1, 2, 3))
    assert ((area >= 0.1) & (area <= 0.3)).all()
    loader = a.train_dataloader()
    e0 = torch.cat([x["mask"] for x in loader]); loader.sampler.set_epoch(1)
    e1 = torch.cat([x["mask"] for x in loader])
    assert not torch.equal(e0, e1)                                      # fresh masks every epoch
    assert torch.equal(a.train_dataset[(3, 99)]["mask"], b.train_dataset[(3, 99)]["mask"])   # from the sample's seed
    other = GANDataModule(cfg.override("Data.masks.seed=5"))
    assert not torch.equal(next(iter(other.val_dataloader()))["mask"], va["mask"])


# ------------------------------------------------------------------------------------- the engine, end to end
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    "A tiny inpainting run through fit(): mask-aware D, every loss term on, validations at 4 and 8."
    d = tmp_path_factory.mktemp("inpaint")
    return fit(tiny_in(d / "run", "Training.max_steps=8", "Training.val_every_n_steps=4", "Discriminator.mask_input=true",
                       "Training.Losses.boundary_tv_weight=0.1", "Training.g_pretrain_steps=2", "Trainer.log_every_n_steps=1"))


def test_fit_logs_every_term_and_the_hole_metrics_with_both_baselines(trained):
    df = pd.read_csv(trained.run_dir / "metrics.csv", index_col="step")
    for k in ("train/hole_l1", "train/hole_l1_w", "train/valid_l1", "train/boundary_tv", "train/adv", "train/loss_d",
              "val/hole_l1", "val/psnr", "val/psnr_hole", "val/ssim_hole", "val/mae_hole", "val/psnr_hole_meanfill",
              "val/ssim_hole_meanfill", "val/psnr_hole_biharmonic", "val/mae_biharmonic"):
        assert k in df and np.isfinite(df[k].dropna()).all() and len(df[k].dropna()), k
    v = df.dropna(subset=["val/psnr_hole"]).iloc[-1]
    assert v["val/psnr"] > v["val/psnr_hole"]                          # known pixels are exact: the whole image scores higher
    assert v["val/psnr_hole_biharmonic"] > v["val/psnr_hole_meanfill"]


def test_the_discriminator_sees_the_mask_when_asked(trained):
    first = next(m for m in trained.module.discriminator.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.in_channels == 4                                      # 3 bands + the mask
    assert next(m for m in trained.module.generator.modules() if isinstance(m, torch.nn.Conv2d)).in_channels == 4


def test_the_module_keeps_known_pixels_exactly_whatever_is_in_the_hole(trained):
    m = trained.module.eval()
    vb = next(iter(GANDataModule(m.cfg).val_dataloader()))
    img, mask = vb["hr"].clone(), vb["mask"]
    img[mask.expand_as(img) > 0] = float("nan")                        # unknown pixels: even NaN must not leak
    with torch.no_grad(): out = m.predict_step({"hr": img, "mask": mask}, 0)
    k = keep_of(mask, img)
    assert torch.equal(out[k], img[k]) and torch.isfinite(out).all()
    with torch.no_grad(): out2 = m(vb["hr"], mask=mask)
    assert torch.equal(out2[k], vb["hr"][k])


def test_validation_metrics_match_a_hand_computation_on_the_validation_outputs(trained):
    m = trained.module.eval()
    vb = next(iter(GANDataModule(m.cfg).val_dataloader()))
    with torch.no_grad(): out = m(vb["hr"], mask=vb["mask"]).clamp(0, 255)
    want = []
    for o, t, h in zip(out.numpy(), vb["hr"].numpy(), vb["mask"].numpy()):
        sel = np.broadcast_to(h > 0.5, o.shape)
        mse = ((o[sel] - t[sel]) ** 2).mean()
        want.append(10 * np.log10(255.0 ** 2 / mse))
    assert np.isclose(float(np.mean(want)), float(trained.trainer.validate(m, datamodule=GANDataModule(m.cfg), verbose=False)[0]["val/psnr_hole"]), atol=1e-3)


def test_srresnet_trunk_at_scale_1_inpaints(tmp_path):
    run = fit(tiny_in(tmp_path / "run", "Generator.model_type=srresnet", "Generator.n_blocks=1", "Generator.large_kernel_size=3",
                      "Training.max_steps=3", "Training.val_every_n_steps=3"))
    g = run.module.generator
    assert (g.scale, g.extra_in_channels, g.head[0].in_channels) == (1, 1, 4)
    assert np.isfinite(run.metrics["val/psnr_hole"].dropna()).all()


def test_resume_from_last_ckpt_equals_one_run(tmp_path):
    "An inpainting run stopped and resumed from last.ckpt reaches the weights of one uninterrupted run (masks included)."
    import lightning as L

    class StopAt(L.Callback):
        def on_train_batch_end(self, trainer, *a):
            if trainer.global_step == 5: trainer.should_stop = True

    ov = ["Training.max_steps=9", "Training.val_every_n_steps=4", "Training.g_pretrain_steps=3", "Model.hole_fill=noise"]
    one = fit(tiny_in(tmp_path / "one", *ov))
    part = fit(tiny_in(tmp_path / "two", *ov), callbacks=[StopAt()])
    last = part.run_dir / "checkpoints" / "last.ckpt"
    fit(tiny_in(tmp_path / "two", *ov), resume=last)
    a, b = read_checkpoint(one.run_dir / "checkpoints" / "last.ckpt"), read_checkpoint(last)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])


# ------------------------------------------------------------------------------------ metrics and baselines
def test_hole_metrics_against_a_hand_computation():
    rng = np.random.default_rng(0)
    t = rng.uniform(0, 255, (2, 3, 12, 12)); p = np.clip(t + rng.normal(0, 20, t.shape), 0, 255)
    h = np.zeros((2, 1, 12, 12)); h[0, :, 2:6, 3:9] = 1; h[1, :, 7:11, 1:4] = 1
    T, P, H = (torch.from_numpy(a).float() for a in (t, p, h))
    sel = [np.broadcast_to(h[i] > 0, t[i].shape) for i in range(2)]
    mse = [((p[i][sel[i]] - t[i][sel[i]]) ** 2).mean() for i in range(2)]
    mae = [np.abs(p[i][sel[i]] - t[i][sel[i]]).mean() for i in range(2)]
    assert np.allclose(region_values(P, T, H, (0, 255), "psnr", "hole"), [10 * np.log10(255 ** 2 / e) for e in mse], atol=1e-3)
    assert np.allclose(region_values(P, T, H, (0, 255), "mae", "hole"), mae, atol=1e-3)
    metric = RegionMetric("psnr", "hole", (0, 255))
    metric.update(P[:1], T[:1], H[:1]); metric.update(P[1:], T[1:], H[1:]); metric.update(P[1:], T[1:], H[1:] * 0)
    assert np.isclose(float(metric.compute()), np.mean([10 * np.log10(255 ** 2 / e) for e in mse]), atol=1e-3)


def test_baselines_mean_fill_by_hand_and_biharmonic_is_scikit_image():
    from skimage.restoration import inpaint_biharmonic
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.uniform(0, 255, (1, 3, 20, 24))).float()
    h = torch.zeros(1, 1, 20, 24); h[..., 4:12, 6:15] = 1
    mf = fill_holes(x, h, "mean")
    kept = x[0][:, h[0, 0] == 0]
    assert torch.allclose(mf[0][:, h[0, 0] > 0], kept.mean(1, keepdim=True).expand(3, 72), atol=1e-4)
    ref = inpaint_biharmonic(x[0].permute(1, 2, 0).double().numpy(), h[0, 0].numpy() > 0, channel_axis=-1)
    assert torch.allclose(biharmonic_fill(x, h)[0], torch.from_numpy(ref).permute(2, 0, 1).float(), atol=1e-3)


# ------------------------------------------------------------------------------------------------- predict
def test_tiled_prediction_keeps_holes_across_tile_borders_seamless(trained, tmp_path):
    pred = load_predictor(trained.run_dir / "checkpoints" / "last.ckpt")
    img = read_image(SAMPLES / "sr" / "val" / "astronaut_00.png")[0][:, :64, :96]
    hole = np.zeros((1, 64, 96), np.float32); hole[:, 10:50, 20:70] = 1    # tiles start at 0, 24, 48 and 56: the hole crosses their borders
    whole = pred.predict(img, mask=hole)
    tiled = pred.predict(img, mask=hole, tile=40, overlap=16)
    k = hole.repeat(3, 0) == 0
    assert np.array_equal(tiled[k], img[k]) and np.array_equal(whole[k], img[k])
    d = np.abs(tiled - whole)[~k]
    assert d.mean() < 0.01 * 255 and d.max() < 0.06 * 255, (d.mean(), d.max())   # the tiles agree with the whole image
    # no seam: across the tile borders inside the hole, neighbouring pixels differ no more than elsewhere in the hole
    cols = np.abs(np.diff(tiled, axis=2))[:, 12:48, 22:68].mean((0, 1))
    assert cols.max() < 3 * np.median(cols) + 1, cols


def test_cli_predict_with_a_mask_folder_and_with_generated_masks(trained, tmp_path, capsys):
    src = tmp_path / "in"; (src / "masks").mkdir(parents=True)
    for n in ("a", "b"):
        Image.fromarray(np.random.default_rng(len(n)).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(src / f"{n}.png")
        hole = np.zeros((40, 56), np.uint8); hole[8:30, 10:40] = 255
        Image.fromarray(hole).save(src / "masks" / f"{n}.png")
    ckpt = str(trained.run_dir / "checkpoints" / "last.ckpt")
    assert main(["predict", "--ckpt", ckpt, "--input", str(src), "--output", str(tmp_path / "o1"), "--mask", str(src / "masks"),
                 "--tile", "32", "--overlap", "8"]) == 0
    a_in, a_out = read_image(src / "a.png")[0], read_image(tmp_path / "o1" / "a.png")[0]
    k = np.broadcast_to(np.asarray(Image.open(src / "masks" / "a.png")) == 0, a_in.shape)
    assert np.array_equal(a_out[k], a_in[k]) and not np.array_equal(a_out[~k], a_in[~k])
    assert main(["predict", "--ckpt", ckpt, "--input", str(src), "--output", str(tmp_path / "o2"), "--mask-kind", "stroke",
                 "--mask-seed", "3"]) == 0
    assert sorted(p.name for p in (tmp_path / "o2").iterdir()) == ["a.mask.png", "a.png", "b.mask.png", "b.png"]
    m = read_mask(tmp_path / "o2" / "a.mask.png")
    assert 0.1 <= float(m.mean()) <= 0.3                                # the run's own Data.masks.hole_area
    capsys.readouterr()
    assert main(["predict", "--ckpt", ckpt, "--input", str(src), "--output", str(tmp_path / "o3")]) == 2
    assert "Expected masks for the inpainting model" in capsys.readouterr().err
    assert not (tmp_path / "o3").exists()


def test_cli_preset_inpaint_trains_validates_and_previews(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    small = ["Generator.n_channels=8", "Discriminator.base_channels=8", "Data.repeat=1", "Training.max_steps=4",
             "Training.g_pretrain_steps=2", "Training.val_every_n_steps=2", "Schedulers.g_warmup_steps=0", *QUIET]
    assert main(["train", "--preset", "inpaint", f"Logging.output_dir={tmp_path}/run", *small]) == 0
    out = capsys.readouterr().out
    assert "Validation PSNR in the hole:" in out and "biharmonic" in out
    cfg = load_config(tmp_path / "run" / "config.yaml")
    assert (cfg.Model.task, cfg.Generator.model_type, cfg.Callbacks.checkpoint.monitor) == ("inpaint", "unet", "val/psnr_hole")
    assert main(["validate", "--ckpt", str(tmp_path / "run" / "checkpoints" / "last.ckpt")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(l.startswith("val/psnr_hole: ") for l in lines) and any(l.startswith("val/psnr_hole_biharmonic: ") for l in lines)
    assert main(["preview", "--preset", "inpaint", f"Logging.output_dir={tmp_path}/pv"]) == 0
    out = capsys.readouterr().out
    assert "columns: image, masked input, mask" in out and "mask (8, 1, 64, 64)" in out
    assert Image.open(tmp_path / "pv" / "preview.png").size[0] == 3 * 128 + 2 * 2          # labelled columns, tiles x2
    assert main(["train", "--preset", "inpaint", "--config", "x.yaml"]) == 2


def test_quickstart_preset_is_a_valid_config():
    cfg = quickstart_config(samples=SAMPLES, preset="inpaint")
    assert cfg.Data.lr_patch_size % 2 ** cfg.Generator.unet_depth == 0 and cfg.Discriminator.mask_input
    with pytest.raises(ConfigError, match="--preset: 'paint' is not one of"): quickstart_config(samples=SAMPLES, preset="paint")


# --------------------------------------------------------------------------- the inspector while a run trains
def test_new_mask_while_training_runs_in_the_background(tmp_path):
    from gan_engine.capture import SampleCapture
    from gan_engine.widgets import Inspector
    cap = SampleCapture(every_n_steps=1000, num_samples=2)
    session = fit_in_background(tiny_in(tmp_path / "run", "Training.max_steps=100000", "Training.val_every_n_steps=0",
                                        "Trainer.limit_val_batches=0"), callbacks=[cap])
    try:
        t0 = time.time()
        while cap.latest is None and time.time() - t0 < 60: time.sleep(0.05)
        ins = Inspector(cap)
        n, before = len(cap), cap.latest.mask.clone()
        ins.sample.value = 1; ins.mask_kind.value = "stroke"
        ins.new_mask_button.click()
        assert "queued" in ins.message.value                              # waits for the training thread
        while len(cap) == n and time.time() - t0 < 60: time.sleep(0.05)
        assert session.running                                           # training went on
        ins.refresh()
        st = ins.state
        assert st["note"] == "new stroke mask for sample 1" and st["index"] == len(cap) - 1 and st["sample"] == 1
        e = cap.latest
        assert torch.equal(e.mask[0], before[0]) and not torch.equal(e.mask[1], before[1])
        assert st["step"] == e.step > 0
        assert torch.equal(e.sr[keep_of(e.mask, e.hr)], e.hr[keep_of(e.mask, e.hr)])
    finally:
        session.stop(wait=True, timeout=60)
    assert not session.running
