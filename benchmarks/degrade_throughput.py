"""Throughput of the on-the-fly degradation (`gan_engine.degrade.degrade_online`, Real-ESRGAN's default recipe).

Times whole batches of HR crops through `degrade_online` on the CPU (and on a GPU when there is one): the
median of `--rounds` batches after one warm-up batch, as images per second, with the fixed parameters of
each batch drawn from its seeds (so both devices degrade the same items the same way, which is checked).

    .venv/bin/python benchmarks/degrade_throughput.py                  # batch 16 of 3 x 256 x 256, x4
    .venv/bin/python benchmarks/degrade_throughput.py --quick          # a smoke run
"""
from __future__ import annotations
import argparse, os, statistics, sys, time, warnings

import torch

from gan_engine.degrade import degrade_online


def run(device:str, batch:int, size:int, bands:int, scale:int, rounds:int)->tuple[float, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    hr = torch.rand(batch, bands, size, size, generator=g).to(device)
    times, first = [], None
    for r in range(rounds + 1):
        seeds = [1000 * r + i for i in range(batch)]
        if device.startswith("cuda"): torch.cuda.synchronize()
        t = time.perf_counter()
        lr, _ = degrade_online(hr, scale, seeds)
        if device.startswith("cuda"): torch.cuda.synchronize()
        if r: times.append(time.perf_counter() - t)
        else: first = lr.cpu()
    return batch / statistics.median(times), first


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=16); ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--bands", type=int, default=3); ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5); ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    if a.quick: a.batch, a.size, a.rounds = 4, 64, 2
    warnings.filterwarnings("ignore")
    print("$ python " + " ".join(sys.argv))
    print(f"torch {torch.__version__}; {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}; "
          f"batch {a.batch} of {a.bands} x {a.size} x {a.size}, x{a.scale}")
    cpu, ref = run("cpu", a.batch, a.size, a.bands, a.scale, a.rounds)
    print(f"cpu: {cpu:.1f} images/s (median of {a.rounds} batches)")
    if torch.cuda.is_available():
        gpu, out = run("cuda", a.batch, a.size, a.bands, a.scale, a.rounds)
        same = float((out - ref).abs().max())
        print(f"cuda ({torch.cuda.get_device_name()}): {gpu:.1f} images/s; ratio cuda/cpu {gpu / cpu:.1f}; "
              f"largest difference to the CPU's LR {same:.4f} (noise is drawn per device)")


if __name__ == "__main__":
    main()
