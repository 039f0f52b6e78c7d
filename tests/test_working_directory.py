"""relay's programs started from a working directory that holds folders named like relay's
packages (spool, intake, deliver, tools, common), each an `__init__.py` that raises: a
program, or a child it starts (intake's storage process and filters, deliver's workers and
client filters), that imported from the working directory would fail (issue 13 item 5).
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
from support.intake import IntakeProcess
from support.programs import DELIVER, program_env, run_tool
from support.sink import Sink

PACKAGES = ("spool", "intake", "deliver", "tools", "common")
MESSAGE = b"Subject: from a decoy directory\r\n\r\nhello\r\n"


@pytest.fixture
def decoy(tmp_path: Path) -> Path:
    """A working directory whose package-named folders raise ImportError when imported."""
    work = tmp_path / "work"
    for name in PACKAGES:
        (work / name).mkdir(parents=True)
        (work / name / "__init__.py").write_text(
            f"raise ImportError('{name} was imported from the working directory')\n")
    return work


def filter_script(tmp_path: Path) -> Path:
    """A filter that accepts (exit 0); run by intake and by deliver."""
    path = tmp_path / "accept-filter"
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def test_every_program_runs_from_a_directory_of_decoy_packages(
        decoy: Path, spool_dir: Path, tmp_path: Path, sink: Sink) -> None:
    """From the decoy directory: relay-intake (with a filter) and relay-submit store a
    message each, relay-deliver --once --processes 2 with a client filter sends both, and
    the queue tools run; no program logs an ImportError."""
    accept = str(filter_script(tmp_path))
    with IntakeProcess(spool_dir, "--filter", accept, cwd=decoy) as intake:
        with intake.smtp() as client:
            client.sendmail("a@example.org", ["by-intake@example.com"], MESSAGE)
        log = intake.finish(signal.SIGTERM)
    assert "ImportError" not in log
    submitted = run_tool("relay-submit", "--spool-dir", str(spool_dir), "-f", "a@example.org",
                         "by-submit@example.com", stdin=MESSAGE, cwd=decoy)
    assert submitted.returncode == 0, submitted.stderr
    listed = run_tool("relay-queue", "--spool-dir", str(spool_dir), "list", cwd=decoy)
    assert listed.returncode == 0 and listed.stdout.count(b"@example.com") == 2, listed
    delivered = subprocess.run(
        [DELIVER, "--once", "--spool-dir", str(spool_dir), "--forward-to", sink.address,
         "--processes", "2", "--client-filter", accept, "--log-format", "json"],
        capture_output=True, text=True, timeout=60, env=program_env(), cwd=decoy)
    assert delivered.returncode == 0, delivered.stderr
    assert "ImportError" not in delivered.stderr
    assert sorted(m.rcpt_tos[0] for m in sink.messages) == [
        "by-intake@example.com", "by-submit@example.com"]
    for tool in ("relay-resubmit", "relay-notify"):
        ran = run_tool(tool, "--spool-dir", str(spool_dir), cwd=decoy)
        assert ran.returncode == 0 and b"ImportError" not in ran.stderr, (tool, ran)
