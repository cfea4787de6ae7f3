"""Where the opt-out list lives: `<storage>/_opt_out.csv`, plus files named by `ATELIER_OPT_OUT` (colon-separated)."""

from __future__ import annotations

import os
import posixpath

from curation.opt_out import OptOut, OptOutList
from orchestration.storage import TableStore

OPT_OUT_FILE = "_opt_out.csv"


def list_path(store: TableStore) -> str:
    return posixpath.join(store.base, OPT_OUT_FILE)


def load_opt_outs(store: TableStore) -> OptOutList:
    """Every request, from the storage's own list and the configured files; a missing configured file is an error."""
    entries: list[OptOut] = []
    blob = store.read_bytes(list_path(store))
    if blob:
        entries += OptOutList.from_csv(blob.decode("utf-8")).entries
    for path in filter(None, os.environ.get("ATELIER_OPT_OUT", "").split(":")):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"ATELIER_OPT_OUT names {path!r}, which does not exist")
        with open(path, encoding="utf-8") as f:
            entries += OptOutList.from_csv(f.read()).entries
    return OptOutList(entries)


def add_opt_outs(store: TableStore, new: list[OptOut]) -> OptOutList:
    """Append requests to the storage's list (written atomically)."""
    blob = store.read_bytes(list_path(store))
    current = OptOutList.from_csv(blob.decode("utf-8")) if blob else OptOutList()
    updated = OptOutList(current.entries + new)
    store.write_bytes(list_path(store), updated.to_csv().encode("utf-8"))
    return updated
