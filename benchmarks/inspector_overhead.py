"""Training-time cost of the inspector's `SampleCapture` callback on the SR quickstart (issue 6; target < 2 %).

The quickstart (`gan_engine.cli.quickstart_config`: x2 SR of the RGB samples, 32-channel SRResNet with 4
blocks, PatchGAN, EMA on, batch 8 of 32x32 LR crops) is trained with `gan_engine.trainer.fit` for
`--steps` generator steps, once with `SampleCapture()` at its defaults (4 validation samples, every 50
generator steps, plus one capture when training starts and one when it ends) and once without. Runs
alternate (with, without, without, with, ...) so both see the same machine load over time; each pair
gives a ratio, and the medians are reported. Validation is off in both (`val_every_n_steps` beyond the
run), so the ratio is not diluted by validation time: the real quickstart validates every 150 steps.

Two numbers are printed:

- **whole-run ratio**: median over pairs of (fit time with capture) / (fit time without). A run of
  `--steps` steps holds `1 + ceil(steps / 50)` captures (start, every 50, end), more per step than a long
  run does, so this over-states the steady-state cost of short runs; on a busy 2-core machine the
  run-to-run noise (several %) is larger than the effect, so read it with its range;
- **steady-state share**: the median time of one capture (timed inside the callback) divided by the time
  of the 50 training steps between two captures (median step time of the runs without capture x 50),
  and the same for the full 600-step quickstart (13 captures). This is the precise measure.

Run from the repository root:

    .venv/bin/python benchmarks/inspector_overhead.py                 # 3 pairs x 100 steps (minutes on 2 CPU cores)
    .venv/bin/python benchmarks/inspector_overhead.py --pairs 5 --steps 150
    .venv/bin/python benchmarks/inspector_overhead.py --quick         # small crops, 2 pairs x 30 steps: a smoke run
"""
from __future__ import annotations
import argparse, logging, statistics, sys, tempfile, time, warnings

import torch
import lightning as L

from gan_engine.cli import quickstart_config
from gan_engine.trainer import prepare
from gan_engine.capture import SampleCapture

TARGET = 0.02


class StepClock(L.Callback):
    "Times each training batch (start to start)."
    def __init__(self): self.marks = []
    def on_train_batch_start(self, *a): self.marks.append(time.perf_counter())
    @property
    def steps(self): return [b - a for a, b in zip(self.marks, self.marks[1:])]


class TimedCapture(SampleCapture):
    "SampleCapture at its defaults, noting how long each capture takes."
    def __init__(self, **kw): super().__init__(**kw); self.times = []
    def record(self, *a, **kw):
        t = time.perf_counter()
        try: return super().record(*a, **kw)
        finally: self.times.append(time.perf_counter() - t)


def one_run(steps:int, capture:bool, quick:bool, out:str)->dict:
    ov = [f"Training.max_steps={steps}", f"Training.val_every_n_steps={steps + 1}", f"Logging.output_dir={out}/run",
          "Logging.images_every_n_steps=0", "Trainer.enable_progress_bar=false", "Trainer.enable_model_summary=false",
          f"Schedulers.g_warmup_steps={min(20, steps // 4)}"]   # the quickstart's warm-up must end before a short run does
    if quick: ov += ["Data.lr_patch_size=16", "Data.train_batch_size=4"]
    clock = StepClock()
    cap = TimedCapture() if capture else None
    run = prepare(quickstart_config(ov), callbacks=[clock] + ([cap] if cap is not None else []))
    t = time.perf_counter(); run.start(); total = time.perf_counter() - t
    assert run.module.g_step == steps, run.module.g_step
    if cap is None: return {"total": total, "steps": clock.steps}
    return {"total": total, "steps": clock.steps, "captures": cap.times, "every": cap.every_n_steps, "n_captures": len(cap)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=None, help="generator steps per run (default 100, --quick 30)")
    ap.add_argument("--pairs", type=int, default=None, help="pairs of runs (default 3, --quick 2)")
    ap.add_argument("--quick", action="store_true", help="smaller crops and batches, fewer steps: a smoke run")
    a = ap.parse_args(argv)
    steps = a.steps or (30 if a.quick else 100)
    pairs = a.pairs or (2 if a.quick else 3)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    print(f"inspector_overhead: quickstart{' (quick: 16-px LR crops, batch 4)' if a.quick else ''}, {steps} steps per run, "
          f"{pairs} pairs, torch threads {torch.get_num_threads()}, SampleCapture defaults "
          f"(every {SampleCapture().every_n_steps} steps, {SampleCapture().num_samples} samples)", flush=True)
    with tempfile.TemporaryDirectory() as d:
        one_run(min(steps, 5), True, a.quick, f"{d}/warmup")  # imports, allocator, first-call costs
        res = {True: [], False: []}
        for i in range(pairs):
            for cap in ((True, False) if i % 2 == 0 else (False, True)):
                r = one_run(steps, cap, a.quick, f"{d}/{i}{int(cap)}")
                res[cap].append(r)
                print(f"  pair {i + 1} {'with   ' if cap else 'without'} capture: {r['total']:7.2f} s"
                      + (f"  ({r['n_captures']} captures, median {statistics.median(r['captures']) * 1e3:.0f} ms each)" if cap else ""),
                      flush=True)
    with_t = [r["total"] for r in res[True]]; without_t = [r["total"] for r in res[False]]
    ratios = [w / o for w, o in zip(with_t, without_t)]
    step = statistics.median([s for r in res[False] for s in r["steps"]])
    cap_t = statistics.median([c for r in res[True] for c in r["captures"]])
    every = res[True][0]["every"]
    steady = cap_t / (every * step)
    full = 13 * cap_t / (600 * step)
    print(f"median fit time: with {statistics.median(with_t):.2f} s, without {statistics.median(without_t):.2f} s")
    print(f"whole-run ratio with/without: median {statistics.median(ratios):.4f} "
          f"(pairs: {', '.join(f'{r:.4f}' for r in ratios)}; {res[True][0]['n_captures']} captures per {steps}-step run)")
    print(f"median step {step * 1e3:.1f} ms, median capture {cap_t * 1e3:.1f} ms")
    print(f"steady-state overhead at every {every} steps: {steady * 100:.2f} % "
          f"(full 600-step quickstart, 13 captures: {full * 100:.2f} %); target < {TARGET * 100:.0f} %: "
          f"{'OK' if steady < TARGET else 'OVER'}")
    return 0 if steady < TARGET or a.quick else 1   # a smoke run's crops are too small for the verdict to count


if __name__ == "__main__": sys.exit(main())
