"""Amazon Connect chat transcripts, as Connect writes them to the instance's S3 bucket
(``…/ChatTranscripts/YYYY/MM/DD/<ContactId>_<timestamp>.json``).

Shape: ``{Version, AWSAccountId, InstanceId, InitialContactId, ContactId, Participants: [{ParticipantId}],
Transcript: [Item…]}``. Each Item follows the Connect Participant Service ``Item`` data type: ``AbsoluteTime``
(``yyyy-MM-ddThh:mm:ss.SSSZ``), ``Content``, ``ContentType``, ``Id``, ``Type`` (``MESSAGE``, ``EVENT``,
``ATTACHMENT``, and ``TYPING``/``PARTICIPANT_JOINED``/… in API transcripts), ``ParticipantId``, ``DisplayName``,
``ParticipantRole`` (``AGENT``, ``CUSTOMER``, ``SYSTEM``, ``CUSTOM_BOT``, ``SUPERVISOR``) and ``Attachments``
(``[{ContentType, AttachmentId, AttachmentName, Status}]``). The same converter accepts a GetTranscript
response page (``{InitialContactId, Transcript, NextToken}``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from archive.ingest.chat_formats._common import (bounds, build, check, iso, join, names, opt, participant, req,
                                                 req_time)
from archive.ingest.record import InvalidMetadata

FORMAT = "amazon-connect"
ROLES = {"AGENT": "agent", "CUSTOMER": "customer", "SYSTEM": "system", "CUSTOM_BOT": "bot", "SUPERVISOR": "agent"}
MESSAGE_TYPES = {"MESSAGE", "ATTACHMENT"}
_MAPPED = {"ContactId", "Participants", "Transcript"}


def detect(doc: Any) -> bool:
    return (isinstance(doc, Mapping) and isinstance(doc.get("Transcript"), list)
            and ("ContactId" in doc or "InitialContactId" in doc)
            and "ConversationCharacteristics" not in doc and "JobStatus" not in doc)


def convert(doc: Mapping) -> list[dict]:
    contact_id = opt(doc, "ContactId", "", str) or opt(doc, "InitialContactId", "", str)
    if not contact_id:
        raise InvalidMetadata("ContactId", "missing")
    people: dict[str, dict] = {}

    def seen(pid: str, role: str | None, name: str | None) -> None:
        p = people.setdefault(pid, {"id": pid})
        if role and "role" not in p:
            p["role"] = ROLES.get(role, "other")
        if name and "name" not in p:
            p["name"] = name

    for i, raw in enumerate(opt(doc, "Participants", "", list) or []):
        path = join("Participants", i)
        check(raw, path, (dict,))
        seen(req(raw, "ParticipantId", path, str), opt(raw, "ParticipantRole", path, str),
             opt(raw, "DisplayName", path, str))

    times, messages, events = [], [], []
    for i, item in enumerate(req(doc, "Transcript", "", list)):
        path = join("Transcript", i)
        check(item, path, (dict,))
        at = req_time(item, "AbsoluteTime", path)
        kind = req(item, "Type", path, str)
        opt(item, "ContentType", path, str)
        role = opt(item, "ParticipantRole", path, str)
        pid = opt(item, "ParticipantId", path, str) or (role.lower() if role else None)
        if pid:
            seen(pid, role, opt(item, "DisplayName", path, str))
        times.append(at)
        if kind not in MESSAGE_TYPES:
            events.append(item)
            continue
        attachments = []
        for j, att in enumerate(opt(item, "Attachments", path, list) or []):
            check(att, join(join(path, "Attachments"), j), (dict,))
            attachments.append(att.get("AttachmentName") or att.get("AttachmentId"))
        message = {"id": opt(item, "Id", path, str), "at": iso(at), "from": pid or "system",
                   "text": opt(item, "Content", path, str), "attachments": names(attachments)}
        if not pid:
            seen("system", "SYSTEM", None)
        messages.append({k: v for k, v in message.items() if v is not None})
    if not people:
        raise InvalidMetadata("Participants", "no participants in the transcript")
    started, ended = bounds(times)
    participants = [participant(p.get("role", "other"), p["id"], p.get("name")) for p in people.values()]
    fields = {k: v for k, v in doc.items() if k not in _MAPPED}
    if events:
        fields["events"] = events
    return [build(FORMAT, contact_id, "chat", started, ended, participants, messages, fields)]
