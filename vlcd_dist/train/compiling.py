"""Compiled steps (``run.compile``): each student's forward and backward, and the frozen
teacher's image forward, through ``torch.compile``.

Students are compiled **in place** (:meth:`torch.nn.Module.compile`) before the backend wraps
them: the module object, its parameters and its ``state_dict`` keys stay what they were (no
``_orig_mod.`` prefix), so checkpoints, exports and resume read and write the same files as an
eager run, and a run may be resumed with ``run.compile`` switched on or off. DDP and DeepSpeed
then wrap the compiled module like any other: their gradient hooks sit on the parameters'
gradient accumulation, outside the compiled graph, so gradient sync, no_sync accumulation and
ZeRO partitioning work unchanged (the compiled backward hands all of a student's gradients over
at its end, so on GPUs the all-reduce overlaps less with the backward than in eager mode). The
loss (with its cross-rank gathers), the NaN checks, clipping and the optimizer step stay eager.

The teacher is compiled below its forward-count hook: only its image tower's ``forward`` is
replaced by a compiled one, so ``tower(x)`` still runs the hook in eager Python and the count
of teacher forwards stays exact (a hook traced into a graph would be guarded on the counter's
value and recompile every step).

Inductor, torch.compile's default backend, builds C++ kernels on CPU and Triton kernels on
GPUs; :func:`require_compiler` refuses a run that has no way to build them, before any model is
made.
"""

from __future__ import annotations

import logging
import os
import shutil

import torch
from torch import nn

from vlcd_dist.errors import VlcdError

logger = logging.getLogger("vlcd_dist.train")

CXX_COMPILERS = ("c++", "g++", "clang++")
"""The C++ compilers looked for on PATH (besides $CXX) when compiling for CPU."""


class CompileUnavailableError(VlcdError):
    """run.compile was asked for, but this machine cannot build compiled kernels."""


def require_compiler(device: torch.device) -> None:
    """Raise :class:`CompileUnavailableError` when inductor cannot build kernels for
    ``device``: no C++ compiler on CPU, no Triton on a GPU. Cheap: looks at PATH and imports."""
    if device.type == "cpu":
        cxx = os.environ.get("CXX")
        found = [c for c in ([cxx] if cxx else []) + list(CXX_COMPILERS) if shutil.which(c)]
        if not found:
            raise CompileUnavailableError(
                "run.compile: true on CPU needs a C++ compiler (torch.compile's inductor builds "
                f"C++ kernels), but none of {', '.join(CXX_COMPILERS)} (nor $CXX) is on PATH: "
                "install one (e.g. apt-get install g++) or set run.compile: false"
            )
        return
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            raise CompileUnavailableError(
                "run.compile: true on a GPU needs Triton (torch.compile's inductor builds Triton "
                "kernels), which this environment lacks: install the triton wheel that matches "
                f"torch {torch.__version__}, or set run.compile: false"
            )


def raise_recompile_limit(modules: int) -> None:
    """Every module compiled in place shares the code object of ``Module._call_impl``, and
    dynamo's recompile limit counts entries per code object: K students (plus a shape change or
    two each) would otherwise fall back to eager after 8. Raised to 8 per compiled module."""
    cfg = torch._dynamo.config
    for key in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, key):
            setattr(cfg, key, max(int(getattr(cfg, key)), 8 * modules))


def compile_student(module: nn.Module, mode: str | None) -> nn.Module:
    """Compile ``module`` in place (``module.compile(mode=...)``) and return it: calling it runs
    its compiled forward, and the backward of that forward is compiled too (AOTAutograd).
    Parameters and state dict keys are unchanged. ``mode``: None or a ``torch.compile`` mode."""
    module.compile(mode=mode)
    return module


def compile_tower(tower: nn.Module, mode: str | None) -> None:
    """Replace ``tower.forward`` by its compiled version, leaving ``tower.__call__`` (and the
    forward hooks it runs) eager. For the frozen teacher: no gradients, no state to save."""
    tower.forward = torch.compile(tower.forward, mode=mode)  # type: ignore[method-assign]
