"Run by tests/test_trainer.py: a 2-process CPU DDP fit (gloo) of the tiny config from a script."
import hashlib, json, os, sys, warnings
from pathlib import Path

warnings.filterwarnings("ignore")
import torch

from gan_engine.testing import tiny_config
from gan_engine.trainer import fit

samples, out_dir, report_dir = sys.argv[1:4]
cfg = tiny_config(samples, [f"Logging.output_dir={out_dir}", "Trainer.accelerator=cpu", "Trainer.devices=2",
                            "Trainer.enable_progress_bar=false", "Training.max_steps=6", "Training.g_pretrain_steps=2",
                            "Training.val_every_n_steps=3", "Callbacks.checkpoint.save_top_k=1"])
run = fit(cfg)
rank = run.trainer.global_rank
ema = run.module.ema.module.state_dict()
digest = hashlib.sha256(b"".join(v.detach().cpu().numpy().tobytes() for v in ema.values())).hexdigest()
Path(report_dir, f"rank{rank}.json").write_text(json.dumps(
    {"rank": rank, "world": run.trainer.world_size, "run_dir": str(run.run_dir), "ema": digest,
     "g_step": run.module.g_step, "d_step": run.module.d_step, "strategy": type(run.trainer.strategy).__name__}))
