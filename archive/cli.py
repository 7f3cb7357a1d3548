"""The ``archive`` command: a thin edge over the library.

Each command builds settings from the environment, opens the archive, calls one library function and
turns an ArchiveError into a one-line message on stderr and its exit status; an unexpected error is a
one-line message too (exit 70), after :class:`archive.access.Session` has recorded it. No stack traces;
``ARCHIVE_DEBUG=1`` shows them. Everything printed for people goes through :func:`archive.text.printable`
(control, bidi and invisible characters escaped); ``--json`` output escapes them as JSON does
(:func:`archive.text.json_text`); messages never carry a URL's credentials (:func:`archive.text.redact`).
Files asked for with ``-o`` are written through :mod:`archive.files`: never over an existing file without
``--force``, never over the archive's own files, and only whole.
"""

from __future__ import annotations

import argparse
import codecs
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from archive.crypto.stream import Binding
from archive.dates import parse_datetime, parse_duration
from archive.access import Identities, Session
from archive.errors import ArchiveError, InputError
from archive.services import Archive, init_archive, open_archive
from archive.settings import Settings
from archive.text import TerminalStream, json_text, meaningful, printable, redact

EX_SOFTWARE = 70  # an unexpected error (a bug): sysexits' internal software error


def _out(doc: object) -> None:
    print(json_text(json.dumps(doc, indent=1, default=str, ensure_ascii=False)))


def _retain_until(args: argparse.Namespace) -> datetime | None:
    if getattr(args, "retain_until", None):
        return parse_datetime(args.retain_until)
    if getattr(args, "retain", None):
        return parse_duration(args.retain).after(datetime.now(UTC))
    return None


def _info(info) -> dict:
    return {"key": info.key, "size": info.size, "retain_until": info.retain_until,
            "mode": info.mode.value if info.mode else None, "legal_hold": info.legal_hold,
            "version_id": info.version_id}


# --- commands --------------------------------------------------------------------------------------


def cmd_init(settings: Settings, args: argparse.Namespace) -> int:
    _, done = init_archive(settings, create_bucket=args.create_bucket)
    for line in done:
        print(line)
    return 0


def cmd_put(archive: Archive, args: argparse.Namespace) -> int:
    src = Path(args.file)
    name = args.name or src.name
    with open(src, "rb") as f:
        receipt = archive.vault.seal(name, f, Binding(args.record_id or name, args.part),
                                     retain_until=_retain_until(args), mode=args.mode,
                                     legal_hold=args.legal_hold)
    doc = json.loads(receipt.to_bytes())
    doc.pop("wrapped_key")
    _out(doc)
    return 0


def _output(archive: Archive, args: argparse.Namespace) -> Path | None:
    """Where ``-o`` asks a command to write (None: standard output), checked before anything is read:
    never an existing file without --force, never the archive's own files. Raises OutputRefused."""
    from archive.files import check_output, protected_paths

    if getattr(args, "output", None) in (None, "-"):
        return None
    return check_output(args.output, protected_paths(archive.settings), force=args.force)


def _write_output(chunks, output: Path | None, *, force: bool = False) -> None:
    """Write verified chunks to stdout, or to ``output`` (checked by :func:`_output`) through a temporary
    file (mode 0600) renamed only when every chunk verified: a tampered object never leaves a half-written
    file that looks like evidence. On a terminal, text is shown with control characters escaped."""
    from archive.files import atomic_file

    if output is None:
        if sys.stdout.isatty():
            decoder = codecs.getincrementaldecoder("utf-8")("backslashreplace")
            for chunk in chunks:
                sys.stdout.write(printable(decoder.decode(chunk), newlines=True))
            sys.stdout.write(printable(decoder.decode(b"", final=True), newlines=True))
            return
        sys.stdout.flush()
        for chunk in chunks:
            sys.stdout.buffer.write(chunk)
        return
    with atomic_file(output, overwrite=force) as out:
        for chunk in chunks:
            out.write(chunk)


def _range(text: str | None) -> tuple[int | None, int | None]:
    if not text:
        return None, None
    start, _, end = text.partition("-")
    return int(start), int(end) if end else None


def cmd_object_get(archive: Archive, args: argparse.Namespace) -> int:
    binding = Binding(args.record_id, args.part) if args.record_id and args.part else None
    output = _output(archive, args)
    start, end = _range(args.range)
    if start is not None:
        chunks = iter([archive.vault.read_range(args.name, start, end if end is not None else 2**63, binding)])
    else:
        chunks = archive.vault.open(args.name, binding, verify_digest=args.verify)
    _write_output(chunks, output, force=args.force)
    return 0


def cmd_head(archive: Archive, args: argparse.Namespace) -> int:
    receipt = archive.vault.receipt(args.name)
    doc = json.loads(receipt.to_bytes())
    doc["kek_id"] = doc.pop("wrapped_key")["kek_id"]
    _out({"receipt": doc, "object": _info(archive.vault.head(args.name))})
    return 0


def cmd_ls(archive: Archive, args: argparse.Namespace) -> int:
    for name in archive.vault.names(args.prefix):
        print(printable(name))
    return 0


def cmd_hold(archive: Archive, args: argparse.Namespace) -> int:
    if args.state == "on":
        archive.vault.set_legal_hold(args.name, True)
        _out(_info(archive.vault.head(args.name)))
        return 0
    # Releasing a hold takes two people: this records the request; a second legal identity approves it.
    request_id = _retention(archive).request_release(object_name=args.name, by=args.actor or archive.settings.actor,
                                                     reason=args.reason)
    args.audit_target["request"] = request_id
    print(f"release of the hold on {printable(args.name)} requested: {request_id}\n"
          f"a second, different legal identity must run: archive approve {request_id} --reason ...")
    return 0


def cmd_approve(archive: Archive, args: argparse.Namespace) -> int:
    done = _retention(archive).approve(args.request_id, by=args.actor or archive.settings.actor, reason=args.reason)
    target = done["target"]
    args.audit_target.update({"request": args.request_id, **target})
    if "case" in target:
        args.audit_target["records"] = done["released"]
        _out({"approved": args.request_id, "requested_by": done["requested_by"], "case": target["case"],
              "released": done["released"]})
    else:
        _out({"approved": args.request_id, "requested_by": done["requested_by"],
              **_info(archive.vault.head(target["object"]))})
    return 0


def cmd_extend(archive: Archive, args: argparse.Namespace) -> int:
    until = _retain_until(args)
    if until is None:
        raise InputError("archive object extend: give --retain-until DATE or --retain DURATION")
    archive.vault.extend_retention(args.name, until, args.mode)
    _out(_info(archive.vault.head(args.name)))
    return 0


def cmd_delete(archive: Archive, args: argparse.Namespace) -> int:
    archive.vault.delete(args.name, bypass_governance=args.bypass_governance)
    print(f"deleted {printable(args.name)}")
    return 0


def cmd_keys_status(archive: Archive, args: argparse.Namespace) -> int:
    usage = archive.vault.kek_usage()
    _out({"provider": archive.keys.name, "current": archive.keys.current_kek(),
          "keks": [{"kek_id": k.kek_id, "state": k.state, "created": k.created, "objects": usage.pop(k.kek_id, 0)}
                   for k in archive.keys.keks()],
          **({"other_keks_in_use": usage} if usage else {})})
    return 0


def cmd_keys_rotate(archive: Archive, args: argparse.Namespace) -> int:
    if args.signing:
        if not hasattr(archive.keys, "rotate_signing"):
            raise ArchiveError(f"the {archive.keys.name} key provider has no checkpoint signing keys")
        key_id = archive.keys.rotate_signing()
        archive.audit.signer = archive.keys.signer()
        archive.audit.publish_key()
        _out({"signing_key": key_id, "note": "older checkpoints stay verifiable with the retired keys"})
        return 0
    report = archive.vault.rotate(new_kek=not args.rewrap_only)
    _out(report.__dict__)
    return 1 if report.failed else 0


def cmd_keys_destroy(archive: Archive, args: argparse.Namespace) -> int:
    archive.vault.destroy_kek(args.kek_id)
    print(f"destroyed {args.kek_id}")
    return 0


# --- records ---------------------------------------------------------------------------------------


def _retention(archive: Archive):
    from archive.services import services_for

    return services_for(archive).retention


def _ingestor(archive: Archive):
    from archive.services import services_for

    return services_for(archive).ingestor


def cmd_ingest(archive: Archive, args: argparse.Namespace) -> int:
    from archive.ingest.discover import Limits
    from archive.ingest.journal import Journals
    from archive.ingest.pipeline import as_json

    ingestor = _ingestor(archive)
    show_progress = sys.stderr.isatty() and not args.json

    def progress(summary) -> None:
        done = summary.archived + summary.duplicate + summary.conflict + summary.rejected
        print(f"\r{done} inputs: {summary.archived} archived, {summary.duplicate} duplicate, "
              f"{summary.conflict} conflict, {summary.rejected} rejected", end="", file=sys.stderr, flush=True)

    # Runs that died before recording what they committed: index it, and name it in this run's event.
    journals = Journals(archive.settings.home / "ingest-journal")
    dead = journals.dead()
    recovered = ingestor.recover(dead.records)
    journal = journals.start()
    summary = ingestor.run([Path(p) for p in args.paths], limits=Limits.of(archive.settings),
                           progress=progress if show_progress else None, journal=journal)
    args.audit_target.update({"records": sorted({r for o in summary.outcomes for r in o.record_ids} | set(recovered)),
                              "inputs": len(summary.outcomes), "archived": summary.archived,
                              "duplicate": summary.duplicate, "conflict": summary.conflict,
                              "rejected": summary.rejected,
                              **({"recovered": recovered, "recovered_runs": dead.runs} if recovered else {})})
    args.after_audit = [journal.close, dead.close]  # once the event naming the records is recorded
    if show_progress:
        print(file=sys.stderr)
    if recovered:
        print(f"recovered {len(recovered)} record(s) committed by an interrupted run: indexed, audited now",
              file=sys.stderr)
    if args.json:
        _out({**as_json(summary), **({"recovered": recovered} if recovered else {})})
    else:
        for o in summary.outcomes:
            if o.status in ("rejected", "conflict"):
                print(f"{o.status:<10} {o.origin}{' -> ' + ', '.join(o.record_ids) if o.record_ids else ''}\n"
                      f"           [{o.code}] {o.reason}")
            elif args.verbose or o.status == "duplicate":
                word = "archived " if o.status == "archived" else "duplicate"
                print(f"{word}  {o.origin} -> {', '.join(o.record_ids)}")
        print(f"archived {summary.archived}, duplicate {summary.duplicate}, conflict {summary.conflict}, "
              f"rejected {summary.rejected}")
    return 1 if summary.rejected or summary.conflict else 0


def _record(retention, record_id: str) -> dict:
    from archive.errors import ObjectNotFound

    if not record_id.startswith("r"):
        raise ObjectNotFound(f"no record {record_id!r}", record_id=record_id)
    return retention.manifest(record_id)


def _line(record: dict) -> str:
    """One line of a search or timeline: who, when, which channel and parts (never content)."""
    meta = record["metadata"]
    who = ", ".join(str(p.get("name") or p.get("id") or p["role"]) for p in meta["participants"])
    parts = ",".join(p["name"] for p in record["parts"])
    return printable(f"{record['record_id']}  {meta['started_at'][:19]}  {meta['channel']:<9} {who}  [{parts}]")


def cmd_show(archive: Archive, args: argparse.Namespace) -> int:
    retention = _retention(archive)
    manifest = _record(retention, args.record_id)
    if args.json:
        _out(manifest)
        return 0
    meta = manifest["metadata"]
    print(_line(manifest))
    print(f"  source      {printable(meta['source']['system'])} {printable(meta['source']['interaction_id'])}")
    for key in ("direction", "ended_at", "duration_s", "business_line", "product", "jurisdiction", "language",
                "subject"):
        if meta.get(key) is not None:
            print(f"  {key:<13} {printable(meta[key])}")
    for p in meta["participants"]:
        print("  participant " + " ".join(f"{k}={printable(p[k])}" for k in ("role", "id", "name", "phone", "email",
                                                                             "account") if p.get(k)))
    for part in manifest["parts"]:
        media = part.get("media") or {}
        extra = " ".join(f"{k}={media[k]}" for k in ("codec", "duration_s", "channels", "sample_rate") if media.get(k))
        print(f"  part        {part['name']:<12} {part['size']:>10} B  sha256={part['sha256'][:16]}…  "
              f"{printable(extra)}")
    decision = retention.decision(manifest["record_id"], manifest)
    pending = "" if decision["final"] else f", provisional: waiting for {', '.join(decision['pending'])}"
    print(f"  retained    until {decision['retain_until']} under {decision['governing']}{pending}")
    cases = retention.held_records().get(manifest["record_id"], [])
    if cases:
        print(f"  legal hold  {', '.join(cases)}")
    for f in manifest.get("findings", []):
        print(f"  finding     {f['code']}: {printable(f['detail'])}")
    for m in meta.get("messages", [])[: args.messages]:
        print(f"  {printable(m['at'][:19])}  {printable(m['from'])}: {printable((m.get('text') or '').strip()[:200])}")
    return 0


def cmd_get(archive: Archive, args: argparse.Namespace) -> int:
    ingestor = _ingestor(archive)
    output = _output(archive, args)
    manifest = _record(ingestor.retention, args.record_id)
    start, end = _range(args.range)
    _write_output(ingestor.read_part(manifest, args.part, start, end), output, force=args.force)
    return 0


def _shown(records: list[dict], args: argparse.Namespace) -> list[dict]:
    """Search results as --json prints them: the records as indexed (message text, account numbers) only
    with a stated reason, which the search's audit event records; else summaries, as the API gives."""
    from archive.search.document import summary

    return records if meaningful(args.reason) else [summary(r) for r in records]


def cmd_search(archive: Archive, args: argparse.Namespace) -> int:
    from archive.index import open_index

    facets = tuple(f.strip() for f in (args.facets or "").split(",") if f.strip())
    page = open_index(archive.settings).query(" ".join(args.query), limit=args.limit, cursor=args.cursor,
                                                          facets=facets, total=True)
    args.audit_target.update(results=page.total, records=[r["record_id"] for r in page.records],
                             content=args.json and meaningful(args.reason))
    if args.json:
        _out({"total": page.total, "records": _shown(page.records, args), "next": page.next,
              "facets": {k: [{"value": v, "count": n} for v, n in vs] for k, vs in page.facets.items()}})
        return 0
    for record in page.records:
        print(_line(record))
    for name, counts in page.facets.items():
        print(f"  {printable(name)}: " + ", ".join(f"{printable(v)} ({n})" for v, n in counts))
    more = f"; next page: --cursor {page.next}" if page.next else ""
    print(f"{len(page.records)} of {page.total} record(s){more}", file=sys.stderr)
    return 0


def cmd_timeline(archive: Archive, args: argparse.Namespace) -> int:
    from archive.index import open_index

    field_name, value = next((f, v) for f, v in (("customer.id", args.customer), ("customer.account", args.account),
                                                 ("customer.phone", args.phone)) if v)
    records = open_index(archive.settings).timeline(field_name, value)
    args.audit_target.update({"timeline": {field_name: value}, "results": len(records),
                              "records": [r["record_id"] for r in records],
                              "content": args.json and meaningful(args.reason)})
    if args.json:
        _out(_shown(records, args))
        return 0
    for record in records:
        print(_line(record))
    print(f"{len(records)} interaction(s) of {field_name} {printable(value)}, oldest first", file=sys.stderr)
    return 0


def cmd_reindex(archive: Archive, args: argparse.Namespace) -> int:
    from archive.index import check

    retention = _retention(archive)
    show = sys.stderr.isatty() and not getattr(args, "json", False)
    progress = (lambda n: print(f"\r{n} records", end="", file=sys.stderr)) if show else None
    if args.check:
        result = check.check_index(retention, progress=progress)
        if show:
            print(file=sys.stderr)
        args.audit_target.update({"index": "check", "entries": result.entries,
                                  "mismatches": len(result.mismatches),
                                  **({"records": sorted({m.record_id for m in result.mismatches})}
                                     if result.mismatches else {})})
        if args.json:
            _out(result.as_dict())
        else:
            for m in result.mismatches:
                print(f"MISMATCH  [{m.kind}] {m.message}")
            print(f"index check: {result.entries} index entries, {result.records_in_store} records in the store; "
                  f"{len(result.mismatches)} mismatch(es)")
        return 0 if result.ok else 1
    count, dropped = check.rebuild(retention, progress=progress)
    if show:
        print(file=sys.stderr)
    args.audit_target["records_indexed"] = count
    if dropped:  # a record deleted from the store leaves this trace in the trail
        args.audit_target["dropped"] = dropped
        for rid in dropped:
            print(f"DROPPED  {rid}: indexed before, not in the store now (disposed of, or deleted from the store)")
    print(f"index rebuilt from the store: {count} record(s)" + (f"; {len(dropped)} index entr(ies) dropped"
                                                                if dropped else ""))
    return 0


def cmd_fixity(archive: Archive, args: argparse.Namespace) -> int:
    from archive import fixity
    from archive.dates import parse_duration

    retention = _retention(archive)
    show = sys.stderr.isatty() and not args.json

    def progress(summary) -> None:
        print(f"\r{summary['records']} records, {summary['objects']} objects, {len(summary['failed'])} failed",
              end="", file=sys.stderr, flush=True)

    summary = fixity.sweep(retention, audit_retention=parse_duration(archive.settings.audit_retention),
                           record_ids=args.record or None, limit=args.limit, progress=progress if show else None)
    retention.index.flush()
    if show:
        print(file=sys.stderr)
    failed = [f["record_id"] for f in summary["failed"]]
    findings = summary["reconciliation"]["findings"]
    # the records a finding was sealed for are named, so each one's trail shows the failed check
    args.audit_target.update({"records_checked": summary["records"], **({"records": failed} if failed else {}),
                              **({"reconciliation_findings": len(findings)} if findings else {})})
    if args.json:
        _out(summary)
    else:
        for f in summary["failed"]:
            for problem in f["problems"]:
                print(f"FAILED  {f['record_id']}  {problem['object']}: {problem['problem']}")
        for f in findings:
            if "record_id" not in f:
                print(f"FAILED  {f['object']}: {f['message']}")
        for name in summary["orphans"]:
            print(f"orphan  {name}: sealed without a seal receipt (a crash while writing it); not part of any "
                  "record, never read")
        rec = summary["reconciliation"]
        print(f"fixity: {summary['records']} record(s), {summary['objects']} object(s), "
              f"{summary['bytes']} bytes read back; {len(summary['failed'])} failed; audit trail reconciled: "
              f"{rec['records_in_trail']} record(s) ingested, {rec['present']} present, {rec['disposed']} disposed, "
              f"{len(findings)} finding(s); {len(summary['orphans'])} orphan(s)")
    return 1 if summary["failed"] or findings else 0


def cmd_status(archive: Archive, args: argparse.Namespace) -> int:
    from archive.coordination import Coordinator
    from archive.services import services_for

    settings = archive.settings
    status = {**services_for(archive).status(), "inboxes": list(settings.inboxes), "workers": None}
    code = 0
    if settings.inboxes and settings.redis_url:  # workers are configured: their Redis must answer
        try:
            c = Coordinator(settings.redis_url)
            from workers.app import QUEUE

            status["workers"] = {"queued": c.queue_length(QUEUE), "in_flight": c.claims(), **{
                k: v for k, v in sorted(c.counters().items())}}
        except ArchiveError as e:
            status["workers"] = {"error": str(e)}
            code = 1
    if args.json:
        _out(status)
        return code
    print(f"records indexed   {status['records']}")
    print(f"index             {_index_line(status['index'])}")
    print(f"quarantined       {status['quarantined']}")
    print(f"inboxes           {', '.join(status['inboxes']) or '(none: ARCHIVE_INBOX)'}")
    w = status["workers"]
    if w is None:
        print("workers           (none configured: ARCHIVE_INBOX)")
    elif "error" in w:
        print(f"workers           unreachable: {w['error']}")
    else:
        print(f"queue             {w['queued']} queued, {w['in_flight']} in flight")
        print("worker outcomes   " + ", ".join(f"{w.get(k, 0)} {k}" for k in ("archived", "duplicate", "rejected",
                                                                                  "failed")))
    if status["last_fixity_sweep"] is None:
        print("last fixity sweep never")
    else:
        s = status["last_fixity_sweep"]
        print(f"last fixity sweep {s['finished_at']}: {s['records']} record(s), {s['objects']} object(s), "
              f"{s['failed']} failed")
    return code


def _index_line(index: dict) -> str:
    if index["engine"] == "sqlite":
        return f"sqlite {index['version']}, schema {index['schema']}"
    versions = ", ".join(f"v{v}" for v in index["index_template_versions"])
    return (f"{index['engine']} {index['version']} ({index['client']}, {index['media_type']}), template "
            f"v{index['template_version']}, {index['alias']} -> {', '.join(index['indexes'])} ({versions})")


def cmd_inbox_scan(archive: Archive, args: argparse.Namespace) -> int:
    from archive.work import Work
    from workers.tasks import queue

    batches = Work(archive.settings).scan()
    queued = queue(batches)
    args.audit_target["queued"] = queued
    print(f"queued {queued} input(s) in {len(batches)} task(s) from {len(archive.settings.inboxes)} inbox(es)")
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    """Run a Celery worker (and/or the beat) for this archive: exec's celery with the project's app."""
    import shutil

    celery = shutil.which("celery") or str(Path(sys.executable).with_name("celery"))
    if args.beat_only:
        argv = [celery, "-A", "workers", "beat", "-l", args.loglevel,
                "--schedule", str(settings.home / "celerybeat-schedule")]
    else:
        argv = [celery, "-A", "workers", "worker", "-Q", "archive", "-l", args.loglevel,
                "--concurrency", str(args.concurrency), "-n", f"archive-{os.getpid()}@%h",
                *(["-B", "--schedule", str(settings.home / "celerybeat-schedule")] if args.beat else [])]
    os.execv(celery, argv)


def cmd_export(archive: Archive, args: argparse.Namespace) -> int:
    from archive.access import Identities
    from archive.export import export, part_files
    from archive.files import check_output, protected_paths

    protected = protected_paths(archive.settings)
    out = check_output(args.output, protected, force=args.force)  # before anything is read or recorded
    if args.split_size:
        for part in part_files(out):
            check_output(part, protected, force=args.force)
    ingestor = _ingestor(archive)
    index = ingestor.index
    if args.query_text:
        ids = index.ids(" ".join(args.query_text))
    elif args.customer:
        ids = [m["record_id"] for m in index.timeline("customer.id", args.customer)]
    else:
        ids = args.record_ids
    if not ids:
        raise InputError("nothing to export: name records, or a --query or --customer that matches some")
    args.audit_target.update({"records": ids, "bundle": str(args.output)})
    actor = args.actor or archive.settings.actor
    role = Identities(archive.settings.identities_path).get(actor).role_for("export")
    show = sys.stderr.isatty() and not args.json

    def progress(done: int, total: int) -> None:
        print(f"\rexporting: {done / 1e6:,.0f} of {total / 1e6:,.0f} MB", end="", file=sys.stderr, flush=True)

    result = export(archive, ingestor.retention, ingestor, ids, case=args.case, reason=args.reason, actor=actor,
                    role=role, out=out, split=args.split_size, progress=progress if show else None,
                    overwrite=args.force)
    if show:
        print(file=sys.stderr)
    args.audit_target.update({"manifest_sha256": result.manifest_sha256, "files": result.files})
    summary = {"bundle": [str(p) for p in result.paths], "records": len(result.records), "files": result.files,
               "bytes": result.bytes, "manifest_sha256": result.manifest_sha256, "audit_seq": result.audit_seq}
    if args.json:
        _out(summary)
    else:
        print(f"exported {summary['records']} record(s), {result.files} file(s), {result.bytes:,} bytes for case "
              f"{printable(args.case)}: {printable(', '.join(summary['bundle']))}")
        print("verify it anywhere with: archive verify-bundle BUNDLE --public-key KEY   (archive keys public)")
    return 0


def cmd_verify_bundle(settings: Settings, args: argparse.Namespace) -> int:
    from archive.bundle_verify import load_public_key, verify_bundle

    if args.public_key and args.trust_bundle_key:
        raise InputError("give --public-key or --trust-bundle-key, not both")
    verdict = verify_bundle(Path(args.bundle), load_public_key(args.public_key),
                            trust_bundle_key=args.trust_bundle_key)
    for finding in verdict.findings:
        print(printable(finding))
    for warning in verdict.warnings:
        print(f"warning: {printable(warning)}", file=sys.stderr)
    if verdict.ok:
        if args.trust_bundle_key:
            print(f"bundle consistent: {verdict.files} file(s), {verdict.records} record(s), "
                  f"{len(verdict.parts)} part file(s) — checked against the key INSIDE the bundle only: this "
                  "proves the bundle is internally consistent, not that the archive made it")
        else:
            print(f"bundle verified: {verdict.files} file(s), {verdict.records} record(s), "
                  f"{len(verdict.parts)} part file(s); signature, manifests, audit proofs and custody all check")
        return 0
    print(f"bundle NOT verified: {len(verdict.findings)} problem(s)")
    return 1


def cmd_keys_public(archive: Archive, args: argparse.Namespace) -> int:
    keys = archive.keys.signing_public_keys() if hasattr(archive.keys, "signing_public_keys") else {}
    _out({k: v.hex() for k, v in sorted(keys.items())})
    return 0


def _size(text: str) -> int:
    m = re.fullmatch(r"(\d+)([KMGT]?)i?B?", text.strip().upper())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 2G or 500M")
    return int(m.group(1)) * 1024 ** "_KMGT".index(m.group(2) or "_")


def _tokens(archive: Archive):
    from archive.tokens import Tokens

    return Tokens(archive.settings.tokens_path, Identities(archive.settings.identities_path))


def cmd_token_create(archive: Archive, args: argparse.Namespace) -> int:
    token, entry = _tokens(archive).create(args.identity, args.role, expires=args.expires, note=args.note)
    args.audit_target.update({"token": entry["id"], "role": args.role, "expires_at": entry["expires_at"]})
    if args.json:
        _out({"token": token, **entry})
    else:
        print(token)
        print(f"token {entry['id']} for {args.identity} as {args.role}, expires {entry['expires_at']}; shown once, "
              "stored only as a hash", file=sys.stderr)
    return 0


def cmd_token_revoke(archive: Archive, args: argparse.Namespace) -> int:
    entry = _tokens(archive).revoke(args.token_id)
    args.audit_target["token"] = args.token_id
    print(f"token {entry['id']} of {entry['actor']} revoked at {entry['revoked_at']}")
    return 0


def cmd_token_list(archive: Archive, args: argparse.Namespace) -> int:
    tokens = _tokens(archive).list()
    if args.json:
        _out(tokens)
        return 0
    for t in tokens:
        state = f"revoked {t['revoked_at']}" if t["revoked_at"] else f"expires {t['expires_at']}"
        print(f"{t['id']}  {printable(t['actor']):<16} {t['role']:<8} {state}  {printable(t.get('note', ''))}")
    return 0


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from archive.api import serve

    print(f"archive console on http://{args.host}:{args.port}/ and API on http://{args.host}:{args.port}/api/v1 "
          f"(OpenAPI: /api/v1/openapi.json)", file=sys.stderr)
    serve(settings, args.host, args.port, args.workers)
    return 0


def cmd_quarantine_list(archive: Archive, args: argparse.Namespace) -> int:
    entries = list(_ingestor(archive).quarantine())
    if args.json:
        _out(entries)
    else:
        for e in entries:
            print(f"{e['at']}  [{e['code']}] {printable(e['reason'])}")
        print(f"{len(entries)} rejected input(s)", file=sys.stderr)
    return 0


# --- identities ----------------------------------------------------------------------------------


def cmd_identity_list(archive: Archive, args: argparse.Namespace) -> int:
    from archive.access import Identities

    _out(Identities(archive.settings.identities_path).all())
    return 0


def cmd_identity_set(archive: Archive, args: argparse.Namespace) -> int:
    from archive.access import Identities

    ids = Identities(archive.settings.identities_path)
    roles = [] if args.identity_command == "remove" else sorted(set(args.role))
    ids.set(args.identity, roles)
    args.audit_target["roles"] = roles
    print(f"{printable(args.identity)}: {', '.join(roles) or 'removed'}")
    return 0


# --- audit ---------------------------------------------------------------------------------------


def cmd_audit_checkpoint(archive: Archive, args: argparse.Namespace) -> int:
    head = archive.audit.checkpoint()
    _out({k: head[k] for k in ("size", "root", "time", "key_id")})
    return 0


def cmd_audit_verify(archive: Archive, args: argparse.Namespace) -> int:
    from archive.audit.reconcile import check_archive

    result = check_archive(archive, _retention(archive))
    report, store = result.log, result.store
    args.audit_target.update({"events": report.events, "problems": len(report.problems),
                              "store_findings": len(store.findings),
                              **({"records": sorted({f.record_id for f in store.findings if f.record_id})}
                                 if store.findings else {})})
    if args.json:
        _out(result.as_dict())
        return 0 if result.ok else 5
    if report.ok:
        latest = report.latest_checkpoint
        print(f"audit log verified: {report.events} events in {report.batches} batches, {report.checkpoints} "
              f"signed checkpoint(s)" + (f", newest at {latest['size']} ({latest['time']})" if latest else
                                         " (none yet: run 'archive audit checkpoint')"))
        if report.checkpoint_written:
            print(f"  the {report.tail} event(s) after the newest checkpoint are now checkpointed at "
                  f"{report.checkpoint_written['size']}")
    else:
        first = report.first
        print(f"audit log FAILED verification: first bad position {first.position} [{first.kind}] {first.message}")
        for p in report.problems:
            if p is not first:
                print(f"  also at {p.position} [{p.kind}] {p.message}")
    witness = report.witness
    print(f"  witness {witness.get('where', '(none)')}: "
          + (f"held a checkpoint of {witness['size']} events" if "size" in witness else "held nothing yet"))
    if result.witness_inside_home:
        print("  WARNING: the witness is inside the archive home: whoever can delete the checkpoints can delete "
              "it too. Set ARCHIVE_AUDIT_WITNESS to a file on another disk or an s3:// bucket of its own.")
    if store.ok:
        print(f"store reconciled with the trail: {store.records_in_trail} record(s) ingested, {store.present} "
              f"present, {store.disposed} disposed with a certificate, {store.held_objects} held object(s) checked")
    else:
        print(f"store does NOT match the audit trail: {len(store.findings)} finding(s)")
        for f in store.findings:
            print(f"  MISSING [{f.kind}] {f.message}")
    return 0 if result.ok else 5


def cmd_audit_show(archive: Archive, args: argparse.Namespace) -> int:
    from archive.audit.merkle import inclusion_proof

    archive.audit.integrate_all()  # the workers' staged events too
    logged = list(archive.audit.events())
    leaves = [e.leaf for e in logged]
    checkpoints = [cp for _, cp in archive.audit.checkpoints()]
    head = max(checkpoints, key=lambda c: c["size"], default=None)
    rows = []
    for i, e in enumerate(logged):
        doc = e.event
        if args.record_id not in doc.get("target", {}).get("records", []):
            continue
        row = {"seq": e.seq, "time": doc["time"], "actor": doc["actor"], "role": doc["role"],
               "action": doc["action"], "outcome": doc["outcome"], "reason": doc.get("reason"),
               "case": doc.get("case"), "leaf_hash": e.leaf.hex()}
        if head is not None and i < head["size"]:
            row["proof"] = {"tree_size": head["size"], "root": head["root"], "key_id": head["key_id"],
                            "path": [h.hex() for h in inclusion_proof(i, leaves[: head["size"]])]}
        rows.append(row)
    if args.json:
        _out(rows)
    else:
        for r in rows:
            proof = f"proof: {len(r['proof']['path'])} hashes to root {r['proof']['root'][:16]}… of size " \
                    f"{r['proof']['tree_size']}" if "proof" in r else "not yet in a checkpoint"
            print(f"{r['seq']:>6}  {r['time'][:19]}  {printable(r['actor'])} ({r['role']})  {r['action']} "
                  f"{r['outcome']}  reason: {printable(r['reason'] or '-')}  [{proof}]")
        print(f"{len(rows)} event(s) for {args.record_id}", file=sys.stderr)
    return 0


# --- retention ----------------------------------------------------------------------------------------


def cmd_policy_list(archive: Archive, args: argparse.Namespace) -> int:
    policies = _retention(archive).policy_set()
    rows = [{"id": p.id, "version": p.version, "title": p.title, "citation": p.citation, "default": p.default,
             "retain": [f"{c.period.text} from {c.trigger}" for c in p.retain], "lock_mode": p.lock_mode,
             "on_expiry": p.on_expiry, "dual_recording": p.dual_recording is not None, "file": p.file}
            for p in policies.policies]
    if args.json:
        _out({"directory": policies.directory, "fingerprint": policies.fingerprint(), "policies": rows})
        return 0
    for r in rows:
        flags = " (default)" if r["default"] else (" (双录)" if r["dual_recording"] else "")
        print(f"{r['id']:<34} v{r['version']:<3} {'; '.join(r['retain']):<48} {r['on_expiry']:<7}{flags}")
    print(f"{len(rows)} policies in {policies.directory}", file=sys.stderr)
    return 0


def cmd_policy_check(archive: Archive, args: argparse.Namespace) -> int:
    from archive.retention.policy import load_policies

    retention = _retention(archive)
    directory = Path(args.directory) if args.directory else retention.policies_dir
    policies = load_policies(directory, known_versions=retention.known_versions())
    print(f"{directory}: {len(policies.policies)} policies valid (fingerprint {policies.fingerprint()[:16]}…)")
    return 0


def cmd_policy_explain(archive: Archive, args: argparse.Namespace) -> int:
    from archive.retention.decide import explain

    retention = _retention(archive)
    manifest = retention.manifest(args.record_id)
    decision = retention.decision(args.record_id, manifest)
    cases = retention.held_records().get(args.record_id, [])
    if args.json:
        _out({"record_id": args.record_id, "decision": decision, "holds": cases,
              "findings": manifest.get("findings", []), "checks": manifest.get("checks", {})})
        return 0
    print(f"{args.record_id}: {explain(decision)}")
    if cases:
        print(f"  legal hold: {', '.join(cases)} — not disposed of whatever the dates, until released")
    for f in manifest.get("findings", []):
        print(f"  finding {f['code']} ({f['policy']}): {printable(f['detail'])}")
    return 0


def cmd_event(archive: Archive, args: argparse.Namespace) -> int:
    event, changed = _retention(archive).add_event(
        args.kind, date=args.date, by=args.actor or archive.settings.actor, account=args.account,
        contract=args.contract, customer=args.customer, records=args.records or None, dispute=args.dispute,
        until=args.until, note=args.note)
    args.audit_target.update({"event": event["id"], "kind": args.kind, "records": [c["record_id"] for c in changed]})
    if args.json:
        _out({"event": event, "changed": changed})
        return 0
    print(f"recorded {event['kind']} {event['id']} ({event['date'][:10]})")
    for c in changed:
        print(f"  {c['record_id']}  {c['before'][:10]} -> {c['after'][:10]}"
              + ("" if c["final"] else f"  (still waiting for {', '.join(c['pending'])})"))
    print(f"{len(changed)} record(s) changed", file=sys.stderr)
    return 0


def cmd_hold_place(archive: Archive, args: argparse.Namespace) -> int:
    retention = _retention(archive)
    records = list(args.records)
    if args.query:
        records += retention.index.ids(args.query)
    held = retention.place_hold(args.case_id, sorted(set(records)), by=args.actor or archive.settings.actor,
                                reason=args.reason, query=args.query)
    args.audit_target["records"] = held
    print(f"legal hold {args.case_id} placed on {len(held)} record(s)")
    for rid in held:
        print(f"  {rid}")
    return 0


def cmd_hold_release(archive: Archive, args: argparse.Namespace) -> int:
    retention = _retention(archive)
    request_id = retention.request_release(case=args.case_id, by=args.actor or archive.settings.actor,
                                           reason=args.reason)
    args.audit_target.update({"request": request_id, "records": retention.holds()[args.case_id]["records"]})
    print(f"release of legal hold {args.case_id} requested: {request_id}\n"
          f"a second, different legal identity must run: archive approve {request_id} --reason ...")
    return 0


def cmd_hold_list(archive: Archive, args: argparse.Namespace) -> int:
    cases = _retention(archive).holds()
    if args.json:
        _out(list(cases.values()))
        return 0
    for case in cases.values():
        placed = next((h for h in case["history"] if h["action"] == "place"), {})
        state = "active" if case["active"] else "released"
        print(f"{case['case']:<20} {state:<9} {len(case['records']):>5} record(s)  placed {str(placed.get('at'))[:19]} "
              f"by {printable(placed.get('by'))}  reason: {printable(placed.get('reason') or '-')}")
    return 0


def cmd_dispose(archive: Archive, args: argparse.Namespace) -> int:
    retention = _retention(archive)
    plans = retention.plan(reviewed=set(args.reviewed or []))
    args.audit_target["dry_run"] = args.dry_run
    results = []
    if not args.dry_run:
        signer = archive.keys.signer() if hasattr(archive.keys, "signer") else None
        results = retention.dispose(plans, by=args.actor or archive.settings.actor, signer=signer)
        args.audit_target["records"] = [r["record_id"] for r in results if r["action"] == "deleted"]
        args.audit_target["certificates"] = {r["record_id"]: r["certificate_sha256"] for r in results
                                             if r["action"] == "deleted"}
    if args.json:
        _out({"dry_run": args.dry_run, "at": retention.clock.now().isoformat(timespec="seconds"),
              "plans": [p.as_dict() for p in plans], **({} if args.dry_run else {"results": results})})
        return 0
    for p in plans:
        print(f"{'would ' if args.dry_run and p.action == 'delete' else ''}{p.action:<8} {p.record_id}  "
              f"due {p.retain_until[:10]}  {p.why}")
    for r in results:
        extra = f"certificate {r['certificate']}" if r["action"] == "deleted" else r.get("why", "")
        print(f"{r['action']:<12} {r['record_id']}  {extra}")
    counts: dict[str, int] = {}
    for p in plans:
        counts[p.action] = counts.get(p.action, 0) + 1
    print(", ".join(f"{n} {a}" for a, n in sorted(counts.items())) or "nothing is due", file=sys.stderr)
    return 0


# What each command does, in the audit trail's words, and the permission it needs (archive/access.py).
# Which library operation (OPERATIONS in archive/access.py) each command performs.
OPERATION_OF: dict[Callable, str | Callable] = {
    cmd_put: "object-put", cmd_object_get: "object-retrieve", cmd_head: "object-head", cmd_ls: "object-list",
    cmd_hold: lambda archive, args: "hold" if args.state == "on" else "hold-release-request",
    cmd_approve: "approve", cmd_extend: "retention-extend", cmd_delete: "object-delete", cmd_ingest: "ingest",
    cmd_show: "view", cmd_get: "retrieve", cmd_search: "search", cmd_timeline: "search", cmd_reindex: "reindex", cmd_quarantine_list: "quarantine-list",
    cmd_fixity: "fixity", cmd_status: "status", cmd_inbox_scan: "ingest", cmd_export: "export",
    cmd_keys_public: "key-status", cmd_token_create: "identity-change", cmd_token_revoke: "identity-change",
    cmd_token_list: "identity-list",
    cmd_keys_status: "key-status", cmd_keys_rotate: "key-rotation", cmd_keys_destroy: "key-destroy",
    cmd_audit_checkpoint: "audit-checkpoint", cmd_audit_verify: "audit-verify", cmd_audit_show: "audit-show",
    cmd_identity_list: "identity-list", cmd_identity_set: "identity-change",
    cmd_policy_list: "policy-list", cmd_policy_check: "policy-check", cmd_policy_explain: "policy-explain",
    cmd_event: "retention-event", cmd_hold_place: "hold", cmd_hold_release: "hold-release-request",
    cmd_hold_list: "hold-list",
    cmd_dispose: lambda archive, args: "disposition-plan" if args.dry_run else "disposition",
}


def _target(args: argparse.Namespace) -> dict:
    """What a command acts on, for its audit event: record ids, an object, a query, input paths."""
    target = {}
    if getattr(args, "record_id", None):
        target["records"] = [args.record_id]
    if getattr(args, "name", None):
        target["object"] = args.name
    if getattr(args, "query", None) is not None:
        target["query"] = " ".join(args.query)
    if getattr(args, "paths", None):
        target["inputs"] = [str(p) for p in args.paths][:20]
    if getattr(args, "kek_id", None):
        target["kek"] = args.kek_id
    if getattr(args, "identity", None):
        target["identity"] = args.identity
    if getattr(args, "part", None):
        target["part"] = args.part
    if getattr(args, "case_id", None):
        target["case"] = args.case_id
    return target


# --- parser ----------------------------------------------------------------------------------------


def _identity_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--actor", help="who is acting (default: ARCHIVE_ACTOR); must be a known identity")
    p.add_argument("--reason", help="why: recorded in the audit log with this access; required to see content "
                                    "and for every hold action and approval")
    p.add_argument("--case", help="case or matter id this access is for; recorded in the audit log")


def _retention_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--retain-until", metavar="DATE", help="lock until this ISO-8601 date/time (UTC)")
    g.add_argument("--retain", metavar="DURATION", help="lock for an ISO-8601 duration from now, e.g. P7Y")
    p.add_argument("--mode", choices=["compliance", "governance"], default=None,
                   help="lock mode (default: ARCHIVE_LOCK_MODE, compliance)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="archive", description="Compliance recording and audit archive.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("init", help="create the archive: home directory, keyring, object store",
                       description="Create the archive under ARCHIVE_HOME (default ./.archive): the keyring "
                                   "(mode 0600) and the object store. Safe to run again.")
    p.add_argument("--create-bucket", action="store_true",
                   help="for an s3:// store, create the bucket with Object Lock enabled")
    p.set_defaults(run=cmd_init, needs_archive=False)

    obj = sub.add_parser("object", help="sealed objects: put, get, head, ls, hold, extend, delete",
                         description="Low-level access to sealed objects in the vault.")
    osub = obj.add_subparsers(dest="object_command", required=True, metavar="ACTION")

    p = osub.add_parser("put", help="seal a file into the store", description="Encrypt FILE into a sealed "
                        "object (fresh data key, AES-256-GCM segments) and store it under NAME, locked.")
    p.add_argument("file")
    p.add_argument("--name", help="object name (default: the file name)")
    p.add_argument("--record-id", help="record the object belongs to (default: the name)")
    p.add_argument("--part", default="content", help="part name, e.g. audio, video, transcript")
    p.add_argument("--legal-hold", action="store_true", help="place a legal hold at once")
    _retention_args(p)
    p.set_defaults(run=cmd_put)

    p = osub.add_parser("get", help="unseal an object to a file or stdout",
                        description="Decrypt and verify NAME. --range A-B returns plaintext bytes [A, B), "
                                    "reading only the covering segments.")
    p.add_argument("name")
    p.add_argument("-o", "--output", help="output file (default: stdout); never the archive's own files")
    p.add_argument("--force", action="store_true", help="replace the output file if it exists")
    p.add_argument("--range", metavar="A-B", help="plaintext byte range [A, B); B may be omitted")
    p.add_argument("--record-id", help="expected record id (checked cryptographically)")
    p.add_argument("--part", help="expected part name (checked cryptographically)")
    p.add_argument("--verify", action="store_true", help="also check the plaintext SHA-256 against the receipt")
    p.set_defaults(run=cmd_object_get)

    p = osub.add_parser("head", help="show an object's receipt, retention and hold",
                        description="Show the seal receipt (sizes, SHA-256 digests, KEK) and lock state.")
    p.add_argument("name")
    p.set_defaults(run=cmd_head)

    p = osub.add_parser("ls", help="list sealed object names", description="List sealed objects by name.")
    p.add_argument("prefix", nargs="?", default="")
    p.set_defaults(run=cmd_ls)

    p = osub.add_parser("hold", help="place or request the release of a legal hold",
                        description="Place (on) a legal hold on NAME and its receipts, or request its release "
                                    "(off): a second, different legal identity approves with 'archive approve'.")
    p.add_argument("name")
    p.add_argument("state", choices=["on", "off"])
    p.set_defaults(run=cmd_hold)

    p = osub.add_parser("extend", help="extend retention (never shortens)",
                        description="Move retain-until of NAME later; shortening is refused.")
    p.add_argument("name")
    _retention_args(p)
    p.set_defaults(run=cmd_extend)

    p = osub.add_parser("delete", help="delete an object whose retention has passed",
                        description="Delete NAME and its receipts (destroying its data key). Refused while "
                                    "retention runs or a legal hold is on.")
    p.add_argument("name")
    p.add_argument("--bypass-governance", action="store_true", help="override GOVERNANCE-mode retention")
    p.set_defaults(run=cmd_delete)

    p = sub.add_parser("ingest", help="archive recordings, chat transcripts and emails",
                       description="Archive every input under PATH… (files and directories, recursive): "
                                   "recordings with a .json or SIPREC .xml sidecar, chat transcripts (.json: "
                                   "archive, Amazon Connect, Twilio Conversations, Zendesk, Intercom) and .eml. "
                                   "Sources are only read. Each input is judged alone: one that cannot be "
                                   "archived is quarantined with its reason and the run goes on. The same "
                                   "content delivered again with other metadata is a conflict (both kept). "
                                   "Records a killed run committed are indexed and audited by the next run. "
                                   "Exits 1 when anything was rejected or conflicted.")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="list every archived input too")
    p.set_defaults(run=cmd_ingest)

    p = sub.add_parser("show", help="a record's metadata, parts and retention",
                       description="Show one record: source, participants, parts with digests, retention.")
    p.add_argument("record_id")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.add_argument("--messages", type=int, default=20, help="how many chat/email messages to print")
    p.set_defaults(run=cmd_show)

    p = sub.add_parser("get", help="retrieve a part of a record (verified)",
                       description="Decrypt and verify one part of a record to a file or stdout; --range A-B "
                                   "reads only the covering segments.")
    p.add_argument("record_id")
    p.add_argument("--part", required=True, help="part name, e.g. audio, video, transcript, message")
    p.add_argument("-o", "--output", help="output file (default: stdout); never the archive's own files")
    p.add_argument("--force", action="store_true", help="replace the output file if it exists")
    p.add_argument("--range", metavar="A-B", help="plaintext byte range [A, B)")
    p.set_defaults(run=cmd_get)

    p = sub.add_parser("search", help="find records with the query language (fields, dates, words, facets)",
                       description="Records matching QUERY, e.g. 'agent:1042 channel:phone after:2024-01-01 "
                                   "\"not a deposit\" NOT hold:CASE-7 sort:oldest'. Fields, operators and "
                                   "examples: docs/search.md. Results are summaries (who, when, channel, parts); "
                                   "--json with --reason prints the records as indexed, message text included. "
                                   "The audit event names every record returned.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("query", nargs="*")
    p.add_argument("--limit", type=int, default=50, help="records per page (default 50)")
    p.add_argument("--cursor", help="the next page: the cursor the previous page printed")
    p.add_argument("--facets", metavar="LIST",
                   help="count matches by these, comma-separated: channel,agent,policy,hold,finding,month")
    p.add_argument("--json", action="store_true",
                   help="print the page (records, next cursor, facets) as JSON: summaries, or with --reason the "
                        "records with their message text")
    p.set_defaults(run=cmd_search)

    p = sub.add_parser("timeline", help="every interaction of one customer, all channels, in time order",
                       description="The dispute view: every record of a customer (by id, account or phone), "
                                   "calls, chats and emails together, oldest first. Summaries, as for search; "
                                   "--json with --reason prints the records with their message text.")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--customer", help="customer id")
    g.add_argument("--account", help="customer account")
    g.add_argument("--phone", help="customer phone (E.164)")
    p.add_argument("--json", action="store_true", help="print records as JSON")
    p.set_defaults(run=cmd_timeline)

    p = sub.add_parser("reindex", help="rebuild the search index from the object store, or check it",
                       description="Drop every index entry and rebuild it from the store alone: manifests, "
                                   "current retention decisions and legal holds. Idempotent. Records the index "
                                   "had that the store no longer holds are named (and recorded in the audit "
                                   "trail). --check compares the index with the store instead, changing nothing: "
                                   "every committed record indexed with its fields and content digests, no row "
                                   "for a record the store lacks; exits 1 on any mismatch.")
    p.add_argument("--check", action="store_true", help="compare the index with the store; change nothing")
    p.add_argument("--json", action="store_true", help="with --check: print the result as JSON")
    p.set_defaults(run=cmd_reindex)

    p = sub.add_parser("fixity", help="read sealed objects back and verify them",
                       description="Re-read every object of each record (or the ones named): authentication tags, "
                                   "SHA-256 against the seal receipt and the capture, and each object's lock "
                                   "(authentic, not shortened, not weakened). Then reconcile the store with the "
                                   "audit trail: every record an ingest event names present or disposed with its "
                                   "signed certificate, every legal hold still in place. A failure is sealed as "
                                   "the finding fixity-failed (archive search finding:fixity-failed), never "
                                   "repaired. Objects sealed without a receipt (a crash) are listed as orphans "
                                   "and never fail a record. Exits 1 when anything failed.")
    p.add_argument("--record", action="append", metavar="ID", help="check this record (repeatable)")
    p.add_argument("--limit", type=int, help="check at most this many records")
    p.add_argument("--json", action="store_true", help="print the sweep's summary as JSON")
    p.set_defaults(run=cmd_fixity)

    p = sub.add_parser("status", help="records, quarantine, worker queue and the last fixity sweep",
                       description="What the archive and its workers are doing: records indexed, inputs "
                                   "quarantined, queue depth, inputs in flight, worker outcomes, the last fixity "
                                   "sweep. Exits 1 when the workers' Redis cannot be reached.")
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.set_defaults(run=cmd_status)

    p = sub.add_parser("worker", help="run a Celery worker (ARCHIVE_BROKER_URL) for ingest and sweeps",
                       description="Start a Celery worker on the archive queue (celery -A workers worker -Q archive). "
                                   "--beat also runs the scheduler (inbox scans, fixity and disposition sweeps); run "
                                   "exactly one scheduler per archive.")
    p.add_argument("--concurrency", type=int, default=os.cpu_count() or 2, help="worker processes (default: CPUs)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--beat", action="store_true", help="also run the scheduler in this worker")
    g.add_argument("--beat-only", action="store_true", help="run only the scheduler")
    p.add_argument("-l", "--loglevel", default="info", help="Celery log level (debug, info, warning, error)")
    p.set_defaults(run=cmd_worker, needs_archive=False)

    p = sub.add_parser("export", help="an evidence bundle for a case (legal role; --case and --reason)",
                       description="Write a self-verifying evidence bundle (BagIt in ZIP): decrypted recordings and "
                                   "transcripts, metadata, retention decisions, chain of custody, index.html for an "
                                   "examiner, audit inclusion proofs, all signed. Select records by id, --query or "
                                   "--customer. Needs the legal role, --case and --reason; recorded in the audit trail. "
                                   "The bundle (mode 0600) appears only when complete; an existing file is replaced "
                                   "only with --force, and never one of the archive's own files.")
    p.add_argument("record_ids", nargs="*", metavar="ID", help="records to export")
    p.add_argument("--query", dest="query_text", nargs="+", metavar="Q", help="records matching this search")
    p.add_argument("--customer", help="every record of this customer id (the timeline)")
    p.add_argument("-o", "--output", required=True, type=Path,
                   help="the bundle to write, e.g. case-17.zip (a new file, outside the archive)")
    p.add_argument("--force", action="store_true", help="replace the bundle (and its part files) if it exists")
    p.add_argument("--split-size", type=_size, metavar="SIZE",
                   help="split into NAME.partNNN.zip files of about this size (e.g. 4G)")
    p.add_argument("--json", action="store_true", help="print what was written as JSON")
    p.set_defaults(run=cmd_export)

    p = sub.add_parser("verify-bundle", help="check an evidence bundle offline (signature, hashes, proofs)",
                       description="Verify an evidence bundle with only the archive's public key: the signature, "
                                   "every file's SHA-256, the audit inclusion proofs against the signed checkpoint, "
                                   "and the chain of custody. Names every altered, missing, added or unreadable "
                                   "file; exits 1. Without --public-key the bundle is NOT verified (exit 1) unless "
                                   "--trust-bundle-key accepts its own key, which proves only internal consistency.")
    p.add_argument("bundle", help="the bundle (for a split bundle, any of its part files)")
    p.add_argument("--public-key", metavar="KEY",
                   help="the archive's public signing key: a file or value, hex or the JSON of 'archive keys public'")
    p.add_argument("--trust-bundle-key", action="store_true",
                   help="without --public-key: check against the key inside the bundle, which proves only that "
                        "the bundle is internally consistent, not who made it")
    p.set_defaults(run=cmd_verify_bundle, needs_archive=False)

    tok = sub.add_parser("token", help="API tokens: create, revoke, list (admin)",
                         description="Tokens for the HTTP API, each bound to one identity and one of its roles, "
                                     "expiring, stored only as a hash.")
    tsub = tok.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    p = tsub.add_parser("create", help="a new token (printed once)",
                        description="Create a token for IDENTITY acting with ROLE only; it is printed once.")
    p.add_argument("identity", help="the identity the token acts as")
    p.add_argument("--role", required=True, help="the one role it carries (the identity must hold it)")
    p.add_argument("--expires", default="P30D", help="ISO-8601 period until it expires (default P30D, at most P1Y)")
    p.add_argument("--note", help="what the token is for (shown in lists)")
    p.add_argument("--json", action="store_true", help="print the token and its entry as JSON")
    p.set_defaults(run=cmd_token_create)
    p = tsub.add_parser("revoke", help="revoke a token now", description="Revoke token TOKEN_ID at once.")
    p.add_argument("token_id", help="the token's id (arc_<id>_…)")
    p.set_defaults(run=cmd_token_revoke)
    p = tsub.add_parser("list", help="every token (never the secrets)", description="List tokens.")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(run=cmd_token_list)

    p = sub.add_parser("serve", help="the web console (/) and the HTTP API (OpenAPI at /api/v1/openapi.json)",
                       description="Serve the auditors' web console and the HTTP API: search, records, playback with "
                                   "HTTP Range, retention, holds, approvals, exports, ingest, audit, status. Every "
                                   "request needs a token (archive token create) and is audited.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--workers", type=int, default=1, help="server processes (default 1; one per core under load)")
    p.set_defaults(run=cmd_serve, needs_archive=False)

    ib = sub.add_parser("inbox", help="the inboxes workers take inputs from (ARCHIVE_INBOX)",
                        description="Inboxes: S3 prefixes or directories where recorders drop inputs.")
    ibs = ib.add_subparsers(dest="inbox_command", required=True, metavar="ACTION")
    p = ibs.add_parser("scan", help="queue every settled input now (the beat does this periodically)",
                       description="List each inbox and queue the inputs ready to take for the workers.")
    p.set_defaults(run=cmd_inbox_scan)

    q = sub.add_parser("quarantine", help="inputs ingest rejected, with reasons",
                       description="Inputs that ingest refused, each with its reason. Sources are never moved.")
    qsub = q.add_subparsers(dest="quarantine_command", required=True, metavar="ACTION")
    p = qsub.add_parser("list", help="list rejected inputs", description="List rejected inputs and reasons.")
    p.add_argument("--json", action="store_true", help="print entries as JSON")
    p.set_defaults(run=cmd_quarantine_list)

    audit = sub.add_parser("audit", help="the tamper-evident audit log: checkpoint, verify, show",
                           description="Every access and change is an event in an append-only log in the store, "
                                       "checkpointed as signed RFC 6962 Merkle tree heads.")
    asub = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    p = asub.add_parser("checkpoint", help="sign a tree head over every event so far",
                        description="Compute the Merkle root of the whole log and store it signed (Ed25519).")
    p.set_defaults(run=cmd_audit_checkpoint)
    p = asub.add_parser("verify", help="recompute everything; name the first bad position",
                        description="Check batch numbering, sequence, hash chain, every batch's and checkpoint's "
                                    "signature and root, and the log against the witness outside the archive "
                                    "(ARCHIVE_AUDIT_WITNESS): truncated, rolled back, rewritten, checkpoints "
                                    "deleted. A log that passes gets a checkpoint over its newest events, given "
                                    "to the witness. Then reconcile the store with the trail: every ingested "
                                    "record present or disposed with its certificate, every legal hold in "
                                    "place. Exits 5 on failure, naming the record, object and audit event.")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(run=cmd_audit_verify)
    p = asub.add_parser("show", help="who accessed a record, when and why, with inclusion proofs",
                        description="List the audit events that name a record, each with its Merkle inclusion "
                                    "proof against the newest checkpoint.")
    p.add_argument("--record", dest="record_id", required=True, help="record id")
    p.add_argument("--json", action="store_true", help="print events and proofs as JSON")
    p.set_defaults(run=cmd_audit_show)

    pol = sub.add_parser("policy", help="retention policies: list, check, explain a record's decision",
                         description="Retention policies are YAML files in ARCHIVE_POLICIES (default: the shipped "
                                     "policies/). See archive/retention/policy.py for the schema.")
    psub = pol.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    p = psub.add_parser("list", help="the policies in force", description="List the loaded policies.")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(run=cmd_policy_list)
    p = psub.add_parser("check", help="validate a policy directory",
                        description="Validate every policy file in DIRECTORY (default: the one in force), "
                                    "including versions against those this archive already applied.")
    p.add_argument("directory", nargs="?")
    p.set_defaults(run=cmd_policy_check)
    p = psub.add_parser("explain", help="why a record is kept until when",
                        description="Show a record's retention decision: every matching policy and version, "
                                    "the events counted from, pending triggers, holds and findings.")
    p.add_argument("record_id")
    p.add_argument("--json", action="store_true", help="print the decision as JSON")
    p.set_defaults(run=cmd_policy_explain)

    from archive.retention.service import EVENT_KINDS

    p = sub.add_parser("event", help="record a retention trigger (contract terminated, dispute resolved …)",
                       description="Record an event that retention is counted from; every record it covers is "
                                   "recomputed and its locks extended (never shortened).")
    p.add_argument("kind", choices=EVENT_KINDS)
    p.add_argument("records", nargs="*", metavar="RECORD_ID", help="the records it covers, or select with:")
    p.add_argument("--account", help="every record with a customer of this account")
    p.add_argument("--contract", help="every record of this contract id")
    p.add_argument("--customer", help="every record with this customer id")
    p.add_argument("--date", required=True, help="when it happened (ISO-8601 date)")
    p.add_argument("--dispute", help="dispute id (dispute-opened / dispute-resolved)")
    p.add_argument("--until", help="retention-extended: keep until this date (a regulator's request)")
    p.add_argument("--note", help="free text kept with the event")
    p.add_argument("--json", action="store_true", help="print the event and changed records as JSON")
    p.set_defaults(run=cmd_event)

    hold = sub.add_parser("hold", help="legal holds: place, release (four-eyes), list",
                          description="A legal hold keeps every object of the records it covers under the store's "
                                      "legal hold, whatever their retention dates, until released.")
    hsub = hold.add_subparsers(dest="hold_command", required=True, metavar="ACTION")
    p = hsub.add_parser("place", help="hold records for a case",
                        description="Hold RECORD_IDs and/or every record matching --query for CASE. Needs "
                                    "--reason (recorded with the hold).")
    p.add_argument("case_id", metavar="CASE")
    p.add_argument("records", nargs="*", metavar="RECORD_ID")
    p.add_argument("--query", help="hold every record this search finds")
    p.set_defaults(run=cmd_hold_place)
    p = hsub.add_parser("release", help="request the release of a case's hold",
                        description="Request the release of CASE's hold (needs --reason); a second, different legal "
                                    "identity approves with 'archive approve'.")
    p.add_argument("case_id", metavar="CASE")
    p.set_defaults(run=cmd_hold_release)
    p = hsub.add_parser("list", help="every case with a hold", description="List legal holds.")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(run=cmd_hold_list)

    p = sub.add_parser("dispose", help="delete records whose retention has passed, with certificates",
                       description="Delete every object of each record whose retention has passed, no hold covers "
                                   "and no trigger is pending; write a signed disposition certificate for each. "
                                   "The store refuses anything still locked, whatever the local clock says.")
    p.add_argument("--dry-run", action="store_true", help="list what would go and why; delete nothing")
    p.add_argument("--reviewed", nargs="+", action="extend", metavar="RECORD_ID",
                   help="records under an on_expiry: review policy that a person has reviewed: dispose of them too "
                        "(--reviewed A B, or --reviewed A --reviewed B)")
    p.add_argument("--json", action="store_true", help="print plans and results as JSON")
    p.set_defaults(run=cmd_dispose)

    p = sub.add_parser("approve", help="approve another person's four-eyes request",
                       description="Approve a request made by someone else (releasing a legal hold); the "
                                   "approver must be a different identity holding the needed role, and give --reason. "
                                   "A request whose seal, signature or audit event does not check is refused.")
    p.add_argument("request_id")
    p.set_defaults(run=cmd_approve)

    ident = sub.add_parser("identity", help="who may act, with which roles",
                           description="Identities and their roles: ingest, auditor, legal, admin (see "
                                       "archive/access.py). Changing them is an admin action, recorded.")
    isub = ident.add_subparsers(dest="identity_command", required=True, metavar="ACTION")
    p = isub.add_parser("list", help="every identity and its roles", description="List identities and roles.")
    p.set_defaults(run=cmd_identity_list)
    p = isub.add_parser("add", help="give an identity roles", description="Give IDENTITY exactly these roles.")
    p.add_argument("identity")
    p.add_argument("--role", action="append", required=True, choices=["ingest", "auditor", "legal", "admin"],
                   help="a role (repeat for several)")
    p.set_defaults(run=cmd_identity_set)
    p = isub.add_parser("remove", help="remove an identity", description="Remove IDENTITY and its roles.")
    p.add_argument("identity")
    p.set_defaults(run=cmd_identity_set)

    keys = sub.add_parser("keys", help="key-encryption keys: status, rotate, destroy",
                          description="Manage the key-encryption keys that wrap every data key.")
    ksub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    p = ksub.add_parser("status", help="KEKs and how many objects each wraps",
                        description="List KEKs with their state and how many objects need each.")
    p.set_defaults(run=cmd_keys_status)
    p = ksub.add_parser("rotate", help="new KEK; rewrap every data key under it",
                        description="Create a new KEK and rewrap every object's data key under it, writing "
                                    "new receipts. Locked objects are not rewritten.")
    p.add_argument("--rewrap-only", action="store_true",
                   help="do not create a KEK; rewrap to the current one (finish an interrupted rotation, or "
                        "move to a newly configured KMS key)")
    p.add_argument("--signing", action="store_true",
                   help="rotate the audit checkpoint signing key (Ed25519) instead of the KEK")
    p.set_defaults(run=cmd_keys_rotate)
    p = ksub.add_parser("public", help="the public signing keys, to verify bundles and checkpoints",
                        description="Print the archive's Ed25519 public signing keys (JSON, key id → hex): what a "
                                    "recipient needs for archive verify-bundle --public-key.")
    p.set_defaults(run=cmd_keys_public)
    p = ksub.add_parser("destroy", help="destroy a retired KEK nothing needs",
                        description="Irreversibly destroy KEK_ID; refused while any object still needs it.")
    p.add_argument("kek_id")
    p.set_defaults(run=cmd_keys_destroy)
    for _path, command in _commands(parser):
        if command.get_default("run") is not None and command.get_default("needs_archive") is not False:
            _identity_args(command)
    return parser


def _commands(parser: argparse.ArgumentParser, prefix: tuple = ()):
    """Every (sub)command parser, with its path of names."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from _commands(sub, (*prefix, name))


def main(argv: Sequence[str] | None = None) -> int:
    stdout, stderr = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = TerminalStream(stdout), TerminalStream(stderr)  # nothing raw reaches the terminal
    try:
        return _main(argv)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = stdout, stderr


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    run: Callable = args.run
    debug = bool(os.environ.get("ARCHIVE_DEBUG"))
    try:
        settings = Settings.from_env()
        if not getattr(args, "needs_archive", True):
            return run(settings, args)
        archive = open_archive(settings)
        session = Session(archive.audit, Identities(settings.identities_path), args.actor or settings.actor)
        target = _target(args)
        args.audit_target = target  # commands add what they learn (record ids ingested, result counts)
        operation = OPERATION_OF[run]
        if callable(operation):  # the operation depends on the arguments (hold on/off, what is approved)
            operation = operation(archive, args)
        status = session.run(operation, lambda: run(archive, args), target=target, reason=args.reason,
                             case=getattr(args, "case_id", None) or args.case)
        for after in getattr(args, "after_audit", ()):  # what a command leaves until its event is recorded
            after()
        return status
    except ArchiveError as e:
        if debug:
            raise
        print(f"archive: error [{e.code}]: {printable(redact(e), newlines=True)}", file=sys.stderr)
        return e.exit_status
    except (OSError, ValueError) as e:
        if debug:
            raise
        print(f"archive: error: {printable(redact(e), newlines=True)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a bug: one clear line, not a traceback (the audit event was written by Session.run)
        if debug:
            raise
        print(f"archive: internal error [internal_error]: {type(e).__name__}: {printable(redact(e))} "
              "(ARCHIVE_DEBUG=1 shows where)", file=sys.stderr)
        return EX_SOFTWARE


if __name__ == "__main__":
    sys.exit(main())
