"""`spam:` and `spam-edit:` filters: SpamAssassin's spamd, as E-MailRelay 2.6.1 asks it.

One connection per message: `PROCESS SPAMC/1.4` with the content file, then spamd's
`SPAMD/1.x 0 EX_OK` status line, its headers (`Spam: True ; 6.2 / 5.0`,
`Content-length: N`) and the processed message. `spam:` refuses a message that spamd
calls spam and leaves the file alone; `spam-edit:` always passes the message and replaces
the content file with spamd's version (written beside it as `.spamd`, then renamed over
it). A spamd that cannot be reached, answers badly or too late is a temporary failure:
the message is refused with 452 at intake, or kept for a retry by deliver, never passed
unscanned. Reads the content file; writes it only for `spam-edit:`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

from common.netclient import parse_address
from common.programs import ProgramResult

_MAX_HEADER = 64 * 1024


class SpamdError(Exception):
    """spamd could not be asked or answered badly."""


def _fault(reason: str) -> ProgramResult:
    text = " ".join(reason.replace(">>", "> >").split())
    return ProgramResult(1, f"<<rejected>>\n<<spamd: {text}>>\n", "", temporary=True)


async def spamd_check(address: str, content_path: str, *, edit: bool, timeout: float,
                      connect_timeout: float) -> ProgramResult:
    """Ask spamd about the message in *content_path* (see the module docstring)."""
    try:
        with open(content_path, "rb") as file:
            content = file.read()
    except OSError as error:
        return _fault(f"cannot read the content file: {error.strerror}")
    try:
        verdict, body = await asyncio.wait_for(_ask(address, content, connect_timeout),
                                               timeout)
    except TimeoutError:
        return _fault(f"no answer within {timeout:g}s")
    except (OSError, SpamdError, asyncio.IncompleteReadError, ValueError) as error:
        return _fault(str(error) or type(error).__name__)
    if edit:
        temporary = content_path + ".spamd"
        try:
            with open(temporary, "wb") as file:
                file.write(body)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, content_path)
        except OSError as error:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            return _fault(f"cannot write the edited content: {error.strerror}")
        return ProgramResult(0, "", "")
    if verdict and not verdict.lower().startswith("false"):
        return ProgramResult(1, f"<<rejected>>\n<<spam: {verdict}>>\n", "")
    return ProgramResult(0, "", "")


async def _ask(address: str, content: bytes, connect_timeout: float) -> tuple[str, bytes]:
    target = parse_address(address)
    if isinstance(target, str):
        opening = asyncio.open_unix_connection(target, limit=_MAX_HEADER)
    else:
        opening = asyncio.open_connection(*target, limit=_MAX_HEADER)
    try:
        reader, writer = await asyncio.wait_for(opening, connect_timeout)
    except TimeoutError:
        raise SpamdError(f"cannot connect to {address}: timed out") from None
    except OSError as error:
        raise SpamdError(f"cannot connect to {address}: {error.strerror or error}") from None
    try:
        writer.write(b"PROCESS SPAMC/1.4\r\nContent-length: %d\r\n\r\n" % len(content))
        writer.write(content)
        await writer.drain()
        status = (await reader.readline()).decode("latin-1").strip()
        words = status.split()
        if not status.startswith("SPAMD/") or len(words) < 2 or words[1] != "0":
            raise SpamdError(f"invalid response: {status[:200]!r}")
        verdict = ""
        length: int | None = None
        while True:
            line = (await reader.readline()).decode("latin-1")
            if not line:
                raise SpamdError("connection closed in the response headers")
            line = line.rstrip("\r\n")
            if not line:
                break
            if line.startswith("Spam:"):
                verdict = line[5:].strip()
            elif line[:15].lower() == "content-length:":
                value = line[15:].strip()
                if not value.isdigit():
                    raise SpamdError(f"invalid Content-length: {value[:40]!r}")
                length = int(value)
        if not length:
            raise SpamdError("invalid response headers (no Content-length)")
        body = await reader.readexactly(length)
        return verdict, body
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
