#!/usr/bin/env python3
"""Does reading a buffer ahead of time (while the CPU would otherwise wait for the GPU) make the
CPU's later read of it faster? The GPU tier's CPU experts op reads each miss's weights from host
memory; between two MoE layers the host's memory sits idle for the GPU's part of the layer
(about 0.13 ms on the H200 machine). This measures, through torch on the CPU, how fast --threads
threads sum a buffer of each size right after a flush of the caches (cold), and right after the
same buffer was read once more by the same threads, each its own part (warm), or with its parts
dealt out to other threads (warm elsewhere: the data then sits in other cores' caches; a column
sum of the buffer as a [4, n/4] matrix). Medians of --reps.

    python3 scripts/cache-warm-probe.py [--threads 16] [--reps 30]
"""
import argparse
import statistics
import time

import torch

MB = 1 << 20


def timed_sum(x: torch.Tensor) -> float:
    t0 = time.perf_counter()
    x.sum()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--sizes", default="2,4,8,13,20,26")
    args = ap.parse_args()
    flush = torch.ones(1024*MB//4)  # 1 GiB of float32: evicts every cache
    torch.set_num_threads(args.threads)
    print(f"threads {args.threads}; GB/s of the timed sum, median of {args.reps}")
    print("| MiB | cold | warm (same threads) | warm (other threads) |")
    print("|---|---|---|---|")
    for size in (float(s) for s in args.sizes.split(",")):
        x = torch.ones(int(size*MB)//4)
        res = {"cold": [], "same": [], "other": []}
        for _ in range(args.reps):
            for kind in res:
                flush.sum()
                if kind == "same":
                    x.sum()
                elif kind == "other":
                    x.view(4, -1).sum(dim=0)
                res[kind].append(timed_sum(x))
        gbps = {k: x.numel()*4/statistics.median(v)/1e9 for k, v in res.items()}
        print(f"| {size:g} | {gbps['cold']:.1f} | {gbps['same']:.1f} | {gbps['other']:.1f} |")


if __name__ == "__main__":
    main()
