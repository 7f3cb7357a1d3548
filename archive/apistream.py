"""The API's streamed bodies, in both directions, and what they mean for the audit trail.

* :class:`AuditedStream` — a response whose attempt is recorded when it ends (:class:`archive.access.Attempt`):
  ``ok`` only once the last byte went out, an error with its code when reading failed mid-way;
* :func:`request_body` — a request body read chunk by chunk from a handler running in a worker thread,
  so an upload is read only when the handler decides to, after authentication, and never whole.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import anyio
from fastapi import Request
from fastapi.responses import Response

from archive.access import Attempt
from archive.errors import ArchiveError
from archive.uploads import BadUpload

log = logging.getLogger("archive.api")


class Interrupted(ArchiveError):
    """Recorded when a streamed response stops before its last byte without an error of the archive's:
    the client left (nothing is raised)."""

    code = "transfer_interrupted"


class AuditedStream(Response):
    """Content streamed from an iterator of verified chunks, its attempt recorded when the stream ends:

    * ``ok`` once the last byte went to the connection;
    * ``error`` with the error's code when reading failed mid-way (a tampered sealed segment): the status
      went out with the first bytes, so the connection is closed short of its Content-Length, which every
      HTTP client reports as a truncated response;
    * ``error`` ``transfer_interrupted`` when the client left first.

    The first chunk is read when the response is made, in the request's thread, so a wrong key or header
    is an ordinary JSON error response."""

    def __init__(self, chunks: Iterator[bytes], length: int, attempt: Attempt, *, status_code: int = 200,
                 media_type: str | None = None, headers: dict[str, str]) -> None:
        self.chunks = chunks
        self.first = next(chunks, b"")
        self.length, self.attempt = length, attempt
        self.status_code, self.background = status_code, None
        if media_type is not None:
            self.media_type = media_type
        self.init_headers({**headers, "Content-Length": str(length)})

    async def __call__(self, scope, receive, send) -> None:
        sent, done = 0, False
        failure: Exception | None = None

        async def stream() -> None:
            nonlocal sent, done
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            chunk = self.first
            while chunk is not None:
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    sent += len(chunk)
                chunk = await anyio.to_thread.run_sync(next, self.chunks, None)
            if sent != self.length:
                raise ArchiveError(f"the content ended after {sent} of {self.length} bytes")
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            done = True

        async def listen(group) -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            if not done:  # the client left: stop decrypting for no one
                group.cancel_scope.cancel()

        try:
            async with anyio.create_task_group() as group:
                group.start_soon(listen, group)
                try:
                    await stream()
                except Exception as e:  # noqa: BLE001 — recorded as the attempt's outcome, below
                    failure = e
                group.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._finish, failure, sent, done)

    def _finish(self, failure: Exception | None, sent: int, done: bool) -> None:
        close = getattr(self.chunks, "close", None)
        if close is not None:
            close()
        target = self.attempt.target
        where = f"{target.get('records', ['?'])[0]} part {target.get('part')}"
        if done:
            self.attempt.succeeded()
        elif failure is not None:
            self.attempt.failed(failure, sent_bytes=sent, size=self.length)
            if isinstance(failure, ArchiveError):
                log.error("retrieve of %s failed after %d of %d bytes: [%s] %s", where, sent, self.length,
                          failure.code, failure)
            else:
                log.error("retrieve of %s failed after %d of %d bytes", where, sent, self.length, exc_info=failure)
        else:
            self.attempt.failed(Interrupted(f"the transfer stopped after {sent} of {self.length} bytes: the client "
                                            "left (or the server stopped)"), sent_bytes=sent, size=self.length)


def request_body(request: Request) -> Iterator[bytes]:
    """The request body's chunks as they arrive, for a handler running in a worker thread (FastAPI runs
    plain ``def`` handlers in anyio's thread pool): each chunk is awaited on the event loop."""
    from starlette.requests import ClientDisconnect

    stream = request.stream().__aiter__()

    async def next_chunk() -> bytes | None:
        try:
            return await stream.__anext__()
        except StopAsyncIteration:
            return None

    while True:
        try:
            chunk = anyio.from_thread.run(next_chunk)
        except ClientDisconnect:
            raise BadUpload("the client left before the upload was complete") from None
        if chunk is None:
            return
        if chunk:
            yield chunk
