#!/usr/bin/env python3
"""Make a realistic sample inbox for the demo: calls with real speech, chats, an email, one broken file.

    python scripts/make_samples.py OUT_DIR

* calls: scripted agent/customer dialogues spoken by espeak-ng (two voices), mixed by sox into 8 kHz
  stereo telephony recordings (agent left, customer right) — PCM WAV with a JSON sidecar, μ-law WAV with a
  SIPREC (RFC 7865) sidecar, MP3 made by ffmpeg — and a dual-recording (双录) sales session as MP4
  (ffmpeg test pattern + the spoken audio);
* chats: the platform-shaped transcripts in tests/fixtures/chats (Amazon Connect, Twilio Conversations,
  Zendesk, Intercom) and one in the archive's own format;
* email: one .eml from tests/fixtures/email;
* broken: a truncated WAV with a valid sidecar, which ingest must reject with its reason.

The same bytes every time (sox runs with ``-R``: its dither is seeded, not random), so a second demo run
finds every input archived already instead of new recordings of the same calls.

Needs Debian's espeak-ng, sox and ffmpeg.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"

DIALOGUES = [
    ("call-0001", "en", [
        ("agent", "Good morning, this is Wang Fang from Harbour Bank wealth services. This call is recorded."),
        ("customer", "Hello. I would like to ask about the ten year savings insurance plan."),
        ("agent", "Before we start, please note this product is not a deposit and the return is not guaranteed."),
        ("customer", "I understand. What is the surrender penalty in the first two years?"),
        ("agent", "If you cancel in the first two years you may get back less than you paid in."),
    ]),
    ("call-0002", "en", [
        ("agent", "Thank you for calling card services, my name is David, how can I help?"),
        ("customer", "I was charged twice for the same purchase and I want a refund."),
        ("agent", "I am sorry about that. I have raised a dispute and you will hear from us in five days."),
    ]),
    ("call-0003", "zh", [
        ("agent", "您好，我是平安银行理财经理王芳，本次通话将被录音。"),
        ("customer", "你好，我想了解一下这款理财产品。"),
        ("agent", "请注意，本产品不是存款，不保证收益，投资有风险。"),
    ]),
]


def run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def speak_dialogue(lines: list[tuple[str, str]], language: str, out: Path, work: Path) -> None:
    """Each line spoken by its speaker's voice, placed on that speaker's channel, one after another."""
    voice = {"en": "en", "zh": "cmn"}[language]
    voices = {"agent": f"{voice}+f3", "customer": f"{voice}+m3"}
    pieces = []
    for i, (who, text) in enumerate(lines):
        mono = work / f"{i}.wav"
        run("espeak-ng", "-v", voices[who], "-s", "150", "-w", str(mono), text)
        stereo = work / f"{i}-st.wav"
        remix = "1 0" if who == "agent" else "0 1"  # agent left, customer right
        run("sox", "-R", str(mono), "-r", "8000", "-b", "16", str(stereo), "remix", *remix.split(), "pad", "0", "0.4")
        pieces.append(str(stereo))
    run("sox", "-R", *pieces, str(out))


def sidecar(interaction: str, started: str, agent: tuple[str, str], customer: dict, **extra) -> dict:
    return {"source": {"system": "demo-recorder", "interaction_id": interaction}, "channel": "phone",
            "direction": "inbound", "started_at": started,
            "participants": [{"role": "agent", "id": agent[0], "name": agent[1]}, {"role": "customer", **customer}],
            **extra}


SIPREC = """<?xml version="1.0" encoding="UTF-8"?>
<recording xmlns="urn:ietf:params:xml:ns:recording:1">
  <datamode>complete</datamode>
  <group group_id="7+OTCyoxTmqmqyA/1weDAg==">
    <associate-time>2024-05-07T09:12:00Z</associate-time>
  </group>
  <session session_id="hVpd7YQgRW2nD22h7q60JQ==">
    <sipSessionID>ab30317f1a784dc48ff824d0d3715d86;remote=47755a9de7794ba387653f2099600ef2</sipSessionID>
    <group-ref>7+OTCyoxTmqmqyA/1weDAg==</group-ref>
    <start-time>2024-05-07T09:12:00Z</start-time>
  </session>
  <participant participant_id="srfBElmCRp2QB23b7Mpk0w==">
    <nameID aor="sip:+8613912345678@carrier.example.cn"><name xml:lang="zh">李雷</name></nameID>
  </participant>
  <participant participant_id="zSfPoSvdSDCmU3A3TRDxAw==">
    <nameID aor="sip:2001@callcenter.example.com"><name xml:lang="zh">王芳</name></nameID>
  </participant>
  <participantsessionassoc participant_id="srfBElmCRp2QB23b7Mpk0w==" session_id="hVpd7YQgRW2nD22h7q60JQ==">
    <associate-time>2024-05-07T09:12:00Z</associate-time>
  </participantsessionassoc>
  <participantsessionassoc participant_id="zSfPoSvdSDCmU3A3TRDxAw==" session_id="hVpd7YQgRW2nD22h7q60JQ==">
    <associate-time>2024-05-07T09:12:00Z</associate-time>
  </participantsessionassoc>
</recording>
"""


def main(out: Path) -> None:
    for tool in ("espeak-ng", "sox", "ffmpeg"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: apt-get install -y espeak-ng sox ffmpeg")
    calls, chats, mail, broken = (out / d for d in ("calls", "chats", "email", "broken"))
    for d in (calls, chats, mail, broken):
        d.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        speak_dialogue(DIALOGUES[0][2], "en", calls / "call-0001.wav", work)
        (calls / "call-0001.json").write_text(json.dumps(sidecar(
            "call-0001", "2024-05-06T10:30:00+08:00", ("1042", "Wang Fang"),
            {"id": "C-88231", "name": "Chen Jie", "phone": "+8613800138000", "account": "6222020200001234", "age": 63},
            business_line="bancassurance", product="Harbour Life 10Y Savings", product_type="life",
            contract_id="HL-2024-0001", contract_term="P10Y", jurisdiction="CN", language="en",
            tags=["outbound-campaign-q2"]), indent=1))

        speak_dialogue(DIALOGUES[1][2], "en", work / "c2.wav", work)
        run("ffmpeg", "-y", "-i", str(work / "c2.wav"), "-codec:a", "libmp3lame", "-b:a", "32k", str(calls / "call-0002.mp3"))
        (calls / "call-0002.json").write_text(json.dumps(sidecar(
            "call-0002", "2024-05-06T14:02:10-04:00", ("2207", "David Miller"),
            {"id": "C-10077", "name": "Maria Lopez", "phone": "+12125550147", "account": "4000-1234"},
            business_line="cards", jurisdiction="US-NY", language="en-US"), indent=1))

        speak_dialogue(DIALOGUES[2][2], "zh", work / "c3.wav", work)
        run("sox", "-R", str(work / "c3.wav"), "-e", "u-law", str(calls / "call-0003.wav"))
        (calls / "call-0003.xml").write_text(SIPREC)

        run("ffmpeg", "-y", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=15", "-i", str(calls / "call-0001.wav"),
            "-shortest", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac",
            str(calls / "dual-0004.mp4"))
        dual = sidecar("dual-0004", "2024-05-07T15:00:00+08:00", ("1042", "Wang Fang"),
                       {"id": "C-90210", "name": "Zhang Wei", "phone": "+8613700001111", "age": 67},
                       business_line="bancassurance", product="Harbour Unit-Linked 5Y", product_type="unit-linked",
                       contract_id="HU-2024-0004", contract_term="P5Y", jurisdiction="CN", language="en")
        dual["channel"] = "video"
        (calls / "dual-0004.json").write_text(json.dumps(dual, indent=1))
        # the session's transcript (what the recorder's speech-to-text produced): the risk disclosure is
        # there, the cooling-off period is not — a finding an auditor can search for
        (calls / "dual-0004.txt").write_text("\n".join(f"{who}: {text}" for who, text in DIALOGUES[0][2]) + "\n")

        wav = (calls / "call-0001.wav").read_bytes()
        (broken / "call-0009.wav").write_bytes(wav[: len(wav) * 6 // 10])
        (broken / "call-0009.json").write_text(json.dumps(sidecar(
            "call-0009", "2024-05-08T08:00:00+08:00", ("1042", "Wang Fang"), {"id": "C-1"})))

    for src in sorted((FIXTURES / "chats").glob("*.json")):
        shutil.copy(src, chats / src.name)
    (chats / "webchat-0001.json").write_text(json.dumps({
        "schema": "archive-record/1", "source": {"system": "webchat", "interaction_id": "wc-0001"},
        "channel": "chat", "started_at": "2024-05-06T11:00:00+08:00", "ended_at": "2024-05-06T11:04:00+08:00",
        "participants": [{"role": "customer", "id": "C-88231", "name": "Chen Jie", "account": "6222020200001234"},
                         {"role": "agent", "id": "1042", "name": "Wang Fang"}],
        "messages": [{"at": "2024-05-06T11:00:00+08:00", "from": "C-88231", "text": "Is the 10Y plan a deposit?"},
                     {"at": "2024-05-06T11:01:30+08:00", "from": "1042",
                      "text": "No. It is an insurance product, not a deposit, and returns are not guaranteed."}],
        "language": "en", "business_line": "bancassurance"}, indent=1))
    emails = sorted((FIXTURES / "email").glob("*.eml"))
    if emails:
        shutil.copy(emails[0], mail / emails[0].name)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
