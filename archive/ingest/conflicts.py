"""Conflicting deliveries: the same content delivered again with different metadata.

A record's id is derived from its source system, its interaction id and the SHA-256 of every part
(:func:`archive.ingest.pipeline.record_id`). For a recording the metadata comes from a sidecar that is
not a part, so a second delivery of the same media with the same interaction id but another sidecar
maps to the same record. Reporting it as a duplicate would silently drop the second metadata; storing
it as a second record would split one interaction in two. It is a **conflict**: an auditor must decide
which metadata is right.

What the pipeline does (the outcome ``conflict``, code ``metadata_conflict``):

* the record stays as first committed — its manifest is sealed and immutable, and its retention is the
  one the first delivery decided;
* the second delivery is kept whole as evidence: its metadata (validated) and the exact bytes of its
  sidecars are sealed as ``records/<id>/conflict-<digest>`` (``archive-conflict/1``), with both metadata
  digests and both retention dates. It is locked until the **later** of the record's lock and the date
  the delivered metadata would have given: as an object of the record it is extended with the record's
  locks, and disposition refuses a record while any of its objects is locked — so the record is never
  disposed of before either delivery's retention allows. If the second metadata is the right one, an
  auditor records ``archive event retention-extended --records <id> --until DATE``;
* a quarantine entry names the input, the record, the evidence object and both digests
  (``archive quarantine list``); the CLI exits 1, the summary counts ``conflict``.

Only inputs whose metadata comes from outside their parts can conflict (recordings with sidecars, and
records committed through :meth:`Ingestor.commit`): a chat or an e-mail is its own transcript, so the
same bytes again are the same delivery.
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import datetime

FORMAT = "archive-conflict/1"


def metadata_digest(metadata: dict) -> str:
    """SHA-256 of metadata as canonical JSON (sorted keys, no spaces, UTF-8)."""
    raw = json.dumps(metadata, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(raw.encode()).hexdigest()


def evidence_name(record_id: str, evidence: list[tuple[str, bytes]]) -> str:
    """The object that keeps a delivery's sidecars: named by their bytes, so the same delivery again
    finds its evidence kept already."""
    h = hashlib.sha256(b"archive-conflict/1\n")
    for name, data in evidence:
        h.update(f"{name}\n{len(data)}\n".encode())
        h.update(data)
    return f"records/{record_id}/conflict-{h.hexdigest()[:32]}"


def evidence_doc(*, record_id: str, origin: str, fmt: str, received_at: datetime, metadata: dict,
                 archived: dict, evidence: list[tuple[str, bytes]], archived_until: str,
                 delivered_until: str | None) -> dict:
    """The sealed evidence of one conflicting delivery."""
    return {
        "format": FORMAT, "record_id": record_id, "received_at": received_at.isoformat(timespec="milliseconds"),
        "input": {"origin": origin, "format": fmt},
        "metadata_sha256": {"archived": metadata_digest(archived), "delivered": metadata_digest(metadata)},
        "retain_until": {"archived": archived_until, "delivered": delivered_until},
        "metadata": metadata,
        "sidecars": [{"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                      "bytes": base64.b64encode(data).decode()} for name, data in evidence],
    }


def reason(doc: dict, name: str) -> str:
    digests, until = doc["metadata_sha256"], doc["retain_until"]
    return (f"{doc['input']['origin']}: the same content as record {doc['record_id']}, delivered with "
            f"different metadata (archived SHA-256 {digests['archived'][:16]}…, this delivery "
            f"{digests['delivered'][:16]}…); the record keeps the first metadata and its retention (until "
            f"{until['archived']}; this delivery's would be {until['delivered'] or 'undecidable'}); this delivery is kept "
            f"as evidence in {name} for an auditor to decide")
