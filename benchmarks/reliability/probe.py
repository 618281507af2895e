#!/usr/bin/env python
"""Reliability probes of the ``transevolve`` command line: what a user can break, and what must survive it.

Each probe runs the CLI as a child process (``sys.executable -m transevolve.cli ...``, so the interpreter that runs
this script) in its own temporary directory, and checks exit codes, messages, files and final parameters:

- ``bad-inputs/*``: every mistake ends with exit code 2, a message and no traceback (``--version``: exit 0).
- ``interrupts/*``: SIGINT, two SIGINTs, SIGKILL and crashes injected into checkpoint saves at a random moment,
  then ``train --resume``: the final parameters are bit-equal to an uninterrupted run, ``metrics.jsonl`` holds every
  step once with the same losses, results and ``config.yaml`` agree.
- ``reproducibility/*``: the same command twice on the default thread count gives bit-identical parameters.
- ``torchrun/*``: every preset of ``configs/`` trains for 2 steps under ``torchrun --nproc_per_node=2``; 2 processes
  compute the same parameters as 1 (within 1e-5).

Usage::

    python benchmarks/reliability/probe.py --quick --out runs/reliability.json    # CI subset, a few minutes
    python benchmarks/reliability/probe.py                                          # everything
    python benchmarks/reliability/probe.py --only bad-inputs --only interrupts/sigint
    python benchmarks/reliability/probe.py --list

Prints a table (probe, what it tried, expected, what happened, PASS/FAIL/SKIP), writes JSON with ``--out`` and
exits with 1 when a probe fails. Nothing depends on the machine's speed: processes are signalled after they have
logged a given step, and the only time limit (``--timeout``, 600 s) guards against hangs.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fnmatch
import hashlib
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
CRASH_CHILD = Path(__file__).resolve().parent / "crash_child.py"
PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
INTERRUPTED = 130  # exit code after Ctrl-C; death by SIGINT (rc -2) is accepted too: the shell reports 130 for both
CRASHED = 137  # crash_child.CRASH_STATUS
SCHEMA = 1
#: What a probe function returns: tried, expected, happened, passed (None = SKIP), details.
Outcome = tuple[str, str, str, bool | None, dict[str, Any]]


# ---------------------------------------------------------------------------------------------------------
# Results and child processes
@dataclass
class Result:
    """One row of the report."""

    id: str
    tried: str
    expected: str
    happened: str
    status: str
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)


class ProbeFailure(Exception):
    """A precondition of a probe failed (e.g. its reference run did not train); the probe reports FAIL."""


@dataclass
class Child:
    """A finished child process."""

    command: list[str]
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    note: str = ""  # "timed out", or what a watch saw before the child was stopped

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def traceback(self) -> bool:
        return "Traceback" in self.output

    def message(self, limit: int = 160) -> str:
        """The output on one line: from its first ``error`` on when it has one, else its end."""
        lines = [line.strip(" │╭╮╰╯─") for line in self.output.splitlines()]
        text = re.sub(r"\s+", " ", " ".join(line for line in lines if line)).strip()
        found = re.search(r"\b(error|traceback)\b", text, re.IGNORECASE)
        if found:
            text = text[found.start():]
            return text if len(text) <= limit else text[: limit - 3] + "..."
        return text if len(text) <= limit else "..." + text[-limit:]

    def status(self) -> str:
        """``rc=N`` plus the note; ``rc=-9 (SIGKILL)`` for a signal."""
        if self.returncode is None:
            text = "no exit code"
        elif self.returncode < 0:
            text = f"rc={self.returncode} ({signal.Signals(-self.returncode).name})"
        else:
            text = f"rc={self.returncode}"
        return f"{text}, {self.note}" if self.note else text


class Context:
    """Shared state of one probe session: options, the temporary root, child environments, cached runs."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.quick: bool = args.quick
        self.timeout: float = args.timeout
        self.seed: int = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
        self.rng = random.Random(self.seed)
        self.root = Path(tempfile.mkdtemp(prefix="transevolve-probe-"))
        self.keep: bool = args.keep
        self.verbose: bool = args.verbose
        self.python = sys.executable
        self._cache: dict[str, Any] = {}
        self._counter = 0

    # -- environments and commands ------------------------------------------------------------------
    def env(self, threads: int | None = 1, **extra: str) -> dict[str, str]:
        """The children's environment: one intra-op thread unless ``threads`` is None (the default count)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROBE_")}
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env.pop(name, None)
            if threads is not None:
                env[name] = str(threads)
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra)
        return env

    def cli(self, *args: str | Path) -> list[str]:
        return [self.python, "-m", "transevolve.cli", *map(str, args)]

    def torchrun(self, nproc: int, *args: str | Path) -> list[str]:
        return [self.python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                "-m", "transevolve.cli", *map(str, args)]

    def show(self, command: list[str] | str) -> str:
        """A command for the report: the interpreter as ``python``, paths relative to the repo or ``$TMP``."""
        text = command if isinstance(command, str) else " ".join(command)
        text = text.replace(f"{self.python} -m transevolve.cli", "transevolve")
        text = text.replace(f"{self.python} -m torch.distributed.run --standalone", "torchrun")
        text = text.replace(self.python, "python")
        return text.replace(str(self.root), "$TMP").replace(str(REPO) + "/", "")

    # -- running children ---------------------------------------------------------------------------
    def start(self, command: list[str], cwd: Path, env: dict[str, str] | None = None,
              stdin: bytes | None = None) -> tuple[subprocess.Popen[bytes], Path, Path]:
        """Start a child whose stdout/stderr go to files in ``cwd`` (no pipe can fill up and block it)."""
        self._counter += 1
        out, err = cwd / f"child{self._counter}.out", cwd / f"child{self._counter}.err"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            process = subprocess.Popen(command, cwd=cwd, env=env or self.env(), stdout=stdout, stderr=stderr,
                                       stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL)
        if stdin is not None:
            assert process.stdin is not None
            try:
                process.stdin.write(stdin)
                process.stdin.close()
            except BrokenPipeError:
                pass
        if self.verbose:
            print(f"  $ {self.show(command)}", file=sys.stderr, flush=True)
        return process, out, err

    def finish(self, process: subprocess.Popen[bytes], out: Path, err: Path, command: list[str], began: float,
               watch: Callable[[], str | None] | None = None) -> Child:
        """Wait for a started child (stopping it when ``watch`` reports something or on the hang guard)."""
        note = ""
        deadline = began + self.timeout
        try:
            while process.poll() is None:
                seen = watch() if watch is not None else None
                if seen:
                    note = seen
                    break
                if time.monotonic() > deadline:
                    note = f"timed out after {self.timeout:.0f} s"
                    break
                time.sleep(0.05)
        finally:
            if process.poll() is None:
                _kill(process)
        return Child(command, process.returncode, _read(out), _read(err), time.monotonic() - began, note)

    def run(self, command: list[str], cwd: Path, env: dict[str, str] | None = None, stdin: bytes | None = None,
            watch: Callable[[], str | None] | None = None) -> Child:
        """Run a child to the end."""
        began = time.monotonic()
        process, out, err = self.start(command, cwd, env, stdin)
        return self.finish(process, out, err, command, began, watch)

    def cached(self, key: str, build: Callable[[], Any]) -> Any:
        """``build()`` once per session (fixture runs shared by several probes); failures are cached too."""
        if key not in self._cache:
            try:
                self._cache[key] = build()
            except ProbeFailure as error:
                self._cache[key] = error
        value = self._cache[key]
        if isinstance(value, ProbeFailure):
            raise ProbeFailure(str(value))
        return value

    def workdir(self, name: str) -> Path:
        path = self.root / re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
        path.mkdir(parents=True, exist_ok=True)
        return path


def _read(path: Path) -> str:
    return path.read_bytes().decode("utf-8", "replace") if path.is_file() else ""


def _kill(process: subprocess.Popen[bytes]) -> None:
    process.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=30)


def started_training(run_dir: Path) -> Callable[[], str | None]:
    """A watch: the child began a run in ``run_dir`` (it should have refused)."""

    def watch() -> str | None:
        for name in ("config.yaml", "metrics.jsonl"):
            if (run_dir / name).exists():
                return f"started training (wrote {name}); stopped by the probe"
        return None

    return watch


# ---------------------------------------------------------------------------------------------------------
# Run directories: parameters, metrics, hashes
def load_params(run_dir: Path, which: str = "last") -> dict[str, Any]:
    """The tensors of ``run_dir/checkpoints/<which>/model.safetensors`` (symlinks followed)."""
    from safetensors.torch import load_file

    path = run_dir / "checkpoints" / which / "model.safetensors"
    if not path.is_file():
        raise ProbeFailure(f"{path.relative_to(run_dir)} is missing")
    try:
        return load_file(str(path))
    except Exception as error:  # any unreadable file is a finding, not a crash of the probe
        raise ProbeFailure(f"{path.relative_to(run_dir)} is unreadable: {error}") from error


def dead_masks(run_dir: Path, which: str = "last") -> dict[str, Any]:
    """:func:`transevolve.params.dead_parameter_masks` of the model saved in ``run_dir/checkpoints/<which>``."""
    from transevolve.checkpoint import load_model
    from transevolve.params import dead_parameter_masks

    try:
        return dead_parameter_masks(load_model(run_dir / "checkpoints" / which))
    except Exception as error:  # an unloadable checkpoint is a finding, not a crash of the probe
        raise ProbeFailure(f"checkpoints/{which} of {run_dir.name} does not load: {error}") from error


def compare_params(got: dict[str, Any], want: dict[str, Any], tolerance: float = 0.0,
                   ignore: dict[str, Any] | None = None) -> tuple[bool, str]:
    """Bit-equality (``tolerance`` 0) or max absolute difference <= ``tolerance`` over every tensor.

    ``ignore``: ``{name: bool mask}`` of entries left out of the verdict (their max difference is still reported),
    e.g. :func:`transevolve.params.dead_parameter_masks`: a parameter whose true gradient is zero moves on float
    rounding noise alone, which Adam scales up to steps of size ~lr, so no tolerance on it is meaningful."""
    import torch

    ignore = ignore or {}
    ignored_worst, ignored_entries = 0.0, 0

    if set(got) != set(want):
        missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
        return False, f"different tensors (missing {missing[:3]}, extra {extra[:3]})"
    worst, worst_name, unequal = 0.0, "", 0
    for name in sorted(want):
        a, b = got[name], want[name]
        if a.shape != b.shape or a.dtype != b.dtype:
            return False, f"{name}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"
        if torch.equal(a, b):
            continue
        unequal += 1
        if not a.is_floating_point():
            diff = float("inf")
        else:
            full = (a.double() - b.double()).abs().nan_to_num(nan=float("inf"))
            mask = ignore.get(name)
            if mask is not None:
                ignored_entries += int(mask.sum())
                if bool(mask.any()):
                    ignored_worst = max(ignored_worst, full[mask].max().item())
                full = full[~mask]
            diff = full.max().item() if full.numel() else 0.0
        if diff >= worst:
            worst, worst_name = diff, name
    if tolerance == 0.0:
        if unequal == 0:
            return True, f"{len(want)}/{len(want)} tensors bit-equal"
        return False, f"{unequal}/{len(want)} tensors differ (max abs diff {worst:.3g} in {worst_name})"
    ok = worst <= tolerance
    where = f" in {worst_name}" if worst_name else ""
    text = f"max abs diff {worst:.3g}{where} ({'<=' if ok else '>'} {tolerance:g}; {unequal} tensors not bit-equal)"
    if ignored_entries:
        text += f"; {ignored_entries:,} dead entries left out (max abs diff {ignored_worst:.3g})"
    return ok, text


def read_metrics(run_dir: Path) -> tuple[list[dict[str, Any]], int]:
    """Rows of ``metrics.jsonl`` and the number of lines that do not parse."""
    path = run_dir / "metrics.jsonl"
    rows, bad = [], 0
    if not path.is_file():
        return rows, bad
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad += 1
    return rows, bad


def check_metrics(run_dir: Path, reference: list[dict[str, Any]]) -> tuple[list[str], str]:
    """Problems of ``run_dir``'s metrics against a reference run's rows (each step once, same values)."""
    rows, bad = read_metrics(run_dir)
    problems = []
    if bad:
        problems.append(f"{bad} unparseable metrics lines")
    summary = []
    for split, keys in (("train", ("loss", "lr")), ("validation", None)):
        mine = [r for r in rows if r.get("split") == split]
        theirs = {r["step"]: r for r in reference if r.get("split") == split}
        counts = Counter(r.get("step") for r in mine)
        duplicated = sorted(s for s, n in counts.items() if n > 1)
        if duplicated:
            problems.append(f"{split} steps logged twice: {_span(duplicated)}")
        missing, extra = sorted(set(theirs) - set(counts)), sorted(set(counts) - set(theirs))
        if missing:
            problems.append(f"{split} steps missing: {_span(missing)}")
        if extra:
            problems.append(f"{split} steps not in the reference: {_span(extra)}")
        differ = []
        for row in mine:
            other = theirs.get(row.get("step"))
            if other is None:
                continue
            names = keys or [k for k in other if k not in ("step", "split", "epoch", "elapsed_s", "tokens_per_s")]
            if any(row.get(k) != other.get(k) for k in names):
                differ.append(row["step"])
        if differ:
            problems.append(f"{split} values differ from the reference at steps {_span(sorted(set(differ)))}")
        summary.append(f"{len(mine)} {split} rows")
    return problems, ", ".join(summary)


def _span(steps: list[int]) -> str:
    """``[3, 4, 5, 9]`` -> ``3-5, 9`` (at most 6 ranges)."""
    ranges: list[list[int]] = []
    for step in steps:
        if ranges and isinstance(step, int) and step == ranges[-1][1] + 1:
            ranges[-1][1] = step
        else:
            ranges.append([step, step])
    text = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in ranges[:6])
    return text + (" ..." if len(ranges) > 6 else "")


def tree_hash(root: Path) -> dict[str, str]:
    """Path -> sha256 of the content (``link:TARGET`` for symlinks, ``dir`` for directories) of everything."""
    digest: dict[str, str] = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory) / name
            key = str(path.relative_to(root))
            if path.is_symlink():
                digest[key] = "link:" + os.readlink(path)
            elif path.is_dir():
                digest[key] = "dir"
            else:
                digest[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digest


def read_yaml(path: Path) -> Any:
    import yaml

    return yaml.safe_load(path.read_text())


def read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def last_step(run_dir: Path) -> int | None:
    """The step of ``checkpoints/last`` (None when there is none)."""
    try:
        return int(read_json(run_dir / "checkpoints" / "last" / "trainer_state.json")["step"])
    except (TypeError, KeyError, ValueError, OSError):
        return None


def logged_step(run_dir: Path) -> int:
    """The highest training step in ``metrics.jsonl`` (0 when none)."""
    rows, _ = read_metrics(run_dir)
    return max((int(r["step"]) for r in rows if r.get("split") == "train" and "step" in r), default=0)


# ---------------------------------------------------------------------------------------------------------
# Probe registry
@dataclass
class Probe:
    """``function(context, workdir) -> (tried, expected, happened, passed, details)``."""

    id: str
    function: Callable[[Context, Path], Outcome]
    quick: bool


PROBES: list[Probe] = []


def probe(id: str, quick: bool = True) -> Callable[[Any], Any]:
    """Register a probe function under ``id``."""

    def register(function: Any) -> Any:
        PROBES.append(Probe(id, function, quick))
        return function

    return register


def select(probes: list[Probe], only: list[str], quick: bool) -> list[Probe]:
    """Probes matching any ``only`` pattern (an id, a group prefix like ``bad-inputs`` or a glob); quick subset."""
    patterns = [p.strip() for item in only for p in item.split(",") if p.strip()]
    chosen = []
    for item in probes:
        if quick and not item.quick:
            continue
        if patterns and not any(item.id == p or item.id.startswith(p.rstrip("/") + "/") or fnmatch.fnmatch(item.id, p)
                                for p in patterns):
            continue
        chosen.append(item)
    return chosen


def outcome(tried: str, expected: str, happened: str, passed: bool | None,
            **details: Any) -> Outcome:
    """A probe's return value (``passed`` None = SKIP)."""
    return tried, expected, happened, passed, details


# ---------------------------------------------------------------------------------------------------------
# 1. Bad inputs
EXIT2 = "exit 2, a message, no traceback"


def expect_exit2(ctx: Context, child: Child, tried: str, mention: tuple[str, ...] = (),
                 **details: Any) -> Outcome:
    """The standard bad-input verdict: exit 2, some output (naming ``mention``), no traceback."""
    text = re.sub(r"\s+", " ", child.output)
    missing = [m for m in mention if m.lower() not in text.lower()]
    problems = []
    if child.returncode != 2:
        problems.append(f"exit {child.returncode}")
    if not child.output.strip():
        problems.append("no message")
    if child.traceback:
        problems.append("a traceback")
    if missing:
        problems.append(f"message does not mention {missing}")
    if child.note:
        problems.append(child.note)
    expected = EXIT2 + (f", message names {list(mention)}" if mention else "")
    happened = f"{child.status()}: {child.message()}"
    if problems:
        happened = "; ".join(problems) + " -- " + happened
    return outcome(tried, expected, happened, not problems,
                   command=ctx.show(child.command), output_tail=child.output[-3000:], **details)


def tiny_run(ctx: Context, key: str, preset: str, *overrides: str) -> Path:
    """A finished tiny training run shared by the probes that need one (copy it before changing it)."""

    def build() -> Path:
        work = ctx.workdir(f"_fixture-{key}")
        run_dir = work / "run"
        child = ctx.run(ctx.cli("train", CONFIGS / preset, *overrides, "--run-dir", run_dir, "--quiet"), work)
        if child.returncode != 0:
            raise ProbeFailure(f"fixture run {key} failed ({child.status()}): {child.message()}")
        return run_dir

    return ctx.cached(f"run:{key}", build)


def max_digit_run(ctx: Context) -> Path:
    return tiny_run(ctx, "max_digit", "max_digit/transevolve-full.yaml", "train.max_steps=4", "train.eval_every=2",
                    "train.log_every=1", "train.warmup_steps=2")


def copy_run(source: Path, work: Path, name: str = "run") -> Path:
    target = work / name
    shutil.copytree(source, target, symlinks=True)
    return target


def checkpoint_file(run_dir: Path, which: str = "best") -> Path:
    """The real path of a checkpoint's weights (a symlinked checkpoint resolves to its step directory).

    It must lie inside the (copied) run directory: a link pointing elsewhere would break a moved run, and the
    probe would damage the shared fixture.
    """
    path = (run_dir / "checkpoints" / which / "model.safetensors").resolve()
    if not path.is_relative_to(run_dir.resolve()):
        raise ProbeFailure(f"checkpoints/{which} of a copied run points outside it ({path}): moving a run breaks it")
    return path


def train_run_file(ctx: Context, work: Path, name: str, text: str) -> Child:
    """``train`` a run file written with ``text`` (a bad input) into ``work/run``."""
    config = work / name
    config.write_text(text)
    return ctx.run(ctx.cli("train", config, "--run-dir", work / "run"), work, watch=started_training(work / "run"))


@probe("bad-inputs/missing-config")
def _missing_config(ctx: Context, work: Path) -> Outcome:
    child = ctx.run(ctx.cli("train", work / "nope.yaml", "--run-dir", work / "run"), work,
                    watch=started_training(work / "run"))
    return expect_exit2(ctx, child, "train nope.yaml (no such file)", ("nope.yaml",))


@probe("bad-inputs/unknown-train-key")
def _unknown_train_key(ctx: Context, work: Path) -> Outcome:
    child = train_run_file(ctx, work, "bad.yaml", "task: {name: max_digit}\ntrain: {max_stepz: 3}\n")
    return expect_exit2(ctx, child, "train a file with train.max_stepz", ("max_stepz",))


@probe("bad-inputs/unknown-task")
def _unknown_task(ctx: Context, work: Path) -> Outcome:
    child = ctx.run(ctx.cli("train", CONFIGS / "max_digit/transformer.yaml", "task.name=nope", "--run-dir",
                            work / "run"), work, watch=started_training(work / "run"))
    return expect_exit2(ctx, child, "train max_digit/transformer.yaml task.name=nope", ("nope",))


@probe("bad-inputs/empty-yaml")
def _empty_yaml(ctx: Context, work: Path) -> Outcome:
    child = train_run_file(ctx, work, "empty.yaml", "")
    return expect_exit2(ctx, child, "train an empty YAML file")


@probe("bad-inputs/no-sections")
def _no_sections(ctx: Context, work: Path) -> Outcome:
    child = train_run_file(ctx, work, "flat.yaml", "max_steps: 3\nwidth: 32\n")
    return expect_exit2(ctx, child, "train a YAML without task/model/train sections (max_steps: 3, width: 32)")


@probe("bad-inputs/self-base")
def _self_base(ctx: Context, work: Path) -> Outcome:
    child = train_run_file(ctx, work, "loop.yaml", "base: loop.yaml\ntask: {name: max_digit}\n")
    return expect_exit2(ctx, child, "train loop.yaml whose base: is loop.yaml", ("loop.yaml",))


@probe("bad-inputs/bad-override-type")
def _bad_override(ctx: Context, work: Path) -> Outcome:
    child = ctx.run(ctx.cli("train", CONFIGS / "max_digit/transformer.yaml", "train.max_steps=abc", "--run-dir",
                            work / "run"), work, watch=started_training(work / "run"))
    return expect_exit2(ctx, child, "train max_digit/transformer.yaml train.max_steps=abc", ("max_steps",))


@probe("bad-inputs/eval-bad-config-yaml")
def _eval_bad_yaml(ctx: Context, work: Path) -> Outcome:
    run_dir = copy_run(max_digit_run(ctx), work)
    (run_dir / "config.yaml").write_text("task: [unclosed\n  model: {width: \n")
    child = ctx.run(ctx.cli("eval", run_dir), work)
    return expect_exit2(ctx, child, "eval RUN whose config.yaml is not YAML", ("config.yaml",))


@probe("bad-inputs/eval-not-a-run")
def _eval_not_a_run(ctx: Context, work: Path) -> Outcome:
    empty = work / "empty"
    empty.mkdir()
    child = ctx.run(ctx.cli("eval", empty), work)
    return expect_exit2(ctx, child, "eval an empty directory")


@probe("bad-inputs/truncated-safetensors")
def _truncated(ctx: Context, work: Path) -> Outcome:
    run_dir = copy_run(max_digit_run(ctx), work)
    path = checkpoint_file(run_dir, "best")
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) * 6 // 10])
    child = ctx.run(ctx.cli("eval", run_dir), work)
    return expect_exit2(ctx, child, "eval RUN with checkpoints/best/model.safetensors cut to 60%",
                        ("model.safetensors",))


@probe("bad-inputs/flipped-safetensors")
def _flipped(ctx: Context, work: Path) -> Outcome:
    run_dir = copy_run(max_digit_run(ctx), work)
    path = checkpoint_file(run_dir, "best")
    blob = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(blob[:8], "little")  # safetensors: u64 header length, JSON header, tensor bytes
    middle = start + (len(blob) - start) // 2
    for index in range(middle, min(middle + 64, len(blob))):
        blob[index] ^= 0x01  # the lowest bit of 64 bytes: plausible weights, silently wrong
    path.write_bytes(bytes(blob))
    child = ctx.run(ctx.cli("eval", run_dir), work)
    return expect_exit2(ctx, child, "eval RUN after flipping the low bit of 64 bytes of tensor data in best/",
                        ("model.safetensors",))


@probe("bad-inputs/translate-undecodable-stdin")
def _translate_bytes(ctx: Context, work: Path) -> Outcome:
    run_dir = tiny_run(ctx, "reverse", "reverse/transevolve-full.yaml", "train.max_steps=2", "train.eval_every=0",
                       "train.log_every=1")
    child = ctx.run(ctx.cli("translate", run_dir, "--beam", "1"), work, stdin=b"1 2 3\n\xff\xfe\x80 4 5\n")
    return expect_exit2(ctx, child, "translate REVERSE_RUN < bytes that are not UTF-8")


@probe("bad-inputs/inspect-different-tasks")
def _inspect_mixed(ctx: Context, work: Path) -> Outcome:
    first = max_digit_run(ctx)
    second = tiny_run(ctx, "reverse", "reverse/transevolve-full.yaml", "train.max_steps=2", "train.eval_every=0",
                      "train.log_every=1")
    child = ctx.run(ctx.cli("inspect", first, second, "--out", work / "attention.png"), work)
    return expect_exit2(ctx, child, "inspect MAX_DIGIT_RUN REVERSE_RUN (classification + seq2seq)")


@probe("bad-inputs/inspect-different-tasks-same-kind", quick=False)
def _inspect_mixed_same_kind(ctx: Context, work: Path) -> Outcome:
    first = max_digit_run(ctx)
    second = tiny_run(ctx, "digits", "digits/transformer.yaml", "model.width=32", "model.num_heads=1",
                      "train.max_steps=2", "train.eval_every=0", "train.log_every=1")
    child = ctx.run(ctx.cli("inspect", first, second, "--out", work / "attention.png"), work)
    return expect_exit2(ctx, child, "inspect MAX_DIGIT_RUN DIGITS_RUN (both classifiers, different tasks)")


@probe("bad-inputs/data-not-fetched")
def _not_fetched(ctx: Context, work: Path) -> Outcome:
    data = work / "empty-data-root"
    data.mkdir()
    child = ctx.run(ctx.cli("train", CONFIGS / "digits/transevolve-full.yaml", "--run-dir", work / "run"), work,
                    env=ctx.env(TRANSEVOLVE_DATA=str(data)), watch=started_training(work / "run"))
    return expect_exit2(ctx, child, "TRANSEVOLVE_DATA=EMPTY_DIR train digits/transevolve-full.yaml",
                        ("transevolve data fetch",))


@probe("bad-inputs/unknown-task-option")
def _unknown_option(ctx: Context, work: Path) -> Outcome:
    child = ctx.run(ctx.cli("train", CONFIGS / "max_digit/transformer.yaml", "task.options.bogus=1", "--run-dir",
                            work / "run"), work, watch=started_training(work / "run"))
    return expect_exit2(ctx, child, "train max_digit/transformer.yaml task.options.bogus=1", ("bogus",))


@probe("bad-inputs/version")
def _version(ctx: Context, work: Path) -> Outcome:
    from importlib.metadata import PackageNotFoundError, version

    try:
        wanted = version("transevolve")
    except PackageNotFoundError:
        wanted = ""
    child = ctx.run(ctx.cli("--version"), work)
    problems = []
    if child.returncode != 0:
        problems.append(f"exit {child.returncode}")
    if wanted and wanted not in child.output:
        problems.append(f"does not print {wanted}")
    if child.traceback:
        problems.append("a traceback")
    happened = f"{child.status()}: {child.message()}"
    if problems:
        happened = "; ".join(problems) + " -- " + happened
    return outcome("transevolve --version", f"exit 0, prints {wanted or 'the version'}", happened, not problems,
                   output_tail=child.output[-2000:])


def _taken(ctx: Context, work: Path, keep: tuple[str, ...] | None, what: str) -> Outcome:
    source = max_digit_run(ctx)
    run_dir = work / "taken"
    if keep is None:
        shutil.copytree(source, run_dir, symlinks=True)
    else:
        run_dir.mkdir()
        for name in keep:
            shutil.copy2(source / name, run_dir / name)
    before = tree_hash(run_dir)
    child = ctx.run(ctx.cli("train", CONFIGS / "max_digit/transformer.yaml", "train.max_steps=2",
                            "train.eval_every=0", "--run-dir", run_dir, "--quiet"), work)
    after = tree_hash(run_dir)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    tried, expected, happened, passed, details = expect_exit2(
        ctx, child, f"train max_digit/transformer.yaml --run-dir D, D holding {what}")
    if changed:
        passed = False
        happened = f"D changed ({', '.join(changed[:5])}{' ...' if len(changed) > 5 else ''}) -- " + happened
    return outcome(tried, expected + ", D unchanged (sha256 of every file)", happened, passed, changed=changed,
                   **details)


@probe("bad-inputs/run-dir-taken")
def _run_dir_taken(ctx: Context, work: Path) -> Outcome:
    return _taken(ctx, work, None, "another finished run")


@probe("bad-inputs/run-dir-taken-no-checkpoint")
def _run_dir_taken_partial(ctx: Context, work: Path) -> Outcome:
    return _taken(ctx, work, ("config.yaml", "metrics.jsonl"), "another run's config.yaml + metrics.jsonl only")


# ---------------------------------------------------------------------------------------------------------
# 2. Interrupts and resume exactness
@dataclass
class Plan:
    """The tiny run every interrupt probe trains: max_digit, TransEvolve-fullFF, dropout on (RNG matters)."""

    steps: int
    eval_every: int
    checkpoint_every: int = 5
    schedule: str = "cosine"

    def args(self, steps: int | None = None) -> list[str]:
        return [str(CONFIGS / "max_digit/transevolve-full.yaml"), "model.dropout=0.1", "train.batch_size=16",
                f"train.max_steps={steps or self.steps}", f"train.eval_every={self.eval_every}", "train.log_every=1",
                f"train.checkpoint_every={self.checkpoint_every}", "train.warmup_steps=10",
                f"train.schedule={self.schedule}"]


@dataclass
class Reference:
    run_dir: Path
    params: dict[str, Any]
    metrics: list[dict[str, Any]]
    results: dict[str, Any]
    seconds: float


def plan(ctx: Context) -> Plan:
    return Plan(steps=120, eval_every=40) if ctx.quick else Plan(steps=240, eval_every=40)


def reference(ctx: Context, run: Plan) -> Reference:
    """The uninterrupted run of ``run`` (built once per session)."""

    def build() -> Reference:
        work = ctx.workdir(f"_reference-{run.schedule}")
        run_dir = work / "run"
        child = ctx.run(ctx.cli("train", *run.args(), "--run-dir", run_dir, "--quiet"), work)
        if child.returncode != 0:
            raise ProbeFailure(f"the reference run failed ({child.status()}): {child.message()}")
        rows, _ = read_metrics(run_dir)
        return Reference(run_dir, load_params(run_dir), rows, read_json(run_dir / "results.json") or {},
                         child.seconds)

    return ctx.cached(f"reference:{run.schedule}", build)


def verify_resumed(ctx: Context, run_dir: Path, ref: Reference, steps: int) -> tuple[list[str], list[str]]:
    """Problems and facts of a finished (resumed) run against the reference."""
    problems, facts = [], []
    try:
        equal, text = compare_params(load_params(run_dir), ref.params)
    except ProbeFailure as error:
        equal, text = False, str(error)
    facts.append(f"params: {text}")
    if not equal:
        problems.append(f"params: {text}")
    metric_problems, summary = check_metrics(run_dir, ref.metrics)
    facts.append(f"metrics: {summary}")
    problems += metric_problems
    try:
        configured = read_yaml(run_dir / "config.yaml")["train"]["max_steps"]
    except Exception as error:  # unreadable or missing config.yaml is a finding
        configured = f"unreadable ({error})"
    if configured != steps:
        problems.append(f"config.yaml max_steps={configured}, want {steps}")
    results = read_json(run_dir / "results.json") or {}
    for split in ("validation", "test"):
        if results.get(split) != ref.results.get(split):
            problems.append(f"results.json {split} {results.get(split)} != reference {ref.results.get(split)}")
    return problems, facts


def wait_for_step(process: subprocess.Popen[bytes], run_dir: Path, step: int, guard: float) -> int:
    """Poll ``metrics.jsonl`` until a training row of ``step`` (or later) is logged; returns the step seen."""
    deadline = time.monotonic() + guard
    while process.poll() is None and time.monotonic() < deadline:
        seen = logged_step(run_dir)
        if seen >= step:
            return seen
        time.sleep(0.005)
    return logged_step(run_dir)


def _interrupt(ctx: Context, work: Path, kind: str) -> Outcome:
    """SIGINT / two SIGINTs / SIGKILL at a random moment, then ``--resume`` to the end; compare to the reference."""
    run = plan(ctx)
    ref = reference(ctx, run)
    names = {"sigint": "SIGINT", "double": "SIGINT, SIGINT", "sigkill": "SIGKILL"}
    low = run.checkpoint_every + 1  # at least one complete checkpoint exists when the signal lands
    high = int(run.steps * 0.6)
    details: dict[str, Any] = {"attempts": []}
    for attempt in range(3):
        run_dir = work / f"run{attempt}"
        target, delay = ctx.rng.randint(low, high), ctx.rng.uniform(0.0, 0.2)
        gap = ctx.rng.uniform(0.0, 0.1) if kind == "double" else 0.0
        command = ctx.cli("train", *run.args(), "--run-dir", run_dir)
        began = time.monotonic()
        process, out, err = ctx.start(command, work)
        seen = wait_for_step(process, run_dir, target, ctx.timeout)
        sent = False
        if process.poll() is None:
            time.sleep(delay)
            at = logged_step(run_dir)
            if process.poll() is None:
                process.send_signal(signal.SIGKILL if kind == "sigkill" else signal.SIGINT)
                sent = True
            if kind == "double" and sent:
                time.sleep(gap)
                if process.poll() is None:
                    process.send_signal(signal.SIGINT)
        else:
            at = seen
        signalled = time.monotonic()
        child = ctx.finish(process, out, err, command, began)
        stop_seconds = time.monotonic() - signalled
        stopped = last_step(run_dir)
        trial = {"target_step": target, "delay_s": round(delay, 4), "gap_s": round(gap, 4), "logged_at_signal": at,
                 "signal_sent": sent, "exit": child.returncode, "checkpoint_step": stopped,
                 "last_logged": logged_step(run_dir),
                 "exit_after_last_signal_s": round(stop_seconds, 3)}
        details["attempts"].append(trial)
        if child.returncode == 0 and (run_dir / "results.json").is_file():
            continue  # the run finished before the signal landed: try an earlier moment
        break
    else:
        return outcome(f"{names[kind]} during train", "the signal lands during training",
                       "the run finished before every signal (3 attempts)", False, **details)
    tried = (f"{names[kind]} {delay * 1000:.0f} ms after step {target} was logged"
             + (f" (second {gap * 1000:.0f} ms later)" if kind == "double" else "")
             + f", then train --resume; vs uninterrupted {run.steps} steps")
    want_exit = -signal.SIGKILL if kind == "sigkill" else INTERRUPTED
    expected = (f"exit {'-9 (killed)' if kind == 'sigkill' else INTERRUPTED}"
                + (", prompt stop" if kind == "double" else "")
                + ", resume exit 0, params bit-equal, each step logged once with the same loss, same results")
    problems = []
    if not sent:
        return outcome(tried, expected, f"the run ended before the signal: {child.status()}: {child.message()}",
                       False, **details, output_tail=child.output[-3000:])
    facts = [f"{child.status()} (logged step {trial['last_logged']}, checkpoint step {stopped})"]
    if child.returncode != want_exit and not (want_exit == INTERRUPTED and child.returncode == -signal.SIGINT):
        problems.append(f"exit {child.returncode} after the signal, want {want_exit}")
    if kind != "sigkill" and child.traceback:
        problems.append("traceback after the signal")
    if child.note:
        problems.append(child.note)
    facts.append(f"exited {stop_seconds:.2f} s after the {'second ' if kind == 'double' else ''}signal")
    if kind != "sigkill" and trial["last_logged"] >= run.steps:
        problems.append("did not stop: trained to the end")
    resumed = ctx.run(ctx.cli("train", "--resume", run_dir, "--quiet"), work)
    details["resume_output_tail"] = resumed.output[-3000:]
    details["interrupted_output_tail"] = child.output[-3000:]
    facts.append(f"resume {resumed.status()}")
    if resumed.returncode != 0:
        problems.append(f"resume: {resumed.status()}: {resumed.message()}")
    else:
        more_problems, more_facts = verify_resumed(ctx, run_dir, ref, run.steps)
        problems += more_problems
        facts += more_facts
    happened = "; ".join(problems) if problems else "; ".join(facts)
    return outcome(tried, expected, happened, not problems, facts=facts, problems=problems, **details)


@probe("interrupts/reference")
def _reference(ctx: Context, work: Path) -> Outcome:
    run = plan(ctx)
    ref = reference(ctx, run)
    steps = [r["step"] for r in ref.metrics if r.get("split") == "train"]
    problems = []
    if sorted(steps) != list(range(1, run.steps + 1)):
        problems.append(f"train rows {_span(sorted(steps))}, want 1-{run.steps}")
    if last_step(ref.run_dir) != run.steps:
        problems.append(f"checkpoints/last at step {last_step(ref.run_dir)}")
    happened = "; ".join(problems) or (f"exit 0 in {ref.seconds:.1f} s, {len(steps)} train rows, last checkpoint at "
                                       f"step {run.steps}, {len(ref.params)} tensors")
    return outcome(f"train max_digit/transevolve-full.yaml ({run.steps} steps, dropout 0.1, checkpoint every "
                   f"{run.checkpoint_every}, eval every {run.eval_every}, log every step), uninterrupted",
                   "exit 0, one train row per step", happened, not problems, args=run.args())


@probe("interrupts/sigint")
def _sigint(ctx: Context, work: Path) -> Outcome:
    return _interrupt(ctx, work, "sigint")


@probe("interrupts/double-sigint")
def _double_sigint(ctx: Context, work: Path) -> Outcome:
    return _interrupt(ctx, work, "double")


@probe("interrupts/sigkill")
def _sigkill(ctx: Context, work: Path) -> Outcome:
    return _interrupt(ctx, work, "sigkill")


def _ops(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@probe("interrupts/crash-in-save")
def _crash_in_save(ctx: Context, work: Path) -> Outcome:
    """Crash (os._exit(137)) before each file operation of a checkpoint event, then resume."""
    run = plan(ctx)
    ref = reference(ctx, run)
    event_step = run.eval_every  # an evaluation: last and best are saved; an earlier checkpoint is complete

    def crash_env(run_dir: Path, log: Path | None, at: int = 0, mode: str = "before") -> dict[str, str]:
        extra = {"PROBE_CRASH_ROOT": str(run_dir / "checkpoints"), "PROBE_CRASH_STEP": str(event_step),
                 "PROBE_CRASH_AT": str(at), "PROBE_CRASH_MODE": mode}
        if log is not None:
            extra["PROBE_OPS_LOG"] = str(log)
        return ctx.env(**extra)

    count_dir, log = work / "count", work / "ops.jsonl"
    counted = ctx.run([ctx.python, str(CRASH_CHILD), "train", *run.args(), "--run-dir", str(count_dir), "--quiet"],
                      work, env=crash_env(count_dir, log))
    if counted.returncode != 0:
        return outcome("count the checkpoint file operations (crash_child.py, no crash)", "exit 0",
                       f"{counted.status()}: {counted.message()}", False, output_tail=counted.output[-3000:])
    ops = _ops(log)
    event = [o for o in ops if o["step"] == event_step]
    steps_with_ops = sorted({o["step"] for o in ops})
    _, text = compare_params(load_params(count_dir), ref.params)
    details: dict[str, Any] = {"event_step": event_step, "event_ops": [f"{o['op']} {o['path']}" for o in event],
                               "steps_with_ops": steps_with_ops, "wrapper_changes_nothing": text, "cases": []}
    if not event:
        return outcome(f"count file operations under checkpoints/ at step {event_step}", "some operations",
                       f"none at step {event_step}; operations at steps {_span(steps_with_ops)}", False, **details)
    cases = [(k, "before") for k in range(1, len(event) + 1)] + [(len(event), "after")]
    if ctx.quick:
        middle = (len(event) + 1) // 2
        cases = [(k, "before") for k in sorted({1, middle, len(event)})] + [(len(event), "after")]
    failures = []
    for k, mode in cases:
        run_dir = work / f"crash-{mode}-{k}"
        op = event[k - 1]
        label = f"{mode} #{k} ({op['op']} {op['path']})"
        crashed = ctx.run([ctx.python, str(CRASH_CHILD), "train", *run.args(), "--run-dir", str(run_dir), "--quiet"],
                          work, env=crash_env(run_dir, None, k, mode))
        case: dict[str, Any] = {"case": label, "crash_exit": crashed.returncode, "checkpoint_step": last_step(run_dir)}
        problems = []
        if crashed.returncode != CRASHED:
            problems.append(f"crash point not reached ({crashed.status()})")
        else:
            resumed = ctx.run(ctx.cli("train", "--resume", run_dir, "--quiet"), work)
            case["resume_exit"] = resumed.returncode
            if "nothing to resume" in resumed.output:
                problems.append("resume said 'nothing to resume' although a complete checkpoint existed")
            if resumed.returncode != 0:
                problems.append(f"resume {resumed.status()}: {resumed.message(120)}")
            else:
                more, _ = verify_resumed(ctx, run_dir, ref, run.steps)
                problems += more
        case["problems"] = problems
        details["cases"].append(case)
        if problems:
            failures.append(f"{label}: {'; '.join(problems)}")
    tried = (f"os._exit(137) before each of the {len(event)} file ops of the step-{event_step} checkpoint event "
             f"(last + best){' (4 of them in --quick)' if ctx.quick else ''} and after the last one, then "
             "train --resume")
    expected = "resume exit 0 (never 'nothing to resume'), params bit-equal, each step logged once"
    happened = (f"{len(cases) - len(failures)}/{len(cases)} crash points OK"
                + (": " + " | ".join(failures) if failures else f"; ops: {', '.join(details['event_ops'])}"))
    return outcome(tried, expected, happened, not failures, **details)


@probe("interrupts/extend", quick=False)
def _extend(ctx: Context, work: Path) -> Outcome:
    """Finish N/2 steps, then ``--resume train.max_steps=N`` == N uninterrupted (constant schedule)."""
    run = dataclasses.replace(plan(ctx), schedule="constant")
    ref = reference(ctx, run)
    half = run.steps // 2
    run_dir = work / "run"
    first = ctx.run(ctx.cli("train", *run.args(steps=half), "--run-dir", run_dir, "--quiet"), work)
    tried = (f"train {half} steps (constant schedule) to the end, then train --resume D train.max_steps={run.steps}; "
             f"vs {run.steps} uninterrupted")
    expected = "both exit 0, params bit-equal, each step logged once, config.yaml max_steps updated"
    if first.returncode != 0:
        return outcome(tried, expected, f"first part {first.status()}: {first.message()}", False)
    second = ctx.run(ctx.cli("train", "--resume", run_dir, f"train.max_steps={run.steps}", "--quiet"), work)
    if second.returncode != 0:
        return outcome(tried, expected, f"resume {second.status()}: {second.message()}", False,
                       output_tail=second.output[-3000:])
    problems, facts = verify_resumed(ctx, run_dir, ref, run.steps)
    # The first part evaluated at its last step; the reference did not (unless eval_every divides it).
    problems = [p for p in problems if not p.startswith(("validation steps not in", "results.json"))]
    return outcome(tried, expected, "; ".join(problems) or "; ".join(facts), not problems, facts=facts)


# ---------------------------------------------------------------------------------------------------------
# 3. Reproducibility
@probe("reproducibility/default-threads")
def _reproducible(ctx: Context, work: Path) -> Outcome:
    args = [CONFIGS / "digits/transevolve-full.yaml", "train.max_steps=10", "train.eval_every=0", "train.log_every=1"]
    tried = ("the same `train digits/transevolve-full.yaml train.max_steps=10 train.eval_every=0` twice, "
             f"default thread count (torch sees {os.cpu_count()} CPUs)")
    runs = []
    for name in ("a", "b"):
        child = ctx.run(ctx.cli("train", *args, "--run-dir", work / name, "--quiet"), work, env=ctx.env(threads=None))
        if child.returncode != 0:
            return outcome(tried, "exit 0 twice", f"run {name}: {child.status()}: {child.message()}", False)
        runs.append(work / name)
    equal, text = compare_params(load_params(runs[0]), load_params(runs[1]))
    losses = [[r["loss"] for r in read_metrics(d)[0] if r.get("split") == "train"] for d in runs]
    first_diff = next((i + 1 for i, (a, b) in enumerate(zip(*losses, strict=False)) if a != b), None)
    happened = text + ("; losses equal" if first_diff is None else f"; losses first differ at step {first_diff}")
    return outcome(tried, "bit-identical parameters and losses", happened, equal and first_diff is None)


# ---------------------------------------------------------------------------------------------------------
# 4. torchrun
QUICK_PRESETS = {("digits", "transformer"), ("digits", "transevolve-full"), ("digits", "transevolve-random"),
                 ("reverse", "transevolve-full"), ("arithmetic", "transevolve-full")}


def presets() -> list[tuple[str, str]]:
    """(task, variant) of every preset under configs/<task>/ (base.yaml excluded)."""
    found = []
    for directory in sorted(p for p in CONFIGS.iterdir() if (p / "base.yaml").is_file()):
        found += [(directory.name, f.stem) for f in sorted(directory.glob("*.yaml")) if f.name != "base.yaml"]
    return found


def missing_data(task: str) -> list[str] | None:
    """Data packages of ``task`` not fetched (None when the library cannot tell)."""
    try:
        from transevolve.data import packages
        from transevolve.tasks import TASKS

        return [name for name in TASKS[task].data_packages if not packages.is_fetched(name)]
    except Exception:  # an unknown task or a changed API: let the run itself tell
        return None


def _preset_probe(task: str, variant: str) -> Callable[[Context, Path], Outcome]:
    def run_preset(ctx: Context, work: Path) -> Outcome:
        preset = f"{task}/{variant}.yaml"
        overrides = ["train.max_steps=2", "train.eval_every=0", "train.eval_batches=2", "train.log_every=1",
                     "train.beam_size=1", "train.final_eval_max_examples=64", "train.bleu_max_sentences=16"]
        tried = (f"torchrun --nproc_per_node=2 train {preset} (2 steps, eval_batches=2, beam_size=1, final evaluation "
                 "on 64 examples)")
        missing = missing_data(task)
        if missing:
            return outcome(tried, "exit 0", f"data not fetched ({', '.join(missing)}): run `transevolve data fetch "
                           f"{task}`", None)
        run_dir = work / "run"
        child = ctx.run(ctx.torchrun(2, "train", CONFIGS / preset, *overrides, "--run-dir", run_dir, "--quiet"), work)
        results = read_json(run_dir / "results.json") or {}
        problems = []
        if child.returncode != 0:
            problems.append(f"{child.status()}: {child.message()}")
        elif results.get("world_size") != 2:
            problems.append(f"results.json world_size={results.get('world_size')}")
        happened = "; ".join(problems) or (f"exit 0 in {child.seconds:.1f} s, {results.get('parameters', 0):,} "
                                           f"parameters, test {_short(results.get('test'))}")
        return outcome(tried, "exit 0, results.json world_size 2", happened, not problems,
                       command=ctx.show(child.command), output_tail=child.output[-3000:])

    return run_preset


def _short(metrics: Any) -> str:
    if not isinstance(metrics, dict):
        return "?"
    return ", ".join(f"{k} {v:.3g}" for k, v in metrics.items() if isinstance(v, int | float))


for _task, _variant in presets():
    PROBES.append(Probe(f"torchrun/preset/{_task}/{_variant}", _preset_probe(_task, _variant),
                        quick=(_task, _variant) in QUICK_PRESETS))


def _parity(extra: list[str]) -> Callable[[Context, Path], Outcome]:
    def run_parity(ctx: Context, work: Path) -> Outcome:
        args = [CONFIGS / "digits/transevolve-full.yaml", "model.dropout=0", *extra, "train.max_steps=4",
                "train.eval_every=0", "train.log_every=1", "--quiet"]
        tried = f"train digits/transevolve-full.yaml model.dropout=0 {' '.join(extra)} (4 steps): 1 vs 2 processes"
        one = ctx.run(ctx.cli("train", *args, "--run-dir", work / "one"), work)
        two = ctx.run(ctx.torchrun(2, "train", *args, "--run-dir", work / "two"), work)
        for name, child in (("1 process", one), ("2 processes", two)):
            if child.returncode != 0:
                return outcome(tried, "exit 0", f"{name}: {child.status()}: {child.message()}", False,
                               output_tail=child.output[-3000:])
        equal, text = compare_params(load_params(work / "two"), load_params(work / "one"), tolerance=1e-5,
                                     ignore=dead_masks(work / "one"))
        return outcome(tried, "final parameters equal within 1e-5 (entries that provably get no gradient aside)",
                       text, equal)

    return run_parity


PROBES.append(Probe("torchrun/parity/official", _parity([]), quick=True))
PROBES.append(Probe("torchrun/parity/lean", _parity(["model.fidelity=lean"]), quick=False))
PROBES.append(Probe("torchrun/parity/reference-attention", _parity(["model.attention_impl=reference"]), quick=False))


# ---------------------------------------------------------------------------------------------------------
# Report
COLUMNS = (("probe", 64), ("tried", 80), ("expected", 60), ("happened", 150), ("result", 6))


def _cell(text: str, width: int) -> str:
    text = re.sub(r"\s+", " ", str(text)).replace("|", "/").strip()
    return text if len(text) <= width else text[: width - 3] + "..."


def table(results: list[Result], full: bool = False) -> str:
    """A Markdown table of the results (cells shortened unless ``full``)."""
    lines = ["| " + " | ".join(name for name, _ in COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for r in results:
        values = (r.id, r.tried, r.expected, r.happened, r.status)
        lines.append("| " + " | ".join(_cell(v, 10_000 if full else w) for v, (_, w) in zip(values, COLUMNS,
                                                                                                strict=True)) + " |")
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    info: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform(),
                            "cpus": os.cpu_count()}
    try:
        import torch

        import transevolve

        info["torch"] = torch.__version__
        info["transevolve"] = getattr(transevolve, "__version__", "?")
    except Exception as error:  # the report still says what it could
        info["import_error"] = repr(error)
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30).stdout.strip()
        info["git"] = commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def run_probes(ctx: Context, chosen: list[Probe]) -> Iterator[Result]:
    """Run each probe in its own directory; a probe that raises reports FAIL with the error."""
    for item in chosen:
        began = time.monotonic()
        work = ctx.workdir(item.id)
        try:
            tried, expected, happened, passed, details = item.function(ctx, work)
            status = SKIP if passed is None else PASS if passed else FAIL
        except ProbeFailure as error:
            tried, expected, happened, status, details = "(precondition)", "-", str(error), FAIL, {}
        except Exception as error:  # a bug in the probe itself must not hide the other probes
            import traceback

            tried, expected, status = "(probe crashed)", "-", FAIL
            happened = f"probe error {type(error).__name__}: {error}"
            details = {"traceback": traceback.format_exc()}
        yield Result(item.id, ctx.show(tried), expected, ctx.show(happened), status, time.monotonic() - began,
                     details)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the CI subset (a few minutes on 2 cores)")
    parser.add_argument("--only", action="append", default=[], metavar="PATTERN",
                        help="only probes with this id, group prefix (bad-inputs, torchrun/preset) or glob; "
                             "repeatable or comma-separated")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--seed", type=int, help="seed of the random interruption moments (default: random, "
                                                 "recorded in the JSON)")
    parser.add_argument("--timeout", type=float, default=600.0, help="hang guard per child process, seconds")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directories")
    parser.add_argument("--list", action="store_true", help="list the selected probes and exit")
    parser.add_argument("--full-cells", action="store_true", help="do not shorten table cells")
    parser.add_argument("--verbose", "-v", action="store_true", help="print every command on stderr")
    args = parser.parse_args(argv)
    chosen = select(PROBES, args.only, args.quick)
    if args.list:
        for item in chosen:
            print(f"{item.id}{'' if item.quick else '  (full only)'}")
        return 0
    if not chosen:
        parser.error(f"no probe matches {args.only} (see --list)")
    ctx = Context(args)
    began = time.monotonic()
    results: list[Result] = []
    print(f"transevolve reliability probes: {len(chosen)} probes{' (quick)' if args.quick else ''}, seed {ctx.seed}, "
          f"temp {ctx.root}", flush=True)
    try:
        for result in run_probes(ctx, chosen):
            results.append(result)
            print(f"  {result.status:4}  {result.id}  ({result.seconds:.1f} s)  {_cell(result.happened, 160)}",
                  flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(ctx.root, ignore_errors=True)
    seconds = time.monotonic() - began
    counts = Counter(r.status for r in results)
    print()
    print(table(results, args.full_cells))
    print(f"\n{counts[PASS]} passed, {counts[FAIL]} failed, {counts[SKIP]} skipped in {seconds:.0f} s"
          + (f"; kept {ctx.root}" if args.keep else ""))
    if args.out is not None:
        payload = {"schema": SCHEMA, "argv": sys.argv[1:] if argv is None else argv, "quick": args.quick,
                   "only": args.only, "seed": ctx.seed, "seconds": round(seconds, 1),
                   "environment": environment(), "summary": {k: counts[k] for k in (PASS, FAIL, SKIP)},
                   "results": [dataclasses.asdict(r) for r in results]}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(f"wrote {args.out}")
    return 1 if counts[FAIL] else 0


if __name__ == "__main__":
    sys.exit(main())
