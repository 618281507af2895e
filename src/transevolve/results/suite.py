"""The suite file: tasks, model rows, the two comparisons and the claims (see :mod:`transevolve.results`).

A suite file (``configs/results/suite.yaml``; ``quick.yaml`` starts from it with ``base:``) has these keys::

    seeds: [0, 1, 2]
    models:                                  # the rows: a name and the model fields that differ (a preset)
      transformer: {attention: softmax, ff_type: full}
      transevolve-randomFF-1x4: {attention: evolved, ff_type: random}
    comparisons:
      equal-size: {rows: [transformer, transevolve-randomFF-1x4]}           # the task's width and depth
      equal-parameters: {rows: [...], match_parameters: true, reference: transformer, tolerance: 0.05}
    tasks:
      listops:
        base: ../listops/base.yaml           # the task's run file (relative to the suite file)
        metric: accuracy                     # the headline test metric
        steps: 4000                          # the step budget of every cell, or TODO (not measured yet)
        budget: converged                    # converged | budget-limited | TODO: what the learning curve showed
        curve_steps: 8000                    # the cap of the learning-curve run that chooses ``steps``
        options: {...}                       # task options, model and train fields on top of the run file
        model: {...}
        train: {...}
        models: {sparse: {sparse_block_size: 20}}    # per-row model fields for this task
        rows: [transformer, ...]             # optional: only these rows on this task (default: every row)
    claims:
      - id: ...                              # see :class:`Claim`

Cells are (task, row at a width, seed). A row of the ``equal-size`` comparison keeps the task's width; a row of a
``match_parameters`` comparison gets the width (even, a multiple of ``num_heads``: :func:`match_width`) whose
non-embedding parameters are closest to the reference row's, within ``tolerance``; a row whose matched width is the
task's width is the same cell in both comparisons (trained once).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transevolve.config import ModelConfig
from transevolve.errors import ConfigError
from transevolve.train.config import RunConfig, apply_dotted, load_yaml_with_base, run_config_from_dict

DEFAULT_SUITE = "results/suite.yaml"
QUICK_SUITE = "results/quick.yaml"
TODO = "TODO"
BUDGETS = ("converged", "budget-limited", TODO)
#: Claim metrics: ``headline`` is the task's test metric; ``train_tokens_per_second_side_by_side`` the rows' training
#: speed measured in one process, round by round (:mod:`transevolve.results.speed`); the others are fields of every
#: cell record.
CLAIM_METRICS = ("headline", "parameters", "flops_per_token", "train_tokens_per_second",
                 "train_tokens_per_second_side_by_side", "inference_tokens_per_second", "train_seconds")
#: Metrics that do not vary with the training seed (computed from the configuration): one seed decides.
DETERMINISTIC_METRICS = ("parameters", "flops_per_token")
EXPECTATIONS = ("higher", "lower", "comparable")
#: The classifier head is counted with this many classes when widths are matched (from the config alone, no data).
MATCH_CLASSES = 10

_SUITE_KEYS = {"description", "seeds", "models", "comparisons", "tasks", "claims"}
_TASK_KEYS = {"base", "metric", "steps", "budget", "curve_steps", "options", "model", "train", "models", "note",
              "rows"}
_COMPARISON_KEYS = {"description", "rows", "match_parameters", "reference", "tolerance"}
_CLAIM_KEYS = {"id", "quote", "source", "metric", "expect", "margin", "relative_margin", "comparisons", "tasks",
               "pairs", "note"}


@dataclass(frozen=True)
class TaskSpec:
    """One task of the suite. ``steps`` is None while the budget is still to be chosen (``TODO``)."""

    name: str
    base: dict[str, Any]
    metric: str
    steps: int | None
    budget: str
    curve_steps: int
    model_fields: dict[str, dict[str, Any]] = field(default_factory=dict)
    note: str = ""
    rows: tuple[str, ...] | None = None           # the rows trained on this task; None: every row

    @property
    def task_name(self) -> str:
        return str(self.base["task"]["name"])


@dataclass(frozen=True)
class Comparison:
    """A set of rows compared on every task: at the task's width and depth, or at matched parameter counts."""

    name: str
    rows: tuple[str, ...]
    description: str = ""
    match_parameters: bool = False
    reference: str | None = None
    tolerance: float = 0.05


@dataclass(frozen=True)
class Claim:
    """A published claim and how the suite checks it.

    ``pairs`` are (A, B) rows; the per-seed difference ``metric(A) - metric(B)`` is checked against ``expect``
    (``higher``: A above B by more than the margin; ``lower``: below by more than it; ``comparable``: within it) on
    every task of ``tasks`` and every comparison of ``comparisons`` (see :mod:`transevolve.results.stats`).
    ``relative_margin`` is a fraction of B's mean (e.g. 0.5 with ``lower``: A at most half of B).
    """

    id: str
    quote: str
    source: str
    metric: str
    expect: str
    comparisons: tuple[str, ...]
    tasks: tuple[str, ...]
    pairs: tuple[tuple[str, str], ...]
    margin: float = 0.0
    relative_margin: float = 0.0
    note: str = ""

    @property
    def deterministic(self) -> bool:
        return self.metric in DETERMINISTIC_METRICS


@dataclass(frozen=True)
class Cell:
    """A row at one width on one task; ``name`` names its directory (``<row>``, ``<row>@w<width>`` when the width
    is not the task's, ``<row>@curve`` for the learning-curve run)."""

    task: str
    row: str
    width: int
    matched: bool = False
    curve: bool = False

    @property
    def name(self) -> str:
        if self.curve:
            return f"{self.row}@curve"
        return f"{self.row}@w{self.width}" if self.matched else self.row


@dataclass(frozen=True)
class Suite:
    """A parsed suite file; ``widths[(task, comparison, row)]`` is the width of that row in that comparison."""

    source: str
    seeds: tuple[int, ...]
    models: dict[str, dict[str, Any]]
    comparisons: dict[str, Comparison]
    tasks: dict[str, TaskSpec]
    claims: tuple[Claim, ...]
    widths: dict[tuple[str, str, str], int]
    parameters: dict[tuple[str, str, int], int]
    description: str = ""
    selected_rows: tuple[str, ...] | None = None
    selected_comparisons: tuple[str, ...] | None = None

    def model_fields(self, task: str, row: str, width: int | None = None) -> dict[str, Any]:
        """The model section of a row on a task (the run file's, the task's, the row's, the task's per-row fields),
        at ``width`` when given (``time_dim`` follows: ``width / num_heads``)."""
        spec = self.tasks[task]
        fields = {**(spec.base.get("model") or {}), **self.models[row], **spec.model_fields.get(row, {}), "name": row}
        if width is not None and width != fields.get("width"):
            fields["width"] = width
            fields["time_dim"] = width // int(fields.get("num_heads", ModelConfig.num_heads))
        return fields

    def rows(self, task: str, comparison: str) -> tuple[str, ...]:
        """The rows of ``comparison`` that ``task`` trains (its ``rows`` list, when given, restricts them)."""
        only = self.tasks[task].rows
        return tuple(r for r in self.comparisons[comparison].rows if only is None or r in only)

    def cell(self, task: str, comparison: str, row: str) -> Cell:
        width = self.widths[(task, comparison, row)]
        return Cell(task, row, width, matched=width != self.task_width(task, row))

    def task_width(self, task: str, row: str) -> int:
        return int(self.model_fields(task, row).get("width", ModelConfig.width))

    def cells(self, task: str) -> list[Cell]:
        """Every cell of a task (each once, comparison order), restricted to the selected rows and comparisons."""
        cells: list[Cell] = []
        for comparison in self.comparisons.values():
            if self.selected_comparisons is not None and comparison.name not in self.selected_comparisons:
                continue
            for row in self.rows(task, comparison.name):
                if self.selected_rows is not None and row not in self.selected_rows:
                    continue
                cell = self.cell(task, comparison.name, row)
                if cell not in cells:
                    cells.append(cell)
        return cells

    def curve_cell(self, task: str) -> Cell:
        """The learning-curve run of a task: the Transformer (the first row of the first comparison), seed 0."""
        row = self.curve_row
        return Cell(task, row, self.task_width(task, row), curve=True)

    @property
    def curve_row(self) -> str:
        return next(iter(self.comparisons.values())).rows[0]

    def run_config(self, cell: Cell, seed: int, overrides: list[str] | None = None) -> RunConfig:
        """The training run of one cell (the curve cell trains ``curve_steps``, the others ``steps``)."""
        spec = self.tasks[cell.task]
        steps = spec.curve_steps if cell.curve else spec.steps
        if steps is None:
            raise ConfigError(f"task {cell.task}: the step budget is {TODO}; run its learning curve first "
                              f"(transevolve results run) and set tasks.{cell.task}.steps")
        return self._run_config(cell, seed, steps, overrides)

    def _run_config(self, cell: Cell, seed: int, steps: int, overrides: list[str] | None = None) -> RunConfig:
        data = copy.deepcopy(self.tasks[cell.task].base)
        data["model"] = self.model_fields(cell.task, cell.row, cell.width)
        data["train"] = {**(data.get("train") or {}), "max_steps": steps, "seed": seed}
        return run_config_from_dict(apply_dotted(data, overrides or []))


# -- parsing -----------------------------------------------------------------------------------------------------
def _require_mapping(value: Any, what: str, source: Path) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: {what} must be a mapping, got {value!r}")
    return value


def _unknown(data: dict[str, Any], known: set[str], what: str, source: Path) -> None:
    extra = sorted(set(data) - known)
    if extra:
        raise ConfigError(f"{source}: {what} has unknown keys {extra} (known: {sorted(known)})")


def _rows(value: Any, what: str, models: dict[str, Any], source: Path) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{source}: {what} must be a non-empty list of model rows, got {value!r}")
    missing = [v for v in value if v not in models]
    if missing:
        raise ConfigError(f"{source}: {what} names {missing}, not in models {list(models)}")
    if len(set(value)) != len(value):
        raise ConfigError(f"{source}: {what} lists a row twice: {value}")
    return tuple(value)


def _parse_task(name: str, raw: Any, source: Path, models: dict[str, Any]) -> TaskSpec:
    spec = _require_mapping(raw, f"tasks.{name}", source)
    _unknown(spec, _TASK_KEYS, f"tasks.{name}", source)
    for key in ("base", "metric", "steps", "budget", "curve_steps"):
        if key not in spec:
            raise ConfigError(f"{source}: tasks.{name} needs {key} (keys: base, metric, steps, budget, curve_steps; "
                              "optional options, model, train, models, note)")
    steps, budget, curve_steps = spec["steps"], spec["budget"], spec["curve_steps"]
    if steps != TODO and not (isinstance(steps, int) and steps > 0):
        raise ConfigError(f"{source}: tasks.{name}.steps must be a positive integer or {TODO}, got {steps!r}")
    if budget not in BUDGETS:
        raise ConfigError(f"{source}: tasks.{name}.budget must be one of {list(BUDGETS)}, got {budget!r}")
    if (steps == TODO) != (budget == TODO):
        raise ConfigError(f"{source}: tasks.{name}: steps {steps!r} and budget {budget!r} must both be {TODO} or both "
                          "be set (the budget says whether the learning curve had converged at that step)")
    if not (isinstance(curve_steps, int) and curve_steps > 0):
        raise ConfigError(f"{source}: tasks.{name}.curve_steps must be a positive integer, got {curve_steps!r}")
    if not isinstance(spec["metric"], str):
        raise ConfigError(f"{source}: tasks.{name}.metric must be a metric name, got {spec['metric']!r}")
    base = load_yaml_with_base(source.parent / str(spec["base"]))
    if not isinstance(base.get("task"), dict) or not base["task"].get("name"):
        raise ConfigError(f"{source}: tasks.{name}.base ({spec['base']}) does not name a task")
    base = copy.deepcopy(base)
    base["task"]["options"] = {**(base["task"].get("options") or {}),
                               **_require_mapping(spec.get("options") or {}, f"tasks.{name}.options", source)}
    base["model"] = {**(base.get("model") or {}),
                     **_require_mapping(spec.get("model") or {}, f"tasks.{name}.model", source)}
    base["train"] = {**(base.get("train") or {}),
                     **_require_mapping(spec.get("train") or {}, f"tasks.{name}.train", source)}
    per_row = _require_mapping(spec.get("models") or {}, f"tasks.{name}.models", source)
    stray = sorted(set(per_row) - set(models))
    if stray:
        raise ConfigError(f"{source}: tasks.{name}.models names {stray}, not in models {list(models)}")
    rows = None if spec.get("rows") is None else _rows(spec["rows"], f"tasks.{name}.rows", models, source)
    return TaskSpec(name, base, spec["metric"], None if steps == TODO else steps, budget, curve_steps,
                    {k: dict(_require_mapping(v or {}, f"tasks.{name}.models.{k}", source)) for k, v in
                     per_row.items()}, str(spec.get("note") or ""), rows)


def _parse_claim(index: int, raw: Any, source: Path, models: dict[str, Any], comparisons: dict[str, Comparison],
                 tasks: dict[str, Any]) -> Claim:
    claim = _require_mapping(raw, f"claims[{index}]", source)
    _unknown(claim, _CLAIM_KEYS, f"claims[{index}]", source)
    for key in ("id", "quote", "source", "metric", "expect", "comparisons", "tasks", "pairs"):
        if key not in claim:
            raise ConfigError(f"{source}: claims[{index}] needs {key}")
    where = f"claim {claim['id']}"
    if claim["metric"] not in CLAIM_METRICS:
        raise ConfigError(f"{source}: {where}: metric must be one of {list(CLAIM_METRICS)}, got {claim['metric']!r}")
    if claim["expect"] not in EXPECTATIONS:
        raise ConfigError(f"{source}: {where}: expect must be one of {list(EXPECTATIONS)}, got {claim['expect']!r}")
    margin, relative = claim.get("margin", 0.0), claim.get("relative_margin", 0.0)
    for key, value in (("margin", margin), ("relative_margin", relative)):
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"{source}: {where}: {key} must be a non-negative number, got {value!r}")
    if margin and relative:
        raise ConfigError(f"{source}: {where}: give margin (metric units) or relative_margin (fraction of B), not both")
    if claim["expect"] == "comparable" and not (margin or relative):
        raise ConfigError(f"{source}: {where}: expect comparable needs a margin or relative_margin > 0 (how close "
                          "counts as comparable)")
    names = claim["comparisons"]
    if not isinstance(names, list) or not names or any(n not in comparisons for n in names):
        raise ConfigError(f"{source}: {where}: comparisons must list some of {list(comparisons)}, got {names!r}")
    claim_tasks = claim["tasks"]
    if not isinstance(claim_tasks, list) or not claim_tasks or any(t not in tasks for t in claim_tasks):
        raise ConfigError(f"{source}: {where}: tasks must list some of {list(tasks)}, got {claim_tasks!r}")
    pairs = claim["pairs"]
    if not isinstance(pairs, list) or not pairs or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
        raise ConfigError(f"{source}: {where}: pairs must be a list of [A, B] rows, got {pairs!r}")
    for a, b in pairs:
        for row in (a, b):
            if row not in models:
                raise ConfigError(f"{source}: {where}: pair [{a}, {b}] names {row!r}, not in models {list(models)}")
    return Claim(str(claim["id"]), str(claim["quote"]).strip(), str(claim["source"]), claim["metric"],
                 claim["expect"], tuple(names), tuple(claim_tasks), tuple((a, b) for a, b in pairs), float(margin),
                 float(relative), str(claim.get("note") or "").strip())


def non_embedding_parameters(kind: str, fields: dict[str, Any]) -> int:
    """Non-embedding parameters of a model section (``kind``: the model kind), counted from the config alone."""
    from transevolve.params import count_parameters

    config = ModelConfig(kind=kind, vocab_size=2,  # type: ignore[arg-type]
                         num_classes=MATCH_CLASSES if kind == "classifier" else None, **fields)
    return count_parameters(config).non_embedding


def match_width(kind: str, fields: dict[str, Any], target: int, tolerance: float) -> int:
    """The width (even and a multiple of ``num_heads``, up to 16x the row's width) whose non-embedding parameters
    are closest to ``target``; ``ConfigError`` when even the closest is more than ``tolerance`` away."""
    heads = int(fields.get("num_heads", ModelConfig.num_heads))
    step = math.lcm(2, heads)
    base = int(fields.get("width", ModelConfig.width))
    best: tuple[float, int, int] | None = None
    for width in range(step, 16 * base + 1, step):
        try:
            count = non_embedding_parameters(kind, {**fields, "width": width, "time_dim": width // heads})
        except ValueError:
            continue
        gap = abs(count - target) / target
        if best is not None and count > target and gap > best[0]:
            break                         # parameters grow with width: every wider candidate is further away
        if best is None or gap < best[0]:
            best = (gap, width, count)
    if best is None or best[0] > tolerance:
        found = "no valid width" if best is None else f"width {best[1]} gives {best[2]:,} ({best[0]:+.1%})"
        raise ConfigError(f"row {fields.get('name')!r}: no width matches {target:,} non-embedding parameters within "
                          f"{tolerance:.0%}; closest: {found}")
    return best[1]


def _depth(fields: dict[str, Any]) -> int:
    return int(fields.get("num_blocks", ModelConfig.num_blocks)) * int(fields.get("layers_per_block",
                                                                                  ModelConfig.layers_per_block))


def load_suite(name: str = DEFAULT_SUITE, only_tasks: list[str] | None = None, only_models: list[str] | None = None,
               seeds: int | None = None, only_comparisons: list[str] | None = None) -> Suite:
    """Read and check a suite file (a path or a packaged preset such as ``results/quick.yaml``): every cell's
    configuration is built once, so that a bad row or task fails here, before any training. ``only_*`` select
    the cells to train (tasks, rows, comparisons); the claims and widths still cover the whole file."""
    from transevolve.compare import preset_path
    from transevolve.tasks import get_task
    from transevolve.train.loop import MODEL_KIND

    source = preset_path(name)
    data = load_yaml_with_base(source)
    _unknown(data, _SUITE_KEYS, "the suite file", source)
    file_seeds = data.get("seeds", [0])
    if not isinstance(file_seeds, list) or not file_seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in file_seeds):
        raise ConfigError(f"{source}: seeds must be a non-empty list of non-negative integers, got {file_seeds!r}")
    if seeds is not None and seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    models = _require_mapping(data.get("models"), "models", source)
    if not models or not all(isinstance(v, dict) for v in models.values()):
        raise ConfigError(f"{source}: models must map a row name to model fields, e.g. {{transformer: {{attention: "
                          "softmax}}}")
    raw_comparisons = _require_mapping(data.get("comparisons"), "comparisons", source)
    comparisons: dict[str, Comparison] = {}
    for comparison_name, raw in raw_comparisons.items():
        spec = _require_mapping(raw, f"comparisons.{comparison_name}", source)
        _unknown(spec, _COMPARISON_KEYS, f"comparisons.{comparison_name}", source)
        rows = _rows(spec.get("rows"), f"comparisons.{comparison_name}.rows", models, source)
        match = bool(spec.get("match_parameters", False))
        reference = spec.get("reference")
        tolerance = spec.get("tolerance", 0.05)
        if match and reference not in rows:
            raise ConfigError(f"{source}: comparisons.{comparison_name} matches parameters: its reference "
                              f"({reference!r}) must be one of its rows {list(rows)}")
        if not isinstance(tolerance, int | float) or not 0 < tolerance < 1:
            raise ConfigError(f"{source}: comparisons.{comparison_name}.tolerance must be in (0, 1), got "
                              f"{tolerance!r}")
        comparisons[comparison_name] = Comparison(comparison_name, rows, str(spec.get("description") or ""),
                                                  match, reference, float(tolerance))
    if not comparisons:
        raise ConfigError(f"{source}: comparisons must define at least one comparison")
    raw_tasks = _require_mapping(data.get("tasks"), "tasks", source)
    if not raw_tasks:
        raise ConfigError(f"{source}: tasks must name at least one task")
    tasks = {name: _parse_task(name, raw, source, models) for name, raw in raw_tasks.items()}
    claims = tuple(_parse_claim(i, raw, source, models, comparisons, tasks)
                   for i, raw in enumerate(data.get("claims") or []))
    if len({c.id for c in claims}) != len(claims):
        raise ConfigError(f"{source}: two claims share an id")
    curve_row = next(iter(comparisons.values())).rows[0]
    for task_name, spec in tasks.items():
        if spec.rows is not None and curve_row not in spec.rows:
            raise ConfigError(f"{source}: tasks.{task_name}.rows leaves out {curve_row}, the row whose learning curve "
                              "sets the task's step budget (the first row of the first comparison): add it")
    for claim in claims:
        for task_name in claim.tasks:
            only = tasks[task_name].rows
            absent = sorted({r for pair in claim.pairs for r in pair} - set(only or models))
            if absent:
                raise ConfigError(f"{source}: claim {claim.id} compares {absent} on {task_name}, but "
                                  f"tasks.{task_name}.rows does not train them (it lists {list(only or [])}); add "
                                  f"them there or take {task_name} out of the claim's tasks")
    for selection, available, what in ((only_tasks, tasks, "task"), (only_models, models, "model"),
                                       (only_comparisons, comparisons, "comparison")):
        missing = sorted(set(selection or []) - set(available))
        if missing:
            raise ConfigError(f"unknown {what}(s) {missing}; {source} defines {list(available)}")
    if only_tasks:
        tasks = {k: v for k, v in tasks.items() if k in only_tasks}
    label = str(source) if Path(name).is_file() else name
    suite = Suite(label, tuple(range(seeds)) if seeds else tuple(file_seeds), {k: dict(v) for k, v in models.items()},
                  comparisons, tasks, claims, {}, {}, str(data.get("description") or "").strip(),
                  tuple(only_models) if only_models else None, tuple(only_comparisons) if only_comparisons else None)
    for task_name, spec in tasks.items():
        try:
            kind = MODEL_KIND[get_task(spec.task_name, **spec.base["task"]["options"]).kind]
        except ValueError as error:
            raise ConfigError(f"{source}: tasks.{task_name}: {error}") from None
        for comparison in comparisons.values():
            _resolve_widths(suite, task_name, comparison, kind, source)
    return suite


def _resolve_widths(suite: Suite, task: str, comparison: Comparison, kind: str, source: Path) -> None:
    """Fill ``suite.widths`` and ``suite.parameters`` for one comparison on one task; check every configuration."""
    def count(row: str, width: int) -> int:
        fields = suite.model_fields(task, row, width)
        try:
            number = non_embedding_parameters(kind, fields)
            suite._run_config(Cell(task, row, width), suite.seeds[0], 1)
        except (ValueError, TypeError) as error:
            raise ConfigError(f"{source}: task {task}, row {row} (width {width}): {error}") from None
        suite.parameters[(task, row, width)] = number
        return number

    rows = suite.rows(task, comparison.name)
    if not rows:
        return
    widths = {row: suite.task_width(task, row) for row in rows}
    if comparison.match_parameters:
        assert comparison.reference is not None
        if comparison.reference not in rows:
            raise ConfigError(f"{source}: tasks.{task}.rows leaves out {comparison.reference}, the reference of "
                              f"comparison {comparison.name}: add it (the other rows are matched to its parameters)")
        target = count(comparison.reference, widths[comparison.reference])
        for row in rows:
            if row != comparison.reference:
                try:
                    widths[row] = match_width(kind, suite.model_fields(task, row), target, comparison.tolerance)
                except ConfigError as error:
                    raise ConfigError(f"{source}: task {task}, comparison {comparison.name}: {error}") from None
    else:
        first = rows[0]
        shape = (widths[first], _depth(suite.model_fields(task, first)))
        for row in rows[1:]:
            other = (widths[row], _depth(suite.model_fields(task, row)))
            if other != shape:
                raise ConfigError(f"{source}: task {task}, comparison {comparison.name} compares equal width and "
                                  f"depth, but {row} has width {other[0]} and depth {other[1]} where {first} has "
                                  f"{shape[0]} and {shape[1]}")
    for row, width in widths.items():
        count(row, width)
        suite.widths[(task, comparison.name, row)] = width
