"pytest wrapper for run_browser_test.py: marked `browser`, skipped unless GAN_ENGINE_BROWSER_TESTS=1."
import os, subprocess, sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(os.environ.get("GAN_ENGINE_BROWSER_TESTS") != "1",
                                 reason="real-browser test: set GAN_ENGINE_BROWSER_TESTS=1 (needs chromium, jupyterlab, playwright)")]


def test_tutorial_runs_in_jupyterlab():
    script = Path(__file__).with_name("run_browser_test.py")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=900)
    print(r.stdout[-20000:]); print(r.stderr[-5000:], file=sys.stderr)
    assert r.returncode == 0, "browser test failed; see the log above and the screenshots folder it names"
    assert "PASSED" in r.stdout
