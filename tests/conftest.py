"""Shared fixtures: a real SeaweedFS S3 server (one per session, a fresh Object Lock bucket per test),
the search engines (osmem-server behind a strict shim per engine profile: every ``es`` test runs once per
profile), embedded stores and keyrings in temporary directories.

A missing server is a failure, never a skip: the S3 tests prove WORM behaviour only against a real
store (moto lets COMPLIANCE retention be shortened).
"""

from __future__ import annotations

import contextlib
import uuid

import pytest

from archive.keys.keyring import KeyringProvider, create_keyring
from archive.store.filesystem import FilesystemStore
from archive.store.s3 import S3Store
from tests.engine_shim import ENGINE_PROFILES
from tests.servers import EngineShim, Osmem, SeaweedS3


@pytest.fixture(scope="session")
def seaweed():
    """A SeaweedFS S3 server for the whole session."""
    with SeaweedS3() as server:
        yield server


@pytest.fixture(scope="session")
def osmem():
    """The search stand-in (osmem-server) for the whole session; tests reach it through :func:`shims`."""
    with Osmem() as server:
        yield server


@pytest.fixture(scope="session")
def shims(osmem):
    """``shims(profile, version=None)``: the strict shim answering as that engine in front of osmem-server,
    started on first use and kept for the session."""
    started: dict = {}
    with contextlib.ExitStack() as stack:
        def get(profile: str, version: str | None = None) -> EngineShim:
            if (profile, version) not in started:
                started[profile, version] = stack.enter_context(EngineShim(osmem.url, profile, version))
            return started[profile, version]
        yield get


@pytest.fixture(params=[pytest.param(p, id=p, marks=pytest.mark.es) for p in ENGINE_PROFILES])
def engine(request, shims) -> EngineShim:
    """Each engine profile in turn, with no injected faults."""
    shim = shims(request.param)
    shim.clear_faults()
    return shim


@pytest.fixture
def s3_bucket(seaweed) -> str:
    """A fresh bucket with Object Lock enabled."""
    return seaweed.make_locked_bucket(f"t-{uuid.uuid4().hex[:20]}")


@pytest.fixture
def s3_store(seaweed, s3_bucket) -> S3Store:
    # The smallest part size S3 allows, so multipart paths run with small test files.
    return S3Store(s3_bucket, "archive", client=seaweed.client(), part_size=5 * 1024 * 1024)


@pytest.fixture
def fs_store(tmp_path) -> FilesystemStore:
    return FilesystemStore(tmp_path / "store", create=True)


@pytest.fixture(params=["filesystem", pytest.param("s3", marks=pytest.mark.s3)])
def any_store(request):
    """Each store backend in turn, for tests that must hold on every backend."""
    return request.getfixturevalue("fs_store" if request.param == "filesystem" else "s3_store")


@pytest.fixture
def keyring(tmp_path) -> KeyringProvider:
    path = tmp_path / "keys" / "keyring.json"
    create_keyring(path)
    return KeyringProvider(path)
