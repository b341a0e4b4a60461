"""The process-level CPU fast path: settings that change how fast a run goes, never what it computes.

- **Allocator.** glibc returns every freed block above its mmap threshold (128 KiB at first, a 256x256 float
  activation is 256 KiB) to the OS and trims the heap top after frees, so each update page-faults its activations
  back in. :func:`configure` raises both thresholds with ``mallopt`` in this process, at run time (no environment
  variable, no re-exec); elsewhere (musl, macOS, Windows) it changes nothing and says so.
- **GEMM.** The ensembles' matmuls stay on torch's ``bmm``/``baddbmm`` (MKL). oneDNN's linear was measured against
  it on AMD Zen 4 and reached the same rate per core (``results/cpu-*.md``), so there is nothing to select.
- **``--compile`` on CPU** runs eagerly (:func:`compile_choice`): compiled, the fine-tuning update measured 0.86-1.00x
  eager on CPU (the loss graphs 1.00x, Inductor's Adam and Polyak steps 0.95x, everything 0.86-0.99x; AMD Zen 3 and
  Zen 4, torch 2.13), so on CPU nothing it compiles wins. ``OPT_FAST_COMPILE_ON_CPU=1`` compiles anyway (the
  benchmark measures that side); on CUDA ``--compile`` compiles (CUDA graphs).

Every setting is detected, applied once per process, can be switched off (``OPT_FAST_CPU_FAST_PATH=0``), and what
was applied is recorded in each run's ``summary.json`` (:func:`describe`).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from typing import Any

import torch

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc caps the mmap threshold at 32 MiB on 64-bit machines (DEFAULT_MMAP_THRESHOLD_MAX); every activation and
# gradient of 256-wide networks at batch 256 (and E <= 40 members) is below it.
MMAP_THRESHOLD = 32 * 2**20
TRIM_THRESHOLD = 1 * 2**30

_applied: dict[str, Any] | None = None


def fast_path_enabled() -> bool:
    """``OPT_FAST_CPU_FAST_PATH=0`` selects the plain path (glibc's default allocator behaviour)."""
    return os.environ.get("OPT_FAST_CPU_FAST_PATH", "1") != "0"


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") else None


def configure() -> dict[str, Any]:
    """Apply the fast path to this process (once; later calls return what the first applied)."""
    global _applied
    if _applied is not None:
        return _applied
    allocator = "default"
    if not fast_path_enabled():
        allocator = "default (OPT_FAST_CPU_FAST_PATH=0)"
    else:
        libc = _glibc()
        if libc is None:
            allocator = "default (no glibc mallopt here)"
        elif libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(_M_TRIM_THRESHOLD,
                                                                                   TRIM_THRESHOLD) == 1:
            allocator = f"glibc mallopt mmap_threshold={MMAP_THRESHOLD} trim_threshold={TRIM_THRESHOLD}"
        else:
            allocator = "default (mallopt refused the thresholds)"
    _applied = {"allocator": allocator, "gemm": "torch bmm (MKL)" if torch.backends.mkl.is_available() else "torch bmm"}
    return _applied


def compile_choice(requested: bool, device: torch.device) -> tuple[bool, str]:
    """Whether ``--compile`` compiles the update steps on ``device``, and what ran, for the run's summary."""
    if not requested:
        return False, "eager"
    if device.type != "cpu":
        return True, f"torch.compile ({device.type})"
    if os.environ.get("OPT_FAST_COMPILE_ON_CPU") == "1":
        return True, "torch.compile (cpu, OPT_FAST_COMPILE_ON_CPU=1)"
    return False, "eager (--compile on cpu: compiled updates measured no faster than eager there)"


def describe() -> dict[str, Any]:
    """What :func:`configure` applied, with the threads torch uses now, for ``summary.json``."""
    return {**configure(), "torch_threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability()}
