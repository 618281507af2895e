"""``transevolve compare``: train several models on one task and show what each costs and achieves.

A comparison file is a run file (``task``, ``model``, ``train``; see ``transevolve.train.config``) plus a
``models`` section mapping a name to the model fields that differ::

    models:
      transformer: {attention: softmax}
      transevolve-fullFF: {attention: evolved, ff_type: full}
      transevolve-randomFF: {attention: evolved, ff_type: random}

Every model is trained with the same task, data order, seed and training budget. The output directory holds
one run directory per model, ``comparison.json``, ``report.md`` and the plots (accuracy against parameters and
against training time, validation curves).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from transevolve.train.config import RunConfig, apply_dotted, load_yaml_with_base, run_config_from_dict
from transevolve.train.loop import HEADLINE, RunResult, train

DEFAULT_COMPARISON = "compare/digits.yaml"


@dataclass(frozen=True)
class Comparison:
    runs: dict[str, RunConfig]
    source: str


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
                    only: list[str] | None = None) -> Comparison:
    """Read a comparison file; ``overrides`` (dotted) apply to every model, ``only`` selects models."""
    path = preset_path(name)
    data = load_yaml_with_base(path)
    models = data.pop("models", None)
    if not isinstance(models, dict) or not models:
        raise ValueError(f"{path} has no 'models' section (name -> model fields)")
    if only:
        unknown = sorted(set(only) - set(models))
        if unknown:
            raise ValueError(f"unknown model(s) {unknown}; {path} defines {list(models)}")
        models = {k: v for k, v in models.items() if k in only}
    runs = {}
    for model_name, fields in models.items():
        merged = dict(data)
        merged["model"] = {**(data.get("model") or {}), **(fields or {}), "name": model_name}
        runs[model_name] = run_config_from_dict(apply_dotted(merged, overrides or []))
    return Comparison(runs, str(path))


def run_comparison(comparison: Comparison, out_dir: str | Path, quiet: bool = False,
                   resume: bool = False) -> list[RunResult]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for name, run in comparison.runs.items():
        run_dir = out_dir / name
        already = (run_dir / "results.json").is_file()
        if resume and already:
            results.append(_result_from_dir(run_dir))
            continue
        results.append(train(run, run_dir, quiet=quiet,
                             resume=resume and (run_dir / "checkpoints" / "last").is_dir()))
    write_report(comparison, results, out_dir)
    return results


def _result_from_dir(run_dir: Path) -> RunResult:
    from transevolve.config import ModelConfig

    payload = json.loads((run_dir / "results.json").read_text())
    return RunResult(run_dir, ModelConfig.from_dict(payload["model"]), payload["parameters"], payload["steps"],
                     payload["train_seconds"], payload["tokens_per_second"], payload["validation"],
                     payload["test"])


def summary_rows(results: list[RunResult], kind: str) -> list[dict[str, Any]]:
    metric = "bleu" if kind == "seq2seq" else HEADLINE[kind]
    rows = []
    for r in results:
        rows.append({"model": r.model_config.name, "parameters": r.parameters,
                     f"validation {metric}": r.validation.get(metric), f"test {metric}": r.test.get(metric),
                     "train seconds": r.train_seconds, "tokens/s": r.tokens_per_second, "steps": r.steps})
    return rows


def write_report(comparison: Comparison, results: list[RunResult], out_dir: Path) -> Path:
    """``comparison.json``, ``report.md`` and the comparison plots."""
    first = next(iter(comparison.runs.values()))
    kind = _task_kind(results)
    rows = summary_rows(results, kind)
    (out_dir / "comparison.json").write_text(json.dumps({"source": comparison.source, "task": first.task.name,
                                                         "rows": rows, "date": time.strftime("%Y-%m-%d %H:%M"),
                                                         "configs": {k: v.to_dict() for k, v in
                                                                     comparison.runs.items()}}, indent=2) + "\n")
    plots = _plot_comparison(results, kind, out_dir)
    header = list(rows[0])
    lines = [f"# Comparison on `{first.task.name}`", "",
             f"Config: `{comparison.source}`; {first.train.max_steps} steps each, seed {first.train.seed}, "
             f"batch {first.train.batch_size}. Test metrics use the best validation checkpoint.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row[k]) for k in header) + " |")
    lines.append("")
    lines.extend(f"![{p.stem}]({p.name})" for p in plots)
    report = out_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def _task_kind(results: list[RunResult]) -> str:
    kinds = {"classifier": "classification", "encoder_decoder": "seq2seq", "decoder": "language_modeling",
             "encoder": "classification"}
    return kinds[results[0].model_config.kind]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if value < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _plot_comparison(results: list[RunResult], kind: str, out_dir: Path) -> list[Path]:
    from transevolve.train.plots import _matplotlib, read_metrics

    plt = _matplotlib()
    metric = "bleu" if kind == "seq2seq" else HEADLINE[kind]
    paths = []
    for x_key, x_label, file in (("parameters", "trainable parameters", "accuracy_vs_parameters.png"),
                                 ("train_seconds", "training time (s)", "accuracy_vs_time.png")):
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for r in results:
            ax.scatter(getattr(r, x_key), r.test.get(metric, float("nan")), s=50)
            ax.annotate(r.model_config.name, (getattr(r, x_key), r.test.get(metric, float("nan"))),
                        textcoords="offset points", xytext=(5, 5), fontsize=8)
        ax.set(xlabel=x_label, ylabel=f"test {metric}", title=f"test {metric} vs {x_label}")
        if x_key == "parameters":
            ax.set_xscale("log")
        fig.tight_layout()
        fig.savefig(out_dir / file, dpi=110)
        plt.close(fig)
        paths.append(out_dir / file)
    fig, ax = plt.subplots(figsize=(6, 4))
    validation_metric = HEADLINE[kind]
    for r in results:
        valid = [m for m in read_metrics(r.run_dir) if m["split"] == "validation"]
        ax.plot([m["step"] for m in valid], [m.get(validation_metric) for m in valid], "o-",
                label=r.model_config.name)
    ax.set(xlabel="step", ylabel=f"validation {validation_metric}", title="validation curves")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "validation_curves.png", dpi=110)
    plt.close(fig)
    paths.append(out_dir / "validation_curves.png")
    return paths


def comparison_yaml(comparison: Comparison) -> str:
    return yaml.safe_dump({k: v.to_dict() for k, v in comparison.runs.items()}, sort_keys=False)
