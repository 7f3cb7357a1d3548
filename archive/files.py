"""Local files the archive writes outside its object store: written whole or not at all, private, and
never over the archive's own files.

* :func:`atomic_file` / :func:`write_atomic` — a unique temporary file beside the target (mode 0600),
  fsync'd, renamed into place, the directory fsync'd: a reader sees the old file or the new one, never
  half of one, and a failure leaves nothing behind. Without ``overwrite`` the rename cannot replace a
  file that appeared meanwhile (``link`` then ``unlink``).
* :func:`locked` — an exclusive lock (``flock`` on ``<file>.lock``) for read-modify-write of a shared
  file such as the identities, so two admins never lose each other's change.
* :func:`private_file` — a file (the SQLite index, which holds message text) created 0600, or made so.
* :func:`check_output` — where a command may write a file it was asked for (``-o PATH``): never over an
  existing file without ``--force``, never a non-regular file, and never anything of the archive itself
  (its home, store directory, keyring, identities, tokens, policies), symlinks and hard links resolved.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from archive.errors import OutputRefused

PRIVATE = 0o600


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary_beside(path: Path, *, suffix: str = ".partial") -> tuple[int, Path]:
    """A new, uniquely named file (mode 0600) in ``path``'s directory: (fd, path)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    return fd, Path(tmp)


def place(tmp: Path, final: Path, *, overwrite: bool) -> None:
    """Move the complete file ``tmp`` to ``final`` (same directory). Without ``overwrite`` an existing
    ``final`` is left alone and OutputRefused raised, even one created since it was checked."""
    if overwrite:
        os.replace(tmp, final)
    else:
        try:
            os.link(tmp, final)
        except FileExistsError:
            raise OutputRefused(f"{final} exists; pass --force to replace it", path=str(final)) from None
        os.unlink(tmp)
    fsync_dir(final.parent)


@contextlib.contextmanager
def atomic_file(path: Path, *, overwrite: bool = True, mode: int = PRIVATE) -> Iterator:
    """A binary file to write ``path``'s new content into; it replaces ``path`` only when the block ends
    without an error (then fsync'd, renamed, directory fsync'd). Raises OutputRefused (no ``overwrite``
    and ``path`` exists)."""
    path = Path(path)
    fd, tmp = temporary_beside(path)
    try:
        if mode != PRIVATE:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        place(tmp, path, overwrite=overwrite)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, data: bytes | Iterable[bytes], *, overwrite: bool = True, mode: int = PRIVATE) -> None:
    """Write ``data`` (bytes, or chunks) to ``path`` through :func:`atomic_file`."""
    with atomic_file(path, overwrite=overwrite, mode=mode) as f:
        for chunk in [data] if isinstance(data, bytes | bytearray) else data:
            f.write(chunk)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock for ``path`` (on ``<path>.lock``, which stays) while the block runs; other
    processes and threads taking it wait."""
    lock = Path(path).with_name(Path(path).name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, PRIVATE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def private_file(path: Path, *companions: str) -> None:
    """Create ``path`` empty with mode 0600 if it does not exist; make it (and ``path + companion`` for
    each companion that exists, e.g. SQLite's ``-wal`` and ``-shm``) 0600 if it is more open."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE))
    for p in (path, *(path.with_name(path.name + c) for c in companions)):
        with contextlib.suppress(FileNotFoundError):
            if os.stat(p).st_mode & 0o077:
                os.chmod(p, PRIVATE)


# --- outputs a user asked for ----------------------------------------------------------------------


def protected_paths(settings) -> list[Path]:
    """The archive's own files and directories, which no output may touch."""
    from archive.retention.service import default_policies_dir

    paths = [settings.home, settings.keyring_path, settings.identities_path, settings.tokens_path,
             settings.index_path, settings.audit_witness_path, settings.policies_dir or default_policies_dir()]
    if settings.store_url.startswith("file://"):
        paths.append(Path(settings.store_url[len("file://"):]))
    return [p for p in paths if p]


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def check_output(path: Path | str, protected: Iterable[Path], *, force: bool = False) -> Path:
    """The file to write for ``-o path``, with symlinks resolved. Raises OutputRefused when it is (or
    resolves to, or is a hard link of) one of the archive's own files or lies under one of its
    directories, when it exists and is not a regular file, or when it exists and ``force`` is not given."""
    given = Path(os.path.abspath(path))
    real = Path(os.path.realpath(given))
    roots = []
    for p in protected:
        roots += [Path(os.path.abspath(p)), Path(os.path.realpath(p))]
    for candidate in (given, real):
        for root in roots:
            if _within(candidate, root):
                raise OutputRefused(f"refusing to write {path}: it is the archive's own file or directory ({root}); "
                                    "choose a path outside the archive", path=str(path))
    try:
        st = os.stat(real)
    except FileNotFoundError:
        if not real.parent.is_dir():
            raise OutputRefused(f"cannot write {path}: {real.parent} is not a directory", path=str(path)) from None
        return real
    if not stat.S_ISREG(st.st_mode):
        raise OutputRefused(f"refusing to write {path}: it exists and is not a regular file "
                            "(use '-o -' or leave -o out for standard output)", path=str(path))
    for root in roots:
        with contextlib.suppress(OSError):
            other = os.stat(root)
            if stat.S_ISREG(other.st_mode) and (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
                raise OutputRefused(f"refusing to write {path}: it is a link to the archive's own {root}",
                                    path=str(path))
    if not force:
        raise OutputRefused(f"{path} exists; pass --force to replace it", path=str(path))
    return real
