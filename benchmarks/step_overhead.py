"""Per-batch overhead of what `gan_engine.trainer.fit()` builds against a plain PyTorch loop (issues 4 and 9).

The Lightning side is exactly what `fit()` runs: `prepare(cfg)` builds the run directory, the
`GANDataModule`, `GANModule`, the `DataFrameLogger` at fit's interval (`log_every_n_steps=10`) and every
callback the config asks for by default (`LearningRateMonitor`, `TrainingHealth` checking every step,
`GANCheckpoint` with the `GANCheckpointIO` plugin, `EMACallback`, `ScheduleFeed`, `RunDirSync`), gradient
norms every 50 steps, and the progress bar; `run.start()` trains. The plain loop reads the same files
through its own `GANDataModule` (the same resumable order and crops) and does the same math with the same
gan_engine components: normalisers, `GeneratorLoss` (l1), `DiscriminatorLoss` (bce), the adversarial weight
from the `StepPlan`, Adam optimisers and `WarmupDecayLR` schedules on the generator-step clock, and
`GeneratorEMA`. Adversarial training is on from the first step (`g_pretrain_steps=0`) and the discriminator
updates at every generator step. At the end both sides have trained the same number of steps on the same
batches, and the script asserts that the generator, the discriminator and the EMA are **bit-identical**,
so the timing compares the same computation.

Data: `--images` random float32 `.npy` images (HR size = LR crop x 4, values in [0, 1]) written to a
temporary folder, read by both sides.

Interleaving: the Lightning run is a single `Trainer.fit`; a callback marks the time at the start of
training batches `warmup + k*steps` and, at each mark, runs one round of the plain loop before the next
Lightning round starts (the plain round is not part of the Lightning window). The order is thus
plain, GANModule, plain, GANModule, ... and both see the same machine load over time. A window from
the start of batch n to the start of batch n+steps holds `steps` full iterations: data fetch, training
step, optimiser and scheduler steps, EMA update, hooks and logging.

Run from the repository root:

    .venv/bin/python benchmarks/step_overhead.py             # defaults (a few minutes on 2 CPU cores)
    .venv/bin/python benchmarks/step_overhead.py --quick     # tiny nets, seconds: a smoke run
"""
from __future__ import annotations
import argparse, logging, os, shlex, statistics, sys, tempfile, time, warnings
from pathlib import Path

import torch
import lightning as L

import numpy as np

from gan_engine.config import load_config
from gan_engine.data import GANDataModule
from gan_engine.generators import build_generator
from gan_engine.discriminators import build_discriminator
from gan_engine.normalise import build_normaliser
from gan_engine.losses import GeneratorLoss, DiscriminatorLoss
from gan_engine.optim import optimizer_from_config, scheduler_from_config
from gan_engine.ema import GeneratorEMA
from gan_engine.steps import StepPlan
from gan_engine.trainer import prepare

TARGET_RATIO = 1.05   # GANModule / plain, per batch
TARGET_EMA = 0.03     # EMA update's share of the plain step time

# --- configuration ---------------------------------------------------------------------------------------

# benchmark: the configuration (an RRDB generator at a size where a CPU step takes seconds);
# tiny: the laptop quickstart's networks (`gan-engine train`), where Lightning's fixed cost per step shows;
# quick: smaller still, a smoke run in seconds (what CI runs)
SIZES = {
    "benchmark": dict(generator={"model_type": "esrgan", "block_type": "rrdb", "n_blocks": 8, "n_channels": 32,
                                 "growth_channels": 32},
                      lr_size=32, batch=8, scale=4, d_base=64, d_blocks=3, rounds=8, steps=4, warmup=3),
    "tiny": dict(generator={"model_type": "srresnet", "block_type": "res", "n_blocks": 4, "n_channels": 32,
                            "global_residual": "bicubic"},
                 lr_size=32, batch=8, scale=2, d_base=32, d_blocks=3, rounds=20, steps=6, warmup=10),
    "quick": dict(generator={"model_type": "esrgan", "block_type": "rrdb", "n_blocks": 1, "n_channels": 8,
                             "growth_channels": 8},
                  lr_size=8, batch=2, scale=4, d_base=8, d_blocks=2, rounds=4, steps=4, warmup=2),
}

def make_config(s:dict, total_steps:int, data:str, out:str, overrides=()):
    "The benchmark's gan_engine config: the size's generator, PatchGAN, l1 + bce, EMA on, adversarial from step 0; fit's defaults otherwise."
    return load_config({
        "Data": {"train_dir": data, "val_dir": data, "scale": s["scale"], "lr_patch_size": s["lr_size"],
                 "train_batch_size": s["batch"], "value_range": [0.0, 1.0],
                 "normalization": {"lr": "zero_one", "hr": "zero_one"},
                 "augment": {"hflip": True, "vflip": True, "rot90": True}},
        "Generator": {**s["generator"], "scaling_factor": s["scale"]},
        "Discriminator": {"model_type": "patchgan", "base_channels": s["d_base"], "n_blocks": s["d_blocks"]},
        "Training": {"max_steps": total_steps, "g_pretrain_steps": 0, "d_update_interval": 1,
                     "val_every_n_steps": 0, "EMA": {"enabled": True},
                     "Losses": {"l1_weight": 1.0, "adv_loss_type": "bce", "adv_loss_beta": 1e-3}},
        "Logging": {"output_dir": out},
        "Trainer": {"limit_val_batches": 0, "num_sanity_val_steps": 0},  # per-step cost only: no validation
    }, overrides)

def make_images(s:dict, n:int, folder:Path, seed:int=0):
    "`n` random float32 images (3, HR, HR) in [0, 1] as .npy files, the size of one crop."
    rng, hw = np.random.default_rng(seed), s["lr_size"] * s["scale"]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n): np.save(folder / f"img_{i:03d}.npy", rng.random((3, hw, hw), dtype=np.float32))

# --- the plain loop ----------------------------------------------------------------------------------------

class PlainLoop:
    "The training step of `GANModule` (manual optimisation, adversarial phase) written as a plain loop."
    def __init__(self, cfg, generator:torch.nn.Module, discriminator:torch.nn.Module):
        self.cfg = cfg
        self.G, self.D = generator.train(), discriminator.train()
        vr = tuple(cfg.Data.value_range)
        self.norm_lr = build_normaliser(cfg.Data.normalization.lr, vr, "Data.normalization.lr")
        self.norm_hr = build_normaliser(cfg.Data.normalization.hr, vr, "Data.normalization.hr")
        self.g_loss, self.d_loss = GeneratorLoss.from_config(cfg), DiscriminatorLoss.from_config(cfg)
        self.opt_g, self.opt_d = optimizer_from_config(self.G, cfg, "g"), optimizer_from_config(self.D, cfg, "d")
        self.plan = StepPlan.from_config(cfg)
        self.sched_g = scheduler_from_config(self.opt_g, cfg, "g", self.plan)
        self.sched_d = scheduler_from_config(self.opt_d, cfg, "d", self.plan)
        self.ema = GeneratorEMA.from_config(self.G, cfg)
        self.g_step = self.d_step = 0
        self.ema_time = 0.0   # seconds spent in ema.update since the last reset
        dm = GANDataModule(cfg)             # its own loader: the same files, order and crops as fit()'s
        self._it = self._cycle(dm.train_dataloader())

    @staticmethod
    def _cycle(dl):
        epoch = 0
        while True:
            dl.sampler.set_epoch(epoch); yield from dl; epoch += 1

    def step(self, batch:dict):
        lr, hr = self.norm_lr(batch["lr"]), self.norm_hr(batch["hr"])        # normalise
        sr = self.G(lr)                                                      # G forward, once
        loss, _ = self.g_loss.reconstruction(sr, hr)                         # l1
        if self.plan.d_update_due(self.g_step):                              # D step on detached output
            real, fake = hr.detach(), sr.detach()
            rl, fl = self.D(real), self.D(fake)
            d_loss, _ = self.d_loss(rl, fl, d_fn=self.D, real=real, fake=fake, d_step=self.d_step)
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            self.opt_d.step()
            self.d_step += 1
        self.D.requires_grad_(False)                                         # G adversarial, D frozen
        try:
            adv, _ = self.g_loss.adversarial(self.D(sr), None, self.plan.adv_weight(self.g_step))
        finally:
            self.D.requires_grad_(True)
        loss = loss + adv
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        self.g_step += 1
        self.sched_g.go_to(self.g_step); self.sched_d.go_to(self.g_step)    # both schedules on the generator clock
        t = time.perf_counter()
        self.ema.update(self.G, self.g_step)                                 # EMA
        self.ema_time += time.perf_counter() - t

    def run(self, n:int)->tuple[float, float, list[float]]:
        "Run `n` steps (fetching each batch): wall seconds, process CPU seconds and each step's wall seconds."
        t, c, each = time.perf_counter(), time.process_time(), []
        for _ in range(n):
            s = time.perf_counter()
            self.step(next(self._it))
            each.append(time.perf_counter() - s)
        return time.perf_counter() - t, time.process_time() - c, each

# --- the interleaving callback -----------------------------------------------------------------------------

class Interleave(L.Callback):
    "Time Lightning rounds between batch starts and run a plain round before each Lightning round."
    def __init__(self, plain:PlainLoop, warmup:int, steps:int, rounds:int):
        self.plain, self.warmup, self.steps, self.rounds = plain, warmup, steps, rounds
        self.n = 0                                   # training batches started so far
        self.lightning, self.plain_times = [], []    # wall seconds per batch, per round
        self.lightning_cpu, self.plain_cpu = [], []  # process CPU seconds per batch, per round
        self.lightning_each, self.plain_each = [], []  # wall seconds of every timed step
        self.ema_share = []                          # EMA update time / plain round time, per round
        self._t0 = self._c0 = self._last = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        n, self.n = self.n, self.n + 1
        if n < self.warmup or n > self.warmup + self.rounds * self.steps: return
        now = time.perf_counter()
        if self._last is not None: self.lightning_each.append(now - self._last)
        k, r = divmod(n - self.warmup, self.steps)
        if r == 0:
            if self._t0 is not None:                 # close the Lightning round
                self.lightning.append((now - self._t0) / self.steps)
                self.lightning_cpu.append((time.process_time() - self._c0) / self.steps)
            if k < self.rounds:                      # a plain round, then open the next Lightning round
                self.plain.ema_time = 0.0
                wall, cpu, each = self.plain.run(self.steps)
                self.plain_times.append(wall / self.steps); self.plain_cpu.append(cpu / self.steps)
                self.plain_each += each; self.ema_share.append(self.plain.ema_time / wall)
                self._c0, now = time.process_time(), time.perf_counter()
                self._t0 = now
            else: now = None
        self._last = now

# --- main ----------------------------------------------------------------------------------------------------

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=("both", "tiny", "benchmark"), default="both",
                   help="tiny (the quickstart's networks), benchmark (the issue's RRDB configuration) or both (default)")
    p.add_argument("--rounds", type=int, help="timed rounds per side (default: the size's, see SIZES)")
    p.add_argument("--steps", type=int, help="steps per timed round (default: the size's)")
    p.add_argument("--warmup", type=int, help="untimed steps per side first (default: the size's)")
    p.add_argument("--images", type=int, default=16, help="training images written to a temporary folder (default 16)")
    p.add_argument("--quick", action="store_true", help="smaller networks and images, few steps: a smoke run in seconds")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides for fit()'s side, e.g. Callbacks.health.enabled=false (to see what a feature costs)")
    a = p.parse_args(argv)
    names = ["quick"] if a.quick else ["tiny", "benchmark"] if a.size == "both" else [a.size]
    sizes = {}
    for n in names:
        s = sizes[n] = dict(SIZES[n])
        for k in ("rounds", "steps", "warmup"):
            if getattr(a, k) is not None: s[k] = getattr(a, k)
        if s["rounds"] < 1 or s["steps"] < 1 or s["warmup"] < 0 or a.images < s["batch"]:
            p.error(f"Expected --rounds >= 1, --steps >= 1, --warmup >= 0, --images >= the batch ({s['batch']}) but got "
                    f"{s['rounds']}, {s['steps']}, {s['warmup']}, {a.images}")
    print("$ " + " ".join(shlex.quote(x) for x in ["python", *sys.argv]))
    print(f"torch {torch.__version__}, lightning {L.__version__}, python {sys.version.split()[0]}; "
          f"torch threads {torch.get_num_threads()} (interop {torch.get_num_interop_threads()})")
    results = {n: measure(n, s, a) for n, s in sizes.items()}
    print("\nsummary (median of the per-round ratios; target <= %.2f)" % TARGET_RATIO)
    for n, r in results.items():
        print(f"  {n:<9} plain {r['plain_ms']:8.1f} ms  fit() {r['fit_ms']:8.1f} ms  ratio {r['ratio']:.3f} "
              f"(range {r['lo']:.3f}..{r['hi']:.3f})  {'MET' if r['ratio'] <= TARGET_RATIO else 'NOT MET'}")
    return results

def measure(name:str, s:dict, a)->dict:
    "Interleave fit() and the plain loop at size `s`; print the report and return its figures."
    load0 = os.getloadavg()[0]
    print(f"\n=== size: {name} ===")
    lightning_steps = s["warmup"] + s["rounds"] * s["steps"] + 1   # +1: the batch whose start closes the last round
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        for m in ("does not have many workers", "LeafSpec", "smaller than the logging interval", "val_dataloader",
                  "limit_val_batches"):   # expected here: no validation, 2 batches an epoch
            warnings.filterwarnings("ignore", message=f".*{m}.*")
        make_images(s, a.images, Path(tmp) / "data")
        cfg = make_config(s, lightning_steps, str(Path(tmp) / "data"), str(Path(tmp) / "run"), a.overrides)
        hw = s["lr_size"] * s["scale"]
        print(f"config: generator " + " ".join(f"{k}={v}" for k, v in s["generator"].items()) + f" x{s['scale']}; discriminator patchgan base_channels={s['d_base']} "
              f"n_blocks={s['d_blocks']}; batch {s['batch']}, LR {s['lr_size']}x{s['lr_size']} -> HR {hw}x{hw}; "
              f"losses l1 + bce (beta {cfg.Training.Losses.adv_loss_beta}), D every {cfg.Training.d_update_interval} G step, "
              f"EMA decay {cfg.Training.EMA.decay}, normalisation zero_one on [0, 1]; {a.images} .npy images")
        print(f"timing: {s['warmup']} warm-up steps per side, then {s['rounds']} interleaved rounds x {s['steps']} steps "
              f"(plain, fit(), plain, ...)")
        timer = Interleave(None, s["warmup"], s["steps"], s["rounds"])
        run = prepare(cfg, callbacks=[timer])                      # everything fit() builds
        module, trainer = run.module, run.trainer
        print("fit() builds: callbacks " + ", ".join(type(c).__name__ for c in trainer.callbacks)
              + f"; logger {type(trainer.logger).__name__} every {trainer.log_every_n_steps} steps; plugins "
              + ", ".join(type(x).__name__ for x in [trainer.strategy.checkpoint_io]) + "; progress bar "
              + ("on" if trainer.progress_bar_callback is not None else "off")
              + f"; gradient norms every {cfg.Logging.grad_norm_every_n_steps} steps")
        G, D = build_generator(cfg), build_discriminator(cfg)    # same architecture and same starting weights
        G.load_state_dict(module.generator.state_dict()); D.load_state_dict(module.discriminator.state_dict())
        n_g, n_d = (sum(q.numel() for q in m.parameters()) for m in (G, D))
        print(f"parameters: generator {n_g:,}, discriminator {n_d:,}")
        plain = timer.plain = PlainLoop(cfg, G, D)
        print(f"plain warm-up: {plain.run(s['warmup'])[0]:.2f} s")
        t = time.perf_counter()
        run.start()
        fit_s = time.perf_counter() - t
        plain.run(1)   # untimed: now both sides have trained the same steps on the same batches
        # the logger's write at its interval: cost of one write, amortised
        logger = trainer.logger
        row = {k: float(v) for k, v in trainer.callback_metrics.items()}
        t = time.perf_counter(); reps = 5
        for i in range(reps): logger.log_metrics(row, step=10_000 + 50 * i)   # 50 apart: each one also writes metrics.csv
        log_write = (time.perf_counter() - t) / reps
    assert module.g_step == lightning_steps == plain.g_step, (module.g_step, plain.g_step)
    assert module.d_step == module.g_step == plain.d_step     # the adversarial phase really ran
    assert len(timer.lightning_each) == len(timer.plain_each) == s["rounds"] * s["steps"]
    same = {"generator": (module.generator, plain.G), "discriminator": (module.discriminator, plain.D),
            "EMA generator": (module.ema.module, plain.ema.module)}
    for net, (x, y) in same.items():
        a_, b_ = x.state_dict(), y.state_dict()
        bad = [k for k in a_ if not torch.equal(a_[k], b_[k])]
        assert not bad, f"fit() and the plain loop computed different {net} weights: {bad[:5]}"
    print(f"same computation: after {plain.g_step} steps the generator, discriminator and EMA weights of fit() and "
          f"the plain loop are bit-identical")
    print(f"Trainer.fit: {fit_s:.1f} s in all ({lightning_steps} steps + {s['rounds']} plain rounds)")

    med = statistics.median
    print("\n       wall s/batch                      process CPU s/batch (all threads)")
    print("round  plain     fit()      ratio      plain     fit()      ratio      EMA share (plain)")
    for i, (pt, lt, pc, lc, e) in enumerate(zip(timer.plain_times, timer.lightning, timer.plain_cpu,
                                                  timer.lightning_cpu, timer.ema_share)):
        print(f"{i + 1:>5}  {pt:8.4f}  {lt:9.4f}  {lt / pt:5.3f}      {pc:8.4f}  {lc:9.4f}  {lc / pc:5.3f}      {100 * e:5.2f} %")
    mp, ml = med(timer.plain_times), med(timer.lightning)
    ema = med(timer.ema_share)
    rr = [l / p_ for l, p_ in zip(timer.lightning, timer.plain_times)]
    ratio = med(rr)   # each round's pair ran back to back, so load that drifts cancels in the ratio
    print(f"\nmedian per batch: plain {mp * 1000:.1f} ms, fit() {ml * 1000:.1f} ms (difference {1000 * (ml - mp):+.1f} ms)")
    print(f"ratio fit()/plain: {ratio:.3f} (median of the per-round ratios; range {min(rr):.3f}..{max(rr):.3f}); "
          f"ratio of the medians above: {ml / mp:.3f}")
    note = "  [--quick: a smoke run; its nets are too small for the figure to mean much]" if a.quick else ""
    print(f"target <= {TARGET_RATIO:.2f}x: {'MET' if ratio <= TARGET_RATIO else 'NOT MET'}{note}")
    print(f"cross-checks: CPU-time ratio (medians) "
          f"{med(timer.lightning_cpu) / med(timer.plain_cpu):.3f}; single-step wall ratio (median step) "
          f"{med(timer.lightning_each) / med(timer.plain_each):.3f} "
          f"({len(timer.plain_each)} steps a side; medians of single steps leave out costs that come every k steps)")
    every = trainer.log_every_n_steps
    n_logs = sum((n + 1) % every == 0 for n in range(s["warmup"], s["warmup"] + s["rounds"] * s["steps"]))
    print(f"DataFrameLogger write (log_metrics + metrics.csv): {log_write * 1000:.2f} ms per write = "
          f"{log_write * 1000 / every:.3f} ms per step at log_every_n_steps={every} "
          f"({100 * log_write / every / mp:.3f} % of a plain step; logger writes inside the timed windows: {n_logs})")
    print(f"EMA update share of the plain step time (median over rounds): {100 * ema:.2f} %  "
          f"(target < {100 * TARGET_EMA:.0f} %: {'MET' if ema < TARGET_EMA else 'NOT MET'})"
          + ("  [small nets: the EMA target is for the benchmark size]" if name != "benchmark" else ""))
    print(f"load average (1 min) at start {load0:.2f}, at end {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs "
          f"(other processes inflate single rounds; see the range above)")
    return dict(ratio=ratio, lo=min(rr), hi=max(rr), ema=ema, plain_ms=1000 * mp, fit_ms=1000 * ml)

if __name__ == "__main__":
    main()
