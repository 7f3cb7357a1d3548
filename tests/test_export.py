"""Evidence bundles: a mixed case (calls, a chat, an email, a dual-recording video session) exported by a
legal identity, verified offline with only the public key — then one byte altered, a file removed, a file
added and the signature swapped, each named by verify-bundle. Split bundles, access rules, the audit
trail, and index.html opened in a real headless Chromium. Outputs that never overwrite a file without
--force nor any of the archive's own; damaged ZIPs and malformed audit JSON named without a traceback; no
pass without a trusted key."""

from __future__ import annotations

import json
import os
import shutil
import stat
import struct
import subprocess
import zipfile
from pathlib import Path

import pytest

from tests.test_cli import cli_env, run
from tests.workerkit import wav_bytes

ROOT = Path(__file__).resolve().parent.parent


def _doc(iid: str, channel: str, started: str, **extra) -> dict:
    return {"schema": "archive-record/1", "source": {"system": "t", "interaction_id": iid}, "channel": channel,
            "started_at": started, "participants": [{"role": "agent", "id": "A7", "name": "Agent Seven"},
                                                    {"role": "customer", "id": "C-9", "account": "AC-9"}], **extra}


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """An archive holding a mixed case for customer C-9, and the env to act in it."""
    tmp = tmp_path_factory.mktemp("export")
    env = cli_env(tmp / "home", "admin")
    inbox = tmp / "inbox"
    inbox.mkdir()
    (inbox / "call-1.wav").write_bytes(wav_bytes(6.0, 1))
    (inbox / "call-1.json").write_text(json.dumps(_doc("call-1", "phone", "2024-03-01T09:00:00+08:00")))
    (inbox / "call-1.txt").write_text("Agent: this product is not a deposit.\nCustomer: I want a refund.\n")
    (inbox / "chat-2.json").write_text(json.dumps(_doc("chat-2", "chat", "2024-03-02T10:00:00Z", messages=[
        {"at": "2024-03-02T10:00:00Z", "from": "C-9", "text": "Where is my refund? <script>alert(1)</script>"},
        {"at": "2024-03-02T10:01:00Z", "from": "A7", "text": "It was sent today."}])))
    shutil.copy(ROOT / "tests" / "fixtures" / "email" / "attachments.eml", inbox / "mail-3.eml")
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=10:duration=3",
                    "-f", "lavfi", "-i", "sine=frequency=440:duration=3", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                    "-c:a", "aac", "-shortest", str(inbox / "dual-4.mp4")], check=True)
    (inbox / "dual-4.json").write_text(json.dumps(_doc(
        "dual-4", "video", "2024-03-04T15:00:00+08:00", business_line="bancassurance", product_type="unit-linked",
        jurisdiction="CN", contract_id="HU-4", contract_term="P5Y")))
    (inbox / "dual-4.txt").write_text("坐席：本产品不是存款，投资有风险。\n")
    run(env, "init")
    run(env, "identity", "add", "lee", "--role", "legal")
    run(env, "identity", "add", "ann", "--role", "auditor")
    run(env, "ingest", str(inbox))
    ids = [r["record_id"] for r in json.loads(run(env, "search", "", "--json").stdout)["records"]]
    assert len(ids) == 4
    key = tmp / "public-key.json"
    key.write_bytes(run(env, "keys", "public").stdout)
    return env, ids, tmp, key


def test_export_needs_the_legal_role_a_case_and_a_reason(case):
    env, ids, tmp, _ = case
    out = tmp / "denied.zip"
    proc = run({**env, "ARCHIVE_ACTOR": "ann"}, "export", *ids, "-o", str(out), "--case", "C1", "--reason", "r",
               check=False)
    assert proc.returncode == 77 and b"may not export" in proc.stderr
    proc = run({**env, "ARCHIVE_ACTOR": "lee"}, "export", *ids, "-o", str(out), "--reason", "r", check=False)
    assert proc.returncode == 77 and b"--case" in proc.stderr
    proc = run({**env, "ARCHIVE_ACTOR": "lee"}, "export", *ids, "-o", str(out), "--case", "C1", check=False)
    assert proc.returncode == 77 and b"reason" in proc.stderr
    assert not out.exists() and not list(tmp.glob(".denied*"))


def test_a_mixed_case_verifies_offline_and_every_tampering_is_named(case):
    env, ids, tmp, key = case
    bundle = tmp / "case-17.zip"
    out = json.loads(run({**env, "ARCHIVE_ACTOR": "lee"}, "export", *ids, "-o", str(bundle),
                         "--case", "CASE-17", "--reason", "complaint 17: customer disputes the sale", "--json").stdout)
    assert out["records"] == 4 and out["bundle"] == [str(bundle)]
    ok = run(env, "verify-bundle", str(bundle), "--public-key", str(key))
    assert b"bundle verified" in ok.stdout

    B = "case-17/"  # the bag's one base directory (RFC 8493 §4.2), named after the bundle
    with zipfile.ZipFile(bundle) as zf:
        names = zf.namelist()
        assert all(n.startswith(B) for n in names), names
        assert {B + n for n in ("bagit.txt", "bag-info.txt", "manifest-sha256.txt", "tagmanifest-sha256.txt",
                                "signature.json", "audit/events.json", "audit/checkpoint.json",
                                "data/index.html")} <= set(names)
        for rid in ids:
            assert {f"{B}data/records/{rid}/{n}.json" for n in ("metadata", "retention", "custody")} <= set(names)
        call = next(n for n in names if n.endswith("/audio.wav"))
        assert zf.read(call) == (tmp / "inbox" / "call-1.wav").read_bytes()  # decrypted, byte for byte
        assert any(n.endswith("/video.mp4") for n in names)
        assert "CASE-17" in zf.read(B + "bag-info.txt").decode()
        events = json.loads(zf.read(B + "audit/events.json"))
        assert {json.loads(e["event"])["action"] for e in events} == {"ingest", "export-bundle"}

    def tampered(name: str, change) -> Path:
        copy = tmp / f"t-{name}.zip"
        with zipfile.ZipFile(bundle) as src, zipfile.ZipFile(copy, "w") as dst:
            members = {n: src.read(n) for n in src.namelist()}
            change(members)
            for n, data in members.items():
                dst.writestr(n, data)
        return copy

    def flip(members):
        data = bytearray(members[call])
        data[len(data) // 2] ^= 1
        members[call] = bytes(data)

    other = tmp / "other.zip"
    run({**env, "ARCHIVE_ACTOR": "lee"}, "export", ids[0], "-o", str(other), "--case", "CASE-18", "--reason", "r")
    with zipfile.ZipFile(other) as zf:
        foreign = json.loads(zf.read("other/signature.json"))

    def swap_signature(members):
        sig = json.loads(members[B + "signature.json"])
        sig["signature"] = foreign["signature"]  # a genuine signature, of another bundle
        members[B + "signature.json"] = json.dumps(sig).encode()

    # findings name files as the bag's manifests do: inside the base directory
    cases = {
        "altered": (flip, [f"ALTERED   {call[len(B):]}"]),
        "removed": (lambda m: m.pop(f"{B}data/records/{ids[1]}/metadata.json"),
                    [f"MISSING   data/records/{ids[1]}/metadata.json"]),
        "added": (lambda m: m.__setitem__(f"{B}data/records/extra.txt", b"planted"),
                  ["ADDED     data/records/extra.txt"]),
        "outside": (lambda m: m.__setitem__("planted.txt", b"beside the bag"),
                    ["ADDED     planted.txt: outside the bag's base directory case-17/"]),
        "signature": (swap_signature, ["SIGNATURE signature.json"]),
    }
    for label, (change, expected) in cases.items():
        proc = run(env, "verify-bundle", str(tampered(label, change)), "--public-key", str(key), check=False)
        assert proc.returncode == 1, (label, proc.stdout)
        for line in expected:
            assert line.encode() in proc.stdout, (label, proc.stdout.decode())
    # all four at once: each is named
    everything = tampered("all", lambda m: [change(m) for change, _ in cases.values()])
    proc = run(env, "verify-bundle", str(everything), "--public-key", str(key), check=False)
    assert proc.returncode == 1
    for _, expected in cases.values():
        assert all(line.encode() in proc.stdout for line in expected), proc.stdout.decode()
    # a bag serialised at the root of the ZIP, as earlier exports are, still verifies, with a warning
    rooted = tmp / "rooted.zip"
    with zipfile.ZipFile(bundle) as src, zipfile.ZipFile(rooted, "w") as dst:
        for n in src.namelist():
            dst.writestr(n[len(B):], src.read(n))
    proc = run(env, "verify-bundle", str(rooted), "--public-key", str(key))
    assert b"bundle verified" in proc.stdout and b"without a base directory" in proc.stderr
    # a bundle signed by someone else's key is refused against the archive's key
    wrong_key = tmp / "wrong-key.json"
    wrong_key.write_text(json.dumps({json.loads(key.read_text()).popitem()[0]: "00" * 32}))
    assert run(env, "verify-bundle", str(bundle), "--public-key", str(wrong_key), check=False).returncode == 1

    # the export is in the audit trail of every record, with the case and the reason
    audit = run(env, "audit", "show", "--record", ids[0]).stdout.decode()
    assert "lee (legal)  export-bundle ok" in audit and "lee (legal)  export ok" in audit


def test_a_split_bundle_verifies_whole_and_a_missing_part_is_named(case):
    env, ids, tmp, key = case
    out = json.loads(run({**env, "ARCHIVE_ACTOR": "lee"}, "export", "--customer", "C-9", "-o", str(tmp / "split.zip"),
                         "--case", "CASE-19", "--reason", "r", "--split-size", "16K", "--json").stdout)
    assert out["records"] == 3  # the customer's calls, chat and video session (the email is another sender's)
    parts = [Path(p) for p in out["bundle"]]
    assert len(parts) >= 3 and all(p.name.startswith("split.part") for p in parts)
    assert b"bundle verified" in run(env, "verify-bundle", str(parts[-1]), "--public-key", str(key)).stdout
    parts[1].unlink()
    proc = run(env, "verify-bundle", str(parts[0]), "--public-key", str(key), check=False)
    assert proc.returncode == 1 and b"MISSING" in proc.stdout


def test_a_bundle_unzipped_is_a_valid_bag_for_the_library_of_congress_bagit_tool(case):
    """RFC 8493 as an independent implementation reads it (LoC's ``bagit`` from PyPI): one base directory
    holding the bag, complete and valid; a split bundle's parts unzipped together make that one bag."""
    import bagit

    env, ids, tmp, _ = case
    for name, extra in (("loc-bag.zip", []), ("loc-split.zip", ["--split-size", "16K"])):
        out = json.loads(run({**env, "ARCHIVE_ACTOR": "lee"}, "export", *ids, "-o", str(tmp / name), "--case", "CASE-21",
                             "--reason", "r", *extra, "--json").stdout)
        site = tmp / f"{name}.unzipped"
        for part in out["bundle"]:
            with zipfile.ZipFile(part) as zf:
                zf.extractall(site)
        assert [p.name for p in site.iterdir()] == [Path(name).stem], list(site.iterdir())
        root = site / Path(name).stem
        bag = bagit.Bag(str(root))
        bag.validate()  # raises BagValidationError naming what is wrong
        assert set(bag.payload_entries()) == {p.relative_to(root).as_posix() for p in (root / "data").rglob("*")
                                              if p.is_file()}
        assert bag.info["External-Identifier"] == "CASE-21"


def test_index_html_opens_in_headless_chromium_and_shows_every_record(case):
    env, ids, tmp, _ = case
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:  # a missing browser is a failure, not a skip
        pytest.fail("chromium not found: apt-get install -y chromium (scripts/test does)")
    bundle = tmp / "browse.zip"
    run({**env, "ARCHIVE_ACTOR": "lee"}, "export", *ids, "-o", str(bundle), "--case", "CASE-20", "--reason", "r")
    site = tmp / "browse"
    with zipfile.ZipFile(bundle) as zf:
        zf.extractall(site)
    page = (site / "browse" / "data" / "index.html").as_uri()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp / 'chromium-profile'}"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", page], capture_output=True, timeout=120, check=True).stdout
    dom = dom.decode()
    for rid in ids:
        assert f"data-record=\"{rid}\"" in dom, rid
    assert dom.count("<section class=\"record\"") == 4
    assert "<audio" in dom and "<video" in dom
    # whatever the records hold, the page loads nothing but its own style and the bundle's media
    assert "http-equiv=\"Content-Security-Policy\" content=\"default-src 'none';" in dom, dom[:600]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom and "<script>alert(1)" not in dom  # text, not markup
    shots = ROOT / "tests" / "screenshots"
    shots.mkdir(exist_ok=True)
    shot = shots / "export-index.png"
    shot.unlink(missing_ok=True)
    subprocess.run([chromium, *flags, "--hide-scrollbars", "--window-size=1280,1600", f"--screenshot={shot}", page],
                   capture_output=True, timeout=120, check=True)
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_export_never_overwrites_a_file_or_the_archive_and_writes_a_private_bundle(case):
    env, ids, tmp, key = case
    lee = {**env, "ARCHIVE_ACTOR": "lee"}
    home = Path(env["ARCHIVE_HOME"])
    keyring = home / "keyring.json"
    saved = keyring.read_bytes()
    (tmp / "to-keyring.zip").symlink_to(keyring)
    for target in (keyring, home / "identities.json", home / "case.zip", home / "store" / "case.zip",
                   tmp / "to-keyring.zip"):
        proc = run(lee, "export", ids[0], "-o", str(target), "--case", "C-O", "--reason", "r", "--force", check=False)
        assert proc.returncode == 73 and b"archive's own" in proc.stderr, (target, proc.stderr)
    assert keyring.read_bytes() == saved and not (home / "case.zip").exists()
    assert run(env, "object", "ls", "records/").returncode == 0  # the archive still opens
    existing = tmp / "existing.zip"
    existing.write_bytes(b"an earlier bundle")
    proc = run(lee, "export", ids[0], "-o", str(existing), "--case", "C-O", "--reason", "r", check=False)
    assert proc.returncode == 73 and b"--force" in proc.stderr and existing.read_bytes() == b"an earlier bundle"
    run(lee, "export", ids[0], "-o", str(existing), "--case", "C-O", "--reason", "r", "--force")
    assert stat.S_IMODE(existing.stat().st_mode) == 0o600
    assert b"bundle verified" in run(env, "verify-bundle", str(existing), "--public-key", str(key)).stdout
    assert not list(tmp.glob(".existing.zip*"))  # no temporary file left beside it


def _bundle(case, name: str) -> Path:
    env, ids, tmp, _ = case
    path = tmp / name
    if not path.exists():
        run({**env, "ARCHIVE_ACTOR": "lee"}, "export", *ids[:2], "-o", str(path), "--case", "C-V", "--reason", "r")
    return path


def test_verify_bundle_names_a_damaged_member_or_malformed_audit_json_without_a_traceback(case):
    env, ids, tmp, key = case
    bundle = _bundle(case, "verify-me.zip")
    with zipfile.ZipFile(bundle) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith("/metadata.json"))
    blob = bytearray(bundle.read_bytes())
    name_len, extra_len = struct.unpack("<HH", bytes(blob[info.header_offset + 26: info.header_offset + 30]))
    blob[info.header_offset + 30 + name_len + extra_len + 5] ^= 0x01  # a byte of the member (local header skipped)
    crc = tmp / "bad-crc.zip"
    crc.write_bytes(bytes(blob))
    proc = run(env, "verify-bundle", str(crc), "--public-key", str(key), check=False)
    assert proc.returncode == 1 and b"Traceback" not in proc.stderr, proc.stderr
    inside = info.filename.split("/", 1)[1]  # (named inside the bag's base directory)
    assert f"ALTERED   {inside}: the ZIP member fails its ZIP CRC-32 check".encode() in proc.stdout, proc.stdout

    for label, body, where in [("events-shape", b'[{"seq": 1}]', b"audit/events.json[0]"),
                               ("events-text", b"not json", b"audit/events.json"),
                               ("checkpoint-list", b"[]", b"audit/checkpoint.json")]:
        member = "verify-me/" + ("audit/checkpoint.json" if label.startswith("checkpoint") else "audit/events.json")
        copy = tmp / f"malformed-{label}.zip"
        with zipfile.ZipFile(bundle) as src, zipfile.ZipFile(copy, "w") as dst:
            for n in src.namelist():
                dst.writestr(n, body if n == member else src.read(n))
        proc = run(env, "verify-bundle", str(copy), "--public-key", str(key), check=False)
        assert proc.returncode == 1 and b"Traceback" not in proc.stderr, (label, proc.stderr)
        assert where in proc.stdout, (label, proc.stdout)
    not_a_zip = tmp / "not-a-zip.zip"
    not_a_zip.write_bytes(b"PK\x03\x04" + os.urandom(200))
    proc = run(env, "verify-bundle", str(not_a_zip), "--public-key", str(key), check=False)
    assert proc.returncode == 1 and b"Traceback" not in proc.stderr and b"not-a-zip.zip" in proc.stdout
    proc = run(env, "verify-bundle", str(bundle), "--public-key", "zz-not-hex", check=False)
    assert proc.returncode == 2 and b"--public-key" in proc.stderr and b"Traceback" not in proc.stderr


def test_verify_bundle_without_a_trusted_key_is_not_a_pass(case):
    env, ids, tmp, key = case
    bundle = _bundle(case, "verify-me.zip")
    proc = run(env, "verify-bundle", str(bundle), check=False)
    assert proc.returncode == 1 and b"no trusted public key" in proc.stdout and b"NOT verified" in proc.stdout
    proc = run(env, "verify-bundle", str(bundle), "--trust-bundle-key")
    assert b"INSIDE the bundle only" in proc.stdout and b"internally consistent" in proc.stdout
    assert b"bundle verified" in run(env, "verify-bundle", str(bundle), "--public-key", str(key)).stdout
