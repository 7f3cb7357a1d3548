"""The README's main job, ``scripts/demo``, as a newcomer runs it: on a fresh archive, and again on the
same one (the second run finds every input archived already, and replaces the demo's own outputs)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _demo(tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIVE_")}
    env.update(ARCHIVE_HOME=str(tmp_path / "home"), ARCHIVE_DEMO_DIR=str(tmp_path / "demo"))
    done = subprocess.run([str(ROOT / "scripts" / "demo")], env=env, capture_output=True, text=True, timeout=600)
    runs = len(list(tmp_path.glob("demo-*.log")))
    (tmp_path / f"demo-{runs + 1}.log").write_text(done.stdout + done.stderr)  # (whole, for a failure)
    return done


def test_the_demo_runs_on_a_fresh_archive_and_again_on_the_same_one(tmp_path):
    first = _demo(tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "byte-exact:" in first.stdout and "UNEXPECTED" not in first.stdout
    assert (tmp_path / "demo" / "case-2024-17.zip").stat().st_size > 0
    again = _demo(tmp_path)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    # the samples are made again, byte for byte: both of its ingests find nothing new
    assert again.stdout.count("archived 0, duplicate") == 2, again.stdout[-3000:]
    assert "byte-exact:" in again.stdout
