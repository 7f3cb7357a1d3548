"""docker-compose.yml, checked without a Docker engine (none on these machines): the file parses; every
service the archive needs is declared; the archive's settings name those services at the ports they
listen on and pass the archive's own validation; the Elasticsearch image and the client installed (and
every client pyproject.toml allows) can talk, by the rule the archive enforces at start; the buckets
MinIO is told to create (the archive's with Object Lock) are the ones the settings use; no secret is
written in the file; dependencies exist."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from archive.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
ARCHIVE_SERVICES = ("archive-init", "worker", "beat", "cli")


def _env(service: str) -> dict[str, str]:
    env = SERVICES[service]["environment"]
    return {k: str(v) for k, v in env.items()}


def _resolved(env: dict[str, str]) -> dict[str, str]:
    """${VAR:?message} and ${VAR:-default} as docker compose resolves them, with the required ones set."""
    def sub(m: re.Match) -> str:
        return f"value-of-{m.group(1).lower()}" if m.group(2) in (":?", "?") else (m.group(3) or "")
    return {k: re.sub(r"\$\{([A-Z0-9_]+)(:?[?-])?([^}]*)\}", sub, v) for k, v in env.items()}


def test_every_service_the_archive_needs_is_declared():
    assert {"minio", "minio-init", "elasticsearch", "redis", *ARCHIVE_SERVICES} <= set(SERVICES)
    assert "minio/minio" in SERVICES["minio"]["image"]
    assert "elasticsearch" in SERVICES["elasticsearch"]["image"]
    assert SERVICES["elasticsearch"]["environment"]["discovery.type"] == "single-node"
    assert "redis" in SERVICES["redis"]["image"]
    assert SERVICES["worker"]["command"][0] == "worker" and SERVICES["beat"]["command"] == ["worker", "--beat-only"]
    for name, service in SERVICES.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in SERVICES, f"{name} depends on undeclared {dependency}"
    assert (ROOT / "Dockerfile").is_file() and SERVICES["worker"]["build"] == "."


def test_archive_settings_point_at_the_declared_services_and_validate():
    for name in ARCHIVE_SERVICES:
        env = _resolved(_env(name))
        settings = Settings.from_env(env)  # the archive's own validation: every value well-formed
        assert urlparse(settings.s3_endpoint_url).hostname == "minio"
        assert urlparse(settings.s3_endpoint_url).port == 9000 and "9000:9000" in SERVICES["minio"]["ports"]
        assert urlparse(settings.index_url).hostname == "elasticsearch" and urlparse(settings.index_url).port == 9200
        assert settings.index_engine == "elasticsearch"  # a different engine at that URL is refused at start
        assert urlparse(settings.broker_url).hostname == "redis" and settings.redis_url == settings.broker_url
        assert settings.inboxes and all(i.startswith("s3://") for i in settings.inboxes)
        assert all(k.startswith("ARCHIVE_") for k in env)


def test_the_elasticsearch_image_and_the_client_can_talk():
    """The compose image's version against the client installed here and every client major the pin
    allows, by the rule the archive enforces at start (archive/index/engines.py): fails when the client's
    major cannot talk to the image's (the 9.x client and Elasticsearch 8, say)."""
    import tomllib

    from packaging.specifiers import SpecifierSet

    from archive.index import engines

    image, _, tag = SERVICES["elasticsearch"]["image"].rpartition(":")
    assert image == "docker.elastic.co/elasticsearch/elasticsearch" and re.fullmatch(r"\d+\.\d+\.\d+", tag)
    server = engines.Engine("elasticsearch", tag, "default")
    settings = Settings.from_env(_resolved(_env("worker")))
    installed = engines.installed_client("elasticsearch")
    engines.check(server, installed, wanted=settings.index_engine)  # what archive-init would do at start

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    [pin] = [d for d in deps if re.match(r"elasticsearch\b", d)]
    assert pin == engines.ES_CLIENT_PIN  # the install hint the start-up error gives is the pin
    allowed = SpecifierSet(pin.removeprefix("elasticsearch"))
    assert installed.version in allowed
    majors = [m for m in range(6, 12) if any(f"{m}.{n}.0" in allowed for n in range(0, 40))]
    assert majors == [8]
    for major in majors:
        engines.check(server, engines.Client("elasticsearch-py", f"{major}.19.0"))
    with pytest.raises(engines.IncompatibleEngine, match=tag):  # the check can fail: one client major too new
        engines.check(server, engines.Client("elasticsearch-py", f"{server.major + 1}.0.0"))


def test_minio_creates_the_buckets_the_archive_uses_with_object_lock_on_the_archive():
    script = SERVICES["minio-init"]["command"][0]
    settings = Settings.from_env(_resolved(_env("worker")))
    store_bucket = urlparse(settings.store_url).netloc
    inbox_bucket = urlparse(settings.inboxes[0]).netloc
    assert re.search(rf"mc mb [^\n]*--with-lock [^\n]*local/{store_bucket}\b", script)
    assert re.search(rf"mc mb [^\n]*local/{inbox_bucket}\b", script)
    assert not re.search(rf"--with-lock [^\n]*local/{inbox_bucket}\b", script)  # the inbox must allow deletes
    # the archive's access key is the service account the init creates, with a policy on both buckets
    assert f"mc admin user add local {settings.s3_access_key_id} " in script
    assert f"arn:aws:s3:::{store_bucket}/*" in script and f"arn:aws:s3:::{inbox_bucket}/*" in script
    assert "BypassGovernanceRetention" not in script


def test_no_secret_is_written_in_the_file():
    text = (ROOT / "docker-compose.yml").read_text()
    for name in ("ARCHIVE_S3_SECRET_ACCESS_KEY", "MINIO_ROOT_PASSWORD", "ARCHIVE_S3_SECRET"):
        for m in re.finditer(rf"^\s*{name}:\s*(.+)$", text, re.M):
            assert m.group(1).startswith("${") and ":?" in m.group(1), f"{name} must come from the environment"
    assert "ARCHIVE_ES_API_KEY" not in text
