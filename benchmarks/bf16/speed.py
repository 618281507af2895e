"""Training-step time, fp32 against bf16 autocast, for the Transformer and TransEvolve-fullFF 1x6.

The benchmark shape (``transevolve.bench.harness.BASE_SHAPE``: classifier, width 256, 4 heads, FF 1024, 6 layers),
batch 4, n = 512, by default on 2 threads. One process builds every (model, precision) pair with the same weights
and batch, warms each up, then times one training step (forward and loss under autocast for bf16, backward, Adam)
per model and round, fp32 and bf16 back to back (alternating which goes first), models in rotated order; it prints
the median step times and the median (min, max) over rounds of each pair's fp32 / bf16 ratio: a ratio of two
adjacent steps is what survives a loaded machine. Each is given for wall-clock time and for the process's CPU time
(all its threads; less sensitive to other processes, since time spent descheduled does not count; set
``OMP_WAIT_POLICY=PASSIVE`` so that threads waiting at a barrier sleep instead of spinning on the clock).

    OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bf16/speed.py [--rounds 15] [--models ...]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from transevolve.bench.harness import build, make_batch, model_specs, step_functions

MODELS = ("transformer", "transevolve-full-1x6")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps = {}
    for spec in model_specs(names=args.models.split(",")):
        ids, labels = make_batch(spec, args.batch, args.length)
        for precision in ("fp32", "bf16"):
            torch.manual_seed(0)
            train_step, _ = step_functions(build(spec), ids, labels, precision)
            for _ in range(2):
                train_step()                                                    # warm-up
            steps[(spec.name, precision)] = train_step
    times: dict[tuple[str, str], list[float]] = {key: [] for key in steps}
    cpu: dict[tuple[str, str], list[float]] = {key: [] for key in steps}
    names = list(dict.fromkeys(name for name, _ in steps))
    ratios: dict[str, list[float]] = {name: [] for name in names}
    cpu_ratios: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(args.rounds):
        for name in names[round_index % len(names):] + names[: round_index % len(names)]:      # rotated order
            # fp32 and bf16 of one model back to back (alternating which goes first), so that both see the
            # same load; the ratio of the pair is one sample.
            pair = ("fp32", "bf16") if round_index % 2 == 0 else ("bf16", "fp32")
            for precision in pair:
                start, start_cpu = time.perf_counter(), time.process_time()
                steps[(name, precision)]()
                times[(name, precision)].append(time.perf_counter() - start)
                cpu[(name, precision)].append(time.process_time() - start_cpu)
            ratios[name].append(times[(name, "fp32")][-1] / times[(name, "bf16")][-1])
            cpu_ratios[name].append(cpu[(name, "fp32")][-1] / cpu[(name, "bf16")][-1])
    print(f"training step, batch {args.batch}, n={args.length}, {args.threads} threads, {args.rounds} rounds "
          f"(torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}); median step times and the "
          "median, min and max of the per-round fp32/bf16 ratios")
    for clock, table, samples in (("wall", times, ratios), ("cpu", cpu, cpu_ratios)):
        for name in names:
            fp32, bf16 = (statistics.median(table[(name, p)]) for p in ("fp32", "bf16"))
            sample = samples[name]
            print(f"  {clock:4s} {name:32s} fp32 {fp32 * 1e3:7.0f} ms  bf16 {bf16 * 1e3:7.0f} ms  fp32/bf16 "
                  f"{statistics.median(sample):.2f}x (min {min(sample):.2f}, max {max(sample):.2f})")


if __name__ == "__main__":
    main()
