"""Reports of the ``efficient`` preset: where each model's saving against our Transformer starts, and the cost of a
decoding step against its position.

- :func:`crossover`: per model and metric (training and inference tokens/s, peak training and inference memory),
  the ratio to the baseline (``transformer``, same precision and dense backend) at every length both were measured
  at, and ``better_from``: the shortest length from which the model is better by more than :data:`MARGIN` (the
  noise of a timing or of a resident-set peak) at that length and at every longer one measured (None: nowhere).
- :func:`crossover_markdown`, :func:`plot_crossover`: tables, and tokens/s and peak memory against length (log-log,
  one line per model).
- :func:`positions_markdown`, :func:`plot_positions`: ms per decoding step against position (one line per model),
  with the growth from the first to the last position; a model is called flat only when its measured growth is
  within :data:`FLAT`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

#: Metrics of the crossover: (row key, label, higher is better).
METRICS: tuple[tuple[str, str, bool], ...] = (
    ("train_tokens_per_second", "faster training", True),
    ("infer_tokens_per_second", "faster inference", True),
    ("train_memory_mb", "less training memory", False),
    ("infer_memory_mb", "less inference memory", False),
)

#: Better means a ratio to the baseline above ``1 + MARGIN`` (tokens/s) or below ``1 - MARGIN`` (memory).
MARGIN = 0.05

#: A decoding cost whose last / first position ratio is at most this is reported as flat.
FLAT = 1.25


def _fmt(value: float | None, digits: int = 0, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}{suffix}"


def _value(results: dict[str, Any], row: dict[str, Any], key: str) -> float | None:
    """``key`` of a throughput row; memory from the matching memory row when the throughput row lacks it."""
    if row.get(key) is not None or not key.endswith("_memory_mb"):
        return row.get(key)
    for memory in results.get("memory", []):
        if (memory.get("model"), memory.get("length")) == (row["model"], row["length"]):
            return memory.get(key)
    return None


def _series(results: dict[str, Any]) -> dict[str, dict[int, dict[str, Any]]]:
    """Throughput rows by label and length (skipped rows included)."""
    series: dict[str, dict[int, dict[str, Any]]] = {}
    for row in results.get("throughput", []):
        series.setdefault(row["model"], {})[row["length"]] = row
    return series


def crossover(results: dict[str, Any], baseline: str = "transformer") -> list[dict[str, Any]]:
    """One row per model (other than the baseline) and metric of :data:`METRICS`: ``ratios`` (model / baseline per
    length, both measured) and ``better_from`` (see the module docstring)."""
    series = _series(results)
    bases = {(rows_[n].get("precision", "fp32"), rows_[n].get("dense_backend")): label
             for label, rows_ in series.items() for n in rows_ if rows_[n].get("base_model", label) == baseline}
    rows: list[dict[str, Any]] = []
    for label, by_length in series.items():
        first = next(iter(by_length.values()))
        base_label = bases.get((first.get("precision", "fp32"), first.get("dense_backend")))
        if base_label is None or label == base_label:
            continue
        base = series[base_label]
        for key, _, higher in METRICS:
            ratios = []
            for length in sorted(by_length):
                if length not in base or by_length[length].get("skipped") or base[length].get("skipped"):
                    continue
                ours, theirs = _value(results, by_length[length], key), _value(results, base[length], key)
                if ours and theirs:
                    ratios.append({"length": length, "ratio": ours / theirs})
            better_from = None
            for item in reversed(ratios):
                if (item["ratio"] > 1.0 + MARGIN) if higher else (item["ratio"] < 1.0 - MARGIN):
                    better_from = item["length"]
                else:
                    break
            rows.append({"model": label, "baseline": base_label, "metric": key, "higher_is_better": higher,
                         "better_from": better_from, "ratios": ratios})
    return rows


def _length_table(results: dict[str, Any], keys: tuple[str, str], digits: int) -> list[str]:
    series = _series(results)
    lengths = sorted({n for rows in series.values() for n in rows})
    lines = ["| model | " + " | ".join(f"n={n}" for n in lengths) + " |", "|---" * (len(lengths) + 1) + "|"]
    for label, by_length in series.items():
        cells = []
        for n in lengths:
            row = by_length.get(n)
            if row is None:
                cells.append("-")
            elif row.get("skipped"):
                cells.append("skipped")
            else:
                cells.append(" / ".join(_fmt(_value(results, row, key), digits) for key in keys))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def crossover_markdown(results: dict[str, Any], figure: str | None = None) -> list[str]:
    """The "Efficient attention against sequence length" section (``figure``: the crossover plot's file name)."""
    rows = crossover(results)
    lines = ["## Efficient attention against sequence length", "",
             "Training / inference tokens/s at a constant token budget per batch (batch = tokens / n); `skipped` "
             "rows are explained in the notes at the top.", "",
             *_length_table(results, ("train_tokens_per_second", "infer_tokens_per_second"), 0), ""]
    if any(_value(results, row, key) is not None for row in results.get("throughput", [])
           for key in ("train_memory_mb", "infer_memory_mb")):
        lines += ["Peak memory of one step in MB, training / inference (a fresh process per model and length; "
                  "training includes gradients and the Adam state):", "",
                  *_length_table(results, ("train_memory_mb", "infer_memory_mb"), 0)]
    else:
        lines.append("Peak memory was not measured in this run.")
    if figure:
        lines += ["", f"![tokens/s and peak memory against length]({figure})"]
    if not rows:
        return lines
    baseline = rows[0]["baseline"]
    lines += ["", f"### Where each saving starts (against {baseline})", "",
              f"The shortest length from which the model beats `{baseline}` by more than {100 * MARGIN:.0f}% at "
              "that length and every longer one measured, and its ratio at the longest length both ran (tokens/s: "
              "model / baseline, higher is better; memory: model / baseline, lower is better).", "",
              "| model | " + " | ".join(label for _, label, _ in METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    by_model: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        by_model.setdefault(row["model"], {})[row["metric"]] = row
    for model, metrics in by_model.items():
        cells = []
        for key, _, _ in METRICS:
            row = metrics.get(key)
            if row is None or not row["ratios"]:
                cells.append("not measured")
                continue
            last = row["ratios"][-1]
            where = f"n={row['better_from']}" if row["better_from"] is not None else "nowhere measured"
            cells.append(f"{where} ({last['ratio']:.2f}x at n={last['length']})")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return lines


def positions_markdown(results: dict[str, Any], figure: str | None = None) -> list[str]:
    """The "Decoding cost against position" section."""
    rows = results.get("decode_by_position", [])
    if not rows:
        return []
    positions = sorted({row["position"] for row in rows})
    models = list(dict.fromkeys(row["model"] for row in rows))
    by_key = {(row["model"], row["position"]): row for row in rows}
    first = rows[0]
    lines = ["## Decoding cost against position (causal decoders)", "",
             f"Milliseconds per cached decoding step (one new token for each of {first['batch']} sequence(s)), median "
             f"of {first['steps']} steps (interleaved rounds) starting at the position; the cache size after them. "
             "Softmax reads its whole key/value cache, sparse gathers only its pattern's keys from the same cache, "
             "linear keeps a constant-size state, TransEvolve its block keys and per-layer key bias and values.", "",
             "| model | " + " | ".join(f"pos {p}" for p in positions)
             + f" | last / first | cache MB at {positions[-1]} |", "|---" * (len(positions) + 3) + "|"]
    growth: dict[str, float] = {}
    for model in models:
        cells = [_fmt(by_key[(model, p)]["step_ms"], 2) if (model, p) in by_key else "-" for p in positions]
        measured = [by_key[(model, p)]["step_ms"] for p in positions if (model, p) in by_key]
        if len(measured) >= 2 and measured[0] > 0:
            growth[model] = measured[-1] / measured[0]
        last = by_key.get((model, positions[-1]))
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {_fmt(growth.get(model), 2, 'x')} | "
                     f"{_fmt(last and last['cache_mb'], 1)} |")
    flat = [model for model, ratio in growth.items() if ratio <= FLAT]
    lines += ["", (f"Measured flat (last / first position within {FLAT:.2f}x): " + ", ".join(flat) + ".") if flat
              else f"No model's measured cost stayed within {FLAT:.2f}x from the first to the last position."]
    if figure:
        lines += ["", f"![ms per decoding step against position]({figure})"]
    return lines


def _axes_log(axis: Any, xlabel: str, ylabel: str, title: str, xs: set[int] | None = None) -> None:
    """Log-log axes; ``xs`` (the lengths or positions drawn) become the x ticks, written out."""
    from matplotlib.ticker import NullLocator

    axis.set_xscale("log", base=2)
    axis.set_yscale("log")
    if xs:
        axis.set_xticks(sorted(xs), [str(x) for x in sorted(xs)])
        axis.xaxis.set_minor_locator(NullLocator())
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(True, which="both", alpha=0.3)
    if axis.get_lines():
        axis.legend(fontsize=7)
    else:
        axis.text(0.5, 0.5, "not measured", transform=axis.transAxes, ha="center", va="center")


def plot_crossover(results: dict[str, Any], path: Path) -> Path | None:
    """Training and inference tokens/s, peak training and inference memory against length (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("train_tokens_per_second", "training tokens/s"), ("infer_tokens_per_second", "inference tokens/s"),
              ("train_memory_mb", "peak training memory (MB)"), ("infer_memory_mb", "peak inference memory (MB)"))
    figure, axes = plt.subplots(2, 2, figsize=(13, 9))
    drawn = False
    for axis, (key, title) in zip(axes.flat, panels, strict=True):
        lengths: set[int] = set()
        for label, by_length in _series(results).items():
            points = [(n, _value(results, row, key)) for n, row in sorted(by_length.items()) if not row.get("skipped")]
            points = [(n, v) for n, v in points if v]
            if points:
                axis.plot(*zip(*points, strict=True), marker="o", label=label)
                lengths.update(n for n, _ in points)
                drawn = True
        _axes_log(axis, "sequence length n", title, title, lengths)
    figure.tight_layout()
    if drawn:
        figure.savefig(path, dpi=120)
    plt.close(figure)
    return path if drawn else None


def plot_positions(results: dict[str, Any], path: Path) -> Path | None:
    """ms per decoding step against position, one line per model (log-log)."""
    rows = results.get("decode_by_position", [])
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 5))
    for model in dict.fromkeys(row["model"] for row in rows):
        points = sorted((row["position"], row["step_ms"]) for row in rows if row["model"] == model)
        axis.plot(*zip(*points, strict=True), marker="o", label=model)
    _axes_log(axis, "position (tokens already decoded)", f"ms per step (batch {rows[0]['batch']})",
              "cached decoding step against position", {row["position"] for row in rows})
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
