"""The HTTP API (FastAPI; the OpenAPI document at ``/api/v1/openapi.json``), served by ``archive serve``.

Every request authenticates with a token (``Authorization: Bearer arc_…``, see :mod:`archive.tokens`) and
every operation goes through the same :class:`archive.access.Session` as the CLI, so it is authorised and
recorded in the audit trail — refusals included, and requests with no valid token too. Content (a
record's detail, a part's bytes) needs a stated reason: the ``X-Archive-Reason`` header, or ``reason`` in
the query for players that cannot set headers.

Errors are JSON ``{"code", "message", "details"}`` with the error's HTTP status: 401 for a missing,
unknown, revoked or expired token, 403 for a refusal, 404, 416, 422 for bad input. Nothing else reaches a
client: an unexpected failure is a 500 saying only that, with the details in the server's log.

Parts are served with HTTP Range (RFC 9110): a request for ``bytes=a-b`` answers 206 with only the
covering sealed segments decrypted, so playback can start anywhere in an hour-long call at once.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote

from fastapi import Body, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from archive.access import Session, denied_without_identity
from archive.errors import ArchiveError, InputError, ObjectNotFound
from archive.settings import Settings
from archive.tokens import TokenInvalid, Tokens

log = logging.getLogger("archive.api")
API = "/api/v1"
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class RangeNotSatisfiable(InputError):
    code = "range_not_satisfiable"
    http_status = 416


class HoldRequest(BaseModel):
    case: str = Field(description="case or matter id, e.g. CASE-2024-17")
    records: list[str] = Field(default_factory=list, description="record ids to hold")
    query: str | None = Field(None, description="also hold every record this query matches")
    reason: str = Field(min_length=1, description="why, for the audit trail")


class ReleaseRequest(BaseModel):
    reason: str = Field(min_length=1)


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


def create_app(settings: Settings | None = None) -> FastAPI:
    from archive.services import open_archive, services_for

    services = services_for(open_archive(settings or Settings.from_env()))
    tokens = Tokens(services.settings.tokens_path, services.identities)
    app = FastAPI(title="Compliance archive API", version="1", openapi_url=f"{API}/openapi.json",
                  docs_url=f"{API}/docs", redoc_url=None,
                  description="Search, review and retrieve archived interactions. Every call needs a bearer token "
                              "and is recorded in the audit trail; content needs a stated reason.")
    app.state.services = services

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

    def session(request: Request, operation: str, target: dict) -> Session:
        """The caller's session, from the bearer token; a missing or bad token is recorded and refused."""
        header = request.headers.get("authorization", "")
        presented = header[7:].strip() if header[:7].lower() == "bearer " else None
        try:
            token = tokens.authenticate(presented)
        except TokenInvalid as e:
            denied_without_identity(services.archive.audit, None, operation, {**target, "via": "api"}, e)
            raise
        request.state.actor = token.actor
        return Session(services.archive.audit, token, token.actor)

    def reason_of(request: Request, reason: str | None) -> str | None:
        header = request.headers.get("x-archive-reason")
        return unquote(header) if header else reason

    def run(request: Request, operation: str, do, target: dict, reason: str | None = None, case: str | None = None):
        s = session(request, operation, target)
        target["via"] = "api"  # the same dict: what do() adds (record ids, counts) is recorded with it
        return s.run(operation, do, target=target, reason=reason_of(request, reason),
                     case=request.headers.get("x-archive-case") or case)

    @app.get(f"{API}/search", summary="Search with the query language (docs/search.md)")
    def search(request: Request, q: str = Query("", description="e.g. agent:1042 \"not a deposit\""),
               limit: int = Query(50, ge=1, le=500), cursor: str | None = None,
               facets: str = Query("", description="comma-separated: channel,agent,policy,hold,finding,month"),
               total: bool = False) -> dict:
        wanted = tuple(f for f in facets.split(",") if f)
        target = {"query": q}

        def do():
            page = services.index.query(q, limit=limit, cursor=cursor, facets=wanted, total=total)
            target["results"] = len(page.records)
            return {"records": page.records, "next": page.next, "total": page.total,
                    "facets": {k: [{"value": v, "count": n} for v, n in vs] for k, vs in page.facets.items()}}
        return run(request, "search", do, target)

    @app.get(f"{API}/timeline", summary="Every interaction of one customer, all channels, oldest first")
    def timeline(request: Request, customer: str | None = None, account: str | None = None,
                 phone: str | None = None) -> dict:
        chosen = [(f, v) for f, v in (("customer.id", customer), ("customer.account", account),
                                      ("customer.phone", phone)) if v]
        if len(chosen) != 1:
            raise InputError("give exactly one of customer, account, phone")
        field, value = chosen[0]
        return run(request, "search", lambda: {"records": services.index.timeline(field, value)},
                   {"timeline": {field: value}})

    def manifest_of(rid: str) -> dict:
        if not re.fullmatch(r"r[a-z2-7]{32}", rid):
            raise ObjectNotFound(f"no record {rid!r}", record_id=rid)
        return services.retention.manifest(rid)

    @app.get(f"{API}/records/{{record_id}}", summary="A record: metadata, parts, retention, holds (needs a reason)")
    def record(request: Request, record_id: str, reason: str | None = None) -> dict:
        def do():
            services.retention.refresh()
            manifest = manifest_of(record_id)
            return {**{k: v for k, v in manifest.items() if k != "parts"},
                    "parts": [{k: v for k, v in p.items() if k != "inline"} for p in manifest["parts"]],
                    "retention": services.retention.decision(record_id, manifest),
                    "holds": services.retention.held_records().get(record_id, [])}
        return run(request, "view", do, {"records": [record_id]}, reason)

    @app.get(f"{API}/records/{{record_id}}/parts/{{part}}",
             summary="A part's bytes, verified; HTTP Range for playback from any point (needs a reason)",
             responses={206: {"description": "the requested range"}, 416: {"description": "range not satisfiable"}})
    def part(request: Request, record_id: str, part: str, reason: str | None = None):
        target = {"records": [record_id], "part": part}
        header = request.headers.get("range")

        def do():
            manifest = manifest_of(record_id)
            info = next((p for p in manifest["parts"] if p["name"] == part), None)
            if info is None:
                raise ObjectNotFound(f"record {record_id} has no part {part!r}", part=part)
            size = info["size"]
            media = info.get("media_type") or "application/octet-stream"
            headers = {"Accept-Ranges": "bytes", "Cache-Control": "private, no-store",
                       "Content-Disposition": f"inline; filename=\"{record_id}-{re.sub(r'[^A-Za-z0-9._-]', '_', part)}\""}
            if header:
                start, end = _parse_range(header, size)
                target["range"] = f"{start}-{end - 1}"
                body = b"".join(services.ingestor.read_part(manifest, part, start, end))
                return Response(body, status_code=206, media_type=media, headers={
                    **headers, "Content-Range": f"bytes {start}-{end - 1}/{size}"})
            return StreamingResponse(services.ingestor.read_part(manifest, part), media_type=media,
                                     headers={**headers, "Content-Length": str(size)})
        return run(request, "retrieve", do, target, reason)

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

    @app.get(f"{API}/holds", summary="Legal holds: cases, records, history")
    def holds(request: Request) -> dict:
        def do():
            services.retention.refresh()
            return {"holds": list(services.retention.holds().values())}
        return run(request, "hold-list", do, {"holds": "all"})

    @app.post(f"{API}/holds", summary="Place a legal hold on records (legal role)", status_code=201)
    def place_hold(request: Request, body: HoldRequest = Body(...)) -> dict:
        target: dict = {"case": body.case}

        def do():
            services.retention.refresh()
            records = sorted(set(body.records) | set(services.index.ids(body.query) if body.query else []))
            held = services.retention.place_hold(body.case, records, by=request.state.actor, reason=body.reason,
                                                 query=body.query)
            target["records"] = held
            return {"case": body.case, "records": held}
        return run(request, "hold", do, target, body.reason, body.case)

    @app.post(f"{API}/holds/{{case}}/release-requests", status_code=202,
              summary="Request the release of a hold; a second, different legal identity approves it")
    def request_release(request: Request, case: str, body: ReleaseRequest = Body(...)) -> dict:
        def do():
            services.retention.refresh()
            request_id = services.retention.request_release(case=case, by=request.state.actor, reason=body.reason)
            return {"case": case, "request": request_id,
                    "next": "a second, different legal identity approves: archive approve " + request_id}
        return run(request, "hold-release-request", do, {"case": case}, body.reason, case)

    @app.post(f"{API}/events", summary="Record a retention trigger event (legal or admin)", status_code=201)
    def event(request: Request, body: EventRequest = Body(...)) -> dict:
        target: dict = {"event": body.kind}

        def do():
            services.retention.refresh()
            event, changed = services.retention.add_event(
                body.kind, date=body.date, by=request.state.actor, account=body.account, contract=body.contract,
                customer=body.customer, records=body.records, dispute=body.dispute, until=body.until, note=body.note)
            target["records"] = [c["record_id"] for c in changed]
            return {"event": event, "changed": changed}
        return run(request, "retention-event", do, target)

    @app.get(f"{API}/records/{{record_id}}/audit", summary="Who touched a record, when and why")
    def history(request: Request, record_id: str) -> dict:
        def do():
            rows = [{"seq": e.seq, **{k: e.event.get(k) for k in ("time", "actor", "role", "action", "outcome",
                                                                   "reason", "case")}}
                    for e in services.archive.audit.events()
                    if record_id in e.event.get("target", {}).get("records", [])]
            return {"record_id": record_id, "events": rows}
        return run(request, "audit-show", do, {"records": [record_id]})

    @app.get(f"{API}/status", summary="Records, quarantine, the last fixity sweep")
    def status(request: Request) -> dict:
        def do():
            services.retention.refresh()
            return services.status()
        return run(request, "status", do, {"status": "archive"})

    return app


def _parse_range(header: str, size: int) -> tuple[int, int]:
    """[start, end) of a single-range ``bytes=`` header (RFC 9110 §14.1.2); raises RangeNotSatisfiable."""
    m = _RANGE.fullmatch(header.strip())
    if not m or not (m.group(1) or m.group(2)):
        raise RangeNotSatisfiable(f"only a single bytes range is served, not {header[:60]!r}")
    first, last = m.group(1), m.group(2)
    if first:
        start = int(first)
        end = min(int(last) + 1, size) if last else size
    else:  # a suffix: the last N bytes
        start, end = max(0, size - int(last)), size
    if start >= size or start >= end:
        raise RangeNotSatisfiable(f"range {header!r} is outside the part's {size} bytes", size=size)
    return start, end


def serve(settings: Settings, host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(create_app(settings), host=host, port=port, log_level="warning", access_log=False,
                server_header=False)
