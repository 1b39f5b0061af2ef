"""Inpainting quality within a CPU budget: the inpainting quickstart against mean fill and biharmonic inpainting (issue 11).

What it trains is exactly what `gan-engine train --preset inpaint` runs: `quickstart_config(preset="inpaint")`
(the `data_samples/sr` photographs, 64-px crops with generated holes of 5-25 %, a 3-level U-Net that starts
from the smooth fill, a PatchGAN that also sees the mask), through `gan_engine.trainer.fit`, stopped by
Lightning's `Trainer(max_time=...)` when the wall-clock budget is spent. The cosine schedule is stretched
over the steps the budget allows (measured over the first steps), so the learning rate decays fully.

Evaluation uses held-back crops: every 64-px crop at a stride of 32 px of the validation images (never
trained on), each with three masks from the run's own mask recipe and fixed seeds. All three methods
inpaint the very same crops and holes, and the script checks that every method keeps the known pixels
exactly, so the numbers compare the same task:

- **GAN**: the EMA generator through `Predictor.from_module` (what `gan-engine predict` runs);
- **mean fill**: the kept pixels' per-band mean in the hole;
- **biharmonic**: `skimage.restoration.inpaint_biharmonic` (scikit-image);
- for reference, **smooth fill**: the push-pull fill the generator sees in the hole (with the preset's global
  residual the generator starts as exactly this fill, so GAN - smooth fill is what training added).

It prints PSNR and SSIM in the hole (per crop, averaged), their differences and the wall and CPU time
used. Run from the repository root:

    .venv/bin/python benchmarks/inpaint_quality.py              # the issue's budget: 10 minutes on this machine
    .venv/bin/python benchmarks/inpaint_quality.py --minutes 1  # a short run (a smoke test of the script)
"""
from __future__ import annotations
import argparse, logging, os, sys, tempfile, time, warnings
from pathlib import Path

import torch

from gan_engine.cli import quickstart_config
from gan_engine.data import GANDataModule
from gan_engine.images import read_image
from gan_engine.inference import Predictor
from gan_engine.masks import MaskGenerator
from gan_engine.tasks import biharmonic_fill, fill_holes, region_values
from gan_engine.trainer import fit

ROOT = Path(__file__).resolve().parents[1]


def held_back(cfg, crop: int = 64, stride: int = 32, masks_per_crop: int = 3):
    "Every `crop`-px crop (stride `stride`) of the validation images, each with `masks_per_crop` seeded masks."
    dm = GANDataModule(cfg); dm.setup()
    gen = MaskGenerator.from_config(cfg)
    images, masks = [], []
    for i, f in enumerate(dm.val_dataset.files):
        x = torch.from_numpy(read_image(f)[0])
        H, W = x.shape[-2:]
        for top in range(0, H - crop + 1, stride):
            for left in range(0, W - crop + 1, stride):
                for k in range(masks_per_crop):
                    images.append(x[:, top:top + crop, left:left + crop])
                    masks.append(gen(crop, crop, rng=[7, i, top, left, k])[0])
    return torch.stack(images), torch.stack(masks), tuple(dm.value_range)


def score(name, out, images, masks, vr):
    keep = masks.expand_as(images) == 0
    assert torch.equal(out[keep], images[keep]), f"{name} changed known pixels"
    psnr = region_values(out, images, masks, vr, "psnr", "hole")
    ssim = region_values(out, images, masks, vr, "ssim", "hole")
    return float(psnr.mean()), float(ssim.mean())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="wall-clock training budget")
    ap.add_argument("overrides", nargs="*", help="dotted KEY=VALUE overrides of the preset")
    args = ap.parse_args(argv)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    budget = args.minutes * 60
    out_dir = Path(tempfile.mkdtemp(prefix="gan_engine-inpaint-bench-"))
    base = quickstart_config(args.overrides, samples=ROOT / "data_samples", preset="inpaint")
    images, masks, vr = held_back(base)
    print(f"gan_engine inpainting benchmark: {len(images)} held-back 64-px crops (validation images) with "
          f"holes of {float(masks.mean((1, 2, 3)).min()):.0%}-{float(masks.mean((1, 2, 3)).max()):.0%}; "
          f"torch threads {torch.get_num_threads()}, CPUs {os.cpu_count()}")

    # the steps the budget allows, measured on a short run of the same config (so the cosine schedule ends at the budget;
    # 15 % is left for validations and checkpoints)
    per_step = _seconds_per_step(base, out_dir)
    steps = max(8, int(0.85 * budget / per_step))
    print(f"{per_step:.3f} s per generator step: {steps} steps planned")
    cfg = base.override(f"Logging.output_dir={out_dir / 'run'}", f"Training.max_steps={steps}",
                        f"Training.g_pretrain_steps={int(0.8 * steps)}", f"Training.val_every_n_steps={max(50, steps // 6)}",
                        f"Schedulers.g_warmup_steps={min(base.Schedulers.g_warmup_steps, steps // 4)}",
                        f"Trainer.max_time={{seconds: {int(budget)}}}", "Trainer.enable_progress_bar=false")
    wall0, cpu0 = time.perf_counter(), time.process_time()
    run = fit(cfg)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    print(f"trained {run.module.g_step} generator steps ({run.module.d_step} discriminator steps) in {wall / 60:.1f} min "
          f"wall, {cpu / 60:.1f} CPU-min; planned {steps} steps for a {args.minutes:g}-min budget")

    predictor = Predictor.from_module(run.module, device="cpu")      # EMA weights, what `gan-engine predict` uses
    with torch.no_grad(): gan = torch.cat([predictor.predict(images[i:i + 32], mask=masks[i:i + 32]) for i in range(0, len(images), 32)])
    rows = {"GAN (EMA)": gan, "mean fill": fill_holes(images, masks, "mean"), "biharmonic": biharmonic_fill(images, masks),
            "smooth fill": fill_holes(images, masks, "smooth")}   # the generator's input (and its start, with a global residual)
    res = {k: score(k, v, images, masks, vr) for k, v in rows.items()}
    print(f"{'':12s} {'PSNR hole (dB)':>15s} {'SSIM hole':>10s}")
    for k, (p, s) in res.items(): print(f"{k:12s} {p:15.2f} {s:10.4f}")
    dp, ds = res["GAN (EMA)"][0] - res["biharmonic"][0], res["GAN (EMA)"][1] - res["biharmonic"][1]
    print(f"GAN - biharmonic: {dp:+.2f} dB PSNR, {ds:+.4f} SSIM in the hole; GAN - mean fill: "
          f"{res['GAN (EMA)'][0] - res['mean fill'][0]:+.2f} dB")
    print("goal (beat biharmonic hole PSNR within the budget):", "met" if dp > 0 else "NOT met")


def _seconds_per_step(cfg, out_dir: Path) -> float:
    "Seconds per generator step of `cfg` on this machine: 40 steps without validation, the first 10 discarded."
    from lightning.pytorch.callbacks import Callback

    class Clock(Callback):
        def __init__(self): self.t = {}
        def on_train_batch_start(self, trainer, *a): self.t[trainer.global_step] = time.perf_counter()

    clock = Clock()
    fit(cfg.override(f"Logging.output_dir={out_dir / 'clock'}", "Training.max_steps=40", "Training.val_every_n_steps=0",
                     "Trainer.limit_val_batches=0", "Trainer.enable_progress_bar=false"), callbacks=[clock])
    return (clock.t[39] - clock.t[10]) / 29


if __name__ == "__main__":
    sys.exit(main())
