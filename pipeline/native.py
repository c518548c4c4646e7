"""The CRF kernels in C (pipeline/csrc/*.c): compiled once per machine with the system's C
compiler, loaded with ctypes, used for CPU tensors by ``pipeline.kbest.kbest_beam`` (the k-best
beam, kbest.c) and ``pipeline.chain_partition.LogPartition`` (log Z and its gradient, partition.c).

Why: the torch versions are dispatch-bound (one ``torch.topk`` per k-best position costs ~20-60 us,
more than its arithmetic; a [32, 9] @ [9, 9] step of the scaled forward ~2 us against ~1 us of
selects around it); the C loops have no per-position dispatch (bench/README.md, "k-best: a C beam"
and "log Z in C"). No torch headers are needed, so the build takes a fraction of a second.

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

SOURCES = tuple(Path(__file__).with_name("csrc") / name for name in ("kbest.c", "partition.c"))
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
        done = subprocess.run([compiler, "-O3", "-shared", "-fPIC", "-o", tmp, *map(str, SOURCES)],
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
    digest = hashlib.sha256(b"".join(source.read_bytes() for source in SOURCES)).hexdigest()[:16]
    target = cache_dir() / f"crf-{digest}-{platform.system()}-{platform.machine()}.so"
    try:
        if not target.exists() and not _build(target):
            return None
        lib = ctypes.CDLL(str(target))
    except OSError:
        return None
    lib.structkd_kbest.restype = ctypes.c_int
    lib.structkd_kbest.argtypes = [_POINTER] * 5 + [_INT] * 6 + [ctypes.c_int, _POINTER, _POINTER]
    lib.structkd_log_partition.restype = ctypes.c_int
    lib.structkd_log_partition.argtypes = [_POINTER] * 5 + [_INT] * 6 + [ctypes.c_int] + [_POINTER] * 4
    _loaded = lib
    return lib


def _inputs(emissions: Tensor, transitions: Tensor, start: Tensor, end: Tensor,
            lengths: Tensor) -> tuple[tuple[Tensor, ...], list[int]]:
    """The contiguous float32 / int64 copies (kept alive by the caller during the call) and the
    leading arguments both C entry points take (five pointers, B, L, T, TB, SB, EB). ValueError for
    a layout the C code would misread."""
    em = emissions.float().contiguous()
    trans, first, last = (x.float().contiguous() for x in (transitions, start, end))
    lengths = lengths.long().contiguous()
    batch, length, num_labels = em.shape
    rows = {1, batch}
    if (trans.dim() != 3 or trans.shape[0] not in rows or trans.shape[1:] != (num_labels, num_labels)
            or any(x.dim() != 2 or x.shape[0] not in rows or x.shape[1] != num_labels for x in (first, last))
            or lengths.shape != (batch,) or bool((lengths > length).any())):
        raise ValueError(f"native CRF kernels: emissions {tuple(em.shape)} with transitions "
                         f"{tuple(trans.shape)}, start {tuple(first.shape)}, end {tuple(last.shape)}, "
                         f"lengths {tuple(lengths.shape)}: expected [B or 1, T, T], [B or 1, T] and [B] <= L")
    kept = (em, trans, first, last, lengths)
    return kept, [x.data_ptr() for x in kept] + [batch, length, num_labels, trans.shape[0],
                                                 first.shape[0], last.shape[0]]


def kbest(lib: ctypes.CDLL, emissions: Tensor, transitions: Tensor, start: Tensor, end: Tensor,
          lengths: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Paths [B, k, L] (long, 0 at padding and on rows of score -inf) and scores [B, k] (float32,
    best first) of prepared CPU potentials: emissions [B, L, T], transitions [B or 1, T, T], start
    and end [B or 1, T], lengths [B]."""
    kept, args = _inputs(emissions, transitions, start, end, lengths)
    batch, length, num_labels = kept[0].shape
    paths = torch.zeros(batch, k, length, dtype=torch.long)
    scores = torch.empty(batch, k, dtype=torch.float32)
    if lib.structkd_kbest(*args, k, paths.data_ptr(), scores.data_ptr()) != 0:
        raise MemoryError(f"k-best (k={k}) of a [{batch}, {length}, {num_labels}] batch: out of memory")
    return paths, scores


def log_partition(lib: ctypes.CDLL, emissions: Tensor, transitions: Tensor, start: Tensor, end: Tensor,
                  lengths: Tensor, grad: bool) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """log Z [B] (float64), ok [B] (bool: the exactness check of partition.c passed; the others
    need the log-space recursions) and, with ``grad``, node marginals [B, L, T] and per-sentence
    transition counts [B, T, T] (float32, zero for sentences not ok) of prepared CPU potentials."""
    kept, args = _inputs(emissions, transitions, start, end, lengths)
    batch, length, num_labels = kept[0].shape
    log_z = torch.empty(batch, dtype=torch.float64)
    ok = torch.empty(batch, dtype=torch.uint8)
    node = torch.zeros(batch, length, num_labels) if grad else None
    counts = torch.zeros(batch, num_labels, num_labels) if grad else None
    status = lib.structkd_log_partition(*args, int(grad), log_z.data_ptr(), ok.data_ptr(),
                                        0 if node is None else node.data_ptr(),
                                        0 if counts is None else counts.data_ptr())
    if status != 0:
        raise MemoryError(f"log Z of a [{batch}, {length}, {num_labels}] batch: out of memory")
    return log_z, ok.bool(), node, counts
