"""Reading from the file-like objects callers hand us, into buffers we own.

Files, sockets, boto3 bodies and the sealer offer ``readinto``; some wrappers implement only ``read``
(and an ``io.RawIOBase`` subclass that does inherits a ``readinto`` that raises NotImplementedError).
:func:`filler` hides the difference so hot paths can read into reused buffers without allocating.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Callable
from typing import BinaryIO


def filler(source: BinaryIO) -> Callable[[memoryview], int]:
    """A function that reads from ``source`` into a buffer and returns the byte count (0 at the end)."""
    readinto = getattr(source, "readinto", None)
    if readinto is not None and getattr(type(source), "readinto", None) is not io.RawIOBase.readinto:
        return lambda view: readinto(view) or 0

    def via_read(view: memoryview) -> int:
        data = source.read(len(view))
        if not data:
            return 0
        view[:len(data)] = data
        return len(data)

    return via_read


def fill(read: Callable[[memoryview], int], view: memoryview) -> int:
    """Fill ``view`` completely unless the stream ends first (pipes and sockets return short reads)."""
    got = 0
    while got < len(view):
        n = read(view[got:])
        if not n:
            break
        got += n
    return got


def remaining_size(source: BinaryIO) -> int | None:
    """How many bytes ``source`` still holds, when that is cheap to know (a regular file, BytesIO, a
    stream that estimates its own, such as a sealer of a file). For sizing buffers only: a file can grow
    while it is read."""
    own = getattr(source, "remaining_size", None)
    if callable(own):
        return own()
    try:
        if isinstance(source, io.BytesIO):
            return source.getbuffer().nbytes - source.tell()
        st = os.fstat(source.fileno())
        if stat.S_ISREG(st.st_mode):
            return max(0, st.st_size - source.tell())
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        pass
    return None
