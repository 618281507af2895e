"""``transevolve study``: parsing, cell configurations, resuming, the threshold search and the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from transevolve import study as study_module
from transevolve.config import ModelConfig
from transevolve.errors import ConfigError
from transevolve.study import load_study, run_study, summarise, write_study_report
from transevolve.train.loop import RunResult

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _write(tmp_path: Path, **changes: object) -> Path:
    data = {
        "threshold": 0.8, "seeds": [0, 1], "widths": [8, 16, 32], "num_heads": 2,
        "model": {"layers_per_block": 2, "num_blocks": 1},
        "train": {"max_steps": 5},
        "models": {"transformer": {"attention": "softmax"}, "transevolve": {"attention": "evolved"}},
        "tasks": {"lis": {"base": str(CONFIGS / "lis" / "base.yaml"), "size": "n", "sizes": [4, 6],
                          "models": {"transformer": {"dropout": [0.0, 0.1]}}}},
    }
    data.update(changes)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_cells_set_the_problem_size_width_heads_and_per_size_fields(tmp_path: Path) -> None:
    study = load_study(str(_write(tmp_path)))
    run = study.run_config("lis", 6, "transformer", 16, seed=1)
    assert run.task.options["n"] == 6 and run.task.options["format"] == "cot"        # the base's options stay
    assert (run.model["width"], run.model["num_heads"], run.model["time_dim"]) == (16, 2, 8)
    assert run.model["dropout"] == 0.1 and run.model["layers_per_block"] == 2
    assert (run.train.max_steps, run.train.seed) == (5, 1)
    assert study.run_config("lis", 4, "transevolve", 8, 0).model["dropout"] == 0.0          # the base's value


def test_a_task_can_change_the_shared_training_budget(tmp_path: Path) -> None:
    spec = {"base": str(CONFIGS / "lis" / "base.yaml"), "size": "n", "sizes": [4],
            "train": {"max_steps": 9, "learning_rate": 0.01}}
    study = load_study(str(_write(tmp_path, train={"max_steps": 5, "batch_size": 8}, tasks={"lis": spec})))
    run = study.run_config("lis", 4, "transformer", 8, seed=1)
    assert (run.train.max_steps, run.train.learning_rate, run.train.batch_size, run.train.seed) == (9, 0.01, 8, 1)


@pytest.mark.parametrize(("changes", "message"), [
    ({"threshold": 1.5}, "threshold must be in"),
    ({"widths": [8, 15]}, "must be a positive integer dividing every width"),
    ({"seeds": []}, "seeds must be a non-empty list"),
    ({"models": {}}, "models must map a name"),
    ({"tasks": {"lis": {"base": "x.yaml", "size": "n"}}}, "needs base"),
    ({"tasks": {"lis": {"base": str(CONFIGS / "lis" / "base.yaml"), "size": "n", "sizes": [4, 6],
                        "models": {"transformer": {"dropout": [0.0]}}}}}, "lists 1 values for 2 sizes"),
    ({"tasks": {"lis": {"base": str(CONFIGS / "lis" / "base.yaml"), "size": "n", "sizes": [4],
                        "models": {"sparse": {}}}}}, "not in models"),
    ({"models": {"transformer": {"attention": "evolved", "num_blocks": 0}}}, "cell lis n=4 transformer width 8"),
    ({"widths": [8], "colour": 1}, "unknown keys"),
    ({"tasks": {"lis": {"base": str(CONFIGS / "lis" / "base.yaml"), "size": "n", "sizes": [4],
                        "train": [1]}}}, "tasks.lis.train must map"),
])
def test_bad_study_files_say_what_is_wrong(tmp_path: Path, changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_study(str(_write(tmp_path, **changes)))


def test_packaged_studies_parse() -> None:
    for name in ("study/dp-width.yaml", "study/dp-width-quick.yaml"):
        study = load_study(name)
        for task, spec in study.tasks.items():
            for size in spec.sizes:
                for model in study.models:
                    run = study.run_config(task, size, model, study.widths[-1], 0)
                    ModelConfig(kind="decoder", vocab_size=16, **run.model)
        assert set(study.models) == {"transformer", "sparse", "linear", "transevolve"}


class _FakeTrainer:
    """Stands in for training: accuracy grows with width (and falls with the problem size)."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.calls: list[tuple] = []
        self.stop_after = stop_after

    def __call__(self, config, run_dir, quiet=False, resume=False):
        self.calls.append((config.task.options["n"], config.model["name"], config.model["width"],
                           config.train.seed))
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        interrupted = self.stop_after is not None and len(self.calls) > self.stop_after
        width, n = config.model["width"], config.task.options["n"]
        accuracy = min(1.0, width / (4.0 * n)) + 0.01 * config.train.seed
        return RunResult(Path(run_dir), None, 1000 * width, 5, 1.0, 100.0,  # type: ignore[arg-type]
                         {"generated_accuracy": accuracy}, {"generated_accuracy": accuracy, "chain_valid": accuracy},
                         interrupted=interrupted)


def test_search_stops_at_the_threshold_resumes_and_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    study = load_study(str(_write(tmp_path, models={"transformer": {"attention": "softmax"}},
                                  tasks={"lis": {"base": str(CONFIGS / "lis" / "base.yaml"), "size": "n",
                                                 "sizes": [4, 6]}})))
    out = tmp_path / "out"
    interrupted = _FakeTrainer(stop_after=3)
    monkeypatch.setattr("transevolve.train.loop.train", interrupted)
    assert run_study(study, out, log=lambda line: None) is False                  # the 4th cell was interrupted
    finished_before = len(list(out.rglob("cell.json")))
    assert finished_before == 3

    trainer = _FakeTrainer()
    monkeypatch.setattr("transevolve.train.loop.train", trainer)
    assert run_study(study, out, log=lambda line: None) is True
    # n=4: width 8 -> 0.5 (+0.01), 16 -> 1.0: required 16; n=6: 8 -> .33, 16 -> .67, 32 -> 1.0: required 32.
    # Resumed: the three finished cells are not trained again.
    assert trainer.calls == [(4, "transformer", 16, 1)] + [(6, "transformer", w, s) for w in (8, 16, 32)
                                                            for s in (0, 1)]
    rows = {r["size"]: r for r in json.loads((out / "study.json").read_text())["rows"]}
    assert rows[4]["required_width"] == 16 and rows[6]["required_width"] == 32
    assert rows[6]["widths"]["8"]["seeds"] == 2
    report = (out / "report.md").read_text()
    assert "| lis | n=4 | 16 |" in report and "| lis | n=6 | 32 |" in report
    assert (out / "required_width.png").is_file() and (out / "accuracy_vs_width.png").is_file()


def test_required_width_needs_every_seed_and_unreached_rows_say_so(tmp_path: Path) -> None:
    study = load_study(str(_write(tmp_path, models={"transformer": {"attention": "softmax"}},
                                  tasks={"lis": {"base": str(CONFIGS / "lis" / "base.yaml"), "size": "n",
                                                 "sizes": [4]}})))
    cell = {"task": "lis", "size": 4, "model": "transformer", "parameters": 1, "train_seconds": 1.0}
    cells = [{**cell, "width": 8, "seed": 0, "test": {"generated_accuracy": 0.95}},              # one seed only
             {**cell, "width": 16, "seed": 0, "test": {"generated_accuracy": 0.5}},
             {**cell, "width": 16, "seed": 1, "test": {"generated_accuracy": 0.6}}]
    row = summarise(study, cells)[0]
    assert row["required_width"] is None and row["largest_measured"] == 16
    assert row["widths"][8]["complete"] is False
    # A measured width below the threshold with larger widths still to run is pending, not a false ">8".
    below = [{**cell, "width": 8, "seed": s, "test": {"generated_accuracy": 0.5}} for s in (0, 1)]
    assert summarise(study, below)[0]["pending"] == [16, 32]
    every_width = [{**c, "width": w} for w in (8, 16, 32) for c in below]
    assert summarise(study, every_width)[0]["pending"] == []
    out = tmp_path / "cells"
    record = out / "lis" / "n-4" / "transformer" / "width-8" / "seed-0" / "cell.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps(cells[0]))
    assert "| lis | n=4 | 8? |" in write_study_report(study, out).read_text()      # seed 1 still to run
    out = tmp_path / "empty"
    out.mkdir()
    assert "| lis | n=4 | - |" in write_study_report(study, out).read_text()


def test_max_hours_starts_no_new_cell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    study = load_study(str(_write(tmp_path)))
    trainer = _FakeTrainer()
    monkeypatch.setattr("transevolve.train.loop.train", trainer)
    assert run_study(study, tmp_path / "out", log=lambda line: None, max_hours=0) is False
    assert trainer.calls == []


def test_cell_directories_are_stable(tmp_path: Path) -> None:
    study = load_study(str(_write(tmp_path)))
    assert study_module.cell_dir(tmp_path, study, "lis", 6, "transevolve", 16, 1) == \
        tmp_path / "lis" / "n-6" / "transevolve" / "width-16" / "seed-1"


def test_a_width_that_cannot_reach_the_threshold_skips_its_other_seeds(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # threshold 0.8, two seeds: a first seed below 0.6 leaves the mean below 0.8 whatever the second scores.
    study = load_study(str(_write(tmp_path, prune_seeds=True, models={"transformer": {"attention": "softmax"}},
                                  tasks={"lis": {"base": str(CONFIGS / "lis" / "base.yaml"), "size": "n",
                                                 "sizes": [6]}})))
    assert study.unreachable([0.59]) and not study.unreachable([0.61]) and not study.unreachable([0.1, 0.2])
    trainer = _FakeTrainer()
    monkeypatch.setattr("transevolve.train.loop.train", trainer)
    assert run_study(study, tmp_path / "out", log=lambda line: None) is True
    # n=6: width 8 -> 0.33 (pruned after seed 0), 16 -> 0.67 (seed 1 may still lift the mean: both run), 32 -> 1.0
    assert trainer.calls == [(6, "transformer", 8, 0), (6, "transformer", 16, 0), (6, "transformer", 16, 1),
                             (6, "transformer", 32, 0), (6, "transformer", 32, 1)]
    row = json.loads((tmp_path / "out" / "study.json").read_text())["rows"][0]
    assert row["required_width"] == 32
    assert row["widths"]["8"]["pruned"] is True and row["widths"]["16"]["pruned"] is False
    assert "pruned" in (tmp_path / "out" / "report.md").read_text()
