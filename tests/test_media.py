"""Media probing against real recordings made at test time by tools no one here wrote: espeak-ng speaks,
sox and ffmpeg encode. Every format the archive takes is probed for codec, duration, channels and sample
rate; a 60 % cut of each, a text file and a PNG under media names, an empty file and an MP3 named .wav
are refused.

Missing tools are a failure, never a skip: ``apt-get install -y espeak-ng sox ffmpeg``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from archive.errors import ArchiveError
from archive.ingest.media import CorruptMedia, MediaLibraryMissing, UnsupportedMedia, probe

SECONDS = 4.0
TOLERANCE = 0.15
TOOLS = ("espeak-ng", "sox", "ffmpeg")
SPEECH = "This call is recorded for compliance and training purposes. Your reference is four two seven."
TESTSRC = ["-f", "lavfi", "-i", f"testsrc=size=320x240:rate=15:duration={SECONDS}"]


@dataclass(frozen=True)
class Sample:
    file: str
    make: tuple  # argv lists; "{src}" / "{out}" are filled in
    container: str
    media_type: str
    codec: str
    channels: int
    sample_rate: int
    audio_codec: str
    size: tuple[int, int] | None = None


def _ff(*args: str) -> tuple:
    return (("ffmpeg", "-v", "error", "-y", *args, "{out}"),)


def _ff_av(*args: str) -> tuple:
    return _ff(*TESTSRC, "-i", "{src}", "-shortest", *args)


SAMPLES = [
    Sample("pcm.wav", (("sox", "{src}", "-r", "8000", "-c", "2", "-e", "signed-integer", "-b", "16", "{out}"),),
           "wav", "audio/wav", "pcm_s16le", 2, 8000, "pcm_s16le"),
    Sample("ulaw.wav", (("sox", "{src}", "-r", "8000", "-c", "1", "-e", "u-law", "{out}"),),
           "wav", "audio/wav", "pcm_mulaw", 1, 8000, "pcm_mulaw"),
    Sample("alaw.wav", (("sox", "{src}", "-r", "8000", "-c", "1", "-e", "a-law", "{out}"),),
           "wav", "audio/wav", "pcm_alaw", 1, 8000, "pcm_alaw"),
    Sample("gsm.wav", (("sox", "{src}", "-r", "8000", "-c", "1", "-e", "gsm-full-rate", "{out}"),),
           "wav", "audio/wav", "gsm_ms", 1, 8000, "gsm_ms"),
    Sample("call.mp3", _ff("-i", "{src}", "-ac", "2", "-ar", "22050", "-c:a", "libmp3lame", "-b:a", "48k"),
           "mp3", "audio/mpeg", "mp3", 2, 22050, "mp3"),
    Sample("call.ogg", _ff("-i", "{src}", "-c:a", "libopus", "-b:a", "24k"),
           "ogg", "audio/ogg", "opus", 1, 48000, "opus"),
    Sample("call.aac", _ff("-i", "{src}", "-c:a", "aac", "-b:a", "32k", "-f", "adts"),
           "aac", "audio/aac", "aac", 1, 16000, "aac"),
    Sample("call.flac", _ff("-i", "{src}", "-c:a", "flac"), "flac", "audio/flac", "flac", 1, 16000, "flac"),
    # moov first, so a cut keeps a readable index and only the box walk and duration check can tell.
    Sample("call.m4a", _ff("-i", "{src}", "-c:a", "aac", "-b:a", "32k", "-movflags", "+faststart"),
           "mp4", "audio/mp4", "aac", 1, 16000, "aac"),
    Sample("video.mp4", _ff_av("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
                               "-c:a", "aac", "-b:a", "32k"),
           "mp4", "video/mp4", "h264", 1, 16000, "aac", (320, 240)),
    Sample("video.webm", _ff_av("-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "200k",
                                "-c:a", "libopus", "-b:a", "24k"),
           "webm", "video/webm", "vp9", 1, 48000, "opus", (320, 240)),
    # as a browser's MediaRecorder writes it: no Duration, unknown sizes — only FFmpeg's own reading can tell a cut
    Sample("live.webm", _ff_av("-c:v", "libvpx", "-deadline", "realtime", "-b:v", "200k", "-c:a", "libopus",
                               "-live", "1"),
           "webm", "video/webm", "vp8", 1, 48000, "opus", (320, 240)),
]


def _run(argv) -> None:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=120)
    if done.returncode:
        pytest.fail(f"{argv[0]} failed ({done.returncode}): {' '.join(argv)}\n{done.stderr[-2000:]}")


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.fail(f"media tests need {', '.join(missing)} on PATH: apt-get install -y espeak-ng sox ffmpeg",
                    pytrace=False)
    d = tmp_path_factory.mktemp("media")
    _run(["espeak-ng", "-w", str(d / "speech.wav"), SPEECH])
    # Exactly SECONDS long, 16 kHz mono: pad with silence, then trim.
    _run(["sox", str(d / "speech.wav"), "-r", "16000", "-c", "1", str(d / "src.wav"), "pad", "0", str(SECONDS),
          "trim", "0", str(SECONDS)])
    for sample in SAMPLES:
        for argv in sample.make:
            _run([a.format(src=d / "src.wav", out=d / sample.file) for a in argv])
    _run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "color=red:size=64x64:duration=0.04", "-frames:v",
          "1", str(d / "picture.png")])
    _run(["ffmpeg", "-v", "error", "-y", "-i", str(d / "src.wav"), "-c:a", "libvorbis", str(d / "vorbis.ogg")])
    _run(["ffmpeg", "-v", "error", "-y", "-i", str(d / "src.wav"), "-c:a", "libmp3lame", "-b:a", "32k",
          "-write_xing", "0", str(d / "no-xing.mp3")])
    return d


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s.file)
def test_probe_reports_codec_duration_channels_rate(media_dir, sample):
    info = probe(media_dir / sample.file)
    assert info.container == sample.container
    assert info.media_type == sample.media_type
    assert info.codec == sample.codec
    assert info.audio_codec == sample.audio_codec
    assert info.channels == sample.channels
    assert info.sample_rate == sample.sample_rate
    assert info.duration_s == pytest.approx(SECONDS, abs=TOLERANCE)
    assert info.kind == ("video" if sample.size else "audio")
    assert (info.width, info.height) == (sample.size or (None, None))
    assert info.bit_rate and info.bit_rate > 0 or sample.file == "live.webm"
    body = json.loads(json.dumps(info.to_json()))
    assert body["codec"] == sample.codec and body["duration_s"] == info.duration_s


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s.file)
def test_truncated_copy_is_corrupt(media_dir, tmp_path, sample):
    data = (media_dir / sample.file).read_bytes()
    cut = tmp_path / sample.file
    cut.write_bytes(data[: len(data) * 6 // 10])
    with pytest.raises(CorruptMedia) as e:
        probe(cut)
    assert e.value.details["file"] == sample.file
    assert sample.file in str(e.value)


def test_mp3_cut_mid_frame_without_a_duration_header_is_corrupt(media_dir, tmp_path):
    # Without a Xing/Info header FFmpeg estimates the duration from the file size, so only the length of
    # the last frame can tell. Of two cuts one byte apart at most one falls on a frame boundary.
    data = (media_dir / "no-xing.mp3").read_bytes()
    assert probe(media_dir / "no-xing.mp3").duration_s == pytest.approx(SECONDS, abs=TOLERANCE)
    refused = []
    for n in (len(data) * 6 // 10, len(data) * 6 // 10 + 1):
        cut = tmp_path / f"cut-{n}.mp3"
        cut.write_bytes(data[:n])
        try:
            probe(cut)
        except CorruptMedia as e:
            refused.append(str(e))
    assert refused and all("last mp3 frame" in r for r in refused)


def test_text_named_wav_is_not_what_it_claims(tmp_path):
    fake = tmp_path / "call.wav"
    fake.write_text("Agent: hello, this is a transcript, not a recording.\n" * 20)
    with pytest.raises(CorruptMedia, match=r"call\.wav.*wav"):
        probe(fake)


def test_png_named_mp3_is_refused(media_dir, tmp_path):
    fake = tmp_path / "call.mp3"
    shutil.copy(media_dir / "picture.png", fake)
    with pytest.raises((CorruptMedia, UnsupportedMedia)) as e:
        probe(fake)
    assert "call.mp3" in str(e.value) and "mp3" in e.value.details.get("expected", "mp3")


def test_empty_file_is_corrupt(tmp_path):
    empty = tmp_path / "call.wav"
    empty.touch()
    with pytest.raises(CorruptMedia, match="empty"):
        probe(empty)


def test_mp3_named_wav_names_claim_and_content(media_dir, tmp_path):
    fake = tmp_path / "call.wav"
    shutil.copy(media_dir / "call.mp3", fake)
    with pytest.raises(CorruptMedia) as e:
        probe(fake)
    assert e.value.details["expected"] == "wav" and e.value.details["found"] == "mp3"
    assert ".wav" in str(e.value) and "mp3" in str(e.value)


def test_claimed_extension_overrides_the_file_name(media_dir):
    with pytest.raises(CorruptMedia, match="mp3"):
        probe(media_dir / "pcm.wav", claimed_extension=".mp3")
    assert probe(media_dir / "call.flac", claimed_extension="FLAC").codec == "flac"


def test_video_in_an_audio_only_name_is_refused(media_dir, tmp_path):
    fake = tmp_path / "call.m4a"
    shutil.copy(media_dir / "video.mp4", fake)
    with pytest.raises(CorruptMedia, match="video"):
        probe(fake)


def test_real_media_of_a_format_not_taken_is_unsupported(media_dir):
    with pytest.raises(UnsupportedMedia, match="vorbis") as e:
        probe(media_dir / "vorbis.ogg")
    assert e.value.details["codec"] == "vorbis"
    with pytest.raises(UnsupportedMedia, match=r"\.aiff"):
        probe(media_dir / "pcm.wav", claimed_extension=".aiff")


def test_errors_carry_codes_and_statuses():
    assert issubclass(CorruptMedia, ArchiveError) and issubclass(UnsupportedMedia, ArchiveError)
    assert (CorruptMedia.code, CorruptMedia.exit_status, CorruptMedia.http_status) == ("corrupt_media", 2, 422)
    assert (UnsupportedMedia.code, UnsupportedMedia.exit_status, UnsupportedMedia.http_status) == (
        "unsupported_media", 2, 415)


def test_missing_library_says_how_to_install(media_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(MediaLibraryMissing, match="pip install"):
        probe(media_dir / "pcm.wav")


def test_five_minute_calls_probe_in_well_under_a_second(tmp_path):
    if shutil.which("sox") is None or shutil.which("ffmpeg") is None:
        pytest.fail("needs sox and ffmpeg: apt-get install -y espeak-ng sox ffmpeg", pytrace=False)
    wav, mp3 = tmp_path / "long.wav", tmp_path / "long.mp3"
    _run(["sox", "-n", "-r", "8000", "-c", "2", "-b", "16", str(wav), "synth", "300", "sine", "440", "sine", "660"])
    _run(["ffmpeg", "-v", "error", "-y", "-i", str(wav), "-c:a", "libmp3lame", "-b:a", "32k", str(mp3)])
    for path in (wav, mp3):
        probe(path)  # warm: the first call loads FFmpeg's libraries
        started = time.perf_counter()
        info = probe(path)
        elapsed = time.perf_counter() - started
        assert info.duration_s == pytest.approx(300, abs=0.25)  # FFmpeg 7 trims MP3 encoder padding, older ones do not
        assert elapsed < 1.0, f"{path.name} took {elapsed:.3f} s"
