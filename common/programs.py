"""Running external programs (filters, address verifiers) as E-MailRelay 2.6.1 does.

Programs run without a shell, with stdin and stderr redirected (stdin from /dev/null),
E-MailRelay's minimal environment (`PATH=/usr/bin:/bin` and `IFS=" \\t\\n"`, nothing else),
in a process group of their own, and with a timeout after which the whole group is killed.
The program's end is its exit, not the end of its output: a filter that leaves a
background child holding its stdout is done when it exits, and what it wrote by then is
its output. `parse_output` reads a filter's `<<...>>` / `[[...]]` lines as E-MailRelay
does. This module reads the programs' output only; what an exit code means is decided by
intake or deliver.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass

MINIMAL_ENVIRONMENT = {"PATH": "/usr/bin:/bin", "IFS": " \t\n"}
_MAX_OUTPUT = 64 * 1024
_READ_SIZE = 16 * 1024


@dataclass(frozen=True)
class ProgramResult:
    """How a program ended: its exit code (None when killed for the timeout) and output."""

    exit_code: int | None
    stdout: str
    stderr: str
    temporary: bool = False  # a built-in filter's local fault (spamd down): retry, never pass

    @property
    def timed_out(self) -> bool:
        return self.exit_code is None

    @property
    def lines(self) -> list[str]:
        return self.stdout.splitlines()


@dataclass(frozen=True)
class FilterOutput:
    """A filter's `<<...>>` lines: the response text, its SMTP code (0: none) and the reason.

    As E-MailRelay: only lines that start with `<<` (or `[[`) and hold the closing `>>`
    (`]]`) count; the first is the response, the second (if any) the reason that is
    logged and recorded but not shown to the client. A response that starts with a
    4xx/5xx code and a space is split into the code and the rest.
    """

    response: str
    code: int
    reason: str


def parse_output(stdout: str, default: str = "rejected") -> FilterOutput:
    """E-MailRelay's reading of a filter's standard output (pure)."""
    text = stdout.replace("\r\n", "\n").replace("\r", "\n")
    found: list[str] = []
    for line in text.split("\n"):
        for start, end in (("<<", ">>"), ("[[", "]]")):
            if line.startswith(start):
                close = line.find(end, len(start))
                if close >= 0:
                    found.append(printable_reply(line[len(start):close]))
                break
    response = found[0] if found and found[0] else default
    code = 0
    head = response[:3]
    if (len(head) == 3 and head[0] in "45" and head[1:].isdigit()
            and (len(response) == 3 or response[3] in " \t")):
        code = int(head)
        response = response[4:].strip()  # `<<554>>`: the code alone, `554 ` on the wire
    reason = found[1] if len(found) > 1 and found[1] else response
    return FilterOutput(response, code, reason)


def printable_reply(text: str) -> str:
    """Text safe to put in one SMTP reply line."""
    return "".join(c if c.isprintable() else " " for c in text).strip()[:400]


class _Collector:
    """Reads one pipe without blocking, keeping at most _MAX_OUTPUT bytes."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        self.loop, self.fd = loop, fd
        self.data = bytearray()
        os.set_blocking(fd, False)
        loop.add_reader(fd, self.drain)
        self.open = True

    def drain(self) -> None:
        """Read what the pipe holds now (called when readable, and once at the end)."""
        while self.open:
            try:
                chunk = os.read(self.fd, _READ_SIZE)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                self.close()
                return
            room = _MAX_OUTPUT - len(self.data)
            if room > 0:
                self.data += chunk[:room]

    def close(self) -> None:
        if self.open:
            self.open = False
            self.loop.remove_reader(self.fd)
            os.close(self.fd)

    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


async def run_program(argv: list[str], timeout: float) -> ProgramResult:
    """Run *argv* without a shell; kill it (and its process group) after *timeout* seconds."""
    loop = asyncio.get_running_loop()
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    for fd in (out_read, err_read):
        os.set_inheritable(fd, False)
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out_write,
            stderr=err_write,
            env=MINIMAL_ENVIRONMENT,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as error:
        for fd in (out_read, err_read):
            os.close(fd)
        return ProgramResult(127, "", f"cannot run {argv[0]}: {error.strerror}")
    finally:
        os.close(out_write)
        os.close(err_write)
    stdout, stderr = _Collector(loop, out_read), _Collector(loop, err_read)
    try:
        try:
            code = await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, 9)
            with contextlib.suppress(Exception):
                await process.wait()
            return ProgramResult(None, "", f"{argv[0]} timed out after {timeout:g}s")
        except BaseException:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, 9)
            raise
        # The program has exited: what it wrote is in the pipes now. A child it left
        # behind may hold them open; its later output is not the program's.
        stdout.drain()
        stderr.drain()
        return ProgramResult(code, stdout.text(), stderr.text())
    finally:
        stdout.close()
        stderr.close()
