"""Probing recordings with a real media library: codec, duration, channels, sample rate — and refusing a
file that is not what its name claims, is truncated, or is a format the archive does not take.

Library: **PyAV** (``av`` on PyPI). Its wheels bundle FFmpeg's own demuxers and decoders, so one pip
install gives the same parser every player uses, for every format we take (WAV PCM/μ-law/A-law/GSM 6.10,
MP3, Ogg/Opus, FLAC, M4A/AAC, ADTS AAC, MP4 H.264/HEVC + AAC, WebM VP8/VP9/AV1 + Opus/Vorbis), with
packet-level access: positions, timestamps and FFmpeg's own "corrupt"/"ended prematurely" verdicts.
``mutagen`` was the alternative: it reads tags and headers only (no demuxing, no decoding), so it can say
what a header declares but cannot tell whether the media behind it is there — the question that matters.
PyAV is imported lazily; without it :func:`probe` raises :class:`MediaLibraryMissing` with the install line.

What :func:`probe` does, cheaply (a five-minute call probes in milliseconds; nothing is decoded in full):

1. the claim: the extension (``claimed_extension`` or the file's suffix) names the container expected;
   FFmpeg detects the container from the *content* alone (the file is opened as a file object, so the
   name cannot sway detection). Another container → :class:`CorruptMedia` naming both. An extension or a
   codec we do not take → :class:`UnsupportedMedia`.
2. structure, read with ``struct`` from the header or tail: WAV — the RIFF and ``data`` chunk sizes (RF64's
   ``ds64`` too) against the file size; Ogg — the last page must end exactly at end of file and carry the
   end-of-stream flag; MP4/M4A — the top-level boxes must tile the file exactly; WebM — a known
   ``Segment`` size must fit in the file; MP3/ADTS — the last frame must be as long as its header says.
3. demux every packet (no decoding): a demux error, a packet FFmpeg flags corrupt, or an error the
   demuxer logs on the way ("File ended prematurely", "partial file" …) → corrupt. The end of the last packet
   must reach the duration the container declares (WAV header, FLAC STREAMINFO, MP3 Xing/Info/VBRI,
   MP4 ``moov``, WebM ``Duration``) within 0.5 s + 0.5 %.
4. decode the first two and the last three packets of the audio stream and the first video packet, so a
   header over garbage, or a cut final FLAC/AAC frame, is caught.

FFmpeg's log is captured per thread; while a probe runs PyAV's log level is raised to ERROR if it was off
(and put back afterwards), which is how "ended prematurely" verdicts reach us.
"""

from __future__ import annotations

import os
import struct
import threading
from collections import deque
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

from archive.errors import CorruptMedia, MediaLibraryMissing, UnsupportedMedia
from archive.ingest.files import open_input

INSTALL_HINT = 'pip install "av>=15"'


@dataclass(frozen=True)
class MediaInfo:
    """What a probe found. ``codec`` is the video codec for video, else the audio codec."""

    media_type: str
    container: str
    kind: str
    codec: str
    duration_s: float
    channels: int | None = None
    sample_rate: int | None = None
    width: int | None = None
    height: int | None = None
    bit_rate: int | None = None
    audio_codec: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


_PCM = {"pcm_u8", "pcm_s16le", "pcm_s24le", "pcm_s32le", "pcm_f32le", "pcm_f64le"}
# container → (media type without video, with video, audio codecs taken, video codecs taken)
_CONTAINERS: dict[str, tuple[str, str | None, set[str], set[str]]] = {
    "wav": ("audio/wav", None, _PCM | {"pcm_mulaw", "pcm_alaw", "gsm_ms"}, set()),
    "mp3": ("audio/mpeg", None, {"mp3"}, set()),
    "ogg": ("audio/ogg", None, {"opus"}, set()),
    "flac": ("audio/flac", None, {"flac"}, set()),
    "aac": ("audio/aac", None, {"aac"}, set()),
    "mp4": ("audio/mp4", "video/mp4", {"aac"}, {"h264", "hevc"}),
    "webm": ("audio/webm", "video/webm", {"opus", "vorbis"}, {"vp8", "vp9", "av1"}),
}
# extension → (container, may it hold video?)
_EXTENSIONS = {".wav": ("wav", False), ".mp3": ("mp3", False), ".ogg": ("ogg", False), ".opus": ("ogg", False),
               ".oga": ("ogg", False), ".flac": ("flac", False), ".aac": ("aac", False), ".m4a": ("mp4", False),
               ".mp4": ("mp4", True), ".webm": ("webm", True)}
# FFmpeg demuxer name → container ("matroska,webm" is resolved by the EBML DocType)
_DEMUXERS = {"wav": "wav", "mp3": "mp3", "ogg": "ogg", "flac": "flac", "aac": "aac",
             "mov,mp4,m4a,3gp,3g2,mj2": "mp4", "matroska,webm": "webm"}
_SLACK_S, _SLACK_FRACTION = 0.5, 0.005

_log_lock = threading.Lock()
_log_users = 0
_log_saved: Any = None


def _load_av():
    try:
        import av
    except ImportError as e:
        raise MediaLibraryMissing(f"media probing needs PyAV (FFmpeg): {INSTALL_HINT}", hint=INSTALL_HINT) from e
    return av


def probe(path: Path, *, claimed_extension: str | None = None) -> MediaInfo:
    """Probe one recording; raise :class:`CorruptMedia` or :class:`UnsupportedMedia` if it cannot be archived."""
    path = Path(path)
    name = path.name
    ext = (claimed_extension if claimed_extension is not None else path.suffix).lower()
    ext = f".{ext}" if ext and not ext.startswith(".") else ext
    expected, video_ok = _EXTENSIONS.get(ext, (None, True))
    if ext and expected is None:
        raise UnsupportedMedia(f"{name}: '{ext}' is not a recording format the archive takes "
                               f"({' '.join(sorted(_EXTENSIONS))})", file=name, extension=ext)
    # Two handles, each a regular file (not a FIFO or a link swapped in since discovery): FFmpeg reads one
    # as a stream; the struct checks seek about in the other.
    with open_input(path) as stream, open_input(path) as fh:
        size = os.fstat(stream.fileno()).st_size
        if size == 0:
            raise CorruptMedia(f"{name}: empty file (0 bytes), expected {expected or 'media'}",
                               file=name, expected=expected, found="empty")
        av = _load_av()
        with _ffmpeg_errors(av) as logs:
            try:
                container = av.open(stream, "r")
            except av.FFmpegError as e:
                raise CorruptMedia(f"{name}: not a readable {expected or 'media'} file ({_reason(e)})",
                                   file=name, expected=expected, found="unrecognised") from None
            try:
                return _probe_open(av, container, fh, size, name, ext, expected, video_ok, logs)
            finally:
                container.close()


def _probe_open(av, container, fh: BinaryIO, size: int, name: str, ext: str, expected: str | None,
                video_ok: bool, logs: list) -> MediaInfo:
    demuxer = container.format.name
    found = _DEMUXERS.get(demuxer, demuxer)
    if found == "webm":
        found = _check_matroska(fh, size, name)
    details = {"file": name, "expected": expected, "found": found}
    if expected is not None and found != expected:
        raise CorruptMedia(f"{name}: not what it claims — named {ext}, so {expected} was expected, but the "
                           f"content is {found}", **details)
    if found not in _CONTAINERS:
        raise UnsupportedMedia(f"{name}: {found} is not a container the archive takes", **details)
    audio_type, video_type, audio_codecs, video_codecs = _CONTAINERS[found]
    audio = list(container.streams.audio)
    video = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not audio and not video:
        raise CorruptMedia(f"{name}: {found} file has no audio or video stream", **details)
    for s in audio + video:
        if (codec := _codec(s)) not in (allowed := audio_codecs if s.type == "audio" else video_codecs):
            raise UnsupportedMedia(f"{name}: {s.type} codec {codec} in {found} is not taken (taken: "
                                   f"{', '.join(sorted(allowed)) or 'none'})", **{**details, "codec": codec})
    if video and not video_ok:
        raise CorruptMedia(f"{name}: claims audio-only {expected} but holds {_codec(video[0])} video",
                           **{**details, "found": f"{found} with video"})

    _STRUCTURE.get(found, lambda fh, size, name: None)(fh, size, name)
    primary_audio = audio[0] if audio else None
    # PCM-style WAV has fixed-size packets and its header sizes were just checked against the file, so
    # demuxing its middle (thousands of packets per call, all Python overhead) proves nothing more: read
    # the first packets and the last seconds.
    skip_to = None
    if found == "wav" and primary_audio is not None and not video and container.duration \
            and container.duration / 1e6 > 10:
        skip_to = int((container.duration / 1e6 - 2) / primary_audio.time_base)
    measured, tails, heads = _demux(av, container, name, primary_audio, video[0] if video else None,
                                    skip_to=skip_to)
    # The demuxer's own errors only: some FFmpeg builds' parsers log harmless ones (Opus in WebM).
    errors = [entry for entry in logs if entry[0] <= av.logging.ERROR and entry[1] == demuxer]
    if errors:
        raise CorruptMedia(f"{name}: FFmpeg reports {errors[0][2].strip()!r} reading {found}", **details)
    if found in ("mp3", "aac") and primary_audio is not None and tails.get(primary_audio.index):
        _check_last_frame(found, bytes(tails[primary_audio.index][-1]), name)

    declared = container.duration / 1e6 if container.duration and container.duration > 0 else None
    exact = declared is not None and _declared_is_exact(found, fh)
    if exact and declared - measured > _SLACK_S + _SLACK_FRACTION * declared:
        raise CorruptMedia(f"{name}: truncated — {found} declares {declared:.3f} s but its packets end at "
                           f"{measured:.3f} s", **details, declared_s=round(declared, 3), found_s=round(measured, 3))
    _decode_sample(av, name, heads, tails)

    duration = declared if exact else measured
    a = primary_audio.codec_context if primary_audio is not None else None
    v = video[0].codec_context if video else None
    return MediaInfo(
        media_type=video_type if video else audio_type,
        container=found,
        kind="video" if video else "audio",
        codec=_codec(video[0] if video else primary_audio),
        duration_s=round(duration, 3),
        channels=a.channels if a is not None else None,
        sample_rate=a.sample_rate if a is not None else None,
        width=v.width if v is not None else None,
        height=v.height if v is not None else None,
        bit_rate=container.bit_rate or None,
        audio_codec=_codec(primary_audio) if primary_audio is not None else None,
    )


def _demux(av, container, name: str, audio, video, *, skip_to: int | None = None):
    """Read every packet — or, with ``skip_to`` (a timestamp in the audio stream's time base), the first
    packets and then everything from ``skip_to`` on; return (seconds reached, last packets per stream,
    first packets per stream)."""
    ends: dict[int, int] = {}  # in each stream's time base: plain ints in the loop, Fractions once at the end
    starts: dict[int, int] = {}
    keep = {s.index for s in (audio, video) if s is not None}
    tails: dict[int, deque] = {i: deque(maxlen=3) for i in keep}
    heads: dict[int, list] = {i: [] for i in keep}
    want_heads = {i: (2 if audio is not None and i == audio.index else 1) for i in keep}
    def take(packet) -> None:
        if packet.is_corrupt:
            raise CorruptMedia(f"{name}: truncated or damaged — packet at byte {packet.pos} of "
                               f"stream {packet.stream_index} is incomplete", file=name)
        i = packet.stream_index
        ts = packet.pts if packet.pts is not None else packet.dts
        if ts is not None:
            if i not in starts or ts < starts[i]:
                starts[i] = ts
            end = ts + (packet.duration or 0)
            if end > ends.get(i, end - 1):
                ends[i] = end
        if i in keep:
            tails[i].append(packet)
            if len(heads[i]) < want_heads[i]:
                heads[i].append(packet)

    try:
        for packet in container.demux():
            if packet.size:
                take(packet)
            if skip_to is not None and all(len(heads[i]) >= want_heads[i] for i in keep):
                break
        else:
            skip_to = None
        if skip_to is not None:
            container.seek(skip_to, stream=audio, any_frame=True)
            for packet in container.demux():
                if packet.size:
                    take(packet)
    except av.FFmpegError as e:
        raise CorruptMedia(f"{name}: cannot be read to the end ({_reason(e)})", file=name) from None
    bases = {s.index: s.time_base for s in container.streams}
    measured = (float(max(ends[i] * bases[i] for i in ends) - min(starts[i] * bases[i] for i in starts))
                if ends else 0.0)
    if audio is not None and not tails[audio.index]:
        raise CorruptMedia(f"{name}: audio stream has no packets", file=name)
    tails = {i: list(q) for i, q in tails.items() if i == getattr(audio, "index", None)}
    return measured, tails, heads


def _decode_sample(av, name: str, heads: dict, tails: dict) -> None:
    for i, packets in heads.items():
        for batch in (packets, tails.get(i, [])):
            if not batch:
                continue
            ctx = batch[0].stream.codec_context
            try:
                for p in batch:
                    ctx.decode(p)
            except av.FFmpegError as e:
                where = "start" if batch is packets else "end"
                raise CorruptMedia(f"{name}: {batch[0].stream.type} cannot be decoded at the {where} "
                                   f"({_reason(e)})", file=name) from None
            ctx.flush_buffers()


# --- structure checks (stdlib) --------------------------------------------------------------------


def _truncated(name: str, what: str) -> CorruptMedia:
    return CorruptMedia(f"{name}: truncated — {what}", file=name)


def _check_wav(fh: BinaryIO, size: int, name: str) -> None:
    fh.seek(0)
    head = fh.read(12)
    if len(head) < 12:
        raise _truncated(name, "WAV header cut short")
    riff, riff_size, wave = struct.unpack("<4sI4s", head)
    if riff not in (b"RIFF", b"RF64") or wave != b"WAVE":
        raise CorruptMedia(f"{name}: not a RIFF/WAVE file", file=name)
    ds64: tuple[int, int] | None = None
    offset = 12
    while offset + 8 <= size:
        fh.seek(offset)
        cid, csize = struct.unpack("<4sI", fh.read(8))
        if cid == b"ds64":
            ds64 = struct.unpack("<QQ", fh.read(16))
        if cid == b"data":
            if ds64 is not None and csize == 0xFFFFFFFF:
                csize = ds64[1]
            if csize in (0, 0xFFFFFFFF):
                raise CorruptMedia(f"{name}: WAV header was never finalised (data size {csize:#x}); the "
                                   "recorder did not close the file", file=name)
            if offset + 8 + csize > size:
                raise _truncated(name, f"WAV data chunk declares {csize} bytes but only "
                                       f"{size - offset - 8} follow")
            break
        offset += 8 + csize + (csize & 1)
    else:
        raise _truncated(name, "WAV file ends before its data chunk")
    total = ds64[0] if riff == b"RF64" and ds64 else riff_size
    if total + 8 > size + 1:  # one byte of slack for writers that skip the final pad byte
        raise _truncated(name, f"RIFF header declares {total + 8} bytes but the file has {size}")


def _check_ogg(fh: BinaryIO, size: int, name: str) -> None:
    start = max(0, size - 65307 - 4096)  # a page is at most 65,307 bytes
    fh.seek(start)
    tail = fh.read()
    at = len(tail)
    while (at := tail.rfind(b"OggS", 0, at)) >= 0:
        if at + 27 <= len(tail) and tail[at + 4] == 0:
            nsegs = tail[at + 26]
            lacing = tail[at + 27:at + 27 + nsegs]
            if len(lacing) == nsegs and at + 27 + nsegs + sum(lacing) == len(tail):
                if not tail[at + 5] & 0x04:
                    raise _truncated(name, "Ogg stream has no end-of-stream page")
                return
    raise _truncated(name, "the last Ogg page is incomplete")


def _check_mp4(fh: BinaryIO, size: int, name: str) -> None:
    offset = 0
    while offset < size:
        fh.seek(offset)
        head = fh.read(16)
        if len(head) < 8:
            raise _truncated(name, f"MP4 box header cut at byte {offset}")
        box_size, box = struct.unpack(">I4s", head[:8])
        if box_size == 1 and len(head) == 16:
            box_size = struct.unpack(">Q", head[8:])[0]
        elif box_size == 0:
            return
        if box_size < 8:
            raise CorruptMedia(f"{name}: MP4 box at byte {offset} has invalid size {box_size}", file=name)
        if offset + box_size > size:
            raise _truncated(name, f"MP4 box '{box.decode('latin-1')}' declares {box_size} bytes but only "
                                   f"{size - offset} remain")
        offset += box_size


def _read_vint(fh: BinaryIO, keep_marker: bool) -> tuple[int, bool]:
    """An EBML variable-length integer: (value, is it the all-ones 'unknown size')."""
    first = fh.read(1)
    length = 9 - first[0].bit_length() if first else 0
    if not 1 <= length <= 8:
        raise ValueError("bad EBML number" if first else "cut short")
    value, mask = int.from_bytes(first + fh.read(length - 1), "big"), (1 << (7 * length)) - 1
    return (value, False) if keep_marker else (value & mask, value & mask == mask)


def _check_matroska(fh: BinaryIO, size: int, name: str) -> str:
    """Return the EBML DocType ("webm" or "matroska"); refuse a Segment that does not fit in the file."""
    try:
        fh.seek(0)
        if _read_vint(fh, True)[0] != 0x1A45DFA3:
            raise ValueError("no EBML header")
        header_size, _ = _read_vint(fh, False)
        body_end = fh.tell() + header_size
        doctype = "matroska"
        while fh.tell() < body_end:
            eid, _ = _read_vint(fh, True)
            esize, _ = _read_vint(fh, False)
            data = fh.read(esize)
            if eid == 0x4282:
                doctype = data.rstrip(b"\0").decode("ascii", "replace")
        fh.seek(body_end)
        if _read_vint(fh, True)[0] != 0x18538067:
            raise ValueError("no Segment")
        seg_size, unknown = _read_vint(fh, False)
    except ValueError as e:
        raise CorruptMedia(f"{name}: damaged EBML/Matroska header ({e})", file=name) from None
    if not unknown and fh.tell() + seg_size > size:
        raise _truncated(name, f"WebM Segment declares {seg_size} bytes but only {size - fh.tell()} follow")
    return doctype


_STRUCTURE = {"wav": _check_wav, "ogg": _check_ogg, "mp4": _check_mp4}

_MP3_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
_MP3_KBPS_V1 = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
_MP3_KBPS_V2 = (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)


def _check_last_frame(found: str, frame: bytes, name: str) -> None:
    """The last MP3 (Layer III) or ADTS frame must be as long as its own header says."""
    if len(frame) < 7 or frame[0] != 0xFF or frame[1] & 0xE0 != 0xE0:
        return
    if found == "aac":
        want = ((frame[3] & 0x03) << 11) | (frame[4] << 3) | (frame[5] >> 5)
    else:
        version, layer = (frame[1] >> 3) & 3, (frame[1] >> 1) & 3
        kbps_i, rate_i, pad = frame[2] >> 4, (frame[2] >> 2) & 3, (frame[2] >> 1) & 1
        if layer != 1 or version not in _MP3_RATES or rate_i == 3 or kbps_i in (0, 15):
            return  # not Layer III, or free format: no length to check
        kbps = (_MP3_KBPS_V1 if version == 3 else _MP3_KBPS_V2)[kbps_i]
        want = (144000 if version == 3 else 72000) * kbps // _MP3_RATES[version][rate_i] + pad
    if len(frame) < want:
        raise _truncated(name, f"the last {found} frame has {len(frame)} of its {want} bytes")


def _declared_is_exact(found: str, fh: BinaryIO) -> bool:
    """Whether the container's duration is written in the file (not estimated from size and bit rate)."""
    if found == "aac":
        return False
    if found != "mp3":
        return True
    fh.seek(0)
    head = fh.read(10)
    id3 = head[:3] == b"ID3" and len(head) == 10
    fh.seek(10 + (head[6] << 21 | head[7] << 14 | head[8] << 7 | head[9]) if id3 else 0)
    first = fh.read(4096)
    sync = next((i for i in range(len(first) - 1) if first[i] == 0xFF and first[i + 1] & 0xE0 == 0xE0), None)
    return sync is not None and any(tag in first[sync:sync + 200] for tag in (b"Xing", b"Info", b"VBRI"))


# --- helpers ---------------------------------------------------------------------------------------


def _codec(stream) -> str:
    codec = stream.codec_context.codec
    return codec.canonical_name if codec is not None else stream.codec_context.name


def _reason(e: Exception) -> str:
    log = getattr(e, "log", None)
    detail = f": {log[2].strip()}" if log and len(log) > 2 and log[2] else ""
    return f"{(getattr(e, 'strerror', None) or str(e)).strip()}{detail}"


@contextmanager
def _ffmpeg_errors(av):
    """Capture FFmpeg's log for this thread; raise PyAV's level to ERROR meanwhile if it was off."""
    global _log_users, _log_saved
    with _log_lock:
        if _log_users == 0:
            _log_saved = av.logging.get_level()
            if _log_saved is None or _log_saved < av.logging.ERROR:
                av.logging.set_level(av.logging.ERROR)
        _log_users += 1
    try:
        with av.logging.Capture(local=True) as logs:
            yield logs
    finally:
        with _log_lock:
            _log_users -= 1
            if _log_users == 0:
                av.logging.set_level(_log_saved)
