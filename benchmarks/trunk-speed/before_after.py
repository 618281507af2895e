"""Speed of today's models before and after a trunk change, side by side in one process.

Both versions of the package are loaded into one Python process (the older one from a ``git worktree`` of
``--before``, imported first and then set aside under its own module objects), the same configurations are built
from each with the same seed, and their training steps and inference passes are timed in interleaved rounds
(median of ``--rounds``), so that machine noise hits both alike. The outputs of each pair are also compared.

    python benchmarks/trunk-speed/before_after.py --before dff92e3 --out benchmarks/trunk-speed/results

Run it alone on a quiet machine. Writes ``results.json`` and ``results.md`` (after / before ratios; > 1 is faster).
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
#: The configurations of ``transevolve bench --quick`` (width 256, 4 heads, FF 1024, 6 layers, classifier).
CONFIGS: dict[str, dict[str, Any]] = {
    "transformer": {"attention": "softmax"},
    "transevolve-full-1x6/reference": {"attention": "evolved", "ff_type": "full", "attention_impl": "reference"},
    "transevolve-full-1x6/factorised": {"attention": "evolved", "ff_type": "full", "attention_impl": "factorised"},
    "transevolve-full-1x6/low_memory": {"attention": "evolved", "ff_type": "full", "attention_impl": "low_memory"},
    "transevolve-random-1x6/factorised": {"attention": "evolved", "ff_type": "random",
                                          "attention_impl": "factorised"},
}
SHAPE = {"kind": "classifier", "vocab_size": 256, "width": 256, "num_heads": 4, "time_dim": 64,
         "layers_per_block": 6, "num_blocks": 1, "num_classes": 10, "max_length": 4096, "dropout": 0.1}


def load_package(source: Path) -> ModuleType:
    """Import ``transevolve`` from ``source/src`` and detach it from ``sys.modules`` (its modules keep working)."""
    for name in [n for n in sys.modules if n == "transevolve" or n.startswith("transevolve.")]:
        del sys.modules[name]
    sys.path.insert(0, str(source / "src"))
    try:
        package = importlib.import_module("transevolve")
        importlib.import_module("transevolve.models")
    finally:
        sys.path.pop(0)
    for name in [n for n in sys.modules if n == "transevolve" or n.startswith("transevolve.")]:
        del sys.modules[name]
    return package


def runners(package: ModuleType, name: str, length: int, batch: int) -> tuple[Any, Any, torch.Tensor]:
    config = package.ModelConfig(**SHAPE, **CONFIGS[name])
    torch.manual_seed(0)
    model = package.build_model(config)
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1, SHAPE["vocab_size"], (batch, length), generator=generator)
    labels = torch.randint(0, SHAPE["num_classes"], (batch,), generator=generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def train_step() -> None:
        model.train()
        loss = torch.nn.functional.cross_entropy(model(ids), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def inference() -> torch.Tensor:
        model.eval()
        with torch.inference_mode():
            return model(ids)

    return train_step, inference, ids


def elapsed(function: Any) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="git revision of the 'before' trunk")
    parser.add_argument("--lengths", default="128,512")
    parser.add_argument("--tokens", type=int, default=4096, help="tokens per batch")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "trunk-speed" / "results")
    args = parser.parse_args()
    worktree = Path(tempfile.mkdtemp(prefix="transevolve-before-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(worktree), args.before], check=True,
                   capture_output=True)
    try:
        before = load_package(worktree)
        after = load_package(ROOT)
        revision = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                  text=True).stdout.strip()
        rows = []
        for length in [int(n) for n in args.lengths.split(",")]:
            batch = max(1, args.tokens // length)
            pairs = {}
            for name in CONFIGS:
                pairs[name] = {version: runners(package, name, length, batch)
                               for version, package in (("before", before), ("after", after))}
                with torch.no_grad():
                    difference = (pairs[name]["before"][1]() - pairs[name]["after"][1]()).abs().max().item()
                pairs[name]["difference"] = difference
                for version in ("before", "after"):      # warm-up
                    pairs[name][version][0]()
                    pairs[name][version][1]()
            times: dict[tuple[str, str, str], list[float]] = {}
            for round_index in range(args.rounds):
                order = ("before", "after") if round_index % 2 == 0 else ("after", "before")
                for name in CONFIGS:
                    for version in order:
                        train_step, inference, _ = pairs[name][version]
                        times.setdefault((name, version, "train"), []).append(elapsed(train_step))
                        times.setdefault((name, version, "infer"), []).append(elapsed(inference))
            for name in CONFIGS:
                row = {"model": name, "length": length, "batch": batch,
                       "initial_output_difference": pairs[name]["difference"]}
                for mode in ("train", "infer"):
                    for version in ("before", "after"):
                        seconds = statistics.median(times[(name, version, mode)])
                        row[f"{mode}_{version}_tokens_per_s"] = batch * length / seconds
                    row[f"{mode}_ratio"] = row[f"{mode}_after_tokens_per_s"] / row[f"{mode}_before_tokens_per_s"]
                rows.append(row)
                print(f"n={length} {name}: train {row['train_ratio']:.3f}x, infer {row['infer_ratio']:.3f}x "
                      f"(after/before), outputs differ by {row['initial_output_difference']:.1e}", flush=True)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)], capture_output=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"before": args.before, "after": revision, "rounds": args.rounds, "tokens_per_batch": args.tokens,
               "torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows}
    args.out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [f"# Trunk speed: {revision} (after) vs {args.before} (before), side by side in one process",
             "", f"Median of {args.rounds} interleaved rounds, {args.tokens} tokens per batch, "
             f"{torch.get_num_threads()} threads, torch {torch.__version__}. Ratio = after / before tokens/s.", "",
             "| model | n | train before | train after | train ratio | infer before | infer after | infer ratio "
             "| output diff |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['model']} | {row['length']} | {row['train_before_tokens_per_s']:,.0f} | "
                     f"{row['train_after_tokens_per_s']:,.0f} | {row['train_ratio']:.3f} | "
                     f"{row['infer_before_tokens_per_s']:,.0f} | {row['infer_after_tokens_per_s']:,.0f} | "
                     f"{row['infer_ratio']:.3f} | {row['initial_output_difference']:.1e} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
