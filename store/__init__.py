"""The teacher-output store: ``open_store`` to read, ``StoreWriter`` to write, ``verify_store`` to check.

See store/README.md for the schema and docs/DESIGN.md for the contract.
"""
from store.reader import Store, open_store
from store.schema import SCHEMA_VERSION, StoreError, StoreLockedError, StoreOptions, TeacherMeta
from store.verify import verify_store
from store.writer import ShardSpec, StoreWriter

__all__ = ["SCHEMA_VERSION", "ShardSpec", "Store", "StoreError", "StoreLockedError", "StoreOptions",
           "StoreWriter", "TeacherMeta", "open_store", "verify_store"]
