"""Every packaged YAML preset loads, names a registered task with valid options, and builds a valid model."""

from __future__ import annotations

from pathlib import Path

import pytest

from transevolve.compare import load_comparison, preset_path
from transevolve.config import ModelConfig
from transevolve.tasks import TASKS, get_task
from transevolve.train.config import load_run_config
from transevolve.train.loop import MODEL_KIND

CONFIG_ROOT = Path(__file__).resolve().parents[1] / "src" / "transevolve" / "configs"
RUN_FILES = sorted(p for p in CONFIG_ROOT.rglob("*.yaml")
                   if p.parent.name not in ("compare", "study", "results") and p.name != "base.yaml")
COMPARE_FILES = sorted((CONFIG_ROOT / "compare").glob("*.yaml"))


def _check(run) -> None:
    assert run.task.name in TASKS, f"unknown task {run.task.name}"
    task = get_task(run.task.name, **run.task.options)          # validates the options, loads no data
    kind = MODEL_KIND[task.kind]
    fields = {"max_length": 256} | run.model
    ModelConfig(kind=kind, vocab_size=300, num_classes=10 if kind == "classifier" else None, **fields)


@pytest.mark.parametrize("path", RUN_FILES, ids=lambda p: str(p.relative_to(CONFIG_ROOT)))
def test_run_presets_are_valid(path: Path) -> None:
    _check(load_run_config(path))


@pytest.mark.parametrize("path", COMPARE_FILES, ids=lambda p: p.name)
def test_comparison_presets_are_valid(path: Path) -> None:
    comparison = load_comparison(str(path))
    assert len(comparison.runs) >= 2
    for run in comparison.runs.values():
        _check(run)


def test_every_task_has_presets_for_the_main_models() -> None:
    for task in TASKS:
        for model in ("transformer", "transevolve-full", "transevolve-random"):
            assert (CONFIG_ROOT / task / f"{model}.yaml").is_file(), f"configs/{task}/{model}.yaml is missing"


def test_presets_resolve_by_name_and_unknown_names_list_the_presets() -> None:
    assert preset_path("compare/digits") == CONFIG_ROOT / "compare" / "digits.yaml"
    with pytest.raises(FileNotFoundError, match=r"compare/digits\.yaml"):
        preset_path("compare/nope")
