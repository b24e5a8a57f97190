#!/usr/bin/env python3
"""The host's memory on a GPU machine, through torch: what a host copy moves, what the CPU reads,
what the bus copies from pinned memory to the GPU, and what the last two move when they run at
once (as the GPU tier's CPU experts op and its copier do).

    python3 scripts/host-bw-probe.py [--threads 16] [--seconds 2] [--rounds 5]

Each figure is the median of --rounds windows of --seconds; the CPU reads by summing a 2 GiB
float32 tensor with --threads threads, the copies move a 1 GiB pinned tensor into VRAM on a
stream of their own.
"""
import argparse
import statistics
import threading
import time

import torch

GIB = 1 << 30


def cpu_read(a: torch.Tensor, seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a.sum()
        n += a.numel()*a.element_size()
    return n/(time.perf_counter() - t0)/1e9


def h2d(src: torch.Tensor, dst: torch.Tensor, seconds: float) -> float:
    stream = torch.cuda.Stream()
    n, t0 = 0, time.perf_counter()
    with torch.cuda.stream(stream):
        while time.perf_counter() - t0 < seconds:
            dst.copy_(src, non_blocking=True)
            stream.synchronize()
            n += src.numel()*src.element_size()
    return n/(time.perf_counter() - t0)/1e9


def together(a: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, seconds: float) -> tuple[float, float]:
    result: list[float] = []
    t = threading.Thread(target=lambda: result.append(h2d(src, dst, seconds)))
    t.start()
    cpu = cpu_read(a, seconds)
    t.join()
    return cpu, result[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    x = torch.ones(2*GIB, dtype=torch.int8)
    y = torch.empty_like(x)
    y.copy_(x)  # the pages are touched
    rates = []
    for _ in range(args.rounds):
        t = time.perf_counter()
        y.copy_(x)
        rates.append(2*x.numel()/(time.perf_counter() - t)/1e9)
    print(f"host copy, {args.threads} threads: y.copy_(x) of 2 GiB int8, reads+writes: median "
          f"{statistics.median(rates):.1f} GB/s (min {min(rates):.1f}, max {max(rates):.1f})")
    del x, y

    a = torch.ones(2*GIB//4, dtype=torch.float32)
    src = torch.ones(GIB//4, dtype=torch.float32).pin_memory()
    dst = torch.empty(GIB//4, dtype=torch.float32, device="cuda")
    cpu_read(a, 0.5)
    h2d(src, dst, 0.5)
    alone_cpu = [cpu_read(a, args.seconds) for _ in range(args.rounds)]
    alone_bus = [h2d(src, dst, args.seconds) for _ in range(args.rounds)]
    both = [together(a, src, dst, args.seconds) for _ in range(args.rounds)]
    cpu, bus = statistics.median(alone_cpu), statistics.median(alone_bus)
    cpu_b, bus_b = statistics.median(c for c, _ in both), statistics.median(b for _, b in both)
    print(f"CPU reads alone ({args.threads} threads): {cpu:.1f} GB/s; host-to-GPU copies alone: {bus:.1f} GB/s")
    print(f"at once: CPU {cpu_b:.1f} + copies {bus_b:.1f} = {cpu_b + bus_b:.1f} GB/s "
          f"(alone they add up to {cpu + bus:.1f}); medians of {args.rounds} windows of {args.seconds:g} s")


if __name__ == "__main__":
    main()
