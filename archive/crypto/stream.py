"""Sealed object format v1: streaming, random-access AES-256-GCM with key commitment.

This module owns the exact bytes of a sealed object. It knows nothing about stores or key providers:
it turns plaintext into sealed bytes under a 32-byte data key and a binding context, and back.
``docs/sealed-format.md`` repeats this description for readers without the code.

Construction (after Tink's AES-GCM-HKDF streaming AEAD and the STREAM construction of Hoang, Reyhanitabar,
Rogaway and Vizár, "Online Authenticated-Encryption and its Nonce-Reuse Misuse-Resistance", 2015)::

    sealed   = header ‖ segment_0 ‖ segment_1 ‖ … ‖ segment_{n-1}

    header   (85 bytes, integers big-endian)
      0   8  magic            b"ARCHSEAL"
      8   1  format version   0x01
      9   1  algorithm        0x01 = AES-256-GCM, HKDF-SHA256 subkey, STREAM nonces
     10   4  segment size S   plaintext bytes per segment (4 KiB … 64 MiB)
     14  32  salt             random, fresh per object
     46   7  nonce prefix     random, fresh per object
     53  32  key commitment   see below

    context  = b"archive-seal-v1" ‖ u16 len ‖ record id (UTF-8) ‖ u16 len ‖ part name (UTF-8)
    okm      = HKDF-SHA256(ikm = data key, salt = salt,
                           info = b"archive/seal/v1" ‖ header[0:53] ‖ context, L = 64)
    subkey   = okm[0:32]       the AES-256-GCM key for every segment of this object
    commit   = okm[32:64]      stored in header[53:85]; checked in constant time before any segment

    segment_i = AES-256-GCM(subkey, nonce_i, plaintext_i, aad)      = ciphertext_i ‖ tag_i (16 bytes)
    nonce_i   = nonce prefix (7) ‖ u32 i ‖ u8 last                  last = 1 only for the final segment
    aad       = header ‖ context

Every segment holds exactly S plaintext bytes except the last, which holds 0 … S (an empty object is one
empty last segment). So a sealed object of L bytes has n = ceil((L − 85) / (S + 16)) segments, segment i
starts at byte 85 + i·(S + 16), and the plaintext is L − 85 − 16·n bytes long: a byte range [a, b) is
decrypted by reading the header and segments a // S … (b − 1) // S only.

What each part defends against:

* a fresh random data key per object (chosen by the caller's key provider) and a fresh salt: no key or
  nonce is ever reused across objects, so the 32-bit counter gives 2^32 segments (4 PiB at 1 MiB);
* the counter in the nonce: segments reordered or duplicated fail authentication;
* the last-segment flag: truncation at a segment boundary fails (the new final segment was sealed with
  last = 0); truncation inside a segment fails its tag;
* the nonce prefix, salt and header in every segment's nonce/aad: a segment or header spliced in from
  another object fails;
* the key commitment: AES-GCM is not key-committing (one ciphertext can be made to decrypt under two
  keys); the commitment covers every other header byte, the data key and the context, so the wrong key,
  the wrong record id or part name, and any altered header byte are rejected at the header, before any
  plaintext is released;
* context in the HKDF info and in the aad: a sealed object only opens as the record and part it was
  sealed for.

Plaintext is only ever released after its segment's tag verified. A streaming reader may have released
earlier segments before a later one fails; callers that must be all-or-nothing verify first.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from archive.errors import IntegrityError, UnsupportedFormat
from archive.streams import fill, filler

MAGIC = b"ARCHSEAL"
FORMAT_VERSION = 1
ALG_AES256_GCM_HKDF_STREAM = 1
HEADER = struct.Struct(">8sBBI32s7s32s")
HEADER_SIZE = HEADER.size  # 85
_COMMITTED = HEADER_SIZE - 32  # header bytes covered by the key commitment
TAG_SIZE = 16
KEY_SIZE = 32
SALT_SIZE = 32
PREFIX_SIZE = 7
DEFAULT_SEGMENT_SIZE = 1024 * 1024
MIN_SEGMENT_SIZE = 4 * 1024
MAX_SEGMENT_SIZE = 64 * 1024 * 1024
MAX_SEGMENTS = 2**32
_NONCE_TAIL = struct.Struct(">IB")
_CONTEXT_LABEL = b"archive-seal-v1"
_HKDF_INFO = b"archive/seal/v1"


@dataclass(frozen=True)
class Binding:
    """What a sealed object is bound to: the record it belongs to and the part it holds."""

    record_id: str
    part: str

    def encode(self) -> bytes:
        out = bytearray(_CONTEXT_LABEL)
        for value in (self.record_id, self.part):
            raw = value.encode("utf-8")
            if not raw or len(raw) > 0xFFFF:
                raise ValueError("record id and part name must be 1 … 65535 UTF-8 bytes")
            out += struct.pack(">H", len(raw)) + raw
        return bytes(out)


@dataclass(frozen=True)
class Header:
    """A parsed header. ``raw`` is the exact 85 bytes, which every segment authenticates."""

    segment_size: int
    salt: bytes
    nonce_prefix: bytes
    commitment: bytes
    raw: bytes


def sealed_size(plaintext_size: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    """The length of the sealed object for a plaintext of ``plaintext_size`` bytes."""
    segments = max(1, -(-plaintext_size // segment_size))
    return HEADER_SIZE + plaintext_size + segments * TAG_SIZE


def plaintext_size(sealed_length: int, segment_size: int, *, object_key: str = "?") -> int:
    """The plaintext length of a sealed object of ``sealed_length`` bytes; raises IntegrityError if no
    well-formed object has that length (truncated inside the header or the last tag)."""
    segments = _segment_count(sealed_length, segment_size, object_key)
    return sealed_length - HEADER_SIZE - segments * TAG_SIZE


def _segment_count(sealed_length: int, segment_size: int, object_key: str) -> int:
    body = sealed_length - HEADER_SIZE
    if body < TAG_SIZE:
        raise IntegrityError(f"{object_key}: sealed object is truncated ({sealed_length} bytes, shorter than "
                             "a header and one segment)", object_key=object_key, segment=0)
    segments = -(-body // (segment_size + TAG_SIZE))
    if body - (segments - 1) * (segment_size + TAG_SIZE) < TAG_SIZE:
        raise IntegrityError(f"{object_key}: segment {segments - 1} is truncated inside its tag",
                             object_key=object_key, segment=segments - 1)
    return segments


class _Keys:
    """Per-object key material: the AES-GCM instance, the aad and the nonce prefix."""

    __slots__ = ("aead", "aad", "prefix", "object_key")

    def __init__(self, subkey: bytes, header: Header, binding: Binding, object_key: str) -> None:
        self.aead = AESGCM(subkey)
        self.aad = header.raw + binding.encode()
        self.prefix = header.nonce_prefix
        self.object_key = object_key

    def nonce(self, index: int, last: bool) -> bytes:
        return self.prefix + _NONCE_TAIL.pack(index, 1 if last else 0)

    def open(self, index: int, sealed: bytes, last: bool) -> bytes:
        self._check_length(index, sealed)
        try:
            return self.aead.decrypt(self.nonce(index, last), sealed, self.aad)
        except InvalidTag:
            raise self._failed(index) from None

    def open_into(self, index: int, sealed: memoryview, last: bool, out: memoryview) -> memoryview:
        """:meth:`open` into ``out`` (at least the plaintext's length); returns the plaintext's view."""
        self._check_length(index, sealed)
        plain = out[:len(sealed) - TAG_SIZE]
        try:
            self.aead.decrypt_into(self.nonce(index, last), sealed, self.aad, plain)
        except InvalidTag:
            raise self._failed(index) from None
        return plain

    def _check_length(self, index: int, sealed) -> None:
        if len(sealed) < TAG_SIZE:
            raise IntegrityError(f"{self.object_key}: segment {index} is truncated ({len(sealed)} bytes)",
                                 object_key=self.object_key, segment=index)

    def _failed(self, index: int) -> IntegrityError:
        return IntegrityError(
            f"{self.object_key}: segment {index} failed authentication (altered, truncated, reordered "
            "or spliced from another object)", object_key=self.object_key, segment=index)


def _derive(data_key: bytes, header_fields: bytes, binding: Binding) -> tuple[bytes, bytes]:
    """(subkey, commitment) from the data key, the header bytes before the commitment and the binding."""
    if len(data_key) != KEY_SIZE:
        raise ValueError(f"data key must be {KEY_SIZE} bytes")
    salt = header_fields[14:14 + SALT_SIZE]
    okm = HKDF(algorithm=hashes.SHA256(), length=2 * KEY_SIZE, salt=salt,
               info=_HKDF_INFO + header_fields + binding.encode()).derive(data_key)
    return okm[:KEY_SIZE], okm[KEY_SIZE:]


def _read_full(source: BinaryIO, n: int) -> bytes:
    """Read exactly ``n`` bytes unless the source ends first (pipes and sockets return short reads)."""
    data = source.read(n)
    if data is None:
        data = b""
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = source.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


# --- sealing ---------------------------------------------------------------------------------------


class Sealer:
    """A read-only file object producing the sealed object for everything read from ``source``.

    ``read(n)`` / ``readinto(b)`` return the header first, then sealed segments (at most one per call,
    fewer bytes than asked when a segment ends: raw-stream semantics). Segments are encrypted straight
    into the caller's buffer when it is large enough, and plaintext is read into a small ring of reused
    buffers, so sealing any size allocates nothing per segment and holds a few segments of memory.

    As it goes it computes what a seal receipt records: ``plaintext_size``, ``plaintext_sha256`` (on a
    background thread — hashlib releases the GIL — so hashing overlaps encryption and I/O),
    ``sealed_size`` and ``tag_digest`` = SHA-256(header ‖ tag_0 ‖ … ‖ tag_{n-1}), which identifies the
    sealed bytes exactly (each tag authenticates its segment under the committed key) at 16 bytes of
    hashing per segment. Read the digests after the stream is exhausted.
    """

    _RING = 4

    def __init__(self, source: BinaryIO, data_key: bytes, binding: Binding, *,
                 segment_size: int = DEFAULT_SEGMENT_SIZE, hash_plaintext: bool = True,
                 size_hint: int | None = None) -> None:
        if not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
            raise ValueError(f"segment size must be within [{MIN_SEGMENT_SIZE}, {MAX_SEGMENT_SIZE}]")
        salt, prefix = os.urandom(SALT_SIZE), os.urandom(PREFIX_SIZE)
        fields = HEADER.pack(MAGIC, FORMAT_VERSION, ALG_AES256_GCM_HKDF_STREAM, segment_size, salt, prefix,
                             bytes(32))[:_COMMITTED]
        subkey, commitment = _derive(data_key, fields, binding)
        self.header = fields + commitment
        self._keys = _Keys(subkey, Header(segment_size, salt, prefix, commitment, self.header), binding, "(sealing)")
        self._read = filler(source)
        self._segment = segment_size
        # Buffers are made on first use and, for a source known to be small, only as large as it: a
        # chat transcript must not pay for zeroing megabytes. A wrong hint only costs a regrowth.
        self._first_size = segment_size if size_hint is None else max(1, min(segment_size, size_hint + 1))
        self._expected = None if size_hint is None else sealed_size(size_hint, segment_size)
        self._ring: list[bytearray | None] = [None] * self._RING
        self._busy: list[Future | None] = [None] * self._RING
        self._slot = 0
        self._out: bytearray | None = None  # made on demand, for callers whose buffer is below a segment
        self._out_view = memoryview(b"")
        self._tags = hashlib.sha256(self.header)
        self._plain = hashlib.sha256() if hash_plaintext else None
        self._pool: ThreadPoolExecutor | None = None  # started at the second segment: small objects hash inline
        self._pending_header = True
        self._index = 0
        self._current: tuple[int, int] | None = None  # (ring slot, length) of the segment to seal next
        self._done = False
        self.plaintext_size = 0
        self.sealed_size = 0

    # --- file object ---------------------------------------------------------------------------------

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def remaining_size(self) -> int | None:
        """How many sealed bytes are still to come if the source holds what its size hint said (an
        estimate, for sizing a consumer's buffers: a source that grew or shrank makes it wrong), or None
        without a hint."""
        return None if self._expected is None else max(0, self._expected - self.sealed_size)

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        if self._out_view:  # leftovers of a segment sealed into our own buffer
            n = min(len(view), len(self._out_view))
            view[:n] = self._out_view[:n]
            self._out_view = self._out_view[n:]
            return n
        if self._pending_header:
            self._pending_header = False
            n = min(len(view), HEADER_SIZE)
            view[:n] = self.header[:n]
            self._out_view = memoryview(self.header)[n:]
            self.sealed_size += HEADER_SIZE
            return n
        if self._done:
            return 0
        size = self._next_segment_size()
        if len(view) >= size:
            return self._seal_into(view[:size])
        if self._out is None:
            self._out = bytearray(self._segment + TAG_SIZE)
        self._seal_into(memoryview(self._out)[:size])
        self._out_view = memoryview(self._out)[:size]
        return self.readinto(view)

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            return b"".join(iter(lambda: self.read(self._segment + TAG_SIZE), b""))
        buf = bytearray(n)
        got = self.readinto(buf)
        return bytes(buf) if got == n else bytes(memoryview(buf)[:got])

    def close(self) -> None:
        self._done = True
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._ring = [None] * self._RING

    def __iter__(self) -> Iterator[bytes]:
        return iter(lambda: self.read(self._segment + TAG_SIZE), b"")

    # --- digests -------------------------------------------------------------------------------------

    @property
    def plaintext_sha256(self) -> str:
        if not self._done or self._plain is None:
            raise RuntimeError("plaintext digest is known once the whole stream was read")
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        return self._plain.hexdigest()

    @property
    def tag_digest(self) -> str:
        if not self._done:
            raise RuntimeError("tag digest is known once the whole stream was read")
        return self._tags.hexdigest()

    # --- internals -----------------------------------------------------------------------------------

    def _fill(self) -> tuple[int, int]:
        """Read the next plaintext segment into a free ring slot: (slot, length)."""
        slot = self._slot
        self._slot = (slot + 1) % self._RING
        if self._busy[slot] is not None:
            self._busy[slot].result()  # the hash thread is done with this buffer
            self._busy[slot] = None
        buf = self._ring[slot]
        if buf is None:
            buf = self._ring[slot] = bytearray(self._first_size)
        got = fill(self._read, memoryview(buf))
        while got == len(buf) < self._segment:  # the source is larger than its hint said
            buf.extend(bytes(min(self._segment, 2 * len(buf)) - len(buf)))
            got += fill(self._read, memoryview(buf)[got:])
        return slot, got

    def _next_segment_size(self) -> int:
        if self._current is None:
            self._current = self._fill()
        return self._current[1] + TAG_SIZE

    def _seal_into(self, out: memoryview) -> int:
        slot, length = self._current
        following = self._fill() if length == self._segment else None
        if following is not None and following[1] == 0:
            following = None
        last = following is None
        if self._index >= MAX_SEGMENTS:
            raise ValueError("plaintext too long for the 32-bit segment counter; use a larger segment size")
        plain = memoryview(self._ring[slot])[:length]
        self._keys.aead.encrypt_into(self._keys.nonce(self._index, last), plain, self._keys.aad, out)
        if self._plain is not None and length:
            if self._index == 0 and last:
                self._plain.update(plain)
            else:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(1, thread_name_prefix="sha256")
                self._busy[slot] = self._pool.submit(self._plain.update, plain)
        self._tags.update(out[length:])
        self.plaintext_size += length
        self.sealed_size += length + TAG_SIZE
        self._index += 1
        self._current = following
        self._done = last
        return length + TAG_SIZE


class Checked:
    """A :class:`Sealer` that checks what it hands out: every byte the consumer (a store's upload) reads
    is parsed and opened again — the header's key commitment re-derived from the data key and binding,
    every segment authenticated, the plaintext hashed — in constant memory, one segment behind the
    reader. :meth:`verify` (after the upload) raises IntegrityError unless the bytes read are a sealed
    object whose plaintext has the digest and size the sealer hashed from its source. Together with a
    store that confirms it stored exactly the bytes sent (S3: its own SHA-256 over them, compared), this
    is what reading the object back would prove, without the second transfer."""

    def __init__(self, sealer: Sealer, data_key: bytes, binding: Binding, *, object_key: str = "?") -> None:
        self.sealer, self._data_key, self._binding, self.object_key = sealer, data_key, binding, object_key
        self._header = bytearray()
        self._keys: _Keys | None = None
        # The segment read last (it may be the final one: opened only when more follows, or at verify)
        # and the plaintext it opens to: two buffers made once, so checking allocates nothing per segment.
        self._pending = memoryview(b"")
        self._held = 0
        self._plain_out = memoryview(b"")
        self._index = 0
        self._plain = hashlib.sha256()
        self._size = 0
        self._ended = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def remaining_size(self) -> int | None:
        return self.sealer.remaining_size()

    def readinto(self, buffer) -> int:
        n = self.sealer.readinto(buffer)
        if n:
            with memoryview(buffer) as view, view.cast("B") as flat:
                self._feed(flat[:n])
        else:
            self._ended = True
        return n

    def read(self, n: int = -1) -> bytes:
        data = self.sealer.read(n)
        if data:
            self._feed(memoryview(data))
        else:
            self._ended = True
        return data

    def close(self) -> None:
        self.sealer.close()

    def _feed(self, data: memoryview) -> None:
        if self._keys is None:
            take = min(len(data), HEADER_SIZE - len(self._header))
            self._header += data[:take]
            data = data[take:]
            if len(self._header) < HEADER_SIZE:
                return
            header, self._keys = _open_keys(bytes(self._header), self._data_key, self._binding, self.object_key)
            segment = header.segment_size + TAG_SIZE
            self._pending = memoryview(bytearray(segment))
            self._plain_out = memoryview(bytearray(header.segment_size))
        while data:
            if self._held == len(self._pending):  # a whole segment with bytes after it: not the last one
                self._open(self._pending, last=False)
                self._held = 0
            take = min(len(data), len(self._pending) - self._held)
            self._pending[self._held:self._held + take] = data[:take]
            self._held += take
            data = data[take:]

    def _open(self, sealed: memoryview, last: bool) -> None:
        plain = self._keys.open_into(self._index, sealed, last, self._plain_out)
        self._plain.update(plain)
        self._size += len(plain)
        self._index += 1

    def verify(self) -> None:
        """Check the whole stream (reading what the consumer left, which must be nothing)."""
        if self.sealer.read(1):
            raise IntegrityError(f"{self.object_key}: the store stopped reading before the end of the sealed "
                                 "stream", object_key=self.object_key, segment="end")
        if self._keys is None:
            raise IntegrityError(f"{self.object_key}: sealed stream shorter than its header",
                                 object_key=self.object_key, segment="header")
        self._open(self._pending[:self._held], last=True)
        self._held = 0
        if self._size != self.sealer.plaintext_size or self._plain.hexdigest() != self.sealer.plaintext_sha256:
            raise IntegrityError(f"{self.object_key}: the sealed stream does not open to the plaintext sealed",
                                 object_key=self.object_key, segment="end")


def seal_stream(source: BinaryIO, data_key: bytes, binding: Binding, *,
                segment_size: int = DEFAULT_SEGMENT_SIZE) -> Iterator[bytes]:
    """Yield the sealed object for ``source``: the header, then one sealed segment at a time."""
    sealer = Sealer(source, data_key, binding, segment_size=segment_size, hash_plaintext=False)
    try:
        yield from sealer
    finally:
        sealer.close()


# --- opening ---------------------------------------------------------------------------------------


def parse_header(raw: bytes, *, object_key: str = "?") -> Header:
    """Parse and sanity-check the 85-byte header. Raises UnsupportedFormat for bytes that are not a
    sealed object of a version this code reads, IntegrityError for a short or malformed header."""
    if len(raw) < HEADER_SIZE:
        if not MAGIC.startswith(raw[: len(MAGIC)]):
            raise UnsupportedFormat(f"{object_key}: not a sealed object (bad magic)", object_key=object_key)
        raise IntegrityError(f"{object_key}: header is truncated ({len(raw)} of {HEADER_SIZE} bytes)",
                             object_key=object_key, segment="header")
    magic, version, alg, segment_size, salt, prefix, commitment = HEADER.unpack(raw[:HEADER_SIZE])
    if magic != MAGIC:
        raise UnsupportedFormat(f"{object_key}: not a sealed object (bad magic)", object_key=object_key)
    if version != FORMAT_VERSION or alg != ALG_AES256_GCM_HKDF_STREAM:
        raise UnsupportedFormat(f"{object_key}: sealed format version {version} algorithm {alg} is not "
                                "supported by this release", object_key=object_key)
    if not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
        raise IntegrityError(f"{object_key}: header has an impossible segment size {segment_size}",
                             object_key=object_key, segment="header")
    return Header(segment_size, salt, prefix, commitment, bytes(raw[:HEADER_SIZE]))


def _open_keys(raw_header: bytes, data_key: bytes, binding: Binding, object_key: str) -> tuple[Header, _Keys]:
    header = parse_header(raw_header, object_key=object_key)
    subkey, expected = _derive(data_key, header.raw[:_COMMITTED], binding)
    if not hmac.compare_digest(expected, header.commitment):
        raise IntegrityError(
            f"{object_key}: header key commitment does not match (wrong data key, wrong record id or part "
            f"name {binding.record_id!r}/{binding.part!r}, or the header was altered)",
            object_key=object_key, segment="header")
    return header, _Keys(subkey, header, binding, object_key)


def unseal_stream(source: BinaryIO, data_key: bytes, binding: Binding, *,
                  object_key: str = "?") -> Iterator[bytes]:
    """Yield the plaintext of a sealed object read sequentially from ``source``, one verified segment at
    a time. Raises IntegrityError naming the object and segment at the first failure."""
    header, keys = _open_keys(_read_full(source, HEADER_SIZE), data_key, binding, object_key)
    size = header.segment_size + TAG_SIZE
    index = 0
    current = _read_full(source, size)
    while True:
        following = _read_full(source, size) if len(current) == size else b""
        yield keys.open(index, current, last=not following)
        if not following:
            return
        index += 1
        current = following


def unseal_range(read_at: Callable[[int, int], bytes], sealed_length: int, data_key: bytes,
                 binding: Binding, start: int, end: int, *, object_key: str = "?") -> bytes:
    """Return plaintext bytes [start, end) reading only the header and the covering segments through
    ``read_at(offset, length)``. ``end`` is clamped to the plaintext length. Raises IntegrityError."""
    return b"".join(iter_unseal_range(read_at, sealed_length, data_key, binding, start, end,
                                      object_key=object_key, window=2**62, first_window=2**62))


def iter_unseal_range(read_at: Callable[[int, int], bytes], sealed_length: int, data_key: bytes,
                      binding: Binding, start: int, end: int, *, object_key: str = "?",
                      window: int = 4, first_window: int = 1) -> Iterator[bytes]:
    """Plaintext bytes [start, end), as :func:`unseal_range`, but yielded ``window`` segments at a time
    (``first_window`` for the first chunk), so serving the rest of an hour-long recording from its middle
    holds a few MiB, not all of it, and its first bytes come after one segment's work. The
    header is read and the key commitment checked before the first chunk; each chunk is authenticated
    before it is yielded. ``end`` is clamped to the plaintext length. Raises IntegrityError."""
    header, keys = _open_keys(read_at(0, HEADER_SIZE), data_key, binding, object_key)
    seg = header.segment_size
    total = plaintext_size(sealed_length, seg, object_key=object_key)
    count = _segment_count(sealed_length, seg, object_key)
    end = min(end, total)
    if start < 0 or start > end:
        raise ValueError(f"invalid range [{start}, {end}) for {total} bytes")
    if start == end:
        return
    first, last = start // seg, (end - 1) // seg
    lo_seg = first
    while lo_seg <= last:
        # the first chunk is one segment by default: the first bytes come after one segment's work
        hi_seg = min(last, lo_seg + (window if lo_seg > first else first_window) - 1)
        offset = HEADER_SIZE + lo_seg * (seg + TAG_SIZE)
        length = min(sealed_length, HEADER_SIZE + (hi_seg + 1) * (seg + TAG_SIZE)) - offset
        blob = read_at(offset, length)
        if len(blob) != length:
            raise IntegrityError(f"{object_key}: segment {lo_seg}…{hi_seg} read returned {len(blob)} of {length} "
                                 "bytes (object truncated)", object_key=object_key, segment=lo_seg)
        view = memoryview(blob)
        plain = b"".join(keys.open(i, view[(i - lo_seg) * (seg + TAG_SIZE):(i - lo_seg + 1) * (seg + TAG_SIZE)],
                                   last=(i == count - 1)) for i in range(lo_seg, hi_seg + 1))
        lo = max(start, lo_seg * seg) - lo_seg * seg
        hi = min(end, (hi_seg + 1) * seg) - lo_seg * seg
        yield plain[lo:hi]
        lo_seg = hi_seg + 1
