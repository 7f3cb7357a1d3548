"""Offline verification of an evidence bundle (:mod:`archive.export`), with nothing but the archive's
public signing key — no access to the archive, no network.

Checked: the Ed25519 signature over ``tagmanifest-sha256.txt``; every tag file against it; every payload
file against ``manifest-sha256.txt`` (each altered, missing or added file is named); Payload-Oxum; the
signed audit checkpoint; each audit event's RFC 6962 inclusion proof against it; that the export event
names this payload's manifest; that every record has its ingest event; and each record's chain of
custody (SHA-256 at capture = SHA-256 exported = the manifest's).

A bundle is verified only against a *trusted* public key (``--public-key``, from ``archive keys
public``): the key inside ``signature.json`` is the bundle's own word. Without a trusted key the verdict
is not a pass (a ``key`` finding) unless the caller asks to trust the bundle's key
(``trust_bundle_key``), which proves internal consistency only and says so. Whatever the bytes — a bad
CRC, a member that does not decompress, JSON that does not parse — verification ends in findings that
name the file, never in an exception.
"""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from archive.audit.log import signed_bytes
from archive.audit.merkle import leaf_hash, verify_inclusion

TAG_EXEMPT = {"tagmanifest-sha256.txt", "signature.json"}
# what reading a damaged or hostile ZIP member can raise: bad CRC (BadZipFile), bad deflate data, an
# unsupported compression method or a truncated member
_UNREADABLE = (zipfile.BadZipFile, zlib.error, NotImplementedError, EOFError, OSError, ValueError, RuntimeError)


@dataclass
class Finding:
    kind: str  # altered | missing | added | signature | proof | custody | format | key
    name: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind.upper():<9} {self.name}: {self.detail}"


@dataclass
class Verdict:
    parts: list[Path]
    files: int = 0
    records: int = 0
    findings: list[Finding] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings


def find_parts(path: Path) -> list[Path]:
    path = Path(path)
    m = re.fullmatch(r"(.*)\.part\d{3}(\.[^.]+)", path.name)
    stem, suffix = (m.group(1), m.group(2)) if m else (path.stem, path.suffix)
    parts = sorted(path.parent.glob(f"{glob_escape(stem)}.part[0-9][0-9][0-9]{glob_escape(suffix)}"))
    if parts:
        return parts
    return [path] if path.exists() else []


def bag_base(names: set[str]) -> str:
    """The base directory (with its slash) the bag is serialised in: the one top-level directory holding
    ``bagit.txt``; "" for a bag whose ``bagit.txt`` is at the root of the ZIP."""
    if "bagit.txt" in names:
        return ""
    bases = {n.split("/", 1)[0] + "/" for n in names if n.count("/") == 1 and n.endswith("/bagit.txt")}
    return bases.pop() if len(bases) == 1 else ""


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def load_public_key(text: str | None) -> dict[str, bytes] | None:
    """Trusted keys from ``--public-key``: a file or a value — hex, or JSON {key id: hex} as printed by
    ``archive keys public``. Raises InputError naming what is wrong."""
    from archive.errors import InputError

    if not text:
        return None
    p = Path(text)
    try:
        raw = p.read_text().strip() if p.is_file() else text.strip()
        if raw.startswith("{"):
            doc = json.loads(raw)
            keys = {k: bytes.fromhex(v if isinstance(v, str) else v["public_key"]) for k, v in doc.items()}
        else:
            keys = {"*": bytes.fromhex(raw)}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise InputError(f"--public-key {text}: not a public key (hex, or the JSON of 'archive keys public'): "
                         f"{type(e).__name__}") from None
    if not keys or any(len(v) != 32 for v in keys.values()):
        raise InputError(f"--public-key {text}: an Ed25519 public key is 32 bytes (64 hex digits)")
    return keys


def _verify_sig(public: bytes, signature: bytes, message: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
        return True
    except (InvalidSignature, ValueError):
        return False


def verify_bundle(path: Path, trusted: dict[str, bytes] | None = None, *, trust_bundle_key: bool = False) -> Verdict:
    """Check the bundle at ``path`` (any of its part files) against the ``trusted`` public keys (key id →
    key; ``"*"`` for one key of any id). Without them the verdict fails unless ``trust_bundle_key``."""
    verdict = Verdict(find_parts(path))
    try:
        _verify(path, trusted, trust_bundle_key, verdict)
    except Exception as e:  # noqa: BLE001 - whatever the bytes are, the answer is a finding, not a traceback
        verdict.findings.append(Finding("format", Path(path).name, f"the bundle cannot be read: {type(e).__name__}: {e}"))
    return verdict


def _verify(path: Path, trusted: dict[str, bytes] | None, trust_bundle_key: bool, verdict: Verdict) -> None:
    import base64

    parts = verdict.parts
    bad = verdict.findings.append
    if not parts:
        bad(Finding("missing", str(path), "no such bundle"))
        return
    found: list[tuple[zipfile.ZipFile, zipfile.ZipInfo]] = []
    zips = []
    for part in parts:
        try:
            zf = zipfile.ZipFile(part)
        except (zipfile.BadZipFile, OSError) as e:
            bad(Finding("format", part.name, f"not a readable ZIP file: {e}"))
            continue
        zips.append(zf)
        found += [(zf, info) for info in zf.infolist() if not info.is_dir()]
    base = bag_base({info.filename for _, info in found})
    if found and not base:
        verdict.warnings.append("the bag is serialised without a base directory (RFC 8493 §4.2 asks for one), "
                                "as earlier exports are")
    members: dict[str, tuple[zipfile.ZipFile, zipfile.ZipInfo]] = {}
    for zf, info in found:
        name = info.filename[len(base):] if info.filename.startswith(base) else info.filename
        if not info.filename.startswith(base):
            bad(Finding("added", info.filename, f"outside the bag's base directory {base}"))
            continue
        if name in members:
            bad(Finding("added", name, "appears more than once"))
        members[name] = (zf, info)

    unreadable: set[str] = set()

    def damaged(name: str, e: Exception) -> None:
        if name not in unreadable:
            unreadable.add(name)
            why = "fails its ZIP CRC-32 check" if "CRC" in str(e) else f"cannot be read ({type(e).__name__}: {e})"
            bad(Finding("altered", name, f"the ZIP member {why}: damaged or altered"))

    def read(name: str) -> bytes | None:
        if name not in members or name in unreadable:
            return None
        zf, info = members[name]
        try:
            with zf.open(info) as f:
                return f.read()
        except _UNREADABLE as e:
            damaged(name, e)
            return None

    def digest(name: str) -> str | None:
        zf, info = members[name]
        h = hashlib.sha256()
        try:
            with zf.open(info) as f:
                for chunk in iter(lambda: f.read(1024 * 1024), b""):
                    h.update(chunk)
        except _UNREADABLE as e:
            damaged(name, e)
            return None
        return h.hexdigest()

    try:
        # --- signature -----------------------------------------------------------------------------------
        sig_raw, tagmanifest = read("signature.json"), read("tagmanifest-sha256.txt")
        signature = None
        if sig_raw is None:
            bad(Finding("missing", "signature.json", "the bundle is not signed"))
        else:
            try:
                signature = json.loads(sig_raw)
                sig_bytes = base64.b64decode(signature["signature"], validate=True)
            except (ValueError, KeyError, TypeError):
                bad(Finding("signature", "signature.json", "not a signature document"))
                signature = None
        public = None
        if signature is not None:
            if trusted is None:
                try:
                    public = bytes.fromhex(str(signature.get("public_key", "")))
                except ValueError:
                    bad(Finding("signature", "signature.json", "its public key is not hex"))
                if trust_bundle_key:
                    verdict.warnings.append("checked against the public key INSIDE the bundle (--trust-bundle-key): "
                                            "this proves only that the bundle is internally consistent, not that "
                                            "the archive made it; pass --public-key with the archive's key "
                                            "(archive keys public) for that")
                else:
                    bad(Finding("key", "signature.json", "no trusted public key: the bundle's own key proves only "
                                                         "internal consistency; pass --public-key with the "
                                                         "archive's key (archive keys public), or "
                                                         "--trust-bundle-key to accept that"))
            else:
                public = trusted.get(signature.get("key_id")) or trusted.get("*")
                if public is None:
                    bad(Finding("key", "signature.json", f"signed with key {signature.get('key_id')!r}, which is not "
                                                         "among the trusted public keys"))
            if public and tagmanifest is not None and not _verify_sig(public, sig_bytes, tagmanifest):
                bad(Finding("signature", "signature.json", "the signature does not match tagmanifest-sha256.txt "
                                                           "under the public key"))
            if signature.get("parts") not in (None, len(parts)):
                bad(Finding("missing", "bundle", f"{signature['parts']} part file(s) were written, "
                                                 f"{len(parts)} found beside {Path(path).name}"))
        if tagmanifest is None:
            bad(Finding("missing", "tagmanifest-sha256.txt", "the tag manifest is missing"))
            tagmanifest = b""

        # --- tag files and payload ---------------------------------------------------------------------
        tags = _manifest(tagmanifest, "tagmanifest-sha256.txt", bad)
        for name, want in tags.items():
            if name not in members:
                bad(Finding("missing", name, "listed in tagmanifest-sha256.txt, not in the bundle"))
            elif name not in unreadable and digest(name) not in (want, None):
                bad(Finding("altered", name, "SHA-256 differs from tagmanifest-sha256.txt"))
        payload = _manifest(read("manifest-sha256.txt") or b"", "manifest-sha256.txt", bad)
        if "manifest-sha256.txt" not in members:
            bad(Finding("missing", "manifest-sha256.txt", "the payload manifest is missing"))
        total = 0
        for name, want in payload.items():
            if name not in members:
                bad(Finding("missing", name, "listed in manifest-sha256.txt, not in the bundle"))
                continue
            total += members[name][1].file_size
            if name not in unreadable and digest(name) not in (want, None):
                bad(Finding("altered", name, "SHA-256 differs from manifest-sha256.txt"))
        for name in sorted(members):
            if name.startswith("data/") and name not in payload:
                bad(Finding("added", name, "in the bundle, not in manifest-sha256.txt"))
            elif not name.startswith("data/") and name not in tags and name not in TAG_EXEMPT:
                bad(Finding("added", name, "in the bundle, not in tagmanifest-sha256.txt"))
        verdict.files = len(payload)
        info = dict(line.split(": ", 1) for line in (read("bag-info.txt") or b"").decode("utf-8", "replace").splitlines()
                    if ": " in line)
        if info.get("Payload-Oxum") != f"{total}.{len(payload)}" and not any(
                f.kind == "missing" for f in verdict.findings):
            bad(Finding("altered", "bag-info.txt", f"Payload-Oxum {info.get('Payload-Oxum')} but the payload is "
                                                   f"{total}.{len(payload)}"))

        # --- audit proofs ------------------------------------------------------------------------------
        records = sorted({n.split("/")[2] for n in payload if n.startswith("data/records/")})
        verdict.records = len(records)
        _verify_audit(read, payload, records, public, manifest_sha=hashlib.sha256(read("manifest-sha256.txt") or b"")
                      .hexdigest(), bad=bad)

        # --- chain of custody ----------------------------------------------------------------------------
        for rid in records:
            name = f"data/records/{rid}/custody.json"
            raw = read(name)
            if raw is None:
                continue  # reported as missing above
            try:
                for part in json.loads(raw)["parts"]:
                    path_ = part["exported"]["path"]
                    if part["captured"]["sha256"] != part["exported"]["sha256"]:
                        bad(Finding("custody", path_, "exported SHA-256 differs from the SHA-256 at capture"))
                    if payload.get(path_) not in (None, part["exported"]["sha256"]):
                        bad(Finding("custody", path_, "manifest SHA-256 differs from the chain of custody"))
            except (ValueError, KeyError, TypeError, AttributeError):
                bad(Finding("format", name, "not a chain-of-custody document"))
    finally:
        for zf in zips:
            zf.close()


def _manifest(raw: bytes, name: str, bad) -> dict[str, str]:
    out = {}
    for i, line in enumerate(raw.decode("utf-8", "replace").splitlines(), 1):
        m = re.fullmatch(r"([0-9a-f]{64}) {1,2}(\S.*)", line)
        if not m:
            bad(Finding("format", f"{name}:{i}", "not '<sha256>  <path>'"))
            continue
        out[m.group(2)] = m.group(1)
    return out


def _verify_audit(read, payload, records, public, *, manifest_sha: str, bad) -> None:
    raw_head, raw_events = read("audit/checkpoint.json"), read("audit/events.json")
    if raw_head is None or raw_events is None:
        return  # missing tag files are reported by the tag manifest check
    try:
        head = json.loads(raw_head)
        root = bytes.fromhex(head["root"])
        size = int(head["size"])
    except (ValueError, KeyError, TypeError, AttributeError):
        bad(Finding("format", "audit/checkpoint.json", "not a signed checkpoint (JSON with root, size, signature)"))
        return
    try:
        events = json.loads(raw_events)
        if not isinstance(events, list):
            raise TypeError("not a list")
    except (ValueError, TypeError) as e:
        bad(Finding("format", "audit/events.json", f"not a list of audit events with proofs ({e})"))
        return
    try:
        signature = bytes.fromhex(head.get("signature", ""))
        if public and not _verify_sig(public, signature, signed_bytes(head)):
            raise ValueError("does not verify")
    except (ValueError, KeyError, TypeError, AttributeError):
        bad(Finding("signature", "audit/checkpoint.json", "the checkpoint's signature does not verify"))
    ingested, export = set(), None
    for i, e in enumerate(events):
        try:
            raw = e["event"].encode()
            leaf = leaf_hash(raw)
            proof = [bytes.fromhex(h) for h in e["path"]]
            included = leaf.hex() == e["leaf_hash"] and verify_inclusion(leaf, int(e["index"]), size, proof, root)
            doc = json.loads(raw) if included else None
            if included and not isinstance(doc, dict):
                raise TypeError("the event is not a JSON object")
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as err:
            bad(Finding("format", f"audit/events.json[{i}]", f"not an audit event with its proof ({type(err).__name__})"))
            continue
        if not included:
            bad(Finding("proof", f"audit event {e.get('seq')}", "not included in the signed checkpoint"))
            continue
        target = doc.get("target") if isinstance(doc.get("target"), dict) else {}
        if doc.get("action") == "export-bundle":
            export = target
        elif doc.get("action") == "ingest" and isinstance(target.get("records"), list):
            ingested |= {r for r in target["records"] if isinstance(r, str)}
    if export is None:
        bad(Finding("proof", "audit/events.json", "no export event"))
    elif export.get("manifest_sha256") != manifest_sha:
        bad(Finding("proof", "manifest-sha256.txt", "the export event names a different payload manifest"))
    for rid in records:
        if rid not in ingested:
            bad(Finding("proof", f"record {rid}", "no proven ingest event"))
