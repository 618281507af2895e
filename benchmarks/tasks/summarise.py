"""Collect ``runs/tasks/<task>/comparison.json`` files into one table: ``summarise.py RUNS_DIR OUT_STEM``.

Writes ``OUT_STEM.json`` (the rows) and ``OUT_STEM.md`` (task x model: test metric, parameters, train seconds).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

MODELS = ("transformer", "transevolve-fullFF", "transevolve-randomFF")
FOOTNOTE = ("\\* Answer exact match is teacher-forced: every answer token right given the reference prefix, chain of "
            "thought included, so with `format: cot` it mostly measures copying the answer out of the given chain; "
            "it is not the accuracy of a generated solution.\n")


def collect(runs: Path) -> list[dict]:
    rows = []
    for path in sorted(runs.glob("*/comparison.json")):
        data = json.loads(path.read_text())
        for row in data["rows"]:
            metric = next(key for key in row if key.startswith("test ") and not key.endswith(" std"))
            test = data["runs"][row["model"]][0]["test"]          # one seed: every metric of the test split
            rows.append({"task": data["task"], "model": row["model"], "metric": metric.removeprefix("test "),
                         "test": row[metric], "validation": row.get(f"validation {metric.removeprefix('test ')}"),
                         "exact_match": test.get("exact_match"), "test_metrics": test,
                         "parameters": row["parameters"], "steps": row["steps"],
                         "train_seconds": row["train seconds"], "tokens_per_second": row["tokens/s"],
                         "date": data["date"]})
    return rows


def markdown(rows: list[dict]) -> str:
    tasks = list(dict.fromkeys(row["task"] for row in rows))
    lines = ["| task | metric | steps | " + " | ".join(MODELS) + " |", "|---|---|---|" + "---|" * len(MODELS)]
    for task in tasks:
        by_model = {row["model"]: row for row in rows if row["task"] == task}
        first = next(iter(by_model.values()))
        cells = []
        for model in MODELS:
            row = by_model.get(model)
            if row is None:
                cells.append("-")
                continue
            score = f"{row['test']:.3f}" if row["exact_match"] is None else \
                f"{row['test']:.3f} / {row['exact_match']:.3f}"
            cells.append(f"{score} ({row['parameters'] / 1e3:,.0f}k, {row['train_seconds']:.0f} s)")
        metric = first["metric"] + (" / answer exact match*" if first["exact_match"] is not None else "")
        lines.append(f"| `{task}` | {metric} | {first['steps']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit("usage: summarise.py RUNS_DIR OUT_STEM")
    runs, stem = Path(sys.argv[1]), Path(sys.argv[2])
    rows = collect(runs)
    if not rows:
        raise SystemExit(f"no */comparison.json under {runs}; run benchmarks/tasks/run.sh first")
    stem.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    table = markdown(rows)
    stem.with_suffix(".md").write_text(
        "Test metric (parameters, training seconds) per task and model, one seed, best validation checkpoint; "
        "produced by `bash benchmarks/tasks/run.sh`.\n\n" + table + "\n" + FOOTNOTE)
    print(table)


if __name__ == "__main__":
    main()
