"""Small JSON files (identities, tokens) read again only when they change.

An API server checks the token and the identity of every request; reading and parsing both files each
time was a tenth of its work. Writers replace these files whole (``os.replace``: a new inode), so the file's
inode, modification time and size tell when to read it again — also when another process changed it.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path


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
