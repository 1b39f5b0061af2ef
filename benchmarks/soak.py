"""Long-run soak (issue 15): does a long run keep its memory flat, its file handles constant and every metric row?

What users run, for `--steps` generator steps: `gan_engine.trainer.prepare(cfg, callbacks=[...])` then `run.start()`,
with `cfg = gan_engine.testing.tiny_config(...)` (tiny SRResNet and PatchGAN on the shipped samples, x2, batch 4,
EMA on, adversarial after 4 steps) and

- the pandas logger (`Logging.logger=csv`, the `DataFrameLogger`, writing `metrics.csv`) at fit's interval
  (`log_every_n_steps=10`) with gradient norms every `Logging.grad_norm_every_n_steps`,
- a `SampleCapture` (the inspector's callback) every `--capture-every` steps, history bound 40 (thinned when full),
- checkpoints: the config's top-k on `val/psnr` plus `last.ckpt`, and `Callbacks.checkpoint.every_n_steps`,
- validation every `Training.val_every_n_steps` (image panels every `Logging.images_every_n_steps`),
- `Data.repeat` set so that an epoch is 30 steps: the loader is rebuilt a hundred times in 3000 steps.

A probe callback reads the process's resident memory (`VmRSS` in /proc/self/status) and its open file descriptors
(`/proc/self/fd`) every `--every` steps, then calls glibc's `malloc_trim(0)` and reads the anonymous part of the
resident memory (`RssAnon`: the heap, without the pages of shared libraries and mapped files, which grow as new code
paths run for the first time), with the Python object count, the capture's history and the logger's rows.

Reported:

- the series (a few rows) and the least-squares slopes over the second half of the run, in MB per 1000 steps, of
  VmRSS and of the trimmed anonymous memory, each with its noise: the standard error of the slope (from the
  residuals) and the slope of the first half (which includes the warm-up). Goal: the memory in use (trimmed `RssAnon`)
  is flat: |slope| <= max(3 standard errors, 1 MB per 1000 steps = 1 GB per million steps, the floor for series so
  quiet that a harmless drift is already several standard errors); the verdict line says which of the two held;
- open file descriptors at the first and last sample and the highest. Goal: the last is not above the first sample
  taken after warm-up (first validation and checkpoint done);
- `metrics.csv` (read back with pandas after the run) against the rows expected from the intervals: a training row
  at every step s with (s + 1) % log_every_n_steps == 0 (Lightning files a batch's values under the 0-based step),
  a validation row after every val_every_n_steps-th step (at s with (s + 1) % val_every_n_steps == 0, so on a
  training row when the interval is a multiple of 10), gradient norms at the step before every
  grad_norm_every_n_steps-th (again a training row); checkpoints add no rows. Also against the logger's own rows in
  memory, and every training row must be complete (its loss present). Goal: no lost rows, none unexpected. The run fails (exit 1) when rows are lost.

Run from the repository root:

    .venv/bin/python benchmarks/soak.py             # 3000 steps (about 5.5 minutes on a busy 2-core machine)
    .venv/bin/python benchmarks/soak.py --quick     # 60 steps, seconds: the smoke run
    .venv/bin/python benchmarks/soak.py --steps 10000 --every 100
"""
from __future__ import annotations
import argparse, ctypes, gc, math, os, shlex, sys, tempfile, time, warnings

import numpy as np
import pandas as pd
import torch
import lightning as L

from gan_engine.testing import tiny_config
from gan_engine.trainer import prepare
from gan_engine.capture import SampleCapture
from gan_engine.checkpoint import read_checkpoint

LOG_EVERY = 10   # fit()'s log_every_n_steps (gan_engine.trainer.trainer_kwargs)
FLAT_FLOOR = 1.0  # MB per 1000 steps: below this a slope counts as flat even when the series is too quiet to give a noise band


def rss_mb(field:str="VmRSS")->float:
    "Resident memory of this process in MB: all of it (VmRSS) or its anonymous part (RssAnon: heap, not mapped files)."
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"): return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def open_fds()->int: return len(os.listdir("/proc/self/fd"))


def _libc_trim():
    "glibc's malloc_trim (returns freed heap pages to the system), or None elsewhere."
    try: return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError): return None
malloc_trim = _libc_trim()


class Probe(L.Callback):
    "Samples RSS, open file descriptors and a few object counts every `every` generator steps."
    def __init__(self, every:int, capture:SampleCapture):
        self.every, self.capture, self.rows, self.t0 = every, capture, [], None

    def sample(self, trainer, step:int):
        lg = trainer.logger
        rss = rss_mb()
        if malloc_trim is not None: malloc_trim(0)   # what is left is memory in use, not pages the allocator keeps
        self.rows.append({"step": step, "seconds": time.perf_counter() - self.t0, "rss_mb": rss, "anon_mb": rss_mb("RssAnon"),
                          "fds": open_fds(),
                          "py_objects": len(gc.get_objects()), "captures": len(self.capture),
                          "capture_mb": sum(e.nbytes for e in self.capture.entries) / 2**20,
                          "logger_rows": len(getattr(lg, "_rows", ()))})

    def on_train_start(self, trainer, pl_module):
        self.t0 = time.perf_counter(); self.sample(trainer, trainer.global_step)
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step % self.every == 0: self.sample(trainer, trainer.global_step)
    def on_train_end(self, trainer, pl_module):
        if self.rows[-1]["step"] != trainer.global_step: self.sample(trainer, trainer.global_step)


def slope(x, y)->tuple[float, float]:
    "Least-squares slope of y on x and its standard error (from the residuals)."
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3: return float("nan"), float("nan")
    b, a = np.polyfit(x, y, 1)
    res = y - (a + b * x)
    se = math.sqrt((res @ res) / (len(x) - 2) / ((x - x.mean()) @ (x - x.mean())))
    return float(b), se


def expected_steps(max_steps:int, log_every:int, val_every:int, grad_every:int)->dict[str, set[int]]:
    "Logger steps at which metrics.csv must have a row, by source."
    out = {"train": {s for s in range(max_steps) if (s + 1) % log_every == 0},
           "val": {s - 1 for s in range(val_every, max_steps + 1, val_every)} if val_every else set(),
           "grad_norm": {s - 1 for s in range(grad_every, max_steps + 1, grad_every)} if grad_every else set()}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3000, help="generator steps (default 3000)")
    p.add_argument("--every", type=int, default=None, help="probe interval in steps (default steps/60)")
    p.add_argument("--val-every", type=int, default=100, help="Training.val_every_n_steps")
    p.add_argument("--ckpt-every", type=int, default=250, help="Callbacks.checkpoint.every_n_steps")
    p.add_argument("--capture-every", type=int, default=50, help="SampleCapture every_n_steps")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (tiny networks: 1 is fastest)")
    p.add_argument("--out", default=None, help="folder for the run (default: a temporary one, removed)")
    p.add_argument("--quick", action="store_true", help="60 steps with every interval scaled down: a smoke run")
    a = p.parse_args(argv)
    if a.quick: a.steps, a.val_every, a.ckpt_every, a.capture_every, a.every = 60, 20, 25, 10, a.every or 5
    every = a.every or max(1, a.steps // 60)
    print("$ " + " ".join(shlex.quote(x) for x in ["python", *sys.argv]), flush=True)
    torch.set_num_threads(a.threads)
    warnings.filterwarnings("ignore")
    tmp = tempfile.TemporaryDirectory(prefix="gan_engine-soak-") if a.out is None else None
    out = a.out or tmp.name
    grad_every = 50
    cfg = tiny_config(overrides=[
        f"Training.max_steps={a.steps}", f"Training.val_every_n_steps={a.val_every}", "Data.repeat=10",
        "Logging.logger=csv", f"Logging.output_dir={out}/soak", f"Logging.grad_norm_every_n_steps={grad_every}",
        f"Callbacks.checkpoint.every_n_steps={a.ckpt_every}", "Trainer.enable_progress_bar=false",
        "Trainer.enable_model_summary=false"])
    print(f"config: tiny_config, {a.steps} generator steps, batch {cfg.Data.train_batch_size}, "
          f"{cfg.Generator.n_channels} channels x {cfg.Generator.n_blocks} block, EMA on, logger csv every {LOG_EVERY} steps "
          f"(grad norms every {grad_every}), validation every {a.val_every}, periodic checkpoint every {a.ckpt_every} "
          f"(+ top-{cfg.Callbacks.checkpoint.save_top_k} on {cfg.Callbacks.checkpoint.monitor} + last), capture every "
          f"{a.capture_every} (4 samples, bound 40), probe every {every}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s), {os.cpu_count()} CPUs", flush=True)

    cap = SampleCapture(every_n_steps=a.capture_every, num_samples=4, max_entries=40)
    probe = Probe(every, cap)
    t0 = time.perf_counter()
    run = prepare(cfg, callbacks=[cap, probe])
    run.start()
    wall = time.perf_counter() - t0
    steps = run.module.g_step
    fds_after_run = open_fds()

    # ---- memory and handles ----
    s = pd.DataFrame(probe.rows).set_index("step")
    show = s.iloc[np.unique(np.linspace(0, len(s) - 1, min(len(s), 8)).round().astype(int))]
    print(f"\nseries ({len(s)} samples; showing {len(show)}):")
    print(show.to_string(float_format=lambda v: f"{v:.1f}"))
    half = s.index.values >= steps / 2
    print(f"\nRSS: {s.rss_mb.iloc[0]:.1f} MB at step {s.index[0]}, {s.rss_mb.iloc[-1]:.1f} MB at step {s.index[-1]}, "
          f"max {s.rss_mb.max():.1f} MB; anonymous part after malloc_trim {s.anon_mb.iloc[0]:.1f} -> {s.anon_mb.iloc[-1]:.1f} MB"
          + ("" if malloc_trim else " (no glibc malloc_trim here: untrimmed)"))
    fits = {}
    for col, what in (("rss_mb", "RSS"), ("anon_mb", "anonymous RSS after malloc_trim")):
        b2, se2 = slope(s.index[half], s[col][half])
        b1, _ = slope(s.index[~half], s[col][~half])
        fits[col] = (b2 * 1000, se2 * 1000)
        print(f"{what} slope over the second half (steps {s.index[half][0]}..{s.index[half][-1]}, {half.sum()} samples): "
              f"{b2 * 1000:+.3f} MB per 1000 steps (standard error {se2 * 1000:.3f}, residual std {np.std(s[col][half]):.2f} MB); "
              f"first half (noise reference, includes warm-up): {b1 * 1000:+.3f}")
    b2k, se2k = fits["anon_mb"]
    band = max(3 * se2k, FLAT_FLOOR)
    flat = abs(b2k) <= band
    print(f"goal (flat memory in use: |slope of anonymous RSS after malloc_trim| <= max(3 standard errors, {FLAT_FLOOR} "
          f"MB/1000 steps) = {band:.3f}): {'met' if flat else 'NOT met'} ({b2k:+.3f}: "
          f"{'within' if abs(b2k) <= 3 * se2k else 'outside'} 3 standard errors ({3 * se2k:.3f}), "
          f"{'below' if abs(b2k) <= FLAT_FLOOR else 'above'} the floor; whole RSS {fits['rss_mb'][0]:+.3f})")
    warm = s[s.index >= min(a.val_every, a.ckpt_every, steps)].fds
    warm_first = int(warm.iloc[0]) if len(warm) else int(s.fds.iloc[0])
    print(f"\nopen file descriptors: first {int(s.fds.iloc[0])}, after warm-up {warm_first}, last {int(s.fds.iloc[-1])}, "
          f"max {int(s.fds.max())}; after the run {fds_after_run}")
    fds_ok = int(s.fds.iloc[-1]) <= warm_first
    print(f"goal (file descriptors not growing: last <= after warm-up): {'met' if fds_ok else 'NOT met'}")

    # ---- metric rows ----
    lg = run.trainer.logger
    csv = pd.read_csv(lg.metrics_path, index_col="step")
    mem = lg.df
    exp = expected_steps(steps, run.trainer.log_every_n_steps, a.val_every, grad_every)
    expected = set().union(*exp.values())
    found = set(int(i) for i in csv.index)
    lost_vs_expected, unexpected = sorted(expected - found), sorted(found - expected)
    lost_vs_logger = sorted(set(int(i) for i in mem.index) - found)
    train_rows = csv.loc[sorted(exp["train"] & found)]
    incomplete = int(train_rows["train/loss_g"].isna().sum()) if "train/loss_g" in csv else len(train_rows)
    val_missing = int(csv.loc[sorted(exp["val"] & found), "val/psnr"].isna().sum()) if exp["val"] else 0
    print(f"\nmetrics.csv: {len(csv)} rows x {csv.shape[1]} columns read back with pandas; expected {len(expected)} "
          f"({len(exp['train'])} training rows every {run.trainer.log_every_n_steps} steps, {len(exp['val'])} validation "
          f"rows every {a.val_every} ({len(exp['val'] - exp['train'])} of them off the training rows), "
          f"{len(exp['grad_norm'] - exp['train'])} gradient-norm rows off the training rows)")
    print(f"rows lost against the expected steps: {len(lost_vs_expected)} {lost_vs_expected[:10]}; unexpected rows: "
          f"{len(unexpected)} {unexpected[:10]}; lost against the logger's memory ({len(mem)} rows): {len(lost_vs_logger)}; "
          f"training rows without their loss: {incomplete}; validation rows without val/psnr: {val_missing}")
    rows_ok = not lost_vs_expected and not lost_vs_logger and not unexpected and not incomplete and not val_missing
    print(f"goal (no lost rows: metrics.csv rows == expected): {'met' if rows_ok else 'NOT met'}")

    ck = sorted((run.run_dir / "checkpoints").glob("*.ckpt"))
    periodic = [c for c in ck if c.name.startswith("periodic-")]
    last = read_checkpoint(run.run_dir / "checkpoints" / "last.ckpt")
    print(f"\ncheckpoints: {len(ck)} files ({len(periodic)} periodic, expected {steps // a.ckpt_every}); last.ckpt loads, "
          f"global step {last['global_step']}")
    print(f"wall time: {wall:.1f} s for {steps} generator steps ({1000 * wall / max(steps, 1):.1f} ms per step, "
          f"validation, captures and checkpoints included)")
    if tmp is not None: tmp.cleanup()
    return 0 if rows_ok else 1


if __name__ == "__main__":
    sys.exit(main())
