"""Twilio Conversations, as the REST API (``https://conversations.twilio.com/v1``) returns it.

Accepted: ``{"conversation": <Conversation>, "messages": <Messages page or list>, "participants":
<Participants page or list>}`` (GET /Conversations/{sid}, …/Messages, …/Participants), or a bare Messages
page ``{"meta": {…, "key": "messages"}, "messages": [...]}`` (one record per ``conversation_sid``).
Message fields: ``sid`` (IM…), ``conversation_sid`` (CH…), ``index``, ``author`` ("the channel specific
identifier of the message's author", ``system`` by default), ``body``, ``media`` ([{sid, content_type,
filename, size}] or null), ``attributes`` (a JSON string), ``participant_sid`` (MB…, null for system),
``date_created`` (ISO-8601, ``2016-03-24T20:37:57Z``). Participants carry ``identity`` (chat SDK users) or
``messaging_binding`` ``{type: sms|whatsapp|…, address, proxy_address}`` (non-chat users).

Twilio has no agent/customer notion: a participant reached through a messaging binding (or an author that is
a phone number / ``whatsapp:`` address) is the customer; chat identities are agents when the conversation has
such a customer, otherwise ``other`` — unless the participant's ``attributes`` JSON has a ``role`` naming one
of the record roles.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from archive.ingest.chat_formats._common import (bounds, build, check, iso, join, names, opt, opt_time,
                                                 participant, req, req_time)
from archive.ingest.record import ROLES, InvalidMetadata

FORMAT = "twilio-conversations"
_E164 = re.compile(r"\+[1-9]\d{4,14}")
_MESSAGING = {"sms", "mms", "whatsapp", "messenger", "gbm", "rcs", "facebook", "instagram"}
_CONVERSATION_MAPPED = {"sid", "date_created", "friendly_name"}


def _page(value: Any, path: str, key: str) -> tuple[list, str]:
    """A list page ``{key: [...], meta}`` or a plain list → (items, path of the list)."""
    if isinstance(value, Mapping):
        return req(value, key, path, list), join(path, key)
    return check(value, path, (list,)), path


def detect(doc: Any) -> bool:
    if not isinstance(doc, Mapping):
        return False
    conv = doc.get("conversation")
    if isinstance(conv, Mapping) and str(conv.get("sid", "")).startswith("CH") and "messages" in doc:
        return True
    messages = doc.get("messages")
    meta = doc.get("meta")
    if isinstance(messages, list) and isinstance(meta, Mapping) and meta.get("key") == "messages":
        return True
    return (isinstance(messages, list) and bool(messages) and isinstance(messages[0], Mapping)
            and str(messages[0].get("conversation_sid", "")).startswith("CH")
            and str(messages[0].get("sid", "")).startswith("IM"))


def _address_channel(address: str | None) -> str | None:
    if not address:
        return None
    if ":" in address:
        prefix = address.split(":", 1)[0].lower()
        return prefix if prefix in _MESSAGING else None
    return "sms" if _E164.fullmatch(address) else None


def _phone(address: str | None) -> str | None:
    bare = address.split(":", 1)[-1] if address else None
    return bare if bare and _E164.fullmatch(bare) else None


def _identity(value: str | None) -> str | None:
    return None if value in (None, "null") else value  # the API docs' SMS examples show the string "null"


def _attr_role(raw: Any) -> str | None:
    try:
        role = json.loads(raw).get("role") if isinstance(raw, str) else None
    except (ValueError, AttributeError):
        return None
    return role if role in ROLES else None


def _participants(items: list, path: str) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for i, raw in enumerate(items):
        where = join(path, i)
        check(raw, where, (dict,))
        sid = req(raw, "sid", where, str)
        binding = opt(raw, "messaging_binding", where, dict) or {}
        address = opt(binding, "address", join(where, "messaging_binding"), str)
        kind = str(binding.get("type") or "").lower() or _address_channel(address)
        out[sid] = {"id": sid, "name": _identity(opt(raw, "identity", where, str)), "phone": _phone(address),
                    "channel": kind or None, "role": _attr_role(raw.get("attributes")),
                    "attributes": {k: binding[k] for k in ("type", "address", "proxy_address", "projected_address")
                                   if binding.get(k)}}
    return out


def _one(sid: str, conversation: Mapping, messages: list[tuple[str, Mapping]], people: dict[str, dict],
         fields: dict) -> dict:
    people = {k: dict(v) for k, v in people.items()}
    times, out = [], []
    for where, m in messages:
        at = req_time(m, "date_created", where)
        author = opt(m, "author", where, str) or "system"
        pid = opt(m, "participant_sid", where, str) or author
        if pid not in people:
            kind = _address_channel(author)
            people[pid] = {"id": pid, "name": None if kind else author, "phone": _phone(author), "channel": kind,
                           "role": "system" if author == "system" and pid == author else None,
                           "attributes": {"address": author} if kind else {}}
        media = [(x.get("filename") or x.get("sid")) if isinstance(x, Mapping) else x
                 for x in opt(m, "media", where, list) or []]
        times.append(at)
        msg = {"id": opt(m, "sid", where, str), "at": iso(at), "from": pid, "text": opt(m, "body", where, str),
               "attachments": names(media)}
        out.append({k: v for k, v in msg.items() if v is not None})
    channels = {p["channel"] for p in people.values() if p.get("channel")}
    has_customer = bool(channels) or any(p.get("role") == "customer" for p in people.values())
    participants = []
    for p in people.values():
        role = p.get("role") or ("customer" if p.get("channel") else "agent" if has_customer else "other")
        participants.append(participant(role, p["id"], p.get("name"), phone=p.get("phone"),
                                        attributes=p.get("attributes")))
    if not participants:
        raise InvalidMetadata("participants", "no participants or messages in the conversation")
    channel = "messaging" if channels - {"email"} else "email" if channels else "chat"
    started, ended = bounds(times, opt_time(conversation, "date_created", "conversation"))
    return build(FORMAT, sid, channel, started, ended, participants, out, fields,
                 subject=opt(conversation, "friendly_name", "conversation", str))


def convert(doc: Mapping) -> list[dict]:
    if "conversation" in doc:
        conv = req(doc, "conversation", "", dict)
        sid = req(conv, "sid", "conversation", str)
        items, path = _page(req(doc, "messages", ""), "messages", "messages")
        people = {}
        if doc.get("participants") is not None:
            people = _participants(*_page(doc["participants"], "participants", "participants"))
        messages = []
        for i, m in enumerate(items):
            check(m, join(path, i), (dict,))
            messages.append((join(path, i), m))
        fields = {k: v for k, v in conv.items() if k not in _CONVERSATION_MAPPED}
        fields.update({k: v for k, v in doc.items() if k not in ("conversation", "messages", "participants")})
        return [_one(sid, conv, messages, people, fields)]
    items = req(doc, "messages", "", list)
    groups: dict[str, list] = {}
    for i, m in enumerate(items):
        check(m, join("messages", i), (dict,))
        groups.setdefault(req(m, "conversation_sid", join("messages", i), str), []).append((join("messages", i), m))
    if not groups:
        raise InvalidMetadata("messages", "is empty: no conversation to import")
    account = {k: items[0][k] for k in ("account_sid", "chat_service_sid") if items[0].get(k)}
    return [_one(sid, {}, msgs, {}, dict(account)) for sid, msgs in groups.items()]
