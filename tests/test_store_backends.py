"""What each store backend promises beyond the shared contract.

S3: the *server* enforces the locks (a raw client bypassing this library is refused), the bucket must
have Object Lock, vendor errors keep their request id. Filesystem: crash leftovers stay invisible.
"""

from __future__ import annotations

import io
import os
import stat
from datetime import UTC, datetime, timedelta

import pytest
from botocore.exceptions import ClientError

from archive.errors import ObjectExists, StoreMisconfigured
from archive.store.filesystem import FilesystemStore
from archive.store.s3 import S3Store


def soon(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


@pytest.mark.s3
def test_s3_server_itself_refuses_to_delete_or_shorten_a_locked_version(s3_store):
    s3_store.put("evidence", io.BytesIO(b"call"), retain_until=soon(3600))
    raw, bucket, key = s3_store.client, s3_store.bucket, "archive/evidence"
    version = raw.head_object(Bucket=bucket, Key=key)["VersionId"]
    with pytest.raises(ClientError) as e:
        raw.delete_object(Bucket=bucket, Key=key, VersionId=version, BypassGovernanceRetention=True)
    assert e.value.response["Error"]["Code"] == "AccessDenied"
    with pytest.raises(ClientError):
        raw.put_object_retention(Bucket=bucket, Key=key, VersionId=version,
                                 Retention={"Mode": "COMPLIANCE", "RetainUntilDate": soon(60)})
    assert s3_store.head("evidence").retain_until >= soon(3590)


@pytest.mark.s3
def test_s3_delete_removes_every_version_not_just_a_marker(s3_store):
    s3_store.put("gone", io.BytesIO(b"x"))
    s3_store.delete("gone")
    versions = s3_store.client.list_object_versions(Bucket=s3_store.bucket, Prefix="archive/gone")
    assert not versions.get("Versions") and not versions.get("DeleteMarkers")


@pytest.mark.s3
def test_s3_retain_until_is_never_rounded_down(s3_store):
    wanted = soon(3600).replace(microsecond=999_000)
    s3_store.put("rounded", io.BytesIO(b"x"), retain_until=wanted)
    assert s3_store.head("rounded").retain_until >= wanted


@pytest.mark.s3
def test_s3_refuses_a_bucket_without_object_lock(seaweed):
    client = seaweed.client()
    client.create_bucket(Bucket="plain-bucket-no-lock")
    with pytest.raises(StoreMisconfigured, match="Object Lock"):
        S3Store("plain-bucket-no-lock", client=client)


@pytest.mark.s3
def test_s3_write_once_is_enforced_by_the_server(s3_store):
    """Two writers racing for one key: the store's If-None-Match refuses the second."""
    s3_store.put("race", io.BytesIO(b"winner"))
    with pytest.raises(ClientError) as e:
        s3_store.client.put_object(Bucket=s3_store.bucket, Key="archive/race", Body=b"loser", IfNoneMatch="*")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    with pytest.raises(ObjectExists) as err:
        s3_store.put("race", io.BytesIO(b"loser"))
    assert err.value.code == "object_exists"


def test_filesystem_objects_are_read_only_files(fs_store):
    fs_store.put("a/b", io.BytesIO(b"x"))
    path = fs_store.root / "objects" / "a" / "b#data"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o444


def test_filesystem_crash_leftovers_are_invisible(fs_store):
    # What a crash leaves: a half-written temp file, and metadata whose data never got linked.
    (fs_store.root / "tmp" / "deadbeef.part").write_bytes(b"half")
    (fs_store.root / "objects" / "x").mkdir()
    (fs_store.root / "objects" / "x" / "y#meta").write_text('{"size": 4}')
    assert list(fs_store.list()) == []
    fs_store.put("x/y", io.BytesIO(b"whole"))
    assert fs_store.head("x/y").size == 5


def test_filesystem_lock_state_left_by_a_deleted_object_does_not_apply_to_a_new_one(fs_store):
    # A crash between deleting an object's data and its lock-state file leaves the state behind.
    (fs_store.root / "objects" / "k#meta").write_text(
        '{"object_id": "gone", "legal_hold": true, "retain_until": "2999-01-01T00:00:00+00:00", "mode": "COMPLIANCE"}')
    fs_store.put("k", io.BytesIO(b"new"))
    info = fs_store.head("k")
    assert not info.legal_hold and info.retain_until is None
    fs_store.set_legal_hold("k", True)
    assert fs_store.head("k").legal_hold


def test_filesystem_store_requires_init(tmp_path):
    with pytest.raises(Exception, match="archive init"):
        FilesystemStore(tmp_path / "nothing")


@pytest.mark.s3
def test_s3_errors_keep_the_vendor_request_id_and_status(s3_store):
    from archive.errors import ObjectNotFound

    with pytest.raises(ObjectNotFound) as e:
        s3_store.open("never-written")
    assert e.value.details["http_status"] == 404 and e.value.details["request_id"]
    assert e.value.details["vendor_code"] == "NoSuchKey" and isinstance(e.value.__cause__, ClientError)


# --- the filesystem store's lock state, authenticated with a key kept outside the store ------------------

LOCK_KEY = {"lk-v1": os.urandom(32)}


def _edit_header(store: FilesystemStore, key: str, **change) -> None:
    import json
    import struct

    path = store.root / "objects" / f"{key}#data"
    raw = path.read_bytes()
    (length,) = struct.unpack(">I", raw[8:12])
    header = json.dumps({**json.loads(raw[12:12 + length]), **change}).encode()
    path.chmod(0o644)
    path.write_bytes(raw[:8] + struct.pack(">I", len(header)) + header + raw[12 + length:])


def test_filesystem_an_edited_lock_state_refuses_every_change(fs_store):
    from archive.errors import LockStateTampered

    fs_store.use_lock_keys("lk-v1", LOCK_KEY)
    fs_store.put("held", io.BytesIO(b"call"), retain_until=soon(3600), legal_hold=True)
    fs_store.put("other", io.BytesIO(b"chat"), retain_until=soon(3600))
    fs_store.set_legal_hold("other", True)  # a genuine change: a #meta with its own MAC
    assert fs_store.head("other").legal_hold
    _edit_header(fs_store, "held", legal_hold=False, retain_until=None, mode=None)
    for change in (lambda: fs_store.head("held"), lambda: fs_store.delete("held", bypass_governance=True),
                   lambda: fs_store.set_legal_hold("held", False), lambda: fs_store.extend_retention("held", soon(7200))):
        with pytest.raises(LockStateTampered) as e:
            change()
        assert e.value.code == "lock_state_tampered" and "held" in str(e.value)
    assert (fs_store.root / "objects" / "held#data").exists()
    # a #meta edited by hand, or carried over from another object, fails too
    meta = fs_store.root / "objects" / "other#meta"
    meta.write_text(meta.read_text().replace('"legal_hold": true', '"legal_hold": false'))
    with pytest.raises(LockStateTampered):
        fs_store.delete("other")


def test_filesystem_lock_states_made_before_the_key_are_sealed_once_and_only_then(tmp_path):
    from archive.errors import LockStateTampered

    FilesystemStore(tmp_path / "store", create=True).put("old", io.BytesIO(b"x"), retain_until=soon(3600))
    unsealed = FilesystemStore(tmp_path / "store")
    unsealed.use_lock_keys("lk-v1", LOCK_KEY)  # the key existed already: an unauthenticated state is tampered
    with pytest.raises(LockStateTampered):
        unsealed.head("old")
    upgraded = FilesystemStore(tmp_path / "store")
    upgraded.use_lock_keys("lk-v1", LOCK_KEY, seal_existing=True)  # the moment the first key is made
    assert upgraded.head("old").retain_until >= soon(3590)
    rotated = FilesystemStore(tmp_path / "store")
    rotated.use_lock_keys("lk-v2", {**LOCK_KEY, "lk-v2": os.urandom(32)})  # older keys still verify
    assert rotated.head("old").size == 1


@pytest.mark.s3
def test_s3_an_object_below_a_part_is_sent_without_a_part_sized_buffer(seaweed, s3_bucket, keyring, tmp_path):
    """A call of a few megabytes, sealed from its file, is read into a buffer of its own size: a whole
    part (16 MiB) allocated and zeroed for every object cost more CPU than the upload itself."""
    import tracemalloc

    from archive.crypto.stream import Binding
    from archive.vault import Vault

    store = S3Store(s3_bucket, "archive", client=seaweed.client())  # the default 16 MiB parts
    vault = Vault(store, keyring)
    source = tmp_path / "call.wav"
    source.write_bytes(os.urandom(3 * 1024 * 1024))
    with source.open("rb") as f:  # warm the client (its first request loads models)
        vault.seal("warm", f, Binding("rec-warm", "audio"))
    tracemalloc.start()
    try:
        with source.open("rb") as f:
            receipt = vault.seal("call", f, Binding("rec-call", "audio"), verify=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert receipt.plaintext_size == 3 * 1024 * 1024
    # the sealer's ring of segments, the object's own buffer, the checker's segment: below one 16 MiB part
    assert peak < 14 * 1024 * 1024, f"peak traced memory {peak / 2**20:.1f} MiB sealing a 3 MiB call"


@pytest.mark.s3
def test_s3_an_upload_is_bound_by_its_signed_checksum_not_hashed_twice(seaweed, s3_bucket):
    """Over http too, a PutObject carries the body's SHA-256 as a signed checksum header and no second
    hash of the body for the signature; the server refuses a body that does not match the checksum."""
    import base64
    import hashlib

    store = S3Store(s3_bucket, "archive", client=seaweed.client())
    sent: list[dict[str, str]] = []

    def record(request, **_) -> None:
        sent.append({k.lower(): v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()})

    store.client.meta.events.register("before-send.s3.PutObject", record)
    store.put("call", io.BytesIO(b"x" * 300_000), retain_until=soon(3600))
    assert sent[-1]["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
    signed_headers = sent[-1]["authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
    assert "x-amz-checksum-sha256" in signed_headers
    assert store.open("call").read() == b"x" * 300_000
    wrong = base64.b64encode(hashlib.sha256(b"something else").digest()).decode()
    with pytest.raises(ClientError):
        store.client.put_object(Bucket=s3_bucket, Key="archive/forged", Body=b"x" * 300_000, ChecksumSHA256=wrong)
    with pytest.raises(ClientError):
        store.client.head_object(Bucket=s3_bucket, Key="archive/forged")
