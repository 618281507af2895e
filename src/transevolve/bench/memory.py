"""Peak memory of one step, measured in this fresh interpreter: ``python -m transevolve.bench.memory JSON``.

JSON: ``{"spec": ModelSpec.to_dict(), "length": n, "batch": b, "mode": "train" | "infer"}``, optionally with
``"precision"`` (``fp32``/``bf16``, default fp32) and ``"dense_backend"`` (default ``auto``). Prints
``{"peak_mb": ..., "baseline_mb": ...}``: the resident-set high-water mark after the step minus the resident set
just before it, with model, optimizer and batch already built and one tiny matmul run so that the math libraries
are loaded. The high-water mark is reset right before the step (Linux ``/proc/self/clear_refs``, value 5) so that
building the model does not hide the step's peak, and read from ``VmHWM`` in ``/proc/self/status`` (without /proc:
the ``ru_maxrss`` difference, a lower bound). The parent starts this process with ``MALLOC_MMAP_THRESHOLD_=65536``
and ``malloc_trim`` runs before the baseline, so that freed tensors go back to the system instead of being reused
from the heap unseen. A training step is the first one, so the Adam state it allocates is included; an inference
step runs under ``torch.inference_mode``.

With ``"modes": ["infer", "train"]`` instead of ``"mode"`` one process measures every mode in that order, each
against its own baseline taken right before its step (the peak reset again), and prints ``{"peaks_mb": {mode:
...}, "baselines_mb": {mode: ...}}``; it saves an interpreter start per mode. Inference goes first, so that the
training step's gradients and Adam state are not in its baseline.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import resource
import sys

import torch

from transevolve.bench.harness import ModelSpec, build, make_batch, step_functions


def _max_rss_mb() -> float:
    """The resident-set high-water mark (``VmHWM``; ``ru_maxrss`` where /proc is missing), in MB.

    ``ru_maxrss`` is not used on Linux: it survives ``execve``, so a child started by a big parent would report
    the parent's peak.
    """
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0                               # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _reset_peak() -> float:
    """Return freed heap pages to the system, reset the high-water mark to the current resident set; returns
    the baseline in MB."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    return _max_rss_mb()


def main(argv: list[str]) -> None:
    request = json.loads(argv[0])
    spec = ModelSpec.from_dict(request["spec"])
    torch.manual_seed(0)
    model = build(spec)
    ids, labels = make_batch(spec, int(request["batch"]), int(request["length"]))
    train_step, inference = step_functions(model, ids, labels, request.get("precision", "fp32"),
                                           request.get("dense_backend", "auto"))
    torch.ones(64, 64) @ torch.ones(64, 64)
    peaks, baselines = {}, {}
    for mode in request.get("modes", [request.get("mode")]):
        gc.collect()
        baselines[mode] = _reset_peak()
        (train_step if mode == "train" else inference)()
        peaks[mode] = _max_rss_mb() - baselines[mode]
    if "modes" in request:
        print(json.dumps({"peaks_mb": peaks, "baselines_mb": baselines}))
    else:
        print(json.dumps({"peak_mb": peaks[request["mode"]], "baseline_mb": baselines[request["mode"]]}))


if __name__ == "__main__":
    main(sys.argv[1:])
