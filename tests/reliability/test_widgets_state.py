"""Widget robustness (issue 15): out-of-range control values, a run stopped mid-capture, a kernel killed during
background training. The state stays consistent and nothing written is lost.

The heavier variants (several kills at different moments) run only with GAN_ENGINE_RELIABILITY_FULL=1.
"""
import csv, os, signal, subprocess, sys, textwrap, threading, time
from pathlib import Path

import pandas as pd
import pytest
import torch
from traitlets import TraitError

from gan_engine.capture import SampleCapture
from gan_engine.checkpoint import read_checkpoint, weight_paths, load_state_file
from gan_engine.data import GANDataModule
from gan_engine.module import GANModule
from gan_engine.testing import tiny_config
from gan_engine.widgets import Inspector, LiveTraining, PLACED_BOX

pytestmark = [pytest.mark.filterwarnings("ignore")]
ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "data_samples"
FULL = os.environ.get("GAN_ENGINE_RELIABILITY_FULL") == "1"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def untrained(task="sr"):
    "A freshly built tiny module and a capture holding its first validation batch (no training: fast)."
    cfg = tiny_config(SAMPLES, task=task)
    dm = GANDataModule(cfg)
    vb = next(iter(dm.val_dataloader()))
    return GANModule(cfg, value_range=dm.value_range), vb


@pytest.fixture(scope="module")
def sr():
    module, vb = untrained()
    cap = SampleCapture(num_samples=3, max_entries=40, batch=vb)
    for s in (0, 10, 20, 30, 40): cap.record(module, step=s)
    return module, cap


def consistent(insp:Inspector):
    "The shown index is inside the history, the entry is the one at that index, the crop inside the image."
    st = insp.state
    n = len(insp._entries)
    assert st["n_steps"] == n
    if n == 0: assert st["step"] is None and st["index"] == 0; return st
    assert 0 <= st["index"] < n and st["step"] == insp._entries[st["index"]].step
    assert 0 <= st["sample"] < insp._entries[-1].hr.shape[0]
    x, y, z = st["region"]
    H, W = insp._entries[-1].hr.shape[-2:]
    assert 1 <= z <= min(H, W) and 0 <= x <= W - z and 0 <= y <= H - z
    lo, hi = st["limits"] if st["stretch"] == "range" else (0, 100)
    assert lo <= hi
    return st


# ---- out-of-range values ----
def test_out_of_range_slider_values_are_clamped_or_refused(sr):
    module, cap = sr
    insp = Inspector(cap)
    consistent(insp)
    insp.step.value = 10**6                                        # past the end: clamped to the newest entry
    assert consistent(insp)["step"] == 40
    insp.step.value = -7
    assert consistent(insp)["index"] == 0
    insp.step.set_state({"value": 99})                             # what the browser would send
    assert consistent(insp)["index"] == 4
    H, W = cap.latest.hr.shape[-2:]
    insp.zoom.value = 10**4; assert insp.zoom.value == min(H, W)
    insp.zoom.value = 4; insp.x.value = 10**4; insp.y.value = -3
    assert consistent(insp)["region"] == (W - 4, 0, 4)
    insp.zoom.value = min(H, W)                                     # a bigger zoom pulls x back inside
    assert consistent(insp)["region"] == (0, 0, min(H, W))
    insp.limits.value = (-1e9, 1e9); assert insp.limits.value == cap.value_range
    insp.error_max.value = 1e9; assert insp.error_max.value == 1.0
    insp.prompt_seed.value = -5; assert insp.prompt_seed.value == 0
    before, renders = insp.state, insp.renders
    for widget, bad in ((insp.limits, (200.0, 10.0)), (insp.sample, 99), (insp.rgb[0], 7), (insp.weights, "median")):
        with pytest.raises(TraitError): widget.value = bad           # refused by the widget: nothing changes
    assert insp.state == before and insp.renders == renders
    assert set(insp.png) >= {"sr", "hr", "lr", "error"} and all(insp.png.values())


def test_history_shrinking_under_the_slider(sr):
    "Thinning and clear() shrink the history: the shown index stays inside it."
    module, cap0 = sr
    cap = SampleCapture(num_samples=2, max_entries=5, batch=cap0.inputs)
    for s in range(5): cap.record(module, step=s)
    insp = Inspector(cap)
    insp.step.value = 1                                            # not following the newest
    for s in range(5, 12): cap.record(module, step=s)              # thinned (history bound 5)
    insp.refresh()
    st = consistent(insp)
    assert cap.thinned and st["step"] == min(cap.steps, key=lambda s: abs(s - 1))   # the nearest step still kept
    insp.step.value = 2                                            # neither the first nor the newest
    cap.clear(); insp.refresh()
    st = consistent(insp)
    assert st["n_steps"] == 0 and insp.entry is None and "No samples" in insp.message.value
    cap.record(module, step=50); insp.refresh()
    assert consistent(insp)["step"] == 50


def test_state_read_while_the_history_is_thinned(sr):
    "The dashboard thread refreshes (the history thinned and cleared) while another thread reads the state."
    module, cap0 = sr
    cap = SampleCapture(num_samples=1, max_entries=4, batch=cap0.inputs)
    e = cap.record(module, step=0)
    insp = Inspector(cap)
    stop, errors = threading.Event(), []
    def reader():
        while not stop.is_set():
            try:
                st = insp.state   # one snapshot: its index, step and count must agree
                assert (0 <= st["index"] < st["n_steps"] and st["step"] is not None
                        or st["n_steps"] == 0 and st["step"] is None and st["index"] == 0), st
            except Exception as err: errors.append(err); return
    t = threading.Thread(target=reader); t.start()
    try:
        for s in range(1, 60):
            cap._add(type(e)(**{**e.__dict__, "step": s}))   # a copy filed under a new step: no generator run
            if s % 7 == 0: insp.step.value = 1              # not following: refresh maps the old step
            if s % 11 == 0: cap.clear()                     # the history shrinks under the slider
            insp.refresh()
    finally:
        stop.set(); t.join(10)
    assert not errors, repr(errors[0])


def test_inpainting_box_and_sample_out_of_range():
    module, vb = untrained("inpaint")
    cap = SampleCapture(num_samples=2, batch=vb)
    cap.record(module, step=0)
    insp = Inspector(cap)
    H, W = cap.latest.hr.shape[-2:]
    insp.mask_kind.value = PLACED_BOX
    for s, v in zip(insp.box, (10**5, -4, 10**5, 0)): s.value = v  # clamped to the sliders' ranges
    assert [s.value for s in insp.box] == [W - 1, 0, W, 1]
    e = insp.new_mask()                                            # a 1-px-wide box at the edge: still a valid hole
    assert e is not None and e.mask[0, 0, 0, W - 1] == 1 and len(cap) == 2
    n = len(cap)
    for kw, match in ((dict(sample=5), r"`sample` to be an int in \[0, 1\]"), (dict(sample=-1), "sample"),
                      (dict(box=(W, 0, 2, 2)), "start inside"), (dict(box=(0, 0, 0, 3)), "at least"),
                      (dict(kind="spiral"), "`kind` to be one of")):
        with pytest.raises(ValueError, match=match): cap.new_mask(**kw)
    assert len(cap) == n and consistent(insp)
    for s, v in zip(insp.box, (0, 0, W, H)): s.value = v            # the whole sample: no pixel left to keep
    assert insp.new_mask() is None and "keep some pixels" in insp.message.value   # shown, not raised
    assert len(cap) == n and consistent(insp)


# ---- a capture interrupted ----
def test_interrupted_record_adds_no_half_entry(sr):
    module, cap0 = sr
    cap = SampleCapture(num_samples=2, batch=cap0.inputs)
    cap.record(module, step=0)
    class Interrupt(Exception): pass
    real, calls = cap._run, []
    def run(m, ema, inputs=None):
        calls.append(ema)
        if len(calls) == 2: raise Interrupt   # between the EMA and the raw outputs
        return real(m, ema, inputs)
    cap._run = run
    with pytest.raises(Interrupt): cap.record(module, step=5)
    del cap._run
    assert cap.steps == [0] and cap.latest.sr_raw is not None
    assert cap.record(module, step=5).step == 5 and cap.steps == [0, 5]


class SlowCapture(SampleCapture):
    "Pauses inside a capture (between the EMA and the raw outputs) at the first scheduled capture at or after `at`."
    def __init__(self, at, **kw):
        super().__init__(**kw); self.at, self.inside, self.release, self.paused_at = at, threading.Event(), threading.Event(), None
    def _run(self, module, ema, inputs=None):
        if not ema and self.paused_at is None and module.g_step >= self.at:
            self.paused_at = module.g_step; self.inside.set(); self.release.wait(30)
        return super()._run(module, ema, inputs)


def read_metrics(path:Path)->pd.DataFrame:
    "metrics.csv read twice: every line has the header's field count, and pandas parses it with unique sorted steps."
    with open(path, newline="") as f: rows = list(csv.reader(f))
    assert rows and rows[0][0] == "step" and all(len(r) == len(rows[0]) for r in rows), "a partial line in metrics.csv"
    df = pd.read_csv(path, index_col="step")
    assert df.index.is_unique and df.index.is_monotonic_increasing
    if "train/g_step" in df:   # one training log call writes these together
        assert df.loc[df["train/g_step"].notna(), ["train/loss_g", "train/adv_weight"]].notna().all(axis=None)
    return df


def test_stop_during_a_capture(tmp_path):
    "Stop pressed while a capture is half done: the capture completes, the history is whole, the files are intact."
    from gan_engine.trainer import fit_in_background
    cap = SlowCapture(at=10, every_n_steps=5, num_samples=2)
    cfg = tiny_config(SAMPLES, [f"Logging.output_dir={tmp_path}/run", "Training.max_steps=100000", "Data.repeat=4",
                                "Training.val_every_n_steps=3", "Callbacks.checkpoint.every_n_steps=2"])
    bg = fit_in_background(cfg, callbacks=[cap])
    live = LiveTraining(bg, cap, refresh_every=0.02)
    try:
        assert cap.inside.wait(60), "no capture reached"
        n = len(cap)
        live.refresh()                                     # the dashboard during the capture: the old history only
        assert len(cap) == n and live.inspector.state["n_steps"] == n
        live.stop_button.click()
        assert live.state == "stopping"
        cap.release.set()
        bg.wait(60)
    finally:
        cap.release.set(); bg.stop(wait=True, timeout=60)
    live.stop_auto_refresh(); live.refresh()
    g = bg.module.g_step
    assert not bg.running and live.state == "stopped" and g >= cap.paused_at
    steps = cap.steps
    assert steps == sorted(set(steps)) and cap.paused_at in steps and steps[-1] == g   # the interrupted one and a final one
    keys = set(cap.entries[0].metrics)
    for e in cap.entries:                                      # no half entry
        assert e.sr.shape == e.sr_raw.shape == e.hr.shape and set(e.metrics) == keys
        assert all(v.shape == (2,) and torch.isfinite(v).all() for v in e.metrics.values())
    assert live.inspector.state["step"] == g and live.inspector.state["n_steps"] == len(cap)
    saved = bg.stopper.saved
    ck = read_checkpoint(saved)
    assert ck["global_step"] == g and saved.name == f"stopped-step={g}.ckpt"
    assert all(p.exists() for p in weight_paths(saved))
    for p in (bg.run_dir / "checkpoints").glob("*.ckpt"): read_checkpoint(p)
    df, mem = read_metrics(bg.run_dir / "metrics.csv"), bg.run.logger.df
    assert "val/psnr" in df and df["train/loss_g"].notna().any()
    assert list(df.index) == list(mem.index) and df.shape == mem.shape     # everything logged is in the file


# ---- the kernel dies during background training ----
CHILD = textwrap.dedent("""
    import sys, warnings
    warnings.filterwarnings("ignore")
    import torch; torch.set_num_threads(1)
    from gan_engine.testing import tiny_config
    from gan_engine.widgets import live_training
    out, ckpt_every, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    cfg = tiny_config(overrides=[f"Logging.output_dir={out}", "Training.max_steps=100000", "Data.repeat=4",
                                 "Training.val_every_n_steps=4", f"Callbacks.checkpoint.every_n_steps={ckpt_every}"])
    live = live_training(cfg, every_n_steps=2, num_samples=2, refresh_every=0.05)   # what a notebook cell does
    print("training", flush=True)
    if mode == "exit":   # the kernel shuts down (interpreter exit) while the daemon training thread runs
        import time
        from pathlib import Path
        while len(list(Path(out, "checkpoints").glob("periodic-*.ckpt"))) < 2: time.sleep(0.02)
        sys.exit(0)
    live.session.wait()
""")


def kill_during_training(tmp_path:Path, delay:float, ckpt_every:int=3, min_ckpts:int=2)->Path:
    "Start background training in a child Python, SIGKILL it `delay` s after `min_ckpts` periodic checkpoints exist."
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    env.pop("GAN_ENGINE_RUN_DIR", None)
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(out), str(ckpt_every), "kill"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while len(list((out / "checkpoints").glob("periodic-*.ckpt"))) < min_ckpts:
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.time() < deadline, "no checkpoints within 120 s"
            time.sleep(0.02)
        time.sleep(delay)
        assert proc.poll() is None, proc.stderr.read()[-3000:]
    finally:
        if proc.poll() is None: os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    return out


def check_killed_run(out:Path)->tuple[Path, dict, pd.DataFrame]:
    "Every checkpoint (and its generator weights) loads, metrics.csv parses with complete rows; returns the newest checkpoint, its dict and the metrics."
    ckpts = sorted((out / "checkpoints").glob("*.ckpt"))   # (last.ckpt comes with the first validation)
    assert ckpts
    loaded, unfinished = {}, []
    for p in ckpts:
        ck = loaded[p] = read_checkpoint(p)
        assert ck["global_step"] >= 1 and "state_dict" in ck
        for w in weight_paths(p):
            if w.exists(): assert load_state_file(w)
            else: unfinished.append(p)   # killed after the checkpoint, before its weight files
    newest = max(ckpts, key=lambda p: loaded[p]["global_step"])
    # only the checkpoint being written when the process died may lack its weight files (it holds the weights itself)
    assert all(loaded[p]["global_step"] == loaded[newest]["global_step"] for p in unfinished), unfinished
    return newest, loaded[newest], read_metrics(out / "metrics.csv")


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    "A run whose process was SIGKILLed during background training (checkpoints every 3 steps, validation every 4)."
    out = kill_during_training(tmp_path_factory.mktemp("killed"), delay=0.1, ckpt_every=3, min_ckpts=4)
    return (out, *check_killed_run(out))


def test_killed_kernel_leaves_a_readable_resumable_run(killed):
    "The run continues from its newest checkpoint in the same run directory, its metric history kept."
    from gan_engine.trainer import fit
    out, newest, ck, before = killed
    g = ck["global_step"]
    assert g >= 12
    cfg = tiny_config(SAMPLES, [f"Logging.output_dir={out}", f"Training.max_steps={g + 12}", "Data.repeat=4",
                                "Training.val_every_n_steps=4", "Callbacks.checkpoint.every_n_steps=3"])
    more = fit(cfg, resume=newest)
    assert more.run_dir == out and more.module.g_step == g + 12
    after = read_metrics(out / "metrics.csv")
    kept = before[before.index < g]
    assert len(kept) and kept.index.isin(after.index).all() and after.index.max() >= g + 10


@pytest.mark.xfail(reason="a race of one step: the periodic checkpoint of step g is written in on_train_batch_end, "
                          "before Lightning logs (and saves to metrics.csv) the rows of step g-1, training values then "
                          "validation; a kill in between leaves a checkpoint whose last rows never reach the file, and a "
                          "resume from it does not log them again (see the issue-15 report)", strict=False)
def test_killed_kernel_kept_the_rows_its_checkpoint_covers(killed):
    "The rows logged before the newest checkpoint's step (validation after every 4th step, training every 10th) are on disk."
    out, newest, ck, before = killed
    g = ck["global_step"]
    due = sorted({s - 1 for s in range(4, g + 1, 4)} | {s - 1 for s in range(10, g + 1, 10)})
    missing = [s for s in due if s not in before.index]
    assert not missing, f"rows of steps {missing} (logged before the checkpoint of step {g}) are not in metrics.csv"


@pytest.mark.skipif(not FULL, reason="several kills at different moments: set GAN_ENGINE_RELIABILITY_FULL=1")
@pytest.mark.parametrize("delay,ckpt_every", [(0.0, 1), (0.01, 1), (0.04, 1), (0.11, 2), (0.3, 3), (0.7, 1)])
def test_kill_at_many_moments_full(tmp_path, delay, ckpt_every):
    "Checkpoints every step or two: a kill often lands in the middle of a write."
    out = kill_during_training(tmp_path, delay, ckpt_every=ckpt_every, min_ckpts=3)
    newest, ck, _ = check_killed_run(out)
    assert ck["global_step"] >= 3


@pytest.mark.skipif(not FULL, reason="a second child process: set GAN_ENGINE_RELIABILITY_FULL=1")
def test_kernel_shutdown_during_training_full(tmp_path):
    "The interpreter exits (kernel shutdown) while the daemon training thread runs: a clean exit and readable files."
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    env.pop("GAN_ENGINE_RUN_DIR", None)
    r = subprocess.run([sys.executable, "-c", CHILD, str(out), "1", "exit"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]       # no abort while a thread trains and draws during shutdown
    newest, ck, _ = check_killed_run(out)
    stopped = list((out / "checkpoints").glob("stopped-step=*.ckpt"))   # the dashboard stopped the run at exit
    assert len(stopped) == 1 and read_checkpoint(stopped[0])["global_step"] == ck["global_step"]
