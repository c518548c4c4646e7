"""Checks a reader of the store makes before using it: file checksums against the manifest, a store
that opens cleanly, a store a student can be trained from (labels, k, verification records), and
whether a failure is damage or another annotate rewriting the store under the reader."""
from __future__ import annotations


from store.files import holder_alive, parse_lock, sha256_file
from store.reader import Store, open_store
from store.schema import LOCK_FILE, VERIFIED, StoreError, StoreLockedError, modified_message, table_path
from store.verify import check_shard, teacher_problems


def writer_pid(store: Store) -> str | None:
    """``pid N`` (``on HOST`` when another host) of a live annotate holding the store's write lock,
    else None. Read through the store's file system, so it works on any fsspec store."""
    try:
        with store.fs.open(f"{store.root}/{LOCK_FILE}", "rb") as fh:
            holder = parse_lock(fh.read(4096))
    except (OSError, ValueError):
        return None
    if holder is None or not holder_alive(holder):
        return None
    return f"pid {holder['pid']}" + ("" if holder.get("host") is None else f" on {holder['host']}")


def damaged(store: Store, what: str, problem: str) -> StoreError:
    """The error for a file that is missing or fails its checksum: while another annotate holds the
    store's lock that is its rewrite in progress, not damage (StoreLockedError)."""
    pid = writer_pid(store)
    if pid is not None:
        return StoreLockedError(f"{store.url}: {what}: another annotate is writing this store ({pid}): "
                                "wait for it to finish, then start again")
    return StoreError(f"{store.url}: {what}: {problem}")


def verify_files(store: Store, files: dict[str, str], what: str) -> None:
    """sha256 of each store-relative file against its manifest entry; StoreError on any mismatch."""
    for rel, expected in sorted(files.items()):
        try:
            digest = sha256_file(store.path(rel), store.fs)
        except FileNotFoundError:
            raise damaged(store, what, f"file {rel} is missing; the store is damaged (re-run annotate, or "
                          "`structkd store verify`)") from None
        if digest != expected:
            raise damaged(store, what, f"checksum mismatch in {rel}; the store is corrupted (re-run "
                          "annotate for this shard, or `structkd store verify`)")


def open_checked(path: str) -> Store:
    """``open_store`` with every failure to decode the store's metadata or teacher arrays (a damaged
    file) reported as a StoreError naming the store."""
    try:
        return open_store(path)
    except StoreError:
        raise
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
        raise StoreError(f"{path}: cannot open the store ({type(err).__name__}: {err}); it may be "
                         "damaged: run `structkd store verify`") from None


def check_store(store: Store, labels: list[str] | None = None) -> tuple[list[str], str]:
    """The store's label list and tag scheme, refusing a store a student cannot be trained from: an
    incomplete one, a manifest modified after annotate wrote it, teachers with different label lists
    or schemes, another label list than ``labels`` (the student's), a teacher label list that the
    teacher's files or the shards' gold columns contradict, shards of a teacher the store does not
    hold, or teacher files that fail their checksums. (``open_store`` already refuses another schema
    version.)"""
    if not store.teachers:
        raise StoreError(f"{store.url}: the store has no teacher")
    if not store.complete:
        pending = store.manifest.get("pending", [])
        pid = writer_pid(store)
        if pid is not None:
            raise StoreLockedError(f"{store.url}: another annotate is writing this store ({pid}): wait for "
                                   "it to finish, then start again")
        raise StoreError(f"{store.url}: the store is incomplete ({len(pending)} shard(s) pending, e.g. "
                         f"{pending[:3]}); finish `structkd annotate` first")
    if store.manifest_state == "modified":
        raise StoreError(modified_message(store.url))
    try:
        store_labels = store.labels
    except StoreError as err:
        raise StoreError(f"{err}; one student needs one label list") from None
    if labels is not None and list(labels) != store_labels:
        raise StoreError(f"{store.url}: the store's labels {store_labels} do not match the student's "
                         f"{list(labels)}")
    unknown = sorted({str(e.get("teacher")) for e in store.manifest["shards"].values()} - set(store.teachers))
    if unknown:
        raise StoreError(f"{store.url}: shards of unknown teacher(s) {unknown}; the manifest is damaged "
                         "(`structkd store verify`)")
    schemes = sorted({t.scheme for t in store.teachers.values()})
    if len(schemes) != 1:
        raise StoreError(f"{store.url}: teachers use different tag schemes {schemes}")
    for tid, entry in store.manifest["teachers"].items():
        verify_files(store, entry.get("files", {}), f"teacher {tid}")
    problems = teacher_problems(store)
    if problems:
        raise StoreError(f"{store.url}: {problems[0]}; the manifest was changed: re-run annotate")
    check_gold_labels(store)
    return store_labels, schemes[0]


def check_gold_labels(store: Store) -> None:
    """Each teacher's label list against the gold columns of its first labeled shard: annotate
    stored ``gold_ids`` as indices into that list, so a list permuted or renamed since (by hand, or
    in a store older than the manifest digest) maps some gold label to another id. One shard's two
    small columns per teacher, after its table's checksum."""
    for tid, teacher in store.teachers.items():
        shard = next((s for s in store.shards(teacher=tid) if store.shard_info(s)["split"] != "unlabeled"),
                     None)
        if shard is None:
            continue
        rel = table_path(shard)
        verify_files(store, {rel: store.shard_info(shard).get("files", {}).get(rel, "")}, f"shard {shard}")
        table = store.read_table(shard, ["sid", "gold", "gold_ids"])
        index = {label: i for i, label in enumerate(teacher.labels)}
        for sid, gold, ids in zip(*(table.column(c).to_pylist() for c in ("sid", "gold", "gold_ids"))):
            for label, got in zip(gold or [], ids or []):
                if index.get(label, -1) != got:
                    named = teacher.labels[got] if 0 <= got < len(teacher.labels) else "no label"
                    raise StoreError(f"{store.url}: teacher {tid}: its label list {teacher.labels} does not "
                                     f"match the gold labels of shard {shard} (sentence {sid}: gold "
                                     f"{label!r} is stored as id {got}, which the list names {named!r}); "
                                     "the manifest's labels were changed: re-run annotate")


def check_k(store: Store, k: int | None) -> None:
    """Refuse to train with more k-best paths than the store holds (a stream would silently deliver
    the store's k). ``None``: all the store holds."""
    if k is None:
        return
    held = min([store.options.k] + [t.k for t in store.teachers.values()])
    if not 1 <= k <= held:
        raise StoreError(f"{store.url}: k = {k} k-best paths asked, but the store holds k = {held} per "
                         f"sentence: use k <= {held}, or annotate a new store with k >= {k}")


def check_verified(store: Store) -> None:
    """Refuse a store whose shards `store verify` would reject. Shards written by this structkd carry
    the record of the write-time check (``verified`` in their manifest entry, under the manifest
    digest), so this costs nothing; a shard of an earlier store without it is checked in full here
    (as `store verify` does: the whole teacher computation again, from its stored potentials)."""
    for shard, entry in store.manifest["shards"].items():
        if entry.get("verified") == VERIFIED:
            continue
        verify_files(store, entry.get("files", {}), f"shard {shard}")
        problems = check_shard(store, shard, max_problems=1)
        if problems:
            raise StoreError(f"{store.url}: {problems[0]}; `structkd store verify` rejects this store: "
                             "re-run annotate")
