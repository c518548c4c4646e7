"""The errors a user can cause, as opposed to bugs: the CLI prints them as one line, no traceback.

- ``UserError``: base class; ``exit_code`` is the process exit status the CLI uses.
- ``ConfigError`` (exit 2, usage): the command line or params.yaml is wrong in itself: an unknown
  or mistyped key, a value out of range, a name that is not one of the valid ones, a ``--params``
  file that does not exist, a device this machine does not have. The message names the dotted key
  (``distill.optim.lr``) or the flag.
- ``DataError`` (exit 1, data): what the config points at is missing or bad: a corpus file, a model
  folder, a store. The message names the file (and line, for corpora).

``ConfigError`` is also a ``ValueError`` (a bad value, and what callers of the config loaders have
always caught); ``pipeline.readers.CorpusError`` is a ``DataError`` and a ``ValueError``; the store's
``StoreError`` is meant to be a ``DataError`` too.
"""
from __future__ import annotations


class UserError(Exception):
    """An error in what the user gave, not in the code; ``exit_code`` is the CLI's exit status."""

    exit_code = 1


class ConfigError(UserError, ValueError):
    """Wrong command line or params.yaml; the message names the key or flag (exit 2, usage)."""

    exit_code = 2


class DataError(UserError):
    """A missing or malformed file, folder or store the config names (exit 1, data)."""

    exit_code = 1
