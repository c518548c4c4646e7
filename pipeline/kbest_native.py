"""The C k-best beam (pipeline/native/kbest.c): compiled once per machine with the system's C
compiler, loaded with ctypes, used by ``pipeline.kbest.kbest_beam`` for CPU tensors.

Why: the torch beam costs one ``torch.topk`` dispatch per position (~20-60 us, more than its
arithmetic) and stays 2.3-2.9x Viterbi; the C loop has no per-position dispatch (bench/README.md,
"k-best: a C beam"). No torch headers are needed, so the build takes a fraction of a second.

The shared object lives in ``$STRUCTKD_CACHE`` (default ``~/.cache/structkd``), named by the hash
of the source and the machine, written to a temporary file and renamed into place (concurrent
torchrun ranks race harmlessly). Without a compiler, or with ``STRUCTKD_NATIVE=0``, ``load()``
returns None and the torch beam runs: same results, slower.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("native") / "kbest.c"
_POINTER = ctypes.c_void_p
_INT = ctypes.c_int64
_loaded: ctypes.CDLL | None = None
_tried = False


def cache_dir() -> Path:
    return Path(os.environ.get("STRUCTKD_CACHE") or Path.home() / ".cache" / "structkd")


def _build(target: Path) -> bool:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run([compiler, "-O3", "-shared", "-fPIC", "-o", tmp, str(SOURCE)],
                              capture_output=True, timeout=120)
        if done.returncode != 0:
            return False
        os.replace(tmp, target)
        return True
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load() -> ctypes.CDLL | None:
    """The compiled library, built on first use; None when disabled or no compiler works."""
    global _loaded, _tried
    if os.environ.get("STRUCTKD_NATIVE", "1") == "0":
        return None
    if _tried:
        return _loaded
    _tried = True
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    target = cache_dir() / f"kbest-{digest}-{platform.system()}-{platform.machine()}.so"
    try:
        if not target.exists() and not _build(target):
            return None
        lib = ctypes.CDLL(str(target))
    except OSError:
        return None
    lib.structkd_kbest.restype = ctypes.c_int
    lib.structkd_kbest.argtypes = [_POINTER] * 5 + [_INT] * 6 + [ctypes.c_int, _POINTER, _POINTER]
    _loaded = lib
    return lib


def kbest(lib: ctypes.CDLL, emissions: Tensor, transitions: Tensor, start: Tensor, end: Tensor,
          lengths: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Paths [B, k, L] (long, 0 at padding and on rows of score -inf) and scores [B, k] (float32,
    best first) of prepared CPU potentials: emissions [B, L, T], transitions [B or 1, T, T], start
    and end [B or 1, T], lengths [B]."""
    em = emissions.float().contiguous()
    trans, first, last = (x.float().contiguous() for x in (transitions, start, end))
    lengths = lengths.long().contiguous()
    batch, length, num_labels = em.shape
    paths = torch.zeros(batch, k, length, dtype=torch.long)
    scores = torch.empty(batch, k, dtype=torch.float32)
    status = lib.structkd_kbest(em.data_ptr(), trans.data_ptr(), first.data_ptr(), last.data_ptr(),
                                lengths.data_ptr(), batch, length, num_labels, trans.shape[0],
                                first.shape[0], last.shape[0], k, paths.data_ptr(), scores.data_ptr())
    if status != 0:
        raise MemoryError(f"k-best (k={k}) of a [{batch}, {length}, {num_labels}] batch: out of memory")
    return paths, scores
