"""Receiving one uploaded input (``multipart/form-data``, RFC 7578) straight into a scratch directory,
with every limit enforced while the body streams in.

The caller (``POST /api/v1/ingest``) has already authenticated and authorised the request: nothing of
the body is read before that, so a client without a valid ingest token cannot make the server write a
byte. Then:

* a ``Content-Length`` larger than :data:`MAX_FILES` inputs of ``ARCHIVE_MAX_INPUT_BYTES`` each can only
  be refused, and is, before the body is read (:func:`check_length`);
* each file's name is checked when its part's headers end, before any of its bytes is written (no
  path, no control characters, not hidden, not twice);
* a file that grows past ``ARCHIVE_MAX_INPUT_BYTES`` stops the upload at that byte with
  :class:`TooLarge` (413); the caller deletes the scratch directory, so nothing is kept;
* a body that is not multipart, has no boundary, ends before its closing boundary or holds no file is
  refused (:class:`BadUpload`). Form fields that are not files are read and dropped (at most 64 KiB).

The module knows nothing of the web framework: :meth:`MultipartReceiver.feed` takes the body's chunks.
"""

from __future__ import annotations

import os
from pathlib import Path

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from archive.errors import InputError
from archive.ingest.discover import _hostile

MAX_FILES = 16  # files in one upload: one input is a recording with its sidecar, a chat, an e-mail
_PART_OVERHEAD = 64 * 1024  # boundary and part headers, per file, in the Content-Length bound
_MAX_FIELD_BYTES = 64 * 1024  # non-file form fields, all together


class TooLarge(InputError):
    """Raised when an upload, or one of its files, is larger than ARCHIVE_MAX_INPUT_BYTES allows."""

    code = "input_too_large"
    http_status = 413


class BadUpload(InputError):
    """Raised when a body is not the multipart/form-data of one input, or ends before it is complete."""

    code = "upload_malformed"
    http_status = 400


def check_length(content_length: str | None, max_file_bytes: int) -> None:
    """Refuse, before reading it, a body longer than any upload of one input may be."""
    if content_length is None:
        return  # chunked: the limits are enforced as it streams
    try:
        length = int(content_length)
    except ValueError:
        raise BadUpload(f"Content-Length {content_length[:40]!r} is not a number") from None
    bound = MAX_FILES * (max_file_bytes + _PART_OVERHEAD)
    if length > bound:
        raise TooLarge(f"the upload is {length:,} bytes; one input is at most {MAX_FILES} files of "
                       f"{max_file_bytes:,} bytes (ARCHIVE_MAX_INPUT_BYTES)", size=length)


class MultipartReceiver:
    """Parses a multipart/form-data body fed in chunks, writing each uploaded file (field ``files``, or any
    part with a file name) into ``directory`` under its own name. :meth:`finish` returns the names."""

    def __init__(self, content_type: str | None, directory: Path, *, max_file_bytes: int) -> None:
        kind, params = parse_options_header(content_type or "")
        if kind != b"multipart/form-data" or not params.get(b"boundary"):
            raise BadUpload("send the input's files as multipart/form-data (fields named 'files')")
        self.directory = Path(directory)
        self.max_file_bytes = max_file_bytes
        self.names: list[str] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self._field, self._value = b"", b""
        self._out = None  # the file being written, or None inside a plain field
        self._size = 0
        self._field_bytes = 0
        self._ended = False
        callbacks = {"on_part_begin": self._part_begin, "on_header_field": self._header_field,
                     "on_header_value": self._header_value, "on_header_end": self._header_end,
                     "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
                     "on_part_end": self._part_end, "on_end": self._end}
        try:
            self._parser = MultipartParser(params[b"boundary"], callbacks)
        except FormParserError as e:
            raise BadUpload(f"the upload's boundary cannot be used: {e}") from None

    def feed(self, chunk: bytes) -> None:
        """Parse the next chunk of the body (writing file bytes as they come). Raises TooLarge, BadUpload,
        InputError for a bad file name."""
        try:
            self._parser.write(chunk)
        except FormParserError as e:
            raise BadUpload(f"the upload is not valid multipart/form-data: {e}") from None

    def finish(self) -> list[str]:
        """The names of the files received, in order. Raises BadUpload for an incomplete body or no file."""
        try:
            self._parser.finalize()
        except FormParserError as e:
            raise BadUpload(f"the upload is not valid multipart/form-data: {e}") from None
        if not self._ended:
            raise BadUpload("the upload ended before its closing boundary")
        if not self.names:
            raise BadUpload("the upload holds no file: send the input's files as fields named 'files'")
        return list(self.names)

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None

    # --- parser callbacks ---------------------------------------------------------------------------

    def _part_begin(self) -> None:
        self._headers = []

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers.append((self._field.lower(), self._value))
        self._field, self._value = b"", b""

    def _headers_finished(self) -> None:
        disposition = next((v for k, v in self._headers if k == b"content-disposition"), b"")
        _, options = parse_options_header(disposition)
        if b"filename" not in options:
            self._out = None
            return
        raw = options[b"filename"]
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            name = raw.decode("latin-1")
        problem = _hostile(name) if name else "is empty"
        if problem or name.startswith("."):
            raise InputError(f"file name {name[:80]!r} {problem or 'is hidden'}", file=name[:80])
        if name in self.names:
            raise InputError(f"file {name!r} is uploaded twice", file=name)
        if len(self.names) >= MAX_FILES:
            raise TooLarge(f"an upload holds at most {MAX_FILES} files (one input)")
        self.names.append(name)
        fd = os.open(self.directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        self._out = os.fdopen(fd, "wb")
        self._size = 0

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        n = end - start
        if self._out is None:
            self._field_bytes += n
            if self._field_bytes > _MAX_FIELD_BYTES:
                raise BadUpload(f"form fields other than files are limited to {_MAX_FIELD_BYTES:,} bytes")
            return
        self._size += n
        if self._size > self.max_file_bytes:
            raise TooLarge(f"{self.names[-1]} is over the limit of {self.max_file_bytes:,} bytes "
                           "(ARCHIVE_MAX_INPUT_BYTES)", file=self.names[-1])
        self._out.write(data[start:end])

    def _part_end(self) -> None:
        self.close()

    def _end(self) -> None:
        self._ended = True
