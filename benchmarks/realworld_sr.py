"""Real-world x4 super-resolution: bicubic, an L1-only model and a GAN trained on on-the-fly degradations (issue 17).

**Training.** Both models are what `gan-engine train` builds from the SR quickstart at x4 (`Data.scale=4`, 16-px LR
crops of `data_samples/sr`), each training LR made on the fly by `Data.degradation.online` (Real-ESRGAN's
second-order recipe), each started as that command in a child process and given the same wall-clock budget
(`Trainer.max_time`, `--minutes` each; the learning rate is constant after a short warm-up, since the number of steps a
budget holds is not known in advance):
- *L1*: the generator alone (`adv_loss_beta=0`), L1 loss. Its best checkpoint by `val/psnr` is evaluated.
- *GAN*: the same generator pretrained with L1 for 60 % of the steps the L1 run reached in its budget, then
  adversarial (PatchGAN, relativistic average, beta 5e-3 after a ramp) with the LDL artefact term (which uses the EMA
  generator); with `--vgg19 FILE` also the VGG-19 perceptual loss. Its `last.ckpt` is evaluated: validation PSNR is
  not what a GAN is trained for, so picking its checkpoint by PSNR would pick the least GAN-like one.

**Held-out set.** The photographs of `quickstart_quality.py` (scikit-image's motorcycle, Hubble deep field, camera
and coins; matplotlib's Grace Hopper; none a source of `data_samples/`), centre-cropped to `--size` pixels, each
degraded once by the same second-order recipe with fixed seeds (10000 + image index, `gan_engine.degrade`), so the
held-out LR images are the same in every run.

**Metrics** (raw 0..255 units, whole images, no border crop): PSNR and SSIM from torchmetrics; LPIPS (VGG) and DISTS
from `gan_engine.perceptual` when their weight files are on this machine (the torchvision VGG-16 file in the torch hub
cache or `--vgg16`, the heads from installed `lpips` / `DISTS_pytorch` packages or `--lpips-head` / `--dists-head`).
Without ImageNet VGG-16 weights those two columns are left out, and the script says so: nothing is downloaded.

Run from the repository root:

    .venv/bin/python benchmarks/realworld_sr.py                  # 4 minutes per model
    .venv/bin/python benchmarks/realworld_sr.py --minutes 8 --vgg16 ~/weights/vgg16-397923af.pth
    .venv/bin/python benchmarks/realworld_sr.py --quick          # seconds: a smoke run, not a measurement
"""
from __future__ import annotations
import argparse, logging, os, re, shlex, sys, tempfile, warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quickstart_quality import centre_crop, held_out_images, train   # noqa: E402

COMMON = ["Data.scale=4", "Data.lr_patch_size=16", "Data.degradation.online.enabled=true", "Data.degradation.online.validate=true",
          "Schedulers.decay=none",
          "Training.max_steps=1000000", "Training.val_every_n_steps=200", "Logging.images_every_n_steps=0",
          "Logging.progress=lines", "Training.Losses.l1_weight=1.0", "Training.Losses.mse_weight=0.0",
          "Optimizers.optim_g_lr=5e-4"]
L1_ONLY = ["Training.Losses.adv_loss_beta=0", "Training.g_pretrain_steps=0"]
GAN = ["Training.Losses.adv_loss_beta=5e-3", "Training.Losses.relativistic_average_d=true", "Training.Losses.ldl_weight=1.0",
       "Callbacks.checkpoint.save_top_k=1"]
QUICK = ["Training.val_every_n_steps=3", "Data.repeat=1", "Schedulers.g_warmup_steps=1"]


def steps_done(run_dir:Path)->int:
    "Generator steps a finished run reached (its last.ckpt)."
    ck = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return int(ck["global_step"])


def best_by_psnr(run_dir:Path)->Path:
    scored = [(float(m.group(1)), c) for c in (run_dir / "checkpoints").glob("*.ckpt")
              if (m := re.search(r"val_psnr=([0-9.]+)\.ckpt$", c.name))]
    return max(scored)[1] if scored else run_dir / "checkpoints" / "last.ckpt"


def held_out_pairs(size:int)->list[tuple[str, torch.Tensor, torch.Tensor]]:
    "(name, HR (1,3,H,W), LR (1,3,H/4,W/4)) in 0..255, the LR made once by the second-order recipe with fixed seeds."
    from gan_engine.degrade import degrade_online
    out = []
    for i, (name, x) in enumerate(held_out_images().items()):
        hr = torch.from_numpy(centre_crop(x, size, 4)).permute(2, 0, 1)[None].float()
        lr, _ = degrade_online(hr / 255, 4, seeds=[10_000 + i], jpeg=True, quantize=True)
        out.append((name, hr, lr * 255))
    return out


def perceptual_metrics(a)->tuple[dict, str]:
    "{name: per-image function} for LPIPS and DISTS when their weight files are here, and a note on what is left out."
    from gan_engine.perceptual import DISTSMetric, LPIPSMetric
    fns, missing = {}, []
    for name, cls, head in (("LPIPS", LPIPSMetric, a.lpips_head), ("DISTS", DISTSMetric, a.dists_head)):
        try: m = cls(value_range=(0, 255), vgg_weights=a.vgg16, head_weights=head)
        except FileNotFoundError as e:
            missing.append(f"{name}: {e}"); continue
        def one(sr, hr, m=m):
            m.reset(); m.update(sr, hr); return float(m.compute())
        fns[name] = one
    return fns, "\n".join(missing)


def evaluate(models:dict[str, Path], pairs, metrics:dict)->dict[str, dict[str, list[float]]]:
    "metric values per image for bicubic and each model's EMA generator (whole images)."
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
    from gan_engine.inference import load_predictor
    import torch.nn.functional as F
    preds = {name: load_predictor(ck) for name, ck in models.items()}
    rows = {name: {} for name in ["bicubic", *models]}
    for _, hr, lr in pairs:
        outs = {"bicubic": F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 255)}
        for name, p in preds.items(): outs[name] = p.predict(lr).float().clamp(0, 255)
        for name, sr in outs.items():
            vals = {"PSNR": float(peak_signal_noise_ratio(sr, hr, data_range=(0, 255))),
                    "SSIM": float(structural_similarity_index_measure(sr, hr, data_range=(0, 255))),
                    **{k: f(sr, hr) for k, f in metrics.items()}}
            for k, v in vals.items(): rows[name].setdefault(k, []).append(v)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=4.0, help="wall-clock training budget of each model (default 4)")
    p.add_argument("--size", type=int, default=384, help="held-out crop side, HR pixels (default 384)")
    p.add_argument("--vgg16", help="torchvision VGG-16 weights for LPIPS/DISTS (default: the torch hub cache file)")
    p.add_argument("--lpips-head", help="LPIPS v0.1 VGG head (default: the file in an installed `lpips` package)")
    p.add_argument("--dists-head", help="DISTS alpha/beta file (default: the file in an installed `DISTS_pytorch` package)")
    p.add_argument("--vgg19", help="VGG-19 weights: the GAN also trains with the perceptual loss (Training.Losses.perceptual_*)")
    p.add_argument("--gan", action="append", default=[], metavar="KEY=VALUE",
                   help="an override of the GAN run only, e.g. --gan Training.Losses.adv_loss_beta=1e-3 (repeatable)")
    p.add_argument("--keep", help="keep the two runs in this folder (default: a temporary folder)")
    p.add_argument("--quick", action="store_true", help="a few seconds per model and 64-px crops: a smoke run")
    a = p.parse_args(argv)
    if a.quick: a.minutes, a.size = 0.1, 64
    import lightning as L
    print("$ " + " ".join(shlex.quote(x) for x in ["python", *sys.argv]))
    print(f"torch {torch.__version__}, lightning {L.__version__}; {os.cpu_count()} CPUs")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    budget = f"Trainer.max_time={{seconds: {int(round(a.minutes * 60))}}}"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(a.keep) if a.keep else Path(tmp)
        quick = QUICK if a.quick else []
        l1_dir, wall_l1, cpu_l1, _ = train([*COMMON, *L1_ONLY, *quick, budget], root / "l1")
        n = steps_done(l1_dir)
        pre = max(1, int(0.6 * n))
        gan = [*GAN, f"Training.g_pretrain_steps={pre}", f"Training.adv_loss_ramp_steps={max(1, n // 10)}"]
        if a.vgg19: gan += ["Training.Losses.perceptual_weight=1.0", f"Training.Losses.perceptual_weights={a.vgg19}"]
        gan += a.gan
        gan_dir, wall_gan, cpu_gan, _ = train([*COMMON, *gan, *quick, budget], root / "gan")
        m = steps_done(gan_dir)
        print(f"L1 model: {n} generator steps in {wall_l1:.0f} s wall ({cpu_l1:.0f} s CPU); "
              f"GAN: {m} steps ({pre} L1 pretraining, then adversarial + LDL{' + VGG-19 perceptual' if a.vgg19 else ''}) "
              f"in {wall_gan:.0f} s wall ({cpu_gan:.0f} s CPU)")
        metrics, missing = perceptual_metrics(a)
        if missing:
            print("LPIPS/DISTS left out (their weight files are not on this machine; nothing is downloaded):\n" + missing)
        pairs = held_out_pairs(a.size)
        rows = evaluate({"L1": best_by_psnr(l1_dir), "GAN": gan_dir / "checkpoints" / "last.ckpt"}, pairs, metrics)
    names = list(next(iter(rows.values())))
    better = {"PSNR": "higher", "SSIM": "higher", "LPIPS": "lower", "DISTS": "lower"}
    print(f"\nx4 on {len(pairs)} held-out photographs ({a.size}-px crops) degraded by the second-order recipe, mean over images:")
    print(f"{'model':<8}" + "".join(f"{k + ' (' + better[k] + ')':>18}" for k in names))
    mean = {model: {k: float(np.mean(v)) for k, v in r.items()} for model, r in rows.items()}
    for model, r in mean.items(): print(f"{model:<8}" + "".join(f"{r[k]:>18.4f}" for k in names))
    print("per image (PSNR dB bicubic / L1 / GAN): " + "; ".join(
        f"{name} {rows['bicubic']['PSNR'][i]:.2f} / {rows['L1']['PSNR'][i]:.2f} / {rows['GAN']['PSNR'][i]:.2f}"
        for i, (name, _, _) in enumerate(pairs)))
    g, l, b = mean["GAN"], mean["L1"], mean["bicubic"]
    beats = lambda x, y, k: x[k] > y[k] if better[k] == "higher" else x[k] < y[k]
    print(f"GAN - L1 PSNR: {g['PSNR'] - l['PSNR']:+.2f} dB; GAN beats bicubic on {', '.join(k for k in names if beats(g, b, k)) or 'nothing'}; "
          f"L1 beats bicubic on {', '.join(k for k in names if beats(l, b, k)) or 'nothing'}")
    if metrics.keys() >= {"LPIPS", "DISTS"}:
        met = beats(g, l, "LPIPS") and beats(g, l, "DISTS") and g["PSNR"] >= l["PSNR"] - 1.0 and all(beats(g, b, k) for k in names)
        print(f"goal (GAN beats L1 on LPIPS and DISTS within 1 dB PSNR of it, and bicubic on every metric): {'met' if met else 'not met'}"
              + (" (quick run: not a measurement)" if a.quick else ""))
    else:
        print("goal (GAN beats L1 on LPIPS and DISTS within 1 dB PSNR of it, and bicubic on every metric): not measurable here "
              "without ImageNet VGG-16 weights (pass --vgg16)")
    return rows


if __name__ == "__main__":
    main()
