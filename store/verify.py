"""``verify_store(path) -> list of problems``: checksums, layout, and the invariants of every sentence
recomputed from its stored potentials. Each problem names the shard (and sentence) at fault."""
from __future__ import annotations

import os
import warnings

import numpy as np
import pyarrow as pa

from store.files import sha256_file
from store.frame import list_column
from store.reader import Store, open_store
from store.schema import (ARC_OFFSETS, MARKER_DIR, TABLE_DIR, TEACHER_DIR, TENSOR_DIR, TOKEN_OFFSETS,
                          StoreError,
                          StoreOptions, TeacherMeta, make_sid, marker_path, modified_message, table_path,
                          teacher_entry_problems, teacher_path, tensor_path)
from store.tensors import DP_TOL, QUANTUM, edge_offsets, recompute
from store.verify_kbest import gold_ids_agree, kbest_columns, kbest_problems
from store.verify_spans import span_checker
from store.verify_trees import tree_references, tree_sentence


def _sha256(store: Store, rel: str) -> str:
    return sha256_file(store.path(rel), store.fs)


def _on_disk(store: Store, rel: str) -> set[str]:
    """Store-relative paths of the files under ``rel`` (a file or folder); empty when absent or
    outside the store (a symbolic link: the files listed there are reported by ``_check_files``)."""
    try:
        full = store.path(rel)
    except StoreError:
        return set()
    if not store.fs.exists(full):
        return set()
    found = store.fs.find(full) if store.fs.isdir(full) else [full]
    prefix = store.root.lstrip("/") + "/"
    return {p.lstrip("/")[len(prefix):] for p in found}


def _check_files(store: Store, what: str, files: dict, owned: list[str]) -> list[str]:
    """Every listed file exists, belongs to ``owned`` paths and matches its sha256; nothing unlisted."""
    problems = []
    for rel, digest in files.items():
        if not any(rel == own or rel.startswith(own + "/") for own in owned):
            problems.append(f"{what}: manifest lists foreign file {rel}")
            continue
        try:
            full = store.path(rel)
        except StoreError as err:
            problems.append(f"{what}: {err}")
            continue
        if not store.fs.exists(full):
            problems.append(f"{what}: missing file {rel}")
        elif _sha256(store, rel) != digest:
            size = store.fs.size(full)
            problems.append(f"{what}: checksum mismatch in {rel} ({size} bytes; changed or truncated)")
    on_disk = set().union(*(_on_disk(store, own) for own in owned))
    problems += [f"{what}: unlisted file {rel}" for rel in sorted(on_disk - set(files))]
    return problems


def _path_logprob(teacher: TeacherMeta, em: np.ndarray, paths: np.ndarray, log_z: float) -> np.ndarray:
    """Log-prob [P] of each path [P, L] from one sentence's stored emissions [L, T] (float64)."""
    em = em.astype(np.float64) / teacher.tau
    positions = np.arange(em.shape[0])
    a = teacher.arrays
    bad = ~a["allowed_start"][paths[:, 0]] | ~a["allowed_end"][paths[:, -1]]
    bad |= (~a["allowed_transitions"][paths[:, :-1], paths[:, 1:]]).any(1)
    if teacher.is_crf:
        with np.errstate(invalid="ignore"):
            trans, start, end = (a[n].astype(np.float64) / teacher.tau
                                 for n in ("transitions", "start", "end"))
            score = em[positions, paths].sum(1) + start[paths[:, 0]] + end[paths[:, -1]]
            score = score + trans[paths[:, :-1], paths[:, 1:]].sum(1)
        out = score - log_z
    else:
        log_soft = em - np.logaddexp.reduce(em, axis=1, keepdims=True)
        out = log_soft[positions, paths].sum(1)
    return np.where(bad, -np.inf, out)


def _sentence(sid: str, L: int, cols: dict, row: int, teacher: TeacherMeta, em: np.ndarray,
              node: np.ndarray, edge: np.ndarray, ref: dict, mtol: float) -> list[str]:
    """Problems of one sentence (empty when every invariant holds)."""
    out = []
    T = len(teacher.labels)
    log_z, ztol, lp, paths, viterbi = kbest_columns(cols, row, L)
    tokens = cols["tokens"].row(row)

    def fail(what: str) -> None:
        out.append(f"sentence {sid}: {what}")

    if len(tokens) != L or len(viterbi) != L or paths.shape != (len(lp), L):
        return [f"sentence {sid}: tokens / viterbi / k-best shapes do not match length {L}"]
    if not np.isfinite(em).all():
        fail("emissions are not finite")
    if np.abs(node.sum(1) - 1).max(initial=0) > T * mtol:
        fail(f"node marginals do not sum to 1 (max error {np.abs(node.sum(1) - 1).max():.2e})")
    sides = max(np.abs(edge.sum(2) - node[:-1]).max(initial=0), np.abs(edge.sum(1) - node[1:]).max(initial=0))
    if sides > (T + 1) * mtol:
        fail(f"edge marginals summed over one side differ from the node marginals (max {sides:.2e})")
    stored = max(np.abs(node - ref["node"]).max(initial=0), np.abs(edge - ref["edge"]).max(initial=0))
    if stored > mtol:
        fail(f"stored marginals differ from those recomputed from the potentials (max {stored:.2e})")
    if abs(log_z - ref["log_z"]) > ztol:
        fail(f"log Z {log_z:.6f} != {ref['log_z']:.6f} recomputed from the potentials")
    real = np.isfinite(lp)
    if paths.min(initial=0) < 0 or paths.max(initial=0) >= T or np.any(paths[~real] != 0):
        fail("k-best paths hold labels out of range or non-zero surplus rows")
    own = _path_logprob(teacher, em, paths[real], ref["log_z"]) if real.any() else np.zeros(0)
    out += [f"sentence {sid}: {p}" for p in kbest_problems(
        lp, ref["kbest_logprob"].astype(np.float64), own, float(cols["residual_mass"].row(row)), ztol)]
    tied = _path_logprob(teacher, em, np.stack([viterbi, ref["viterbi"]]), ref["log_z"])
    if real.any() and not np.array_equal(paths[0], viterbi) and abs(tied[0] - lp[0]) > 2 * ztol:
        fail("the best k-best path is not the Viterbi path")
    if tied[1] > tied[0] + 2 * ztol:
        fail("the stored Viterbi path is not the best path of the potentials")
    if not gold_ids_agree(cols["gold"].row(row), cols["gold_ids"].row(row), teacher.labels, L):
        fail("gold / gold_ids do not agree with the teacher's labels")
    return out


def check_rows(shard: str, info: dict, teacher: TeacherMeta, options: StoreOptions, table: pa.Table,
               stored: dict[str, np.ndarray], max_problems: int = 10) -> list[str]:
    """Invariants of every sentence of one shard (``info``: its corpus, split, first_index) from its
    Parquet rows and stored arrays, recomputed from the stored potentials (a tree teacher's:
    store/verify_trees.py, a span teacher's: store/verify_spans.py). ``check_shard`` runs it on a
    shard as read back; ``StoreWriter.write_shard`` on the rows it is about to commit."""
    cols = {name: list_column(table, name) for name in table.column_names}
    offsets = stored[TOKEN_OFFSETS]
    try:  # the teacher computation may refuse these potentials (e.g. a k-best sum > 1)
        if teacher.is_span:
            sentence = span_checker(teacher, stored, cols, options.tensors == "full", _stored_tolerance(options))
        else:
            sentence = (_tree_checker if teacher.is_tree else _chain_checker)(teacher, stored, cols, options)
    except ValueError as err:
        return [f"shard {shard}: the teacher outputs cannot be recomputed from its stored potentials: {err}"]
    problems = []
    for row in range(table.num_rows):
        sid = str(cols["sid"].row(row))
        L = int(cols["length"].row(row))
        expected = make_sid(info["corpus"], info["split"], info["first_index"] + row)
        if sid != expected or L != offsets[row + 1] - offsets[row]:
            problems.append(f"shard {shard}: row {row} is {sid!r} of length {L}, expected sentence "
                            f"{info['first_index'] + row} of {info['corpus']}/{info['split']}")
            continue
        problems += [f"shard {shard}, {p}" for p in sentence(sid, L, row)]
        if len(problems) >= max_problems:
            return problems + [f"shard {shard}: stopped after {max_problems} problems"]
    return problems


def _stored_tolerance(options: StoreOptions) -> float:
    """How far a stored probability may be from the recomputed one (full) or a recomputed one from
    another batch shape (potentials)."""
    return QUANTUM[options.dtype] + options.prune + DP_TOL if options.tensors == "full" else DP_TOL


def _chain_checker(teacher: TeacherMeta, stored: dict, cols: dict, options: StoreOptions):
    """``sentence(sid, L, row) -> problems`` of a chain shard."""
    full, mtol = options.tensors == "full", _stored_tolerance(options)
    offsets = stored[TOKEN_OFFSETS]
    edges = edge_offsets(offsets)
    em = stored["emissions"].astype(np.float32)
    ref = recompute(teacher, em, offsets, k=teacher.k)
    node = stored["node"].astype(np.float32) if full else ref["node"]
    edge = stored["edge"].astype(np.float32) if full else ref["edge"]

    def sentence(sid: str, L: int, row: int) -> list[str]:
        a, b, e0, e1 = offsets[row], offsets[row + 1], edges[row], edges[row + 1]
        sent_ref = {"node": ref["node"][a:b], "edge": ref["edge"][e0:e1], "log_z": float(ref["log_z"][row]),
                    "viterbi": ref["viterbi"][a:b], "kbest_logprob": ref["kbest_logprob"][row]}
        return _sentence(sid, L, cols, row, teacher, em[a:b], node[a:b], edge[e0:e1], sent_ref, mtol)

    return sentence


def _tree_checker(teacher: TeacherMeta, stored: dict, cols: dict, options: StoreOptions):
    """``sentence(sid, L, row) -> problems`` of a tree shard (store/verify_trees.py); relation
    marginals are stored in every mode: rounded to the dtype."""
    full, mtol, rtol = options.tensors == "full", _stored_tolerance(options), QUANTUM[options.dtype] + DP_TOL
    ref = tree_references(teacher, stored, cols)
    arcs = stored[ARC_OFFSETS]
    flat = stored["arc"].astype(np.float32) if full else ref["arc"]

    def sentence(sid: str, L: int, row: int) -> list[str]:
        arc = flat[arcs[row]:arcs[row + 1]].reshape(L, L + 1)
        return tree_sentence(sid, L, cols, row, teacher, stored, arc, ref, mtol, rtol, full)

    return sentence


def check_shard(store: Store, shard: str, max_problems: int = 10) -> list[str]:
    """Invariants of every sentence of one shard of ``store``, recomputed from its stored potentials."""
    info = store.shard_info(shard)
    teacher = store.teachers.get(info["teacher"])
    if teacher is None:
        return [f"shard {shard}: unknown teacher {info['teacher']}"]
    try:
        table = store.read_table(shard)
        stored = store.read_stored(shard)
    except StoreError as err:
        return [str(err)]
    return check_rows(shard, info, teacher, store.options, table, stored, max_problems)


def teacher_problems(store: Store) -> list[str]:
    """Teachers whose manifest entry disagrees with the copy in their files (teacher_entry_problems)."""
    return [problem for tid, entry in store.manifest["teachers"].items()
            for problem in teacher_entry_problems(tid, entry, store.teacher_attrs.get(tid, {}))]


def verify_store(path: str | os.PathLike, storage_options: dict | None = None, *,
                 invariants: bool = True) -> list[str]:
    """All problems of the store at ``path`` (local path or fsspec URL); an empty list means valid."""
    try:
        with warnings.catch_warnings():  # a modified manifest is one of the problems listed below
            warnings.simplefilter("ignore")
            store = open_store(path, storage_options)
    except StoreError as err:
        return [str(err)]
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:  # damaged metadata
        return [(f"{path}: cannot open the store ({type(err).__name__}: {err}); the manifest or a "
                 "teacher file is damaged")]
    manifest = store.manifest
    problems, owned = [], set()
    if store.manifest_state == "modified":
        problems.append(modified_message(str(path)))
    problems += teacher_problems(store)
    damaged = set()  # teachers whose files fail: their shards' invariants would use damaged factors
    for tid, entry in manifest["teachers"].items():
        found = _check_files(store, f"teacher {tid}", entry.get("files", {}), [teacher_path(tid)])
        damaged |= {tid} if found else set()
        problems += found
        owned.add(teacher_path(tid))
    for shard, entry in manifest["shards"].items():
        own = [table_path(shard), tensor_path(shard)]
        owned.update(own + [marker_path(shard)])
        found = _check_files(store, f"shard {shard}", entry.get("files", {}), own)
        if not store.fs.exists(store.path(marker_path(shard))):
            found.append(f"shard {shard}: completion marker {marker_path(shard)} missing")
        problems += found
        if not found and invariants and entry.get("teacher") not in damaged:
            problems += check_shard(store, shard)
    for sub in (TABLE_DIR, TENSOR_DIR, MARKER_DIR, TEACHER_DIR):
        for rel in sorted(_on_disk(store, sub)):
            if not any(rel == own or rel.startswith(own + "/") for own in owned):
                problems.append(f"stray file {rel}: belongs to no shard or teacher of the manifest "
                                "(annotate never deletes a file its records do not name)")
    if not store.complete:
        pending = manifest.get("pending") or []
        problems.append(f"store incomplete: {len(pending)} planned shard(s) not written"
                        + (f", first {pending[0]}" if pending else " (annotate did not finish)"))
    return problems
