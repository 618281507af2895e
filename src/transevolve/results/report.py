"""RESULTS.md and its figures, from the cell records alone (no training).

``write_report(suite, out, path)`` reads ``OUT/cells/**.json`` and writes the report (default ``RESULTS.md`` at the
repository root for ``OUT = results``, else ``OUT/RESULTS.md``), ``OUT/summary.json`` (the tables and verdicts,
machine-readable) and the figures in ``OUT``: test metric against parameters, training FLOPs and wall time, the
learning curves, and TransEvolve's attention over depth (drawn by ``transevolve inspect``'s code from a trained
TransEvolve checkpoint in ``OUT/runs`` when one is there; otherwise the figure already in ``OUT`` is kept, or the
report says it is missing), and the side-by-side training speeds of ``OUT/speed/<task>.json`` (``transevolve
results speed``). Cells without a record show as ``not run``; records made with another configuration
than the suite's current one show as ``stale`` and are left out of the numbers. When the directory of the report
holds a ``README.md`` with the ``README_MARKERS`` block, that block is rewritten too (progress, headline tables,
verdicts, one figure), so the front page never drifts from the records.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transevolve.provenance import machine_summary
from transevolve.results import speed, stats
from transevolve.results.cells import changed_fields, collect, run_path
from transevolve.results.suite import Cell, Claim, Suite

#: Learning-curve rule for choosing a task's step budget: the first evaluation within this much (in metric units)
#: of the best validation value of the curve run ...
PLATEAU = 0.01
#: ... counts as converged unless it lies in the last quarter of the run (then: still improving at the cap).
LATE_FRACTION = 0.75
ATTENTION_FIGURE = "attention_over_depth.png"
#: The README block that ``write_report`` rewrites (when the README beside the report has both markers): first
#: line starts with the first marker, last line with the second.
README_MARKERS = ("<!-- results-headline", "<!-- /results-headline")


@dataclass
class RowCells:
    """The records of one row of one comparison on one task (``records``: current configuration only)."""

    task: str
    comparison: str
    row: str
    cell: Cell
    records: list[dict[str, Any]] = field(default_factory=list)
    stale: int = 0
    speed: dict[int, float] = field(default_factory=dict)

    def values(self, metric: str) -> dict[int, float]:
        """``{seed: value}`` of a claim metric (``headline``: the task's test metric); ``{round: tokens/s}`` of the
        side-by-side training speed."""
        if metric == speed.METRIC:
            return dict(self.speed)
        values = {}
        for record in self.records:
            value = metric_value(record, metric)
            if value is not None:
                values[int(record["seed"])] = value
        return values


def metric_value(record: dict[str, Any], metric: str) -> float | None:
    if metric == "headline":
        value = record["test"].get(record["metric"])
    elif metric == "parameters":
        value = record["parameters"]["total"]
    else:
        value = record.get(metric)
    return None if value is None else float(value)


def _mean_std(values: list[float]) -> tuple[float, float] | None:
    if not values:
        return None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def gather(suite: Suite, out: Path) -> tuple[dict[tuple[str, str, str], RowCells], dict[str, dict[str, Any]]]:
    """Every (task, comparison, row) with its current records, and each task's learning-curve record."""
    records = collect(suite, out)
    rows: dict[tuple[str, str, str], RowCells] = {}
    for task in suite.tasks:
        measured = speed.load_speed(out, task) if suite.tasks[task].steps is not None else None
        for comparison in suite.comparisons.values():
            for row in suite.rows(task, comparison.name):
                cell = suite.cell(task, comparison.name, row)
                entry = RowCells(task, comparison.name, row, cell)
                if suite.tasks[task].steps is not None:
                    entry.speed = speed.read_speed(suite, measured, task, comparison.name, row)
                    for seed in suite.seeds:
                        record = records.get((task, cell.name, seed))
                        if record is None:
                            continue
                        if changed_fields(record["config"], suite.run_config(cell, seed)):
                            entry.stale += 1
                        else:
                            entry.records.append(record)
                rows[(task, comparison.name, row)] = entry
    curves = {}
    for task in suite.tasks:
        cell = suite.curve_cell(task)
        record = records.get((task, cell.name, 0))
        if record is not None and not changed_fields(record["config"], suite._run_config(
                cell, 0, suite.tasks[task].curve_steps)):
            curves[task] = record
    return rows, curves


# -- claims ------------------------------------------------------------------------------------------------------
@dataclass
class Check:
    """One (task, comparison, pair) of a claim."""

    task: str
    comparison: str
    a: str
    b: str
    paired: stats.Paired | None
    margin: float
    verdict: str


def evaluate_claim(claim: Claim, rows: dict[tuple[str, str, str], RowCells]) -> tuple[str, list[Check]]:
    """The checks of a claim and its overall verdict (rules in :mod:`transevolve.results.stats`)."""
    checks = []
    for task in claim.tasks:
        for comparison in claim.comparisons:
            for a, b in claim.pairs:
                row_a, row_b = rows.get((task, comparison, a)), rows.get((task, comparison, b))
                pair = None
                if row_a is not None and row_b is not None:
                    pair = stats.paired(row_a.values(claim.metric), row_b.values(claim.metric))
                margin = stats.margin_of(claim.margin, claim.relative_margin, pair) if pair else claim.margin
                checks.append(Check(task, comparison, a, b, pair, margin,
                                    stats.verdict(pair, claim.expect, margin, claim.deterministic)))
    return stats.overall([c.verdict for c in checks]), checks


# -- learning curves ---------------------------------------------------------------------------------------------
def suggest_budget(curve: dict[str, Any]) -> tuple[int, str] | None:
    """(step, ``converged`` or ``budget-limited``) from a learning curve, or None without validations: the first
    evaluation within :data:`PLATEAU` of the curve's best value; budget-limited (the cap) when that step lies in the
    last quarter of the run."""
    points = [(s, v) for s, v in zip(curve["step"], curve["value"], strict=True) if v is not None]
    if not points:
        return None
    best = max(v for _, v in points)
    step = next(s for s, v in points if v >= best - PLATEAU)
    last = points[-1][0]
    return (step, "converged") if step <= LATE_FRACTION * last else (last, "budget-limited")


# -- cost --------------------------------------------------------------------------------------------------------
def _flops(resolved: dict[str, Any], fields: dict[str, Any], length: int) -> float | None:
    from transevolve.bench.flops import flops_per_token
    from transevolve.config import ModelConfig

    keep = {k: resolved[k] for k in ("kind", "vocab_size", "num_classes", "max_length") if k in resolved}
    try:
        return flops_per_token(ModelConfig(**{**keep, **fields}), length)
    except (ValueError, TypeError):
        return None


def estimate_seconds(suite: Suite, rows: dict[tuple[str, str, str], RowCells], curves: dict[str, dict[str, Any]]
                     ) -> dict[str, Any]:
    """Measured wall seconds and an estimate for the cells not run, per task and in total. A cell with finished
    seeds costs their mean; otherwise a finished run of the task (a cell, else its learning curve) scaled by steps
    and analytic FLOPs per token. Tasks whose budget is TODO are estimated at their cap (``curve_steps``): an upper
    bound. A task with no finished run cannot be estimated (``remaining_seconds`` None); the total then sums the
    tasks that can and names the others in ``unknown_tasks``."""
    tasks: dict[str, dict[str, Any]] = {}
    unique = _unique(rows)
    for task, spec in suite.tasks.items():
        entries = [e for e in unique if e.task == task]
        finished = [r for e in entries for r in e.records] + ([curves[task]] if task in curves else [])
        steps = spec.steps or spec.curve_steps
        remaining: float | None = 0.0
        pending = 0
        for entry in entries:
            missing = len(suite.seeds) - len(entry.records)
            if missing <= 0:
                continue
            pending += missing
            if remaining is None:
                continue
            if entry.records and spec.steps is not None:
                remaining += missing * statistics.fmean(r.get("wall_seconds", 0.0) for r in entry.records)
                continue
            if not finished:
                remaining = None
                continue
            ref = finished[0]
            fields = suite.model_fields(task, entry.row, entry.cell.width)
            mine = _flops(ref["resolved_model"], fields, ref["flops_sequence_length"])
            ratio = mine / ref["flops_per_token"] if mine and ref.get("flops_per_token") else 1.0
            remaining += missing * ref.get("wall_seconds", 0.0) * steps / max(ref["steps"], 1) * ratio
        if task not in curves and spec.steps is None:
            remaining = None                       # the learning-curve run comes first: nothing to scale from
        tasks[task] = {"cells": len(entries) * len(suite.seeds), "finished": sum(len(e.records) for e in entries),
                       "pending_cells": pending, "curve_run": task in curves,
                       "done_seconds": sum(r.get("wall_seconds", 0.0) for r in finished),
                       "remaining_seconds": remaining}
    known = [t for t in tasks.values() if t["remaining_seconds"] is not None]
    return {"done_seconds": sum(t["done_seconds"] for t in tasks.values()),
            "pending_cells": sum(t["pending_cells"] for t in tasks.values()),
            "remaining_seconds": sum(t["remaining_seconds"] for t in known) if known else None,
            "unknown_tasks": [name for name, t in tasks.items() if t["remaining_seconds"] is None],
            "tasks": tasks}


def _unique(rows: dict[tuple[str, str, str], RowCells]) -> list[RowCells]:
    """One entry per (task, cell): a row shared by two comparisons is one set of runs."""
    seen, unique = set(), []
    for entry in rows.values():
        if (entry.task, entry.cell) not in seen:
            seen.add((entry.task, entry.cell))
            unique.append(entry)
    return unique


# -- formatting --------------------------------------------------------------------------------------------------
def _num(value: float | None, like: float | None = None) -> str:
    """``value`` with 3 decimals below 10, 1 below 1000, none above; ``like``: use the decimals that number gets
    (a spread printed next to its mean: ``21.8 ± 0.6``, not ``21.8 ± 0.583``)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    scale = abs(value if like is None or math.isnan(like) else like)
    if scale >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3f}" if scale < 10 else f"{value:,.1f}"


def _mean_cell(values: list[float], decimals: str = "num") -> str:
    summary = _mean_std(values)
    if summary is None:
        return "not run"
    if decimals == "int":
        return f"{summary[0]:,.0f}"
    return f"{_num(summary[0])} ± {_num(summary[1], like=summary[0])}" if len(values) > 1 else _num(summary[0])


def _field_mean(records: list[dict[str, Any]], key: str) -> float | None:
    values = [float(r[key]) for r in records if r.get(key) is not None]
    return statistics.fmean(values) if values else None


def _hours(seconds: float | None) -> str:
    return "unknown" if seconds is None else f"{seconds / 3600:.2f} h"


# -- the report --------------------------------------------------------------------------------------------------
def write_report(suite: Suite, out: str | Path, path: str | Path | None = None) -> Path:
    """Write the report, ``OUT/summary.json`` and the figures from the records under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = Path(path) if path is not None else out / "RESULTS.md"
    rows, curves = gather(suite, out)
    claims = [(claim, *evaluate_claim(claim, rows)) for claim in suite.claims]
    cost = estimate_seconds(suite, rows, curves)
    figures = _figures(suite, out, rows, curves)
    link = os.path.relpath(out, path.parent)

    def image(name: str) -> str:
        return f"![{name}]({Path(link, name).as_posix()})"

    lines = [f"# Results: `{suite.source}`", "",
             "Generated by `transevolve results report` from the cell records in "
             f"`{Path(link, 'cells').as_posix()}/` (no training); `transevolve results run` trains what is missing. "
             f"Seeds {list(suite.seeds)}; test metrics of the best validation checkpoint; times are wall-clock on the "
             "machine in each record.", ""]
    if suite.description:
        lines += [suite.description, ""]
    lines += ["## Headline", "", "The test metric of each task (in the column heading): mean ± std over seeds; [n] "
              f"when fewer than {len(suite.seeds)} seeds are finished, - when none, n/a when the task does not train "
              "the row; @wN: the width that matches the Transformer's non-embedding parameters.", "",
              *headline_lines(suite, rows)]
    lines += _cost_lines(suite, rows, curves, cost)
    lines += ["## Verdict rules", "", *_rule_lines(), ""]
    lines += ["## Claims", "", "| claim | source | verdict | checks |", "|---|---|---|---|"]
    lines += [f"| {claim.id} | {claim.source} | **{verdict}** | {_check_counts(checks)} |"
              for claim, verdict, checks in claims]
    lines.append("")
    for claim, verdict, checks in claims:
        lines += _claim_lines(claim, verdict, checks)
    lines += ["## Tasks", ""]
    for task in suite.tasks:
        lines += _task_lines(suite, task, rows, curves.get(task))
        lines += _speed_lines(suite, out, task, rows)
    lines += ["## Figures", ""]
    lines += ["Colour: the row; marker: the comparison (a cell two comparisons share is drawn once); error bars: std "
              "over seeds.", ""]
    for name, caption in (("metric_vs_parameters.png", "Test metric against parameters (mean ± std over seeds)"),
                          ("metric_vs_flops.png", "Test metric against training FLOPs (analytic)"),
                          ("metric_vs_time.png", "Test metric against wall time of a cell on this machine"),
                          ("learning_curves.png", "Validation curves (mean over seeds; dashed: the learning-curve "
                                                  "run that chose the step budget)")):
        lines += [f"{caption}:", "", image(name) if name in figures else "(no finished cell yet)", ""]
    lines += ["TransEvolve's attention over depth (`transevolve inspect`: softmax(A0), then each layer; the "
              "Transformer's layers below it):", ""]
    lines += [image(ATTENTION_FIGURE) if (out / ATTENTION_FIGURE).is_file() else
              "missing: no trained TransEvolve checkpoint in "
              f"`{Path(link, 'runs').as_posix()}/` (train one with `transevolve results run`).", ""]
    path.write_text("\n".join(lines) + "\n")
    summary = {
        "suite": suite.source, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "seeds": list(suite.seeds),
        "cost": cost,
        "claims": [{"id": c.id, "verdict": v, "checks": [
            {"task": k.task, "comparison": k.comparison, "a": k.a, "b": k.b, "verdict": k.verdict,
             "margin": k.margin, "n": k.paired.n if k.paired else 0,
             "mean_difference": k.paired.mean if k.paired else None,
             "stderr": k.paired.stderr if k.paired else None} for k in checks]} for c, v, checks in claims],
        "rows": [{"task": e.task, "comparison": e.comparison, "row": e.row, "cell": e.cell.name, "width": e.cell.width,
                  "seeds": [r["seed"] for r in e.records], "stale": e.stale,
                  "test": e.values("headline"), speed.METRIC: e.speed} for e in rows.values()],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    readme = path.parent / "README.md"
    if readme.is_file():
        records = Path(os.path.relpath(out, readme.parent))
        refresh_readme(readme, readme_lines(suite, rows, claims, cost, Path(os.path.relpath(path, readme.parent)),
                                            records), source=f"{records.as_posix()}/cells")
    return path


def _progress(cost: dict[str, Any]) -> tuple[int, int]:
    """(cells finished, cells in all) over every task of ``estimate_seconds``'s result."""
    return (sum(t["finished"] for t in cost["tasks"].values()), sum(t["cells"] for t in cost["tasks"].values()))


def _check_counts(checks: list[Check]) -> str:
    counts = {v: sum(c.verdict == v for c in checks) for v in (stats.HELD, stats.NOT_HELD, stats.CANNOT_TELL,
                                                               stats.NOT_RUN)}
    return ", ".join(f"{n} {v}" for v, n in counts.items() if n)


def readme_lines(suite: Suite, rows: dict[tuple[str, str, str], RowCells],
                 claims: list[tuple[Claim, str, list[Check]]], cost: dict[str, Any], report: Path,
                 out: Path) -> list[str]:
    """The README's results block: progress, the headline tables, the verdict per claim and the figure of metric
    against parameters (``report``, ``out``: the report and the output directory, relative to the README)."""
    finished, total = _progress(cost)
    lines = [f"{finished} of {total} cells finished ({_hours(cost['done_seconds'])} measured, "
             f"{_hours(cost['remaining_seconds'])} estimated for the rest); the per-task tables, paired comparisons, "
             f"the reading of each claim and every figure are in [`{report.as_posix()}`]({report.as_posix()}). "
             f"Test metric, mean ± std over seeds; [n]: seeds finished when fewer than {len(suite.seeds)}; -: not "
             "run yet; n/a: not trained on that task; @wN: the width that matches the Transformer's non-embedding "
             "parameters.", "", *headline_lines(suite, rows)]
    lines += ["| claim | verdict | checks |", "|---|---|---|"]
    lines += [f"| {claim.id} | **{verdict}** | {_check_counts(checks)} |" for claim, verdict, checks in claims]
    figure = out / "metric_vs_parameters.png"
    return [*lines, "", f"![test metric against parameters]({figure.as_posix()})"]


def refresh_readme(readme: Path, block: list[str], source: str | None = None) -> bool:
    """Replace the lines between ``README_MARKERS`` in ``readme`` with ``block``; False (file untouched) when the
    markers are not both there, in order, or the first marker line does not name ``source`` (the records the block
    is made from, e.g. ``results/cells``: a report of other records leaves the README alone)."""
    lines = readme.read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(README_MARKERS[0])]
    ends = [i for i, line in enumerate(lines) if line.startswith(README_MARKERS[1])]
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        return False
    if source is not None and source not in lines[starts[0]]:
        return False
    updated = [*lines[:starts[0] + 1], *block, *lines[ends[0]:]]
    if updated != lines:
        readme.write_text("\n".join(updated) + "\n")
    return True


def headline_lines(suite: Suite, rows: dict[tuple[str, str, str], RowCells]) -> list[str]:
    """The headline table: one line per row, one column per task, the test metric as mean ± std over the finished
    seeds (their number in brackets when fewer than the suite's), per comparison."""
    lines = []
    tasks = list(suite.tasks)
    for comparison in suite.comparisons.values():
        names = list(dict.fromkeys(r for t in tasks for r in suite.rows(t, comparison.name)))
        header = " | ".join(f"{t} ({suite.tasks[t].metric})" for t in tasks)
        lines += [f"**{comparison.name}**", "", f"| row | {header} |", "|---" * (len(tasks) + 1) + "|"]
        for row in names:
            cells = []
            for task in tasks:
                entry = rows.get((task, comparison.name, row))
                if entry is None:
                    cells.append("n/a")
                    continue
                values = list(entry.values("headline").values())
                text = _mean_cell(values) if values else "-"
                if values and len(values) < len(suite.seeds):
                    text += f" [{len(values)}]"
                if comparison.match_parameters and entry.cell.width != suite.task_width(task, row):
                    text += f" @w{entry.cell.width}"
                cells.append(text)
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _rule_lines() -> list[str]:
    return [
        f"Paired over seeds: per seed `d = metric(A) - metric(B)` (same seed: same data order and initialisation "
        f"stream); `n` seeds, mean `d`, standard error `se = std(d) / sqrt(n)`, paired `t = d / se`. With margin `m` "
        f"(0 unless the claim states one) and k = {stats.STANDARD_ERRORS:g} standard errors:",
        "",
        "- *higher* (A better): **held** if `d - k se > m`, **not held** if `d + k se <= m`;",
        "- *lower*: **held** if `d + k se < -m`, **not held** if `d - k se >= -m`;",
        "- *comparable* (within `m`): **held** if `-m < d - k se` and `d + k se < m`, **not held** if "
        "`d - k se >= m` or `d + k se <= -m`;",
        f"- otherwise **cannot tell at this scale**, and always with fewer than {stats.MIN_SEEDS} seeds, except for "
        "metrics that do not depend on the seed (parameters, analytic FLOPs: `se = 0`, one seed decides).",
        "",
        "A claim is **held** when every check is held, **not held** when any check is not held, else **cannot tell "
        "at this scale** (a check not run counts as undecided). With 3 seeds, `|t| > 2` is a screening rule, not a "
        "significance test (the 5% two-sided critical t with 2 degrees of freedom is 4.30); the `same sign` column "
        "says whether every seed agrees.",
    ]


def _cost_lines(suite: Suite, rows: dict[tuple[str, str, str], RowCells], curves: dict[str, dict[str, Any]],
                cost: dict[str, Any]) -> list[str]:
    finished, total = _progress(cost)
    stale = sum(e.stale for e in _unique(rows))
    unknown = cost["unknown_tasks"]
    estimate = _hours(cost["remaining_seconds"])
    if unknown and cost["remaining_seconds"] is not None:
        estimate = f"at least {estimate} (not counting {', '.join(unknown)}: no finished run to scale from)"
    lines = ["## Status and cost", "",
             f"{finished} of {total} cells finished ({stale} stale), {len(curves)} of {len(suite.tasks)} "
             f"learning-curve runs. Measured so far: {_hours(cost['done_seconds'])} of wall time. Estimated for the "
             f"{cost['pending_cells']} cells not run: {estimate} (per task below: from finished seeds of the same "
             "cell, else a finished run of the task scaled by steps and FLOPs per token; tasks whose budget is TODO "
             "at their cap, an upper bound). `transevolve results run --max-hours H` runs in pieces: no cell, and no "
             "segment of `train.eval_every` steps of a cell, starts after H hours; the next invocation continues "
             "from the checkpoint.", ""]
    lines += ["| task | metric | steps | budget | learning curve (Transformer, seed 0) | cells finished | measured "
              "| estimated left |", "|---|---|---|---|---|---|---|---|"]
    for task, spec in suite.tasks.items():
        curve = curves.get(task)
        suggestion = suggest_budget(curve["learning_curve"]) if curve else None
        if curve is None:
            measured = f"not run (cap {spec.curve_steps} steps)"
        elif suggestion is None:
            measured = "no validation recorded"
        else:
            measured = (f"{suggestion[1]} at step {suggestion[0]} of {curve['steps']} "
                        f"(best validation {curve['learning_curve']['metric']} "
                        f"{_num(max(v for v in curve['learning_curve']['value'] if v is not None))})")
        steps = "TODO" if spec.steps is None else str(spec.steps)
        own = cost["tasks"][task]
        lines.append(f"| {task} | {spec.metric} | {steps} | {spec.budget} | {measured} | "
                     f"{own['finished']} / {own['cells']} | {_hours(own['done_seconds'])} | "
                     f"{_hours(own['remaining_seconds'])} |")
    lines += ["", f"Budget rule: the first validation within {PLATEAU} of the curve's best value is where it has "
              f"converged, unless it comes after {LATE_FRACTION:.0%} of the run: then the curve is still improving "
              "at the cap and the budget is the cap (budget-limited). The curve run uses the cosine schedule of its "
              "cap, so the budget it suggests is a reading of that curve, not a separate run.", ""]
    return lines


def _claim_lines(claim: Claim, verdict: str, checks: list[Check]) -> list[str]:
    margin = (f"{claim.margin:g}" if claim.margin else f"{claim.relative_margin:.0%} of B's mean"
              if claim.relative_margin else "")
    wanted = {"higher": f"higher than B{' by more than ' + margin if margin else ''}",
              "lower": f"lower than B{' by more than ' + margin if margin else ''}",
              "comparable": f"within {margin}{'' if claim.relative_margin else ' of B'}"}[claim.expect]
    lines = [f"### {claim.id}: **{verdict}**", "", f"> {claim.quote}", "", f"*{claim.source}.* Checked: "
             f"`{claim.metric}` of A {wanted}, comparisons {', '.join(claim.comparisons)}.", ""]
    if claim.note:
        lines += [claim.note, ""]
    lines += ["| task | comparison | A | B | n | mean A | mean B | d ± se | t | same sign | verdict |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in checks:
        p = c.paired
        if p is None:
            lines.append(f"| {c.task} | {c.comparison} | {c.a} | {c.b} | 0 | - | - | - | - | - | {c.verdict} |")
            continue
        t = "-" if p.t is None else f"{p.t:.2f}"
        lines.append(f"| {c.task} | {c.comparison} | {c.a} | {c.b} | {p.n} | {_num(p.mean_a)} | {_num(p.mean_b)} | "
                     f"{_num(p.mean)} ± {_num(p.stderr, like=p.mean)} | {t} | {'yes' if p.sign_consistent else 'no'} | "
                     f"{c.verdict} |")
    held = sum(c.verdict == stats.HELD for c in checks)
    against = sum(c.verdict == stats.NOT_HELD for c in checks)
    missing = sum(c.verdict == stats.NOT_RUN for c in checks)
    lines += ["", f"Reading: **{verdict}**: {held} of {len(checks)} checks held, {against} not held, "
              f"{len(checks) - held - against - missing} undecided, {missing} not run.", ""]
    return lines


def _task_lines(suite: Suite, task: str, rows: dict[tuple[str, str, str], RowCells],
                curve: dict[str, Any] | None) -> list[str]:
    spec = suite.tasks[task]
    options = spec.base["task"].get("options") or {}
    steps = "TODO (learning curve first)" if spec.steps is None else f"{spec.steps} steps ({spec.budget})"
    lines = [f"### {task}", "", f"Task `{spec.task_name}` with options `{json.dumps(options)}`; headline test metric "
             f"`{spec.metric}`; {steps}." + (f" {spec.note}" if spec.note else ""), ""]
    for comparison in suite.comparisons.values():
        title = comparison.description or comparison.name
        lines += [f"**{comparison.name}**: {title}", "",
                  "| row | width | parameters | FLOPs/token | seeds | validation | test | train s | wall s | "
                  "train tok/s | inference tok/s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        reference = suite.parameters.get((task, comparison.reference, suite.widths[(task, comparison.name,
                                                                                    comparison.reference)])) \
            if comparison.reference else None
        for row in suite.rows(task, comparison.name):
            entry = rows[(task, comparison.name, row)]
            records = entry.records
            width = str(entry.cell.width)
            if comparison.match_parameters and reference:
                counted = suite.parameters[(task, row, entry.cell.width)]
                width += f" ({counted / reference - 1:+.1%} non-emb.)"
            validation = [r["validation"].get(r["metric"]) for r in records if r["validation"].get(r["metric"])
                          is not None]
            test = list(entry.values("headline").values())
            note = f" ({entry.stale} stale)" if entry.stale else ""
            if not records:
                lines.append(f"| {row} | {width} | - | - | 0{note} | not run | not run | - | - | - | - |")
                continue
            first = records[0]
            lines.append(
                f"| {row} | {width} | {first['parameters']['total']:,} | {first['flops_per_token'] / 1e6:.2f} M | "
                f"{len(records)}{note} | {_mean_cell(validation)} | {_mean_cell(test)} | "
                f"{_num(_field_mean(records, 'train_seconds'))} | {_num(_field_mean(records, 'wall_seconds'))} | "
                f"{_mean_cell([r['train_tokens_per_second'] for r in records], 'int')} | "
                f"{_mean_cell([r['inference_tokens_per_second'] for r in records], 'int')} |")
        lines.append("")
    return lines


def _speed_lines(suite: Suite, out: Path, task: str, rows: dict[tuple[str, str, str], RowCells]) -> list[str]:
    """The side-by-side training speed of the task's rows (:mod:`transevolve.results.speed`), when measured."""
    record = speed.load_speed(out, task)
    if record is None:
        return []
    path = speed.speed_path(out, task)
    comparison = record["comparison"]
    measured = [(row, rows[(task, comparison, row)].speed) for row in suite.rows(task, comparison)
                if (task, comparison, row) in rows and rows[(task, comparison, row)].speed]
    if not measured:
        return [f"Training speed side by side: `{path.name}` was measured with another configuration (stale); "
                f"`transevolve results speed --task {task}` measures it again.", ""]
    reference = dict(measured).get("transformer")
    machine = record.get("machine", {})
    lines = [f"**Training speed side by side** ({comparison}; `transevolve results speed --task {task}`): "
             f"{record['warmup']} untimed + {record['steps']} timed training steps per row and round, the rows "
             f"interleaved in one process, {record['date']}, {machine_summary(machine)}. Ratio: the median of the "
             "per-round ratios to the Transformer of the same round.", "",
             "| row | tokens/s (median of rounds) | rounds | min - max | vs transformer |", "|---|---|---|---|---|"]
    for row, values in measured:
        ratio = "-"
        if reference and row != "transformer":
            shared = sorted(set(values) & set(reference))
            if shared:
                ratio = f"{statistics.median(values[r] / reference[r] for r in shared):.2f}x"
        lines.append(f"| {row} | {speed.summary(values):,.0f} | {len(values)} | {min(values.values()):,.0f} - "
                     f"{max(values.values()):,.0f} | {ratio} |")
    return [*lines, ""]


# -- figures -----------------------------------------------------------------------------------------------------
def _row_colours(suite: Suite) -> dict[str, Any]:
    """One colour per row, the same in every panel and figure (tab10, or tab20 beyond ten rows)."""
    names = list(dict.fromkeys(r for t in suite.tasks for c in suite.comparisons for r in suite.rows(t, c)))
    from matplotlib import colormaps

    palette = colormaps["tab10" if len(names) <= 10 else "tab20"].colors
    return {row: palette[i % len(palette)] for i, row in enumerate(names)}


def _finish_figure(fig: Any, axes: list[Any], handles: dict[str, Any], path: Path) -> None:
    """Mark empty panels, put one legend for all panels right of them, save at 110 dpi and close."""
    for ax in axes:
        if not ax.has_data():
            ax.text(0.5, 0.5, "no finished cell yet", ha="center", va="center", transform=ax.transAxes,
                    color="grey")
            ax.set_xticks([])
            ax.set_yticks([])
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="center left", bbox_to_anchor=(1.0, 0.5),
                   fontsize=7, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)


def _figures(suite: Suite, out: Path, rows: dict[tuple[str, str, str], RowCells],
             curves: dict[str, dict[str, Any]]) -> list[str]:
    """Draw the figures that have data; returns their file names. Colour: the row; marker: the comparison (a cell
    that two comparisons share is drawn once, with the first comparison's marker)."""
    if not any(e.records for e in rows.values()) and not curves:
        return []
    from matplotlib.lines import Line2D
    from matplotlib.ticker import NullFormatter

    from transevolve.train.plots import _matplotlib

    plt = _matplotlib()
    colours = _row_colours(suite)
    names = []
    tasks = list(suite.tasks)
    markers = dict(zip(suite.comparisons, "osD^v", strict=False))
    for name, key, label in (("metric_vs_parameters.png", "parameters", "parameters (total)"),
                             ("metric_vs_flops.png", "training_flops", "training FLOPs"),
                             ("metric_vs_time.png", "wall_seconds", "wall seconds per cell")):
        fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), squeeze=False)
        handles: dict[str, Any] = {}
        used: set[str] = set()
        for ax, task in zip(axes[0], tasks, strict=True):
            drawn: set[str] = set()
            for comparison in suite.comparisons.values():
                for row in suite.rows(task, comparison.name):
                    entry = rows[(task, comparison.name, row)]
                    xs = [metric_value(r, key) for r in entry.records]
                    ys = list(entry.values("headline").values())
                    if not ys or None in xs or entry.cell.name in drawn:
                        continue
                    drawn.add(entry.cell.name)
                    used.add(comparison.name)
                    x, (y, err) = statistics.fmean(xs), _mean_std(ys)  # type: ignore[misc]
                    ax.errorbar(x, y, yerr=err, fmt=markers[comparison.name], color=colours[row], capsize=3,
                                markersize=6)
                    handles.setdefault(row, Line2D([], [], color=colours[row], marker="o", linestyle=""))
            ax.set(xlabel=label, ylabel=f"test {suite.tasks[task].metric}", title=task)
            if ax.has_data():
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())
        for comparison in suite.comparisons:
            if comparison in used:
                handles[comparison] = Line2D([], [], color="black", marker=markers[comparison], linestyle="",
                                             markerfacecolor="none")
        _finish_figure(fig, list(axes[0]), handles, out / name)
        names.append(name)
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), squeeze=False)
    handles = {}
    first = next(iter(suite.comparisons.values()))
    for ax, task in zip(axes[0], tasks, strict=True):
        metric = None
        for row in suite.rows(task, first.name):
            entry = rows[(task, first.name, row)]
            curves_of_row = [r["learning_curve"] for r in entry.records if r["learning_curve"]["step"]]
            if not curves_of_row:
                continue
            metric = curves_of_row[0]["metric"]
            steps = curves_of_row[0]["step"]
            values = []
            for step in steps:
                at_step = [v for c in curves_of_row for s, v in zip(c["step"], c["value"], strict=True)
                           if s == step and v is not None]
                values.append(statistics.fmean(at_step) if at_step else math.nan)
            handles[row] = ax.plot(steps, values, "o-", markersize=2, linewidth=1, color=colours[row])[0]
        if task in curves:
            curve = curves[task]["learning_curve"]
            metric = metric or curve["metric"]
            handles["learning-curve run"] = ax.plot(curve["step"], curve["value"], "--", color="grey")[0]
        ax.set(xlabel="step", ylabel=f"validation {metric or ''}", title=task)
    _finish_figure(fig, list(axes[0]), handles, out / "learning_curves.png")
    names.append("learning_curves.png")
    _attention_figure(suite, out)
    return names


def _attention_figure(suite: Suite, out: Path) -> Path | None:
    """``inspect``'s attention figure for the first task with trained TransEvolve and Transformer checkpoints
    (seed 0 of the first comparison) in ``OUT/runs``; None (an older figure stays) when there are none."""
    first = next(iter(suite.comparisons.values()))
    for task in suite.tasks:
        evolved = [row for row in suite.rows(task, first.name)
                   if suite.model_fields(task, row).get("attention") == "evolved"]
        pair = [suite.cell(task, first.name, row) for row in [*evolved[:1], suite.curve_row]]
        directories = [run_path(out, cell, 0) for cell in pair]
        if len(pair) == 2 and all((d / "checkpoints" / "best").exists() for d in directories):
            return _draw_attention(directories, out / ATTENTION_FIGURE)
    return None


def _draw_attention(directories: list[Path], path: Path) -> Path:
    from transevolve.checkpoint import load_model
    from transevolve.inspect_attention import attention_maps, plot_attention
    from transevolve.tasks import collate, get_task
    from transevolve.train.config import load_saved_run

    run = load_saved_run(directories[0])
    data = get_task(run.task.name, **run.task.options).load(run.task.seed)
    example = {k: (v[:48] if v.dim() == 1 else v) for k, v in data.splits["validation"][0].items()}
    panels = []
    for directory in directories:
        model = load_model(directory / "checkpoints" / "best")
        panels.append((model.config.name or model.config.attention, attention_maps(model, collate([example]))))
    return plot_attention(panels, path)
