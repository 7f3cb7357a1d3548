"""Checking the index against the store (``archive reindex --check``): the index is derived, so trust it
only as far as it agrees with the store.

The index answers the queries that act on records — ``hold place --query``, ``export --query``,
``timeline``, a retention event's selector — so an edited or deleted index row gives silently wrong
answers: a record left out of a hold, an export or a customer's timeline. Nothing in the index is signed;
it is rebuilt from the store (``archive reindex``). This check compares, record by record, what the index
holds with what it would hold if rebuilt now (each backend's ``entry_of(view)`` against its
``entries()``): every committed record is indexed, with its stored view (metadata, parts and their
content digests, retention decision, holds, findings), its search fields, its facets and its text as the
store gives them; and no index row names a record the store does not hold. Each mismatch names the record
and what differs (field names and part digests; never field values, which may be personal data).

It reads every record's manifest (one small object each) and the whole index: run it after any doubt,
on a schedule, and before relying on a query for a hold or an export in a dispute.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from archive.errors import ArchiveError


@dataclass(frozen=True)
class Mismatch:
    """One way the index disagrees with the store."""

    record_id: str
    kind: str  # not-indexed | not-in-store | disposed-but-indexed | differs | unreadable
    message: str

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class IndexCheck:
    records_in_store: int = 0
    entries: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def as_dict(self) -> dict:
        return {"ok": self.ok, "records_in_store": self.records_in_store, "entries": self.entries,
                "mismatches": [m.as_dict() for m in self.mismatches]}


def check_index(retention, index=None, *, progress=None) -> IndexCheck:
    """Compare ``index`` (default: the retention's) with the store; see the module docstring."""
    index = index if index is not None else retention.index
    retention.refresh()
    out = IndexCheck()
    add = out.mismatches.append
    in_store = set(retention.record_ids())
    out.records_in_store = len(in_store)
    disposed = {n.split("/", 1)[1] for n in retention.vault.names("dispositions/", with_receipt=True)}
    seen: set[str] = set()
    for entry in index.entries():
        rid = entry.get("record_id")
        out.entries += 1
        seen.add(rid)
        if rid not in in_store:
            if rid in disposed:
                add(Mismatch(rid, "disposed-but-indexed", f"{rid} was disposed of (dispositions/{rid}) but the index "
                                                          "still has it"))
            else:
                add(Mismatch(rid, "not-in-store", f"the index has {rid}, which the store does not hold (deleted "
                                                  "from the store, or an index row added)"))
            continue
        try:
            expected = index.entry_of(retention.view(retention.manifest(rid)))
        except ArchiveError as e:
            add(Mismatch(rid, "unreadable", f"{rid}: the store's record cannot be read to compare ({e.code}: {e})"))
            continue
        differences = _differences(expected, entry)
        if differences:
            add(Mismatch(rid, "differs", f"{rid}: the index differs from the store in " + "; ".join(differences)))
        if progress and out.entries % 100 == 0:
            progress(out.entries)
    for rid in sorted(in_store - seen):
        add(Mismatch(rid, "not-indexed", f"{rid} is in the store but not in the index: queries (hold --query, "
                                         "export --query, timeline) leave it out"))
    return out


def _differences(expected: dict, actual: dict) -> list[str]:
    """What differs, named by field or path, never by value (except content digests)."""
    out = []
    search_fields = []  # Elasticsearch keeps each search field as a top-level f_<name> (dots as __)
    for key in sorted(set(expected) | set(actual)):
        want, have = expected.get(key), actual.get(key)
        if want == have:
            continue
        if key.startswith("f_"):
            search_fields.append(key[2:].replace("__", "."))
        elif key in ("stored", "record"):
            out += _stored_differences(want or {}, have or {})
        elif isinstance(want, dict) or isinstance(have, dict):  # search fields (SQLite)
            want, have = want or {}, have or {}
            names = sorted(n for n in set(want) | set(have) if want.get(n) != have.get(n))
            out.append("search field(s) " + ", ".join(names))
        elif key == "text":
            out.append("the searchable text")
        else:
            out.append(f"{key}")
    if search_fields:
        out.append("search field(s) " + ", ".join(search_fields))
    return out


def _stored_differences(want: dict, have: dict) -> list[str]:
    out = []
    want_parts = {p.get("name"): p for p in want.get("parts", [])}
    have_parts = {p.get("name"): p for p in have.get("parts", []) if isinstance(p, dict)}
    for name in sorted(set(want_parts) | set(have_parts), key=str):
        w, h = want_parts.get(name), have_parts.get(name)
        if w is None or h is None:
            out.append(f"part {name} ({'missing from the index' if h is None else 'not in the store'})")
        elif w.get("sha256") != h.get("sha256"):
            out.append(f"the content digest of part {name} (index {h.get('sha256')}, store {w.get('sha256')})")
        elif w != h:
            out.append(f"part {name}")
    for key in sorted(set(want) | set(have)):
        if key == "parts" or want.get(key) == have.get(key):
            continue
        w, h = want.get(key), have.get(key)
        if isinstance(w, dict) and isinstance(h, dict):
            names = sorted(k for k in set(w) | set(h) if w.get(k) != h.get(k))
            out.append(f"{key} ({', '.join(names)})")
        else:
            out.append(key)
    return out


def rebuild(retention, *, progress=None) -> tuple[int, list[str]]:
    """``archive reindex``: rebuild the index from the store; returns (records indexed, ids the index had
    that the store no longer holds). The second is the trace a deletion from the store leaves in the index:
    the command names them and records them in its audit event, so a rebuild never erases it silently."""
    before = set(retention.index.record_ids())
    count = retention.rebuild_index(progress=progress)
    return count, sorted(before - set(retention.index.record_ids()))
