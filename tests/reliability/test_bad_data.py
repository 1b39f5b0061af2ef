"""Issue 15, reliability: bad files in the image folders.

Truncated PNG/JPEG/TIFF/.npy, zero-byte files, NaN/Inf pixels in .npy, a PNG whose pixel data are corrupt, wrong
band counts, images smaller than the crop, mixed bit depths, unreadable files, symbolic link loops and broken links,
non-image files. On every path a user takes (`check_paths`, which `prepare`/`fit` and the CLI call before writing
anything; `GANDataModule(cfg).setup("fit")`; iterating the training and validation loaders, with `Data.num_workers`
0 and 2) each bad file is either

- `Data.on_bad_file: error` (the default): a `DataError` (a `ConfigError` for an image smaller than the crop, whose
  fix may be `Data.lr_patch_size`) naming the file and what is wrong, at the earliest stage that can see it
  (`check_paths`: files that cannot be read, from their header and end; setup: band counts, sizes, value ranges;
  the loader: pixels), and from loader workers as a clean `DataError` naming the file, not a worker traceback; or
- `Data.on_bad_file: skip`: left out with one `DataWarning` naming it and counted in `GANDataModule.skipped_files`;
  a file that fails only when its pixels are read is replaced by the next readable file (deterministically, the
  same with and without workers).

Never a hang (each case runs under a SIGALRM deadline), never a batch with NaN/Inf or a bad file's pixels. Mixed bit
depths are an error in both modes (neither file is broken: the fix is `Data.value_range`).

The tests run as root in containers, where chmod 000 does not stop reading: an unreadable file is simulated by making
`open` raise `PermissionError` for that one path (forked loader workers inherit the patch).

Heavier variants (workers for every kind, a short `fit`) run only with GAN_ENGINE_RELIABILITY_FULL=1.
"""
import builtins, contextlib, os, re, shutil, signal, warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gan_engine.config import ConfigError
from gan_engine.data import GANDataModule, check_paths
from gan_engine.images import DataError
from gan_engine.images import DataWarning
from gan_engine.testing import tiny_config

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "data_samples"
GOOD = sorted((SAMPLES / "sr" / "train").glob("*.png"))[:4]   # 160x160 RGB
VAL = sorted((SAMPLES / "sr" / "val").glob("*.png"))[:2]      # 128x128 RGB
FULL = os.environ.get("GAN_ENGINE_RELIABILITY_FULL") == "1"
full_only = pytest.mark.skipif(not FULL, reason="set GAN_ENGINE_RELIABILITY_FULL=1 (CI does)")
DEADLINE = 60   # seconds per case: a hang fails the test instead of stalling the suite

pytestmark = [pytest.mark.filterwarnings("ignore:.*does not have many workers.*")]


@contextlib.contextmanager
def deadline(seconds=DEADLINE):
    "Fail with TimeoutError instead of hanging (SIGALRM reaches the main process while it waits for workers)."
    def boom(signum, frame): raise TimeoutError(f"no result within {seconds} s: the data pipeline hangs")
    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try: yield
    finally:
        signal.alarm(0); signal.signal(signal.SIGALRM, old)


# ---------------------------------------------------------------- folders of good images and one bad file
def _rgb(f): return np.asarray(Image.open(f).convert("RGB"))

def good_folder(d:Path, files, fmt="png")->Path:
    "A folder of copies of good images: PNG, or float32 .npy in [0, 1] (so a NaN file shares their value range)."
    d.mkdir(parents=True, exist_ok=True)
    for f in files:
        if fmt == "png": shutil.copy(f, d / f.name)
        else: np.save(d / f"{f.stem}.npy", _rgb(f).transpose(2, 0, 1).astype(np.float32) / 255)
    return d

def _cut(path:Path, keep=0.5):
    "Keep the first part of a file: the header still reads, the pixels do not."
    b = path.read_bytes(); path.write_bytes(b[:int(len(b) * keep)])

def truncated_png(d):
    p = d / "cut.png"; shutil.copy(GOOD[0], p); _cut(p); return [p]

def truncated_jpeg(d):
    p = d / "cut.jpg"; Image.fromarray(_rgb(GOOD[0])).save(p, quality=95); _cut(p); return [p]

def truncated_tiff(d):
    import tifffile
    p = d / "cut.tif"; tifffile.imwrite(p, _rgb(GOOD[0])); _cut(p); return [p]

def truncated_npy(d):
    p = d / "cut.npy"; np.save(p, np.ones((3, 160, 160), np.float32) / 2); _cut(p); return [p]

def corrupt_png(d):
    "Header and end intact, the compressed pixels zeroed in the middle: only reading the pixels finds it."
    p = d / "corrupt.png"; shutil.copy(GOOD[0], p)
    b = bytearray(p.read_bytes()); n = len(b); b[n // 3: 2 * n // 3] = bytes(2 * n // 3 - n // 3)
    p.write_bytes(bytes(b)); return [p]

def zero_bytes(d):
    p = d / "empty.png"; p.write_bytes(b""); return [p]

def nan_npy(d):
    a = np.full((3, 160, 160), 0.5, np.float32); a[1, 7, 9] = np.nan
    p = d / "nan.npy"; np.save(p, a); return [p]

def inf_npy(d):
    a = np.full((3, 160, 160), 0.5, np.float32); a[0, 0, 0] = np.inf
    p = d / "inf.npy"; np.save(p, a); return [p]

def grey_png(d):
    p = d / "grey.png"; Image.fromarray(_rgb(GOOD[0])[..., 0]).save(p); return [p]

def rgba_png(d):
    p = d / "rgba.png"; Image.fromarray(_rgb(GOOD[0])).convert("RGBA").save(p); return [p]

def too_small(d):
    p = d / "small.png"; Image.fromarray(_rgb(GOOD[0])[:12, :12]).save(p); return [p]

def text_as_png(d):
    p = d / "notes.png"; p.write_text("this is not an image\n"); return [p]

def symlink_loop(d):
    (d / "a.png").symlink_to(d / "b.png"); (d / "b.png").symlink_to(d / "a.png"); return [d / "a.png", d / "b.png"]

def broken_link(d):
    (d / "gone.png").symlink_to(d / "nowhere.png"); return [d / "gone.png"]

def unreadable(d):
    "A file `open` refuses (see `deny_open`); stat still works, as for a chmod 000 file of another user."
    p = d / "locked.png"; shutil.copy(GOOD[0], p); return [p]

# kind: (folder format, maker, stage of the first error with on_bad_file error, what the message says)
KINDS = {
    "truncated_png": ("png", truncated_png, "check_paths", r"truncated"),
    "truncated_jpeg": ("png", truncated_jpeg, "check_paths", r"truncated"),
    "truncated_tiff": ("png", truncated_tiff, "check_paths", r"truncated"),
    "truncated_npy": ("npy", truncated_npy, "check_paths", r"truncated"),
    "corrupt_png": ("png", corrupt_png, "train loader", r"could not read its pixels"),
    "zero_bytes": ("png", zero_bytes, "check_paths", r"empty \(0 bytes\)"),
    "nan_npy": ("npy", nan_npy, "train loader", r"1 NaN/Inf"),
    "inf_npy": ("npy", inf_npy, "train loader", r"1 NaN/Inf"),
    "wrong_bands_grey": ("png", grey_png, "setup", r"3 bands \(Model.in_bands\) but got 1"),
    "wrong_bands_rgba": ("png", rgba_png, "setup", r"3 bands \(Model.in_bands\) but got 4"),
    "smaller_than_crop": ("png", too_small, "check_paths", r"does not fit train_dir image 'small.png' of size 12x12"),
    "text_with_png_name": ("png", text_as_png, "check_paths", r"cannot identify image file"),
    "symlink_loop": ("png", symlink_loop, "check_paths", r"symbolic link loop"),
    "broken_symlink": ("png", broken_link, "check_paths", r"broken symbolic link"),
    "unreadable": ("png", unreadable, "check_paths", r"permission denied"),
}
PIXEL_KINDS = {k for k, v in KINDS.items() if v[2].endswith("loader")}   # found only when the pixels are read


@pytest.fixture
def deny_open(monkeypatch):
    "Make `open` (Pillow, numpy and tifffile all use it) raise PermissionError for files of the given names."
    names, real = set(), builtins.open
    def guarded(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and Path(file).name in names:
            raise PermissionError(13, "Permission denied", str(file))
        return real(file, *args, **kwargs)
    monkeypatch.setattr(builtins, "open", guarded)
    return names


def make_case(tmp_path, kind, deny_open):
    "(train folder: good images plus the bad file(s), validation folder of good images, the bad paths)."
    fmt, maker = KINDS[kind][:2]
    train, val = good_folder(tmp_path / "train", GOOD, fmt), good_folder(tmp_path / "val", VAL, fmt)
    bad = maker(train)
    if kind == "unreadable": deny_open.update(p.name for p in bad)
    return train, val, bad


def config(train, val, workers=0, mode="error", *extra):
    return tiny_config(overrides=[f"Data.train_dir={train}", f"Data.val_dir={val}", "Data.scale=2", "Data.lr_patch_size=8",
                                  f"Data.num_workers={workers}", f"Data.on_bad_file={mode}", "Data.train_batch_size=2",
                                  "Data.val_batch_size=2", "Data.repeat=2", *extra])


def run_paths(cfg):
    "The paths a user takes, in order; returns (batches of the training epoch, validation batches, the datamodule)."
    stage = "check_paths"
    try:
        check_paths(cfg)
        stage = "setup"; dm = GANDataModule(cfg); dm.setup("fit")
        stage = "train loader"; train = list(dm.train_dataloader())
        stage = "val loader"; val = list(dm.val_dataloader())
    except Exception as e:
        e.stage = stage; raise
    return train, val, dm


def _params(kinds, full_worker_kinds=()):
    "Every kind with 0 workers; with 2 workers the pixel kinds (and all kinds when FULL)."
    out = []
    for k in kinds:
        out.append(pytest.param(k, 0, id=f"{k}-w0"))
        out.append(pytest.param(k, 2, id=f"{k}-w2", marks=() if k in PIXEL_KINDS or k in full_worker_kinds else full_only))
    return out


# ---------------------------------------------------------------- on_bad_file: error
@pytest.mark.parametrize("kind, workers", _params(KINDS, ("truncated_png", "zero_bytes")))
def test_bad_file_is_an_error_naming_it(tmp_path, deny_open, kind, workers):
    train, val, bad = make_case(tmp_path, kind, deny_open)
    with deadline(), pytest.raises((DataError, ConfigError)) as info:
        run_paths(config(train, val, workers))
    msg, stage = str(info.value), info.value.stage
    assert stage == KINDS[kind][2], f"{kind}: first reported at {stage}, expected {KINDS[kind][2]}: {msg}"
    assert bad[0].name in msg, msg
    assert re.search(KINDS[kind][3], msg, re.I), msg
    assert "Traceback" not in msg and "Caught DataError" not in msg, msg   # workers: the error itself, not their traceback
    assert isinstance(info.value, ConfigError if kind == "smaller_than_crop" else DataError)   # the crop may be the fix
    if workers and stage.endswith("loader"): assert "DataLoader worker" in msg, msg


# ---------------------------------------------------------------- on_bad_file: skip
def _check_batches(batches, bad, expect_sources):
    seen = set()
    for b in batches:
        assert torch.isfinite(b["hr"]).all() and torch.isfinite(b["lr"]).all()
        assert b["hr"].shape[1:] == (3, 16, 16) and b["lr"].shape[1:] == (3, 8, 8)
        seen |= {Path(m["source"]).name for m in b["meta"]}
    assert not seen & {p.name for p in bad}, f"a bad file reached a batch: {seen}"
    assert seen <= expect_sources


@pytest.mark.parametrize("kind, workers", _params(KINDS, ("truncated_png",)))
def test_bad_file_is_left_out_with_one_warning(tmp_path, deny_open, kind, workers):
    train, val, bad = make_case(tmp_path, kind, deny_open)
    with deadline(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tb, vb, dm = run_paths(config(train, val, workers, "skip"))
    mine = [w for w in caught if issubclass(w.category, DataWarning)]
    assert len(mine) == 1, [str(w.message) for w in mine]
    assert all(p.name in str(mine[0].message) for p in bad), str(mine[0].message)
    assert re.search(KINDS[kind][3], str(mine[0].message), re.I) or kind == "smaller_than_crop", str(mine[0].message)
    assert sorted(Path(p).name for p in dm.skipped_files) == sorted(p.name for p in bad)
    # 4 good files x repeat 2 / batch 2; a file found bad when read keeps its samples (each replaced by the next file)
    assert len(tb) == (5 if kind in PIXEL_KINDS else 4) and len(vb) == 1
    goods = {p.name for p in train.iterdir()} - {p.name for p in bad}
    _check_batches(tb, bad, goods)
    _check_batches(vb, bad, {p.name for p in val.iterdir()})


def test_mixed_bit_depths_are_an_error_in_both_modes(tmp_path):
    "An 8-bit and a 16-bit PNG in one folder: an error naming both files and their ranges, whatever on_bad_file says."
    train, val = tmp_path / "train", tmp_path / "val"
    for d, files in ((train, GOOD), (val, VAL)):
        d.mkdir()
        for f in files: Image.fromarray(_rgb(f)[..., 0]).save(d / f.name)                      # 8-bit grey
    Image.fromarray(_rgb(GOOD[0])[..., 0].astype(np.uint16) * 257).save(train / "deep.png")     # 16-bit grey
    assert Image.open(train / "deep.png").mode.startswith("I;16")
    for mode in ("error", "skip"):
        with deadline(), pytest.raises(DataError) as info: run_paths(config(train, val, 0, mode, "Model.in_bands=1"))
        msg = str(info.value)
        assert "deep.png" in msg and "uint16 (0.0, 65535.0)" in msg and "uint8 (0.0, 255.0)" in msg and "Data.value_range" in msg, msg
    run_paths(config(train, val, 0, "error", "Model.in_bands=1", "Data.value_range=[0,65535]"))   # the stated fix


def test_non_image_files_are_ignored(tmp_path):
    "Files without an image extension (notes.txt, .DS_Store, Thumbs.db) and sub-folders are not data: no error, no warning."
    train, val = good_folder(tmp_path / "train", GOOD), good_folder(tmp_path / "val", VAL)
    (train / "notes.txt").write_text("hello"); (train / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (train / "Thumbs.db").write_bytes(b"\xd0\xcf"); (train / "masks").mkdir(); (train / "masks.png").mkdir()
    with deadline(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tb, vb, dm = run_paths(config(train, val))
    assert not [w for w in caught if issubclass(w.category, DataWarning)]
    assert dm.skipped_files == {} and len(dm.train_dataset.files) == 4


def test_error_from_workers_names_the_file(tmp_path, deny_open):
    "num_workers 2: the DataError of a worker arrives as a DataError naming the file, with no worker traceback."
    train, val, bad = make_case(tmp_path, "nan_npy", deny_open)
    dm = GANDataModule(config(train, val, 2)); dm.setup("fit")
    with deadline(), pytest.raises(DataError) as info: list(dm.train_dataloader())
    msg = str(info.value)
    assert msg.startswith(f"Expected `{bad[0]}` to contain only finite values"), msg
    assert "Data.on_bad_file: skip" in msg and "DataLoader worker" in msg and "Traceback" not in msg


def test_skip_replaces_deterministically_with_and_without_workers(tmp_path, deny_open):
    "A file found bad when its pixels are read is replaced by the next readable one: the same batches with 0 or 2 workers."
    train, val, bad = make_case(tmp_path, "corrupt_png", deny_open)
    runs = []
    for workers in (0, 2):
        with deadline(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DataWarning)
            tb, _, dm = run_paths(config(train, val, workers, "skip"))
        runs.append(tb)
        assert list(dm.skipped_files) == [str(bad[0])]
    for a, b in zip(*runs):
        assert torch.equal(a["hr"], b["hr"]) and [m["source"] for m in a["meta"]] == [m["source"] for m in b["meta"]]
    replaced = [m for b in runs[0] for m in b["meta"] if m.get("skipped")]
    assert replaced and all(m["skipped"][0]["source"] == str(bad[0]) for m in replaced)


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=full_only)])
def test_bad_validation_file_is_replaced(tmp_path, deny_open, workers):
    "A validation file whose pixels cannot be read: left out with one warning, validation batches stay whole."
    train, val = good_folder(tmp_path / "train", GOOD), good_folder(tmp_path / "val", VAL)
    bad = corrupt_png(val)
    with deadline(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tb, vb, dm = run_paths(config(train, val, workers, "skip"))
    mine = [w for w in caught if issubclass(w.category, DataWarning)]
    assert len(mine) == 1 and "corrupt.png" in str(mine[0].message)
    assert [Path(p).name for p in dm.skipped_files] == ["corrupt.png"]
    _check_batches(vb, bad, {p.name for p in VAL})
    with deadline(), pytest.raises(DataError, match="corrupt.png"): run_paths(config(train, val, workers, "error"))


def test_only_bad_files_is_an_error_even_when_skipping(tmp_path):
    "Nothing left to train on: an error naming the bad files, not an empty loader."
    train, val = tmp_path / "train", good_folder(tmp_path / "val", VAL)
    train.mkdir(); zero_bytes(train); text_as_png(train)
    with deadline(), pytest.raises(DataError) as info: run_paths(config(train, val, 0, "skip"))
    msg = str(info.value)
    assert "empty.png" in msg and "notes.png" in msg and "at least one usable image" in msg, msg


def test_check_paths_lists_every_unreadable_file(tmp_path):
    "check_paths reports all unreadable files of the folders at once, each with what is wrong, and says how to skip them."
    train, val = good_folder(tmp_path / "train", GOOD), good_folder(tmp_path / "val", VAL)
    zero_bytes(train); text_as_png(train); truncated_jpeg(val); grey_png(train)
    with pytest.raises(DataError) as info: check_paths(config(train, val))
    msg = str(info.value)
    assert all(s in msg for s in ("3 are not", "empty.png", "empty (0 bytes)", "notes.png", "cut.jpg", "truncated",
                                  "Data.on_bad_file: skip")), msg
    assert "grey.png" not in msg   # readable: its band count is the datasets' check (setup)
    check_paths(config(train, val, 0, "skip"))   # skipping: left to setup, which warns once per folder


@full_only
def test_fit_with_skipped_files(tmp_path, deny_open):
    "A short fit on a folder with a header-bad and a pixel-bad file completes with on_bad_file skip, counting both."
    from gan_engine.testing import fit_tiny
    train, val = good_folder(tmp_path / "train", GOOD), good_folder(tmp_path / "val", VAL)
    bad = zero_bytes(train) + corrupt_png(train)
    cfg = config(train, val, 0, "skip", "Training.max_steps=4", "Training.g_pretrain_steps=2",
                 "Training.adv_loss_ramp_steps=0", "Logging.images_every_n_steps=0")
    with deadline(300), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module, trainer = fit_tiny(cfg, run_dir=tmp_path / "run")
    assert sorted(Path(p).name for p in trainer.datamodule.skipped_files) == sorted(p.name for p in bad)
    mine = [str(w.message)[:200] for w in caught if issubclass(w.category, DataWarning)]
    assert len(mine) == 2, mine   # setup (empty), first read (corrupt)
