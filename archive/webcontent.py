"""What a browser may do with content the archive did not write: how the API labels, frames and fences
the bytes of a record's parts and an e-mail's HTML body.

Parts hold what a caller, a sender or a recorder supplied — an e-mail's HTML, an attachment its sender
labelled ``application/javascript`` or ``image/svg+xml``. Served in the archive's origin as they are, a
browser would run them with the console's session (issue 25: an archived e-mail's script placed a legal
hold as the legal user who opened it). So content is never active in the archive's origin:

* **A part's type is the archive's choice, not the sender's.** Only types a browser cannot make active
  — ``audio/*`` and ``video/*`` (the console's players), plain raster images, ``text/plain`` and
  ``text/vtt`` — are served with their own type and ``inline``; everything else (HTML, XHTML, SVG, XML,
  JavaScript, PDF, ``message/rfc822`` …) as ``application/octet-stream`` and ``attachment``, so it
  downloads instead of rendering. The original media type stays in the record's detail.
* **Every part response carries its own policy** (:data:`PART_CSP`): ``sandbox`` (an opaque origin, no
  scripts, no forms, no popups even if a browser renders it) and ``default-src 'none'``, with
  ``X-Content-Type-Options: nosniff`` (no guessing HTML out of octets) and
  ``Cross-Origin-Resource-Policy: same-origin``.
* **A part is never a script, a style sheet, a worker or a frame.** A request whose ``Sec-Fetch-Dest``
  says it will be used as one (``<script src=…/parts/attachment-1>`` on the same origin is exactly the
  attack) is refused before a byte is read: only :data:`PART_DESTINATIONS` are served.
* **An e-mail's HTML is read only in a sandbox with remote loads blocked** (:data:`HTML_VIEW_CSP`):
  the console shows it in an ``<iframe sandbox>`` (no ``allow-scripts``, no ``allow-same-origin``)
  whose response is itself sandboxed, may show inline styles and ``data:`` images and load nothing
  else — no tracking pixel, no remote font, no request to the archive's own API. The response's policy
  applies however the URL is opened (framed, or navigated to directly), which a ``srcdoc`` frame would
  not give: its document would inherit the console's policy, which allows requests to the archive's own
  origin. ``frame-ancestors 'self'`` and ``X-Frame-Options: SAMEORIGIN`` let only the console frame it.

File names in ``Content-Disposition`` follow RFC 6266 §4.3 / RFC 8187: an ASCII ``filename`` fallback
and the full name, percent-encoded UTF-8, in ``filename*``; control, format and bidirectional
characters and path separators are dropped from both.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from urllib.parse import quote

# The CSP of every part response: an opaque origin that may run nothing and load nothing but its own media.
PART_CSP = "sandbox; default-src 'none'; media-src 'self'; img-src 'self'; frame-ancestors 'none'; " \
           "base-uri 'none'; form-action 'none'"
# The CSP of an e-mail's HTML body: no script, inline styles and data: images only, framed only by the console.
HTML_VIEW_CSP = "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:; " \
                "frame-ancestors 'self'; base-uri 'none'; form-action 'none'"
# Sec-Fetch-Dest values a part is served to: navigation, fetch/download, the players, an image. Absent
# (a client that is not a browser) is served too. Everything else — script, style, worker, sharedworker,
# serviceworker, audioworklet, paintworklet, embed, object, iframe, frame, font, manifest, xslt, json …
# and whatever browsers add next — is refused.
PART_DESTINATIONS = frozenset({"document", "empty", "audio", "video", "track", "image"})
HTML_VIEW_DESTINATIONS = frozenset({"iframe", "frame", "document", "empty"})

_TOKEN = r"[A-Za-z0-9!#$&^_.+-]{1,64}"
_MEDIA_TYPE = re.compile(rf"\s*({_TOKEN})/({_TOKEN})\s*(?:;(.*))?", re.S)
_CHARSET = re.compile(r"""(?:^|;)\s*charset\s*=\s*"?([A-Za-z0-9_.:-]{1,40})"?\s*(?:;|$)""", re.I)
_INLINE_IMAGES = frozenset({"png", "jpeg", "gif", "webp", "avif", "bmp"})
_UTF7 = frozenset({"utf-7", "utf7", "x-utf-7", "unicode-1-1-utf-7", "csunicode11utf7"})  # never a charset here
_SAFE_ASCII = re.compile(r"[^A-Za-z0-9._-]+")


def inline_media_type(media_type: str | None) -> str | None:
    """The type to serve a part inline with, when its declared ``media_type`` is one a browser cannot
    make active; None for every other type (served as an attachment of application/octet-stream)."""
    m = _MEDIA_TYPE.fullmatch(media_type or "")
    if not m:
        return None
    main, sub = m.group(1).lower(), m.group(2).lower()
    if main in ("audio", "video") and "script" not in sub and "xml" not in sub and "html" not in sub:
        return f"{main}/{sub}"
    if main == "image" and sub in _INLINE_IMAGES:
        return f"image/{sub}"
    if main == "text" and sub in ("plain", "vtt"):
        charset = _charset(m.group(3))
        return f"text/{sub}; charset={charset}" if charset else f"text/{sub}"
    return None


def _charset(params: str | None) -> str | None:
    m = _CHARSET.search(params or "")
    return m.group(1).lower() if m and m.group(1).lower() not in _UTF7 else None


def html_media_type(media_type: str | None) -> str:
    """``text/html`` with the body's declared charset when it is a plain label and not UTF-7 (else none:
    the browser reads the document's own ``<meta charset>`` or guesses, inside the sandbox)."""
    m = _MEDIA_TYPE.fullmatch(media_type or "")
    charset = _charset(m.group(3) if m else None)
    return f"text/html; charset={charset}" if charset else "text/html"


def _printable(name: str) -> str:
    """``name`` without control, format (bidi included), separator-of-line characters or path parts."""
    name = re.split(r"[/\\]", name)[-1]
    name = "".join(c for c in name if unicodedata.category(c) not in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"))
    return " ".join(name.split()).strip(" .")[:200]


def content_disposition(disposition: str, filename: str) -> str:
    """An RFC 6266 ``Content-Disposition`` value: ``disposition``; an ASCII fallback ``filename`` and,
    when the name is not plain ASCII, the UTF-8 name in ``filename*`` (RFC 8187)."""
    name = _printable(filename) or "part"
    fallback = _SAFE_ASCII.sub("_", name).strip("_") or "part"
    value = f'{disposition}; filename="{fallback}"'
    if fallback != name:
        value += f"; filename*=UTF-8''{quote(name, safe='')}"
    return value


@functools.lru_cache(maxsize=8192)
def part_headers(record_id: str, part: str, filename: str | None, media_type: str | None,
                 download: bool) -> tuple[str, tuple[tuple[str, str], ...]]:
    """(Content-Type, headers) for serving a part: its own type and inline only when
    :func:`inline_media_type` allows it and no download was asked for; else octet-stream as an
    attachment. Cached: a player asks for the same part many times."""
    inline = None if download else inline_media_type(media_type)
    name = f"{record_id}-{filename or part}"
    return (inline or "application/octet-stream",
            (("Content-Disposition", content_disposition("inline" if inline else "attachment", name)),
             ("Content-Security-Policy", PART_CSP), ("X-Content-Type-Options", "nosniff"),
             ("Cross-Origin-Resource-Policy", "same-origin")))


def refused_destination(dest: str | None, allowed: frozenset[str]) -> str | None:
    """Why a request whose ``Sec-Fetch-Dest`` is ``dest`` may not have the content; None when it may."""
    if not dest or dest in allowed:
        return None
    shown = re.sub(r"[^a-z0-9-]", "?", dest.lower()[:40])
    return (f"content is not served to be used as {shown!r} (Sec-Fetch-Dest): archived parts are never run, "
            "styled or framed in the archive's origin")
