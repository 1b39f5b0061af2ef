"""Time per adversarial batch and peak memory of gan_engine against OpenSR-SRGAN, from one OpenSR YAML (issue 14).

Both sides train from the **same OpenSR-SRGAN config file** on the same LR/HR `.npy` pairs
(`Data.root_dir` with `train/{LR,HR}` and `val/{LR,HR}`, OpenSR's `LRHRFolderDataset` layout):

- **OpenSR-SRGAN**: its own `opensr_srgan.train.train(config)` — the function its CLI runs (its
  datamodule, `SRGAN_model`, CSV logger, checkpoint and early-stopping callbacks, its Trainer
  arguments) — with a timing callback added to the Trainer it builds.
- **gan_engine**: `gan_engine.trainer.prepare(load_config(yaml))` — what `gan-engine train --config
  yaml` builds (OpenSR keys translated on load: SRResNet/SRGAN networks with OpenSR's layer names,
  L1 + BCE with label smoothing, EMA, Adam with the same settings) — with the same timing callback.

The networks are the same architecture (the script asserts equal parameter counts; `tests/test_opensr.py`
pins that gan_engine's `opensr_*` networks reproduce OpenSR's outputs from its checkpoints), the losses and
optimisers follow the same config values. Each side runs in its own process (so peak RSS is its own), and
the runs alternate: OpenSR, gan_engine, OpenSR, gan_engine, ... A run trains `--warmup` untimed batches,
then `--steps` timed ones; the time per batch is the median gap between batch starts. The ratio is taken
per pair (drifts in machine load cancel) and its median reported.

OpenSR-SRGAN needs torchvision, which does not import beside gan_engine's CPU torch wheel, so it lives in
a separate virtual environment (nothing in gan_engine depends on it):

    python3 -m venv /tmp/opensr_env
    /tmp/opensr_env/bin/pip install torch torchvision opensr-srgan==0.4.3

Run from the repository root:

    .venv/bin/python benchmarks/vs_opensr.py --opensr-python /tmp/opensr_env/bin/python
    .venv/bin/python benchmarks/vs_opensr.py --quick      # small networks, a smoke run

Without a working OpenSR-SRGAN interpreter (`--opensr-python`, else `$OPENSR_PYTHON`) the script times
gan_engine alone and says the comparison was skipped.
"""
from __future__ import annotations
import argparse, json, os, resource, shlex, statistics, subprocess, sys, tempfile, time
from pathlib import Path

# OpenSR-SRGAN's benchmark-sized setting: SRResNet 8 x 64 (x4), its SRGAN discriminator, batch 8, 32^2 -> 128^2
FULL = dict(n_channels=64, n_blocks=8, d_blocks=8, lr_size=32, scale=4, batch=8, bands=3, images=16,
            pairs=3, steps=5, warmup=2)
QUICK = dict(n_channels=8, n_blocks=1, d_blocks=2, lr_size=24, scale=4, batch=2, bands=3, images=4,
             pairs=1, steps=3, warmup=1)

def opensr_config(s:dict, root:str)->dict:
    "The OpenSR-SRGAN YAML both sides read: L1 + BCE (label smoothing), EMA, Adam; no SAM, perceptual, TV or clipping."
    return {
        "Data": {"dataset_type": "LRHRFolderDataset", "root_dir": root, "normalization": "zero_one",
                 "train_batch_size": s["batch"], "val_batch_size": s["batch"], "num_workers": 0},
        "Model": {"in_bands": s["bands"], "continue_training": False, "load_checkpoint": False},
        "Training": {"device": "cpu", "gpus": [], "max_epochs": 1000, "val_check_interval": 1.0, "limit_val_batches": 0,
                     "seed": 0, "pretrain_g_only": False, "g_pretrain_steps": 0, "adv_loss_ramp_steps": 100,
                     "label_smoothing": True,
                     "EMA": {"enabled": True, "decay": 0.999, "update_after_step": 0, "use_num_updates": True},
                     "Losses": {"adv_loss_type": "bce", "relativistic_average_d": False, "adv_loss_beta": 0.001,
                                "adv_loss_schedule": "cosine", "r1_gamma": 0.0, "l1_weight": 1.0, "sam_weight": 0.0,
                                "perceptual_weight": 0.0, "tv_weight": 0.0, "max_val": 1.0, "ssim_win": 11}},
        "Generator": {"model_type": "SRResNet", "block_type": "standard", "large_kernel_size": 9, "small_kernel_size": 3,
                      "n_channels": s["n_channels"], "n_blocks": s["n_blocks"], "scaling_factor": s["scale"]},
        "Discriminator": {"model_type": "standard", "n_blocks": s["d_blocks"], "use_spectral_norm": False},
        "Optimizers": {"optim_g_lr": 1e-4, "optim_d_lr": 1e-4, "gradient_clip_val": 0.0, "betas": [0.9, 0.999],
                       "eps": 1e-8, "weight_decay_g": 0.0, "weight_decay_d": 0.0},
        "Schedulers": {"g_warmup_steps": 0, "g_warmup_type": "none", "metric_g": "val_metrics/l1",
                       "metric_d": "discriminator/adversarial_loss", "patience_g": 100, "patience_d": 100,
                       "factor_g": 0.5, "factor_d": 0.5},
        "Logging": {"num_val_images": 1, "wandb": {"enabled": False, "entity": "", "project": "vs_opensr"}},
    }

def write_data(s:dict, root:Path, seed:int=0):
    "Random float32 HR images in [0, 1] and their area-downsampled LR, as CHW .npy pairs in OpenSR's folder layout."
    # OpenSR's reader takes an array as CHW only when H and W are over 16, hence LR sizes above 16
    import numpy as np
    rng, hw = np.random.default_rng(seed), s["lr_size"] * s["scale"]
    for split, n in (("train", s["images"]), ("val", 2)):
        for sub in ("LR", "HR"): (root / split / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            hr = rng.random((s["bands"], hw, hw), dtype=np.float32)
            lr = hr.reshape(s["bands"], s["lr_size"], s["scale"], s["lr_size"], s["scale"]).mean((2, 4))
            np.save(root / split / "HR" / f"img_{i:03d}.npy", hr); np.save(root / split / "LR" / f"img_{i:03d}.npy", lr)

# --- one timed run, inside a child process -----------------------------------------------------------------

def _timer_class(base):
    class BatchTimer(base):
        "Notes the start of every training batch; asks the trainer to stop after `total` batches."
        def __init__(self, total:int): self.total, self.starts = total, []
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.starts.append(time.perf_counter())
            if len(self.starts) >= self.total: trainer.should_stop = True
    return BatchTimer

def _params(m)->int: return sum(p.numel() for p in m.parameters())

def run_gan_engine(yaml_path:str, total:int, work:Path, lr_size:int)->dict:
    import lightning as L
    from gan_engine.config import load_config
    from gan_engine.trainer import prepare
    cfg = load_config(yaml_path, [f"Logging.output_dir={work / 'run'}", "Trainer.enable_model_summary=false",
                                  "Trainer.num_sanity_val_steps=0", "Trainer.limit_val_batches=0",
                                  f"Data.lr_patch_size={lr_size}"])   # OpenSR trains on whole images: crops of the full size
    timer = _timer_class(L.Callback)(total)
    run = prepare(cfg, callbacks=[timer])
    run.start()
    m = run.module
    return dict(starts=timer.starts, g_params=_params(m.generator), d_params=_params(m.discriminator),
                g_steps=m.g_step, d_steps=m.d_step, versions=f"torch {__import__('torch').__version__}, lightning {L.__version__}")

def run_opensr(yaml_path:str, total:int, work:Path, lr_size:int)->dict:
    import pytorch_lightning as pl
    from omegaconf import OmegaConf
    import opensr_srgan.train as opensr_train
    timer = _timer_class(pl.Callback)(total)
    built = {}
    original = pl.Trainer.__init__
    def with_timer(self, *a, **kw):   # add the timing callback to the Trainer that train() builds
        kw["callbacks"] = [*(kw.get("callbacks") or []), timer]
        kw.update(enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)   # per-batch cost only, as for gan_engine
        original(self, *a, **kw); built["trainer"] = self
    pl.Trainer.__init__ = with_timer
    os.chdir(work)                     # train() writes logs/ under the working directory
    opensr_train.train(OmegaConf.load(yaml_path))
    m = built["trainer"].lightning_module
    return dict(starts=timer.starts, g_params=_params(m.generator), d_params=_params(m.discriminator),
                g_steps=None, d_steps=None, global_step=built["trainer"].global_step,
                versions=f"torch {__import__('torch').__version__}, pytorch_lightning {pl.__version__}, "
                         f"opensr-srgan {__import__('importlib.metadata').metadata.version('opensr-srgan')}")

def child(a):
    work = Path(tempfile.mkdtemp(prefix=f"{a.side}_", dir=Path(a.config).parent))   # removed with the parent's folder
    out = (run_gan_engine if a.side == "gan_engine" else run_opensr)(a.config, a.warmup + a.steps + 1, work, a.lr_size)
    starts = out.pop("starts")
    gaps = [b - a_ for a_, b in zip(starts[a.warmup:], starts[a.warmup + 1:])]
    out.update(per_batch=statistics.median(gaps), gaps=gaps,
               peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print("RESULT " + json.dumps(out), flush=True)

# --- the parent: alternate the two sides --------------------------------------------------------------------

def opensr_python(given:str|None)->str|None:
    "An interpreter that imports opensr_srgan, or None."
    for exe in (given, os.environ.get("OPENSR_PYTHON")):
        if not exe: continue
        ok = subprocess.run([exe, "-c", "import opensr_srgan.train, pytorch_lightning"], capture_output=True)
        if ok.returncode == 0: return exe
        print(f"{exe}: cannot import opensr_srgan ({ok.stderr.decode().strip().splitlines()[-1:]})")
    return None

def one_run(exe:str, side:str, yaml_path:str, s:dict)->dict:
    cmd = [exe, __file__, "--side", side, "--config", yaml_path, "--steps", str(s["steps"]), "--warmup", str(s["warmup"]),
           "--lr-size", str(s["lr_size"])]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONWARNINGS": "ignore"}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        raise RuntimeError(f"the {side} run failed (exit {p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return json.loads(lines[-1][7:])

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--opensr-python", help="python of an environment with opensr-srgan (default: $OPENSR_PYTHON)")
    p.add_argument("--pairs", type=int, help=f"alternating pairs of runs (default {FULL['pairs']})")
    p.add_argument("--steps", type=int, help=f"timed batches per run (default {FULL['steps']})")
    p.add_argument("--warmup", type=int, help=f"untimed batches first (default {FULL['warmup']})")
    p.add_argument("--quick", action="store_true", help="small networks, one pair: a smoke run")
    p.add_argument("--side", choices=("gan_engine", "opensr"), help=argparse.SUPPRESS)   # child mode
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--lr-size", type=int, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.side: return child(a)
    s = dict(QUICK if a.quick else FULL)
    for k in ("pairs", "steps", "warmup"):
        if getattr(a, k) is not None: s[k] = getattr(a, k)
    if s["pairs"] < 1 or s["steps"] < 1 or s["warmup"] < 0:
        p.error(f"Expected --pairs >= 1, --steps >= 1 and --warmup >= 0 but got {s['pairs']}, {s['steps']}, {s['warmup']}")
    print("$ " + " ".join(shlex.quote(x) for x in ["python", *sys.argv]))
    peer = opensr_python(a.opensr_python)
    import yaml
    with tempfile.TemporaryDirectory() as tmp:
        write_data(s, Path(tmp) / "data")
        yaml_path = str(Path(tmp) / "opensr.yaml")
        Path(yaml_path).write_text(yaml.safe_dump(opensr_config(s, str(Path(tmp) / "data"))))
        hw = s["lr_size"] * s["scale"]
        print(f"config (one OpenSR-SRGAN YAML for both): SRResNet standard {s['n_blocks']} x {s['n_channels']} x{s['scale']}, "
              f"SRGAN discriminator {s['d_blocks']} blocks, batch {s['batch']}, {s['bands']} bands, LR {s['lr_size']}^2 -> "
              f"HR {hw}^2; L1 + BCE (beta 1e-3, label smoothing), EMA on, Adam 1e-4, adversarial from the first batch; "
              f"{s['images']} .npy pairs, num_workers 0")
        print(f"timing: {s['pairs']} alternating pairs of runs, each {s['warmup']} untimed + {s['steps']} timed batches")
        rows = []
        for i in range(s["pairs"]):
            o = one_run(peer, "opensr", yaml_path, s) if peer else None
            g = one_run(sys.executable, "gan_engine", yaml_path, s)
            rows.append((o, g))
            print(f"pair {i + 1}: gan_engine {g['per_batch'] * 1000:.1f} ms/batch, peak RSS {g['peak_rss_mb']:.0f} MB"
                  + (f"; OpenSR-SRGAN {o['per_batch'] * 1000:.1f} ms/batch, peak RSS {o['peak_rss_mb']:.0f} MB; "
                     f"ratio gan_engine/OpenSR {g['per_batch'] / o['per_batch']:.3f}" if o else ""), flush=True)
    g0 = rows[0][1]
    print(f"gan_engine: {g0['versions']}; generator {g0['g_params']:,} parameters, discriminator {g0['d_params']:,}; "
          f"{g0['g_steps']} generator and {g0['d_steps']} discriminator steps per run")
    med = statistics.median
    g_ms, g_rss = med(g["per_batch"] for _, g in rows) * 1000, max(g["peak_rss_mb"] for _, g in rows)
    if not peer:
        print(f"gan_engine alone: {g_ms:.1f} ms per batch, peak RSS {g_rss:.0f} MB")
        print("comparison skipped: OpenSR-SRGAN is not importable (give --opensr-python or set OPENSR_PYTHON)")
        return None
    o0 = rows[0][0]
    print(f"OpenSR-SRGAN: {o0['versions']}; generator {o0['g_params']:,} parameters, discriminator {o0['d_params']:,}; "
          f"global_step {o0['global_step']} per run (it counts D and G optimiser steps)")
    assert (o0["g_params"], o0["d_params"]) == (g0["g_params"], g0["d_params"]), "the two sides built different networks"
    print("same networks: equal generator and discriminator parameter counts on both sides")
    ratios = [g["per_batch"] / o["per_batch"] for o, g in rows]
    o_ms, o_rss = med(o["per_batch"] for o, _ in rows) * 1000, max(o["peak_rss_mb"] for o, _ in rows)
    print(f"\nper adversarial batch: gan_engine {g_ms:.1f} ms, OpenSR-SRGAN {o_ms:.1f} ms; ratio gan_engine/OpenSR "
          f"{med(ratios):.3f} (median of the per-pair ratios; range {min(ratios):.3f}..{max(ratios):.3f})")
    print(f"peak RSS: gan_engine {g_rss:.0f} MB, OpenSR-SRGAN {o_rss:.0f} MB (ratio {g_rss / o_rss:.3f}; each the highest "
          f"of its runs)")
    print(f"load average (1 min) at end {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    return med(ratios), g_rss / o_rss

if __name__ == "__main__":
    main()
