"""Text the archive did not write, made safe to show, and text that must say something.

Names, reasons and message text come from senders, recorders and operators. Three rules apply wherever
the archive shows or judges such text:

* :func:`printable` — what a terminal receives: control characters (C0, DEL, C1), bidirectional
  overrides and isolates (the "Trojan Source" characters, which reorder what a reader sees), line and
  paragraph separators and other invisible format characters are shown as escapes (``\\x1b``,
  ``\\u202e``), never passed through raw. :func:`json_text` does the same inside JSON text, where the
  escapes are JSON's own (``\\u202e``), so a machine reads the exact value back.
  :class:`TerminalStream` applies it to everything the CLI prints.
* :func:`redact` — a URL's userinfo (``http://user:password@host``) never reaches a message or a log.
* :func:`meaningful` — a stated reason must hold something a person can read: not blank, and not made
  only of spaces, invisible or format characters.
"""

from __future__ import annotations

import io
import re
import unicodedata

# Zero-width joiner and non-joiner are format characters that scripts (Persian, Indic) and emoji need.
_KEEP_FORMAT = frozenset("\u200c\u200d")
# Characters of other categories that show nothing (Hangul fillers, braille blank, combining grapheme joiner).
_INVISIBLE = frozenset("\u115f\u1160\u3164\uffa0\u2800\u034f")
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})
_BLANK_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp", "Mn", "Me", "Cs", "Co", "Cn"})
_PLAIN = re.compile(r"[\x20-\x7e]*")
_PLAIN_LINES = re.compile(r"[\x20-\x7e\n\t]*")


def _unsafe(c: str) -> bool:
    return c not in _KEEP_FORMAT and (unicodedata.category(c) in _ESCAPED_CATEGORIES or c in _INVISIBLE)


def _escape(c: str) -> str:
    n = ord(c)
    return f"\\x{n:02x}" if n <= 0xFF else f"\\u{n:04x}" if n <= 0xFFFF else f"\\U{n:08x}"


def printable(text, *, newlines: bool = False) -> str:
    """``text`` (any value: it is made a string) for a terminal, with every control, bidi and invisible
    format character escaped. ``newlines`` keeps ``\\n`` and ``\\t`` (for text already laid out in lines
    by the archive itself); otherwise they are escaped too, so a value cannot start a line of its own."""
    text = "" if text is None else str(text)
    if (_PLAIN_LINES if newlines else _PLAIN).fullmatch(text):
        return text
    keep = "\n\t" if newlines else ""
    return "".join(_escape(c) if c not in keep and _unsafe(c) else c for c in text)


def json_text(text: str) -> str:
    """JSON text (from ``json.dumps(..., ensure_ascii=False)``) with the characters :func:`printable`
    escapes written as JSON ``\\u`` escapes instead: the same JSON value, safe on a terminal."""
    if text.isascii():
        return text  # json.dumps escaped every control character already

    def esc(c: str) -> str:
        n = ord(c)
        if n <= 0xFFFF:
            return f"\\u{n:04x}"
        n -= 0x10000
        return f"\\u{0xD800 + (n >> 10):04x}\\u{0xDC00 + (n & 0x3FF):04x}"

    return "".join(esc(c) if not c.isascii() and _unsafe(c) else c for c in text)


_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/@'\"<>]*@")


def redact(text) -> str:
    """``text`` with the userinfo of every URL in it replaced by ``***`` (``http://***@host``)."""
    text = "" if text is None else str(text)
    return _USERINFO.sub(r"\1***@", text) if "@" in text else text


def meaningful(text) -> bool:
    """Whether ``text`` holds at least one character a reader sees: not None, not blank, not only
    spaces, control, format (zero-width, bidi) or other invisible characters."""
    if not isinstance(text, str):
        return False
    return any(unicodedata.category(c) not in _BLANK_CATEGORIES and c not in _INVISIBLE for c in text)


class TerminalStream(io.TextIOBase):
    """A text stream around the CLI's stdout or stderr: text reaches the terminal with control, C1, bidi
    and invisible format characters escaped; the newlines and tabs the CLI lays out its output with, and
    a carriage return that begins a progress line, are kept. ``buffer`` (bytes) is the stream's own."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        head = "\r" if text.startswith("\r") else ""
        self._stream.write(head + printable(text[len(head):], newlines=True))
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()

    @property
    def buffer(self):
        return self._stream.buffer

    @property
    def encoding(self) -> str:
        return getattr(self._stream, "encoding", "utf-8")
