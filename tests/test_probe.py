"""The reliability probe script (``benchmarks/reliability/probe.py``) keeps working: selection, helpers, report.

Only long-standing bad-input probes must PASS here; the others are checked for a well-formed result only, so
work in progress elsewhere in the library cannot fail this test (the script itself reports those).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "reliability" / "probe.py"
#: Bad inputs that have failed cleanly (exit 2, a message) for a long time.
STABLE = ("bad-inputs/missing-config", "bad-inputs/unknown-train-key", "bad-inputs/eval-not-a-run")


@pytest.fixture(scope="module")
def probe() -> ModuleType:
    spec = importlib.util.spec_from_file_location("reliability_probe", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def test_selection(probe: ModuleType) -> None:
    ids = [p.id for p in probe.PROBES]
    assert len(ids) == len(set(ids))
    groups = {i.split("/")[0] for i in ids}
    assert groups == {"bad-inputs", "interrupts", "reproducibility", "torchrun"}
    bad = [p.id for p in probe.select(probe.PROBES, ["bad-inputs"], quick=False)]
    assert bad and all(i.startswith("bad-inputs/") for i in bad)
    digits = [p.id for p in probe.select(probe.PROBES, ["torchrun/preset/digits/*"], quick=True)]
    assert digits == [f"torchrun/preset/digits/{v}" for v in ("transevolve-full", "transevolve-random", "transformer")]
    both = probe.select(probe.PROBES, ["interrupts/sigint,interrupts/sigkill"], quick=False)
    assert [p.id for p in both] == ["interrupts/sigint", "interrupts/sigkill"]
    quick = probe.select(probe.PROBES, [], quick=True)
    assert 0 < len(quick) < len(probe.PROBES) and all(p.quick for p in quick)
    # Every preset of configs/ has its torchrun probe.
    presets = {f"torchrun/preset/{p.parent.name}/{p.stem}" for p in (SCRIPT.parents[2] / "configs").glob("*/*.yaml")
               if p.name != "base.yaml" and (p.parent / "base.yaml").is_file()}
    assert presets <= set(ids)


def test_comparisons(probe: ModuleType, tmp_path: Path) -> None:
    a = {"w": torch.ones(3), "b": torch.zeros(2)}
    assert probe.compare_params(a, {k: v.clone() for k, v in a.items()})[0]
    b = {"w": torch.ones(3) + 1e-7, "b": torch.zeros(2)}
    assert not probe.compare_params(b, a)[0]
    assert probe.compare_params(b, a, tolerance=1e-5)[0]
    assert not probe.compare_params({"w": torch.ones(3)}, a)[0]
    noisy = {"w": torch.tensor([1.0, 1.0, 1.5]), "b": torch.zeros(2)}
    assert not probe.compare_params(noisy, a, tolerance=1e-5)[0]
    dead = {"w": torch.tensor([False, False, True])}
    ok, text = probe.compare_params(noisy, a, tolerance=1e-5, ignore=dead)
    assert ok and "1 dead entries left out (max abs diff 0.5)" in text
    assert not probe.compare_params(b, a, tolerance=1e-8, ignore=dead)[0]  # live entries are still judged
    rows = [{"step": s, "split": "train", "loss": 1.0 / s, "lr": 0.1} for s in (1, 2, 3)]
    run = tmp_path / "run"
    run.mkdir()
    lines = [json.dumps(r) for r in [*rows[:2], rows[1], rows[2]]] + ['{"step": 4, "spl']
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    problems, _ = probe.check_metrics(run, rows)
    assert any("logged twice: 2" in p for p in problems) and any("unparseable" in p for p in problems)
    assert probe._span([1, 2, 3, 7, 9, 10]) == "1-3, 7, 9-10"


def test_probe_outcomes_and_table(probe: ModuleType) -> None:
    """PASS, FAIL, SKIP and a probe that raises are all reported as rows (the run goes on)."""

    def broken(ctx: object, work: Path) -> None:
        raise RuntimeError("boom")

    probes = [probe.Probe("x/pass", lambda ctx, work: probe.outcome("a", "b", "fine", True), True),
              probe.Probe("x/fail", lambda ctx, work: probe.outcome("a", "b", "wrong | value", False), True),
              probe.Probe("x/skip", lambda ctx, work: probe.outcome("a", "b", "no data", None), True),
              probe.Probe("x/broken", broken, True)]
    args = argparse.Namespace(quick=True, timeout=60.0, seed=3, keep=False, verbose=False)
    ctx = probe.Context(args)
    try:
        results = list(probe.run_probes(ctx, probes))
    finally:
        shutil.rmtree(ctx.root, ignore_errors=True)
    assert [r.status for r in results] == ["PASS", "FAIL", "SKIP", "FAIL"]
    assert "RuntimeError: boom" in results[3].happened and "traceback" in results[3].details
    text = probe.table(results)
    assert text.count("\n") == len(results) + 1 and "wrong / value" in text


def test_script_reports_table_and_json(tmp_path: Path) -> None:
    out = tmp_path / "probe.json"
    only = ",".join((*STABLE, "bad-inputs/version"))
    result = subprocess.run([sys.executable, str(SCRIPT), "--only", only, "--out", str(out), "--seed", "1"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode in (0, 1), result.stdout + result.stderr
    assert "| probe | tried | expected | happened | result |" in result.stdout
    payload = json.loads(out.read_text())
    assert payload["schema"] == 1 and payload["seed"] == 1
    statuses = {r["id"]: r["status"] for r in payload["results"]}
    assert list(statuses) == [*STABLE, "bad-inputs/version"]
    assert set(statuses.values()) <= {"PASS", "FAIL", "SKIP"}
    assert sum(payload["summary"].values()) == len(statuses)
    for row in payload["results"]:
        assert row["tried"] and row["expected"] and row["happened"] and row["seconds"] >= 0
        assert f"| {row['id']} |" in result.stdout
    for name in STABLE:
        assert statuses[name] == "PASS", [r for r in payload["results"] if r["id"] == name]
    assert result.returncode == (1 if "FAIL" in statuses.values() else 0)
