"""What the index keeps of a record: one search document, the same for every backend.

A document is built from a record's *view* (manifest + current retention decision + holds, see
:meth:`archive.retention.service.Retention.view`). Before any text reaches it, card numbers that pass the
Luhn check and card verification codes are masked (PCI DSS 3.2, 3.3.1); inline part bytes are dropped —
the index never holds content, only what search needs. The sealed originals are untouched.
:func:`summary` is what a search shows of a record when no reason was stated.
"""

from __future__ import annotations

import base64
import re

from archive.dates import parse_datetime

_CARD = re.compile(r"(?<![\d])(?:\d[ -]?){12,18}\d(?![\d])")
_CVV = re.compile(r"(?i)(\b(?:cvv2?|cvc2?|cvn|cid|csc|card security code|security code|verification (?:code|value))"
                  r"|安全码|校验码|验证码)(\D{0,15}?)(\d{3,4})(?!\d)")
MASK = "*"
_DIGIT = re.compile(r"\d")


def _luhn(digits: str) -> bool:
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = int(c)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _mask_card(m: re.Match) -> str:
    raw = m.group(0)
    digits = re.sub(r"\D", "", raw)
    if not 13 <= len(digits) <= 19 or not _luhn(digits):
        return raw
    keep = len(digits) - 4  # the last four may stay (PCI DSS 3.3)
    out, seen = [], 0
    for c in raw:
        if c.isdigit():
            out.append(MASK if seen < keep else c)
            seen += 1
        else:
            out.append(c)
    return "".join(out)


def mask_pci(text: str) -> str:
    """``text`` with Luhn-valid card numbers masked but for their last four digits, and card verification
    codes masked entirely."""
    if not text or not _DIGIT.search(text):
        return text
    text = _CARD.sub(_mask_card, text)
    return _CVV.sub(lambda m: m.group(1) + m.group(2) + MASK * len(m.group(3)), text)


def _values(meta: dict, role: str, *keys: str) -> list[str]:
    return [str(p[k]) for p in meta.get("participants", []) if p.get("role") == role for k in keys if p.get(k)]


def fields(view: dict) -> dict[str, list[str]]:
    """Field → values (case-folded) the query language filters on (archive/search/query.py FIELDS)."""
    meta = view["metadata"]
    retention = view.get("retention") or {}
    f = {
        "id": [view["record_id"]],
        "agent": _values(meta, "agent", "id", "name"), "agent.id": _values(meta, "agent", "id"),
        "customer": _values(meta, "customer", "id", "name"), "customer.id": _values(meta, "customer", "id"),
        "customer.phone": _values(meta, "customer", "phone"),
        "customer.account": _values(meta, "customer", "account"),
        "customer.email": _values(meta, "customer", "email"),
        "phone": [str(p["phone"]) for p in meta.get("participants", []) if p.get("phone")],
        "channel": [meta.get("channel")], "direction": [meta.get("direction")],
        "source": [meta["source"]["system"]], "interaction": [meta["source"]["interaction_id"]],
        "business_line": [meta.get("business_line")], "product": [meta.get("product")],
        "product_type": [meta.get("product_type")], "jurisdiction": [meta.get("jurisdiction")],
        "language": [meta.get("language")], "tag": list(meta.get("tags") or []),
        "contract": [meta.get("contract_id")],
        "policy": [p["id"] for p in retention.get("policies", [])],
        "hold": list(view.get("holds") or []),
        "finding": [x["code"] for x in view.get("findings", [])],
        "part": [p["name"] for p in view.get("parts", [])],
    }
    return {k: sorted({str(v).casefold() for v in vs if v}) for k, vs in f.items() if any(vs)}


def text(view: dict) -> str:
    """Everything words and phrases are searched in: identifiers, names, subject, messages, and call
    transcripts supplied as text — masked and case-folded."""
    meta = view["metadata"]
    bits = [view["record_id"], meta["source"]["system"], meta["source"]["interaction_id"], meta["channel"],
            *(str(meta[k]) for k in ("business_line", "product", "product_type", "jurisdiction", "subject",
                                     "contract_id") if meta.get(k)),
            *meta.get("tags", [])]
    for p in meta.get("participants", []):
        bits += [str(p[k]) for k in ("role", "id", "name", "phone", "email", "account") if p.get(k)]
    for m in meta.get("messages", []):
        if m.get("text"):
            bits.append(m["text"])
    for part in view.get("parts", []):
        bits += [part["name"], part.get("filename") or ""]
        if "inline" in part and str(part.get("media_type", "")).startswith("text/"):
            bits.append(base64.b64decode(part["inline"]).decode("utf-8", "replace"))
    retention = view.get("retention") or {}
    bits += [p["id"] for p in retention.get("policies", [])]
    bits += [f["code"] for f in view.get("findings", [])]
    bits += view.get("holds", [])
    return mask_pci("\n".join(b for b in bits if b)).casefold()  # words match ignoring case, on every backend


def stored(view: dict) -> dict:
    """The record as the index returns it: the view without inline content, message text masked."""
    meta = {k: v for k, v in view["metadata"].items() if k != "source_fields"}  # the raw payload stays sealed
    meta["messages"] = [{**m, "text": mask_pci(m["text"])} if m.get("text") else m for m in meta.get("messages", [])]
    if not meta["messages"]:
        del meta["messages"]
    if meta.get("subject"):
        meta["subject"] = mask_pci(meta["subject"])
    parts = [{k: v for k, v in p.items() if k != "inline"} for p in view.get("parts", [])]
    return {**view, "metadata": meta, "parts": parts}  # new containers wherever a value changes


def started_utc(view: dict) -> str:
    return parse_datetime(view["metadata"]["started_at"]).strftime("%Y-%m-%dT%H:%M:%SZ")


def summary(record: dict) -> dict:
    """A record as a search result shown without a stated reason: who, when, what — never message text,
    transcript content, account numbers or phone numbers (the CLI's and the API's summaries)."""
    meta = record["metadata"]
    return {
        "record_id": record["record_id"],
        "started_at": meta.get("started_at"), "ended_at": meta.get("ended_at"), "duration_s": meta.get("duration_s"),
        "channel": meta.get("channel"), "direction": meta.get("direction"),
        "subject": mask_pci(meta["subject"]) if meta.get("subject") else None,
        "source": {k: meta.get("source", {}).get(k) for k in ("system", "interaction_id")},
        "business_line": meta.get("business_line"), "product": meta.get("product"),
        "jurisdiction": meta.get("jurisdiction"), "language": meta.get("language"), "tags": meta.get("tags", []),
        "participants": [{k: p[k] for k in ("role", "id", "name") if p.get(k)} for p in meta.get("participants", [])],
        "messages": len(meta.get("messages") or []),
        "parts": [{k: p.get(k) for k in ("name", "media_type", "size")} for p in record["parts"]],
        "findings": record.get("findings", []), "holds": record.get("holds", []),
        "retain_until": (record.get("retention") or {}).get("retain_until"),
        "policy": (record.get("retention") or {}).get("governing"),
    }
