"""The data loader's share of the quickstart's step time, and the step time by `Data.num_workers` (issue 14).

What users run: `gan-engine train` without a config, i.e. `quickstart_config()` through `prepare()` (everything
`fit()` builds), with validation off so that only training steps are timed.

1. **Loader alone**: the quickstart's training `DataLoader` (`GANDataModule`, the default `num_workers`)
   iterated on its own: milliseconds per batch (reading the PNGs, random crops, flips, degradation, collation).
2. **Share**: that figure over the median time per training step of `fit()` (from batch start to batch start).
3. **By workers**: the median time per step of the same `fit()` with `Data.num_workers` 0, 1 and 2 (worker
   processes are persistent and memory is pinned on CUDA machines, as `GANDataModule` sets them), in
   alternating rounds so that drifts in machine load spread over all settings. The fastest setting is the
   one the default should be on this kind of machine.

Run from the repository root:

    .venv/bin/python benchmarks/loader_share.py            # a few minutes on 2 CPU cores
    .venv/bin/python benchmarks/loader_share.py --quick    # a smoke run
"""
from __future__ import annotations
import argparse, logging, os, shlex, statistics, sys, tempfile, time, warnings

import lightning as L
import torch

from gan_engine.cli import quickstart_config
from gan_engine.data import GANDataModule
from gan_engine.trainer import prepare

class BatchStarts(L.Callback):
    def __init__(self): self.starts = []
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx): self.starts.append(time.perf_counter())

def step_time(workers:int, steps:int, warmup:int, out:str)->float:
    "Median seconds per training step of the quickstart's fit() with `workers` loader processes."
    total = warmup + steps + 1
    cfg = quickstart_config([f"Training.max_steps={total}", f"Schedulers.g_warmup_steps={min(20, total // 2)}",  # short runs: a warm-up that fits
                             f"Data.num_workers={workers}",
                             f"Logging.output_dir={out}", "Trainer.limit_val_batches=0", "Trainer.num_sanity_val_steps=0",
                             "Trainer.enable_progress_bar=false", "Trainer.enable_model_summary=false"])
    timer = BatchStarts()
    prepare(cfg, callbacks=[timer]).start()
    s = timer.starts[warmup:]
    return statistics.median(b - a for a, b in zip(s, s[1:]))

def loader_time(batches:int)->float:
    "Median seconds per batch of the quickstart's training loader on its own (its default workers)."
    dm = GANDataModule(quickstart_config()); dm.setup("fit")
    dl = dm.train_dataloader()
    def forever():   # epochs one after another, as training sees them
        epoch = 0
        while True:
            if hasattr(dl.sampler, "set_epoch"): dl.sampler.set_epoch(epoch)
            yield from dl; epoch += 1
    it, times = forever(), []
    next(it)
    for _ in range(batches):
        t = time.perf_counter(); next(it); times.append(time.perf_counter() - t)
    return statistics.median(times)

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds over the worker settings (default 3)")
    p.add_argument("--steps", type=int, default=40, help="timed steps per run (default 40)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="Data.num_workers settings (default 0 1 2)")
    p.add_argument("--quick", action="store_true", help="one round of 5 steps: a smoke run")
    a = p.parse_args(argv)
    if a.quick: a.rounds, a.steps = 1, 5
    if a.rounds < 1 or a.steps < 2 or min(a.workers) < 0:
        p.error(f"Expected --rounds >= 1, --steps >= 2 and --workers >= 0 but got {a.rounds}, {a.steps}, {a.workers}")
    print("$ " + " ".join(shlex.quote(x) for x in ["python", *sys.argv]))
    print(f"torch {torch.__version__}, lightning {L.__version__}; {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    default = quickstart_config().Data.num_workers
    per_batch = loader_time(max(a.steps, 10))
    times = {w: [] for w in a.workers}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            for w in (a.workers if r % 2 == 0 else a.workers[::-1]):   # alternate the order between rounds
                times[w].append(step_time(w, a.steps, 5, os.path.join(tmp, f"r{r}w{w}")))
                print(f"round {r + 1}, num_workers={w}: {1000 * times[w][-1]:.1f} ms per step", flush=True)
    med = {w: statistics.median(v) for w, v in times.items()}
    base = med[default] if default in med else med[min(med)]
    print(f"\nloader alone (num_workers={default}, the default): {1000 * per_batch:.1f} ms per batch = "
          f"{100 * per_batch / base:.1f} % of the quickstart's {1000 * base:.1f} ms step")
    for w, v in med.items():
        print(f"num_workers={w}: {1000 * v:.1f} ms per step (ratio to num_workers={default}: {v / base:.3f})")
    best = min(med, key=med.get)
    print(f"fastest: num_workers={best}; the default is {default}"
          + ("" if best == default else f" ({100 * (1 - med[best] / base):.1f} % faster with {best})"))
    return per_batch / base, med

if __name__ == "__main__":
    main()
