"""Property tests of the HTTP API from its own OpenAPI document (schemathesis): requests generated for
every operation — valid and invalid parameters, bodies and uploads — against ``archive serve`` in its own
process, with tokens of each role and with none. Whatever is sent, the server answers with a status it
means (2xx, 4xx), never a 5xx, and never a stack trace."""

from __future__ import annotations

import json

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from tests.apikit import served
from tests.test_cli import cli_env, run
from tests.workerkit import wav_bytes

ROLES = ("auditor", "legal", "admin", "ingest")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("schema")
    env = cli_env(tmp / "home", "admin")
    inbox = tmp / "inbox"
    inbox.mkdir()
    (inbox / "call-1.wav").write_bytes(wav_bytes(30.0, 1))
    (inbox / "call-1.json").write_text(json.dumps({
        "schema": "archive-record/1", "source": {"system": "t", "interaction_id": "call-1"}, "channel": "phone",
        "started_at": "2024-03-01T09:00:00Z", "participants": [{"role": "agent", "id": "1042"},
                                                               {"role": "customer", "id": "C-1"}]}))
    run(env, "init")
    for role in ROLES:
        run(env, "identity", "add", f"u-{role}", "--role", role)
    run(env, "ingest", str(inbox))
    tokens = {role: run(env, "token", "create", f"u-{role}", "--role", role).stdout.decode().strip() for role in ROLES}
    with served(env, tmp / "server.log") as base:
        yield {"base": base, "tokens": tokens, "log": tmp / "server.log"}
    log = (tmp / "server.log").read_text()
    assert "Traceback" not in log and "unexpected error" not in log, log[-4000:]


def test_no_request_makes_the_server_fail(site):
    """Each operation in the document, with generated requests (schemathesis strategies run by hypothesis),
    each sent with a token of each role and with none."""
    from hypothesis import given

    schema = schemathesis.openapi.from_url(site["base"] + "/api/v1/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20, [op.label for op in operations]
    statuses: dict[int, int] = {}
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
        def check(case):
            for role in (*ROLES, None):
                headers = {"X-Archive-Reason": "schema test", "X-Archive-Case": "CASE-S"}
                if role:
                    headers["Authorization"] = f"Bearer {site['tokens'][role]}"
                response = case.call(headers=headers, timeout=30)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                case.validate_response(response, checks=[not_a_server_error])
                assert "Traceback" not in response.text, (operation.label, role, response.text[:2000])

        check()
    print("statuses:", dict(sorted(statuses.items())))
    # requests got through to the operations, not only to the token check
    assert sum(statuses.values()) > 1500 and statuses.get(200, 0) > 50 and statuses.get(403, 0) > 50, statuses
