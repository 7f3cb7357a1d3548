"""Settings: one frozen object read from ``ARCHIVE_*`` environment variables and validated at start.

Nothing else in the library reads the environment. Build ``Settings.from_env()`` once at the edge (CLI,
worker, API) and pass it in. Every validation error names the variable, the value's problem and what is
accepted. Secrets (S3 secret key) are kept out of ``repr`` so they never reach a log, and credentials in
a URL (``http://user:password@host``) are redacted from ``repr`` and every error message.

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
| ARCHIVE_CAPTURE_EARLIEST     | 2000-01-01T00:00:00Z          | a record that says it started before this gets the finding ``implausible-capture-time`` (a recorder clock reset to 1970…) and is never disposed of without review |
| ARCHIVE_CAPTURE_AHEAD        | P1D                           | … as does one that says it started more than this after its ingest |
| ARCHIVE_INDEX_URL            | (none: SQLite in the home)    | Elasticsearch 8/9 or OpenSearch 2.15+/3, e.g. ``http://localhost:9200`` |
| ARCHIVE_INDEX_ENGINE         | auto                          | ``auto`` (what answers there), ``elasticsearch`` or ``opensearch`` |
| ARCHIVE_ES_INDEX             | archive-records               | the alias searched (physical indexes ``<alias>-v<n>-<time>``) |
| ARCHIVE_ES_API_KEY           | (none)                        | Elasticsearch API key (kept out of logs)       |
| ARCHIVE_ES_USERNAME          | (none)                        | basic-auth user (OpenSearch security plugin), with the password |
| ARCHIVE_ES_PASSWORD          | (none)                        | basic-auth password (kept out of logs)         |
| ARCHIVE_AUDIT_RETENTION      | P10Y                          | lock period of audit-log batches and checkpoints |
| ARCHIVE_AUDIT_CHECKPOINT_EVERY | 1000                        | a signed checkpoint is written automatically after this many events (1 … 10,000,000) |
| ARCHIVE_AUDIT_CHECKPOINT_INTERVAL | PT5M                     | … or by the first append this long after the newest checkpoint (PT1S … P1D) |
| ARCHIVE_AUDIT_WITNESS        | $ARCHIVE_HOME/audit-witness.json | where checkpoints are witnessed, OUTSIDE the archive: ``file:///other/disk/witness.json`` or ``s3://other-bucket/prefix`` |
| ARCHIVE_AUDIT_WITNESS_S3_ENDPOINT_URL | ARCHIVE_S3_ENDPOINT_URL | S3 endpoint of an ``s3://`` witness           |
| ARCHIVE_AUDIT_WITNESS_S3_REGION | ARCHIVE_S3_REGION          | its region                                    |
| ARCHIVE_AUDIT_WITNESS_S3_ACCESS_KEY_ID | (boto3 chain)        | its own credential (not the store's); both or neither with the secret |
| ARCHIVE_AUDIT_WITNESS_S3_SECRET_ACCESS_KEY | (boto3 chain)    | its secret key                                |
| ARCHIVE_ACTOR                | (the OS user)                 | who the CLI acts as, when --actor is not given |
| ARCHIVE_BROKER_URL           | redis://127.0.0.1:6379/0      | Celery broker: ``redis://…`` or ``amqp://…`` (RabbitMQ) |
| ARCHIVE_REDIS_URL            | ARCHIVE_BROKER_URL if Redis   | Redis for worker claims and counters (needed with a RabbitMQ broker) |
| ARCHIVE_INBOX                | (none)                        | where recorders drop inputs, comma-separated: ``s3://bucket/prefix`` or a directory |
| ARCHIVE_INBOX_DONE           | processed                     | after verified archival: ``delete``, or a prefix/directory name beside the inbox to move inputs to |
| ARCHIVE_INBOX_SETTLE         | PT10S                         | an input is taken once its newest file is this old (uploads finish) |
| ARCHIVE_WORKER_ACTOR         | worker                        | the identity workers act as (needs the ingest role; admin for sweeps) |
| ARCHIVE_CLAIM_TTL            | PT2M                          | a worker's claim on an input, renewed while it works; a dead worker's lapses |
| ARCHIVE_REQUEUE_AFTER        | PT5M                          | a queued input no worker took (its message lost) is queued again after this |
| ARCHIVE_BATCH_INPUTS         | 64                            | inbox inputs one worker task takes at a time |
| ARCHIVE_BATCH_BYTES          | 33554432                      | and their bytes at most (a larger input goes alone) |
| ARCHIVE_SCAN_INTERVAL        | PT30S                         | how often the beat scans the inboxes |
| ARCHIVE_AUDIT_INTEGRATE_INTERVAL | PT5S                      | how often the beat integrates the workers' staged audit events into the log (each task also does when no other worker is) |
| ARCHIVE_FIXITY_INTERVAL      | P1D                           | how often the beat runs a fixity sweep |
| ARCHIVE_DISPOSITION_INTERVAL | P1D                           | how often the beat plans disposition                            |
| ARCHIVE_AUTO_DISPOSE         | no                            | yes: the beat's sweep also disposes of what is due (the worker identity needs admin) |
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import urlparse

from archive.dates import parse_datetime, parse_duration
from archive.errors import ConfigError
from archive.text import redact

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
    index_engine: str = "auto"
    es_index: str = "archive-records"
    es_api_key: str | None = field(default=None, repr=False)
    es_username: str | None = None
    es_password: str | None = field(default=None, repr=False)
    policies_dir: Path | None = None
    min_lock: str = "P1D"
    capture_earliest: str = "2000-01-01T00:00:00Z"
    capture_ahead: str = "P1D"
    audit_retention: str = "P10Y"
    audit_checkpoint_every: int = 1000
    audit_checkpoint_interval: str = "PT5M"
    audit_witness: str | None = None  # a URL; None: the file in the archive home (see audit_witness_url)
    audit_witness_s3_endpoint_url: str | None = None
    audit_witness_s3_region: str | None = None
    audit_witness_s3_access_key_id: str | None = None
    audit_witness_s3_secret_access_key: str | None = field(default=None, repr=False)
    actor: str | None = None
    broker_url: str = field(default="redis://127.0.0.1:6379/0", repr=False)
    redis_url: str | None = field(default=None, repr=False)
    inboxes: tuple[str, ...] = ()
    inbox_done: str = "processed"
    inbox_settle: str = "PT10S"
    worker_actor: str = "worker"
    claim_ttl: str = "PT2M"
    requeue_after: str = "PT5M"
    batch_inputs: int = 64
    batch_bytes: int = 32 * 1024**2
    scan_interval: str = "PT30S"
    audit_integrate_interval: str = "PT5S"
    fixity_interval: str = "P1D"
    disposition_interval: str = "P1D"
    auto_dispose: bool = False

    def __repr__(self) -> str:  # URLs may carry credentials (http://user:password@host): never in a log
        shown = ", ".join(f"{f.name}={redact(repr(getattr(self, f.name)))}" for f in fields(self) if f.repr)
        return f"Settings({shown})"

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
    def audit_witness_url(self) -> str:
        """Where audit checkpoints are witnessed (archive/audit/witness.py): ARCHIVE_AUDIT_WITNESS, or by
        default a file in the archive home."""
        return self.audit_witness or f"file://{self.home / 'audit-witness.json'}"

    @property
    def audit_witness_inside_home(self) -> bool:
        """True when the witness is the default file in the archive home: whoever can delete the
        checkpoints can delete it too, so it does not protect against an insider."""
        return self.audit_witness is None

    @property
    def audit_witness_path(self) -> Path | None:
        """The witness file, when the witness is a file (None for an ``s3://`` witness)."""
        url = urlparse(self.audit_witness_url)
        return Path(url.path) if url.scheme == "file" else None

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
        capture_earliest = env.get("ARCHIVE_CAPTURE_EARLIEST") or "2000-01-01T00:00:00Z"
        try:
            parse_datetime(capture_earliest)
        except ValueError as e:
            raise ConfigError(f"ARCHIVE_CAPTURE_EARLIEST={capture_earliest!r}: {e} (an ISO 8601 time with its "
                              "offset, e.g. 2000-01-01T00:00:00Z)", variable="ARCHIVE_CAPTURE_EARLIEST") from None
        index_url = env.get("ARCHIVE_INDEX_URL") or None
        if index_url:
            _check_http_url(index_url, "ARCHIVE_INDEX_URL")
        if env.get("ARCHIVE_ES_MEDIA_TYPE"):
            raise ConfigError("ARCHIVE_ES_MEDIA_TYPE is no longer read: the wire format follows the engine that "
                              "answers at ARCHIVE_INDEX_URL (Elasticsearch 8/9 or OpenSearch); remove it, and set "
                              "ARCHIVE_INDEX_ENGINE=elasticsearch or opensearch to insist on one",
                              variable="ARCHIVE_ES_MEDIA_TYPE")
        index_engine = (env.get("ARCHIVE_INDEX_ENGINE") or "auto").lower()
        if index_engine not in ("auto", "elasticsearch", "opensearch"):
            raise ConfigError(f"ARCHIVE_INDEX_ENGINE={index_engine!r} must be auto, elasticsearch or opensearch",
                              variable="ARCHIVE_INDEX_ENGINE")
        es_api_key = env.get("ARCHIVE_ES_API_KEY") or None
        es_username = env.get("ARCHIVE_ES_USERNAME") or None
        es_password = env.get("ARCHIVE_ES_PASSWORD") or None
        if bool(es_username) != bool(es_password):
            missing = "ARCHIVE_ES_PASSWORD" if es_username else "ARCHIVE_ES_USERNAME"
            raise ConfigError(f"{missing} must be set together with the other search-engine credential",
                              variable=missing)
        if es_api_key and es_username:
            raise ConfigError("ARCHIVE_ES_API_KEY and ARCHIVE_ES_USERNAME are two ways to sign in; set one",
                              variable="ARCHIVE_ES_API_KEY")
        es_index = env.get("ARCHIVE_ES_INDEX") or "archive-records"
        if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,100}", es_index):
            raise ConfigError(f"ARCHIVE_ES_INDEX={es_index!r} is not an index name (lower-case letters, digits, . _ -)",
                              variable="ARCHIVE_ES_INDEX")
        audit_retention = _duration(env, "ARCHIVE_AUDIT_RETENTION", "P10Y")
        checkpoint_interval = _duration(env, "ARCHIVE_AUDIT_CHECKPOINT_INTERVAL", "PT5M")
        if not 1 <= parse_duration(checkpoint_interval).nominal_seconds() <= 86400:
            raise ConfigError(f"ARCHIVE_AUDIT_CHECKPOINT_INTERVAL={checkpoint_interval!r} must be between PT1S "
                              "and P1D: it bounds how long the newest audit events stay without a signed "
                              "checkpoint", variable="ARCHIVE_AUDIT_CHECKPOINT_INTERVAL")
        witness = _witness_url(env, home, base, store_url)
        witness_access = env.get("ARCHIVE_AUDIT_WITNESS_S3_ACCESS_KEY_ID") or None
        witness_secret = env.get("ARCHIVE_AUDIT_WITNESS_S3_SECRET_ACCESS_KEY") or None
        if bool(witness_access) != bool(witness_secret):
            missing = ("ARCHIVE_AUDIT_WITNESS_S3_SECRET_ACCESS_KEY" if witness_access
                       else "ARCHIVE_AUDIT_WITNESS_S3_ACCESS_KEY_ID")
            raise ConfigError(f"{missing} must be set together with the other witness credential", variable=missing)
        witness_endpoint = env.get("ARCHIVE_AUDIT_WITNESS_S3_ENDPOINT_URL") or None
        if witness_endpoint:
            _check_http_url(witness_endpoint, "ARCHIVE_AUDIT_WITNESS_S3_ENDPOINT_URL")
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
            index_engine=index_engine,
            es_index=es_index,
            es_api_key=es_api_key,
            es_username=es_username,
            es_password=es_password,
            policies_dir=policies_dir,
            min_lock=min_lock,
            capture_earliest=capture_earliest,
            capture_ahead=_duration(env, "ARCHIVE_CAPTURE_AHEAD", "P1D"),
            audit_retention=audit_retention,
            audit_checkpoint_every=_int(env, "ARCHIVE_AUDIT_CHECKPOINT_EVERY", 1000, 1, 10_000_000),
            audit_checkpoint_interval=checkpoint_interval,
            audit_witness=witness,
            audit_witness_s3_endpoint_url=witness_endpoint or s3_endpoint,
            audit_witness_s3_region=env.get("ARCHIVE_AUDIT_WITNESS_S3_REGION") or region,
            audit_witness_s3_access_key_id=witness_access,
            audit_witness_s3_secret_access_key=witness_secret,
            actor=env.get("ARCHIVE_ACTOR") or None,
            broker_url=broker_url,
            redis_url=redis_url,
            inboxes=tuple(inboxes),
            inbox_done=inbox_done,
            inbox_settle=_duration(env, "ARCHIVE_INBOX_SETTLE", "PT10S"),
            worker_actor=worker_actor,
            claim_ttl=_duration(env, "ARCHIVE_CLAIM_TTL", "PT2M"),
            requeue_after=_duration(env, "ARCHIVE_REQUEUE_AFTER", "PT5M"),
            batch_inputs=_int(env, "ARCHIVE_BATCH_INPUTS", 64, 1, 10_000),
            batch_bytes=_int(env, "ARCHIVE_BATCH_BYTES", 32 * 1024**2, 1, 2**40),
            scan_interval=_duration(env, "ARCHIVE_SCAN_INTERVAL", "PT30S"),
            audit_integrate_interval=_duration(env, "ARCHIVE_AUDIT_INTEGRATE_INTERVAL", "PT5S"),
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


def _witness_url(env: Mapping[str, str], home: Path, base: Path, store_url: str) -> str | None:
    """ARCHIVE_AUDIT_WITNESS as a URL (a plain path becomes ``file://``), refused where it would not be
    outside the archive: in the archive home, in a filesystem store, or in the store's own bucket."""
    raw = (env.get("ARCHIVE_AUDIT_WITNESS") or "").strip()
    if not raw:
        return None
    name = "ARCHIVE_AUDIT_WITNESS"
    parsed = urlparse(raw)
    store = urlparse(store_url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ConfigError(f"{name}={raw!r} names no bucket; use s3://bucket/prefix", variable=name)
        if store.scheme == "s3" and store.netloc == parsed.netloc:
            raise ConfigError(f"{name}={raw!r} is in the store's own bucket {store.netloc!r}: whoever can delete "
                              "the audit log could delete the witness too; use another bucket under another "
                              "credential", variable=name)
        return raw.rstrip("/")
    if parsed.scheme not in ("", "file"):
        raise ConfigError(f"{name}={raw!r} is not file:///path or s3://bucket/prefix", variable=name)
    path = Path(parsed.path if parsed.scheme == "file" else raw)
    path = (path if path.is_absolute() else base / path).resolve()
    inside = [home.resolve()] + ([Path(store.path).resolve()] if store.scheme == "file" else [])
    for root in inside:
        if path == root or root in path.parents:
            raise ConfigError(f"{name}={raw!r} is inside {root}: whoever can delete the audit log's checkpoints "
                              "there could delete the witness too; put it on another disk or machine, or in "
                              "another bucket", variable=name)
    return f"file://{path}"


def _check_store_url(url: str) -> None:
    parsed = urlparse(url)
    if parsed.scheme == "file" and parsed.path:
        return
    if parsed.scheme == "s3" and parsed.netloc:
        return
    raise ConfigError(f"ARCHIVE_STORE={redact(repr(url))} is not a store URL; use file:///absolute/path or "
                      "s3://bucket[/prefix]", variable="ARCHIVE_STORE")


def _check_http_url(url: str, name: str) -> None:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError(f"{name}={redact(repr(url))} must be an http(s) URL", variable=name)
