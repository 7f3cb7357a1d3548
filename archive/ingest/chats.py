"""Chat-transcript importers: platform exports → record metadata (``archive-record/1``, see
:mod:`archive.ingest.record`), one record per conversation.

``detect(doc)`` names the format of a parsed JSON document (or ``None``); ``convert(doc, fmt=None, origin=…)``
returns the records, each already passed through :func:`archive.ingest.record.validate`. A document that is
not a known format raises ``InvalidMetadata("(format)", …)``; a malformed one raises ``InvalidMetadata`` naming
the JSON path of the bad field in the source document (``Transcript[3].AbsoluteTime: missing``,
``comments[1].created_at: 'yesterday' is not an ISO-8601 date-time``). ``origin`` (a file name or URI) is only
carried in the error's ``details`` so a batch importer can say which file was bad.

Common mapping: ``source = {system: <format>, interaction_id: <platform conversation/contact/ticket id>}``;
times are re-emitted as ISO-8601 with an explicit offset (epoch seconds converted as UTC); ``started_at`` is the
platform's own creation time where it has one, else the first transcript item, and ``ended_at`` the last item
(events included: a chat-ended or close event ends the conversation). ``messages`` holds only real messages
(``{id, at, from: participant id, text, attachments: [names or URLs], type: "note" for internal notes}``);
typing/join/leave/assignment events are kept verbatim under ``source_fields.events``. ``source_fields`` holds
the source's top-level fields that are not mapped, verbatim.

Formats (``FORMATS``):

``archive``
    The project's own chat JSON: a record metadata object exactly as :mod:`archive.ingest.record` documents it
    (``schema: "archive-record/1"``, ``channel`` ``chat`` or ``messaging``, the thread in ``messages``), or a
    JSON list of such objects. Converted by validation only; errors in list item *i* are prefixed ``[i].``.
``amazon-connect``
    The chat transcript Amazon Connect writes to S3 (``Version``, ``AWSAccountId``, ``InstanceId``,
    ``InitialContactId``, ``ContactId``, ``Participants``, ``Transcript[]``). See
    :mod:`archive.ingest.chat_formats.amazon_connect`.
``twilio-conversations``
    Conversation + Messages (+ Participants) REST resources, or a bare Messages page. See
    :mod:`archive.ingest.chat_formats.twilio`.
``zendesk``
    ``{ticket, comments, users?}`` from the Tickets / Ticket Comments / Users APIs. See
    :mod:`archive.ingest.chat_formats.zendesk`.
``intercom``
    A Conversation object from GET /conversations/{id}. See :mod:`archive.ingest.chat_formats.intercom`.

Documentation the shapes were taken from:

* Amazon Connect — Participant Service API Reference, "Item" and "AttachmentItem" data types and
  "GetTranscript" (https://docs.aws.amazon.com/connect/latest/APIReference/API_connect-participant_Item.html,
  …/API_connect-participant_GetTranscript.html); Amazon Connect Administrator Guide, chat transcripts stored
  in the instance's S3 bucket (file header ``Version`` "2019-08-26", ``AWSAccountId``, ``InstanceId``,
  ``InitialContactId``, ``ContactId``, ``Participants``, ``Transcript``); "Example Contact Lens output files"
  (https://docs.aws.amazon.com/connect/latest/adminguide/contact-lens-example-output-files.html) for
  ParticipantRole values.
* Twilio — "Conversation Resource", "Conversation Message Resource", "Conversation Participant Resource"
  (https://www.twilio.com/docs/conversations/api/conversation-resource, …/conversation-message-resource,
  …/conversation-participant-resource), with the list-page envelope ``{meta: {page, page_size, key, …},
  messages: [...]}`` as in twilio-python's generated integration tests.
* Zendesk — Support API "Tickets", "Ticket Comments", "Users"
  (https://developer.zendesk.com/api-reference/ticketing/tickets/tickets/,
  …/tickets/ticket_comments/, …/users/users/), "Via object reference" and "Via types reference"
  (https://developer.zendesk.com/documentation/ticketing/reference-guides/via-object-reference,
  …/reference-guides/via-types).
* Intercom — REST API "The conversation model" / "Conversation", "Conversation part", "Conversation source"
  (https://developers.intercom.com/docs/references/2.2/rest-api/conversations/conversation-model/,
  https://developers.intercom.com/docs/references/2.15/rest-api/api.intercom.io/conversations/conversation).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from archive.ingest.chat_formats import amazon_connect, intercom, twilio, zendesk
from archive.ingest.record import SCHEMA, InvalidMetadata, validate

FORMATS = ("archive", "amazon-connect", "twilio-conversations", "zendesk", "intercom")
_ARCHIVE_CHANNELS = ("chat", "messaging")


def _is_archive_record(doc: Any) -> bool:
    return isinstance(doc, Mapping) and doc.get("schema") == SCHEMA and isinstance(doc.get("messages"), list)


def _detect_archive(doc: Any) -> bool:
    if isinstance(doc, list):
        return bool(doc) and all(_is_archive_record(item) for item in doc)
    return _is_archive_record(doc)


def _convert_archive(doc: Any) -> list[dict]:
    items = doc if isinstance(doc, list) else [doc]
    out = []
    for i, item in enumerate(items):
        prefix = f"[{i}]." if isinstance(doc, list) else ""
        try:
            if not isinstance(item, Mapping):
                raise InvalidMetadata("(record)", "must be a JSON object")
            if item.get("schema") != SCHEMA:
                raise InvalidMetadata("schema", f"must be {SCHEMA!r}, not {item.get('schema')!r}")
            record = validate(item)
            if record["channel"] not in _ARCHIVE_CHANNELS:
                raise InvalidMetadata("channel", f"a chat record's channel must be chat or messaging, "
                                                 f"not {record['channel']!r}")
            if not isinstance(record.get("messages"), list):
                raise InvalidMetadata("messages", "missing: a chat record carries its thread")
        except InvalidMetadata as e:
            raise InvalidMetadata(prefix + e.field, e.message.split(": ", 1)[-1]) from None
        out.append(record)
    if not out:
        raise InvalidMetadata("(document)", "is an empty list")
    return out


_DETECT: dict[str, Callable[[Any], bool]] = {
    "archive": _detect_archive,
    "amazon-connect": amazon_connect.detect,
    "twilio-conversations": twilio.detect,
    "zendesk": zendesk.detect,
    "intercom": intercom.detect,
}
_CONVERT: dict[str, Callable[[Any], list[dict]]] = {
    "archive": _convert_archive,
    "amazon-connect": amazon_connect.convert,
    "twilio-conversations": twilio.convert,
    "zendesk": zendesk.convert,
    "intercom": intercom.convert,
}


def detect(doc: Any) -> str | None:
    """The name of the format ``doc`` (parsed JSON) is in, or None if it is none of ``FORMATS``."""
    for name in FORMATS:
        if _DETECT[name](doc):
            return name
    return None


def convert(doc: Any, fmt: str | None = None, *, origin: str = "") -> list[dict]:
    """Record metadata dicts, one per conversation in ``doc``; ``fmt=None`` detects the format.

    Raises InvalidMetadata: field ``(format)`` for an unknown or undetectable format, otherwise the JSON path
    of the first bad field in ``doc``."""
    details = {"origin": origin} if origin else {}
    if fmt is None:
        fmt = detect(doc)
        if fmt is None:
            raise InvalidMetadata("(format)", "not a recognised chat export; expected one of "
                                              + ", ".join(FORMATS), **details)
    elif fmt not in _CONVERT:
        raise InvalidMetadata("(format)", f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}",
                              **details)
    if fmt != "archive" and not isinstance(doc, Mapping):
        raise InvalidMetadata("(document)", f"a {fmt} export must be a JSON object", **details)
    try:
        return _CONVERT[fmt](doc)
    except InvalidMetadata as e:
        if details:
            e.details.update(details)
        raise
