"""``transevolve study``: the width a model needs to solve a dynamic-programming task, against the problem size.

Yang et al. (ICML 2024, "Do Efficient Transformers Really Save Computation?") argue that Sparse and Linear
Transformers need a model width that grows with the problem size to solve dynamic programming with a chain of
thought, while the standard Transformer does not. A study file names the tasks and their problem sizes, the models
(all of the same depth), a grid of widths, the seeds, a step budget and an accuracy threshold::

    threshold: 0.9                       # generated-solution accuracy to reach (test split, mean over seeds)
    metric: generated_accuracy
    seeds: [0, 1]
    widths: [32, 64, 128, 256]           # tried in this order; num_heads fixed, so head width grows with width
    num_heads: 2
    stop_at_threshold: true              # the first width that reaches the threshold ends a (task, size, model)
    prune_seeds: true                    # a width that can no longer reach the threshold skips its other seeds
    model: {layers_per_block: 3, num_blocks: 1, dropout: 0.0}           # shared by every cell
    train: {max_steps: 2000, batch_size: 64}                            # shared by every cell
    models:
      transformer: {attention: softmax, ff_type: full}
      linear: {attention: linear, ff_type: full}
    tasks:
      lis:
        base: ../lis/base.yaml           # the task's run file (relative to the study file)
        options: {num_train: 20000}      # task options for every size (optional)
        size: n                          # the task option that sets the problem size
        sizes: [8, 16, 32]
        models: {sparse: {sparse_block_size: [4, 6, 8]}}   # per-model fields; a list gives one value per size
        train: {max_steps: 4000}         # this task's training fields over the shared ones (optional)

Seeds run in order; with ``prune_seeds`` a width stops its seeds as soon as its mean could not reach the threshold
even if every remaining seed scored 1.0 (two seeds, threshold 0.9: a first seed below 0.8), so a width that fails
costs one run, not two. Such a width is reported as ``pruned`` (fewer seeds); it could never be the required width.

Every cell (task, size, model, width, seed) is an ordinary training run (``OUT/<task>/<size option>-<size>/
<model>/width-<w>/seed-<s>``) followed by ``cell.json`` (configuration, git commit, steps, time, parameters,
validation and test metrics). Finished cells are skipped, so an interrupted study resumes where it stopped (a run
stopped half-way resumes from its checkpoint). ``study.json`` gathers the cells and the required widths;
``report.md`` has the tables and ``required_width.png`` / ``accuracy_vs_width.png`` the plots.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transevolve.compare import preset_path
from transevolve.config import ModelConfig
from transevolve.errors import ConfigError
from transevolve.provenance import git_commit, write_json_atomically
from transevolve.train.config import RunConfig, apply_dotted, load_yaml_with_base, run_config_from_dict

DEFAULT_STUDY = "study/dp-width.yaml"
QUICK_STUDY = "study/dp-width-quick.yaml"
_STUDY_KEYS = {"threshold", "metric", "seeds", "widths", "num_heads", "stop_at_threshold", "prune_seeds", "model",
               "train", "models", "tasks", "description"}


@dataclass(frozen=True)
class StudyTask:
    """One task of a study: its run file, the option that sets the problem size, the sizes, per-model fields."""

    name: str
    base: dict[str, Any]
    size_option: str
    sizes: tuple[int, ...]
    model_fields: dict[str, dict[str, Any]] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Study:
    """A parsed study file (see the module docstring)."""

    source: str
    threshold: float
    metric: str
    seeds: tuple[int, ...]
    widths: tuple[int, ...]
    num_heads: int
    stop_at_threshold: bool
    model: dict[str, Any]
    train: dict[str, Any]
    models: dict[str, dict[str, Any]]
    tasks: dict[str, StudyTask]
    prune_seeds: bool = False

    def unreachable(self, values: list[float]) -> bool:
        """True when seeds scoring ``values`` can no longer give a mean at the threshold, whatever the rest score."""
        remaining = len(self.seeds) - len(values)
        return remaining > 0 and (sum(values) + remaining) / len(self.seeds) < self.threshold

    def run_config(self, task: str, size: int, model: str, width: int, seed: int,
                   overrides: list[str] | None = None) -> RunConfig:
        """The training run of one cell."""
        spec = self.tasks[task]
        index = spec.sizes.index(size)
        data = json.loads(json.dumps(spec.base))                     # a deep copy of plain YAML data
        options = data.setdefault("task", {}).setdefault("options", {})
        options.update(spec.options)
        options[spec.size_option] = size
        per_size = {k: (v[index] if isinstance(v, list) else v) for k, v in spec.model_fields.get(model, {}).items()}
        data["model"] = {**(data.get("model") or {}), **self.model, **self.models[model], **per_size,
                         "name": model, "width": width, "num_heads": self.num_heads,
                         "time_dim": width // self.num_heads}
        data["train"] = {**(data.get("train") or {}), **self.train, **spec.train, "seed": seed}
        return run_config_from_dict(apply_dotted(data, overrides or []))


def _positive_ints(value: Any, what: str, source: Path) -> tuple[int, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, int) and v > 0 for v in value):
        raise ConfigError(f"{source}: {what} must be a non-empty list of positive integers, got {value!r}")
    return tuple(value)


def load_study(name: str = DEFAULT_STUDY, only_tasks: list[str] | None = None,
               only_models: list[str] | None = None, seeds: int | None = None) -> Study:
    """Read and check a study file (a path or a packaged preset such as ``study/dp-width-quick.yaml``)."""
    path = preset_path(name)
    data = load_yaml_with_base(path)
    unknown = sorted(set(data) - _STUDY_KEYS - {"base"})
    if unknown:
        raise ConfigError(f"{path}: unknown keys {unknown}; a study file has {sorted(_STUDY_KEYS)}")
    threshold = data.get("threshold", 0.9)
    if not isinstance(threshold, int | float) or not 0 < threshold <= 1:
        raise ConfigError(f"{path}: threshold must be in (0, 1], got {threshold!r}")
    widths = _positive_ints(data.get("widths"), "widths", path)
    num_heads = data.get("num_heads", 2)
    if not isinstance(num_heads, int) or num_heads < 1 or any(w % num_heads for w in widths):
        raise ConfigError(f"{path}: num_heads ({num_heads!r}) must be a positive integer dividing every width "
                          f"{list(widths)}")
    file_seeds = data.get("seeds", [0])
    if not isinstance(file_seeds, list) or not file_seeds or not all(isinstance(s, int) and s >= 0
                                                                     for s in file_seeds):
        raise ConfigError(f"{path}: seeds must be a non-empty list of non-negative integers, got {file_seeds!r}")
    file_seeds = tuple(range(seeds)) if seeds else tuple(file_seeds)
    models = data.get("models")
    if not isinstance(models, dict) or not models or not all(isinstance(v, dict) for v in models.values()):
        raise ConfigError(f"{path}: models must map a name to model fields, e.g. {{transformer: {{attention: "
                          "softmax}}}")
    if only_models:
        missing = sorted(set(only_models) - set(models))
        if missing:
            raise ConfigError(f"unknown model(s) {missing}; {path} defines {list(models)}")
        models = {k: v for k, v in models.items() if k in only_models}
    raw_tasks = data.get("tasks")
    if not isinstance(raw_tasks, dict) or not raw_tasks:
        raise ConfigError(f"{path}: tasks must map a task name to {{base, size, sizes}}")
    if only_tasks:
        missing = sorted(set(only_tasks) - set(raw_tasks))
        if missing:
            raise ConfigError(f"unknown task(s) {missing}; {path} defines {list(raw_tasks)}")
        raw_tasks = {k: v for k, v in raw_tasks.items() if k in only_tasks}
    tasks = {}
    for task_name, spec in raw_tasks.items():
        if not isinstance(spec, dict) or not {"base", "size", "sizes"} <= set(spec):
            raise ConfigError(f"{path}: tasks.{task_name} needs base (a run file), size (a task option) and sizes")
        sizes = _positive_ints(spec["sizes"], f"tasks.{task_name}.sizes", path)
        fields = spec.get("models") or {}
        extra = sorted(set(spec) - {"base", "size", "sizes", "models", "options", "train"})
        if extra:
            raise ConfigError(f"{path}: tasks.{task_name} has unknown keys {extra} "
                              "(known: base, size, sizes, models, options, train)")
        for key in ("options", "train"):
            if not isinstance(spec.get(key) or {}, dict):
                raise ConfigError(f"{path}: tasks.{task_name}.{key} must map field names to values, "
                                  f"got {spec[key]!r}")
        stray = sorted(set(fields) - set(data["models"]))
        if stray:
            raise ConfigError(f"{path}: tasks.{task_name}.models names {stray}, not in models {list(data['models'])}")
        for model_name, model_fields in fields.items():
            for key, value in (model_fields or {}).items():
                if isinstance(value, list) and len(value) != len(sizes):
                    raise ConfigError(f"{path}: tasks.{task_name}.models.{model_name}.{key} lists {len(value)} "
                                      f"values for {len(sizes)} sizes")
        tasks[task_name] = StudyTask(task_name, load_yaml_with_base(path.parent / spec["base"]), str(spec["size"]),
                                     sizes, {k: dict(v or {}) for k, v in fields.items()},
                                     dict(spec.get("options") or {}), dict(spec.get("train") or {}))
    source = str(path) if Path(name).is_file() else name            # a packaged preset: its short name
    study = Study(source, float(threshold), str(data.get("metric", "generated_accuracy")), file_seeds, widths,
                  num_heads, bool(data.get("stop_at_threshold", True)), dict(data.get("model") or {}),
                  dict(data.get("train") or {}), {k: dict(v) for k, v in models.items()}, tasks,
                  bool(data.get("prune_seeds", False)))
    for task_name, spec in study.tasks.items():                    # build every configuration once: errors now
        for size in spec.sizes:
            for model_name in study.models:
                for width in study.widths:
                    try:
                        run = study.run_config(task_name, size, model_name, width, study.seeds[0])
                        ModelConfig(kind="decoder", vocab_size=16, **run.model)
                    except (ValueError, TypeError) as error:
                        raise ConfigError(f"{path}: cell {task_name} {spec.size_option}={size} {model_name} width "
                                          f"{width}: {error}") from None
    return study


# -- running -----------------------------------------------------------------------------------------------------
def cell_dir(out: Path, study: Study, task: str, size: int, model: str, width: int, seed: int) -> Path:
    return out / task / f"{study.tasks[task].size_option}-{size}" / model / f"width-{width}" / f"seed-{seed}"


def run_cell(study: Study, out: Path, task: str, size: int, model: str, width: int, seed: int,
             overrides: list[str] | None = None, quiet: bool = False) -> dict[str, Any] | None:
    """Train and evaluate one cell, or read it if finished; None when the run was interrupted."""
    from transevolve.train.loop import train

    directory = cell_dir(out, study, task, size, model, width, seed)
    record = directory / "cell.json"
    if record.is_file():
        return json.loads(record.read_text())
    config = study.run_config(task, size, model, width, seed, overrides)
    resume = directory.is_dir() and any(directory.iterdir())
    result = train(config, directory, quiet=quiet, resume=resume)
    if result.interrupted:
        return None
    cell = {"task": task, "size_option": study.tasks[task].size_option, "size": size, "model": model,
            "width": width, "seed": seed, "metric": study.metric,
            "test": result.test, "validation": result.validation, "parameters": result.parameters,
            "steps": result.steps, "train_seconds": result.train_seconds,
            "tokens_per_second": result.tokens_per_second, "git_commit": git_commit(),
            "date": time.strftime("%Y-%m-%d %H:%M"), "config": config.to_dict()}
    write_json_atomically(record, cell)
    return cell


def _groups(study: Study) -> Iterator[tuple[str, int, str]]:
    for task, spec in study.tasks.items():
        for size in spec.sizes:
            for model in study.models:
                yield task, size, model


def _mean_metric(cells: list[dict[str, Any]], metric: str) -> float | None:
    values = [c["test"].get(metric) for c in cells]
    return statistics.fmean(values) if values and None not in values else None


def run_study(study: Study, out: str | Path, overrides: list[str] | None = None, quiet: bool = False,
              log: Any = print, max_hours: float | None = None) -> bool:
    """Run every unfinished cell; True when the study finished (False: interrupted, or ``max_hours`` of wall time
    spent: no new cell starts after that). Writes the report either way."""
    deadline = None if max_hours is None else time.monotonic() + 3600 * max_hours
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.yaml.json").write_text(json.dumps(dataclasses.asdict(study), indent=2, default=str) + "\n")
    for task, size, model in _groups(study):
        for width in study.widths:
            cells = []
            for seed in study.seeds:
                finished = (cell_dir(out, study, task, size, model, width, seed) / "cell.json").is_file()
                if not finished and deadline is not None and time.monotonic() > deadline:
                    log(f"--max-hours {max_hours} spent; run the same command again to continue")
                    write_study_report(study, out)
                    return False
                cell = run_cell(study, out, task, size, model, width, seed, overrides, quiet)
                if cell is None:
                    write_study_report(study, out)
                    return False
                cells.append(cell)
                values = [c["test"].get(study.metric) for c in cells]
                if study.prune_seeds and None not in values and study.unreachable(values):
                    break
            accuracy = _mean_metric(cells, study.metric)
            values = [c["test"].get(study.metric) for c in cells]
            pruned = study.prune_seeds and None not in values and study.unreachable(values)
            log(f"{task} {study.tasks[task].size_option}={size} {model} width {width}: {study.metric} "
                f"{'n/a' if accuracy is None else f'{accuracy:.3f}'} over {len(cells)} seed(s)"
                + (f" (below {study.threshold} whatever the other seeds score: pruned)" if pruned else ""))
            if study.stop_at_threshold and accuracy is not None and accuracy >= study.threshold:
                break
    write_study_report(study, out)
    return True


# -- report ------------------------------------------------------------------------------------------------------
def collect_cells(study: Study, out: Path) -> list[dict[str, Any]]:
    """Every finished cell of the study under ``out``."""
    cells = []
    for task, size, model in _groups(study):
        for width in study.widths:
            for seed in study.seeds:
                record = cell_dir(out, study, task, size, model, width, seed) / "cell.json"
                if record.is_file():
                    cells.append(json.loads(record.read_text()))
    return cells


def summarise(study: Study, cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (task, size, model): accuracy per width (mean, std over seeds) and the required width.

    ``required_width`` is the smallest width whose mean accuracy reaches the threshold with every seed finished;
    None when no measured width reaches it (``above`` then says the largest width measured).
    """
    rows = []
    for task, size, model in _groups(study):
        per_width: dict[int, dict[str, Any]] = {}
        for width in study.widths:
            group = [c for c in cells if (c["task"], c["size"], c["model"], c["width"]) == (task, size, model, width)]
            values = [c["test"].get(study.metric) for c in group if c["test"].get(study.metric) is not None]
            if not values:
                continue
            per_width[width] = {
                "mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "seeds": len(values), "complete": len(values) == len(study.seeds),
                "pruned": study.prune_seeds and study.unreachable(values),
                "chain_valid": statistics.fmean(c["test"].get("chain_valid", math.nan) for c in group),
                "parameters": group[0]["parameters"],
                "train_seconds": statistics.fmean(c["train_seconds"] for c in group)}
        required = next((w for w, v in per_width.items() if v["complete"] and v["mean"] >= study.threshold), None)
        pending = [w for w, v in per_width.items() if not v["complete"] and not v["pruned"]]
        if required is None and per_width:                         # a started row: its larger widths are to run
            pending += [w for w in study.widths if w not in per_width]
        rows.append({"task": task, "size_option": study.tasks[task].size_option, "size": size, "model": model,
                     "required_width": required, "largest_measured": max(per_width, default=None),
                     "pending": sorted(pending), "widths": per_width})
    return rows


def write_study_report(study: Study, out: str | Path) -> Path:
    """``study.json``, ``report.md`` and the plots from the finished cells under ``out`` (no training)."""
    out = Path(out)
    cells = collect_cells(study, out)
    rows = summarise(study, cells)
    seconds = sum(c["train_seconds"] for c in cells)
    (out / "study.json").write_text(json.dumps(
        {"source": study.source, "threshold": study.threshold, "metric": study.metric, "seeds": list(study.seeds),
         "widths": list(study.widths), "num_heads": study.num_heads, "prune_seeds": study.prune_seeds,
         "models": study.models,
         "rows": rows, "cells": len(cells), "train_seconds": seconds, "date": time.strftime("%Y-%m-%d %H:%M")},
        indent=2) + "\n")
    plots = _plot(study, rows, out) if cells else []
    lines = [f"# Required width against problem size (`{study.source}`)", "",
             f"Smallest width whose test `{study.metric}` (mean over seeds {list(study.seeds)}) reaches "
             f"{study.threshold:.0%}; `>w` = no measured width up to w reaches it; `w?` = width w (or a larger "
             f"one) has seeds still to run. {len(cells)} cells, "
             f"{seconds / 3600:.2f} h of training on this machine.", "",
             "| task | size | " + " | ".join(study.models) + " |", "|---|---|" + "---|" * len(study.models)]
    for task, spec in study.tasks.items():
        for size in spec.sizes:
            cells_text = []
            for model in study.models:
                row = next(r for r in rows if (r["task"], r["size"], r["model"]) == (task, size, model))
                if row["required_width"] is not None:
                    cells_text.append(str(row["required_width"]))
                elif row["pending"]:                               # a width whose seeds have not all run
                    cells_text.append(f"{row['pending'][0]}?")
                else:
                    cells_text.append(f">{row['largest_measured']}" if row["largest_measured"] else "-")
            lines.append(f"| {task} | {spec.size_option}={size} | " + " | ".join(cells_text) + " |")
    lines += ["", f"Accuracy per width (test `{study.metric}`, mean +- std over seeds; chain valid in brackets; "
              "`pruned`: its first seed(s) left the threshold out of reach, the others did not run; `partial`: "
              "seeds still to run):", "",
              "| task | size | model | " + " | ".join(f"w={w}" for w in study.widths) + " |",
              "|---|---|---|" + "---|" * len(study.widths)]
    for row in rows:
        values = []
        for width in study.widths:
            entry = row["widths"].get(width)
            values.append("-" if entry is None else
                          f"{entry['mean']:.3f} +- {entry['std']:.3f} ({entry['chain_valid']:.2f})"
                          + ("" if entry["complete"] else " pruned" if entry["pruned"] else " partial"))
        lines.append(f"| {row['task']} | {row['size_option']}={row['size']} | {row['model']} | "
                     + " | ".join(values) + " |")
    lines += [""] + [f"![{p.stem}]({p.name})" for p in plots]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def _plot(study: Study, rows: list[dict[str, Any]], out: Path) -> list[Path]:
    from transevolve.train.plots import _matplotlib

    plt = _matplotlib()
    tasks = list(study.tasks)
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.8), squeeze=False)
    measured = sorted({int(w) for r in rows for w in r["widths"]})
    for ax, task in zip(axes[0], tasks, strict=True):
        sizes = list(study.tasks[task].sizes)
        for k, model in enumerate(study.models):
            # Models are dodged sideways so that equal required widths stay visible; "not reached" is drawn one
            # step above the largest measured width, hollow.
            dodge = 0.07 * (k - (len(study.models) - 1) / 2)
            points = [(sizes.index(r["size"]) + dodge, r["required_width"] or 2 * r["largest_measured"],
                       r["required_width"] is None)
                      for r in rows if r["task"] == task and r["model"] == model and r["largest_measured"]
                      and (r["required_width"] or not r["pending"])]
            if not points:
                continue
            color = f"C{k}"  # the same colour for a model in every panel
            ax.plot([x for x, _, _ in points], [y for _, y, _ in points], marker="o", color=color, label=model)
            hollow = [(x, y) for x, y, missed in points if missed]
            if hollow:
                ax.plot(*zip(*hollow, strict=True), ls="none", marker="o", markerfacecolor="white",
                        markeredgecolor=color)
        ax.set_xticks(range(len(sizes)), [str(size) for size in sizes])
        ax.set_xlabel(study.tasks[task].size_option)
        ax.set_ylabel("required width")
        ax.set_yscale("log", base=2)
        if measured:
            ax.set_yticks([*measured, 2 * measured[-1]], [*map(str, measured), f">{measured[-1]}"])
            ax.minorticks_off()
        ax.set_title(task)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(f"smallest width reaching {study.threshold:.0%} {study.metric} (hollow: not reached)",
                 fontsize=9)
    fig.tight_layout()
    required = out / "required_width.png"
    fig.savefig(required, dpi=110)
    plt.close(fig)
    sizes = max(len(s.sizes) for s in study.tasks.values())
    fig, axes = plt.subplots(len(tasks), sizes, figsize=(3.6 * sizes, 3.0 * len(tasks)), squeeze=False)
    for i, task in enumerate(tasks):
        for j in range(sizes):
            ax = axes[i][j]
            if j >= len(study.tasks[task].sizes):
                ax.axis("off")
                continue
            size = study.tasks[task].sizes[j]
            for model in study.models:
                row = next(r for r in rows if (r["task"], r["size"], r["model"]) == (task, size, model))
                widths = sorted(row["widths"])
                if widths:
                    ax.errorbar(widths, [row["widths"][w]["mean"] for w in widths],
                                yerr=[row["widths"][w]["std"] for w in widths], marker="o", label=model, capsize=2)
            ax.axhline(study.threshold, color="grey", lw=0.8, ls="--")
            ax.set_xscale("log", base=2)
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(f"{task} {study.tasks[task].size_option}={size}", fontsize=9)
            ax.set_xlabel("width")
            if j == 0:
                ax.set_ylabel(study.metric, fontsize=8)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=6)
    fig.tight_layout()
    curves = out / "accuracy_vs_width.png"
    fig.savefig(curves, dpi=110)
    plt.close(fig)
    return [required, curves]
