"""The object-store contract, run against every backend: the filesystem store and a real SeaweedFS.

Each test states a promise a user relies on: written once, locked until the date, held while held,
extendable but never shortenable, nothing visible after a failed write, hostile keys refused.
"""

from __future__ import annotations

import io
import os
import time
from datetime import UTC, datetime, timedelta

import pytest

from archive.errors import InvalidObjectKey, ObjectExists, ObjectLocked, ObjectNotFound, RetentionError
from archive.store.base import LockMode

def soon(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


def put(store, key: str, data: bytes, **kw):
    return store.put(key, io.BytesIO(data), **kw)


class FailingSource(io.RawIOBase):
    """Yields ``good`` bytes, then fails like a disk or network error mid-stream."""

    def __init__(self, good: int) -> None:
        self.left = good

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            raise OSError("simulated read failure")
        n = self.left if n is None or n < 0 else min(n, self.left)
        self.left -= n
        return os.urandom(n)


def test_put_head_open_and_range(any_store):
    data = os.urandom(100_000)
    info = put(any_store, "rec/1/audio", data, retain_until=soon(3600))
    assert info.size == len(data)
    head = any_store.head("rec/1/audio")
    assert head.size == len(data) and head.mode is LockMode.COMPLIANCE and not head.legal_hold
    assert head.retain_until >= soon(3590)
    with any_store.open("rec/1/audio") as f:
        assert f.read() == data
    assert any_store.read_range("rec/1/audio", 5000, 1234) == data[5000:6234]
    assert any_store.read_range("rec/1/audio", 99_990, 100) == data[99_990:]
    assert any_store.read_range("rec/1/audio", 200_000, 10) == b""


def test_multipart_sized_object_round_trips(any_store):
    data = os.urandom(12 * 1024 * 1024 + 17)  # three parts at the 5 MiB test part size
    put(any_store, "big", data, retain_until=soon(3600))
    with any_store.open("big") as f:
        assert f.read() == data
    assert any_store.head("big").size == len(data)


class Estimating(io.BytesIO):
    """A source whose own size estimate (what a sealer of a file offers, to size the store's buffers)
    is wrong: the file grew or shrank after it was measured."""

    def __init__(self, data: bytes, estimate: int) -> None:
        super().__init__(data)
        self.estimate = estimate

    def remaining_size(self) -> int:
        return self.estimate


@pytest.mark.parametrize("size", [0, 300_000, 5 * 1024 * 1024 - 1, 5 * 1024 * 1024, 5 * 1024 * 1024 + 1])
@pytest.mark.parametrize("estimate", [0, 1000, 64 * 1024 * 1024])
def test_a_wrong_size_estimate_stores_exactly_what_was_read(any_store, size, estimate):
    data = os.urandom(size)
    info = any_store.put("est", Estimating(data, estimate), retain_until=soon(3600))
    assert info.size == len(data) == any_store.head("est").size
    with any_store.open("est") as f:
        assert f.read() == data


def test_objects_are_written_once(any_store):
    put(any_store, "once", b"first", retain_until=soon(3600))
    with pytest.raises(ObjectExists):
        put(any_store, "once", b"second")
    with any_store.open("once") as f:
        assert f.read() == b"first"


@pytest.mark.parametrize("key", ["", "../escape", "/abs", "a//b", "a/./b", "a/../b", "a\x00b", "a b",
                                 "tab\there", "x" * 1100, "a/", "é/ü", "C:\\windows"])
def test_hostile_keys_are_refused(any_store, key):
    with pytest.raises(InvalidObjectKey):
        put(any_store, key, b"x")


def test_missing_object(any_store):
    with pytest.raises(ObjectNotFound):
        any_store.head("nope")
    with pytest.raises(ObjectNotFound):
        any_store.open("nope")
    with pytest.raises(ObjectNotFound):
        any_store.read_range("nope", 0, 1)


def test_retain_until_in_the_past_is_refused(any_store):
    with pytest.raises(RetentionError):
        put(any_store, "past", b"x", retain_until=soon(-60))
    with pytest.raises(ObjectNotFound):
        any_store.head("past")


def test_compliance_lock_refuses_delete_even_with_bypass(any_store):
    put(any_store, "locked", b"evidence", retain_until=soon(3600))
    with pytest.raises(ObjectLocked):
        any_store.delete("locked")
    with pytest.raises(ObjectLocked):
        any_store.delete("locked", bypass_governance=True)
    assert any_store.head("locked").size == 8


def test_retention_extends_but_never_shortens(any_store):
    put(any_store, "ext", b"x", retain_until=soon(3600))
    before = any_store.head("ext").retain_until
    with pytest.raises(RetentionError):
        any_store.extend_retention("ext", soon(60))
    assert any_store.head("ext").retain_until == before
    any_store.extend_retention("ext", soon(7200))
    assert any_store.head("ext").retain_until >= soon(7190)


def test_compliance_cannot_be_weakened_to_governance(any_store):
    put(any_store, "weak", b"x", retain_until=soon(3600))
    with pytest.raises(RetentionError):
        any_store.extend_retention("weak", soon(7200), LockMode.GOVERNANCE)
    assert any_store.head("weak").mode is LockMode.COMPLIANCE


def test_legal_hold_blocks_deletion_until_released(any_store):
    put(any_store, "held", b"x")
    any_store.set_legal_hold("held", True)
    assert any_store.head("held").legal_hold
    with pytest.raises(ObjectLocked):
        any_store.delete("held", bypass_governance=True)
    any_store.set_legal_hold("held", False)
    any_store.delete("held")
    with pytest.raises(ObjectNotFound):
        any_store.head("held")


def test_deletion_works_once_retention_has_passed(any_store):
    put(any_store, "expiring", b"x", retain_until=soon(2))
    with pytest.raises(ObjectLocked):
        any_store.delete("expiring")
    time.sleep(3.2)
    any_store.delete("expiring")
    with pytest.raises(ObjectNotFound):
        any_store.head("expiring")
    assert "expiring" not in list(any_store.list())


def test_governance_yields_only_to_bypass(any_store):
    put(any_store, "gov", b"x", retain_until=soon(3600), mode=LockMode.GOVERNANCE)
    assert any_store.head("gov").mode is LockMode.GOVERNANCE
    with pytest.raises(ObjectLocked):
        any_store.delete("gov")
    any_store.delete("gov", bypass_governance=True)
    with pytest.raises(ObjectNotFound):
        any_store.head("gov")


def test_list_is_sorted_and_prefix_scoped(any_store):
    for key in ["b/2", "a/1", "b/1", "c", "b/10/x"]:
        put(any_store, key, b"x")
    assert list(any_store.list()) == ["a/1", "b/1", "b/10/x", "b/2", "c"]
    assert list(any_store.list("b/")) == ["b/1", "b/10/x", "b/2"]
    assert list(any_store.list("b/1")) == ["b/1", "b/10/x"]
    assert list(any_store.list("zzz/")) == []


@pytest.mark.parametrize("good", [1000, 7 * 1024 * 1024])
def test_failed_write_leaves_nothing_visible(any_store, good):
    with pytest.raises(Exception):
        any_store.put("broken", FailingSource(good), retain_until=soon(3600))
    with pytest.raises(ObjectNotFound):
        any_store.head("broken")
    assert list(any_store.list()) == []
    put(any_store, "broken", b"retry works")  # the key is still free
    with any_store.open("broken") as f:
        assert f.read() == b"retry works"


def test_a_group_is_written_with_each_refusal_kept_to_its_own_object(any_store):
    """put_many: every object of a group under put's rules; one refused object does not sink the rest."""
    from archive.store.base import PutRequest

    put(any_store, "group/taken", b"first", retain_until=soon(3600))
    results = any_store.put_many([
        PutRequest("group/a", io.BytesIO(b"alpha"), retain_until=soon(3600)),
        PutRequest("group/taken", io.BytesIO(b"second")),
        PutRequest("group/../escape", io.BytesIO(b"x")),
        PutRequest("group/past", io.BytesIO(b"x"), retain_until=soon(-60)),
        PutRequest("group/b/deeper", io.BytesIO(b"beta" * 100_000), legal_hold=True),
        PutRequest("group/a", io.BytesIO(b"alpha again")),  # the same key twice in one group: first wins
    ])
    assert [type(r).__name__ for r in results] == ["ObjectInfo", "ObjectExists", "InvalidObjectKey",
                                                   "RetentionError", "ObjectInfo", "ObjectExists"]
    assert results[0].size == 5 and results[4].size == 400_000
    with any_store.open("group/a") as f:
        assert f.read() == b"alpha"
    with any_store.open("group/taken") as f:
        assert f.read() == b"first"
    assert any_store.head("group/a").mode is LockMode.COMPLIANCE and any_store.head("group/b/deeper").legal_hold
    assert list(any_store.list("group/")) == ["group/a", "group/b/deeper", "group/taken"]


def test_a_group_whose_source_fails_leaves_nothing_visible(any_store):
    from archive.store.base import PutRequest

    with pytest.raises(Exception):
        any_store.put_many([PutRequest("g/ok", io.BytesIO(b"fine")),
                            PutRequest("g/broken", FailingSource(1000))])
    with pytest.raises(ObjectNotFound):
        any_store.head("g/broken")
    assert "g/broken" not in list(any_store.list())
