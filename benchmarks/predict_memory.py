"""Whole scenes through tiled prediction: peak memory and speed, in memory vs streamed (issue 14).

The model is what `gan-engine train` builds for the SR quickstart (`quickstart_config()`: x2 SRResNet, 32 channels,
4 blocks, EMA), taken through `Predictor.from_module` as `gan-engine predict` uses it (weights do not change memory
or speed). For each input size an RGB `.npy` scene is written, then predicted in a fresh process each way:

- **in memory**: `Predictor.predict(array, tile=...)`, the whole input and output (and the blending weight sum)
  in memory, the output saved with `np.save`;
- **streamed**: `Predictor.predict_npy(src, dest, tile=...)` (what `gan-engine predict --tile` does for `.npy`
  inputs): windows read from the memory-mapped input, tiles accumulated into a memory-mapped output.

Each child process reports its peak resident memory (`ru_maxrss`) above what it held once the model was built,
and the megapixels of input per second. Both sides compute the same thing: at the smallest size the two outputs
are compared and must be bit-identical.

    .venv/bin/python benchmarks/predict_memory.py                       # 256, 1024 and 2048 px scenes
    .venv/bin/python benchmarks/predict_memory.py --sizes 256 4096      # other sizes
    .venv/bin/python benchmarks/predict_memory.py --quick               # 64 and 128 px: a smoke run
    .venv/bin/python benchmarks/predict_memory.py --small --streamed-only --dtype uint8 --sizes 256 4096 16384
                                                  # whole-scene sizes: a 1-block, 8-channel generator keeps the run short

`--scale 4` makes the quickstart x4; `--tile-batch` sets the tiles per generator call; `--dtype uint8` writes 8-bit
scenes (outputs are then 8-bit too, converted strip by strip).
"""
from __future__ import annotations
import argparse, json, os, resource, subprocess, sys, tempfile, threading, time, warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def child(mode: str, src: str, dest: str, tile: int, opts: dict) -> dict:
    "Predict `src` into `dest` one way; report peak memory above the model's and the time."
    import logging
    warnings.filterwarnings("ignore"); logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    import torch
    from gan_engine.cli import quickstart_config
    from gan_engine.module import GANModule
    from gan_engine.inference import Predictor
    torch.manual_seed(0)
    over = [f"Data.scale={opts['scale']}"] + (["Generator.n_channels=8", "Generator.n_blocks=1"] if opts["small"] else [])
    module = GANModule(quickstart_config(over, samples=ROOT / "data_samples"))
    p = Predictor.from_module(module, device="cpu")
    del module
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    anon0, peak_anon, stop = _anon_mb(), [0.0], threading.Event()
    def sample():   # peak of the process's anonymous memory (file-backed pages of memory maps are page cache)
        while not stop.is_set(): peak_anon[0] = max(peak_anon[0], _anon_mb()); stop.wait(0.02)
    sampler = threading.Thread(target=sample, daemon=True); sampler.start()
    t = time.perf_counter()
    if mode == "memory":
        out = p.predict(np.load(src), tile=tile, overlap=16, batch_size=opts["tile_batch"])
        np.save(dest, out)
    else:
        p.predict_npy(src, dest, tile=tile, overlap=16, batch_size=opts["tile_batch"])
    secs = time.perf_counter() - t
    stop.set(); sampler.join()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": secs, "peak_mb": peak, "model_mb": base, "anon_mb": max(peak_anon[0], _anon_mb()) - anon0}


def _anon_mb() -> float:
    "RssAnon of this process in MB (Linux)."
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"): return int(line.split()[1]) / 1024
    return 0.0


def run_child(mode, src, dest, tile, opts) -> dict:
    r = subprocess.run([sys.executable, __file__, "--child", mode, src, dest, str(tile), json.dumps(opts)], capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")})
    if r.returncode != 0: raise RuntimeError(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="input sides in pixels (default 256 1024 2048)")
    ap.add_argument("--tile", type=int, default=128, help="tile size in input pixels")
    ap.add_argument("--quick", action="store_true", help="64 and 128 px: a smoke run")
    ap.add_argument("--scale", type=int, default=2, choices=(2, 4), help="the quickstart's scale factor (default 2)")
    ap.add_argument("--small", action="store_true", help="a 1-block, 8-channel generator (for large scenes)")
    ap.add_argument("--streamed-only", action="store_true", help="skip the in-memory way (for scenes that would not fit)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "uint8"), help="the scenes' dtype (default float32)")
    ap.add_argument("--tile-batch", type=int, default=4, help="tiles per generator call (default 4)")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        mode, src, dest, tile, opts = args.child
        print(json.dumps(child(mode, src, dest, int(tile), json.loads(opts)))); return 0
    opts = {"scale": args.scale, "small": args.small, "tile_batch": args.tile_batch}
    modes = ("streamed",) if args.streamed_only else ("memory", "streamed")
    sizes = args.sizes or ([64, 128] if args.quick else [256, 1024, 2048])
    tile = min(args.tile, 48) if args.quick else args.tile
    print(f"gan_engine predict memory benchmark: SR quickstart model (x{args.scale}{', 1 block x 8 channels' if args.small else ''}), "
          f"tile {tile}, overlap 16, {args.tile_batch} tiles per call, {args.dtype} scenes; CPUs {os.cpu_count()}")
    print(f"{'input':>8s} {'way':>9s} {'peak RSS MB':>12s} {'peak anon MB':>13s} {'Mpx/s (input)':>14s} {'seconds':>8s}"
          "   (both above the model's)")
    rows = {}
    with tempfile.TemporaryDirectory(prefix="gan_engine-predict-mem-") as tmp:
        for s in sizes:
            src = f"{tmp}/scene_{s}.npy"
            scene = np.lib.format.open_memmap(src, mode="w+", dtype=args.dtype, shape=(3, s, s))
            rng = np.random.default_rng(s)
            for y in range(0, s, 1024): scene[:, y:y + 1024] = (rng.random((3, min(1024, s - y), s)) * 255).astype(args.dtype)
            scene.flush(); del scene
            for mode in modes:
                r = run_child(mode if mode == "memory" else "stream", src, f"{tmp}/out_{s}_{mode}.npy", tile, opts)
                rows[s, mode] = r
                print(f"{s:>6d}^2 {mode:>9s} {r['peak_mb'] - r['model_mb']:12.1f} {r['anon_mb']:13.1f} "
                      f"{s * s / 1e6 / r['seconds']:14.3f} {r['seconds']:8.2f}")
            if s == sizes[0] and len(modes) == 2:
                same = np.array_equal(np.load(f"{tmp}/out_{s}_memory.npy"), np.load(f"{tmp}/out_{s}_streamed.npy"))
                print(f"outputs at {s}^2: {'bit-identical' if same else 'DIFFERENT'}")
                if not same: return 1
            for mode in modes: os.remove(f"{tmp}/out_{s}_{mode}.npy")
            os.remove(src)
    lo, hi = sizes[0], sizes[-1]
    for mode in modes:
        a, b = (rows[s, mode]["peak_mb"] - rows[s, mode]["model_mb"] for s in (lo, hi))
        c, d = (rows[s, mode]["anon_mb"] for s in (lo, hi))
        print(f"{mode}: from {lo}^2 to {hi}^2 peak RSS grows {b / max(a, 1e-9):.1f}x ({a:.0f} -> {b:.0f} MB), "
              f"anonymous memory {d / max(c, 1e-9):.1f}x ({c:.0f} -> {d:.0f} MB)")
    if len(modes) == 1: return 0
    m, st = (rows[hi, k]["peak_mb"] - rows[hi, k]["model_mb"] for k in ("memory", "streamed"))
    print(f"at {hi}^2 streaming holds {st / max(m, 1e-9):.2f}x the in-memory peak RSS; time in-memory/streamed "
          f"{rows[hi, 'memory']['seconds'] / rows[hi, 'streamed']['seconds']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
