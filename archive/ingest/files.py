"""Opening input files without trusting them: only regular files, never through a symbolic link, never
blocking, and never read past a limit.

Discovery refuses what ``lstat`` says is not a regular file (a FIFO, a socket, a device, a directory)
before anything is opened: ``open()`` on a FIFO waits for a writer, forever. Between that ``lstat`` and
the open, someone with write access to the inbox could swap the file for a FIFO or a symbolic link, so
every open of an input goes through :func:`open_input`: ``O_NOFOLLOW`` (a symbolic link fails),
``O_NONBLOCK`` (a FIFO opens at once instead of waiting, and is then refused by ``fstat``), ``O_NOCTTY``
(a terminal device never becomes ours) and ``O_CLOEXEC``; then ``fstat`` on the descriptor must say
regular file. For regular files ``O_NONBLOCK`` changes nothing.

:func:`read_input` reads a whole file that is parsed in memory (sidecars, chat transcripts, SIPREC XML,
text transcripts, e-mails) and refuses one over its limit, naming the setting — checked on the open
descriptor and again while reading, so a file that grows after discovery cannot exhaust memory.
"""

from __future__ import annotations

import errno
import io
import os
import stat
from pathlib import Path
from typing import BinaryIO

from archive.errors import RejectedInput
from archive.text import printable

_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) \
    | getattr(os, "O_CLOEXEC", 0)


def not_regular(mode: int) -> str | None:
    """What a file of this ``st_mode`` is, when it is not a regular file (else None)."""
    for test, what in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return what
    return None if stat.S_ISREG(mode) else "not a regular file"


def show(path: Path | str) -> str:
    """A path as the archive names it in outcomes and the quarantine: text that can always be printed and
    encoded (undecodable bytes escaped), with every control, bidi and invisible character escaped, so a
    hostile name cannot start a line of its own or reorder one."""
    return printable(str(path).encode("utf-8", "backslashreplace").decode("utf-8"))


def open_input(path: Path | str) -> BinaryIO:
    """Open an input file for reading. Raises RejectedInput (``not_regular_file``, ``symlink`` or
    ``unreadable``) naming the file."""
    try:
        fd = os.open(path, _FLAGS)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise RejectedInput("symlink", f"{show(path)}: symbolic link (not followed)") from None
        raise RejectedInput("unreadable", f"{show(path)}: cannot be opened: {e.strerror}") from None
    try:
        what = not_regular(os.fstat(fd).st_mode)
        if what is not None:
            raise RejectedInput("not_regular_file", f"{show(path)}: is {what}, not a regular file; not read")
        return io.BufferedReader(_InputFile(fd, show(path)))
    except BaseException:
        os.close(fd)
        raise


class _InputFile(io.FileIO):
    """An input's descriptor whose read errors name the input (RejectedInput ``unreadable``), so that a
    failing source is told apart from a failing store — the input is refused, the store stops the run."""

    def __init__(self, fd: int, shown: str) -> None:
        super().__init__(fd, "rb", closefd=True)
        self._shown = shown

    def _failed(self, e: OSError) -> RejectedInput:
        return RejectedInput("unreadable", f"{self._shown}: reading failed: {e.strerror or e}")

    def readinto(self, buffer) -> int | None:
        try:
            return super().readinto(buffer)
        except OSError as e:
            raise self._failed(e) from None

    def read(self, size: int = -1) -> bytes | None:
        try:
            return super().read(size)
        except OSError as e:
            raise self._failed(e) from None

    def readall(self) -> bytes:
        try:
            return super().readall()
        except OSError as e:
            raise self._failed(e) from None


def read_input(path: Path | str, limit: int, setting: str) -> bytes:
    """The whole content of an input file of at most ``limit`` bytes. Raises RejectedInput
    (``too_large`` naming ``setting``, or as :func:`open_input`)."""
    with open_input(path) as f:
        size = os.fstat(f.fileno()).st_size
        data = b""
        if size <= limit:
            # read(n) allocates n bytes up front: ask for the size the file has (and one byte more, to see
            # whether it grew since), not for the limit — 16 MiB per chat file cost more than the chat
            data = f.read(size + 1)
            if len(data) > size:
                data += f.read(limit + 1 - len(data))
        if size > limit or len(data) > limit:
            raise RejectedInput("too_large", f"{show(path)}: {max(size, len(data)):,} bytes is over the limit of "
                                             f"{limit:,} for this kind of file ({setting})")
        return data
