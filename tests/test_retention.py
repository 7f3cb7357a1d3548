"""Retention: the shipped policy pack on concrete dates, malformed policy sets, trigger events, legal holds,
dual-recording findings and disposition — on the filesystem store with an injected clock, and on a real
SeaweedFS whose server enforces the locks."""

from __future__ import annotations

import base64
import json
import math
import struct
import time
import wave
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from archive.clock import FixedClock
from archive.errors import ConfigError, ObjectLocked, ObjectNotFound
from archive.index.sqlite import SqliteIndex
from archive.ingest.discover import Limits
from archive.ingest.pipeline import Ingestor
from archive.retention.decide import decide, findings
from archive.retention.policy import PolicyError, load_policies
from archive.retention.service import Retention, default_policies_dir
from archive.services import init_archive
from archive.settings import Settings

PACK = load_policies(default_policies_dir())


def t(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC) if "T" not in text else \
        datetime.fromisoformat(text.replace("Z", "+00:00"))


def meta(**kw) -> dict:
    base = {"schema": "archive-record/1", "source": {"system": "t", "interaction_id": "i-1"}, "channel": "phone",
            "started_at": "2020-03-01T09:00:00+00:00", "ended_at": "2020-03-01T09:10:00+00:00",
            "participants": [{"role": "agent", "id": "a1"}, {"role": "customer", "id": "c1", "account": "AC-1"}]}
    base.update(kw)
    return base


def ev(kind: str, date: str, n: int = 1, **kw) -> dict:
    return {"id": f"ev-{kind}-{n}", "kind": kind, "date": t(date).isoformat(), **kw}


def until(decision: dict) -> str:
    return decision["retain_until"][:10]


NOW = t("2026-01-01")


# --- the shipped pack, on concrete dates ---------------------------------------------------------------


def test_bancassurance_two_year_term_kept_ten_years_from_termination_and_two_after_a_dispute():
    m = meta(business_line="bancassurance", product_type="life", contract_id="BA-1", contract_term="P2Y",
             jurisdiction="CN")
    running = decide("r1", m, [], PACK, NOW)
    assert not running["final"] and "contract-terminated (cn-insurance-traceability-long)" in running["pending"]
    ended = [ev("contract-terminated", "2021-03-01", selector={"contract": "BA-1"})]
    d = decide("r1", m, ended, PACK, NOW)
    assert until(d) == "2031-03-01" and d["final"] and d["governing"] == "cn-insurance-traceability-long"
    opened = ended + [ev("dispute-opened", "2031-02-01", dispute="D-9", selector={"account": "AC-1"})]
    assert not decide("r1", m, opened, PACK, NOW)["final"]  # an open dispute blocks disposition
    resolved = opened + [ev("dispute-resolved", "2032-01-10", dispute="D-9", selector={"account": "AC-1"})]
    d = decide("r1", m, resolved, PACK, NOW)
    assert until(d) == "2034-01-10" and d["final"]
    assert {p["id"] for p in d["policies"]} == {"cn-insurance-traceability-long"}


def test_insurance_terms_of_a_year_or_less_five_years_and_unknown_terms_the_longer_period():
    short = meta(business_line="insurance", contract_id="S-1", contract_term="P6M", jurisdiction="CN")
    ended = [ev("contract-terminated", "2022-01-01", selector={"contract": "S-1"})]
    assert until(decide("r", short, ended, PACK, NOW)) == "2027-01-01"
    year = meta(business_line="insurance", contract_id="S-1", contract_term="P1Y", jurisdiction="CN-31")
    assert until(decide("r", year, ended, PACK, NOW)) == "2027-01-01"  # CN covers CN-31; one year is "≤ 1 year"
    unknown = meta(business_line="insurance", contract_id="S-1", jurisdiction="CN")
    assert until(decide("r", unknown, ended, PACK, NOW)) == "2032-01-01"


def test_insurance_dual_recording_policy_covers_the_three_cases_of_article_6():
    common = {"jurisdiction": "CN", "channel": "video", "contract_term": "P5Y", "contract_id": "K"}
    covered = [
        meta(business_line="bancassurance", product_type="life", **common),
        meta(business_line="insurance", product_type="annuity", **common,
             participants=[{"role": "customer", "id": "c", "age": 60}]),
        meta(business_line="insurance", product_type="unit-linked", **{**common, "contract_term": "P1Y"}),
    ]
    for m in covered:
        assert "cn-insurance-dual-recording" in {p.id for p in PACK.matching(m)}, m
    not_covered = [
        meta(business_line="insurance", product_type="annuity", **common,
             participants=[{"role": "customer", "id": "c", "age": 59}]),
        meta(business_line="bancassurance", product_type="life", **{**common, "contract_term": "P1Y"}),
        meta(business_line="bancassurance", product_type="life", **{**common, "channel": "phone"}),
    ]
    for m in not_covered:
        assert "cn-insurance-dual-recording" not in {p.id for p in PACK.matching(m)}, m


def test_bank_sales_zone_keeps_twenty_years_and_until_any_dispute_is_resolved():
    m = meta(business_line="wealth-management", jurisdiction="CN", contract_id="WM-1", channel="video")
    ended = [ev("contract-terminated", "2023-06-30", selector={"contract": "WM-1"})]
    assert until(decide("r", m, ended, PACK, NOW)) == "2043-06-30"
    late = ended + [ev("dispute-opened", "2043-01-01", dispute="X", selector={"records": ["r"]})]
    assert not decide("r", m, late, PACK, NOW)["final"]
    resolved = late + [ev("dispute-resolved", "2044-02-02", dispute="X", selector={"records": ["r"]})]
    assert until(decide("r", m, resolved, PACK, NOW)) == "2044-02-02"


@pytest.mark.parametrize("extra, expected, governing", [
    ({"business_line": "broker-dealer", "jurisdiction": "US"}, "2023-03-01", "sec-17a-4-b4"),
    ({"business_line": "broker-dealer", "tags": ["sec-17a-3-a"]}, "2026-03-01", "sec-17a-4-a"),
    ({"business_line": "broker-dealer", "tags": ["finra-4511"]}, "2026-03-01", "finra-4511"),
    ({"business_line": "investment-services", "jurisdiction": "DE"}, "2025-03-01", "mifid-ii-16-7"),
    ({"business_line": "swap-dealer", "channel": "chat"}, "2025-03-01", "cftc-1-31"),
    ({"business_line": "swap-dealer", "channel": "phone"}, "2021-03-01", "cftc-1-31-oral"),
    ({"business_line": "cards", "jurisdiction": "US-NY"}, "2030-03-01", "default"),
])
def test_us_and_eu_rules_from_the_end_of_the_communication(extra, expected, governing):
    d = decide("r", meta(**extra), [], PACK, NOW)
    assert (until(d), d["governing"], d["final"]) == (expected, governing, True)


def test_a_record_under_both_mifid_and_sec_takes_the_longer_and_the_regulator_can_extend_to_seven():
    m = meta(business_line="broker-dealer", jurisdiction="GB")  # GB left the EU: SEC only
    assert decide("r", m, [], PACK, NOW)["governing"] == "sec-17a-4-b4"
    m = meta(business_line="broker-dealer", jurisdiction="FR")
    d = decide("r", m, [], PACK, NOW)
    assert until(d) == "2025-03-01" and d["governing"] == "mifid-ii-16-7"
    assert {p["id"]: p["until"][:10] for p in d["policies"]} == {"mifid-ii-16-7": "2025-03-01",
                                                                 "sec-17a-4-b4": "2023-03-01"}
    extended = [{**ev("retention-extended", "2024-12-01", selector={"records": ["r"]}), "until": "2027-03-01T00:00:00+00:00"}]
    d = decide("r", m, extended, PACK, NOW)
    assert until(d) == "2027-03-01" and d["governing"] == "retention-extended"


def test_the_default_flags_for_review_and_every_decision_names_policy_versions():
    d = decide("r", meta(), [], PACK, NOW)
    assert d["on_expiry"] == "review" and d["policies"][0]["id"] == "default"
    assert d["policies"][0]["version"] == 1 and len(d["policies"][0]["sha256"]) == 64
    assert d["policy_set"] == PACK.fingerprint()


# --- malformed policy sets ------------------------------------------------------------------------------

GOOD = """id: p1
version: 2
title: T
citation: C
match:
  channel: chat
retain:
  - for: P3Y
    from: recording-end
"""
DEFAULT = "id: fallback\nversion: 1\ntitle: D\ncitation: C\ndefault: true\nretain:\n  - for: P10Y\non_expiry: review\n"


def policy_dir(tmp_path: Path, **files: str) -> Path:
    d = tmp_path / "pol"
    d.mkdir(exist_ok=True)
    (d / "default.yaml").write_text(DEFAULT)
    for name, text in files.items():
        (d / f"{name}.yaml").write_text(text)
    return d


@pytest.mark.parametrize("text, where, words", [
    (GOOD.replace("P3Y", "P3X"), ":8: retain[0].for:", "not an ISO-8601 duration"),
    (GOOD.replace("title: T", "title: T\nretension: P1Y"), ":4: retension:", "unknown field"),
    (GOOD.replace("channel: chat", "chanel: chat"), ":6: match.chanel:", "unknown match field"),
    (GOOD.replace("from: recording-end", "from: contract-ended"), ":9: retain[0].from:", "unknown trigger"),
    (GOOD.replace("version: 2", "version: two"), ":2: version:", "whole number"),
    (GOOD.replace("channel: chat", "channel: [chat, \n"), ":", "not valid YAML"),
    (GOOD.replace("channel: chat", "jurisdiction: [DE, NO]"), ":6: match.jurisdiction:", "quote"),
    (GOOD + "lock_mode: strict\n", ":10: lock_mode:", "compliance or governance"),
])
def test_malformed_policies_are_rejected_naming_file_line_and_field(tmp_path, text, where, words):
    d = policy_dir(tmp_path, p1=text)
    with pytest.raises(PolicyError) as e:
        load_policies(d)
    assert f"{d / 'p1.yaml'}{where}" in str(e.value) and words in str(e.value), str(e.value)


def test_duplicate_ids_a_missing_default_and_versions_going_backwards_are_rejected(tmp_path):
    d = policy_dir(tmp_path, p1=GOOD, p2=GOOD)
    with pytest.raises(PolicyError, match="duplicate policy id 'p1'"):
        load_policies(d)
    (d / "p2.yaml").unlink()
    (d / "default.yaml").unlink()
    with pytest.raises(PolicyError, match="exactly one default"):
        load_policies(d)
    d = policy_dir(tmp_path, p1=GOOD)
    applied = load_policies(d).get("p1")
    with pytest.raises(PolicyError, match=r"p1\.yaml:2: version: p1 version 2 is older than version 3"):
        load_policies(d, known_versions={"p1": {3: "x" * 64}})
    (d / "p1.yaml").write_text(GOOD.replace("P3Y", "P4Y"))  # changed text, same version
    with pytest.raises(PolicyError, match="applied with different text"):
        load_policies(d, known_versions={"p1": {2: applied.text_sha256}})


# --- records in an archive, time injected -----------------------------------------------------------------


def wav(path: Path, seconds: float = 3.0) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"".join(struct.pack("<hh", int(3000 * math.sin(i / 9)), int(2000 * math.sin(i / 7)))
                               for i in range(int(8000 * seconds))))
    return path


@pytest.fixture
def world(tmp_path):
    """An embedded archive whose store and retention share a clock set to 2021-02-01."""
    clock = FixedClock(t("2021-02-01"))
    settings = Settings.from_env({"ARCHIVE_HOME": str(tmp_path / "home")})
    arch, _ = init_archive(settings)
    arch.store.clock = clock
    index = SqliteIndex(settings.index_path)
    retention = Retention(arch, index, clock=clock)
    return arch, Ingestor(arch, index, retention=retention), retention, clock


def sale(inbox: Path, name: str, **kw) -> Path:
    inbox.mkdir(exist_ok=True)
    wav(inbox / f"{name}.wav")
    doc = meta(**{"source": {"system": "t", "interaction_id": name}, "started_at": "2021-01-15T02:00:00+00:00",
                  "ended_at": "2021-01-15T02:00:03+00:00", **kw})
    (inbox / f"{name}.json").write_text(json.dumps(doc))
    return inbox


def objects_of(arch, rid: str) -> list:
    return [arch.vault.head(n) for n in arch.vault.names(f"records/{rid}/")]


def test_locks_follow_the_decision_events_extend_them_holds_block_and_disposition_certifies(world, tmp_path):
    arch, ingestor, retention, clock = world
    inbox = sale(tmp_path / "in", "ba-1", business_line="bancassurance", product_type="life", contract_id="BA-1",
                 contract_term="P2Y", jurisdiction="CN")
    sale(inbox, "us-1", business_line="broker-dealer", jurisdiction="US")
    summary = ingestor.run([inbox], limits=Limits())
    assert summary.archived == 2, summary.outcomes
    ba, us = (o.record_ids[0] for o in summary.outcomes)
    for head in objects_of(arch, ba):  # provisional: ten years from the recording, compliance
        assert head.retain_until == t("2031-01-15T02:00:03Z") and head.mode.value == "COMPLIANCE"
    assert len(objects_of(arch, ba)) == 2  # the audio part and the manifest, each with its receipt

    clock.set(t("2021-03-02"))
    event, changed = retention.add_event("contract-terminated", contract="BA-1", date="2021-03-01", by="ops")
    assert [c["record_id"] for c in changed] == [ba] and changed[0]["after"][:10] == "2031-03-01"
    heads = objects_of(arch, ba)
    assert len(heads) == 3 and all(h.retain_until == t("2031-03-01") for h in heads)  # + the new decision
    assert retention.decision(ba)["final"] and retention.decision(ba)["events"] == [event["id"]]

    retention.place_hold("CASE-7", [us], by="lee", reason="complaint 7")
    assert all(h.legal_hold for h in objects_of(arch, us))
    clock.set(t("2024-06-01"))  # the SEC record's three years are over
    plans = {p.record_id: p for p in retention.plan()}
    assert set(plans) == {us} and plans[us].action == "held" and plans[us].cases == ["CASE-7"]
    assert retention.dispose(list(plans.values()), by="ops") == []  # nothing but deletes is carried out
    with pytest.raises(ObjectLocked):
        arch.vault.delete(f"records/{us}/manifest")

    retention.release_hold("CASE-7", by="kim", approval="ap-1", reason="settled")
    assert not any(h.legal_hold for h in objects_of(arch, us))
    [plan] = retention.plan()
    assert plan.action == "delete" and plan.policies == ["sec-17a-4-b4 v1"]
    [result] = retention.dispose([plan], by="ops", signer=arch.keys.signer())
    assert result["action"] == "deleted" and result["objects"] == 2
    assert objects_of(arch, us) == [] and ingestor.index.get(us) is None
    cert = retention.certificate(us)
    assert cert["record_id"] == us and cert["policies"][0]["id"] == "sec-17a-4-b4" and cert["disposed_by"] == "ops"
    signature = cert.pop("signature")
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    public = Ed25519PublicKey.from_public_bytes(arch.keys.signing_public_keys()[signature["key_id"]])
    public.verify(base64.b64decode(signature["value"]), json.dumps(cert, sort_keys=True, ensure_ascii=False).encode())
    # the bancassurance sale is still kept, and re-ingesting the disposed one does not resurrect it silently
    assert retention.manifest(ba)["record_id"] == ba


def test_a_recording_dated_by_a_reset_clock_gets_a_finding_and_is_never_disposed_of_unreviewed(world, tmp_path):
    """A Sonus sample dated 1970 was accepted and its retention had run out in 1973: it would have gone
    with the next disposition. The implausible time is a finding, and only a person's review lets it go."""
    arch, ingestor, retention, clock = world
    inbox = sale(tmp_path / "in", "epoch-1", business_line="broker-dealer", started_at="1970-01-01T00:00:00Z",
                 ended_at="1970-01-01T00:00:03Z")
    sale(inbox, "ahead-1", business_line="broker-dealer", started_at="2021-03-01T00:00:00Z",
         ended_at="2021-03-01T00:00:03Z")
    sale(inbox, "fine-1", business_line="broker-dealer")
    summary = ingestor.run([inbox], limits=Limits())
    assert summary.archived == 3, summary.outcomes
    rid = {o.record_ids[0]: retention.manifest(o.record_ids[0]) for o in summary.outcomes}
    by_name = {m["metadata"]["source"]["interaction_id"]: r for r, m in rid.items()}
    codes = {name: [f["code"] for f in rid[r]["findings"]] for name, r in by_name.items()}
    assert codes == {"epoch-1": ["implausible-capture-time"], "ahead-1": ["implausible-capture-time"], "fine-1": []}
    assert "1970-01-01T00:00:00Z" in rid[by_name["epoch-1"]]["findings"][0]["detail"]
    assert "ARCHIVE_CAPTURE_AHEAD" in rid[by_name["ahead-1"]]["findings"][0]["detail"]

    # its retention is counted from the time it gives (ended 1973), but the store keeps it at least as
    # long as if it had begun at its ingest: the broker-dealer policy's three years from 2021-02-01
    assert retention.decision(by_name["epoch-1"])["retain_until"][:4] == "1973"
    assert all(h.retain_until >= t("2024-02-01") for h in objects_of(arch, by_name["epoch-1"]))
    assert all(h.retain_until < t("2024-02-02") for h in objects_of(arch, by_name["fine-1"]))

    clock.set(t("2021-02-03"))
    [plan] = retention.plan()
    assert plan.record_id == by_name["epoch-1"] and plan.action == "review"
    assert "implausible" in plan.why and "--reviewed " + plan.record_id in plan.why
    assert retention.dispose([plan], by="ops") == []  # a review is not a delete
    [plan] = retention.plan(reviewed={by_name["epoch-1"]})
    assert plan.action == "delete"
    [result] = retention.dispose([plan], by="ops")  # reviewed, yet the store's lock still stands
    assert result["action"] == "store-locked" and retention.manifest(by_name["epoch-1"])


def test_capture_bounds_are_settings_and_a_bad_one_is_refused(tmp_path):
    from archive.errors import ConfigError

    settings = Settings.from_env({"ARCHIVE_HOME": str(tmp_path), "ARCHIVE_CAPTURE_EARLIEST": "1960-01-01",
                                  "ARCHIVE_CAPTURE_AHEAD": "PT2H"})
    assert (settings.capture_earliest, settings.capture_ahead) == ("1960-01-01", "PT2H")
    with pytest.raises(ConfigError, match="ARCHIVE_CAPTURE_EARLIEST"):
        Settings.from_env({"ARCHIVE_HOME": str(tmp_path), "ARCHIVE_CAPTURE_EARLIEST": "last tuesday"})
    with pytest.raises(ConfigError, match="ARCHIVE_CAPTURE_AHEAD"):
        Settings.from_env({"ARCHIVE_HOME": str(tmp_path), "ARCHIVE_CAPTURE_AHEAD": "soon"})


def test_nothing_locked_is_deleted_whatever_the_archive_clock_says(world, tmp_path):
    arch, ingestor, retention, clock = world
    summary = ingestor.run([sale(tmp_path / "in", "us-1", business_line="broker-dealer")], limits=Limits())
    rid = summary.outcomes[0].record_ids[0]
    arch.store.clock = FixedClock(t("2021-02-01"))  # the store's own clock stays behind
    clock.set(t("2040-01-01"))
    [plan] = retention.plan()
    assert plan.action == "delete"
    [result] = retention.dispose([plan], by="ops")
    assert result["action"] == "store-locked"
    assert len(objects_of(arch, rid)) == 2 and retention.manifest(rid)


def test_dry_run_json_lists_what_would_go_and_why(world, tmp_path, monkeypatch, capsys):
    arch, ingestor, retention, clock = world
    ingestor.run([sale(tmp_path / "in", "us-1", business_line="broker-dealer"),
                  sale(tmp_path / "in", "misc-1")], limits=Limits())
    clock.set(t("2031-06-01"))
    from archive import cli

    monkeypatch.setattr(cli, "_retention", lambda archive: retention)
    args = cli.build_parser().parse_args(["dispose", "--dry-run", "--json"])
    args.audit_target = {}
    assert cli.cmd_dispose(arch, args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dry_run"] and {p["action"] for p in out["plans"]} == {"delete", "review"}
    review = next(p for p in out["plans"] if p["action"] == "review")
    assert "--reviewed" in review["why"] and review["policies"] == ["default v1"]
    assert len(list(retention.record_ids())) == 2  # nothing deleted


def test_a_lock_is_never_shortened_when_a_policy_is_edited_shorter(world, tmp_path):
    arch, ingestor, retention, clock = world
    d = policy_dir(tmp_path, p1=GOOD.replace("channel: chat", "business_line: desk"))
    retention.policies_dir = d
    summary = ingestor.run([sale(tmp_path / "in", "x-1", business_line="desk")], limits=Limits())
    rid = summary.outcomes[0].record_ids[0]
    assert retention.decision(rid)["retain_until"][:10] == "2024-01-15"
    (d / "p1.yaml").write_text(GOOD.replace("channel: chat", "business_line: desk").replace("version: 2", "version: 3")
                               .replace("P3Y", "P1Y"))
    fresh = Retention(arch, ingestor.index, policies_dir=d, clock=clock)
    before, after = fresh.apply(rid)
    assert after["retain_until"][:10] == "2024-01-15" and after["kept_from_earlier_decision"]
    assert all(h.retain_until == t("2024-01-15T02:00:03Z") for h in objects_of(arch, rid))
    (d / "p1.yaml").write_text(GOOD.replace("channel: chat", "business_line: desk"))  # back to version 2
    with pytest.raises(PolicyError, match="older than version 3"):
        Retention(arch, ingestor.index, policies_dir=d, clock=clock).policy_set()


def test_ingest_refuses_to_run_under_an_invalid_policy_set(world, tmp_path):
    arch, ingestor, retention, clock = world
    retention.policies_dir = policy_dir(tmp_path, p1=GOOD.replace("P3Y", "three years"))
    inbox = sale(tmp_path / "in", "x-1")
    with pytest.raises(ConfigError, match="retain\\[0\\].for"):
        ingestor.run([inbox], limits=Limits())
    assert list(retention.record_ids()) == []


def test_dual_recording_findings_are_stored_and_searchable(world, tmp_path):
    arch, ingestor, retention, clock = world
    inbox = sale(tmp_path / "in", "dual-1", channel="video", business_line="bancassurance", product_type="unit-linked",
                 contract_term="P5Y", jurisdiction="CN", ended_at="2021-01-15T02:10:00+00:00")
    (inbox / "dual-1.txt").write_text("坐席：本产品不是存款，投资有风险。\n")
    summary = ingestor.run([inbox], limits=Limits())
    rid = summary.outcomes[0].record_ids[0]
    manifest = retention.manifest(rid)
    codes = {f["code"] for f in manifest["findings"]}
    # audio only (no video), 3 s of a 10 min session, the cooling-off period never stated
    assert codes == {"missing-part-video", "recording-gap", "missing-cooling-off"}, manifest["findings"]
    assert manifest["checks"]["cn-insurance-dual-recording"]["phrases"] == {"risk-disclosure": True,
                                                                            "cooling-off": False}
    assert [m["record_id"] for m in ingestor.index.search("missing-cooling-off")] == [rid]


def test_findings_leave_phrases_unchecked_without_a_transcript_and_accept_video_with_audio():
    policy = PACK.get("cn-insurance-dual-recording")
    m = meta(channel="video", ended_at="2020-03-01T09:00:30+00:00")
    parts = [{"name": "video", "media": {"kind": "video", "audio_codec": "aac", "duration_s": 30.0}}]
    found, checks = findings(m, parts, [policy], None)
    assert found == [] and checks[policy.id]["phrases"] == "unchecked: no transcript supplied"
    found, _ = findings(m, parts, [policy], "销售：请注意 不 是 存 款。犹豫期为十五天。")
    assert found == []  # spacing and punctuation do not hide a phrase


# --- against a real S3 Object Lock server ----------------------------------------------------------------


@pytest.mark.s3
def test_on_seaweedfs_locks_events_holds_and_disposition(seaweed, tmp_path):
    pol = tmp_path / "pol"
    pol.mkdir()
    (pol / "default.yaml").write_text(DEFAULT)
    (pol / "short.yaml").write_text("id: short\nversion: 1\ntitle: test\ncitation: test\nmatch:\n  business_line: "
                                    "desk\nretain:\n  - for: PT4S\n  - for: PT4S\n    from: contract-terminated\n")
    env = {"ARCHIVE_HOME": str(tmp_path / "home"), "ARCHIVE_STORE": "s3://retention-evidence/archive",
           "ARCHIVE_S3_ENDPOINT_URL": seaweed.endpoint_url, "ARCHIVE_S3_ACCESS_KEY_ID": seaweed.access_key,
           "ARCHIVE_S3_SECRET_ACCESS_KEY": seaweed.secret_key, "ARCHIVE_POLICIES": str(pol),
           "ARCHIVE_MIN_LOCK": "PT1S"}
    arch, _ = init_archive(Settings.from_env(env), create_bucket=True)
    ingestor = Ingestor(arch, SqliteIndex(arch.settings.index_path))
    retention = ingestor.retention
    now = datetime.now(UTC).replace(microsecond=0)
    inbox = tmp_path / "in"
    inbox.mkdir()
    for name in ("a", "b"):
        wav(inbox / f"{name}.wav")
        (inbox / f"{name}.json").write_text(json.dumps(meta(
            source={"system": "t", "interaction_id": name}, business_line="desk", contract_id=f"K-{name}",
            started_at=(now - timedelta(seconds=3)).isoformat(), ended_at=now.isoformat())))
    summary = ingestor.run([inbox], limits=Limits())
    a, b = (o.record_ids[0] for o in summary.outcomes)
    raw = arch.store.client
    for rid in (a, b):
        decided = datetime.fromisoformat(retention.decision(rid)["retain_until"])
        for name in arch.vault.names(f"records/{rid}/"):
            head = raw.head_object(Bucket="retention-evidence", Key=f"archive/objects/{name}")
            assert head["ObjectLockMode"] == "COMPLIANCE" and head["ObjectLockRetainUntilDate"] >= decided
    # the contract of "a" ended a second after the call: its lock moves later, on the server
    time.sleep(1.2)
    _, changed = retention.add_event("contract-terminated", contract="K-a",
                                     date=(now + timedelta(seconds=1)).isoformat(), by="ops")
    assert [c["record_id"] for c in changed] == [a]
    head = raw.head_object(Bucket="retention-evidence", Key=f"archive/objects/records/{a}/manifest")
    assert head["ObjectLockRetainUntilDate"] >= now + timedelta(seconds=5)
    retention.add_event("contract-terminated", contract="K-b", date=now.isoformat(), by="ops")
    retention.place_hold("CASE-S3", [b], by="lee", reason="test")
    head = raw.head_object(Bucket="retention-evidence", Key=f"archive/objects/records/{b}/manifest")
    assert head["ObjectLockLegalHoldStatus"] == "ON"
    last = max(arch.vault.head(n).retain_until for rid in (a, b) for n in arch.vault.names(f"records/{rid}/"))
    while datetime.now(UTC) < last + timedelta(seconds=1):  # let the server's locks run out
        time.sleep(0.2)
    plans = {p.record_id: p for p in retention.plan()}
    assert plans[a].action == "delete" and plans[b].action == "held"
    with pytest.raises(ObjectLocked):  # the server itself refuses while the hold is on
        arch.vault.delete(f"records/{b}/manifest")
    results = retention.dispose(list(plans.values()), by="ops", signer=arch.keys.signer())
    assert [(r["record_id"], r["action"]) for r in results] == [(a, "deleted")]
    with pytest.raises(ObjectNotFound):
        retention.manifest(a)
    assert retention.certificate(a)["record_id"] == a
    assert retention.manifest(b)["record_id"] == b


def test_a_policy_version_whose_writer_died_before_its_receipt_is_recorded_under_the_next_name(world, tmp_path):
    """Two workers starting together both record the policy set: one had sealed ``v000002`` and not yet
    its receipt when the other listed it (a valid call was quarantined "no sealed object
    'policies/…/v000001' (no seal receipt)" in the workers' kill test); a writer killed there leaves the
    name without a receipt for good."""
    import io
    import os

    arch, ingestor, retention, clock = world
    retention.policies_dir = policy_dir(tmp_path, p1=GOOD)
    arch.store.put("objects/policies/p1/v000002", io.BytesIO(os.urandom(200)), retain_until=t("2031-01-01"))
    summary = ingestor.run([sale(tmp_path / "in", "x-1")], limits=Limits())
    assert [o.status for o in summary.outcomes] == ["archived"], summary.outcomes
    assert "policies/p1/v000002.retry-2" in set(arch.vault.names("policies/", with_receipt=True))
    known = Retention(arch, ingestor.index, policies_dir=retention.policies_dir, clock=clock).known_versions()
    assert known["p1"] == {2: next(p.text_sha256 for p in load_policies(retention.policies_dir).policies if p.id == "p1")}
