"""Checks a reader of the store makes before using it: file checksums against the manifest, a store
that opens cleanly, and a store a student can be trained from."""
from __future__ import annotations

import hashlib

from store.reader import Store, open_store
from store.schema import StoreError

HASH_BLOCK = 1 << 20


def verify_files(store: Store, files: dict[str, str], what: str) -> None:
    """sha256 of each store-relative file against its manifest entry; StoreError on any mismatch."""
    for rel, expected in sorted(files.items()):
        digest = hashlib.sha256()
        try:
            with store.fs.open(store.path(rel), "rb") as fh:
                for block in iter(lambda: fh.read(HASH_BLOCK), b""):
                    digest.update(block)
        except FileNotFoundError:
            raise StoreError(f"{store.url}: {what}: file {rel} is missing; the store is damaged "
                             "(re-run annotate, or `structkd store verify`)") from None
        if digest.hexdigest() != expected:
            raise StoreError(f"{store.url}: {what}: checksum mismatch in {rel}; the store is corrupted "
                             "(re-run annotate for this shard, or `structkd store verify`)")


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
    incomplete one, teachers with different label lists or schemes, another label list than
    ``labels`` (the student's), shards of a teacher the store does not hold, or teacher files that
    fail their checksums. (``open_store`` already refuses another schema version.)"""
    if not store.teachers:
        raise StoreError(f"{store.url}: the store has no teacher")
    if not store.complete:
        pending = store.manifest.get("pending", [])
        raise StoreError(f"{store.url}: the store is incomplete ({len(pending)} shard(s) pending, e.g. "
                         f"{pending[:3]}); finish `structkd annotate` first")
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
    return store_labels, schemes[0]
