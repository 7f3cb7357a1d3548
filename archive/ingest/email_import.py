"""Import one ``.eml`` file (an RFC 5322 message, usually MIME) as a record: metadata plus parts.

Only the standard library ``email`` package parses (``policy=email.policy.default``); this module decides
what the parse means for an archive. The raw bytes are always kept as the ``message`` part, verbatim: they
are the evidence, and everything else here is a convenience derived from them.

Standards relied on:

* RFC 5322 §3.6 — ``From`` and ``Date`` are the only required fields: a message with neither is not an
  email; without ``Date`` there is no reliable ``started_at``, so it is refused. §3.6.2 lets ``From``
  hold several mailboxes; the first is the author used as ``messages[0].from``. §3.6.4: Message-ID,
  In-Reply-To and References are ``<id-left@id-right>`` msg-ids; the angle brackets are not part of the id.
* RFC 5322 §3.3 — date-time with a numeric zone; ``-0000`` means "UTC, local zone unknown", so it is
  kept as UTC. §4.3: obsolete zone names and two-digit years are accepted (via ``email.utils``).
* RFC 5322 §2.2 / §3.6.8 — a header block line that is neither a field nor a continuation ends the header
  block for the parser (``MissingHeaderBodySeparatorDefect``): the fields after it would be silently lost,
  so such messages are refused. Same for a header block starting with a continuation line.
* RFC 6532 §3 — raw UTF-8 in header fields is allowed; the parser keeps such bytes as surrogates, which
  are turned back into text here.
* RFC 2045 §5.2 — no Content-Type means ``text/plain; charset=us-ascii``; §6 transfer encodings are
  undone by ``get_payload(decode=True)``. A base64 body whose length cannot be decoded at all
  (``InvalidBase64LengthDefect``) loses data and is refused.
* RFC 2046 §5.1 — a multipart with no boundary, or whose boundary never occurs, cannot be split into its
  parts (``NoBoundaryInMultipartDefect`` / ``StartBoundaryNotFoundDefect``): refused. §5.1.4 and
  RFC 2387: the body is chosen with ``EmailMessage.get_body`` (last-best alternative, related root).
* RFC 2047 §2, §5 — encoded-words in unstructured text (Subject) and in display names; names that
  mailers wrongly put inside quoted strings are decoded too. Charset labels are decoded with the WHATWG
  Encoding Standard's supersets (``gb2312``/``gbk`` → ``gb18030``, ``iso-8859-1`` → ``windows-1252``)
  because mailers label GBK text as gb2312.
* Bounds: at most ``MAX_HEADER_FIELDS`` fields in a header block and ``MAX_HEADER_FIELD_BYTES`` in one
  field (Postfix's ``header_size_limit``): the standard library's structured-header parser is slow on
  huge address lists, so a hostile header could stall a run; MIME nesting beyond the parser's recursion
  and more than ``max_parts`` entities are refused; the message size is bounded by the caller
  (``ARCHIVE_MAX_EMAIL_BYTES``).
* RFC 2183 §2.3 and RFC 2231 §3-4 — attachment file names (continuations and charsets are decoded by
  ``get_filename``); only the terminal component is kept, never a directory path or control characters.

Parts: ``message`` (raw bytes), ``body`` (text/plain, re-encoded as UTF-8), ``body-html`` (the HTML body's
decoded bytes, in its declared charset), and ``attachment-1`` … for every other leaf entity, inline images
included; an attached ``message/rfc822`` is one attachment (its bytes as the generator writes them).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC
from email import errors, policy
from email.header import decode_header
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import getaddresses, parsedate_to_datetime
from html.parser import HTMLParser

from archive.ingest.record import InvalidMetadata, validate

_CHARSET_SUPERSETS = {"gb2312": "gb18030", "gbk": "gb18030", "x-gbk": "gb18030", "cp936": "gb18030",
                      "euc-cn": "gb18030", "iso-8859-1": "cp1252", "latin1": "cp1252", "latin-1": "cp1252",
                      "us-ascii": "utf-8", "ascii": "utf-8", "ks_c_5601-1987": "cp949", "euc-kr": "cp949",
                      "big5": "big5hkscs", "tis-620": "cp874", "shift_jis": "cp932", "sjis": "cp932"}
_ADDRESS_HEADERS = ("From", "Sender", "Reply-To", "To", "Cc", "Bcc")
_INTERESTING = ("Sender", "Reply-To", "Return-Path", "Delivered-To", "X-Original-To", "Organization",
                "X-Mailer", "User-Agent", "List-Id", "Auto-Submitted", "Precedence", "Importance", "X-Priority",
                "Sensitivity", "Content-Language", "Thread-Topic", "Authentication-Results")
_MSG_ID = re.compile(r"<([^<>\s]+)>")
_LANGUAGE = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*")
_TOP_HEADER_DEFECTS = (errors.MissingHeaderBodySeparatorDefect, errors.FirstHeaderLineIsContinuationDefect)
_STRUCTURE_DEFECTS = (errors.NoBoundaryInMultipartDefect, errors.StartBoundaryNotFoundDefect)
_MAX_DEPTH = 50
MAX_HEADER_FIELDS = 1000  # in one header block; RFC 5321 §6.3 takes over 100 Received fields for a mail loop
MAX_HEADER_FIELD_BYTES = 100 * 1024  # one field with its continuation lines: Postfix's header_size_limit


@dataclass(frozen=True)
class EmailPart:
    """One stored part: ``message``, ``body``, ``body-html`` or ``attachment-N``."""

    name: str
    filename: str | None
    media_type: str
    data: bytes


@dataclass(frozen=True)
class EmailRecord:
    """A parsed email: record metadata (valid per ``record.validate``) and the parts to store."""

    metadata: dict
    parts: list[EmailPart]


# --- text helpers ----------------------------------------------------------------------------------


def _decode_bytes(data: bytes, charset: str | None) -> str:
    """Bytes in a declared charset → text; undeclared or wrong labels fall back to UTF-8, then replace."""
    label = (charset or "us-ascii").strip().strip('"').lower()
    label = _CHARSET_SUPERSETS.get(label, label)
    try:
        return data.decode(label)
    except UnicodeDecodeError:
        pass
    except (LookupError, ValueError):  # an unknown label, or one no codec can be named by (NUL, surrogates)
        label = "utf-8"
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode(label, errors="replace")


def _unsurrogate(text: str) -> str:
    """Undo the parser's surrogateescape of raw 8-bit header bytes (RFC 6532 UTF-8, or legacy GBK)."""
    if not any("\udc80" <= c <= "\udcff" for c in text):
        return text
    raw = text.encode("utf-8", "surrogateescape")
    for codec in ("utf-8", "gb18030"):
        try:
            return raw.decode(codec)
        except UnicodeDecodeError:
            continue
    return raw.decode("utf-8", errors="replace")


def _clean(text: str | None, max_len: int = 1000) -> str | None:
    """Printable single-line text for metadata: no control or format characters, at most ``max_len``."""
    if text is None:
        return None
    text = _unsurrogate(text)
    text = "".join(" " if c in "\t\r\n" else c for c in text if unicodedata.category(c) not in ("Cc", "Cf")
                   or c in "\t\r\n")
    text = " ".join(text.split())
    return text[:max_len] or None


def _damaged(text: str) -> bool:
    return "\ufffd" in text or any("\udc80" <= c <= "\udcff" for c in text)


def _decode_words(raw: str) -> str:
    """Decode RFC 2047 encoded-words in ``raw`` ourselves, with the charset supersets above."""
    return "".join(_decode_bytes(chunk, cs) if isinstance(chunk, bytes) else chunk for chunk, cs in decode_header(raw))


def _text_header(msg: EmailMessage, name: str) -> str | None:
    """An unstructured header, decoded; re-decoded with charset supersets if the parser's result is damaged."""
    value = msg.get(name)
    if value is None:
        return None
    text = str(value)
    raw = next((v for k, v in msg.raw_items() if k.lower() == name.lower()), "")
    return _clean(_decode_words(raw) if _damaged(text) and "=?" in raw else text)


def _msg_ids(value: str | None) -> list[str]:
    if not value:
        return []
    found = _MSG_ID.findall(value)
    return found or ([value.strip()] if value.strip() else [])


def _safe_filename(name: str | None) -> str | None:
    """RFC 2183 §2.3: keep only the terminal component; drop control/format characters and dot-only names."""
    if not name:
        return None
    name = _unsurrogate(name)
    name = re.split(r"[/\\]", name)[-1]
    name = "".join(c for c in name if unicodedata.category(c) not in ("Cc", "Cf"))
    name = name.strip().strip(".").strip()
    if not name:
        return None
    if len(name) > 255:
        stem, dot, ext = name.rpartition(".")
        name = (stem[:250 - len(ext)] + dot + ext) if dot and len(ext) < 20 else name[:255]
    return name


class _TextOfHtml(HTMLParser):
    """Visible text of an HTML body: tags dropped, entities decoded, block elements become line breaks."""

    _BLOCK = {"br", "p", "div", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "table", "blockquote", "hr"}
    _HIDDEN = {"script", "style", "head", "title"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag, attrs):
        if tag in self._HIDDEN:
            self.hidden += 1
        elif tag in self._BLOCK:
            self.chunks.append("\n")

    def handle_endtag(self, tag):
        if tag in self._HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag in self._BLOCK:
            self.chunks.append("\n")

    def handle_data(self, data):
        if not self.hidden:
            self.chunks.append(data)

    def text(self) -> str:
        lines = (" ".join(line.split()) for line in "".join(self.chunks).splitlines())
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def html_to_text(html: str) -> str:
    """Strip tags from an HTML body (used when a message has no text/plain part)."""
    parser = _TextOfHtml()
    parser.feed(html)
    parser.close()
    return parser.text()


# --- MIME structure --------------------------------------------------------------------------------


def _check_headers(part: EmailMessage, where: str) -> None:
    """Bound a header block before anything parses its fields: the standard library's structured-header
    parser takes seconds for a few thousand addresses or fields, and a hostile message has millions."""
    if len(part) > MAX_HEADER_FIELDS:
        raise InvalidMetadata(where, f"has {len(part):,} header fields; at most {MAX_HEADER_FIELDS:,} are accepted")
    for name, value in part.raw_items():
        if len(name) + len(value) > MAX_HEADER_FIELD_BYTES:
            raise InvalidMetadata(where, f"header field {_clean(name, 60)!r} is {len(value):,} characters; at most "
                                         f"{MAX_HEADER_FIELD_BYTES:,} are accepted")


def _count_entities(msg: EmailMessage, max_parts: int) -> int:
    count = 0
    try:
        for part in msg.walk():
            count += 1
            if count > max_parts:
                raise InvalidMetadata("parts", f"the message has more than {max_parts} MIME parts")
            if part is not msg:
                _check_headers(part, f"parts[{count - 1}]")
    except RecursionError:
        raise InvalidMetadata("parts", "MIME parts are nested too deeply") from None
    return count


def _leaves(part: EmailMessage, depth: int = 0):
    """Leaf entities in order; message/* (an attached email) is one leaf, not descended into."""
    if depth > _MAX_DEPTH:
        raise InvalidMetadata("parts", "MIME parts are nested too deeply")
    for defect in part.defects:
        if isinstance(defect, _STRUCTURE_DEFECTS):
            raise InvalidMetadata("parts", f"{part.get_content_type()} cannot be split into its parts "
                                           f"({type(defect).__name__}, RFC 2046 §5.1)")
    if part.get_content_maintype() == "multipart" and part.is_multipart():
        for sub in part.iter_parts():
            yield from _leaves(sub, depth + 1)
    else:
        yield part


def _payload(part: EmailMessage, where: str) -> bytes:
    if part.get_content_maintype() == "message" and part.is_multipart():
        inner = part.get_payload(0)
        return inner.as_bytes(policy=inner.policy.clone(refold_source="none"))
    data = part.get_payload(decode=True)
    if any(isinstance(d, errors.InvalidBase64LengthDefect) for d in part.defects):
        raise InvalidMetadata(f"parts[{where}]", "base64 content has an impossible length; data would be lost")
    return data if isinstance(data, bytes) else b""


# --- the importer ----------------------------------------------------------------------------------


def _started_at(msg: EmailMessage) -> str:
    header = msg.get("Date")
    if header is None:
        raise InvalidMetadata("Date", "is missing; RFC 5322 §3.6 requires an origination date")
    when = getattr(header, "datetime", None)
    if when is None:
        try:
            when = parsedate_to_datetime(str(header))
        except (TypeError, ValueError, IndexError):
            raise InvalidMetadata("Date", f"{_clean(str(header), 100)!r} is not an RFC 5322 date-time") from None
    if when.tzinfo is None:  # RFC 5322 §3.3: -0000 is UTC with no local zone information
        when = when.replace(tzinfo=UTC)
    return when.isoformat()


def _addresses(msg: EmailMessage) -> list[tuple[str, str | None, str]]:
    """(header, name, email) for every mailbox in the address headers, groups flattened."""
    found = []
    for header in _ADDRESS_HEADERS:
        raws = [v for k, v in msg.raw_items() if k.lower() == header.lower()]
        raw_names = {addr.lower(): name for name, addr in getaddresses(raws)}
        for value in msg.get_all(header) or []:
            for address in getattr(value, "addresses", ()):
                email = _unsurrogate(address.addr_spec or "").strip()
                if "@" not in email or any(c.isspace() or ord(c) < 32 for c in email):
                    raise InvalidMetadata(header, f"{_clean(str(value), 200)!r} has a mailbox without a usable "
                                                  "address; it cannot be parsed without losing data")
                name = address.display_name or None
                if name and _damaged(_unsurrogate(name)) and "=?" in raw_names.get(email.lower(), ""):
                    name = _decode_words(raw_names[email.lower()])
                found.append((header, _clean(name), email[:1000]))
    return found


def _participants(found, agent_domains: set[str] | None) -> list[dict]:
    domains = {d.lower().lstrip("@").rstrip(".") for d in agent_domains} if agent_domains is not None else None
    people: dict[str, dict] = {}
    for header, name, email in found:
        person = people.get(email.lower())
        if person is None:
            if domains is None:
                role = "other"
            else:
                domain = email.rpartition("@")[2].lower().rstrip(".")
                role = "agent" if any(domain == d or domain.endswith("." + d) for d in domains) else "customer"
            person = people[email.lower()] = {"role": role, "email": email, "attributes": {"headers": []}}
        if name and "name" not in person:
            person["name"] = name
        if header.lower() not in person["attributes"]["headers"]:
            person["attributes"]["headers"].append(header.lower())
    return list(people.values())


def parse_eml(raw: bytes, *, origin: str = "", agent_domains: set[str] | None = None,
              max_parts: int = 100) -> EmailRecord:
    """Parse one .eml file. Raises InvalidMetadata naming the field (``Date``, ``From``, ``parts`` …), or
    ``(email)`` when the standard library's parser itself fails on a malformed message (it raises
    AttributeError, IndexError, ValueError … from inside its header parsers for some)."""
    if not isinstance(raw, bytes | bytearray):
        raise TypeError("parse_eml needs the raw bytes of the message")
    try:
        return _parse_eml(bytes(raw), origin=origin, agent_domains=agent_domains, max_parts=max_parts)
    except InvalidMetadata:
        raise
    except RecursionError:
        raise InvalidMetadata("parts", "MIME parts are nested too deeply") from None
    except (errors.MessageError, ValueError, TypeError, AttributeError, IndexError, KeyError, LookupError) as e:
        raise InvalidMetadata("(email)", f"malformed beyond what the e-mail parser can read "
                                         f"({type(e).__name__}: {str(e)[:200]})") from None


def _parse_eml(raw: bytes, *, origin: str, agent_domains: set[str] | None, max_parts: int) -> EmailRecord:
    try:
        msg: EmailMessage = BytesParser(policy=policy.default).parsebytes(raw)
    except RecursionError:  # the parser descends into nested multiparts one Python frame per level
        raise InvalidMetadata("parts", "MIME parts are nested too deeply") from None
    _check_headers(msg, "(headers)")
    if msg.get("From") is None and msg.get("Date") is None:
        raise InvalidMetadata("(email)", "not an email: it has neither a From nor a Date header (RFC 5322 §3.6)")
    for defect in msg.defects:
        if isinstance(defect, _TOP_HEADER_DEFECTS):
            raise InvalidMetadata("(headers)", f"malformed header block ({type(defect).__name__}): header "
                                               "fields after the bad line would be lost (RFC 5322 §2.2)")
    started_at = _started_at(msg)
    if msg.get("From") is None:
        raise InvalidMetadata("From", "is missing; RFC 5322 §3.6 requires an originator")
    found = _addresses(msg)
    authors = [email for header, _, email in found if header == "From"]
    if not authors:
        raise InvalidMetadata("From", "names no mailbox")
    _count_entities(msg, max_parts)

    # Bodies (RFC 2046 §5.1.4, RFC 2387) and attachments: every other leaf.
    plain = msg.get_body(preferencelist=("plain",))
    html = msg.get_body(preferencelist=("html",))
    parts = [EmailPart("message", None, "message/rfc822", raw)]
    text = ""
    if plain is not None:
        text = _decode_bytes(_payload(plain, "body"), plain.get_content_charset())
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        parts.append(EmailPart("body", None, "text/plain; charset=utf-8", text.encode("utf-8")))
    if html is not None:
        data = _payload(html, "body-html")
        charset = html.get_content_charset()
        parts.append(EmailPart("body-html", None, "text/html" + (f"; charset={charset}" if charset else ""), data))
        if plain is None:
            text = html_to_text(_decode_bytes(data, charset))
    attachments = []
    for leaf in _leaves(msg):
        if leaf is plain or leaf is html:
            continue
        name = f"attachment-{len(attachments) + 1}"
        data = _payload(leaf, name)
        filename = _safe_filename(leaf.get_filename())
        if filename is None and leaf.get_content_maintype() == "message":
            filename = "attached-message.eml"
        parts.append(EmailPart(name, filename, leaf.get_content_type(), data))
        entry = {"part": name, "filename": filename, "media_type": leaf.get_content_type(), "size": len(data),
                 "disposition": leaf.get_content_disposition(),
                 "content_id": _clean(str(leaf["Content-ID"])) if leaf.get("Content-ID") else None}
        attachments.append({k: v for k, v in entry.items() if v is not None})

    message_ids = _msg_ids(str(msg["Message-ID"])) if msg.get("Message-ID") is not None else []
    digest = hashlib.sha256(raw).hexdigest()
    interaction_id = message_ids[0] if message_ids and len(message_ids[0]) <= 500 else f"sha256:{digest}"
    headers = {}
    for name in _INTERESTING:
        values = [_clean(str(v)) for v in msg.get_all(name) or []]
        values = [v for v in values if v]
        if values:
            headers[name.lower()] = values[0] if len(values) == 1 else values
    source_fields = {
        "message_id": message_ids[0] if message_ids else None,
        "in_reply_to": _msg_ids(str(msg["In-Reply-To"])) if msg.get("In-Reply-To") is not None else [],
        "references": _msg_ids(str(msg["References"])) if msg.get("References") is not None else [],
        "to": [v for v in map(_clean, map(str, msg.get_all("To") or [])) if v],
        "cc": [v for v in map(_clean, map(str, msg.get_all("Cc") or [])) if v],
        "headers": headers,
        "sha256": digest,
    }
    defects = sorted({type(d).__name__ for part in msg.walk() for d in part.defects}
                     | {type(d).__name__ for v in msg.values() for d in getattr(v, "defects", ())})
    if defects:
        source_fields["defects"] = defects
    if origin:
        source_fields["origin"] = origin
    message = {"at": started_at, "from": authors[0], "text": text, "id": message_ids[0] if message_ids else None,
               "attachments": attachments}
    metadata = {
        "source": {"system": "email", "interaction_id": interaction_id},
        "channel": "email",
        "started_at": started_at,
        "participants": _participants(found, agent_domains),
        "subject": _text_header(msg, "Subject"),
        "messages": [{k: v for k, v in message.items() if v is not None}],
        "source_fields": source_fields,
    }
    language = (_clean(str(msg.get("Content-Language", ""))) or "").split(",")[0].strip()
    if language and _LANGUAGE.fullmatch(language):
        metadata["language"] = language
    return EmailRecord(validate({k: v for k, v in metadata.items() if v is not None}), parts)
