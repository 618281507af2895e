"""Benchmark reports: JSON, a markdown table with the issue's targets, and a log-log plot of time against length."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from transevolve.bench.flops import flops_per_token
from transevolve.config import ModelConfig

TE = "transevolve-full-1x6"


def _fmt(value: float | None, digits: int = 0, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}{suffix}"


def _row(results: dict[str, Any], model: str, length: int, section: str = "throughput") -> dict[str, Any] | None:
    for row in results.get(section, []):
        if row["model"] == model and row["length"] == length and not row.get("skipped"):
            return row
    return None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def slope(lengths: list[int], seconds: list[float]) -> float | None:
    """Least-squares slope of log(seconds) against log(length)."""
    if len(lengths) < 2:
        return None
    xs, ys = [math.log(n) for n in lengths], [math.log(t) for t in seconds]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else None


def _series(results: dict[str, Any], key: str) -> dict[str, tuple[list[int], list[float]]]:
    """Per model: lengths and seconds per sequence (step time / batch)."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    for row in results.get("throughput", []):
        if row.get("skipped") or row.get(key) is None:
            continue
        lengths, seconds = series.setdefault(row["model"], ([], []))
        lengths.append(row["length"])
        seconds.append(row[key] / row["batch"])
    return series


def _config(results: dict[str, Any], name: str) -> ModelConfig | None:
    for model in results.get("models", []):
        if model["name"] == name:
            return ModelConfig.from_dict(model["config"])
    return None


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured value, the goal and whether it is met (None: not measured)."""
    rows: list[dict[str, Any]] = []

    def add(name: str, measured: float | None, goal: float, higher: bool = True, note: str = "") -> None:
        met = None if measured is None else (measured >= goal if higher else measured <= goal)
        rows.append({"target": name, "measured": measured, "goal": goal, "higher_is_better": higher,
                     "met": met, "note": note})

    errors = [r["max_abs_error"] for r in results.get("fast_path_check", [])]
    add("fast == reference TransEvolve outputs (max abs error)", max(errors) if errors else None, 1e-5,
        higher=False)
    fast, ref = _row(results, f"{TE}/factorised", 2048), _row(results, f"{TE}/reference", 2048)
    add("factorised vs reference training step at n=2048", _ratio(ref and ref["train_step_seconds"],
                                                                   fast and fast["train_step_seconds"]), 2.0)
    te_config, tf_config = _config(results, f"{TE}/factorised"), _config(results, "transformer")
    for length, goal in ((512, 1.2), (2048, 1.3)):
        te, tf = _row(results, f"{TE}/factorised", length), _row(results, "transformer", length)
        note = ""
        if te_config is not None and tf_config is not None:
            fast_ratio = flops_per_token(tf_config, length) / flops_per_token(te_config, length)
            issue_ratio = flops_per_token(tf_config, length) / flops_per_token(
                te_config.replace(fidelity="lean"), length, "reference")
            note = f"analytic FLOP ratio {fast_ratio:.2f}x ({issue_ratio:.2f}x counting kappa, as the issue does)"
        for mode in ("train", "infer"):
            key = f"{mode}_tokens_per_second"
            add(f"TransEvolve 1x6 vs Transformer {mode} tokens/s at n={length}",
                _ratio(te and te[key], tf and tf[key]), goal, note=note)
    for length in sorted({r["length"] for r in results.get("throughput", [])}):
        ours, theirs = _row(results, "transformer", length), _row(results, "x-transformers", length)
        for mode in ("train", "infer"):
            key = f"{mode}_tokens_per_second"
            add(f"our Transformer vs x-transformers {mode} at n={length}", _ratio(ours and ours[key],
                                                                              theirs and theirs[key]), 1.0)
    for row in results.get("decode", []):
        add(f"cached vs uncached greedy decoding, {row['model']} ({row['tokens']} tokens, batch {row['batch']})",
            row["speedup"], 10.0,
            note="same tokens" if row["same_tokens"] else "TOKENS DIFFER")
    for row in results.get("mfu", []):
        add(f"training MFU, {row['model']}, width 512, n={row['length']}", row["train_mfu"], 0.5)
    low, base = _row(results, f"{TE}/low_memory", 4096), _row(results, "transformer", 4096)
    for mode in ("train", "infer"):
        key = f"{mode}_memory_mb"
        add(f"low-memory TransEvolve / Transformer peak {mode} memory at n=4096",
            _ratio(low and low[key], base and base[key]), 1.2, higher=False)
    return rows


def markdown(results: dict[str, Any], command: str) -> str:
    """The report: setup, throughput/memory table per length, targets, decoding and MFU tables."""
    system = results.get("system", {})
    peaks = [p for row in results.get("throughput", []) for p in row["raw"]["peak_flops"]]
    peak = sorted(peaks)[len(peaks) // 2] / 1e9 if peaks else None
    lines = [
        "# transevolve bench", "",
        f"Command: `{command}`", "",
        f"Machine: {system.get('cpu')}, {system.get('cpu_count')} cores, torch {system.get('torch')} "
        f"({system.get('threads')} threads), git {system.get('git')}, {system.get('date')}; "
        f"median dense fp32 matmul peak {_fmt(peak, 0)} GFLOP/s; run took {_fmt(results.get('seconds'), 0)} s.", "",
        "Times are medians over interleaved rounds; MFU uses each round's own matmul probe. Memory is the peak "
        "resident-set increase of one step in a fresh process (training includes gradients and the Adam state).",
        "",
        "| n | batch | model | params | GFLOP/token | train tok/s | infer tok/s | train MFU | train MB | "
        "infer MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results.get("throughput", []):
        if row.get("skipped"):
            lines.append(f"| {row['length']} | {row['batch']} | {row['model']} | {row['parameters']:,} | - | "
                         f"skipped ({row['skipped']}) | | | | |")
            continue
        lines.append(
            f"| {row['length']} | {row['batch']} | {row['model']} | {row['parameters']:,} | "
            f"{row['flops_per_token'] / 1e9:.4f} | {_fmt(row['train_tokens_per_second'])} | "
            f"{_fmt(row['infer_tokens_per_second'])} | {_fmt(row['train_mfu'] and 100 * row['train_mfu'], 1, '%')} | "
            f"{_fmt(row['train_memory_mb'])} | {_fmt(row['infer_memory_mb'])} |")
    lines += ["", "## Targets", "", "| target | measured | goal | met | note |", "|---|---|---|---|---|"]
    for row in targets(results):
        goal = f"{'>=' if row['higher_is_better'] else '<='} {row['goal']:g}"
        measured = "-" if row["measured"] is None else f"{row['measured']:.3g}"
        met = {True: "yes", False: "**no**", None: "not measured"}[row["met"]]
        lines.append(f"| {row['target']} | {measured} | {goal} | {met} | {row['note']} |")
    if results.get("decode"):
        rounds = results["decode"][0].get("rounds", 1)
        lines += ["", f"## Decoding (greedy, EOS disabled; median of {rounds} interleaved rounds)", "",
                  "| model | tokens | batch | cached s | uncached s | speed-up | same tokens |",
                  "|---|---|---|---|---|---|---|"]
        for row in results["decode"]:
            lines.append(f"| {row['model']} | {row['tokens']} | {row['batch']} | {row['cached_seconds']:.2f} | "
                         f"{row['uncached_seconds']:.2f} | {row['speedup']:.1f}x | {row['same_tokens']} |")
    if results.get("mfu"):
        lines += ["", "## MFU at width 512, 8 heads, FF 2048, 6 layers", "",
                  "| model | n | batch | train tok/s | train MFU | infer tok/s | infer MFU |",
                  "|---|---|---|---|---|---|---|"]
        for row in results["mfu"]:
            lines.append(f"| {row['model']} | {row['length']} | {row['batch']} | "
                         f"{_fmt(row['train_tokens_per_second'])} | {_fmt(100 * (row['train_mfu'] or 0), 1, '%')} | "
                         f"{_fmt(row['infer_tokens_per_second'])} | {_fmt(100 * (row['infer_mfu'] or 0), 1, '%')} |")
    slopes = []
    for key, label in (("train_step_seconds", "train"), ("infer_seconds", "infer")):
        for model, (lengths, seconds) in _series(results, key).items():
            fitted = slope(lengths, seconds)
            if fitted is not None:
                slopes.append(f"| {model} | {label} | {fitted:.2f} |")
    if slopes:
        lines += ["", "## Scaling: fitted log-log slope of time per sequence against length", "",
                  "| model | mode | slope |", "|---|---|---|", *slopes]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> Path | None:
    """Log-log time per sequence against length (training and inference), fitted slopes in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(13, 5))
    drawn = False
    for axis, (key, title) in zip(axes, (("train_step_seconds", "training step"), ("infer_seconds", "inference")),
                                  strict=True):
        for model, (lengths, seconds) in sorted(_series(results, key).items()):
            fitted = slope(lengths, seconds)
            label = f"{model} (slope {fitted:.2f})" if fitted is not None else model
            axis.plot(lengths, seconds, marker="o", label=label)
            drawn = True
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("sequence length n")
        axis.set_ylabel("seconds per sequence")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    if drawn:
        figure.savefig(path, dpi=120)
    plt.close(figure)
    return path if drawn else None


def write(results: dict[str, Any], directory: Path, name: str, command: str) -> list[Path]:
    """Write ``name.json``, ``name.md`` and ``name.png`` under ``directory``; returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    results = {**results, "command": command, "targets": targets(results)}
    written = [directory / f"{name}.json", directory / f"{name}.md"]
    written[0].write_text(json.dumps(results, indent=2) + "\n")
    written[1].write_text(markdown(results, command))
    figure = plot(results, directory / f"{name}.png")
    if figure is not None:
        written.append(figure)
    return written
