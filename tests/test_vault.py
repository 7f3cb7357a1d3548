"""The vault on every store: seal, open, ranges, locks, key rotation and KEK destruction.

Includes the issue's acceptance checks: a 1 GiB file sealed and read back byte-exact (whole, and 1 MiB
from the middle) on the embedded store and on SeaweedFS; ``rotate`` under COMPLIANCE lock on SeaweedFS.
"""

from __future__ import annotations

import hashlib
import io
import os
from datetime import UTC, datetime, timedelta

import pytest

from archive.crypto.stream import Binding
from archive.errors import IntegrityError, KeyInUse, KeyUnavailable, ObjectExists, ObjectLocked, RetentionError
from archive.vault import Vault

MiB = 1024 * 1024


def soon(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


@pytest.fixture
def vault(any_store, keyring) -> Vault:
    return Vault(any_store, keyring, segment_size=64 * 1024)


def seal(vault: Vault, name: str, data: bytes, **kw):
    return vault.seal(name, io.BytesIO(data), Binding(f"rec-{name}", "audio"), **kw)


def test_round_trip_and_receipt(vault):
    data = os.urandom(300_000)
    receipt = seal(vault, "call-1", data, retain_until=soon(3600))
    assert receipt.plaintext_sha256 == hashlib.sha256(data).hexdigest()
    assert receipt.plaintext_size == len(data)
    assert receipt.sealed_size == vault.store.head("objects/call-1").size
    assert b"".join(vault.open("call-1", verify_digest=True)) == data
    assert vault.read_range("call-1", 70_000, 200_000) == data[70_000:200_000]
    assert vault.head("call-1").mode.value == "COMPLIANCE"
    assert list(vault.names()) == ["call-1"]


def test_the_store_never_sees_plaintext(vault):
    data = b"card 4111 1111 1111 1111, account 6222021234567890 " * 2000
    seal(vault, "secret", data)
    with vault.store.open("objects/secret") as f:
        sealed = f.read()
    assert b"4111 1111" not in sealed and b"6222021234567890" not in sealed
    with vault.store.open(next(vault.store.list("objects/secret.receipt-"))) as f:
        assert b"4111" not in f.read()


def test_wrong_binding_is_refused(vault):
    seal(vault, "bound", b"x" * 1000)
    with pytest.raises(IntegrityError, match="bound"):
        b"".join(vault.open("bound", Binding("rec-other", "audio")))
    with pytest.raises(IntegrityError):
        vault.read_range("bound", 0, 10, Binding("rec-bound", "video"))


def test_a_receipt_moved_to_another_object_does_not_open(vault):
    """Copy object B's sealed bytes and receipt fields under A's name: the context names the object."""
    seal(vault, "a", b"A" * 5000)
    receipt_b = seal(vault, "b", b"B" * 5000)
    forged = type(receipt_b)(**{**receipt_b.__dict__, "name": "c"})
    with vault.store.open("objects/b") as f:
        vault.store.put("objects/c", f)
    vault.store.put("objects/c.receipt-000001", io.BytesIO(forged.to_bytes()))
    with pytest.raises(IntegrityError):
        b"".join(vault.open("c"))


def test_sealed_names_are_written_once(vault):
    seal(vault, "dup", b"one")
    with pytest.raises(ObjectExists):
        seal(vault, "dup", b"two")
    assert b"".join(vault.open("dup")) == b"one"


def test_hold_extend_and_delete_cover_object_and_receipts(vault):
    seal(vault, "case", b"x" * 100, retain_until=soon(2))
    vault.set_legal_hold("case", True)
    vault.extend_retention("case", soon(3600))
    with pytest.raises(RetentionError):
        vault.extend_retention("case", soon(10))
    for key in ["objects/case", "objects/case.receipt-000001"]:
        assert vault.store.head(key).legal_hold
        assert vault.store.head(key).retain_until >= soon(3590)
    with pytest.raises(ObjectLocked):
        vault.delete("case")
    assert b"".join(vault.open("case")) == b"x" * 100


def test_rotation_rewraps_without_touching_locked_objects(vault):
    data = {f"obj-{i}": os.urandom(10_000 + i) for i in range(5)}
    for name, blob in data.items():
        seal(vault, name, blob, retain_until=soon(3600))
    sealed_before = {n: vault.store.head(f"objects/{n}") for n in data}
    old = vault.keys.current_kek()

    with pytest.raises(KeyInUse, match="5 object"):
        vault.destroy_kek(old)

    report = vault.rotate()
    assert report.rewrapped == 5 and not report.failed and report.current_kek != old
    assert vault.kek_usage() == {report.current_kek: 5}
    for name, blob in data.items():
        after = vault.store.head(f"objects/{name}")
        assert (after.size, after.version_id) == (sealed_before[name].size, sealed_before[name].version_id)
        assert vault.receipt(name).seq == 2
        assert vault.store.head(f"objects/{name}.receipt-000002").retain_until >= soon(3590)
        assert b"".join(vault.open(name)) == blob

    seal(vault, "after-rotation", b"new")
    vault.destroy_kek(old)
    assert all(b"".join(vault.open(n)) == blob for n, blob in data.items())
    assert b"".join(vault.open("after-rotation")) == b"new"
    # The superseded receipts are now useless: their KEK is gone.
    with vault.store.open("objects/obj-0.receipt-000001") as f:
        stale = type(vault.receipt("obj-0")).from_bytes(f.read(), "stale")
    with pytest.raises(KeyUnavailable):
        vault.keys.unwrap(stale.wrapped_key, {"archive:object": "obj-0"})


def test_interrupted_rotation_is_finished_by_rewrap_only(vault):
    for i in range(3):
        seal(vault, f"o{i}", b"x")
    vault.keys.rotate()  # a rotation that died before rewrapping anything
    report = vault.rotate(new_kek=False)
    assert report.rewrapped == 3 and report.already_current == 0
    again = vault.rotate(new_kek=False)
    assert again.rewrapped == 0 and again.already_current == 3


def test_orphan_object_without_receipt_is_reported(vault):
    vault.store.put("objects/orphan", io.BytesIO(b"sealed bytes whose receipt was never written"))
    seal(vault, "fine", b"x")
    assert list(vault.orphans()) == ["orphan"]


# --- the acceptance checks ------------------------------------------------------------------


class _PseudoRandom(io.RawIOBase):
    """A deterministic 1 GiB stream (SHA-256 counter mode) with random access, never held in memory."""

    def __init__(self, size: int) -> None:
        self.size, self.pos = size, 0

    @staticmethod
    def block(i: int) -> bytes:
        seed = hashlib.sha256(i.to_bytes(8, "big")).digest()
        return seed * (MiB // 32)

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self.size - self.pos if n < 0 else min(n, self.size - self.pos)
        out = bytearray()
        while len(out) < n:
            i, off = divmod(self.pos + len(out), MiB)
            out += self.block(i)[off:off + n - len(out)]
        self.pos += n
        return bytes(out)

    def slice(self, start: int, end: int) -> bytes:
        saved, self.pos = self.pos, start
        try:
            return self.read(end - start)
        finally:
            self.pos = saved


@pytest.mark.slow
def test_one_gib_round_trip_whole_and_middle_range(any_store, keyring):
    vault = Vault(any_store, keyring)  # default 1 MiB segments
    size = 1024 * MiB
    source = _PseudoRandom(size)
    receipt = vault.seal("gib", source, Binding("rec-gib", "video"), retain_until=soon(3600))
    expected = hashlib.sha256()
    for i in range(size // MiB):
        expected.update(_PseudoRandom.block(i))
    assert receipt.plaintext_size == size and receipt.plaintext_sha256 == expected.hexdigest()

    got, total = hashlib.sha256(), 0
    for chunk in vault.open("gib"):
        got.update(chunk)
        total += len(chunk)
    assert total == size and got.hexdigest() == expected.hexdigest()

    middle = size // 2 + 12345  # deliberately not segment-aligned
    assert vault.read_range("gib", middle, middle + MiB) == source.slice(middle, middle + MiB)


def test_a_seal_verified_on_the_way_out_reads_nothing_back_where_the_store_confirms_its_bytes(any_store, keyring):
    """verify=True proves every sealed object opens to what was read. S3 confirms by its own SHA-256 that
    it holds exactly the bytes sent, so the stream is checked as it goes out and no GET follows; the
    filesystem confirms nothing, so the object and its receipt are read back."""
    from archive import s3calls
    from archive.vault import SealRequest

    v = Vault(any_store, keyring, segment_size=64 * 1024)
    data = os.urandom(200_000)  # several segments
    client = getattr(any_store, "client", None)
    if client is not None:
        s3calls.count(client)
    s3calls.take()
    receipt = v.seal("records/r1/part.a", io.BytesIO(data), Binding("r1", "a"), retain_until=soon(60),
                     verify=True)
    (many,) = v.seal_many([SealRequest("records/r2/manifest", io.BytesIO(b"{}"), Binding("r2", "manifest"),
                                       retain_until=soon(60))], verify=True)
    sent = s3calls.take()
    if client is not None:
        assert sent == {"PutObject": 4}, sent  # two objects, two receipts: nothing read back
    assert receipt.plaintext_sha256 == hashlib.sha256(data).hexdigest() and many.plaintext_size == 2
    assert v.read("records/r1/part.a", Binding("r1", "a")) == data
