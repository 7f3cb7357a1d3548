"""The .eml importer: fields, participants, decoded names and subjects, parts, and the refusals.

Samples in tests/fixtures/email were written by the standard library's composer (make_samples.py);
edge cases the composer will not produce (GBK labelled gb2312, broken headers, hostile file names) are
built byte by byte here.
"""

from __future__ import annotations

import base64
import importlib.util
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from archive.ingest.email_import import html_to_text, parse_eml
from archive.ingest.record import InvalidMetadata, validate

FIXTURES = Path(__file__).parent / "fixtures" / "email"
_spec = importlib.util.spec_from_file_location("make_samples", FIXTURES / "make_samples.py")
samples = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(samples)


def load(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def part(record, name):
    return next(p for p in record.parts if p.name == name)


def names(record):
    return [p.name for p in record.parts]


def eml(*headers: str, body: str = "Hello\r\n") -> bytes:
    return ("\r\n".join(headers) + "\r\n\r\n" + body).encode("utf-8", "surrogateescape")


BASIC = ("From: a@example.com", "To: b@example.net", "Date: Mon, 03 Mar 2025 10:00:00 +0000")


# --- the generated samples -------------------------------------------------------------------------------


def test_plain_message_fields():
    raw = load("plain.eml")
    record = parse_eml(raw, origin="mailbox/INBOX/1.eml")
    meta = record.metadata
    assert validate(meta) == meta
    assert meta["source"] == {"system": "email", "interaction_id": "20250304091530.1234@mail.broker.example.com"}
    assert meta["channel"] == "email" and "direction" not in meta
    assert meta["started_at"] == "2025-03-04T09:15:30+08:00"
    assert meta["subject"] == "Your order confirmation"
    assert [(p["role"], p.get("name"), p["email"]) for p in meta["participants"]] == [
        ("other", "Alice Agent", "alice.agent@broker.example.com"),
        ("other", "Bob Customer", "bob@customer.example.net"),
        ("other", None, "compliance@broker.example.com")]
    [message] = meta["messages"]
    assert message["at"] == meta["started_at"] and message["from"] == "alice.agent@broker.example.com"
    assert message["text"] == "Dear Bob,\n\nYour order for 100 units of Fund A was executed.\n\nRegards,\nAlice\n"
    sf = meta["source_fields"]
    assert sf["message_id"] == "20250304091530.1234@mail.broker.example.com"
    assert sf["in_reply_to"] == ["req-777@customer.example.net"]
    assert sf["references"] == ["req-770@customer.example.net", "req-777@customer.example.net"]
    assert sf["to"] == ["Bob Customer <bob@customer.example.net>"] and sf["cc"] == ["compliance@broker.example.com"]
    assert sf["headers"] == {"x-mailer": "ExampleMail 5.2"}
    assert sf["origin"] == "mailbox/INBOX/1.eml"
    assert names(record) == ["message", "body"]
    assert part(record, "message").data == raw and part(record, "message").media_type == "message/rfc822"
    assert part(record, "body").data == message["text"].encode("utf-8")


def test_agent_domains_decide_roles():
    meta = parse_eml(load("plain.eml"), agent_domains={"broker.example.com"}).metadata
    assert [p["role"] for p in meta["participants"]] == ["agent", "customer", "agent"]
    meta = parse_eml(load("plain.eml"), agent_domains={"example.com"}).metadata  # subdomains count
    assert [p["role"] for p in meta["participants"]] == ["agent", "customer", "agent"]
    meta = parse_eml(load("plain.eml"), agent_domains=set()).metadata
    assert {p["role"] for p in meta["participants"]} == {"customer"}


def test_alternative_keeps_plain_and_html():
    raw = load("alternative.eml")
    record = parse_eml(raw)
    assert names(record) == ["message", "body", "body-html"]
    assert record.metadata["messages"][0]["text"] == "What are the fees for Fund B?\n"
    html = part(record, "body-html")
    assert html.media_type == "text/html; charset=utf-8" and b"<b>fees</b>" in html.data
    assert record.metadata["started_at"] == "2025-03-05T17:02:11-05:00"
    assert record.metadata["messages"][0]["attachments"] == []
    assert part(record, "message").data == raw


def test_attachments_and_inline_image():
    raw = load("attachments.eml")
    record = parse_eml(raw)
    assert names(record) == ["message", "body", "body-html", "attachment-1", "attachment-2"]
    image, pdf = part(record, "attachment-1"), part(record, "attachment-2")
    assert (image.filename, image.media_type, image.data) == ("chart.png", "image/png", samples.png())
    assert (pdf.filename, pdf.media_type, pdf.data) == ("合同 2025.pdf", "application/pdf", samples.PDF)
    listed = record.metadata["messages"][0]["attachments"]
    assert listed == [
        {"part": "attachment-1", "filename": "chart.png", "media_type": "image/png", "size": len(samples.png()),
         "disposition": "inline", "content_id": "<chart@broker>"},
        {"part": "attachment-2", "filename": "合同 2025.pdf", "media_type": "application/pdf",
         "size": len(samples.PDF), "disposition": "attachment"}]
    assert part(record, "message").data == raw
    assert validate(record.metadata)


def test_chinese_subject_and_names_rfc2047():
    raw = load("chinese.eml")
    assert b"=?utf-8?b?" in raw  # really encoded on the wire
    meta = parse_eml(raw, agent_domains={"broker.example.com"}).metadata
    assert meta["subject"] == "关于理财产品的风险揭示书"
    assert [(p["role"], p["name"], p["email"]) for p in meta["participants"]] == [
        ("customer", "张伟", "zhang.wei@customer.example.cn"), ("agent", "李娜（客户经理）", "li.na@broker.example.com")]
    assert meta["messages"][0]["text"] == "李经理您好：\n\n我已阅读风险揭示书，确认购买。\n\n张伟\n"
    assert meta["source_fields"]["to"] == ["李娜（客户经理） <li.na@broker.example.com>"]


def test_html_only_body_is_stripped_and_id_is_a_digest():
    raw = load("html_only.eml")
    record = parse_eml(raw)
    assert names(record) == ["message", "body-html"]
    assert record.metadata["messages"][0]["text"] == "Market update\n\nRates & prices\nmoved."
    import hashlib
    assert record.metadata["source"]["interaction_id"] == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert record.metadata["source_fields"]["message_id"] is None


def test_html_to_text_drops_scripts_and_styles():
    assert html_to_text("<style>x{}</style><p>a&lt;b</p><script>evil()</script><div>c</div>") == "a<b\n\nc"


# --- decoding edge cases ---------------------------------------------------------------------------------


def test_gbk_text_labelled_gb2312_is_decoded():
    word = "=?gb2312?B?" + base64.b64encode("朱镕基".encode("gbk")).decode() + "?="  # 镕 is GBK, not GB2312
    meta = parse_eml(eml(f"From: {word} <zhu@example.cn>", "Subject: " + word, *BASIC[1:])).metadata
    assert meta["participants"][0]["name"] == "朱镕基"
    assert meta["subject"] == "朱镕基"


def test_encoded_word_inside_quotes_and_raw_utf8_headers():
    word = "=?UTF-8?B?" + base64.b64encode("王芳".encode()).decode() + "?="
    meta = parse_eml(eml(f'From: "{word}" <wang@example.cn>', "To: 李雷 <li@example.cn>", "Subject: 你好 RFC 6532",
                         BASIC[2])).metadata
    assert [(p["name"], p["email"]) for p in meta["participants"]] == [("王芳", "wang@example.cn"),
                                                                       ("李雷", "li@example.cn")]
    assert meta["subject"] == "你好 RFC 6532"


def test_gb2312_body_and_negative_zero_zone():
    body = base64.b64encode("您好，合同已签署。".encode("gb18030")).decode()
    raw = eml(BASIC[0], BASIC[1], "Date: Mon, 03 Mar 2025 10:00:00 -0000", "MIME-Version: 1.0",
              "Content-Language: zh-CN",
              'Content-Type: text/plain; charset="gb2312"', "Content-Transfer-Encoding: base64", body=body + "\r\n")
    record = parse_eml(raw)
    assert record.metadata["started_at"] == "2025-03-03T10:00:00+00:00"  # RFC 5322 §3.3: -0000 is UTC
    assert record.metadata["language"] == "zh-CN"
    assert record.metadata["messages"][0]["text"] == "您好，合同已签署。"
    assert part(record, "body").data == "您好，合同已签署。".encode()


@pytest.mark.parametrize("disposition, expected", [
    ('attachment; filename="../../etc/passwd"', "passwd"),
    ('attachment; filename="C:\\\\Users\\\\x\\\\evil.exe"', "evil.exe"),
    ("attachment; filename*=utf-8''%2E%2E%2Fsecret%0D%0A%E2%80%AEfdp.exe", "secretfdp.exe"),
    ("attachment; filename*0*=utf-8''%E5%90%88%E5%90%8C; filename*1=.pdf", "合同.pdf"),  # RFC 2231 continuation
    ('attachment; filename="=?UTF-8?B?5ZCI5ZCMLnBkZg==?="', "合同.pdf"),  # RFC 2047 in a quoted parameter
    ('attachment; filename=".."', None),
    ("attachment", None),
])
def test_attachment_filenames_are_sanitised(disposition, expected):
    raw = eml(*BASIC, "MIME-Version: 1.0", 'Content-Type: multipart/mixed; boundary="b"', body=(
        "--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
        f"--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: {disposition}\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\nAAEC\r\n--b--\r\n"))
    attachment = part(parse_eml(raw), "attachment-1")
    assert attachment.filename == expected and attachment.data == b"\x00\x01\x02"


def test_attached_message_is_one_attachment():
    inner = EmailMessage(policy=policy.SMTP)
    inner["From"], inner["Subject"], inner["Date"] = "x@example.org", "inner", "Mon, 03 Mar 2025 09:00:00 +0000"
    inner.set_content("inner body")
    inner.add_attachment(b"PK\x03\x04", "application", "zip", filename="a.zip")
    outer = EmailMessage(policy=policy.SMTP)
    outer["From"], outer["To"], outer["Date"] = "a@example.com", "b@example.net", "Mon, 03 Mar 2025 10:00:00 +0000"
    outer.set_content("forwarding")
    outer.add_attachment(inner)
    record = parse_eml(outer.as_bytes())
    assert names(record) == ["message", "body", "attachment-1"]
    attached = part(record, "attachment-1")
    assert attached.media_type == "message/rfc822" and attached.filename == "attached-message.eml"
    assert b"Subject: inner" in attached.data and b"a.zip" in attached.data


# --- refusals ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"", b"hello world\n", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n",
                                 b"Subject: no originator\r\n\r\nbody"])
def test_not_an_email(raw):
    with pytest.raises(InvalidMetadata) as e:
        parse_eml(raw)
    assert e.value.field == "(email)"


@pytest.mark.parametrize("date", [None, "Date: yesterday at noon", "Date: "])
def test_missing_or_bad_date(date):
    headers = BASIC[:2] + ((date,) if date else ())
    with pytest.raises(InvalidMetadata) as e:
        parse_eml(eml(*headers))
    assert e.value.field == "Date"


def test_missing_or_unusable_from():
    with pytest.raises(InvalidMetadata) as e:
        parse_eml(eml(*BASIC[1:]))
    assert e.value.field == "From"
    with pytest.raises(InvalidMetadata) as e:
        parse_eml(eml("From: John Doe", *BASIC[1:]))
    assert e.value.field == "From"


def test_malformed_header_block_is_refused():
    with pytest.raises(InvalidMetadata) as e:  # the line without a colon would push Subject into the body
        parse_eml(eml(*BASIC, "this is not a header", "Subject: lost"))
    assert e.value.field == "(headers)"
    with pytest.raises(InvalidMetadata) as e:
        parse_eml(b" folded first line\r\n" + eml(*BASIC))
    assert e.value.field == "(headers)"


@pytest.mark.parametrize("content_type", ["multipart/mixed", 'multipart/mixed; boundary="never-used"'])
def test_unsplittable_multipart_is_refused(content_type):
    with pytest.raises(InvalidMetadata) as e:
        parse_eml(eml(*BASIC, "MIME-Version: 1.0", f"Content-Type: {content_type}", body="just text\r\n"))
    assert e.value.field == "parts"


def test_impossible_base64_is_refused():
    raw = eml(*BASIC, "MIME-Version: 1.0", 'Content-Type: multipart/mixed; boundary="b"', body=(
        "--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b\r\nContent-Type: application/pdf\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\nQUJDRAAAA\r\n--b--\r\n"))
    with pytest.raises(InvalidMetadata) as e:
        parse_eml(raw)
    assert e.value.field == "parts[attachment-1]"


def test_max_parts():
    raw = load("attachments.eml")  # 7 MIME entities: mixed, alternative, plain, related, html, png, pdf
    assert parse_eml(raw, max_parts=7)
    with pytest.raises(InvalidMetadata) as e:
        parse_eml(raw, max_parts=6)
    assert e.value.field == "parts"
    many = "".join(f"--b\r\nContent-Type: text/plain\r\n\r\n{i}\r\n" for i in range(150)) + "--b--\r\n"
    with pytest.raises(InvalidMetadata):
        parse_eml(eml(*BASIC, "MIME-Version: 1.0", 'Content-Type: multipart/mixed; boundary="b"', body=many))
