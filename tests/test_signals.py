"""Ctrl+C and SIGTERM sent to a real `gan-engine train` process, then `--auto-resume` (issue 17).

The signal arrives while training runs; the process must stop after the current generator step with a
checkpoint and exit 130 (SIGINT) or 143 (SIGTERM). `train --auto-resume` must then continue that same
run to its end, reaching the same generator weights as a run that was never stopped.
"""
import os, signal, subprocess, sys, time
from pathlib import Path

import pytest
import torch

from gan_engine.checkpoint import read_checkpoint
from gan_engine.config import save_config
from gan_engine.testing import tiny_config
from gan_engine.trainer import resumable_checkpoint

ROOT = Path(__file__).resolve().parents[1]
MAX_STEPS = 240


def _config(tmp: Path, name: str) -> Path:
    cfg = tiny_config(ROOT / "data_samples", [
        f"Training.max_steps={MAX_STEPS}", "Training.val_every_n_steps=80", f"Logging.output_dir={tmp / name}",
        "Logging.progress=lines", "Logging.progress_every_n_steps=4", "Trainer.enable_progress_bar=true"])
    return save_config(cfg, tmp / f"{name}.yaml")


def _train(args, cwd, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", "import sys; from gan_engine.cli import main; sys.exit(main())", "train", *args],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _signal_midway(proc, sig, after_step: int = 16) -> str:
    "Read the progress lines until step `after_step` has passed, send `sig`, return the whole output."
    out = []
    for line in proc.stdout:
        out.append(line)
        if line.startswith("step ") and int(line.split()[1].split("/")[0]) >= after_step:
            proc.send_signal(sig); break
    out.append(proc.stdout.read())
    proc.wait(120)
    return "".join(out)


def _generator(ckpt: Path) -> dict:
    sd = read_checkpoint(ckpt)["state_dict"]
    return {k: v for k, v in sd.items() if k.startswith("generator.")}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("whole")
    p = _train(["--config", str(_config(tmp, "whole"))], cwd=tmp)
    out = p.communicate(timeout=600)[0]
    assert p.returncode == 0, out[-3000:]
    return _generator(tmp / "whole" / "checkpoints" / "last.ckpt")


@pytest.mark.parametrize("sig,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_a_checkpoint_and_auto_resume_finishes_the_run(tmp_path, uninterrupted, sig, status):
    cfg = _config(tmp_path, "run")
    out = _signal_midway(_train(["--config", str(cfg)], cwd=tmp_path), sig)
    name = signal.Signals(sig).name
    assert f"{name}: stopping after this generator step with a checkpoint" in out, out[-3000:]
    stopped = sorted((tmp_path / "run" / "checkpoints").glob("stopped-step=*.ckpt"))
    assert len(stopped) == 1, out[-3000:]
    step = int(stopped[0].stem.split("=")[1])
    assert 16 <= step < MAX_STEPS
    assert f"Stopped by {name}: checkpoint {stopped[0]}" in out, out[-3000:]
    assert read_checkpoint(stopped[0])["global_step"] == step          # a whole step's state, not a partial one

    newest = resumable_checkpoint(tmp_path / "run")                    # the stop's checkpoint, or last.ckpt written with it
    assert newest.parent == stopped[0].parent and read_checkpoint(newest)["global_step"] == step
    p = _train(["--config", str(cfg), "--auto-resume"], cwd=tmp_path)
    again = p.communicate(timeout=600)[0]
    assert p.returncode == 0, again[-3000:]
    assert f"Auto-resume: continuing {newest}" in again, again[:2000]
    assert f"Generator steps: {MAX_STEPS}" in again
    assert not (tmp_path / "run-2").exists()                            # the same run continued, no new one
    resumed = _generator(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed), "resumed weights differ from an uninterrupted run"


def test_auto_resume_without_a_run_starts_one(tmp_path):
    cfg = tiny_config(ROOT / "data_samples", ["Training.max_steps=4", "Training.val_every_n_steps=4",
                                               f"Logging.output_dir={tmp_path / 'fresh'}"])
    p = _train(["--config", str(save_config(cfg, tmp_path / "fresh.yaml")), "--auto-resume"], cwd=tmp_path)
    out = p.communicate(timeout=300)[0]
    assert p.returncode == 0, out[-3000:]
    assert f"Auto-resume: no run with a checkpoint in {tmp_path / 'fresh'}" in out
    assert (tmp_path / "fresh" / "checkpoints" / "last.ckpt").is_file()


def test_a_second_ctrl_c_aborts_at_once(tmp_path):
    cfg = _config(tmp_path, "run")
    p = _train(["--config", str(cfg)], cwd=tmp_path)
    for line in p.stdout:
        if line.startswith("step "): break
    p.send_signal(signal.SIGINT); time.sleep(0.05); p.send_signal(signal.SIGINT)
    p.communicate(timeout=120)
    assert p.returncode != 0
