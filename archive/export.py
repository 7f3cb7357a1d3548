"""Evidence bundles: everything about a case, in a form the other side can check without trusting us.

A bundle is a BagIt bag (RFC 8493) in a ZIP file (ZIP64; split into ``<name>.partNNN.zip`` files when a
part size is given). As RFC 8493 §4.2 requires of a serialised bag, everything is inside one base
directory named after the bundle (``case-42.zip`` holds ``case-42/…``; every part of a split bundle the
same directory, so the parts unzipped together make the one bag)::

    bagit.txt, bag-info.txt             BagIt declaration; case, reason, who, when, Payload-Oxum
    data/index.html                     the case for an examiner: records in time order, threads, players
    data/records/<id>/<part file>       the decrypted recordings, transcripts and attachments, as captured
    data/records/<id>/metadata.json     the record's metadata, parts and findings
    data/records/<id>/retention.json    its retention decision and legal holds
    data/records/<id>/custody.json      chain of custody: SHA-256 at capture → sealed object and tags →
                                        SHA-256 as exported
    manifest-sha256.txt                 SHA-256 of every payload file
    audit/events.json                   the audit events of each record's ingest and of this export,
                                        exactly as logged, with RFC 6962 inclusion proofs
    audit/checkpoint.json               the signed tree head the proofs lead to
    tagmanifest-sha256.txt              SHA-256 of every tag file above
    signature.json                      Ed25519 signature over tagmanifest-sha256.txt

The export event names the SHA-256 of ``manifest-sha256.txt``, so the audit trail itself says which
bytes were handed over. ``archive verify-bundle`` (:mod:`archive.bundle_verify`) checks all of it offline
with the archive's public signing key.

Files are streamed: a part is decrypted segment by segment into its ZIP member while it is hashed, so
memory stays bounded whatever the size of the case. Every part is checked against the SHA-256 recorded at
capture before it is written; altered content is never exported silently. A bundle holds decrypted
evidence: its files are written 0600 under unique temporary names beside the target, fsync'd, and put in
place only when the whole bundle is complete — never over an existing file unless ``overwrite`` (the
CLI's ``--force``) says so; a failed export leaves nothing behind.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import mimetypes
import os
import re
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from archive import __version__
from archive.audit.log import Event
from archive.audit.merkle import inclusion_proof
from archive.dates import parse_datetime
from archive.errors import ArchiveError, InputError, IntegrityError
from archive.files import place, temporary_beside

BUNDLE_FORMAT = "archive-evidence-bundle/1"


class ExportError(ArchiveError):
    code = "export_failed"


def bag_directory(out: Path) -> str:
    """The bag's base directory inside the ZIP: the bundle's name without its extension, in characters
    any unzip tool writes as they are."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(out).stem).strip("._") or "bundle"
    return name[:100]


def part_names(out: Path, count: int) -> list[Path]:
    return [out] if count == 1 else [out.with_name(f"{out.stem}.part{i:03d}{out.suffix}") for i in range(1, count + 1)]


def part_files(out: Path) -> list[Path]:
    """The files already beside ``out`` named as the parts of a split bundle ``out`` would be."""
    pattern = re.compile(re.escape(out.stem) + r"\.part\d{3}" + re.escape(out.suffix))
    return sorted(p for p in out.parent.iterdir() if pattern.fullmatch(p.name)) if out.parent.is_dir() else []


class SplitZip:
    """ZIP64 members written one after another, rolling over to a new file between members once the
    current one holds ``split`` bytes. Files are written beside ``out`` under unique temporary names
    (mode 0600) and moved into place only when the whole bundle is complete; an existing file is
    replaced only with ``overwrite``."""

    def __init__(self, out: Path, split: int | None, *, overwrite: bool = False, base: str = "") -> None:
        self.out = out
        self.base = f"{base}/" if base else ""  # every member inside it
        self.split = split
        self.overwrite = overwrite
        self.tmp: list[Path] = []
        self._files: list = []
        self.zf: zipfile.ZipFile | None = None
        self.members: dict[str, int] = {}  # name -> part number (1-based)

    def _roll(self) -> None:
        if self.zf is not None:
            self.zf.close()
        fd, path = temporary_beside(self.out, suffix=".tmp")  # .<name>.<random>.tmp, mode 0600
        self.tmp.append(path)
        self._files.append(os.fdopen(fd, "w+b"))
        self.zf = zipfile.ZipFile(self._files[-1], "w", compression=zipfile.ZIP_STORED, allowZip64=True)

    def open(self, name: str):
        if self.zf is None or (self.split and self.zf.fp.tell() >= self.split):
            self._roll()
        self.members[name] = len(self.tmp)
        info = zipfile.ZipInfo(self.base + name, date_time=datetime.now(UTC).timetuple()[:6])
        info.compress_type = zipfile.ZIP_STORED  # media is compressed already; stored members stream
        return self.zf.open(info, "w", force_zip64=True)

    def write(self, name: str, data: bytes) -> None:
        with self.open(name) as f:
            f.write(data)

    def finish(self) -> list[Path]:
        """Put every part in place (all or none); with ``overwrite``, parts of an earlier, longer bundle
        of the same name are removed. Raises OutputRefused when a part would replace a file."""
        self.zf.close()
        for f in self._files:
            f.flush()
            os.fsync(f.fileno())
            f.close()
        finals = part_names(self.out, len(self.tmp))
        placed = []
        try:
            for tmp, final in zip(self.tmp, finals):
                place(tmp, final, overwrite=self.overwrite)
                placed.append(final)
        except BaseException:
            if not self.overwrite:  # what this export put in place is incomplete: take it away again
                for final in placed:
                    final.unlink(missing_ok=True)
            raise
        if self.overwrite:
            for stale in set(part_files(self.out)) - set(finals):
                stale.unlink()
        return finals

    def abort(self) -> None:
        if self.zf is not None:
            try:
                self.zf.close()
            except Exception:  # noqa: BLE001 - already failing; remove what was written
                pass
        for f in self._files:
            f.close()
        for tmp in self.tmp:
            tmp.unlink(missing_ok=True)


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _file_name(part: dict) -> str:
    """A safe file name for a part: its name, with the extension of the file it was captured from."""
    ext = PurePosixPath(part.get("filename") or "").suffix.lower()
    if not re.fullmatch(r"\.[a-z0-9]{1,8}", ext or "."):
        ext = mimetypes.guess_extension((part.get("media_type") or "").split(";")[0].strip()) or ".bin"
    return _SAFE.sub("_", part["name"]) + ext


@dataclass
class Exported:
    paths: list[Path]
    records: list[str]
    files: int
    bytes: int
    manifest_sha256: str
    audit_seq: int
    custody: dict = field(default_factory=dict)


def export(archive, retention, ingestor, record_ids: Iterable[str], *, case: str, reason: str, actor: str,
           role: str, out: Path, split: int | None = None, progress: Callable[[int, int], None] | None = None,
           organization: str | None = None, overwrite: bool = False) -> Exported:
    """Write the bundle for ``record_ids`` to ``out`` (see the module); an existing file there is replaced
    only with ``overwrite``. Appends the export event to the audit log and signs a checkpoint that
    includes it. Raises ExportError, IntegrityError, OutputRefused."""
    signer = archive.keys.signer() if hasattr(archive.keys, "signer") else None
    if signer is None:
        raise ExportError("exports are signed: the key provider has no signing key")
    ids = list(dict.fromkeys(record_ids))
    if not ids:
        raise InputError("nothing to export: the selection matched no record")
    manifests = [retention.manifest(rid) for rid in ids]
    manifests.sort(key=lambda m: (parse_datetime(m["metadata"]["started_at"]), m["record_id"]))
    total = sum(p["size"] for m in manifests for p in m["parts"])
    out = Path(out)
    zipw = SplitZip(out, split, overwrite=overwrite, base=bag_directory(out))
    payload: dict[str, str] = {}  # path -> sha256
    sizes = 0
    done = 0
    holds = retention.held_records()
    try:
        entries = []
        for manifest in manifests:
            rid = manifest["record_id"]
            base = f"data/records/{rid}"
            files, custody = [], []
            for part in manifest["parts"]:
                name = f"{base}/{_file_name(part)}"
                digest = hashlib.sha256()
                size = 0
                with zipw.open(name) as f:
                    for chunk in ingestor.read_part(manifest, part["name"]):
                        f.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
                        done += len(chunk)
                        if progress:
                            progress(done, total)
                if digest.hexdigest() != part["sha256"] or size != part["size"]:
                    raise IntegrityError(f"record {rid} part {part['name']}: the content read back differs from "
                                         "what was captured; nothing exported", record_id=rid, part=part["name"])
                payload[name] = digest.hexdigest()
                sizes += size
                files.append({"part": part["name"], "path": name[len("data/"):], "media_type": part.get("media_type"),
                              "size": size})
                custody.append({
                    "part": part["name"],
                    "captured": {"sha256": part["sha256"], "size": part["size"], "filename": part.get("filename"),
                                 "origin": manifest.get("input", {}).get("origin"), "at": manifest.get("ingested_at")},
                    "sealed": ({"object": part["object"], "tag_digest": part.get("tag_digest"),
                                "format": "archive sealed format v1 (AES-256-GCM segments)"} if "object" in part else
                               {"inside": f"records/{rid}/manifest", "format": "sealed within the record's manifest"}),
                    "exported": {"sha256": digest.hexdigest(), "path": name},
                })
            meta = {"record_id": rid, "metadata": manifest["metadata"], "findings": manifest.get("findings", []),
                    "ingested_at": manifest.get("ingested_at"), "input": manifest.get("input"),
                    "parts": [{k: v for k, v in p.items() if k != "inline"} for p in manifest["parts"]]}
            docs = {
                f"{base}/metadata.json": meta,
                f"{base}/retention.json": {"decision": retention.decision(rid, manifest), "holds": holds.get(rid, [])},
                f"{base}/custody.json": {"record_id": rid, "parts": custody},
            }
            for name, doc in docs.items():
                raw = json.dumps(doc, ensure_ascii=False, indent=1, sort_keys=True).encode()
                zipw.write(name, raw)
                payload[name] = hashlib.sha256(raw).hexdigest()
                sizes += len(raw)
            entries.append((manifest, files))
        page = render_index(entries, case=case, reason=reason, actor=actor).encode()
        zipw.write("data/index.html", page)
        payload["data/index.html"] = hashlib.sha256(page).hexdigest()
        sizes += len(page)

        manifest_txt = "".join(f"{h}  {p}\n" for p, h in sorted(payload.items())).encode()
        manifest_sha = hashlib.sha256(manifest_txt).hexdigest()
        now = datetime.now(UTC).isoformat(timespec="seconds")
        # The export in the audit trail, naming the exact payload; then a checkpoint that includes it.
        seq = archive.audit.append(Event(actor=actor, role=role, action="export-bundle", target={
            "records": ids, "case": case, "bundle": out.name, "manifest_sha256": manifest_sha, "files": len(payload),
            "bytes": sizes}, reason=reason, case=case))
        head = archive.audit.checkpoint()
        events = _proofs(archive.audit, set(ids), seq, head)

        tags = {
            "bagit.txt": b"BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n",
            "bag-info.txt": "".join(f"{k}: {v}\n" for k, v in [
                ("Source-Organization", organization or "compliance archive"), ("Bagging-Date", now[:10]),
                ("Bag-Software-Agent", f"compliance-archive {__version__}"), ("External-Identifier", case),
                ("Internal-Sender-Description", f"Evidence for case {case}; reason: {reason}; exported by {actor}"),
                ("Payload-Oxum", f"{sizes}.{len(payload)}"), ("Bundle-Format", BUNDLE_FORMAT),
                ("Audit-Export-Seq", str(seq))]).encode(),
            "manifest-sha256.txt": manifest_txt,
            "audit/events.json": json.dumps(events, ensure_ascii=False, indent=1).encode(),
            "audit/checkpoint.json": json.dumps(head, indent=1, sort_keys=True).encode(),
        }
        for name, raw in tags.items():
            zipw.write(name, raw)
        tagmanifest = "".join(f"{hashlib.sha256(raw).hexdigest()}  {name}\n" for name, raw in sorted(tags.items())).encode()
        zipw.write("tagmanifest-sha256.txt", tagmanifest)
        signature = {"format": BUNDLE_FORMAT, "algorithm": "Ed25519", "key_id": signer.key_id,
                     "public_key": signer.public_key.hex(), "signed_file": "tagmanifest-sha256.txt",
                     "signature": base64.b64encode(signer.sign(tagmanifest)).decode(),
                     "parts": len(zipw.tmp)}
        zipw.write("signature.json", json.dumps(signature, indent=1).encode())
        paths = zipw.finish()
    except BaseException:
        zipw.abort()
        raise
    return Exported(paths, ids, len(payload), sizes, manifest_sha, seq)


def _proofs(audit, records: set[str], export_seq: int, head: dict) -> list[dict]:
    """The events that ingested these records and the export event, as logged, each with its inclusion
    proof against ``head``."""
    logged = list(audit.events())
    leaves = [e.leaf for e in logged[: head["size"]]]
    out = []
    for i, e in enumerate(logged[: head["size"]]):
        doc = e.event
        named = set(doc.get("target", {}).get("records", []))
        if e.seq == export_seq or (doc.get("action") == "ingest" and doc.get("outcome") == "ok" and named & records):
            out.append({"index": i, "seq": e.seq, "event": e.raw.decode(), "leaf_hash": e.leaf.hex(),
                        "path": [h.hex() for h in inclusion_proof(i, leaves)],
                        "records": sorted(named & records) if e.seq != export_seq else sorted(records)})
    return out


# --- index.html -------------------------------------------------------------------------------------------

_STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:0;color:#1b1b1b;background:#fafafa}
header{background:#17324d;color:#fff;padding:16px 24px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;opacity:.85}main{max-width:1100px;margin:0 auto;padding:16px 24px}
nav ol{columns:2;padding-left:20px}section.record{background:#fff;border:1px solid #ddd;border-radius:6px;
padding:12px 18px;margin:18px 0}section.record h2{font-size:17px;margin:4px 0 8px}
table.meta{border-collapse:collapse;font-size:14px}table.meta th{text-align:left;padding:2px 12px 2px 0;
color:#555;font-weight:600;vertical-align:top}table.meta td{padding:2px 0}
.thread{border-left:3px solid #c9d6e3;margin:10px 0;padding-left:12px}.msg{margin:6px 0}
.msg .who{font-weight:600}.msg .at{color:#666;font-size:12px;margin-left:6px}
.finding{color:#8a1c1c}audio,video{width:100%;max-width:640px;margin:8px 0}pre{white-space:pre-wrap}
code{font-size:13px}footer{color:#666;font-size:13px;padding:24px}
"""


# ('self' is the bundle's own folder when the page is opened from disk: its media play, nothing else loads)
INDEX_POLICY = ("default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; media-src 'self'; "
                "base-uri 'none'; form-action 'none'")


def _e(value) -> str:
    return html.escape(str(value if value is not None else ""), quote=True)


def render_index(entries: list[tuple[dict, list[dict]]], *, case: str, reason: str, actor: str) -> str:
    """A self-contained page (no scripts, no external resources) listing every record in time order. Its
    Content-Security-Policy lets it load nothing but its own style and the bundle's own media: whatever a
    record's text holds, opening the page fetches nothing from the network."""
    out = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
           f"<meta http-equiv='Content-Security-Policy' content=\"{INDEX_POLICY}\">",
           "<meta name='viewport' content='width=device-width, initial-scale=1'>",
           f"<title>Evidence bundle: {_e(case)}</title><style>{_STYLE}</style></head><body>",
           f"<header><h1>Evidence bundle for case {_e(case)}</h1>",
           f"<p>{len(entries)} record(s), exported by {_e(actor)} — reason: {_e(reason)}. Verify with "
           "<code>archive verify-bundle</code>; every file's SHA-256 is in manifest-sha256.txt.</p></header><main>",
           "<nav><h2>Records in time order</h2><ol>"]
    for manifest, _ in entries:
        meta = manifest["metadata"]
        out.append(f"<li><a href='#{_e(manifest['record_id'])}'>{_e(meta['started_at'][:19])} · "
                   f"{_e(meta['channel'])} · {_e(manifest['record_id'])}</a></li>")
    out.append("</ol></nav>")
    for manifest, files in entries:
        rid, meta = manifest["record_id"], manifest["metadata"]
        people = "; ".join(f"{p.get('role')}: {p.get('name') or p.get('id') or p.get('phone') or p.get('email') or ''}"
                           for p in meta.get("participants", []))
        rows = [("Record", rid), ("Channel", meta.get("channel")), ("Direction", meta.get("direction")),
                ("Started", meta.get("started_at")), ("Ended", meta.get("ended_at")),
                ("Participants", people), ("Source", f"{meta['source']['system']} / {meta['source']['interaction_id']}"),
                ("Business line", meta.get("business_line")), ("Product", meta.get("product")),
                ("Jurisdiction", meta.get("jurisdiction")), ("Subject", meta.get("subject")),
                ("Retention", f"{manifest['retention'].get('retain_until', '')} "
                              f"({', '.join(p['id'] for p in manifest['retention'].get('policies', []))})")]
        out.append(f"<section class='record' id='{_e(rid)}' data-record='{_e(rid)}'>"
                   f"<h2>{_e(meta['started_at'][:19])} — {_e(meta['channel'])}</h2><table class='meta'>")
        out += [f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows if v]
        out.append("</table>")
        for f in manifest.get("findings", []):
            out.append(f"<p class='finding'>Finding: {_e(f.get('code'))} {_e(f.get('detail', ''))}</p>")
        if meta.get("messages"):
            out.append("<div class='thread'>")
            for m in meta["messages"]:
                out.append(f"<div class='msg'><span class='who'>{_e(m.get('from') or m.get('role') or '')}</span>"
                           f"<span class='at'>{_e(m.get('at', ''))}</span><div>{_e(m.get('text', ''))}</div></div>")
            out.append("</div>")
        for f in files:
            kind = (f.get("media_type") or "").split("/")[0]
            href = _e(f["path"])
            if kind in ("audio", "video"):
                out.append(f"<{kind} controls preload='metadata' src='{href}'></{kind}>")
            out.append(f"<p>{_e(f['part'])}: <a href='{href}'>{href}</a> ({f['size']} bytes)</p>")
        out.append(f"<p><a href='records/{_e(rid)}/metadata.json'>metadata</a> · "
                   f"<a href='records/{_e(rid)}/retention.json'>retention</a> · "
                   f"<a href='records/{_e(rid)}/custody.json'>chain of custody</a></p></section>")
    out.append("</main><footer>Generated by compliance-archive. The signature (signature.json) covers "
               "tagmanifest-sha256.txt, which covers manifest-sha256.txt and the audit proofs.</footer></body></html>")
    return "\n".join(out)

