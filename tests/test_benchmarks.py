"""Every script in benchmarks/ runs here in a quick smoke form, so none rots unseen (issue 14).

Each run is the script as a user starts it, with its smallest budget; the test checks that it finishes and prints
the figures its README section quotes (not their values: those are measured by the full runs).
"""
import os, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE = {   # script -> (arguments of its quick form, lines its output must contain)
    "step_overhead.py": (["--quick"], ["EMA update share of the plain step time", "summary (median of the per-round ratios"]),
    "inspector_overhead.py": (["--quick"], ["whole-run ratio with/without", "steady-state overhead at every 50 steps"]),
    "inpaint_quality.py": (["--minutes", "0.2"], ["GAN - biharmonic:", "goal (beat biharmonic hole PSNR within the budget):"]),
    "loader_share.py": (["--quick", "--workers", "0", "1"], ["loader alone (num_workers=", "fastest: num_workers="]),
    "predict_memory.py": (["--quick"], ["outputs at 64^2: bit-identical", "streaming holds"]),
    "soak.py": (["--quick"], ["RSS slope over the second half", "open file descriptors: first",
                              "goal (no lost rows: metrics.csv rows == expected): met"]),
    "prompt_adherence.py": (["--cpu-minutes", "0.2", "--per-spec", "1"],
                            ["GAN (EMA) · held-out", "real renders · seen", "goal (>= 90 % on each attribute"]),
    "quickstart_quality.py": (["--quick"], ["mean gain over bicubic on 5 held-out photographs (last checkpoint):",
                                            "mean gain of the best by val/psnr checkpoint (step=", "goal (>= +1.5 dB mean gain"]),
    "degrade_throughput.py": (["--quick"], ["cpu: ", "images/s (median of 2 batches)"]),
    "realworld_sr.py": (["--quick"], ["GAN - L1 PSNR:", "goal (GAN beats L1 on LPIPS and DISTS within 1 dB PSNR of it"]),
    # with OpenSR-SRGAN absent (CI) it times gan_engine alone and says so; with $OPENSR_PYTHON set it compares
    "vs_opensr.py": (["--quick"], ["gan_engine: torch", "ms per batch" if not os.environ.get("OPENSR_PYTHON") else "ratio gan_engine/OpenSR"]),
}


def test_every_benchmark_has_a_smoke_form():
    assert sorted(p.name for p in (ROOT / "benchmarks").glob("*.py")) == sorted(SMOKE)


@pytest.mark.parametrize("script", sorted(SMOKE))
def test_benchmark_runs_in_its_quick_form(script, tmp_path):
    args, expected = SMOKE[script]
    env = {**os.environ, "MPLBACKEND": "Agg", "TMPDIR": str(tmp_path)}
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    for line in expected: assert line in r.stdout, (line, r.stdout[-2000:])
