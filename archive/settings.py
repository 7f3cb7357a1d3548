"""Settings: one frozen object read from ``ARCHIVE_*`` environment variables and validated at start.

Nothing else in the library reads the environment. Build ``Settings.from_env()`` once at the edge (CLI,
worker, API) and pass it in. Every validation error names the variable, the value's problem and what is
accepted. Secrets (S3 secret key) are kept out of ``repr`` so they never reach a log.

| variable                     | default                       | meaning                                       |
|------------------------------|-------------------------------|-----------------------------------------------|
| ARCHIVE_HOME                 | ./.archive                    | embedded archive directory (keyring, store)   |
| ARCHIVE_STORE                | file://$ARCHIVE_HOME/store    | object store: ``file:///path`` or ``s3://bucket[/prefix]`` |
| ARCHIVE_KEYS                 | keyring                       | key provider: ``keyring`` or ``aws-kms:<key id or ARN>`` |
| ARCHIVE_KEYRING              | $ARCHIVE_HOME/keyring.json    | local keyring file (mode 0600)                |
| ARCHIVE_SEGMENT_SIZE         | 1048576                       | sealed segment size in bytes (4 KiB … 64 MiB) |
| ARCHIVE_LOCK_MODE            | compliance                    | default lock mode: compliance or governance   |
| ARCHIVE_S3_ENDPOINT_URL      | (AWS)                         | S3 endpoint, e.g. MinIO ``http://localhost:9000`` |
| ARCHIVE_S3_REGION            | us-east-1                     | S3 region                                     |
| ARCHIVE_S3_ACCESS_KEY_ID     | (boto3 chain)                 | S3 access key; both or neither with the secret |
| ARCHIVE_S3_SECRET_ACCESS_KEY | (boto3 chain)                 | S3 secret key                                 |
| ARCHIVE_S3_PART_SIZE         | 16777216                      | multipart upload part size in bytes (≥ 5 MiB) |
| ARCHIVE_KMS_ENDPOINT_URL     | (AWS)                         | KMS endpoint (for a KMS-compatible service)   |
| ARCHIVE_KMS_REGION           | ARCHIVE_S3_REGION             | KMS region                                    |
| ARCHIVE_MAX_INPUT_BYTES      | 10737418240 (10 GiB)          | larger input files are rejected at ingest     |
| ARCHIVE_MAX_METADATA_BYTES   | 16777216 (16 MiB)             | largest sidecar, chat, SIPREC or text transcript file, and record metadata as JSON |
| ARCHIVE_MAX_EMAIL_BYTES      | 157286400 (150 MiB)           | largest .eml (parsed in memory with its attachments) |
| ARCHIVE_POLICIES             | (the shipped ``policies/``)   | directory of retention policy files (*.yaml)   |
| ARCHIVE_MIN_LOCK             | P1D                           | shortest lock ever written: a record that arrives already due is still kept this long |
| ARCHIVE_INDEX_URL            | (none: SQLite in the home)    | Elasticsearch URL, e.g. ``http://localhost:9200`` |
| ARCHIVE_ES_INDEX             | archive-records               | the alias searched (physical indexes ``<alias>-v<n>-<time>``) |
| ARCHIVE_ES_MEDIA_TYPE        | compat                        | ``compat`` (Elasticsearch 8/9) or ``json`` (OpenSearch-API servers) |
| ARCHIVE_ES_API_KEY           | (none)                        | Elasticsearch API key (kept out of logs)       |
| ARCHIVE_AUDIT_RETENTION      | P10Y                          | lock period of audit-log batches and checkpoints |
| ARCHIVE_ACTOR                | (the OS user)                 | who the CLI acts as, when --actor is not given |
| ARCHIVE_BROKER_URL           | redis://127.0.0.1:6379/0      | Celery broker: ``redis://…`` or ``amqp://…`` (RabbitMQ) |
| ARCHIVE_REDIS_URL            | ARCHIVE_BROKER_URL if Redis   | Redis for worker claims and counters (needed with a RabbitMQ broker) |
| ARCHIVE_INBOX                | (none)                        | where recorders drop inputs, comma-separated: ``s3://bucket/prefix`` or a directory |
| ARCHIVE_INBOX_DONE           | processed                     | after verified archival: ``delete``, or a prefix/directory name beside the inbox to move inputs to |
| ARCHIVE_INBOX_SETTLE         | PT10S                         | an input is taken once its newest file is this old (uploads finish) |
| ARCHIVE_WORKER_ACTOR         | worker                        | the identity workers act as (needs the ingest role; admin for sweeps) |
| ARCHIVE_CLAIM_TTL            | PT2M                          | a worker's claim on an input, renewed while it works; a dead worker's lapses |
| ARCHIVE_SCAN_INTERVAL        | PT30S                         | how often the beat scans the inboxes |
| ARCHIVE_FIXITY_INTERVAL      | P1D                           | how often the beat runs a fixity sweep |
| ARCHIVE_DISPOSITION_INTERVAL | P1D                           | how often the beat plans disposition                            |
| ARCHIVE_AUTO_DISPOSE         | no                            | yes: the beat's sweep also disposes of what is due (the worker identity needs admin) |
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from archive.dates import parse_duration
from archive.errors import ConfigError

MIN_SEGMENT = 4 * 1024
MAX_SEGMENT = 64 * 1024 * 1024
MIN_PART = 5 * 1024 * 1024
LOCK_MODES = ("compliance", "governance")


@dataclass(frozen=True)
class Settings:
    """Validated configuration; build with :meth:`from_env`."""

    home: Path
    store_url: str
    keys: str
    keyring_path: Path
    segment_size: int = 1024 * 1024
    lock_mode: str = "compliance"
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = field(default=None, repr=False)
    s3_part_size: int = 16 * 1024 * 1024
    kms_endpoint_url: str | None = None
    kms_region: str | None = None
    max_input_bytes: int = 10 * 1024**3
    max_metadata_bytes: int = 16 * 1024**2
    max_email_bytes: int = 150 * 1024**2
    index_url: str | None = None
    es_index: str = "archive-records"
    es_media_type: str = "compat"
    es_api_key: str | None = field(default=None, repr=False)
    policies_dir: Path | None = None
    min_lock: str = "P1D"
    audit_retention: str = "P10Y"
    actor: str | None = None
    broker_url: str = field(default="redis://127.0.0.1:6379/0", repr=False)
    redis_url: str | None = field(default=None, repr=False)
    inboxes: tuple[str, ...] = ()
    inbox_done: str = "processed"
    inbox_settle: str = "PT10S"
    worker_actor: str = "worker"
    claim_ttl: str = "PT2M"
    scan_interval: str = "PT30S"
    fixity_interval: str = "P1D"
    disposition_interval: str = "P1D"
    auto_dispose: bool = False

    @property
    def index_path(self) -> Path:
        return self.home / "index.sqlite"

    @property
    def identities_path(self) -> Path:
        """Who may act on this archive, with which roles (archive/access.py)."""
        return self.home / "identities.json"

    @property
    def tokens_path(self) -> Path:
        """API tokens, stored as hashes (archive/tokens.py)."""
        return self.home / "tokens.json"

    @property
    def audit_witness_path(self) -> Path:
        """The newest audit checkpoint this archive verified, kept outside the store (rollback check)."""
        return self.home / "audit-witness.json"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, cwd: Path | None = None) -> Settings:
        """Read and validate ``ARCHIVE_*`` variables from ``env`` (default: ``os.environ``).

        Raises ConfigError naming the first invalid variable.
        """
        env = os.environ if env is None else env
        base = cwd or Path.cwd()
        home = Path(env.get("ARCHIVE_HOME") or ".archive")
        home = home if home.is_absolute() else base / home

        store_url = env.get("ARCHIVE_STORE") or f"file://{home / 'store'}"
        _check_store_url(store_url)

        keys = env.get("ARCHIVE_KEYS") or "keyring"
        if keys != "keyring" and not (keys.startswith("aws-kms:") and len(keys) > len("aws-kms:")):
            raise ConfigError(f"ARCHIVE_KEYS={keys!r} is not a key provider; use 'keyring' or "
                              "'aws-kms:<key id or ARN>'", variable="ARCHIVE_KEYS")
        keyring = Path(env.get("ARCHIVE_KEYRING") or home / "keyring.json")
        keyring = keyring if keyring.is_absolute() else base / keyring

        segment_size = _int(env, "ARCHIVE_SEGMENT_SIZE", 1024 * 1024, MIN_SEGMENT, MAX_SEGMENT)
        lock_mode = (env.get("ARCHIVE_LOCK_MODE") or "compliance").lower()
        if lock_mode not in LOCK_MODES:
            raise ConfigError(f"ARCHIVE_LOCK_MODE={lock_mode!r} must be one of {', '.join(LOCK_MODES)}",
                              variable="ARCHIVE_LOCK_MODE")

        access = env.get("ARCHIVE_S3_ACCESS_KEY_ID") or None
        secret = env.get("ARCHIVE_S3_SECRET_ACCESS_KEY") or None
        if bool(access) != bool(secret):
            missing = "ARCHIVE_S3_SECRET_ACCESS_KEY" if access else "ARCHIVE_S3_ACCESS_KEY_ID"
            raise ConfigError(f"{missing} must be set together with the other S3 credential",
                              variable=missing)
        s3_endpoint = env.get("ARCHIVE_S3_ENDPOINT_URL") or None
        if s3_endpoint:
            _check_http_url(s3_endpoint, "ARCHIVE_S3_ENDPOINT_URL")
        kms_endpoint = env.get("ARCHIVE_KMS_ENDPOINT_URL") or None
        if kms_endpoint:
            _check_http_url(kms_endpoint, "ARCHIVE_KMS_ENDPOINT_URL")
        region = env.get("ARCHIVE_S3_REGION") or "us-east-1"
        policies = env.get("ARCHIVE_POLICIES") or None
        policies_dir = None
        if policies:
            policies_dir = Path(policies) if Path(policies).is_absolute() else base / policies
            if not policies_dir.is_dir():
                raise ConfigError(f"ARCHIVE_POLICIES={policies!r} is not a directory of policy files",
                                  variable="ARCHIVE_POLICIES")
        min_lock = _duration(env, "ARCHIVE_MIN_LOCK", "P1D")
        index_url = env.get("ARCHIVE_INDEX_URL") or None
        if index_url:
            _check_http_url(index_url, "ARCHIVE_INDEX_URL")
        es_media_type = (env.get("ARCHIVE_ES_MEDIA_TYPE") or "compat").lower()
        if es_media_type not in ("compat", "json"):
            raise ConfigError(f"ARCHIVE_ES_MEDIA_TYPE={es_media_type!r} must be compat (Elasticsearch 8/9) or json "
                              "(OpenSearch and OpenSearch-API-compatible servers)", variable="ARCHIVE_ES_MEDIA_TYPE")
        es_index = env.get("ARCHIVE_ES_INDEX") or "archive-records"
        if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,100}", es_index):
            raise ConfigError(f"ARCHIVE_ES_INDEX={es_index!r} is not an index name (lower-case letters, digits, . _ -)",
                              variable="ARCHIVE_ES_INDEX")
        audit_retention = _duration(env, "ARCHIVE_AUDIT_RETENTION", "P10Y")
        broker_url = env.get("ARCHIVE_BROKER_URL") or "redis://127.0.0.1:6379/0"
        if urlparse(broker_url).scheme not in ("redis", "rediss", "amqp", "amqps", "pyamqp"):
            raise ConfigError("ARCHIVE_BROKER_URL must be a redis://, rediss:// or amqp:// URL",
                              variable="ARCHIVE_BROKER_URL")
        redis_url = env.get("ARCHIVE_REDIS_URL") or (broker_url if broker_url.startswith("redis") else None)
        if redis_url and urlparse(redis_url).scheme not in ("redis", "rediss", "unix"):
            raise ConfigError("ARCHIVE_REDIS_URL must be a redis:// or rediss:// URL", variable="ARCHIVE_REDIS_URL")
        inboxes = []
        for raw in filter(None, (x.strip() for x in (env.get("ARCHIVE_INBOX") or "").split(","))):
            parsed = urlparse(raw)
            if parsed.scheme == "s3" and parsed.netloc:
                inboxes.append(raw.rstrip("/"))
            elif parsed.scheme in ("", "file"):
                path = Path(parsed.path if parsed.scheme == "file" else raw)
                inboxes.append(str(path if path.is_absolute() else base / path))
            else:
                raise ConfigError(f"ARCHIVE_INBOX: {raw!r} is not s3://bucket/prefix or a directory",
                                  variable="ARCHIVE_INBOX")
        inbox_done = env.get("ARCHIVE_INBOX_DONE") or "processed"
        if inbox_done != "delete" and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,100}", inbox_done):
            raise ConfigError(f"ARCHIVE_INBOX_DONE={inbox_done!r} must be 'delete' or a simple name "
                              "(letters, digits, . _ -) for the prefix or directory beside the inbox",
                              variable="ARCHIVE_INBOX_DONE")
        worker_actor = env.get("ARCHIVE_WORKER_ACTOR") or "worker"

        return cls(
            home=home,
            store_url=store_url,
            keys=keys,
            keyring_path=keyring,
            segment_size=segment_size,
            lock_mode=lock_mode,
            s3_endpoint_url=s3_endpoint,
            s3_region=region,
            s3_access_key_id=access,
            s3_secret_access_key=secret,
            s3_part_size=_int(env, "ARCHIVE_S3_PART_SIZE", 16 * 1024 * 1024, MIN_PART, 5 * 1024**3),
            kms_endpoint_url=kms_endpoint,
            kms_region=env.get("ARCHIVE_KMS_REGION") or region,
            max_input_bytes=_int(env, "ARCHIVE_MAX_INPUT_BYTES", 10 * 1024**3, 1, 2**50),
            max_metadata_bytes=_int(env, "ARCHIVE_MAX_METADATA_BYTES", 16 * 1024**2, 4096, 2**31),
            max_email_bytes=_int(env, "ARCHIVE_MAX_EMAIL_BYTES", 150 * 1024**2, 4096, 2**33),
            index_url=index_url,
            es_index=es_index,
            es_media_type=es_media_type,
            es_api_key=env.get("ARCHIVE_ES_API_KEY") or None,
            policies_dir=policies_dir,
            min_lock=min_lock,
            audit_retention=audit_retention,
            actor=env.get("ARCHIVE_ACTOR") or None,
            broker_url=broker_url,
            redis_url=redis_url,
            inboxes=tuple(inboxes),
            inbox_done=inbox_done,
            inbox_settle=_duration(env, "ARCHIVE_INBOX_SETTLE", "PT10S"),
            worker_actor=worker_actor,
            claim_ttl=_duration(env, "ARCHIVE_CLAIM_TTL", "PT2M"),
            scan_interval=_duration(env, "ARCHIVE_SCAN_INTERVAL", "PT30S"),
            fixity_interval=_duration(env, "ARCHIVE_FIXITY_INTERVAL", "P1D"),
            disposition_interval=_duration(env, "ARCHIVE_DISPOSITION_INTERVAL", "P1D"),
            auto_dispose=_yes(env, "ARCHIVE_AUTO_DISPOSE"),
        )


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer", variable=name) from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name}={value} is out of range [{lo}, {hi}]", variable=name)
    return value


def _yes(env: Mapping[str, str], name: str) -> bool:
    raw = (env.get(name) or "no").strip().lower()
    if raw not in ("yes", "no", "true", "false", "1", "0"):
        raise ConfigError(f"{name}={raw!r} must be yes or no", variable=name)
    return raw in ("yes", "true", "1")


def _duration(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name) or default
    try:
        parse_duration(value)
    except ValueError as e:
        raise ConfigError(f"{name}: {e}", variable=name) from None
    return value


def _check_store_url(url: str) -> None:
    parsed = urlparse(url)
    if parsed.scheme == "file" and parsed.path:
        return
    if parsed.scheme == "s3" and parsed.netloc:
        return
    raise ConfigError(f"ARCHIVE_STORE={url!r} is not a store URL; use file:///absolute/path or "
                      "s3://bucket[/prefix]", variable="ARCHIVE_STORE")


def _check_http_url(url: str, name: str) -> None:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError(f"{name}={url!r} must be an http(s) URL", variable=name)
