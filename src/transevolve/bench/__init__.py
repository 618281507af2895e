"""Benchmarks: analytic cost model (:mod:`.flops`), timing and memory harness (:mod:`.harness`,
:mod:`.memory`), the profiled time split of a step (:mod:`.split`), decoding speed (:mod:`.decode`), the suite
(:mod:`.suite`), reports (:mod:`.report`) and the ``transevolve bench`` command (:mod:`.cli`)."""

from transevolve.bench.flops import flop_breakdown, flops_per_token

__all__ = ["flop_breakdown", "flops_per_token"]
