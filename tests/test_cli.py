"The gan-engine command: train, validate, predict, preview, and its error paths."
import subprocess, sys, warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gan_engine.cli import main

ROOT = Path(__file__).resolve().parents[1]
warnings.filterwarnings("ignore")
TINY = ["Generator.n_channels=8", "Generator.n_blocks=1", "Discriminator.base_channels=8", "Data.repeat=1",
        "Training.max_steps=6", "Training.g_pretrain_steps=3", "Schedulers.g_warmup_steps=0", "Training.val_every_n_steps=3",
        "Trainer.enable_progress_bar=false", "Trainer.enable_model_summary=false"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    import os
    cwd = os.getcwd(); os.chdir(ROOT)
    try: rc = main(["train", f"Logging.output_dir={d}/run", *TINY])
    finally: os.chdir(cwd)
    assert rc == 0
    return d / "run"


def test_train_writes_the_run_directory(trained, capsys):
    assert (trained / "config.yaml").exists() and (trained / "metrics.csv").exists()
    assert (trained / "checkpoints" / "last.ckpt").exists()


def test_validate_prints_metrics(trained, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    rc = main(["validate", "--config", str(trained / "config.yaml"), "--ckpt", str(trained / "checkpoints" / "last.ckpt")])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0 and any(l.startswith("val/psnr: ") for l in out) and out[-1].startswith("Run directory: ")


def test_predict_file_and_folder(trained, tmp_path, capsys):
    src = tmp_path / "in"; src.mkdir()
    Image.fromarray((np.random.rand(20, 24, 3) * 255).astype(np.uint8)).save(src / "a.png")
    np.save(src / "b.npy", (np.random.rand(3, 16, 16) * 255).astype(np.float32))
    ckpt = str(trained / "checkpoints" / "last.ckpt")
    assert main(["predict", "--ckpt", ckpt, "--input", str(src), "--output", str(tmp_path / "out")]) == 0
    assert Image.open(tmp_path / "out" / "a.png").size == (48, 40)          # x2, the quickstart scale
    assert np.load(tmp_path / "out" / "b.npy").shape == (3, 32, 32)
    assert main(["predict", "--ckpt", ckpt, "--input", str(src / "a.png"), "--output", str(tmp_path / "tiled"),
                 "--tile", "12", "--overlap", "4", "--raw"]) == 0
    assert "with the raw weights" in capsys.readouterr().out
    assert Image.open(tmp_path / "tiled" / "a.png").size == (48, 40)


@pytest.mark.parametrize("argv,needle", [
    (["train", "Data.scale=5"], "Data.scale: 5 is not one of [2, 3, 4, 8]"),
    (["train", "--config", "missing.yaml"], "config file 'missing.yaml' does not exist"),
    (["validate", "--ckpt", "nope.ckpt"], "checkpoint 'nope.ckpt' does not exist"),
    (["predict", "--ckpt", "nope.ckpt", "--input", ".", "--output", "o"], "nope.ckpt"),
    (["predict", "--ckpt", "x.ckpt", "--input", ".", "--output", "o", "--tile", "8", "--overlap", "4"], "expected --tile > 2 x --overlap"),
])
def test_user_errors_are_one_paragraph(argv, needle, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_unreadable_data_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    bad = tmp_path / "train"; bad.mkdir()
    for i in range(3): Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(bad / f"{i}.png")
    (bad / "broken.png").write_bytes(b"not a png")
    rc = main(["train", f"Data.train_dir={bad}", "Data.val_fraction=0.3", "Data.lr_patch_size=8",
               f"Logging.output_dir={tmp_path}/run", *TINY])
    err = capsys.readouterr().err
    assert rc == 2 and "broken.png" in err and "Traceback" not in err


def test_console_script_debug_shows_traceback(tmp_path):
    exe = Path(sys.executable).with_name("gan-engine")
    r = subprocess.run([str(exe), "train", "Data.scale=5"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "Data.scale" in r.stderr
    r = subprocess.run([str(exe), "train", "Data.scale=5", "--debug"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "Traceback" in r.stderr
