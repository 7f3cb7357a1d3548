"""Intercom conversations, as GET /conversations/{id} returns them (REST API 2.x).

Shape: ``{type: "conversation", id, title, created_at, updated_at (Unix seconds), source {type, id,
delivered_as, subject, body (HTML), author {type, id, name, email}, attachments, url}, contacts
({type: "contact.list", contacts: [{type, id, external_id}]} — or a bare list in the older docs), teammates
(likewise), tags {type: "tag.list", tags: [{id, name}]}, conversation_parts {type: "conversation_part.list",
conversation_parts: [{type: "conversation_part", id, part_type, body, created_at, author {type, id, name,
email, from_ai_agent}, attachments [{type: "upload", name, url, content_type, …}]}], total_count}, …}``.

``source`` is the conversation's first message. Parts with a body or attachments are messages (``note``
parts keep ``type: "note"``); body-less parts (assignment, open, close, snoozed …) are events. Author types:
admin → agent (bot when ``from_ai_agent``), user/lead/contact → customer, bot → bot, anything else → other.
``source.type``: conversation/push → chat, email → email, phone_call/phone_switch → phone, sms/whatsapp/
facebook/instagram/twitter/… → messaging.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from archive.ingest.chat_formats._common import (bounds, build, check, html_text, iso, join, names, opt,
                                                 participant, req, req_time, text_id)
from archive.ingest.record import InvalidMetadata

FORMAT = "intercom"
ROLES = {"admin": "agent", "user": "customer", "lead": "customer", "contact": "customer", "bot": "bot"}
CHANNELS = {"conversation": "chat", "push": "chat", "chat": "chat", "email": "email", "phone_call": "phone",
            "phone_switch": "phone", **dict.fromkeys(("sms", "whatsapp", "facebook", "instagram", "twitter",
                                                      "messenger", "line", "telegram"), "messaging")}
_MAPPED = {"type", "id", "created_at", "title", "tags", "contacts", "teammates", "conversation_parts"}


def detect(doc: Any) -> bool:
    return (isinstance(doc, Mapping) and doc.get("type") == "conversation" and "id" in doc
            and ("conversation_parts" in doc or "source" in doc))


def _list(doc: Mapping, key: str) -> tuple[list, str]:
    value = doc.get(key)
    if value is None:
        return [], key
    if isinstance(value, Mapping):
        return req(value, key, key, list), join(key, key)
    return check(value, key, (list,)), key


def convert(doc: Mapping) -> list[dict]:
    conv_id = text_id(req(doc, "id", "", str, int))
    created = req_time(doc, "created_at", "", epoch=True)
    people: dict[str, dict] = {}

    def seen(author: Mapping | None, path: str) -> str:
        author = author or {}  # "For Twitter, this will be blank."
        kind = opt(author, "type", path, str) or "unknown"
        pid = text_id(author.get("id")) or kind
        role = "bot" if author.get("from_ai_agent") is True else ROLES.get(kind, "other")
        p = people.setdefault(pid, {"role": role})
        for key in ("name", "email"):
            if isinstance(author.get(key), str) and author[key].strip() and key not in p:
                p[key] = author[key]
        return pid

    times, messages, events = [created], [], []

    def part(item: Mapping, path: str, at: Any) -> None:
        pid = seen(opt(item, "author", path, dict), join(path, "author"))
        body = opt(item, "body", path, str)
        text = html_text(body) if body else ""
        files = []
        for j, att in enumerate(opt(item, "attachments", path, list) or []):
            check(att, join(join(path, "attachments"), j), (dict,))
            files.append(att.get("url") or att.get("name"))
        if not text and not files:
            events.append(item)
            return
        msg = {"id": text_id(item.get("id")), "at": iso(at), "from": pid, "text": text, "attachments": names(files)}
        if str(item.get("part_type", "")).startswith("note"):
            msg["type"] = "note"
        messages.append({k: v for k, v in msg.items() if v is not None})

    source = opt(doc, "source", "", dict) or {}
    if source.get("body") or source.get("attachments"):
        part(source, "source", created)
    contacts, cpath = _list(doc, "contacts")
    for i, c in enumerate(contacts):
        check(c, join(cpath, i), (dict,))
        if text_id(c.get("id")):
            people.setdefault(text_id(c["id"]), {"role": "customer"})
    teammates, tmpath = _list(doc, "teammates")
    for i, t in enumerate(teammates):
        check(t, join(tmpath, i), (dict,))
        if text_id(t.get("id")):
            people.setdefault(text_id(t["id"]), {"role": "agent", **{k: t[k] for k in ("name", "email")
                                                                     if isinstance(t.get(k), str)}})
    parts, ppath = _list(doc, "conversation_parts")
    for i, item in enumerate(parts):
        path = join(ppath, i)
        check(item, path, (dict,))
        at = req_time(item, "created_at", path, epoch=True)
        opt(item, "part_type", path, str)
        times.append(at)
        part(item, path, at)
    if not people:
        raise InvalidMetadata("contacts", "no contacts, teammates or authors in the conversation")
    tags = []
    tag_items, tpath = _list(doc, "tags")
    for i, tag in enumerate(tag_items):
        check(tag, join(tpath, i), (dict, str))
        name = tag if isinstance(tag, str) else tag.get("name")
        if isinstance(name, str) and name.strip():
            tags.append(name)
    kind = str(source.get("type") or "conversation").lower()
    subject = html_text(source["subject"]) if isinstance(source.get("subject"), str) else None
    started, ended = bounds(times, created)
    participants = [participant(p["role"], pid, p.get("name"), email=p.get("email")) for pid, p in people.items()]
    fields = {k: v for k, v in doc.items() if k not in _MAPPED}
    if events:
        fields["events"] = events
    return [build(FORMAT, conv_id, CHANNELS.get(kind, "chat"), started, ended, participants, messages, fields,
                  subject=subject or opt(doc, "title", "", str), tags=tags)]
