"""relay's console scripts as subprocesses: where they are, the environment they get
(the virtualenv's bin first, no stray RELAY_* settings), and `relay-deliver --once`.

Reads nothing and writes nothing itself; the programs it starts work on the spool they
are given.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
INTAKE = str(BIN / "relay-intake")
DELIVER = str(BIN / "relay-deliver")


def program_env(**extra: str) -> dict[str, str]:
    """The environment for relay programs: the venv's bin first, no stray RELAY_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env["PATH"] = f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    env.update(extra)
    return env


def deliver_once(spool_dir: Path, forward_to: str, *args: str,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`relay-deliver --once` (the console script) with short timeouts and JSON logs."""
    command = [DELIVER, "--once", "--spool-dir", str(spool_dir), "--forward-to", forward_to,
               "--retry-first", "30", "--connection-timeout", "3", "--response-timeout", "3",
               "--data-timeout", "5", "--content-grace", "0", "--log-format", "json", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60,
                          env=program_env(**(env or {})))


def run_tool(name: str, *args: str, env: dict[str, str] | None = None,
             stdin: bytes | None = None, cwd: Path | None = None,
             timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
    """Run a console script (`relay-resubmit` ...) from the virtualenv as a subprocess."""
    return subprocess.run([str(BIN / name), *args], input=stdin, capture_output=True,
                          env=program_env(**(env or {})), cwd=cwd, timeout=timeout,
                          check=False)
