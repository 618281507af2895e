"""``transevolve results``: the results suite (issue #17) and RESULTS.md.

The suite file (``configs/results/suite.yaml``) names the tasks (each with its run file, headline metric and step
budget), the model rows (model fields, as in ``configs/compare/``), two comparisons (equal width and depth; equal
non-embedding parameters, widths matched from the config) and the published claims to check. ``transevolve results
run`` trains every cell (task, row, seed) through the normal recipe and writes one JSON record per cell; ``transevolve
results report`` turns the records into RESULTS.md with tables, figures and a verdict per claim, without training.

- :mod:`transevolve.results.suite`: parsing and checking the suite file, width matching, cell configurations;
- :mod:`transevolve.results.cells`: training a cell, its measurements and record, skipping and resuming;
- :mod:`transevolve.results.speed`: the rows' training speed measured side by side in one process (``transevolve
  results speed``), for the speed claim: cells' own tokens/s come from different sessions and hosts;
- :mod:`transevolve.results.stats`: paired comparisons over seeds and the verdict rules;
- :mod:`transevolve.results.report`: RESULTS.md, ``summary.json`` and the figures.
"""

from transevolve.results.cells import run_cell, run_suite
from transevolve.results.report import write_report
from transevolve.results.suite import DEFAULT_SUITE, QUICK_SUITE, Suite, load_suite

__all__ = ["DEFAULT_SUITE", "QUICK_SUITE", "Suite", "load_suite", "run_cell", "run_suite", "write_report"]
