"""Paired comparisons over training seeds and the verdict rules of the results suite.

Two rows A and B trained with the same seeds give per-seed differences ``d_s = m_A(s) - m_B(s)`` (a seed fixes the
initialisation, dropout and data order of both, so pairing removes what the seed does to both alike). Over the
``n`` seeds both have finished: the mean ``d``, the sample standard deviation ``s``, the standard error
``se = s / sqrt(n)``, the paired t statistic ``t = d / se`` and whether every ``d_s`` has the sign of ``d``
(reported, not used by the rule).

The verdict on one comparison of a claim (``k = 2`` standard errors; ``m`` the margin in metric units, or the
relative margin times ``|mean of B|``), from the interval ``[d - k se, d + k se]``:

- ``higher`` (A above B by more than m): **held** when ``d - k se > m``; **not held** when ``d + k se <= m``;
- ``lower`` (A below B by more than m): **held** when ``d + k se < -m``; **not held** when ``d - k se >= -m``;
- ``comparable`` (within m, m > 0): **held** when ``-m < d - k se`` and ``d + k se < m``; **not held** when
  ``d - k se >= m`` or ``d + k se <= -m``;
- otherwise **cannot tell at this scale**, and always so with fewer than 3 seeds (two seeds give a standard
  deviation from one degree of freedom: no spread to compare with); metrics that do not depend on the seed
  (parameters, analytic FLOPs) have ``se = 0`` and one seed suffices.

With m = 0 this reads: held when the mean difference is in the claimed direction and exceeds 2 standard errors,
not held when it is in the opposite direction (or zero) beyond 2 standard errors. With 3 seeds, ``|t| > 2`` is a
screening rule, not a significance test (the two-sided 5% critical value of t with 2 degrees of freedom is 4.30).

A claim checked on several tasks, pairs and comparisons is **held** when every check is held, **not held** when at
least one is not held, and otherwise **cannot tell at this scale** (some checks undecided or not run).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

HELD = "held"
NOT_HELD = "not held"
CANNOT_TELL = "cannot tell at this scale"
NOT_RUN = "not run"
#: Standard errors the mean difference must clear.
STANDARD_ERRORS = 2.0
MIN_SEEDS = 3                  # seed-dependent verdicts need this many paired seeds


@dataclass(frozen=True)
class Paired:
    """Per-seed differences A - B over the seeds both rows have finished, and their summary."""

    seeds: tuple[int, ...]
    differences: tuple[float, ...]
    mean_a: float
    mean_b: float

    @property
    def n(self) -> int:
        return len(self.differences)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.differences)

    @property
    def std(self) -> float:
        return statistics.stdev(self.differences) if self.n > 1 else 0.0

    @property
    def stderr(self) -> float:
        return self.std / math.sqrt(self.n)

    @property
    def t(self) -> float | None:
        """The paired t statistic (None for one seed or identical differences)."""
        return self.mean / self.stderr if self.n > 1 and self.stderr > 0 else None

    @property
    def sign_consistent(self) -> bool:
        """Every per-seed difference is non-zero with the sign of the mean."""
        return self.mean != 0 and all(d * self.mean > 0 for d in self.differences)


def paired(a: dict[int, float], b: dict[int, float]) -> Paired | None:
    """Pair the per-seed values of two rows (``{seed: metric}``) over the seeds both have; None when none."""
    seeds = tuple(sorted(set(a) & set(b)))
    if not seeds:
        return None
    return Paired(seeds, tuple(a[s] - b[s] for s in seeds), statistics.fmean(a[s] for s in seeds),
                  statistics.fmean(b[s] for s in seeds))


def margin_of(margin: float, relative_margin: float, comparison: Paired) -> float:
    """The margin in metric units: ``margin``, or ``relative_margin`` times the magnitude of B's mean."""
    return margin if margin else relative_margin * abs(comparison.mean_b)


def verdict(comparison: Paired | None, expect: str, margin: float = 0.0, deterministic: bool = False) -> str:
    """The verdict on one paired comparison (rules in the module docstring)."""
    if comparison is None:
        return NOT_RUN
    if not deterministic and comparison.n < MIN_SEEDS:
        return CANNOT_TELL
    spread = 0.0 if deterministic else STANDARD_ERRORS * comparison.stderr
    low, high = comparison.mean - spread, comparison.mean + spread
    if expect == "higher":
        return HELD if low > margin else NOT_HELD if high <= margin else CANNOT_TELL
    if expect == "lower":
        return HELD if high < -margin else NOT_HELD if low >= -margin else CANNOT_TELL
    if expect == "comparable":
        if margin <= 0:
            raise ValueError("a comparable claim needs a margin > 0")
        if -margin < low and high < margin:
            return HELD
        return NOT_HELD if low >= margin or high <= -margin else CANNOT_TELL
    raise ValueError(f"expect must be higher, lower or comparable, got {expect!r}")


def overall(verdicts: list[str]) -> str:
    """A claim's verdict from its checks: held when all are held, not held when any is, else cannot tell."""
    if any(v == NOT_HELD for v in verdicts):
        return NOT_HELD
    if verdicts and all(v == HELD for v in verdicts):
        return HELD
    return CANNOT_TELL
