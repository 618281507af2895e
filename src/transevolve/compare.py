"""``transevolve compare``: train several models on one task and show what each costs and achieves.

A comparison file is a run file (``task``, ``model``, ``train``; see ``transevolve.train.config``) plus a
``models`` section mapping a name to the model fields that differ, and optionally ``seeds``::

    base: ../digits/base.yaml          # optional: a run file to start from
    seeds: [0, 1, 2]                   # training seeds (initialisation, dropout, data order); default [0]
    models:
      transformer: {attention: softmax}
      transevolve-fullFF: {attention: evolved, ff_type: full}
      transevolve-randomFF: {attention: evolved, ff_type: random}

Every model is trained with the same task split, training budget and seeds. The output directory holds one run
directory per model and seed (``<model>/seed<k>``), ``comparison.json``, ``report.md`` and the plots (test metric
against parameters and against training time, validation curves). Metrics are reported as mean and standard
deviation over the seeds. The headline metric is BLEU for translation, ``generated_accuracy`` for tasks graded
by generation (the dynamic-programming tasks, which also report ``chain_valid``), and otherwise what selects the
best checkpoint (``accuracy`` / ``token_accuracy``).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from transevolve.provenance import git_state, machine_info, machine_summary
from transevolve.train.config import (
    RunConfig,
    apply_dotted,
    load_yaml_with_base,
    require_task,
    run_config_from_dict,
)
from transevolve.train.loop import HEADLINE, RunResult, train

DEFAULT_COMPARISON = "compare/digits.yaml"


@dataclass(frozen=True)
class Comparison:
    runs: dict[str, RunConfig]
    seeds: tuple[int, ...]
    source: str

    def run(self, model: str, seed: int) -> RunConfig:
        config = self.runs[model]
        return dataclasses.replace(config, train=dataclasses.replace(config.train, seed=seed))


def preset_path(name: str) -> Path:
    """A preset shipped with the package (``configs/<name>``), or a file path."""
    path = Path(name)
    if path.is_file():
        return path
    root = Path(str(resources.files("transevolve") / "configs"))
    packaged = root / name
    if not packaged.suffix:
        packaged = packaged.with_suffix(".yaml")
    if packaged.is_file():
        return packaged
    available = sorted(str(p.relative_to(root)) for p in root.rglob("*.yaml"))
    raise FileNotFoundError(f"no config file or preset named {name!r}; presets: {available}")


def load_comparison(name: str = DEFAULT_COMPARISON, overrides: list[str] | None = None,
                    only: list[str] | None = None, seeds: int | None = None) -> Comparison:
    """Read a comparison file; ``overrides`` (dotted) apply to every model, ``only`` selects models and ``seeds``
    replaces the file's seeds by ``0 .. seeds-1``."""
    path = preset_path(name)
    data = load_yaml_with_base(path)
    models = data.pop("models", None)
    file_seeds = data.pop("seeds", [0])
    if not isinstance(models, dict) or not models:
        raise ValueError(f"{path} has no 'models' section (name -> model fields)")
    if not isinstance(file_seeds, list) or not file_seeds or not all(isinstance(s, int) for s in file_seeds):
        raise ValueError(f"{path}: seeds must be a non-empty list of integers, got {file_seeds!r}")
    if seeds is not None:
        if seeds < 1:
            raise ValueError(f"--seeds must be at least 1, got {seeds}")
        file_seeds = list(range(seeds))
    if only:
        unknown = sorted(set(only) - set(models))
        if unknown:
            raise ValueError(f"unknown model(s) {unknown}; {path} defines {list(models)}")
        models = {k: v for k, v in models.items() if k in only}
    require_task(apply_dotted(data, overrides or []), path)
    runs = {}
    for model_name, fields in models.items():
        if fields is not None and not isinstance(fields, dict):
            raise ValueError(f"{path}: models.{model_name} must be a mapping of model fields (e.g. "
                             f"{{attention: softmax}}), got {fields!r}")
        merged = dict(data)
        merged["model"] = {**(data.get("model") or {}), **(fields or {}), "name": model_name}
        runs[model_name] = run_config_from_dict(apply_dotted(merged, overrides or []))
    return Comparison(runs, tuple(file_seeds), str(path))


def run_comparison(comparison: Comparison, out_dir: str | Path, quiet: bool = False,
                   resume: bool = False) -> dict[str, list[RunResult]]:
    """Train every model with every seed (seed-major order, so that an early stop still compares models)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[RunResult]] = {name: [] for name in comparison.runs}
    for seed in comparison.seeds:
        for name in comparison.runs:
            run_dir = out_dir / name / f"seed{seed}"
            if resume and (run_dir / "results.json").is_file():
                results[name].append(_result_from_dir(run_dir))
                continue
            result = train(comparison.run(name, seed), run_dir, quiet=quiet,
                           resume=resume and run_dir.is_dir() and any(run_dir.iterdir()))
            results[name].append(result)
            if result.interrupted:
                return results
    write_report(comparison, results, out_dir)
    return results


def _result_from_dir(run_dir: Path) -> RunResult:
    from transevolve.config import ModelConfig

    payload = json.loads((run_dir / "results.json").read_text())
    return RunResult(run_dir, ModelConfig.from_dict(payload["model"]), payload["parameters"], payload["steps"],
                     payload["train_seconds"], payload["tokens_per_second"], payload["validation"],
                     payload["test"])


GENERATED = "generated_accuracy"


def graded_by_generation(results: dict[str, list[RunResult]] | None) -> bool:
    """Whether the runs were evaluated by generated solutions (their metrics hold ``generated_accuracy``)."""
    if not results:
        return False
    return any(GENERATED in r.test or GENERATED in r.validation for runs in results.values() for r in runs)


def headline_metric(kind: str, results: dict[str, list[RunResult]] | None = None) -> str:
    """BLEU for seq2seq, ``generated_accuracy`` when ``results`` were graded by generation, else the metric that
    selects the best checkpoint."""
    if graded_by_generation(results):
        return GENERATED
    return "bleu" if kind == "seq2seq" else HEADLINE[kind]


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summary_rows(results: dict[str, list[RunResult]], kind: str) -> list[dict[str, Any]]:
    """One row per model: parameters, mean/std of the headline metric over seeds (for tasks graded by generation
    also the mean ``chain_valid``), time and throughput. Every metric of every run is in ``comparison.json``."""
    metric = headline_metric(kind, results)
    rows = []
    for name, runs in results.items():
        valid = _mean_std([r.validation.get(metric) for r in runs])
        test = _mean_std([r.test.get(metric) for r in runs])
        row: dict[str, Any] = {
            "model": name, "parameters": runs[0].parameters, "seeds": len(runs),
            f"validation {metric}": valid[0], f"test {metric}": test[0], f"test {metric} std": test[1],
        }
        if metric == GENERATED:
            row["test chain_valid"] = _mean_std([r.test.get("chain_valid") for r in runs])[0]
        row |= {"train seconds": statistics.fmean(r.train_seconds for r in runs),
                "tokens/s": statistics.fmean(r.tokens_per_second for r in runs), "steps": runs[0].steps}
        rows.append(row)
    return rows


def task_kind(results: dict[str, list[RunResult]]) -> str:
    kinds = {"classifier": "classification", "encoder_decoder": "seq2seq", "decoder": "language_modeling",
             "encoder": "classification"}
    return kinds[next(iter(results.values()))[0].model_config.kind]


def write_report(comparison: Comparison, results: dict[str, list[RunResult]], out_dir: Path) -> Path:
    """``comparison.json``, ``report.md`` and the comparison plots."""
    first = next(iter(comparison.runs.values()))
    kind = task_kind(results)
    metric = headline_metric(kind, results)
    rows = summary_rows(results, kind)
    per_seed = {name: [{"seed": comparison.seeds[i], "validation": r.validation, "test": r.test,
                        "train_seconds": r.train_seconds, "tokens_per_second": r.tokens_per_second}
                       for i, r in enumerate(runs)] for name, runs in results.items()}
    date, git, machine = time.strftime("%Y-%m-%d %H:%M"), git_state(), machine_info()
    (out_dir / "comparison.json").write_text(json.dumps(
        {"source": comparison.source, "task": first.task.name, "seeds": list(comparison.seeds), "rows": rows,
         "runs": per_seed, "date": date, "git": git, "machine": machine,
         "configs": {k: v.to_dict() for k, v in comparison.runs.items()}}, indent=2) + "\n")
    plots = _plot_comparison(results, kind, out_dir)
    header = list(rows[0])
    lines = [f"# Comparison on `{first.task.name}`", "",
             f"Config `{comparison.source}`: {first.train.max_steps} steps per run, batch {first.train.batch_size}, "
             f"seeds {list(comparison.seeds)} (mean and standard deviation over seeds). Test metrics use the best "
             "validation checkpoint of each run. Times are wall-clock and include evaluations; they were taken on "
             f"{machine_summary(machine)}, {_git_text(git)}, {date}.",
             "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row[k]) for k in header) + " |")
    if metric == GENERATED:
        lines += ["", "`generated_accuracy`: the model solves each problem by greedy decoding from the problem alone "
                  "and the final answer is checked by the task's oracle; `chain_valid`: the whole generated "
                  "derivation is right. The teacher-forced diagnostics (`token_accuracy`, `teacher_forced_exact`: "
                  "given the reference chain) are in `comparison.json`."]
    lines += ["", f"Per seed (test {metric}):", ""]
    for name, runs in per_seed.items():
        lines.append(f"- {name}: " + ", ".join(f"seed {r['seed']}: {_fmt(r['test'].get(metric))}" for r in runs))
    lines.append("")
    lines.extend(f"![{p.stem}]({p.name})" for p in plots)
    report = out_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def _git_text(git: dict[str, Any]) -> str:
    if git.get("commit") is None:
        return "outside a git checkout"
    return f"git {git['commit'][:7]}" + (" with uncommitted changes" if git.get("dirty") else "")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _plot_comparison(results: dict[str, list[RunResult]], kind: str, out_dir: Path) -> list[Path]:
    from transevolve.train.plots import _matplotlib, read_metrics

    plt = _matplotlib()
    metric = headline_metric(kind, results)
    paths = []
    for x_key, x_label, file in (("parameters", "trainable parameters", "metric_vs_parameters.png"),
                                 ("train_seconds", "training time (s)", "metric_vs_time.png")):
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for name, runs in results.items():
            x = statistics.fmean(getattr(r, x_key) for r in runs)
            mean, std = _mean_std([r.test.get(metric) for r in runs])
            ax.errorbar(x, mean, yerr=std, fmt="o", capsize=4, markersize=7)
            ax.annotate(name, (x, mean), textcoords="offset points", xytext=(6, 6), fontsize=8)
        ax.set(xlabel=x_label, ylabel=f"test {metric}", title=f"test {metric} vs {x_label}")
        if x_key == "parameters":
            ax.set_xscale("log")
        fig.tight_layout()
        fig.savefig(out_dir / file, dpi=110)
        plt.close(fig)
        paths.append(out_dir / file)
    fig, ax = plt.subplots(figsize=(6, 4))
    validation_metric = GENERATED if metric == GENERATED else HEADLINE[kind]
    for index, (name, runs) in enumerate(results.items()):
        for seed_index, r in enumerate(runs):
            valid = [m for m in read_metrics(r.run_dir) if m["split"] == "validation"]
            ax.plot([m["step"] for m in valid], [m.get(validation_metric) for m in valid], "o-", markersize=3,
                    color=f"C{index}", alpha=0.8, label=name if seed_index == 0 else None)
    ax.set(xlabel="step", ylabel=f"validation {validation_metric}", title="validation curves (every seed)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "validation_curves.png", dpi=110)
    plt.close(fig)
    paths.append(out_dir / "validation_curves.png")
    return paths
