"""Collect ``runs/tasks/<task>/comparison.json`` files into one table: ``summarise.py RUNS_DIR OUT_STEM``.

Writes ``OUT_STEM.json`` (the rows) and ``OUT_STEM.md`` (task x model: test metric, parameters, train seconds).
Rows of tasks that are not under ``RUNS_DIR`` are kept from an existing ``OUT_STEM.json``, so re-running some
tasks (``run.sh arithmetic lis edit_distance``) updates their rows and leaves the others alone.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

MODELS = ("transformer", "transevolve-fullFF", "transevolve-randomFF")
GENERATED_NOTE = ("\u2020 Dynamic-programming tasks: `generated_accuracy` is the fraction of test problems the model "
                  "solves by greedy decoding from the problem alone, its final answer checked by the task's oracle; "
                  "`chain_valid` the fraction whose whole generated chain of thought is right too. In brackets, "
                  "the teacher-forced answer exact match (every answer token right given the reference chain), a "
                  "diagnostic that mostly measures copying the answer out of the given chain.\n")
LEGACY_NOTE = ("\\* Answer exact match is teacher-forced: every answer token right given the reference prefix, chain "
               "of thought included, so with `format: cot` it mostly measures copying the answer out of the given "
               "chain; it is not the accuracy of a generated solution.\n")


def collect(runs: Path) -> list[dict]:
    rows = []
    for path in sorted(runs.glob("*/comparison.json")):
        data = json.loads(path.read_text())
        for row in data["rows"]:
            metric = next(key for key in row if key.startswith("test ") and not key.endswith(" std"))
            test = data["runs"][row["model"]][0]["test"]          # one seed: every metric of the test split
            rows.append({"task": data["task"], "model": row["model"], "metric": metric.removeprefix("test "),
                         "test": row[metric], "validation": row.get(f"validation {metric.removeprefix('test ')}"),
                         "chain_valid": test.get("chain_valid"),
                         "teacher_forced_exact": test.get("teacher_forced_exact", test.get("exact_match")),
                         "test_metrics": test,
                         "parameters": row["parameters"], "steps": row["steps"],
                         "train_seconds": row["train seconds"], "tokens_per_second": row["tokens/s"],
                         "date": data["date"]})
    return rows


def _generated(row: dict) -> bool:
    return row["metric"] == "generated_accuracy"


def _legacy(row: dict) -> bool:
    """A row measured before generated-solution accuracy: its extra figure is the teacher-forced exact match."""
    return not _generated(row) and row.get("teacher_forced_exact", row.get("exact_match")) is not None


def _score(row: dict) -> str:
    if _generated(row):
        return f"{row['test']:.3f} / {row['chain_valid']:.3f} [{row['teacher_forced_exact']:.3f}]"
    if _legacy(row):
        return f"{row['test']:.3f} / {row.get('teacher_forced_exact', row.get('exact_match')):.3f}"
    return f"{row['test']:.3f}"


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
            cells.append(f"{_score(row)} ({row['parameters'] / 1e3:,.0f}k, {row['train_seconds']:.0f} s)")
        if _generated(first):
            metric = "generated_accuracy / chain_valid [teacher-forced exact]\u2020"
        else:
            metric = first["metric"] + (" / answer exact match*" if _legacy(first) else "")
        lines.append(f"| `{task}` | {metric} | {first['steps']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def merge(new: list[dict], previous: Path) -> list[dict]:
    """``new`` rows plus the rows of ``previous`` (an earlier OUT_STEM.json) for tasks ``new`` does not have,
    sorted by task."""
    kept = []
    if previous.is_file():
        tasks = {row["task"] for row in new}
        kept = [row for row in json.loads(previous.read_text()) if row["task"] not in tasks]
    return sorted(kept + new, key=lambda row: row["task"])


def notes(rows: list[dict]) -> str:
    text = ""
    if any(_generated(row) for row in rows):
        text += "\n" + GENERATED_NOTE
    if any(_legacy(row) for row in rows):
        text += "\n" + LEGACY_NOTE
    return text


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit("usage: summarise.py RUNS_DIR OUT_STEM")
    runs, stem = Path(sys.argv[1]), Path(sys.argv[2])
    rows = collect(runs)
    if not rows:
        raise SystemExit(f"no */comparison.json under {runs}; run benchmarks/tasks/run.sh first")
    rows = merge(rows, stem.with_suffix(".json"))
    stem.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    table = markdown(rows)
    stem.with_suffix(".md").write_text(
        "Test metric (parameters, training seconds) per task and model, one seed, best validation checkpoint; "
        "produced by `bash benchmarks/tasks/run.sh`.\n\n" + table + notes(rows))
    print(table)


if __name__ == "__main__":
    main()
