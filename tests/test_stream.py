"""Sealed format v1 (archive/crypto/stream.py), tested as a security reviewer would.

Properties checked:

* round trips at every size that matters around segment boundaries, with sizes that match
  ``sealed_size`` / ``plaintext_size``;
* ``unseal_range`` returns exactly ``plaintext[a:b]`` and reads only the header and the covering segments;
* every tampering (a bit flip at every byte, truncation, reordering, duplication, splicing, wrong key or
  binding) raises IntegrityError naming the object and the segment, and no plaintext of a segment is
  ever released before that segment verified;
* sealing and unsealing run in constant memory;
* bytes that are not a sealed object raise UnsupportedFormat.

Segments are the minimum size (4 KiB) so objects are multi-segment and the tests stay fast.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import tracemalloc

import pytest

from archive.crypto.stream import (HEADER_SIZE, MIN_SEGMENT_SIZE, TAG_SIZE, Binding, Checked, Sealer,
                                   plaintext_size, seal_stream, sealed_size, unseal_range, unseal_stream)
from archive.errors import IntegrityError, UnsupportedFormat

S = MIN_SEGMENT_SIZE
SEG = S + TAG_SIZE  # sealed bytes per full segment
KEY = bytes(range(32))
OTHER_KEY = bytes(range(32, 64))
BINDING = Binding("rec-0001", "audio")
OBJ = "objects/rec-0001/audio.sealed"


def data(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def seal(plain: bytes, key: bytes = KEY, binding: Binding = BINDING) -> bytes:
    return b"".join(seal_stream(io.BytesIO(plain), key, binding, segment_size=S))


def unseal(sealed: bytes, key: bytes = KEY, binding: Binding = BINDING, released: list | None = None) -> bytes:
    """Unseal ``sealed``; every chunk released before a failure is appended to ``released``."""
    released = [] if released is None else released
    for chunk in unseal_stream(io.BytesIO(sealed), key, binding, object_key=OBJ):
        released.append(chunk)
    return b"".join(released)


def split(sealed: bytes) -> tuple[bytes, list[bytes]]:
    body = sealed[HEADER_SIZE:]
    return sealed[:HEADER_SIZE], [body[i:i + SEG] for i in range(0, len(body), SEG)]


def flip(blob: bytes, pos: int, bit: int = 0) -> bytes:
    out = bytearray(blob)
    out[pos] ^= 1 << bit
    return bytes(out)


def check_names(err: IntegrityError, segments: tuple) -> None:
    """The error names the object and one of the expected segments, in its message and its fields."""
    assert err.object_key == OBJ
    assert OBJ in str(err)
    assert err.segment in segments, (err.segment, segments, str(err))
    word = "header" if err.segment == "header" else f"segment {err.segment}"
    assert word in str(err)


def assert_rejected(sealed: bytes, plain: bytes, *segments, key: bytes = KEY,
                    binding: Binding = BINDING) -> IntegrityError:
    """Unsealing fails naming one of ``segments``, releasing only whole, verified segments before it."""
    released: list[bytes] = []
    with pytest.raises(IntegrityError) as info:
        unseal(sealed, key, binding, released)
    check_names(info.value, segments)
    failed = 0 if info.value.segment == "header" else info.value.segment
    assert b"".join(released) == plain[:failed * S], "plaintext released from an unverified segment"
    return info.value


# --- round trips and sizes -------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, S - 1, S, S + 1, 3 * S, 3 * S + 7])
def test_round_trip_and_sizes(n):
    plain = data(n)
    sealed = seal(plain)
    assert unseal(sealed) == plain
    assert len(sealed) == sealed_size(n, S)
    assert plaintext_size(len(sealed), S) == n
    assert len(split(sealed)[1]) == max(1, -(-n // S))


def test_same_plaintext_seals_differently_each_time():
    plain = data(2 * S)
    a, b = seal(plain), seal(plain)
    assert a != b
    assert split(a)[1][0] != split(b)[1][0]  # fresh salt and nonce prefix: no keystream reuse
    assert plain[:64] not in a


def test_impossible_sealed_lengths_are_integrity_errors():
    for length in (0, HEADER_SIZE, HEADER_SIZE + TAG_SIZE - 1, HEADER_SIZE + SEG + 5):
        with pytest.raises(IntegrityError):
            plaintext_size(length, S, object_key=OBJ)


# --- random access ---------------------------------------------------------------------------------


class Recorder:
    """A ``read_at`` over bytes that records every (offset, length) asked for."""

    def __init__(self, blob: bytes) -> None:
        self.blob = blob
        self.calls: list[tuple[int, int]] = []

    def __call__(self, offset: int, length: int) -> bytes:
        self.calls.append((offset, length))
        return self.blob[offset:offset + length]


def _ranges(n: int) -> list[tuple[int, int]]:
    return [(0, 0), (0, 1), (0, 10), (5, 100), (0, S), (S - 1, S + 1), (S, 2 * S), (S + 3, S + 3),
            (100, 2 * S + 5), (S - 10, 3 * S), (2 * S - 1, 3 * S + 1), (0, n), (n - 1, n), (n - 7, n + 100),
            (0, n + 10_000), (n, n + 5), (n, n), (3 * S, 3 * S + 7)]


@pytest.mark.parametrize("n", [3 * S, 3 * S + 7])
def test_unseal_range_reads_only_covering_segments(n):
    plain = data(n, seed=2)
    sealed = seal(plain)
    for a, b in _ranges(n):
        read_at = Recorder(sealed)
        got = unseal_range(read_at, len(sealed), KEY, BINDING, a, b, object_key=OBJ)
        assert got == plain[a:b], (a, b)
        end = min(b, n)
        if a >= end:
            allowed = [(0, HEADER_SIZE)]
        else:
            first, last = a // S, (end - 1) // S
            allowed = [(0, HEADER_SIZE), (HEADER_SIZE + first * SEG, HEADER_SIZE + (last + 1) * SEG)]
        budget = sum(hi - lo for lo, hi in allowed)
        assert sum(length for _, length in read_at.calls) <= budget, (a, b, read_at.calls)
        for off, length in read_at.calls:
            assert any(lo <= off and off + length <= hi for lo, hi in allowed), (a, b, off, length)


def test_unseal_range_detects_a_flipped_bit_in_a_covered_segment():
    plain = data(3 * S + 7, seed=3)
    sealed = flip(seal(plain), HEADER_SIZE + SEG + 100, 3)  # inside segment 1
    with pytest.raises(IntegrityError) as info:
        unseal_range(Recorder(sealed), len(sealed), KEY, BINDING, S - 5, S + 5, object_key=OBJ)
    check_names(info.value, (1,))
    # Random access reads nothing else, so a range that does not cover segment 1 still opens.
    assert unseal_range(Recorder(sealed), len(sealed), KEY, BINDING, 0, 10, object_key=OBJ) == plain[:10]


def test_unseal_range_detects_truncation_at_a_segment_boundary():
    plain = data(3 * S + 7, seed=4)
    sealed = seal(plain)
    cut = sealed[:HEADER_SIZE + 2 * SEG]  # segments 0 and 1 remain; 1 was not sealed as the last
    for a, b in [(S, S + 10), (0, 2 * S), (S + 5, 3 * S)]:
        with pytest.raises(IntegrityError) as info:
            unseal_range(Recorder(cut), len(cut), KEY, BINDING, a, b, object_key=OBJ)
        check_names(info.value, (1,))
    # The receipt still says the original length but the store returns fewer bytes.
    with pytest.raises(IntegrityError) as info:
        unseal_range(Recorder(cut), len(sealed), KEY, BINDING, S + 5, 3 * S + 2, object_key=OBJ)
    check_names(info.value, (1, 2, 3))


# --- tampering -------------------------------------------------------------------------------------


def test_a_flipped_bit_anywhere_is_detected():
    plain = data(2 * S + 100, seed=5)
    sealed = seal(plain)
    for pos in range(len(sealed)):
        bad = flip(sealed, pos, pos % 8)
        if pos < 10:  # magic, version, algorithm
            try:
                unseal(bad)
            except UnsupportedFormat:
                continue
            except IntegrityError as e:
                check_names(e, ("header",))
                continue
            pytest.fail(f"bit flip at byte {pos} was not detected")
        elif pos < HEADER_SIZE:
            # The key commitment covers every other header byte: rejected at the header, nothing released.
            assert_rejected(bad, plain, "header")
        else:
            assert_rejected(bad, plain, (pos - HEADER_SIZE) // SEG)


def test_truncation_is_detected():
    plain = data(3 * S + 7, seed=6)
    sealed = seal(plain)
    header, segs = split(sealed)
    for length in (0, 1, 8, 10, 50, HEADER_SIZE - 1):  # inside the header
        assert_rejected(sealed[:length], plain, "header")
    for k in range(len(segs)):  # at every boundary: header + k whole segments
        assert_rejected(sealed[:HEADER_SIZE + k * SEG], plain, max(k - 1, 0))
    for k, seg in enumerate(segs):  # inside every segment, tag included
        for into in {1, TAG_SIZE - 1, TAG_SIZE, TAG_SIZE + 1, len(seg) // 2, len(seg) - 1}:
            assert_rejected(sealed[:HEADER_SIZE + k * SEG + into], plain, k)


@pytest.mark.parametrize("i,j", [(0, 1), (1, 2), (0, 2), (2, 3)])
def test_reordered_segments_are_detected(i, j):
    plain = data(3 * S + 7, seed=7)
    header, segs = split(seal(plain))
    segs[i], segs[j] = segs[j], segs[i]
    assert_rejected(header + b"".join(segs), plain, i)


@pytest.mark.parametrize("i,fails", [(0, 1), (1, 2), (2, 3), (3, 3)])
def test_a_duplicated_segment_is_detected(i, fails):
    plain = data(3 * S + 7, seed=8)
    header, segs = split(seal(plain))
    segs.insert(i + 1, segs[i])  # the short last segment doubled reads as one over-long last segment
    assert_rejected(header + b"".join(segs), plain, fails)


@pytest.mark.parametrize("key", [KEY, OTHER_KEY], ids=["same-key", "other-key"])
def test_a_segment_spliced_from_another_object_is_detected(key):
    plain = data(3 * S + 7, seed=9)
    header, segs = split(seal(plain))
    _, donor = split(seal(plain, key=key))  # same plaintext and binding: only salt/prefix (and key) differ
    for i in range(len(segs)):
        spliced = segs[:i] + [donor[i]] + segs[i + 1:]
        assert_rejected(header + b"".join(spliced), plain, i)


@pytest.mark.parametrize("key", [KEY, OTHER_KEY], ids=["same-key", "other-key"])
def test_a_header_spliced_from_another_object_is_detected(key):
    plain = data(3 * S + 7, seed=10)
    _, segs = split(seal(plain))
    donor_header, _ = split(seal(plain, key=key))
    # Under the same key the donor header is itself valid, so segment 0 is the first to fail;
    # under another key the commitment rejects the header outright.
    assert_rejected(donor_header + b"".join(segs), plain, 0 if key == KEY else "header")


@pytest.mark.parametrize("key,binding", [
    (OTHER_KEY, BINDING),
    (KEY, Binding("rec-0002", "audio")),
    (KEY, Binding("rec-0001", "transcript")),
], ids=["wrong-data-key", "wrong-record-id", "wrong-part"])
def test_wrong_key_or_binding_is_rejected_before_any_plaintext(key, binding):
    plain = data(2 * S, seed=11)
    sealed = seal(plain)
    assert_rejected(sealed, plain, "header", key=key, binding=binding)
    with pytest.raises(IntegrityError) as info:
        unseal_range(Recorder(sealed), len(sealed), key, binding, 0, 10, object_key=OBJ)
    check_names(info.value, ("header",))


@pytest.mark.parametrize("blob", [b"hello", b"not a sealed object" * 10, os.urandom(300),
                                  b"ARCHSEAL\x02\x01" + bytes(200), b"ARCHSEAL\x01\x02" + bytes(200)],
                         ids=["hello", "text", "random", "version-2", "algorithm-2"])
def test_bytes_that_are_not_sealed_are_unsupported(blob):
    with pytest.raises(UnsupportedFormat):
        unseal(blob)
    with pytest.raises(UnsupportedFormat):
        unseal_range(Recorder(blob), len(blob), KEY, BINDING, 0, 10, object_key=OBJ)


# --- constant memory -------------------------------------------------------------------------------


class PseudoRandomSource:
    """A read-only file object producing ``size`` pseudo-random bytes on demand, never all at once."""

    def __init__(self, size: int, seed: int = 12) -> None:
        self.remaining = size
        self.rng = random.Random(seed)
        self.sha256 = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        n = self.remaining if n is None or n < 0 else min(n, self.remaining)
        self.remaining -= n
        chunk = self.rng.randbytes(n)
        self.sha256.update(chunk)
        return chunk


def test_seal_and_unseal_run_in_constant_memory():
    size, segment = 64 * 1024 * 1024, 1024 * 1024
    source = PseudoRandomSource(size)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        pipe = Sealer(source, KEY, BINDING, segment_size=segment)
        out, got = hashlib.sha256(), 0
        for chunk in unseal_stream(pipe, KEY, BINDING, object_key=OBJ):
            out.update(chunk)
            got += len(chunk)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got == size
    assert pipe.sealed_size == sealed_size(size, segment) and pipe.plaintext_size == size
    assert pipe.plaintext_sha256 == source.sha256.hexdigest()
    assert out.digest() == source.sha256.digest()
    # A few segments, whatever the size: the sealer's ring of 4 plaintext buffers and its output
    # buffer, the unsealer's current and next segment and the plaintext it releases.
    assert peak < 12 * 1024 * 1024, f"peak traced memory {peak / 2**20:.1f} MiB for a 64 MiB object"


def test_streamed_ranges_equal_whole_ranges_whatever_the_windows():
    from archive.crypto.stream import iter_unseal_range

    rng = random.Random(5)
    data = rng.randbytes(10 * 4096 + 123)
    key = os.urandom(32)
    sealed = b"".join(seal_stream(io.BytesIO(data), key, BINDING, segment_size=4096))

    def read_at(off: int, n: int) -> bytes:
        return sealed[off:off + n]

    for _ in range(60):
        start = rng.randrange(len(data))
        end = rng.randrange(start, len(data) + 5000)
        whole = unseal_range(read_at, len(sealed), key, BINDING, start, end)
        assert whole == data[start:end]
        for window, first in ((1, 1), (3, 1), (4, 2), (100, 100)):
            chunks = list(iter_unseal_range(read_at, len(sealed), key, BINDING, start, end, window=window,
                                            first_window=first))
            assert b"".join(chunks) == whole
            if start < end:
                assert len(chunks[0]) <= first * 4096  # the first bytes cost one window's work


@pytest.mark.parametrize("size", [0, 1, 4096, 65536, 3 * 65536, 3 * 65536 + 7])
def test_a_checked_sealer_verifies_what_it_handed_out(size):
    """Checked opens every segment a consumer read, one behind, and verify() proves the whole stream."""
    key, data, binding = os.urandom(32), os.urandom(size), Binding("r", "p")
    checked = Checked(Sealer(io.BytesIO(data), key, binding, segment_size=65536), key, binding)
    sent = b"".join(iter(lambda: checked.read(10_000), b""))
    checked.verify()
    assert b"".join(unseal_stream(io.BytesIO(sent), key, binding)) == data


def test_a_checked_sealer_refuses_a_wrong_key_and_a_stream_left_half_read():
    key, data, binding = os.urandom(32), os.urandom(200_000), Binding("r", "p")
    checked = Checked(Sealer(io.BytesIO(data), key, binding, segment_size=65536), os.urandom(32), binding)
    with pytest.raises(IntegrityError, match="key commitment"):
        checked.read(100_000)
    half = Checked(Sealer(io.BytesIO(data), key, binding, segment_size=65536), key, binding)
    half.read(70_000)
    with pytest.raises(IntegrityError, match="stopped reading"):
        half.verify()


def test_a_sealer_estimates_what_is_left_from_its_size_hint_only():
    plain = data(3 * S + 5)
    hinted = Sealer(io.BytesIO(plain), KEY, BINDING, segment_size=S, size_hint=len(plain))
    assert hinted.remaining_size() == sealed_size(len(plain), S)
    first = hinted.read(HEADER_SIZE + 10)
    assert hinted.remaining_size() == sealed_size(len(plain), S) - len(first)
    rest = hinted.read()
    assert hinted.remaining_size() == 0 and len(first + rest) == sealed_size(len(plain), S)
    assert Sealer(io.BytesIO(plain), KEY, BINDING, segment_size=S).remaining_size() is None
