"""The SR quickstart's gain over bicubic on photographs it never saw, and what its training costs (issue 16).

What users run: `gan-engine train` without a config (the SR quickstart, x2, `quickstart_config()`), started here as
that command in a child process with `KEY=VALUE` overrides and `Logging.output_dir` in a temporary folder; its wall
time and CPU time (user + system of the process and the loader worker it waits for) are measured from outside.
`--ckpt` evaluates an existing run instead of training one.

**Held-out set.** Photographs the installed packages ship as files (nothing is downloaded), none of them a source of
`data_samples/` (whose crops come from scikit-image's astronaut, chelsea, coffee, immunohistochemistry and rocket):
scikit-image's motorcycle (the left stereo view) and Hubble deep field, matplotlib's Grace Hopper, and scikit-image's
camera and coins (greyscale, repeated into three equal bands: the quickstart is RGB). Each is centre-cropped to at
most `--size` pixels a side, a multiple of the scale, and written as a PNG. scikit-image's retina is left out: its
centre is a smooth, oversampled fundus area where bicubic already reaches 51.5 dB and every model is within 0.1 dB of
it, so it measures nothing.

**Evaluation**, as validation measures it (`GANModule.validation_step`): the PNGs are read and degraded by the
data module's own `ImageDataset` (whole images, no crop, no augmentation, the run's `Data.degradation`: antialiased
bicubic downscaling, clamped to the value range); the model is the run's EMA generator through `load_predictor`
(what `gan-engine predict` uses; whole images, or blended tiles with `--tile`), output clamped to the value range;
bicubic is the task's own baseline (`SRTask.baselines`, clamped); PSNR is the task's metric (`torchmetrics` PSNR
per image over all bands, data range 0..255, no border crop).

**Checkpoints.** The goal is judged on the run's final EMA generator, `last.ckpt`: what the run ends with and what
the README's `predict --ckpt runs/.../last.ckpt` commands load. The run's best checkpoint by `val/psnr` (the checkpoint
callback's choice; the same weights when that is the final step) is evaluated too and printed below it. The quickstart's
validation crops are held-back regions of the training photographs, and their PSNR moves by hundredths of a dB after
the first few hundred steps while the gain on other photographs keeps growing, so that choice is close to a coin toss.

Run from the repository root:

    .venv/bin/python benchmarks/quickstart_quality.py                           # train the quickstart, then evaluate
    .venv/bin/python benchmarks/quickstart_quality.py Training.max_steps=900    # with overrides of the quickstart
    .venv/bin/python benchmarks/quickstart_quality.py --ckpt runs/quickstart/checkpoints/last.ckpt
    .venv/bin/python benchmarks/quickstart_quality.py --quick                   # a few steps, small crops: a smoke run
"""
from __future__ import annotations
import argparse, logging, os, re, resource, shlex, subprocess, sys, tempfile, time, warnings
from pathlib import Path

import numpy as np
import torch

MAX_SIDE = 512   # held-out crops: at most this many HR pixels a side
GOAL_DB, GOAL_MIN = 1.5, 5.0
QUICK = ["Training.max_steps=6", "Training.g_pretrain_steps=4", "Training.adv_loss_ramp_steps=2",
         "Training.val_every_n_steps=3", "Schedulers.g_warmup_steps=2", "Data.repeat=1", "Logging.images_every_n_steps=0"]

def held_out_images()->dict[str, np.ndarray]:
    "name -> (H,W,3) uint8 photographs shipped by scikit-image and matplotlib (local files; nothing downloaded)."
    import skimage.data as sd
    from matplotlib import cbook
    from PIL import Image
    grey = lambda x: np.repeat(x[..., None], 3, axis=2)
    with cbook.get_sample_data("grace_hopper.jpg") as f: hopper = np.asarray(Image.open(f).convert("RGB"))
    return {"motorcycle": sd.stereo_motorcycle()[0], "hubble_deep_field": sd.hubble_deep_field(),
            "grace_hopper": hopper, "camera (grey)": grey(sd.camera()), "coins (grey)": grey(sd.coins())}

def centre_crop(x:np.ndarray, size:int, multiple:int)->np.ndarray:
    h, w = (min(n, size) // multiple * multiple for n in x.shape[:2])
    top, left = (x.shape[0] - h) // 2, (x.shape[1] - w) // 2
    return np.ascontiguousarray(x[top:top + h, left:left + w])

def train(overrides:list[str], out:Path)->tuple[Path, float, float, float]:
    "Run `gan-engine train OVERRIDES Logging.output_dir=OUT` in a child process: (run dir, wall s, CPU s, load average)."
    exe = Path(sys.executable).with_name("gan-engine")
    cmd = ([str(exe)] if exe.exists() else [sys.executable, "-c", "import sys; from gan_engine.cli import main; sys.exit(main())"])
    cmd += ["train", *overrides, f"Logging.output_dir={out}"]
    print("$ " + " ".join(shlex.quote(x) for x in cmd), flush=True)
    r0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    if p.returncode != 0:
        sys.stderr.write(p.stdout[-4000:]); raise SystemExit(f"training failed (exit status {p.returncode})")
    for line in p.stdout.splitlines():
        if line.startswith(("Validation PSNR", "Generator steps")): print(line)
    return out, wall, cpu, os.getloadavg()[0]

def best_checkpoint(run_dir:Path)->Path|None:
    "The best checkpoint by the val/psnr in its name (the checkpoint callback's choice), or None when none is named so."
    ckpts = sorted((run_dir / "checkpoints").glob("*.ckpt"))
    scored = [(float(m.group(1)), c) for c in ckpts if (m := re.search(r"val_psnr=([0-9.]+)\.ckpt$", c.name))]
    return max(scored)[1] if scored else None

def evaluate(ckpt:Path, images:dict[str, np.ndarray], folder:Path, size:int, tile:int|None)->list[tuple]:
    "(name, HR shape, bicubic PSNR, model PSNR) for each held-out image, measured as validation measures."
    from PIL import Image
    from gan_engine.data import ImageDataset
    from gan_engine.inference import load_predictor
    pred = load_predictor(ckpt)
    cfg, task, (lo, hi) = pred.config, pred.task, pred.value_range
    deg, s = cfg.Data.degradation, pred.scale
    folder.mkdir(parents=True, exist_ok=True)
    names = {}
    for i, (name, x) in enumerate(images.items()):
        f = folder / f"{i:02d}_{re.sub(r'[^a-z0-9]+', '_', name.lower()).strip('_')}.png"
        Image.fromarray(centre_crop(x, size, s)).save(f); names[f.name] = name
    ds = ImageDataset(folder, scale=s, lr_patch_size=None, train=False, in_bands=cfg.Model.in_bands,
                      value_range=cfg.Data.value_range, blur_sigma=deg.blur_sigma, noise_std=deg.noise_std,
                      antialias=deg.antialias, seed=cfg.Training.seed)
    rows = []
    for i in range(len(ds)):
        item = ds[i]
        lr, hr = item["lr"][None], item["hr"][None].float()
        sr = pred.predict(lr, tile=tile)
        bic = task.baselines({"lr": lr})["bicubic"].float().clamp(lo, hi)
        psnr = lambda y: float(task.metrics((lo, hi))["psnr"](y, hr))
        rows.append((names[Path(item["meta"]["source"]).name], tuple(hr.shape[-2:]), psnr(bic), psnr(sr)))
    return rows

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides of the quickstart (gan-engine train KEY=VALUE)")
    p.add_argument("--ckpt", help="evaluate this checkpoint instead of training (its EMA weights)")
    p.add_argument("--size", type=int, default=MAX_SIDE, help=f"crop side of the held-out images, HR pixels (default {MAX_SIDE})")
    p.add_argument("--tile", type=int, help="predict in blended tiles of this many LR pixels (default: whole images)")
    p.add_argument("--keep", help="train into this folder and keep it (default: a temporary folder)")
    p.add_argument("--quick", action="store_true", help="6 steps and 96-px crops: a smoke run (well under a minute)")
    a = p.parse_args(argv)
    if a.quick: a.size = min(a.size, 96)
    if a.ckpt and a.overrides: p.error("overrides configure training; with --ckpt the checkpoint's own config is used")
    import lightning as L
    print("$ " + " ".join(shlex.quote(x) for x in ["python", *sys.argv]))
    print(f"torch {torch.__version__}, lightning {L.__version__}; {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    images = held_out_images()
    with tempfile.TemporaryDirectory() as tmp:
        wall = cpu = load = None
        if a.ckpt: ckpts = {"given": Path(a.ckpt)}
        else:
            out = Path(a.keep) if a.keep else Path(tmp) / "run"
            run_dir, wall, cpu, load = train([*(QUICK if a.quick else []), *a.overrides], out)
            ckpts = {"last": run_dir / "checkpoints" / "last.ckpt"}
            if (best := best_checkpoint(run_dir)) is not None: ckpts["best by val/psnr"] = best
        results = {}
        for i, (kind, ckpt) in enumerate(ckpts.items()):
            print(f"\ncheckpoint ({kind}): {ckpt} (EMA generator)")
            results[kind] = evaluate(ckpt, images, Path(tmp) / f"held_out_{i}", a.size, a.tile)
            print_table(results[kind])
    kind = next(iter(results))
    gains = [m - b for _, _, b, m in results[kind]]
    mean_gain = float(np.mean(gains))
    print(f"\nmean gain over bicubic on {len(gains)} held-out photographs ({kind} checkpoint): {mean_gain:+.2f} dB "
          f"(min {min(gains):+.2f}, max {max(gains):+.2f})")
    for other, rows in list(results.items())[1:]:
        print(f"mean gain of the {other} checkpoint ({ckpts[other].name}): {np.mean([m - b for _, _, b, m in rows]):+.2f} dB")
    if wall is not None:
        print(f"training (gan-engine train, whole command): {wall:.1f} s wall, {cpu:.1f} s CPU (user+sys), "
              f"{cpu / wall:.2f} cores busy on average; load average {load:.1f} at its end ({os.cpu_count()} CPUs)")
        met = mean_gain >= GOAL_DB and wall <= 60 * GOAL_MIN
        print(f"goal (>= +{GOAL_DB} dB mean gain over bicubic on held-out photographs, training within {GOAL_MIN:g} minutes "
              f"on 2 cores; the last checkpoint): {'met' if met else 'not met'} ({mean_gain:+.2f} dB, {wall / 60:.2f} min wall, "
              f"{cpu / 60:.2f} CPU-min)" + (" (quick run: not a measurement)" if a.quick else ""))
    return results, wall, cpu

def print_table(rows:list[tuple]):
    "One line per image (HR size, bicubic, model, gain) and their mean."
    w = max(len(r[0]) for r in rows)
    print(f"{'image':<{w}}  {'HR size':>9}  {'bicubic':>9}  {'model':>9}  {'gain':>8}")
    for name, hw, b, m in rows:
        print(f"{name:<{w}}  {hw[0]:>4}x{hw[1]:<4}  {b:>6.2f} dB  {m:>6.2f} dB  {m - b:>+5.2f} dB")
    print(f"{'mean':<{w}}  {'':>9}  {np.mean([r[2] for r in rows]):>6.2f} dB  {np.mean([r[3] for r in rows]):>6.2f} dB  "
          f"{np.mean([m - b for _, _, b, m in rows]):>+5.2f} dB")

if __name__ == "__main__":
    main()
