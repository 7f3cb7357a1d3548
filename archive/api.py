"""The HTTP API (FastAPI; the OpenAPI document at ``/api/v1/openapi.json``) and the auditors' web console
(``/``), served by ``archive serve``.

Every request authenticates with a token (``Authorization: Bearer arc_…``, see :mod:`archive.tokens`), or,
for the console, with the session cookie ``POST /api/v1/session`` sets after checking a token: an opaque
session id, bound to the token, ended by sign-out, idle time or the token's end (HttpOnly, SameSite=Strict;
a state-changing request with the cookie must also carry ``X-Archive-Console: 1``, which no cross-site
form can send, and a request with it that a browser marks as coming from another site or a sandboxed
frame, ``Sec-Fetch-Site``, is refused). Every operation goes through the same
:class:`archive.access.Session` as the CLI, so it is authorised and recorded in the audit trail —
refusals included, requests with no valid token too, and failures of any kind: an exception that is not
an ArchiveError is recorded as ``internal_error``. Content (a record's detail, a part's bytes) needs a
stated reason: the ``X-Archive-Reason`` header, or ``reason`` in the query for players that cannot set
headers.

Search results are summaries — who, when, which channel, which parts, findings, holds — never content:
message text and transcripts are shown only by the record endpoint, with a reason, and there with card
numbers masked (PCI DSS 3.3.1). The original bytes stay available, unmasked, as parts.

Content the archive did not write is never active in its origin (:mod:`archive.webcontent`): a part is
served as an attachment of ``application/octet-stream`` unless it is audio, video, a raster image or plain
text, always under a sandboxing CSP, and never to a ``<script>``, a style sheet, a worker or a frame; an
e-mail's HTML body is read through ``/records/{id}/html``, sandboxed, script-less, with no remote loads,
in a frame of the console.

Errors are JSON ``{"code", "message", "details"}`` with the error's HTTP status: 401 for a missing,
unknown, revoked or expired token, 403 for a refusal, 404, 413, 416, 422 for bad input. Nothing else
reaches a client: an unexpected failure is a 500 saying only that, with the details in the server's log.

Parts are served with HTTP Range (RFC 9110): a request for ``bytes=a-`` answers 206, decrypting only the
covering sealed segments, a few at a time, so playback starts anywhere in an hour-long call at once. A
streamed body is audited when it ends: a download that fails mid-way (a tampered segment) is recorded as
an error and cut short, never as ``retrieve ok``. An upload is read only after its token is checked and
authorised, with the size limit enforced as it streams (:mod:`archive.uploads`).
"""

from __future__ import annotations

import functools
import logging
import re
import socket
import tempfile
from pathlib import Path
from urllib.parse import unquote

from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from archive.access import AccessDenied, Attempt, Session, denied_without_identity
from archive.apistream import AuditedStream, request_body
from archive.audit.log import Event
from archive.errors import ArchiveError, InputError, ObjectNotFound
from archive.search.document import mask_pci, summary
from archive.settings import Settings
from archive.tokens import ConsoleSessions, Tokens
from archive.uploads import MAX_FILES, MultipartReceiver, check_length
from archive.webcontent import (HTML_VIEW_CSP, HTML_VIEW_DESTINATIONS, PART_DESTINATIONS, html_media_type,
                                part_headers, refused_destination)

log = logging.getLogger("archive.api")
API = "/api/v1"
COOKIE = "archive_session"
CONSOLE = Path(__file__).with_name("console")
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_RECORD_ID = re.compile(r"r[a-z2-7]{32}")
_SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
# An open range from a player (``bytes=K-`` after a seek) is answered up to the end of the sealed segment it
# starts in (1 MiB by default), and at least 256 KiB. A player reads ahead a little and then seeks again
# or stops; what the server had decrypted beyond, into socket buffers nobody reads, is waste: a seek
# served this way costs one segment's decryption instead of two or three (bench/api.py).
OPEN_RANGE_ALIGN = 1024 * 1024
OPEN_RANGE_MIN = 256 * 1024
# A range up to this size (every open range, and what players ask for) is decrypted in the request's
# thread and answered as one body; larger ones stream a few segments at a time.
WHOLE_RANGE = 4 * 1024 * 1024
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "media-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


class RangeNotSatisfiable(InputError):
    code = "range_not_satisfiable"
    http_status = 416


class Rejected(InputError):
    code = "input_rejected"
    http_status = 422


class Conflicting(InputError):
    """The same content was archived before with other metadata; this delivery is kept as evidence."""

    code = "metadata_conflict"
    http_status = 409


class NoInbox(InputError):
    code = "inbox_not_configured"
    http_status = 409


class QueueUnavailable(ArchiveError):
    code = "queue_unavailable"
    http_status = 503
    transient = True


class CrossSite(AccessDenied):
    code = "console_header_missing"


class CrossSiteFetch(AccessDenied):
    code = "cross_site_request"


class ContentRefused(AccessDenied):
    """Raised when content is asked for as something a browser would run or frame (Sec-Fetch-Dest)."""

    code = "content_use_refused"


# --- request bodies -----------------------------------------------------------------------------------


class SessionRequest(BaseModel):
    token: str = Field(description="an API token (arc_…) from 'archive token create'")


class HoldRequest(BaseModel):
    case: str = Field(min_length=1, max_length=200, description="case or matter id, e.g. CASE-2024-17")
    records: list[str] = Field(default_factory=list, description="record ids to hold")
    query: str | None = Field(None, description="also hold every record this query matches")
    reason: str = Field(min_length=1, description="why, for the audit trail")


class ReasonBody(BaseModel):
    reason: str = Field(min_length=1, description="why, for the audit trail")


class EventRequest(BaseModel):
    kind: str = Field(description="contract-terminated, account-closed, dispute-opened, dispute-resolved, "
                                  "retention-extended")
    date: str = Field(description="ISO-8601 date it happened (not in the future)")
    account: str | None = None
    contract: str | None = None
    customer: str | None = None
    records: list[str] | None = None
    dispute: str | None = None
    until: str | None = None
    note: str | None = None


class ExportRequest(BaseModel):
    case: str = Field(min_length=1, max_length=200, description="the case or matter the evidence is for")
    reason: str = Field(min_length=1, description="why it leaves the archive, for the audit trail and bag-info")
    records: list[str] = Field(default_factory=list, description="record ids")
    query: str | None = Field(None, description="or every record this query matches")
    customer: str | None = Field(None, description="or every record of this customer id")


class RegisterRequest(BaseModel):
    name: str = Field(min_length=1, description="a file's path in the inbox, relative to it; its whole group "
                                                "(recording and sidecar) is ingested")
    inbox: str | None = Field(None, description="which of ARCHIVE_INBOX (when there are several)")


# --- what clients see of a record --------------------------------------------------------------------


def _masked(value):
    if isinstance(value, str):
        return mask_pci(value)
    if isinstance(value, list):
        return [_masked(v) for v in value]
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    return value


def detail(manifest: dict, ingestor) -> dict:
    """A record for review: its metadata (message text, subjects, source fields) and transcript with card
    numbers masked."""
    meta = _masked(manifest["metadata"])  # messages, subjects, and any source field holding a card number
    transcript = None
    for p in manifest["parts"]:
        if p["name"] == "transcript" and str(p.get("media_type", "")).startswith("text/") and p["size"] <= 2**20:
            transcript = mask_pci(b"".join(ingestor.read_part(manifest, p["name"])).decode("utf-8", "replace"))
    return {"record_id": manifest["record_id"], "ingested_at": manifest.get("ingested_at"),
            "input": manifest.get("input"), "metadata": meta, "transcript": transcript,
            "parts": [{k: v for k, v in p.items() if k not in ("inline", "object", "tag_digest")}
                      for p in manifest["parts"]],
            "findings": manifest.get("findings", [])}


def create_app(settings: Settings | None = None) -> FastAPI:
    from archive.ingest.journal import Journals
    from archive.jobs import ExportJobs
    from archive.services import open_archive, services_for

    services = services_for(open_archive(settings or Settings.from_env()))
    settings = services.settings
    tokens = Tokens(settings.tokens_path, services.identities)
    sessions = ConsoleSessions(settings.home / "sessions.sqlite", tokens)
    jobs = ExportJobs(settings.home / "exports", services)
    journals = Journals(settings.home / "ingest-journal")
    app = FastAPI(title="Compliance archive API", version="1", openapi_url=f"{API}/openapi.json",
                  docs_url=f"{API}/docs", redoc_url=None,
                  description="Search, review and retrieve archived interactions. Every call needs a bearer token "
                              "and is recorded in the audit trail; content needs a stated reason.")
    app.state.services = services
    app.state.jobs = jobs


    @app.exception_handler(ArchiveError)
    async def archive_error(request: Request, e: ArchiveError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if e.http_status == 401 else {}
        if isinstance(e, RangeNotSatisfiable) and "size" in e.details:
            headers["Content-Range"] = f"bytes */{e.details['size']}"
        return JSONResponse(e.to_dict(), status_code=e.http_status, headers=headers or None)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"code": "internal_error", "message": "the server failed; the error is in its log"},
                            status_code=500)

    def authenticate(request: Request, operation: str, target: dict, reason: str | None = None,
                     case: str | None = None):
        header = request.headers.get("authorization", "")
        presented = header[7:].strip() if header[:7].lower() == "bearer " else (header or None)
        try:
            if presented is None and COOKIE in request.cookies:
                if request.method not in _SAFE_METHODS and request.headers.get("x-archive-console") != "1":
                    raise CrossSite("a console request must carry the header X-Archive-Console: 1")
                # the console's own pages send same-origin, an address typed or bookmarked none; anything
                # else — another site, or a sandboxed frame (an opaque origin) — gets nothing with the cookie
                site = request.headers.get("sec-fetch-site")
                if site not in (None, "same-origin", "none"):
                    raise CrossSiteFetch(f"a request with the console's session must come from the console, "
                                         f"not from a {site[:20]!r} context")
                return sessions.authenticate(request.cookies[COOKIE])
            return tokens.authenticate(presented)
        except AccessDenied as e:
            denied_without_identity(services.archive.audit, None, operation, {**target, "via": "api"}, e,
                                    reason=reason_of(request, reason or request.query_params.get("reason")),
                                    case=request.headers.get("x-archive-case") or case)
            raise
        except ArchiveError as e:  # the session store failed: no refusal, but the attempt is on record
            services.archive.audit.append(Event(actor="(unknown)", role="none", action=operation, outcome="error",
                                                target={**target, "via": "api"}, details={"error": e.code}))
            raise

    def session(request: Request, operation: str, target: dict, reason: str | None = None,
                case: str | None = None) -> Session:
        """The caller's session, from the bearer token or the console's cookie; a missing or bad token is
        recorded and refused."""
        token = authenticate(request, operation, target, reason, case)
        request.state.actor, request.state.role = token.actor, token.role
        return Session(services.archive.audit, token, token.actor)

    def reason_of(request: Request, reason: str | None) -> str | None:
        header = request.headers.get("x-archive-reason")
        return unquote(header) if header else reason

    def run(request: Request, operation: str, do, target: dict, reason: str | None = None, case: str | None = None):
        s = session(request, operation, target, reason, case)
        target["via"] = "api"  # the same dict: what do() adds (record ids, counts) is recorded with it
        return s.run(operation, do, target=target, reason=reason_of(request, reason),
                     case=request.headers.get("x-archive-case") or case)

    def begin(request: Request, operation: str, target: dict, reason: str | None = None) -> Attempt:
        """An attempt recorded when it ends (a streamed response), authorised now."""
        s = session(request, operation, target, reason)
        target["via"] = "api"
        return Attempt(s, operation, target=target, reason=reason_of(request, reason),
                       case=request.headers.get("x-archive-case"))

    def served(request: Request, attempt: Attempt, prepare):
        """The response ``prepare()`` makes for ``attempt``: a body already read in full is recorded ok at
        once, a stream when it ends; a failure before the first byte is recorded and raised."""
        try:
            response = prepare()
        except BaseException as e:
            attempt.failed(e)
            raise
        if not isinstance(response, AuditedStream):
            attempt.succeeded()
        return response

    def manifest_of(rid: str) -> dict:
        if not _RECORD_ID.fullmatch(rid):
            raise ObjectNotFound(f"no record {rid!r}", record_id=rid)
        return services.retention.manifest(rid)

    @functools.lru_cache(maxsize=4096)
    def parts_of(rid: str) -> dict:
        """A record's manifest, for serving its sealed parts (a player asks for one part many times): a
        committed manifest never changes, and a sealed part is read from the store, so a part of a record
        disposed of since is not found. Parts carried inside the manifest are served from the manifest as
        read now, never from this one. Read-only."""
        return manifest_of(rid)

    # --- session (the console's sign-in) ----------------------------------------------------------------

    @app.post(f"{API}/session", summary="Sign in with a token: sets the console's session cookie (an opaque "
                                        "session id, never the token)")
    def sign_in(request: Request, body: SessionRequest) -> JSONResponse:
        target: dict = {"session": "start", "via": "api"}
        try:
            token = tokens.authenticate(body.token)
        except AccessDenied as e:
            denied_without_identity(services.archive.audit, None, "session-start", target, e)
            raise
        target["token"] = token.token_id

        def do():
            session_id, info = sessions.start(token)
            target["session"] = info["ref"]  # a reference (a prefix of the stored hash), never the id
            return session_id, info
        session_id, info = Session(services.archive.audit, token, token.actor).run("session-start", do,
                                                                                   target=target)
        response = JSONResponse({"actor": token.actor, "role": token.role, "token": token.token_id,
                                 "expires_at": token.expires_at, "session_ends_at": info["ends_at"],
                                 "idle_timeout_s": info["idle_timeout_s"]})
        response.set_cookie(COOKIE, session_id, max_age=info["max_age_s"], path=API, httponly=True,
                            samesite="strict", secure=request.url.scheme == "https")
        return response

    @app.get(f"{API}/session", summary="Who the token or session cookie acts as")
    def whoami(request: Request) -> dict:
        token = authenticate(request, "session-check", {"session": "check"})
        return {"actor": token.actor, "role": token.role, "token": token.token_id, "expires_at": token.expires_at}

    @app.delete(f"{API}/session", summary="Sign out: ends the console session (on the server too) and clears "
                                          "its cookie", status_code=204)
    def sign_out(request: Request) -> Response:
        from archive.access import Access, Identity

        session_id = request.cookies.get(COOKIE)
        try:
            token = sessions.authenticate(session_id)
        except AccessDenied:
            token = None  # nothing live to end: the cookie is cleared all the same
        if sessions.end(session_id) and token is not None:
            Access(services.archive.audit, Identity(token.actor, frozenset({token.role}))).record(
                "session-end", target={"session": sessions.reference(session_id), "token": token.token_id,
                                       "via": "api"}, role=token.role)
        response = Response(status_code=204)
        response.delete_cookie(COOKIE, path=API, httponly=True, samesite="strict",
                               secure=request.url.scheme == "https")
        return response

    # --- search and review ------------------------------------------------------------------------------

    @app.get(f"{API}/search", summary="Search with the query language (docs/search.md); summaries, no content")
    def search(request: Request, q: str = Query("", max_length=2000, description='e.g. agent:1042 "not a deposit"'),
               limit: int = Query(50, ge=1, le=500), cursor: str | None = Query(None, max_length=2000),
               facets: str = Query("", description="comma-separated: channel,agent,policy,hold,finding,month"),
               total: bool = False) -> dict:
        wanted = tuple(f for f in facets.split(",") if f)
        target = {"query": q}

        def do():
            page = services.index.query(q, limit=limit, cursor=cursor, facets=wanted, total=total)
            target.update(results=len(page.records), records=[m["record_id"] for m in page.records])
            # (a JSONResponse: plain JSON types need none of FastAPI's per-value encoding, the hot path's cost)
            return JSONResponse({"records": [summary(m) for m in page.records], "next": page.next,
                                 "total": page.total, "facets": {k: [{"value": v, "count": n} for v, n in vs]
                                                                 for k, vs in page.facets.items()}})
        return run(request, "search", do, target)

    @app.get(f"{API}/timeline", summary="Every interaction of one customer, all channels, oldest first")
    def timeline(request: Request, customer: str | None = None, account: str | None = None,
                 phone: str | None = None) -> dict:
        chosen = [(f, v) for f, v in (("customer.id", customer), ("customer.account", account),
                                      ("customer.phone", phone)) if v]
        if len(chosen) != 1:
            raise InputError("give exactly one of customer, account, phone")
        field, value = chosen[0]
        target: dict = {"timeline": {field: value}}

        def do():
            records = services.index.timeline(field, value)
            target.update(results=len(records), records=[m["record_id"] for m in records])
            return {"records": [summary(m) for m in records]}
        return run(request, "search", do, target)

    @app.get(f"{API}/records/{{record_id}}", summary="A record: metadata, messages (card numbers masked), parts, "
                                                    "retention, holds (needs a reason)")
    def record(request: Request, record_id: str, reason: str | None = None) -> dict:
        def do():
            services.retention.refresh()
            manifest = manifest_of(record_id)
            return {**detail(manifest, services.ingestor),
                    "retention": services.retention.decision(record_id, manifest),
                    "holds": services.retention.held_records().get(record_id, [])}
        return run(request, "view", do, {"records": [record_id]}, reason)

    def part_info(record_id: str, part: str) -> tuple[dict, dict]:
        manifest = parts_of(record_id)
        info = next((p for p in manifest["parts"] if p["name"] == part), None)
        if info is not None and "inline" in info:  # its bytes are in the manifest: read it from the store
            manifest = manifest_of(record_id)
            info = next((p for p in manifest["parts"] if p["name"] == part), None)
        if info is None:
            raise ObjectNotFound(f"record {record_id} has no part {part!r}", part=part)
        return manifest, info

    def refuse_use(request: Request, allowed: frozenset[str]) -> None:
        dest = request.headers.get("sec-fetch-dest")
        why = refused_destination(dest, allowed)
        if why:
            raise ContentRefused(why, destination=dest[:40])

    @app.get(f"{API}/records/{{record_id}}/parts/{{part}}",
             summary="A part's bytes, verified; HTTP Range for playback from any point (needs a reason). Served "
                     "as an attachment unless it is audio, video, a raster image or plain text",
             responses={206: {"description": "the requested range"}, 416: {"description": "range not satisfiable"}})
    def part(request: Request, record_id: str, part: str, reason: str | None = None,
             download: bool = False):
        target = {"records": [record_id], "part": part}
        header = request.headers.get("range")
        attempt = begin(request, "retrieve", target, reason)

        def prepare():
            refuse_use(request, PART_DESTINATIONS)  # never a script, a style sheet, a worker or a frame
            manifest, info = part_info(record_id, part)
            size = info["size"]
            media, fenced = part_headers(record_id, part, info.get("filename"), info.get("media_type"), download)
            headers = {"Accept-Ranges": "bytes", "Cache-Control": "private, no-store", **dict(fenced)}
            if header:
                start, end = _parse_range(header, size, open_end=lambda k: max(k + OPEN_RANGE_MIN,
                                                                               (k // OPEN_RANGE_ALIGN + 1) * OPEN_RANGE_ALIGN))
                target["range"] = f"{start}-{end - 1}"
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
                chunks = services.ingestor.read_part(manifest, part, start, end)
                if end - start <= WHOLE_RANGE:  # a player's seek: decrypted here, sent as one body
                    return Response(b"".join(chunks), status_code=206, media_type=media, headers=headers)
                return AuditedStream(chunks, end - start, attempt, status_code=206, media_type=media, headers=headers)
            return AuditedStream(services.ingestor.read_part(manifest, part), size, attempt, media_type=media,
                                 headers=headers)
        return served(request, attempt, prepare)

    @app.get(f"{API}/records/{{record_id}}/html",
             summary="An e-mail's HTML body to read in the console (needs a reason): sandboxed, no script, "
                     "no remote loads; framed only by the console", response_class=Response)
    def html_body(request: Request, record_id: str, reason: str | None = None):
        target = {"records": [record_id], "part": "body-html", "rendered": "sandboxed"}
        attempt = begin(request, "retrieve", target, reason)

        def prepare():
            refuse_use(request, HTML_VIEW_DESTINATIONS)
            manifest, info = part_info(record_id, "body-html")
            headers = {"Content-Type": html_media_type(info.get("media_type")), "Content-Security-Policy": HTML_VIEW_CSP,
                       "X-Frame-Options": "SAMEORIGIN", "X-Content-Type-Options": "nosniff",
                       "X-DNS-Prefetch-Control": "off", "Cross-Origin-Resource-Policy": "same-origin",
                       "Cache-Control": "private, no-store", "Content-Disposition": "inline"}
            return AuditedStream(services.ingestor.read_part(manifest, "body-html"), info["size"], attempt,
                                 headers=headers)
        return served(request, attempt, prepare)

    @app.get(f"{API}/records/{{record_id}}/retention", summary="Why a record is kept until when, holds, findings")
    def explain(request: Request, record_id: str) -> dict:
        from archive.retention.decide import explain as words

        def do():
            services.retention.refresh()
            manifest = manifest_of(record_id)
            decision = services.retention.decision(record_id, manifest)
            return {"record_id": record_id, "explanation": words(decision), "decision": decision,
                    "holds": services.retention.held_records().get(record_id, []),
                    "findings": manifest.get("findings", [])}
        return run(request, "policy-explain", do, {"records": [record_id]})

    @app.get(f"{API}/records/{{record_id}}/audit", summary="Who touched a record, when and why")
    def history(request: Request, record_id: str) -> dict:
        def do():
            services.archive.audit.integrate_all()  # the workers' staged events too
            rows = [{"seq": e.seq, **{k: e.event.get(k) for k in ("time", "actor", "role", "action", "outcome",
                                                                   "reason", "case")},
                     "range": e.event.get("target", {}).get("range"), "part": e.event.get("target", {}).get("part")}
                    for e in services.archive.audit.events()
                    if record_id in e.event.get("target", {}).get("records", [])]
            return {"record_id": record_id, "events": rows}
        return run(request, "audit-show", do, {"records": [record_id]})

    # --- ingest -----------------------------------------------------------------------------------------

    @app.post(f"{API}/ingest", summary="Upload one input: a recording with its sidecar (.json or SIPREC .xml), "
                                       "a chat transcript, or an .eml", status_code=201,
              responses={200: {"description": "every input was archived before (duplicates)"},
                         401: {"description": "no valid token: refused before the body is read"},
                         409: {"description": "the same content was archived with other metadata (both kept)"},
                         413: {"description": "larger than ARCHIVE_MAX_INPUT_BYTES (nothing is kept)"},
                         422: {"description": "rejected, with the reason (and quarantined)"}},
              openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                  "type": "object", "required": ["files"], "properties": {"files": {
                      "type": "array", "items": {"type": "string", "format": "binary"},
                      "description": f"the files of one input, at most {MAX_FILES} (formats are detected)"}}}}}}})
    def ingest(request: Request) -> JSONResponse:
        from archive.ingest.discover import Limits
        from archive.ingest.discover import group as discover_group
        from archive.ingest.pipeline import Summary, as_json

        target: dict = {"upload": []}

        def do():
            # authorised by now (run): only then is a byte of the body read, and never more than the limits
            check_length(request.headers.get("content-length"), settings.max_input_bytes)
            uploads = settings.home / "uploads"
            uploads.mkdir(exist_ok=True, mode=0o700)
            with tempfile.TemporaryDirectory(dir=uploads) as scratch:
                receiver = MultipartReceiver(request.headers.get("content-type"), Path(scratch),
                                             max_file_bytes=settings.max_input_bytes)
                try:
                    for chunk in request_body(request):
                        receiver.feed(chunk)
                    names = receiver.finish()
                finally:
                    receiver.close()
                    target["upload"] = [n[:200] for n in receiver.names[:20]]
                prefix = scratch.rstrip("/") + "/"
                outcomes = []
                services.retention.refresh()
                # as archive ingest: what dead runs committed is indexed and named in this event, and this
                # upload's records are journaled before their commit, until this event is recorded
                dead = journals.dead()
                recovered = services.ingestor.recover(dead.records)
                journal = journals.start()
                done_with.extend((journal, dead))
                try:
                    for found in discover_group(Path(scratch), names, Limits.of(settings)):
                        found.origin = "upload:" + found.origin.removeprefix(prefix)
                        found.rename = (prefix, "upload:")  # reasons name the upload, not the scratch copy
                        if found.rejection is not None:
                            found.rejection = type(found.rejection)(found.rejection.code,
                                                                    str(found.rejection).replace(prefix, "upload:"))
                        outcomes.append(services.ingestor.ingest(found, journal=journal))
                finally:
                    services.index.flush()  # what was committed is indexed, whatever happened next
            target["records"] = sorted({r for o in outcomes for r in o.record_ids} | set(recovered))
            if recovered:
                target.update(recovered=recovered, recovered_runs=dead.runs)
            target.update({s: sum(o.status == s for o in outcomes)
                           for s in ("archived", "duplicate", "conflict", "rejected")})
            result = Summary()
            for o in outcomes:
                result.add(o)
            body = as_json(result)
            if result.rejected or result.conflict:  # the attempt's outcome is the client's, with the counts
                raise (Rejected if result.rejected else Conflicting)(
                    f"{result.rejected + result.conflict} input(s) rejected or in conflict: " +
                    "; ".join(f"{o.origin}: [{o.code}] {o.reason}" for o in outcomes
                              if o.status in ("rejected", "conflict")), **body)
            return JSONResponse(body, status_code=201 if result.archived else 200)

        done_with: list = []  # journals to close once the event naming their records is recorded
        try:
            response = run(request, "ingest", do, target)
        except ArchiveError as e:
            if not e.transient:  # do() failed and its event is recorded; else the journals stay for recovery
                for j in done_with:
                    j.close()
            raise
        for j in done_with:
            j.close()
        return response

    @app.post(f"{API}/ingest/register", status_code=202,
              summary="Queue the ingest of a file already in an inbox (ARCHIVE_INBOX) for the workers")
    def register(request: Request, body: RegisterRequest) -> dict:
        from archive.inbox import group_id

        target: dict = {"inbox": body.inbox, "input": body.name}

        def do():
            inboxes = settings.inboxes
            url = body.inbox or (inboxes[0] if len(inboxes) == 1 else None)
            if url not in inboxes:
                raise NoInbox("no such inbox: " + (f"configured are {', '.join(inboxes)}" if inboxes else
                                                   "none is configured (ARCHIVE_INBOX)"), inbox=body.inbox)
            parts = body.name.split("/")
            if body.name.startswith("/") or any(p in ("", ".", "..") for p in parts):
                raise InputError(f"{body.name[:80]!r} is not a path inside the inbox")
            gid = group_id(body.name)
            from workers.app import app as celery

            try:
                task = celery.send_task("archive.ingest_input", args=[url, gid])
            except Exception as e:  # noqa: BLE001 — kombu's OperationalError and friends: the broker is not there
                raise QueueUnavailable(f"the work queue does not answer ({type(e).__name__}); is the broker "
                                       "(ARCHIVE_BROKER_URL) running?") from None
            target.update({"inbox": url, "group": gid, "task": task.id})
            return {"queued": {"inbox": url, "group": gid, "task": task.id}}
        return run(request, "ingest", do, target)

    # --- holds, approvals, events -----------------------------------------------------------------------

    @app.get(f"{API}/holds", summary="Legal holds: cases, records, history")
    def holds(request: Request) -> dict:
        def do():
            services.retention.refresh()
            return {"holds": list(services.retention.holds().values())}
        return run(request, "hold-list", do, {"holds": "all"})

    @app.post(f"{API}/holds", summary="Place a legal hold on records (legal role)", status_code=201)
    def place_hold(request: Request, body: HoldRequest) -> dict:
        target: dict = {"case": body.case}

        def do():
            services.retention.refresh()
            records = sorted(set(body.records) | set(services.index.ids(body.query) if body.query else []))
            if not records:
                raise InputError("nothing to hold: name records, or a query that matches some")
            held = services.retention.place_hold(body.case, records, by=request.state.actor, reason=body.reason,
                                                 query=body.query)
            target["records"] = held
            return {"case": body.case, "records": held}
        return run(request, "hold", do, target, body.reason, body.case)

    @app.post(f"{API}/holds/{{case}}/release-requests", status_code=202,
              summary="Request the release of a hold; a second, different legal identity approves it")
    def request_release(request: Request, case: str, body: ReasonBody) -> dict:
        target: dict = {"case": case}

        def do():
            services.retention.refresh()
            request_id = services.retention.request_release(case=case, by=request.state.actor, reason=body.reason)
            target["request"] = request_id
            return {"case": case, "request": request_id,
                    "next": f"a second, different legal identity approves: POST {API}/approvals/{request_id}"}
        return run(request, "hold-release-request", do, target, body.reason, case)

    @app.get(f"{API}/approvals", summary="Four-eyes requests waiting for a second person")
    def approvals(request: Request) -> dict:
        return run(request, "approval-list", lambda: {"pending": services.retention.pending_approvals()},
                   {"approvals": "pending"})

    @app.post(f"{API}/approvals/{{request_id}}", summary="Approve another person's request and carry it out")
    def approve(request: Request, request_id: str, body: ReasonBody) -> dict:
        target: dict = {"request": request_id}

        def do():
            services.retention.refresh()
            done = services.retention.approve(request_id, by=request.state.actor, reason=body.reason)
            t = done["target"]
            target.update(t)
            if "case" in t:
                target["records"] = done["released"]
                return {"approved": request_id, "requested_by": done["requested_by"], "case": t["case"],
                        "released": done["released"]}
            return {"approved": request_id, "requested_by": done["requested_by"], **t}
        return run(request, "approve", do, target, body.reason)

    @app.post(f"{API}/events", summary="Record a retention trigger event (legal or admin)", status_code=201)
    def event(request: Request, body: EventRequest) -> dict:
        target: dict = {"event": body.kind}

        def do():
            services.retention.refresh()
            event, changed = services.retention.add_event(
                body.kind, date=body.date, by=request.state.actor, account=body.account, contract=body.contract,
                customer=body.customer, records=body.records, dispute=body.dispute, until=body.until, note=body.note)
            target["records"] = [c["record_id"] for c in changed]
            return {"event": event, "changed": changed}
        return run(request, "retention-event", do, target)

    @app.get(f"{API}/policies", summary="The retention policies in force")
    def policies(request: Request) -> dict:
        def do():
            services.retention.refresh()
            return {"policies": [{"id": p.id, "version": p.version, "title": p.title, "citation": p.citation,
                                  "default": p.default, "lock_mode": p.lock_mode,
                                  "retain": [f"{c.period.text} from {c.trigger}" for c in p.retain]}
                                 for p in services.retention.policy_set().policies]}
        return run(request, "policy-list", do, {"policies": "all"})

    # --- exports ----------------------------------------------------------------------------------------

    @app.post(f"{API}/exports", status_code=202,
              summary="Start building a signed evidence bundle (legal role); download it when done")
    def start_export(request: Request, body: ExportRequest) -> dict:
        target: dict = {"case": body.case}

        def do():
            services.retention.refresh()
            if body.query:
                ids = services.index.ids(body.query)
            elif body.customer:
                ids = [m["record_id"] for m in services.index.timeline("customer.id", body.customer)]
            else:
                ids = list(dict.fromkeys(body.records))
            for rid in ids:
                manifest_of(rid)
            if not ids:
                raise InputError("nothing to export: name records, or a query or customer that matches some")
            job = jobs.start(ids, case=body.case, reason=body.reason, actor=request.state.actor,
                             role=request.state.role)
            target.update({"records": ids, "export": job["id"]})
            return job
        return run(request, "export", do, target, body.reason, body.case)

    @app.get(f"{API}/exports", summary="Export jobs, newest first")
    def list_exports(request: Request) -> dict:
        return run(request, "export-list", lambda: {"exports": jobs.list()}, {"exports": "all"})

    @app.get(f"{API}/exports/{{export_id}}", summary="One export job: state and progress")
    def get_export(request: Request, export_id: str) -> dict:
        return run(request, "export-list", lambda: jobs.get(export_id), {"export": export_id})

    @app.get(f"{API}/exports/{{export_id}}/bundle", summary="Download a finished bundle (BagIt ZIP, signed)",
             response_class=FileResponse)
    def download_export(request: Request, export_id: str):
        try:
            job = jobs.get(export_id)
        except ObjectNotFound as e:  # said only to someone who may list exports
            error = e

            def missing():
                raise error
            return run(request, "export-list", missing, {"export": export_id})
        target = {"export": export_id, "records": job["records"]}

        def do():
            path = jobs.bundle(export_id)
            safe = re.sub(r"[^A-Za-z0-9._-]+", "_", job["case"])
            return FileResponse(path, media_type="application/zip", filename=f"{safe}-{export_id}.zip",
                                headers={"Cache-Control": "private, no-store"})
        return run(request, "export-download", do, target, f"download of export {export_id}: {job['reason']}",
                   job["case"])

    # --- audit, quarantine, status ----------------------------------------------------------------------

    @app.get(f"{API}/audit/verify", summary="Verify the audit log against its witness; reconcile the store with it")
    def audit_verify(request: Request) -> dict:
        from archive.audit.reconcile import check_archive

        def do():
            services.retention.refresh()
            return check_archive(services.archive, services.retention).as_dict()
        return run(request, "audit-verify", do, {"audit": "verify"})

    @app.get(f"{API}/quarantine", summary="Rejected inputs and why")
    def quarantine(request: Request) -> dict:
        return run(request, "quarantine-list", lambda: {"rejected": list(services.ingestor.quarantine())},
                   {"quarantine": "list"})

    @app.get(f"{API}/status", summary="Records, quarantine, the last fixity sweep")
    def status(request: Request) -> dict:
        def do():
            services.retention.refresh()
            return services.status()
        return run(request, "status", do, {"status": "archive"})

    # --- the console ------------------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    def console() -> FileResponse:
        return FileResponse(CONSOLE / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/console", StaticFiles(directory=CONSOLE), name="console")
    app.add_middleware(SecurityHeaders)
    return app


class SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` to every response (plain ASGI: streamed bodies pass straight through)."""

    def __init__(self, app) -> None:
        self.app = app
        self.headers = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []), *(h for h in self.headers if h[0] not in present)]
            await send(message)
        return await self.app(scope, receive, with_headers)


def _parse_range(header: str, size: int, open_end=None) -> tuple[int, int]:
    """[start, end) of a single-range ``bytes=`` header (RFC 9110 §14.1.2); raises RangeNotSatisfiable.
    An open range (``bytes=K-``) ends at ``open_end(K)`` when given — a server may send less than asked
    (RFC 9110 §15.3.7) and a player asks again from where it got to."""
    m = _RANGE.fullmatch(header.strip())
    if not m or not (m.group(1) or m.group(2)):
        raise RangeNotSatisfiable(f"only a single bytes range is served, not {header[:60]!r}")
    first, last = m.group(1), m.group(2)
    if first:
        start = int(first)
        end = min(int(last) + 1, size) if last else min(size, open_end(start)) if open_end else size
    else:  # a suffix: the last N bytes
        start, end = max(0, size - int(last)), size
    if start >= size or start >= end:
        raise RangeNotSatisfiable(f"range {header!r} is outside the part's {size} bytes", size=size)
    return start, end


def app_from_env() -> FastAPI:
    """The app for each of ``archive serve --workers N``'s processes (settings from the environment)."""
    _keep_freed_memory()
    return create_app(Settings.from_env())


def _keep_freed_memory() -> None:
    """Tell glibc's malloc to keep freed memory for reuse in this server process. Every seek allocates
    a few megabyte-sized buffers (the sealed segments read, their plaintext, the body); by default glibc
    maps such buffers fresh and gives them back when freed, and the page faults of mapping them again on
    the next request cost the server more than decrypting them (bench/api.py). Up to 64 MiB buffers
    come from the heap instead, and up to 256 MiB of freed heap is kept. No-op without glibc."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 64 * 1024 * 1024)
    mallopt(m_trim_threshold, 256 * 1024 * 1024)


def serve(settings: Settings, host: str, port: int, workers: int = 1) -> None:
    import uvicorn

    options = {"host": host, "port": port, "log_level": "warning", "access_log": False, "server_header": False}
    if workers <= 1:
        _keep_freed_memory()
        uvicorn.run(create_app(settings), **options)
        return
    # Processes share nothing but the archive: its store, index and audit log take concurrent writers.
    # The listening socket is made here, as a TCP socket by protocol, not by uvicorn: asyncio turns Nagle
    # off (TCP_NODELAY) only on connections accepted from a socket that says it is TCP, and with Nagle on,
    # each keep-alive response waits ~40 ms for the client's delayed ACK between its headers and body.
    from uvicorn.supervisors import Multiprocess

    config = uvicorn.Config("archive.api:app_from_env", factory=True, workers=workers, **options)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    Multiprocess(config, sockets=[sock]).run()
