"""Prompt adherence within a CPU budget: the prompt quickstart on captioned shapes, read back by the checker (issue 12).

What it trains is exactly what `gan-engine train --preset prompt` runs: `quickstart_config(preset="prompt")`
(captioned shapes drawn on the fly, 32-px images from noise and the prompt, a U-Net with FiLM from a hashed-token
embedding bag, a projection discriminator with its own embedding), through `gan_engine.trainer.fit`, stopped when
the process has used its CPU budget (`--cpu-minutes`; the issue's goal is 15 CPU-minutes on 2 cores). The cosine
schedule and the adversarial phase are stretched over the steps the budget allows (measured over the first steps).

Evaluation: the EMA generator (`GANModule.generate`, what `gan-engine predict --prompt` and the inspector run)
makes `--per-spec` images for every attribute combination, from fixed noise seeds, with every phrasing of the
prompt in turn; the shapes checker (`gan_engine.shapes.check_batch`) reads each image back to colour, shape,
position and size. Accuracy is reported per attribute on the **held-out** colour-shape pairs (never drawn for
training) and on the **seen** ones. Both sides compute the same thing: the same checker reads real renderings of
the very same prompts (its ceiling), and the untrained generator gives the floor.

    .venv/bin/python benchmarks/prompt_adherence.py                     # the issue's budget: 15 CPU-minutes
    .venv/bin/python benchmarks/prompt_adherence.py --cpu-minutes 1     # a short run (a smoke test of the script)
"""
from __future__ import annotations
import argparse, logging, os, sys, tempfile, time, warnings
from pathlib import Path

import numpy as np
import torch
import lightning as L

from gan_engine.cli import quickstart_config
from gan_engine.module import GANModule
from gan_engine.shapes import ATTRIBUTES, ShapeSpec, all_specs, check_batch, render
from gan_engine.trainer import fit

ROOT = Path(__file__).resolve().parents[1]


class CPUBudget(L.Callback):
    "Stop training when this process has used `seconds` of CPU time since training started."
    def __init__(self, seconds: float): self.seconds, self.start = seconds, None
    def on_train_start(self, trainer, pl_module): self.start = time.process_time()
    def on_train_batch_end(self, trainer, *a):
        if time.process_time() - self.start > self.seconds: trainer.should_stop = True


def evaluate(module: GANModule, specs: list[ShapeSpec], per_spec: int, size: int) -> dict[str, float]:
    "Per-attribute accuracy (and all four at once) of the EMA generator's images for `specs`, read back by the checker."
    right, n = {a: 0 for a in (*ATTRIBUTES, "all")}, 0
    for k in range(per_spec):
        prompts = [s.prompts()[k % len(s.prompts())] for s in specs]
        images = torch.cat([module.generate(prompts[i:i + 128], size=size, seed=1000 + k) for i in range(0, len(prompts), 128)])
        for r, s in zip(check_batch(images.clamp(0, 1)), specs):
            ok = [r[a] == getattr(s, a) for a in ATTRIBUTES]
            for a, o in zip(ATTRIBUTES, ok): right[a] += o
            right["all"] += all(ok); n += 1
    return {a: v / n for a, v in right.items()}


def ceiling(specs: list[ShapeSpec], per_spec: int, size: int) -> dict[str, float]:
    "The checker on real renderings of the same prompts."
    rng = np.random.default_rng(0)
    imgs = torch.from_numpy(np.stack([render(s, size, rng) for s in specs for _ in range(per_spec)]))
    want = [s for s in specs for _ in range(per_spec)]
    reads = check_batch(imgs)
    out = {a: float(np.mean([r[a] == getattr(s, a) for r, s in zip(reads, want)])) for a in ATTRIBUTES}
    out["all"] = float(np.mean([all(r[a] == getattr(s, a) for a in ATTRIBUTES) for r, s in zip(reads, want)]))
    return out


def table(rows: dict[str, dict[str, dict[str, float]]]):
    print(f"{'':26s}" + "".join(f"{a:>10s}" for a in (*ATTRIBUTES, "all")))
    for name, groups in rows.items():
        for g, acc in groups.items():
            print(f"{name + ' · ' + g:26s}" + "".join(f"{acc[a]:10.1%}" for a in (*ATTRIBUTES, "all")))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-minutes", type=float, default=15.0, help="CPU-time training budget (all threads together)")
    ap.add_argument("--per-spec", type=int, default=4, help="images per attribute combination in the evaluation")
    ap.add_argument("overrides", nargs="*", help="dotted KEY=VALUE overrides of the preset")
    args = ap.parse_args(argv)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    budget = args.cpu_minutes * 60
    out_dir = Path(tempfile.mkdtemp(prefix="gan_engine-prompt-bench-"))
    base = quickstart_config(args.overrides, samples=ROOT / "data_samples", preset="prompt")
    size, held = base.Data.lr_patch_size, {tuple(p) for p in base.Data.shapes.held_out}
    groups = {"held-out": [s for s in all_specs() if (s.colour, s.shape) in held],
              "seen": [s for s in all_specs() if (s.colour, s.shape) not in held]}
    print(f"gan_engine prompt-adherence benchmark: {len(groups['held-out'])} held-out and {len(groups['seen'])} seen "
          f"attribute combinations x {args.per_spec} images, {size}-px; torch threads {torch.get_num_threads()}, "
          f"CPUs {os.cpu_count()}")

    cpu_per_step = _cpu_seconds_per_step(base, out_dir)
    steps = max(8, int(0.9 * budget / cpu_per_step))
    pre = int(base.Training.g_pretrain_steps / base.Training.max_steps * steps)   # the preset's shares of the run
    print(f"{cpu_per_step:.3f} CPU-s per generator step: {steps} steps planned ({pre} before the discriminator joins)")
    cfg = base.override(f"Logging.output_dir={out_dir / 'run'}", f"Training.max_steps={steps}",
                        f"Training.g_pretrain_steps={pre}", f"Training.val_every_n_steps={max(100, steps // 5)}",
                        f"Schedulers.g_warmup_steps={min(base.Schedulers.g_warmup_steps, steps // 4)}",
                        "Trainer.enable_progress_bar=false", "Trainer.enable_model_summary=false")
    L.seed_everything(cfg.Training.seed, verbose=False)
    untrained = GANModule(cfg, value_range=(0.0, 1.0))
    wall0, cpu0 = time.perf_counter(), time.process_time()
    run = fit(cfg, callbacks=[CPUBudget(budget)])
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    print(f"trained {run.module.g_step} generator steps ({run.module.d_step} discriminator steps) in {wall / 60:.1f} min "
          f"wall, {cpu / 60:.1f} CPU-min (budget {args.cpu_minutes:g} CPU-min)")

    rows = {"GAN (EMA)": {g: evaluate(run.module, s, args.per_spec, size) for g, s in groups.items()},
            "untrained": {g: evaluate(untrained, s, 1, size) for g, s in groups.items()},
            "real renders": {g: ceiling(s, args.per_spec, size) for g, s in groups.items()}}
    table(rows)
    worst = min(rows["GAN (EMA)"]["held-out"][a] for a in ATTRIBUTES)
    print(f"goal (>= 90 % on each attribute for held-out pairs within {args.cpu_minutes:g} CPU-minutes):",
          "met" if worst >= 0.9 else f"NOT met (lowest attribute {worst:.1%})")
    print(f"run directory: {run.run_dir}")


def _cpu_seconds_per_step(cfg, out_dir: Path) -> float:
    "CPU seconds per adversarial generator step of `cfg`: 30 steps without validation, the first 10 discarded."
    from lightning.pytorch.callbacks import Callback

    class Clock(Callback):
        def __init__(self): self.t = {}
        def on_train_batch_start(self, trainer, *a): self.t[trainer.global_step] = time.process_time()

    clock = Clock()
    fit(cfg.override(f"Logging.output_dir={out_dir / 'clock'}", "Training.max_steps=30", "Training.g_pretrain_steps=0",
                     "Training.val_every_n_steps=0", "Trainer.limit_val_batches=0", "Trainer.enable_progress_bar=false", "Trainer.enable_model_summary=false"),
        callbacks=[clock])
    return (clock.t[29] - clock.t[10]) / 19


if __name__ == "__main__":
    sys.exit(main())
