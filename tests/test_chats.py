"""Chat-transcript importers (archive.ingest.chats) against fixtures shaped as the platforms document them."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from archive.ingest import chats
from archive.ingest.record import InvalidMetadata, validate

FIXTURES = Path(__file__).parent / "fixtures" / "chats"


def load(name: str):
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def roles(record: dict) -> dict[str, str]:
    return {p["id"]: p["role"] for p in record["participants"]}


def by_id(record: dict, pid: str) -> dict:
    return next(p for p in record["participants"] if p["id"] == pid)


# Expected: fixture → (format, [(interaction_id, channel, started_at, ended_at, message count)])
EXPECTED = {
    "amazon-connect-transcript.json": ("amazon-connect", [(
        "5ca32fbd-8f92-46af-92a5-6b0f970f0efe", "chat", "2024-03-11T09:14:02.318+00:00",
        "2024-03-11T09:18:41.005+00:00", 6)]),
    "amazon-connect-transcript-zh.json": ("amazon-connect", [(
        "b4e4bb7a-51fa-4579-a57e-0bb5474e17ea", "chat", "2024-06-03T02:41:28.172+00:00",
        "2024-06-03T02:44:40+00:00", 5)]),
    "twilio-conversation-sms.json": ("twilio-conversations", [(
        "CH3b4e1f0a9c8d7e6f5a4b3c2d1e0f9a8b", "messaging", "2024-05-14T15:02:11+00:00",
        "2024-05-14T15:09:47+00:00", 5)]),
    "twilio-messages-page.json": ("twilio-conversations", [(
        "CH8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b", "messaging", "2024-07-02T08:30:05+00:00",
        "2024-07-02T08:33:10+00:00", 3)]),
    "zendesk-ticket-email.json": ("zendesk", [(
        "35436", "email", "2024-02-19T10:12:44+00:00", "2024-02-20T08:03:15+00:00", 4)]),
    "zendesk-ticket-whatsapp.json": ("zendesk", [(
        "35512", "messaging", "2024-04-08T16:20:31+00:00", "2024-04-08T16:31:09+00:00", 2)]),
    "intercom-conversation.json": ("intercom", [(
        "1911149811", "chat", "2024-03-11T10:14:00+00:00", "2024-03-11T10:35:25+00:00", 6)]),
    "archive-chat.json": ("archive", [
        ("wc-2024-000871", "chat", "2024-08-21T14:05:00+02:00", "2024-08-21T14:11:30+02:00", 3),
        ("sms-55019", "messaging", "2024-08-22T09:00:00Z", None, 2)]),
}


def test_every_fixture_is_covered():
    assert {p.name for p in FIXTURES.glob("*.json")} == set(EXPECTED)
    assert set(chats.FORMATS) == {fmt for fmt, _ in EXPECTED.values()}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_detects_converts_and_validates(name):
    doc = load(name)
    fmt, expected = EXPECTED[name]
    assert chats.detect(doc) == fmt
    records = chats.convert(doc)
    assert records == chats.convert(doc, fmt)
    assert len(records) == len(expected)
    for record, (iid, channel, started, ended, count) in zip(records, expected, strict=True):
        assert validate(record) == record
        assert record["schema"] == "archive-record/1"
        assert record["source"] == {"system": fmt if fmt != "archive" else record["source"]["system"],
                                    "interaction_id": iid}
        assert record["channel"] == channel
        assert record["started_at"] == started
        assert record.get("ended_at") == ended
        assert len(record["messages"]) == count
        ids = {p["id"] for p in record["participants"]}
        assert all(m["from"] in ids for m in record["messages"])
        json.dumps(record)  # JSON-able throughout


def test_amazon_connect_roles_names_events_and_attachments():
    doc = load("amazon-connect-transcript.json")
    [r] = chats.convert(doc)
    customer, agent = "e9b36a6d-12aa-4c21-9745-1881648ecfc8", "f36a545d-67b2-4fd4-89fb-896136b609a7"
    assert roles(r) == {customer: "customer", agent: "agent", "2b2288b4-ff6e-4996-8d8e-260fd5a8ac02": "system"}
    assert by_id(r, customer)["name"] == "Maria Keller" and by_id(r, agent)["name"] == "Tom"
    first = r["messages"][0]
    assert first == {"id": "3e8c1f07-2a4b-4d0e-8f51-7b9a6c2d4e13", "at": "2024-03-11T09:14:05.902+00:00",
                     "from": customer, "text": "Hello, I'd like to check the status of my home insurance claim.",
                     "attachments": []}
    assert r["messages"][4]["attachments"] == ["repair-quote-roofing.pdf"]
    assert r["messages"][1]["from"] == "2b2288b4-ff6e-4996-8d8e-260fd5a8ac02"
    sf = r["source_fields"]
    assert sf["AWSAccountId"] == "123456789012" and sf["Version"] == "2019-08-26"
    assert "Transcript" not in sf and "ContactId" not in sf
    assert [e["ContentType"].rsplit(".", 2)[-2:] for e in sf["events"]] == [
        ["participant", "joined"], ["participant", "joined"], ["participant", "left"], ["chat", "ended"]]


def test_amazon_connect_chinese_with_bot():
    [r] = chats.convert(load("amazon-connect-transcript-zh.json"))
    assert sorted(roles(r).values()) == ["agent", "bot", "customer"]
    assert by_id(r, "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d")["name"] == "李娜"
    assert r["messages"][0]["text"] == "您好，我想咨询一下分红型保险的退保手续。"
    assert r["messages"][1]["from"] == "7e8f9a0b-1c2d-4e3f-a4b5-c6d7e8f9a0b1"


def test_twilio_participants_phone_system_and_media():
    [r] = chats.convert(load("twilio-conversation-sms.json"))
    sms, agent = "MB1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d", "MB6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a"
    assert roles(r) == {sms: "customer", agent: "agent", "system": "system"}
    assert by_id(r, sms)["phone"] == "+15558675310"
    assert by_id(r, sms)["attributes"]["proxy_address"] == "+15017122661"
    assert by_id(r, agent)["name"] == "priya.nair@examplebank.com"
    assert r["subject"] == "Card dispute - Jordan Reyes"
    assert r["messages"][1]["from"] == "system"
    assert r["messages"][3] == {"id": "IM3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a", "at": "2024-05-14T15:06:30+00:00",
                                "from": sms, "attachments": ["receipt.jpg"]}
    assert r["source_fields"]["state"] == "closed" and "sid" not in r["source_fields"]


def test_twilio_bare_page_whatsapp_and_grouping():
    doc = load("twilio-messages-page.json")
    [r] = chats.convert(doc)
    customer = by_id(r, "MB2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e")
    assert customer["role"] == "customer" and customer["phone"] == "+34612345678"
    assert by_id(r, "MB3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f")["role"] == "agent"
    other = copy.deepcopy(doc["messages"][0])
    other["conversation_sid"] = "CH" + "1" * 32
    doc["messages"].append(other)
    records = chats.convert(doc)
    assert [x["source"]["interaction_id"] for x in records] == [r["source"]["interaction_id"], "CH" + "1" * 32]
    assert [len(x["messages"]) for x in records] == [3, 1]


def test_twilio_plain_lists_and_chat_only():
    doc = load("twilio-conversation-sms.json")
    doc["messages"] = doc["messages"]["messages"]
    doc["participants"] = [p for p in doc["participants"]["participants"] if p["messaging_binding"] is None]
    doc["messages"] = [m for m in doc["messages"] if m["author"] != "+15558675310"]
    [r] = chats.convert(doc)
    assert r["channel"] == "chat" and len(r["messages"]) == 3


def test_zendesk_email_requester_agent_note_attachment_language():
    [r] = chats.convert(load("zendesk-ticket-email.json"))
    assert roles(r) == {"20978392": "customer", "235323": "agent"}
    customer = by_id(r, "20978392")
    assert customer == {"role": "customer", "id": "20978392", "name": "Daniel Okafor",
                        "email": "d.okafor@example.org", "phone": "+447700900123"}
    assert r["subject"] == "Early repayment charge on my car loan"
    assert r["tags"] == ["car_loan", "early_repayment"]
    assert r["language"] == "en-GB"
    assert r["messages"][1]["type"] == "note" and "type" not in r["messages"][2]
    assert r["messages"][2]["attachments"] == [
        "https://examplefinance.zendesk.com/attachments/token/vZR9qj2XyP/?name=settlement-CL-7781204.pdf"]
    sf = r["source_fields"]
    assert sf["status"] == "solved" and sf["via"]["channel"] == "email"
    assert "description" not in sf and "id" not in sf


def test_zendesk_without_users_and_html_only_body():
    doc = load("zendesk-ticket-whatsapp.json")
    [r] = chats.convert(doc)
    assert roles(r) == {"38811920": "customer", "235323": "agent"}
    del doc["comments"][1]["body"], doc["comments"][1]["plain_body"]
    [r] = chats.convert(doc)
    assert r["messages"][1]["text"].startswith("Sorry to hear that, Sanjay. I've blocked the card")


@pytest.mark.parametrize("via, channel", [("chat", "chat"), ("native_messaging", "chat"), ("sms", "messaging"),
                                          ("mail", "email"), (4, "email"), ("voice", "phone"), ("web", "chat")])
def test_zendesk_via_channel(via, channel):
    doc = load("zendesk-ticket-whatsapp.json")
    doc["ticket"]["via"]["channel"] = via
    assert chats.convert(doc)[0]["channel"] == channel


def test_intercom_roles_html_notes_events():
    [r] = chats.convert(load("intercom-conversation.json"))
    assert roles(r) == {"5bc8f7ae2d96695c18a1b2c3": "customer", "814860": "agent", "991267777": "bot"}
    assert by_id(r, "814860")["name"] == "Mark Strong"
    assert by_id(r, "5bc8f7ae2d96695c18a1b2c3")["email"] == "chloe.martin@example.fr"
    texts = [m["text"] for m in r["messages"]]
    assert texts[0] == "Hi, I was charged twice for my March premium & need a refund."
    assert texts[4] == "Duplicate debit confirmed by billing – refund ref RF-20931."
    assert texts[5] == "The duplicate payment has been refunded; it will reach your account in 3–5 days."
    assert r["messages"][0]["at"] == "2024-03-11T10:14:00+00:00"
    assert r["messages"][3]["attachments"] == ["https://downloads.intercomcdn.com/i/o/912345678/releve-mars.png"]
    assert r["messages"][4]["type"] == "note"
    assert r["tags"] == ["billing"]
    assert [e["part_type"] for e in r["source_fields"]["events"]] == [
        "assignment", "conversation_attribute_updated_by_admin"]
    assert r["source_fields"]["state"] == "closed"


@pytest.mark.parametrize("kind, channel", [("email", "email"), ("whatsapp", "messaging"), ("sms", "messaging"),
                                           ("phone_call", "phone")])
def test_intercom_source_type_channel(kind, channel):
    doc = load("intercom-conversation.json")
    doc["source"]["type"] = kind
    assert chats.convert(doc)[0]["channel"] == channel


def test_archive_single_object_and_errors():
    [first, _] = load("archive-chat.json")
    assert chats.detect(first) == "archive"
    assert chats.convert(first) == [validate(first)]
    bad = load("archive-chat.json")
    bad[1]["messages"][0]["at"] = "tomorrow"
    with pytest.raises(InvalidMetadata) as e:
        chats.convert(bad, "archive")
    assert e.value.field == "[1].messages[0].at"
    phone = dict(first, channel="phone")
    with pytest.raises(InvalidMetadata, match="chat or messaging"):
        chats.convert(phone, "archive")


# --- malformed documents name the JSON path -------------------------------------------------------


def _mutate(name, change):
    doc = load(name)
    change(doc)
    return doc


MALFORMED = [
    ("amazon-connect-transcript.json", lambda d: d["Transcript"][3].pop("AbsoluteTime"),
     "Transcript[3].AbsoluteTime", "missing"),
    ("amazon-connect-transcript.json", lambda d: d["Transcript"][1].update(AbsoluteTime="11/03/2024 09:14"),
     "Transcript[1].AbsoluteTime", "not an ISO-8601"),
    ("amazon-connect-transcript.json", lambda d: d["Transcript"][1].update(AbsoluteTime="2024-03-11T09:14:05"),
     "Transcript[1].AbsoluteTime", "no UTC offset"),
    ("amazon-connect-transcript.json", lambda d: d["Transcript"][2].update(Content=42),
     "Transcript[2].Content", "must be a string"),
    ("amazon-connect-transcript.json", lambda d: d.update(Transcript={"items": []}), "Transcript", "must be a list"),
    ("amazon-connect-transcript.json", lambda d: d["Participants"].append({}),
     "Participants[2].ParticipantId", "missing"),
    ("twilio-conversation-sms.json", lambda d: d["messages"]["messages"][2].pop("date_created"),
     "messages.messages[2].date_created", "missing"),
    ("twilio-conversation-sms.json", lambda d: d["messages"]["messages"][0].update(date_created=1715698931),
     "messages.messages[0].date_created", "ISO-8601"),
    ("twilio-conversation-sms.json", lambda d: d["conversation"].pop("sid"), "conversation.sid", "missing"),
    ("twilio-messages-page.json", lambda d: d["messages"][1].update(body=["x"]), "messages[1].body",
     "must be a string"),
    ("zendesk-ticket-email.json", lambda d: d["comments"]["comments"][1].update(created_at="yesterday"),
     "comments.comments[1].created_at", "not an ISO-8601"),
    ("zendesk-ticket-email.json", lambda d: d["comments"]["comments"][0].pop("author_id"),
     "comments.comments[0].author_id", "missing"),
    ("zendesk-ticket-whatsapp.json", lambda d: d["ticket"].update(tags="vip"), "ticket.tags", "must be a list"),
    ("zendesk-ticket-whatsapp.json", lambda d: d.pop("comments"), "comments", "missing"),
    ("intercom-conversation.json", lambda d: d["conversation_parts"]["conversation_parts"][2].pop("created_at"),
     "conversation_parts.conversation_parts[2].created_at", "missing"),
    ("intercom-conversation.json", lambda d: d.update(created_at="2024-03-11"), "created_at", "Unix seconds"),
    ("intercom-conversation.json", lambda d: d["conversation_parts"]["conversation_parts"][0].update(author="Fin"),
     "conversation_parts.conversation_parts[0].author", "must be an object"),
]


@pytest.mark.parametrize("name, change, field, problem", MALFORMED)
def test_malformed_documents_name_the_path(name, change, field, problem):
    doc = _mutate(name, change)
    with pytest.raises(InvalidMetadata) as e:
        chats.convert(doc, chats.detect(doc) or EXPECTED[name][0], origin=f"in/{name}")
    assert e.value.field == field
    assert problem in str(e.value)
    assert str(e.value).startswith(f"{field}: ")
    assert e.value.details["origin"] == f"in/{name}"


UNRELATED = [
    {},
    [],
    [1, 2, 3],
    "a string",
    None,
    {"messages": []},
    {"ticket": "35436"},
    {"type": "conversation"},
    {"Transcript": [{"Content": "hi"}]},
    # a Contact Lens analysis file is not the S3 chat transcript
    {"Version": "1.1.0", "AccountId": "1", "JobStatus": "COMPLETED", "Channel": "CHAT", "Transcript": [],
     "ConversationCharacteristics": {}, "CustomerMetadata": {"ContactId": "x"}},
    {"schema": "archive-record/1", "source": {"system": "x", "interaction_id": "y"}},  # no messages: not a chat
    {"Details": {"ContactData": {"ContactId": "c", "InitialContactId": "c"}}, "Name": "ContactFlowEvent"},
]


@pytest.mark.parametrize("doc", UNRELATED)
def test_detection_refuses_unrelated_json(doc):
    assert chats.detect(doc) is None
    with pytest.raises(InvalidMetadata) as e:
        chats.convert(doc)
    assert e.value.field == "(format)"
    assert "not a recognised chat export" in str(e.value)


def test_unknown_format_name_and_non_object_document():
    with pytest.raises(InvalidMetadata) as e:
        chats.convert(load("zendesk-ticket-email.json"), "freshdesk")
    assert e.value.field == "(format)" and "unknown format 'freshdesk'" in str(e.value)
    with pytest.raises(InvalidMetadata) as e:
        chats.convert([1], "zendesk")
    assert e.value.field == "(document)"


def test_explicit_format_on_the_wrong_document_names_the_missing_field():
    with pytest.raises(InvalidMetadata) as e:
        chats.convert(load("intercom-conversation.json"), "zendesk")
    assert str(e.value) == "ticket: missing"
