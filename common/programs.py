"""Running external programs (filters, address verifiers) as E-MailRelay does.

Programs run without a shell, with stdin from /dev/null, a minimal environment
(`PATH=/usr/bin:/bin`) and a timeout after which they are killed. This module reads the
program's output only; what an exit code means is decided by intake or deliver.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from dataclasses import dataclass

MINIMAL_ENVIRONMENT = {"PATH": "/usr/bin:/bin"}
_REPLY = re.compile(r"<<(.*?)>>|\[\[(.*?)\]\]")
_MAX_OUTPUT = 64 * 1024


@dataclass(frozen=True)
class ProgramResult:
    """How a program ended: its exit code (None when killed for the timeout) and output."""

    exit_code: int | None
    stdout: str
    stderr: str

    @property
    def timed_out(self) -> bool:
        return self.exit_code is None

    @property
    def lines(self) -> list[str]:
        return self.stdout.splitlines()

    def reply(self, default_code: int = 452) -> tuple[int, str]:
        """The SMTP reply a filter asked for: first stdout line with `<<...>>` or `[[...]]`.

        A leading 4xx/5xx in the text is the code; otherwise *default_code*.
        """
        for line in self.lines:
            match = _REPLY.search(line)
            if match:
                text = (match.group(1) if match.group(1) is not None else match.group(2)).strip()
                head, _, rest = text.partition(" ")
                if len(head) == 3 and head.isdigit() and head[0] in "45":
                    return int(head), printable_reply(rest) or "rejected"
                return default_code, printable_reply(text) or "rejected"
        return default_code, "rejected"


def printable_reply(text: str) -> str:
    """Text safe to put in one SMTP reply line."""
    return "".join(c if c.isprintable() else " " for c in text).strip()[:400]


async def run_program(argv: list[str], timeout: float) -> ProgramResult:
    """Run *argv* without a shell; kill it (and its process group) after *timeout* seconds."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=MINIMAL_ENVIRONMENT,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as error:
        return ProgramResult(127, "", f"cannot run {argv[0]}: {error.strerror}")
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 9)
        with contextlib.suppress(Exception):
            await process.wait()
        return ProgramResult(None, "", f"{argv[0]} timed out after {timeout:g}s")
    code = process.returncode if process.returncode is not None else -1
    return ProgramResult(
        code,
        stdout[:_MAX_OUTPUT].decode("utf-8", "replace"),
        stderr[:_MAX_OUTPUT].decode("utf-8", "replace"),
    )
