"""Zendesk Support tickets: ``{"ticket": <Ticket>, "comments": [<Ticket Comment>…] or the List Comments page
{"comments": [...], "next_page", "previous_page", "count"}, "users": [<User>…] (optional, side-loaded)}``.

Ticket fields used: ``id``, ``subject``, ``tags``, ``created_at`` (ISO-8601 ``2009-07-20T22:55:29Z``),
``requester_id``, ``assignee_id`` and ``via`` ``{channel, source{from, to, rel}}``. Comments: ``id``, ``type``
(``Comment``/``VoiceComment``), ``author_id``, ``body``/``plain_body``/``html_body``, ``public`` (false = internal
note, kept with ``type: "note"``), ``attachments`` ([{file_name, content_url, …}]), ``created_at``. Users:
``id``, ``name``, ``email``, ``phone``, ``role`` (``end-user``/``agent``/``admin``), ``locale``.

The requester is the customer; other authors are agents unless the side-loaded user says ``end-user``
(then ``other``). ``language`` is the requester's ``locale`` when users are given.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from archive.ingest.chat_formats._common import (bounds, build, check, html_text, iso, join, names, opt,
                                                 participant, req, req_time, text_id)
from archive.ingest.record import InvalidMetadata

FORMAT = "zendesk"
_VIA_IDS = {0: "web_form", 4: "email", 5: "web_service", 29: "chat"}
_MESSAGING = ("sms", "text", "whatsapp", "twitter", "facebook", "instagram", "line", "wechat", "telegram", "viber",
              "kakao", "apple_business", "rcs", "messenger", "mms", "google_business")
_PHONE = ("voice", "phone_call", "voicemail")
_E164 = re.compile(r"\+[1-9]\d{4,14}")
_TICKET_MAPPED = {"id", "subject", "tags", "created_at", "description"}


def detect(doc: Any) -> bool:
    ticket = doc.get("ticket") if isinstance(doc, Mapping) else None
    return isinstance(ticket, Mapping) and "id" in ticket and ("requester_id" in ticket or "via" in ticket
                                                               or "comments" in doc)


def channel_of(via: Any) -> str:
    raw = via.get("channel") if isinstance(via, Mapping) else None
    name = str(_VIA_IDS.get(raw, raw) if isinstance(raw, int) else raw or "").lower()
    if name in ("email", "mail"):
        return "email"
    if any(word in name for word in _MESSAGING):
        return "messaging"
    if any(word in name for word in _PHONE):
        return "phone"
    return "chat"


def _locale(value: Any) -> str | None:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*", value):
        return None
    head, *rest = value.replace("_", "-").split("-")
    return "-".join([head.lower(), *(r.upper() if len(r) == 2 else r for r in rest)])


def convert(doc: Mapping) -> list[dict]:
    ticket = req(doc, "ticket", "", dict)
    ticket_id = text_id(req(ticket, "id", "ticket", int, str))
    created = req_time(ticket, "created_at", "ticket")
    requester = text_id(opt(ticket, "requester_id", "ticket", int, str))
    assignee = text_id(opt(ticket, "assignee_id", "ticket", int, str))
    raw = req(doc, "comments", "")
    if isinstance(raw, Mapping):
        comments, cpath = req(raw, "comments", "comments", list), "comments.comments"
    else:
        comments, cpath = check(raw, "comments", (list,)), "comments"
    users: dict[str, Mapping] = {}
    raw_users = doc.get("users")
    upath = "users.users" if isinstance(raw_users, Mapping) else "users"
    if isinstance(raw_users, Mapping):
        raw_users = raw_users.get("users")
    for i, user in enumerate(check(raw_users, upath, (list,)) if raw_users is not None else []):
        check(user, join(upath, i), (dict,))
        users[text_id(req(user, "id", join(upath, i), int, str))] = user

    order: list[str] = [p for p in (requester,) if p]
    times, messages = [], []
    for i, c in enumerate(comments):
        path = join(cpath, i)
        check(c, path, (dict,))
        author = text_id(req(c, "author_id", path, int, str))
        at = req_time(c, "created_at", path)
        text = opt(c, "body", path, str) or opt(c, "plain_body", path, str)
        if text is None and opt(c, "html_body", path, str):
            text = html_text(c["html_body"])
        files = []
        for j, att in enumerate(opt(c, "attachments", path, list) or []):
            check(att, join(join(path, "attachments"), j), (dict,))
            files.append(att.get("content_url") or att.get("file_name"))
        msg = {"id": text_id(c.get("id")), "at": iso(at), "from": author, "text": text, "attachments": names(files)}
        if opt(c, "public", path, bool) is False:
            msg["type"] = "note"
        messages.append({k: v for k, v in msg.items() if v is not None})
        times.append(at)
        if author not in order:
            order.append(author)
    if assignee and assignee not in order:
        order.append(assignee)
    if not order:
        raise InvalidMetadata("ticket.requester_id", "missing, and no comment names an author")

    participants = []
    for pid in order:
        user = users.get(pid, {})
        if pid == requester:
            role = "customer"
        else:
            role = "other" if user.get("role") == "end-user" else "agent"
        phone = user.get("phone") if isinstance(user.get("phone"), str) and _E164.fullmatch(user["phone"]) else None
        participants.append(participant(role, pid, user.get("name") if isinstance(user.get("name"), str) else None,
                                        email=user.get("email") if isinstance(user.get("email"), str) else None,
                                        phone=phone))
    tags = opt(ticket, "tags", "ticket", list) or []
    for i, tag in enumerate(tags):
        check(tag, join("ticket.tags", i), (str,))
    started, ended = bounds(times, created)
    fields = {k: v for k, v in ticket.items() if k not in _TICKET_MAPPED}
    fields.update({k: v for k, v in doc.items() if k not in ("ticket", "comments", "users")})
    return [build(FORMAT, ticket_id, channel_of(ticket.get("via")), started, ended, participants, messages, fields,
                  subject=opt(ticket, "subject", "ticket", str), tags=[t for t in tags if t.strip()],
                  language=_locale(users.get(requester, {}).get("locale")) if requester else None)]
