"""Key providers (archive/keys): the local keyring and AWS KMS (through moto), and KEK rotation and
destruction through the vault.

What a reviewer looks for: key files are private and refused when they are not; a wrapped data key only
unwraps for the context it was made for; rotation keeps old data keys readable and moves them to the new
KEK; the current KEK cannot be destroyed, and a KEK still needed by an object cannot be destroyed through
the vault; a destroyed KEK is really gone.
"""

from __future__ import annotations

import io
import json
import os
import random
import stat
import uuid

import boto3
import pytest
from moto import mock_aws

from archive.crypto.stream import Binding
from archive.errors import IntegrityError, KeyInUse, KeyringError, KeyUnavailable
from archive.keys.base import WrappedKey
from archive.keys.keyring import KeyringProvider, create_keyring
from archive.keys.kms import KmsProvider
from archive.store.filesystem import FilesystemStore
from archive.vault import Vault

CTX = {"archive:object": "rec-0001/audio", "archive:record": "rec-0001", "archive:part": "audio"}
REGION = "us-east-1"


def other_contexts():
    for field in CTX:
        yield {**CTX, field: CTX[field] + "-x"}
    yield {**CTX, "archive:extra": "1"}
    yield {k: v for k, v in CTX.items() if k != "archive:part"}


# --- keyring ---------------------------------------------------------------------------------------


@pytest.fixture
def ring_path(tmp_path):
    path = tmp_path / "keys" / "keyring.json"
    create_keyring(path)
    return path


def test_create_keyring_makes_a_private_file(ring_path):
    assert stat.S_IMODE(os.stat(ring_path).st_mode) == 0o600
    ring = KeyringProvider(ring_path)
    assert [k.state for k in ring.keks()] == ["current"]
    assert ring.current_kek() == ring.keks()[0].kek_id


def test_create_keyring_refuses_to_overwrite(ring_path):
    before = ring_path.read_bytes()
    with pytest.raises(KeyringError):
        create_keyring(ring_path)
    assert ring_path.read_bytes() == before


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_keyring_readable_by_others_is_refused(ring_path, mode):
    os.chmod(ring_path, mode)
    with pytest.raises(KeyringError) as info:
        KeyringProvider(ring_path)
    assert "chmod 600" in str(info.value)


def test_keyring_that_becomes_readable_by_others_is_refused_on_use(ring_path):
    ring = KeyringProvider(ring_path)
    os.chmod(ring_path, 0o644)
    with pytest.raises(KeyringError, match="chmod 600"):
        ring.generate_data_key(CTX)


def test_missing_keyring_points_to_archive_init(tmp_path):
    with pytest.raises(KeyringError) as info:
        KeyringProvider(tmp_path / "nope.json")
    assert "archive init" in str(info.value)


def test_keyring_generate_and_unwrap(ring_path):
    ring = KeyringProvider(ring_path)
    data_key, wrapped = ring.generate_data_key(CTX)
    assert len(data_key) == 32
    assert wrapped.kek_id == ring.current_kek()
    assert data_key not in wrapped.blob
    assert ring.unwrap(WrappedKey.from_json(wrapped.to_json()), CTX) == data_key
    assert ring.generate_data_key(CTX)[0] != data_key  # fresh per call


def test_keyring_unwrap_refuses_another_context_or_an_altered_blob(ring_path):
    ring = KeyringProvider(ring_path)
    _, wrapped = ring.generate_data_key(CTX)
    for context in other_contexts():
        with pytest.raises(IntegrityError):
            ring.unwrap(wrapped, context)
    for pos in (0, 12, len(wrapped.blob) - 1):
        blob = bytearray(wrapped.blob)
        blob[pos] ^= 1
        with pytest.raises(IntegrityError):
            ring.unwrap(WrappedKey(wrapped.provider, wrapped.kek_id, bytes(blob)), CTX)


def test_keyring_rotate_keeps_old_keys_readable_and_rewrap_moves_them(ring_path):
    ring = KeyringProvider(ring_path)
    old = ring.current_kek()
    data_key, wrapped = ring.generate_data_key(CTX)
    new = ring.rotate()
    assert new != old and ring.current_kek() == new
    assert {k.kek_id: k.state for k in ring.keks()} == {old: "retired", new: "current"}
    assert ring.unwrap(wrapped, CTX) == data_key
    assert ring.generate_data_key(CTX)[1].kek_id == new
    rewrapped = ring.rewrap(wrapped, CTX)
    assert rewrapped.kek_id == new
    assert ring.unwrap(rewrapped, CTX) == data_key
    with pytest.raises(IntegrityError):
        ring.rewrap(wrapped, {**CTX, "archive:record": "rec-0002"})


def test_keyring_refuses_to_destroy_the_current_kek(ring_path):
    ring = KeyringProvider(ring_path)
    data_key, wrapped = ring.generate_data_key(CTX)
    with pytest.raises(KeyringError):
        ring.destroy(ring.current_kek())
    assert ring.unwrap(wrapped, CTX) == data_key


def test_keyring_destroyed_kek_is_gone(ring_path):
    ring = KeyringProvider(ring_path)
    old = ring.current_kek()
    _, wrapped = ring.generate_data_key(CTX)
    ring.rotate()
    ring.destroy(old)
    with pytest.raises(KeyUnavailable):
        ring.unwrap(wrapped, CTX)
    with pytest.raises(KeyUnavailable):
        ring.rewrap(wrapped, CTX)
    assert {k.kek_id: k.state for k in ring.keks()}[old] == "destroyed"
    doc = json.loads(ring_path.read_text())
    assert all("key" not in e for e in doc["keks"] if e["state"] == "destroyed")  # material removed
    assert stat.S_IMODE(os.stat(ring_path).st_mode) == 0o600  # rewrites stay private
    with pytest.raises(KeyUnavailable):
        ring.destroy("kr-v99")


def test_keyring_instances_see_each_others_changes(ring_path):
    worker, admin = KeyringProvider(ring_path), KeyringProvider(ring_path)
    old = worker.current_kek()
    data_key, wrapped = worker.generate_data_key(CTX)
    new = admin.rotate()
    assert worker.current_kek() == new
    assert worker.generate_data_key(CTX)[1].kek_id == new
    assert worker.unwrap(wrapped, CTX) == data_key
    admin.destroy(old)
    with pytest.raises(KeyUnavailable):
        worker.unwrap(wrapped, CTX)


# --- AWS KMS (moto) --------------------------------------------------------------------------------


@pytest.fixture
def kms(monkeypatch):
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        yield boto3.client("kms", region_name=REGION)


class MotoKms:
    """The moto client, except that ScheduleKeyDeletion gets the bare key id: moto 5.2 looks keys up by id
    only there (KeyError on an ARN), while real KMS accepts a key id or ARN and the provider passes ARNs."""

    def __init__(self, client) -> None:
        self._client = client

    def __getattr__(self, name):
        return getattr(self._client, name)

    def schedule_key_deletion(self, *, KeyId: str, **kwargs):
        return self._client.schedule_key_deletion(KeyId=KeyId.rsplit("/", 1)[-1], **kwargs)


def provider(kms, key_id: str) -> KmsProvider:
    """A provider on the moto client, for tests that destroy keys."""
    return KmsProvider(key_id, client=MotoKms(kms))


def new_key(kms) -> dict:
    return kms.create_key(Description="archive test KEK")["KeyMetadata"]


def key_state(kms, key_id: str) -> str:
    return kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"]


def test_kms_generate_and_unwrap(kms):
    meta = new_key(kms)
    provider = KmsProvider(meta["KeyId"], region=REGION)
    assert provider.current_kek() == meta["Arn"]
    data_key, wrapped = provider.generate_data_key(CTX)
    assert len(data_key) == 32
    assert (wrapped.provider, wrapped.kek_id) == ("aws-kms", meta["Arn"])
    assert provider.unwrap(WrappedKey.from_json(wrapped.to_json()), CTX) == data_key


def test_kms_unwrap_refuses_another_context(kms):
    provider = KmsProvider(new_key(kms)["KeyId"], region=REGION)
    _, wrapped = provider.generate_data_key(CTX)
    for context in other_contexts():
        with pytest.raises(IntegrityError):
            provider.unwrap(wrapped, context)


def test_kms_rewrap_to_another_key(kms):
    first, second = new_key(kms), new_key(kms)
    p1, p2 = KmsProvider(first["KeyId"], region=REGION), KmsProvider(second["Arn"], region=REGION)
    data_key, wrapped = p1.generate_data_key(CTX)
    rewrapped = p2.rewrap(wrapped, CTX)
    assert rewrapped.kek_id == second["Arn"]
    assert p2.unwrap(rewrapped, CTX) == data_key
    with pytest.raises(IntegrityError):
        p2.rewrap(wrapped, {**CTX, "archive:object": "rec-0002/audio"})


def test_kms_destroy(kms):
    first, second = new_key(kms), new_key(kms)
    p1, p2 = provider(kms, first["KeyId"]), provider(kms, second["KeyId"])
    with pytest.raises(KeyUnavailable):
        p1.destroy(first["Arn"])
    assert key_state(kms, first["KeyId"]) == "Enabled"
    p2.destroy(first["Arn"])
    assert key_state(kms, first["KeyId"]) == "PendingDeletion"
    assert key_state(kms, second["KeyId"]) == "Enabled"


def test_kms_unknown_key_fails_at_construction(kms):
    with pytest.raises(KeyUnavailable):
        KmsProvider(str(uuid.uuid4()), region=REGION)


# --- vault: rotation and KEK destruction -----------------------------------------------------------


def test_vault_rotates_to_another_kms_key_then_destroys_the_old_one(kms, tmp_path):
    first, second = new_key(kms), new_key(kms)
    store = FilesystemStore(tmp_path / "store", create=True)
    plain = random.Random(7).randbytes(3 * 4096 + 7)
    name, binding = "rec-0001/audio", Binding("rec-0001", "audio")

    old_vault = Vault(store, KmsProvider(first["KeyId"], region=REGION), segment_size=4096)
    receipt = old_vault.seal(name, io.BytesIO(plain), binding)
    assert receipt.wrapped_key.kek_id == first["Arn"]

    vault = Vault(store, provider(kms, second["KeyId"]), segment_size=4096)
    assert vault.kek_usage() == {first["Arn"]: 1}
    with pytest.raises(KeyInUse):
        vault.destroy_kek(first["Arn"])
    assert key_state(kms, first["KeyId"]) == "Enabled"

    report = vault.rotate(new_kek=False)
    assert report.failed == {}
    assert (report.current_kek, report.scanned, report.rewrapped) == (second["Arn"], 1, 1)
    assert vault.receipt(name).wrapped_key.kek_id == second["Arn"]
    assert vault.receipt(name).seq == receipt.seq + 1
    assert vault.kek_usage() == {second["Arn"]: 1}
    again = vault.rotate(new_kek=False)
    assert (again.rewrapped, again.already_current, again.failed) == (0, 1, {})

    vault.destroy_kek(first["Arn"])
    assert key_state(kms, first["KeyId"]) == "PendingDeletion"
    assert b"".join(vault.open(name, verify_digest=True)) == plain
    assert vault.read_range(name, 4090, 8200) == plain[4090:8200]
