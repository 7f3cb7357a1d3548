"""Small JSON files (identities, tokens) read again only when they change, and changed safely.

An API server checks the token and the identity of every request; reading and parsing both files each
time was a tenth of its work. Writers replace these files whole (``os.replace``: a new inode), so the file's
inode, modification time and size tell when to read it again — also when another process changed it.
:meth:`JsonFile.update` is the one way to change such a file: under an exclusive lock, from the file as it
is now, written atomically (unique temporary file, fsync, rename, directory fsync; mode 0600), so two
writers never lose each other's change and a crash never leaves half a file.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

from archive.files import PRIVATE, locked, write_atomic


class JsonFile:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._doc = None

    def read(self):
        """The parsed document (shared: callers copy before changing it), or None when there is no file.
        Raises ValueError for a file that is not JSON."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        with self._lock:
            if stamp != self._stamp:
                self._doc = json.loads(self.path.read_text())
                self._stamp = stamp
            return self._doc

    def update(self, change: Callable[[dict | None], dict]) -> dict:
        """Replace the document with ``change(current)`` (``current`` freshly read, a private copy, or
        None when there is no file), under the file's lock; returns the new document. Raises ValueError
        for a file that is not JSON."""
        with locked(self.path):
            try:
                current = json.loads(self.path.read_text())
            except FileNotFoundError:
                current = None
            doc = change(current)
            write_atomic(self.path, json.dumps(doc, indent=1, sort_keys=True).encode(), mode=PRIVATE)
            return doc
