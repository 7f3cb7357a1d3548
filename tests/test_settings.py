"""Settings are read from an environment mapping and every invalid value names its variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from archive.dates import parse_datetime, parse_duration
from archive.errors import ConfigError
from archive.settings import Settings


def test_defaults_put_everything_under_archive_home(tmp_path):
    s = Settings.from_env({}, cwd=tmp_path)
    assert s.home == tmp_path / ".archive"
    assert s.store_url == f"file://{tmp_path / '.archive' / 'store'}"
    assert s.keyring_path == tmp_path / ".archive" / "keyring.json"
    assert (s.keys, s.segment_size, s.lock_mode) == ("keyring", 1024 * 1024, "compliance")


def test_s3_secret_never_appears_in_repr():
    s = Settings.from_env({"ARCHIVE_STORE": "s3://b/p", "ARCHIVE_S3_ACCESS_KEY_ID": "AKIAEXAMPLE",
                           "ARCHIVE_S3_SECRET_ACCESS_KEY": "very-secret-value"}, cwd=Path("/"))
    assert s.s3_secret_access_key == "very-secret-value"
    assert "very-secret-value" not in repr(s)


@pytest.mark.parametrize("env, variable", [
    ({"ARCHIVE_SEGMENT_SIZE": "12x"}, "ARCHIVE_SEGMENT_SIZE"),
    ({"ARCHIVE_SEGMENT_SIZE": "1024"}, "ARCHIVE_SEGMENT_SIZE"),
    ({"ARCHIVE_SEGMENT_SIZE": str(128 * 1024 * 1024)}, "ARCHIVE_SEGMENT_SIZE"),
    ({"ARCHIVE_LOCK_MODE": "none"}, "ARCHIVE_LOCK_MODE"),
    ({"ARCHIVE_STORE": "/just/a/path"}, "ARCHIVE_STORE"),
    ({"ARCHIVE_STORE": "s3://"}, "ARCHIVE_STORE"),
    ({"ARCHIVE_KEYS": "plaintext"}, "ARCHIVE_KEYS"),
    ({"ARCHIVE_KEYS": "aws-kms:"}, "ARCHIVE_KEYS"),
    ({"ARCHIVE_S3_SECRET_ACCESS_KEY": "x"}, "ARCHIVE_S3_ACCESS_KEY_ID"),
    ({"ARCHIVE_S3_ENDPOINT_URL": "localhost:9000"}, "ARCHIVE_S3_ENDPOINT_URL"),
    ({"ARCHIVE_S3_PART_SIZE": "1000"}, "ARCHIVE_S3_PART_SIZE"),
    ({"ARCHIVE_INDEX_URL": "localhost:9200"}, "ARCHIVE_INDEX_URL"),
    ({"ARCHIVE_ES_MEDIA_TYPE": "json"}, "ARCHIVE_ES_MEDIA_TYPE"),  # no longer read: the engine decides
    ({"ARCHIVE_INDEX_ENGINE": "solr"}, "ARCHIVE_INDEX_ENGINE"),
    ({"ARCHIVE_ES_USERNAME": "archive"}, "ARCHIVE_ES_PASSWORD"),
    ({"ARCHIVE_ES_API_KEY": "k", "ARCHIVE_ES_USERNAME": "u", "ARCHIVE_ES_PASSWORD": "p"}, "ARCHIVE_ES_API_KEY"),
    ({"ARCHIVE_ES_INDEX": "Records"}, "ARCHIVE_ES_INDEX"),
    ({"ARCHIVE_MIN_LOCK": "1 day"}, "ARCHIVE_MIN_LOCK"),
    ({"ARCHIVE_POLICIES": "/no/such/policies"}, "ARCHIVE_POLICIES"),
])
def test_invalid_settings_name_the_variable(env, variable):
    with pytest.raises(ConfigError) as e:
        Settings.from_env(env, cwd=Path("/"))
    assert variable in str(e.value) and e.value.details["variable"] == variable


def test_search_engine_secrets_never_appear_in_repr():
    s = Settings.from_env({"ARCHIVE_INDEX_URL": "https://search:9200", "ARCHIVE_INDEX_ENGINE": "OpenSearch",
                           "ARCHIVE_ES_USERNAME": "archive", "ARCHIVE_ES_PASSWORD": "very-secret-value"},
                          cwd=Path("/"))
    assert (s.index_engine, s.es_username, s.es_password) == ("opensearch", "archive", "very-secret-value")
    assert "very-secret-value" not in repr(s)
    assert "key-value" not in repr(Settings.from_env({"ARCHIVE_ES_API_KEY": "key-value"}, cwd=Path("/")))


def test_there_is_no_way_to_turn_encryption_off():
    assert not [f for f in Settings.__dataclass_fields__ if "encrypt" in f or "plain" in f]


@pytest.mark.parametrize("text, start, expected", [
    ("P7Y", "2024-02-29T10:00:00Z", "2031-02-28T10:00:00+00:00"),
    ("P1M", "2024-01-31T00:00:00Z", "2024-02-29T00:00:00+00:00"),
    ("P5Y6M", "2020-08-31T00:00:00Z", "2026-02-28T00:00:00+00:00"),
    ("P30D", "2024-01-01", "2024-01-31T00:00:00+00:00"),
    ("PT12H", "2024-01-01T00:00:00+08:00", "2024-01-01T04:00:00+00:00"),
])
def test_durations_count_calendar_years_and_months(text, start, expected):
    assert parse_duration(text).after(parse_datetime(start)).isoformat() == expected


@pytest.mark.parametrize("text", ["", "P", "PT", "7Y", "P1.5Y", "P1YT", "forever"])
def test_bad_durations_are_refused(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_audit_checkpoints_and_witness_have_safe_validated_defaults(tmp_path):
    s = Settings.from_env({}, cwd=tmp_path)
    assert (s.audit_checkpoint_every, s.audit_checkpoint_interval) == (1000, "PT5M")
    assert s.audit_witness_url == f"file://{tmp_path / '.archive' / 'audit-witness.json'}"
    assert s.audit_witness_inside_home  # audit verify warns about it
    outside = Settings.from_env({"ARCHIVE_AUDIT_WITNESS": str(tmp_path / "other-disk" / "w.json")}, cwd=tmp_path)
    assert outside.audit_witness_url == f"file://{tmp_path / 'other-disk' / 'w.json'}"
    assert not outside.audit_witness_inside_home
    s3 = Settings.from_env({"ARCHIVE_STORE": "s3://evidence/a", "ARCHIVE_AUDIT_WITNESS": "s3://witness/audit/",
                            "ARCHIVE_AUDIT_WITNESS_S3_ACCESS_KEY_ID": "AKW",
                            "ARCHIVE_AUDIT_WITNESS_S3_SECRET_ACCESS_KEY": "witness-secret"}, cwd=tmp_path)
    assert s3.audit_witness_url == "s3://witness/audit" and "witness-secret" not in repr(s3)


@pytest.mark.parametrize("env, variable", [
    ({"ARCHIVE_AUDIT_CHECKPOINT_EVERY": "0"}, "ARCHIVE_AUDIT_CHECKPOINT_EVERY"),
    ({"ARCHIVE_AUDIT_CHECKPOINT_EVERY": "many"}, "ARCHIVE_AUDIT_CHECKPOINT_EVERY"),
    ({"ARCHIVE_AUDIT_CHECKPOINT_INTERVAL": "P2D"}, "ARCHIVE_AUDIT_CHECKPOINT_INTERVAL"),
    ({"ARCHIVE_AUDIT_CHECKPOINT_INTERVAL": "soon"}, "ARCHIVE_AUDIT_CHECKPOINT_INTERVAL"),
    ({"ARCHIVE_HOME": "/srv/archive", "ARCHIVE_AUDIT_WITNESS": "/srv/archive/witness.json"}, "ARCHIVE_AUDIT_WITNESS"),
    ({"ARCHIVE_STORE": "file:///srv/store", "ARCHIVE_AUDIT_WITNESS": "file:///srv/store/w.json"},
     "ARCHIVE_AUDIT_WITNESS"),
    ({"ARCHIVE_STORE": "s3://evidence/a", "ARCHIVE_AUDIT_WITNESS": "s3://evidence/witness"}, "ARCHIVE_AUDIT_WITNESS"),
    ({"ARCHIVE_AUDIT_WITNESS": "https://witness.example/w"}, "ARCHIVE_AUDIT_WITNESS"),
    ({"ARCHIVE_AUDIT_WITNESS_S3_ACCESS_KEY_ID": "AKW"}, "ARCHIVE_AUDIT_WITNESS_S3_SECRET_ACCESS_KEY"),
])
def test_audit_settings_that_would_not_protect_the_log_are_refused(env, variable):
    with pytest.raises(ConfigError) as e:
        Settings.from_env(env, cwd=Path("/"))
    assert variable in str(e.value) and e.value.details["variable"] == variable
