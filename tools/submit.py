"""relay-submit: a sendmail-compatible injector that stores a message from stdin in the spool.

    relay-submit [-t] [-f SENDER] [-F NAME] [-i|-oi] [--spool-dir D] [recipient ...]

Reads a message on stdin (in chunks; the body is never held in memory whole), converts
its line ends to CRLF, adds Date, Message-ID and From when they are missing, removes Bcc,
and stores it with `spool.MessageWriter` + `Spool.commit` (content and envelope fsynced,
committed by rename, directory fsynced) so that deliver forwards it. Without -i/-oi a
line holding a single "." ends the input, as with sendmail. Bare CR and NUL bytes inside
a line are kept as they are: message bytes are opaque.

The other flags programs pass to sendmail (-oXXX, -odi, -oem, -bm, -v, -N, -R, -V, -X,
-B, -C, -L, -h, -O, -U, -G ...) are accepted and ignored: in particular -oQ, -C and -X
never make relay-submit read or write anything outside the spool. emailrelay-submit's long
switches (--from, --to, --input-file, --content, --body, --content-to, --verbose, ...) work
as there; its letters are sendmail's here (both use -t, -F, -i, -b for other things).
Modes it does not implement (-bs, -bp, -bd, -q, ...) exit 64. Writes only new files in the spool.
Exit 0; 64 usage (no recipients, bad address), 65 bad input addresses, 73 spool not
writable, 75 temporary failure (disk full, I/O error), 78 unusable spool directory.
"""

from __future__ import annotations

import base64
import binascii
import errno
import getopt
import io
import itertools
import os
import pwd
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from email.utils import formataddr, formatdate, getaddresses, make_msgid
from pathlib import Path
from typing import BinaryIO, cast

from common.config import SPOOL_DIR_OPTION, ConfigError, Option, load_settings, version
from spool import Envelope, SpoolError
from spool.store import MessageWriter, Spool
from tools.common import fail, local_domain
from tools.queue import mailq_lines

PROGRAM = "relay-submit"
DESCRIPTION = "sendmail-compatible injector"
EX_DATAERR = os.EX_DATAERR  # 65

# sendmail's (and Postfix's sendmail's) short options; ':' marks those taking a value.
SHORT_OPTIONS = "46A:B:b:C:cd:e:F:f:GIh:iL:mN:nO:o:p:R:r:stUV:vX:x"
SUPPORTED_MODES = ("m", "p")  # -bm: read a message and deliver it (the default); -bp: mailq
LONG_OPTIONS = ["spool-dir=", "config=", "domain=", "help", "version",
                # emailrelay-submit's long switches (its letters are sendmail's here)
                "from=", "to=", "input-file=", "verbose", "filename", "no-stdin", "content=",
                "body", "content-date", "content-message-id=", "content-to", "content-from",
                "auth=", "from-auth-in=", "from-auth-out=", "bcc-split", "copy"]
_REFUSED = {
    "-I": "-I (newaliases) is not supported",
    "--bcc-split": "--bcc-split is not in relay-submit yet (Bcc is removed; one message "
                   "goes to every recipient)",
    "--copy": "--copy: relay has one spool directory (no sub-directories to copy to)",
}
# The flags and switches that set one Request field: to True, or to their value
# (tests/test_tools_submit.py checks that each names a field of that type).
_SETS_TRUE = {
    "-t": "extract_recipients", "-i": "ignore_dots", "--help": "help", "--version": "version",
    "--no-stdin": "no_stdin", "--body": "body_only", "--content-to": "content_to",
    "--content-from": "content_from", "--verbose": "print_path", "--filename": "print_name",
}
_SETS_VALUE = {
    "-f": "sender", "-r": "sender", "-F": "full_name", "--from": "sender",
    "--input-file": "input_file", "--auth": "authentication", "--from-auth-in": "from_auth_in",
    "--from-auth-out": "from_auth_out",
}

SETTINGS = (
    SPOOL_DIR_OPTION,
    Option("domain", "domain for the default sender and Message-ID (default: host name)", None,
           metavar="DOMAIN"),
)

USAGE = f"""usage: {PROGRAM} [-t] [-i|-oi] [-f SENDER] [-F NAME] [--spool-dir DIR] \
[--domain DOMAIN] [--config FILE] [recipient ...]

Reads a message on stdin and stores it in relay's spool, like sendmail.
  -t              take recipients from To, Cc and Bcc as well (Bcc is removed)
  -i, -oi         a line with a single "." does not end the input
  -f SENDER       envelope sender (also -r); -f '<>' for a null sender
  -F NAME         full name for a From header that relay-submit adds
  --spool-dir DIR the spool directory [env RELAY_SPOOL_DIR]
  --domain NAME   domain for the default sender and Message-ID [env RELAY_DOMAIN]
  --config FILE   shared config file, section [submit] [env RELAY_CONFIG]
  -bp             print the queue in sendmail's format instead (what mailq prints)
Other sendmail flags (-oXXX, -odi, -bm, -v, -N, -R, -V, -X, -C, -B, -L, -h, -O, -U, -G)
are accepted and ignored.
emailrelay-submit's long switches: --from ADDR, --to ADDR, --input-file FILE, --no-stdin,
--content BASE64 (a line), --body (no header section in the input), --content-to,
--content-from, --content-date, --content-message-id[=DOMAIN], --auth NAME,
--from-auth-in NAME, --from-auth-out NAME, --verbose (print the content file's path),
--filename (its name), --version.
"""

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HEADER_START = re.compile(rb"^[!-9;-~]+[ \t]*:")
_MAX_LINE_PIECE = 1 << 20  # a longer line is passed on in pieces
_MAX_HEADER_BYTES = 1 << 20
_CHUNK = 1 << 16


class UsageError(Exception):
    """A bad command line or address: exit 64 (or the code given)."""

    def __init__(self, message: str, code: int = os.EX_USAGE) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Request:
    """What the command line asked for."""

    extract_recipients: bool = False
    ignore_dots: bool = False
    sender: str | None = None
    full_name: str | None = None
    recipients: list[str] = field(default_factory=list)
    settings_argv: list[str] = field(default_factory=list)
    help: bool = False
    list_queue: bool = False  # -bp: print the queue (mailq) instead of reading a message
    version: bool = False
    # emailrelay-submit's switches
    input_file: str | None = None
    no_stdin: bool = False
    content_lines: list[bytes] = field(default_factory=list)
    body_only: bool = False
    message_id_domain: str | None = None
    content_to: bool = False
    content_from: bool = False
    authentication: str | None = None
    from_auth_in: str = ""
    from_auth_out: str = ""
    print_path: bool = False
    print_name: bool = False


def parse_command_line(argv: Sequence[str]) -> Request:
    """sendmail's flags, getopt style (`-ti`, `-fme@x`, `-f me@x`, `-oi`), plus long options."""
    for arg in argv:
        if arg == "--":
            break
        if arg.startswith("-q"):
            raise UsageError("queue runs (-q) are relay-deliver's job")
    # --content-message-id takes its domain optionally: getopt wants a value.
    argv = [f"{arg}=" if arg == "--content-message-id" else arg for arg in argv]
    try:
        options, arguments = getopt.gnu_getopt(list(argv), SHORT_OPTIONS, LONG_OPTIONS)
    except getopt.GetoptError as error:
        raise UsageError(str(error)) from None
    request = Request(recipients=list(arguments))
    for flag, value in options:
        if flag in _SETS_TRUE:
            setattr(request, _SETS_TRUE[flag], True)
        elif flag in _SETS_VALUE:
            setattr(request, _SETS_VALUE[flag], value)
        elif flag in _REFUSED:
            raise UsageError(_REFUSED[flag])
        elif flag == "-o" and value == "i":
            request.ignore_dots = True
        elif flag == "-b":
            if value not in SUPPORTED_MODES:
                raise UsageError(f"-b{value} is not supported (only -bm and -bp)")
            request.list_queue = value == "p"
        elif flag in ("--spool-dir", "--config", "--domain"):
            request.settings_argv += [flag, value]
        elif flag == "--to":
            request.recipients.append(value)
        elif flag == "--content":
            try:
                request.content_lines.append(base64.b64decode(value, validate=True))
            except binascii.Error:
                raise UsageError(f"--content: not base64: {value!r}") from None
        elif flag == "--content-message-id":
            request.message_id_domain = value or None
        # Everything else (-o..., -v, -N, -R, -V, -X, -C, -B, -L, -h, -O, -U, -G, -A, -d,
        # -e, -p, -c, -m, -n, -s, -x, -4, -6; --content-date: a Date field is added
        # whenever there is none, as it always is) is accepted and deliberately ignored.
    return request


def login_name() -> str:
    """The invoking user's login name (for the default sender and Authentication)."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return os.environ.get("LOGNAME") or os.environ.get("USER") or f"uid{os.getuid()}"


def clean_address(address: str, what: str, domain: str, code: int = os.EX_USAGE) -> str:
    """An address as the envelope stores it: no brackets, qualified, no control characters."""
    if _CONTROL.search(address):
        raise UsageError(f"{what} contains a control character: {address!r}", code)
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1].strip()
    if "\ufffd" in address:
        raise UsageError(f"{what} is not valid UTF-8: {address!r}", code)
    if address and "@" not in address:
        address = f"{address}@{domain}"
    return address


# -- reading the input -------------------------------------------------------------------


def input_lines(stream: BinaryIO) -> Iterator[tuple[bytes, bool]]:
    """(line without its end, complete) pairs; a very long line comes in incomplete pieces.

    A line ends at LF; a CR right before the LF belongs to the line end. The last line
    needs no LF. Bare CRs and NULs stay in the line.
    """
    pending = b""
    while chunk := stream.read(_CHUNK):
        pending += chunk
        start = 0
        while (end := pending.find(b"\n", start)) >= 0:
            line = pending[start:end]
            yield (line[:-1] if line.endswith(b"\r") else line), True
            start = end + 1
        pending = pending[start:]
        if len(pending) > _MAX_LINE_PIECE:
            # Keep a trailing CR: it may be the first half of a CRLF in the next chunk.
            cut = len(pending) - 1 if pending.endswith(b"\r") else len(pending)
            yield pending[:cut], False
            pending = pending[cut:]
    if pending:
        yield (pending[:-1] if pending.endswith(b"\r") else pending), True


@dataclass
class HeaderSection:
    """The header fields read from stdin: each a list of its (unfolded) physical lines."""

    fields: list[list[bytes]] = field(default_factory=list)

    def names(self) -> set[str]:
        return {name_of(item) for item in self.fields}

    def values(self, name: str) -> list[str]:
        found = []
        for item in self.fields:
            if name_of(item) == name:
                raw = b" ".join(line.strip() for line in item)
                found.append(raw.split(b":", 1)[1].decode("utf-8", errors="replace").strip())
        return found

    def without(self, name: str) -> list[list[bytes]]:
        return [item for item in self.fields if name_of(item) != name]


def name_of(header: list[bytes]) -> str:
    return header[0].split(b":", 1)[0].strip().decode("ascii", errors="replace").lower()


@dataclass
class ReadState:
    """Where reading the input stopped: the first body line(s) already taken."""

    headers: HeaderSection
    first_body: list[tuple[bytes, bool]]
    separator_seen: bool
    ended_by_dot: bool


def read_headers(lines: Iterator[tuple[bytes, bool]], ignore_dots: bool) -> ReadState:
    """Read the header section: it ends at an empty line or at the first non-header line."""
    headers = HeaderSection()
    size = 0
    first = True
    for line, complete in lines:
        if complete and not ignore_dots and line == b".":
            return ReadState(headers, [], False, True)
        if first and complete and line.startswith(b"From "):
            first = False
            continue  # an mbox separator, not a header field (sendmail drops it too)
        first = False
        if complete and line == b"":
            return ReadState(headers, [], True, False)
        size += len(line)
        if complete and size <= _MAX_HEADER_BYTES:
            if line[:1] in (b" ", b"\t") and headers.fields:
                headers.fields[-1].append(line)
                continue
            if _HEADER_START.match(line):
                headers.fields.append([line])
                continue
        return ReadState(headers, [(line, complete)], False, False)
    return ReadState(headers, [], False, False)


# -- the program -------------------------------------------------------------------------


def recipients_from_headers(headers: HeaderSection) -> list[str]:
    values = headers.values("to") + headers.values("cc") + headers.values("bcc")
    return [address for _name, address in getaddresses(values) if address]


def unique(addresses: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    result = []
    for address in addresses:
        if address.lower() not in seen:
            seen.add(address.lower())
            result.append(address)
    return result


def added_headers(
    headers: HeaderSection, request: Request, *, sender: str, domain: str, user: str,
    writer_id: str, recipients: Sequence[str] = (),
) -> list[bytes]:
    """Received (always), and Date, Message-ID, From when the message lacks them (To and From
    in place of the message's own with --content-to and --content-from)."""
    now = formatdate(localtime=True)
    lines = [f"Received: by {domain} (relay-submit, from user {user}) id {writer_id}; {now}"]
    names = headers.names()
    if request.content_to:
        lines.append("To: " + ", ".join(recipients))
    if request.content_from:
        lines.append(f"From: {sender}")
    elif "from" not in names:
        address = sender or f"{user}@{domain}"
        name = request.full_name or ""
        lines.append("From: " + (formataddr((name, address)) if name else address))
    if "date" not in names:
        lines.append(f"Date: {now}")
    if "message-id" not in names:
        lines.append("Message-ID: "
                     + make_msgid("relay-submit", domain=request.message_id_domain or domain))
    return [line.encode("utf-8") for line in lines]


def writable_spool(directory: str) -> Spool:
    """The spool, distinguishing 'cannot create files there' (73) from 'unusable' (78)."""
    path = Path(os.path.expanduser(directory))
    if path.is_dir() and not path.is_symlink() and not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"spool directory {path} is not writable by this user",
                         os.EX_CANTCREAT)
    return Spool(path)


def store(spool: Spool, request: Request, domain: str, stdin: BinaryIO) -> str:
    """Read the message from *stdin* and commit it to *spool*; returns its id."""
    user = login_name()
    if request.full_name is not None and _CONTROL.search(request.full_name):
        raise UsageError("-F name contains a control character")
    if request.sender is None:
        sender = f"{user}@{domain}"
    else:
        sender = clean_address(request.sender, "sender", domain)
    lines = input_lines(_input(request, stdin))
    if request.body_only:
        state = ReadState(HeaderSection(), [], True, False)
    else:
        state = read_headers(lines, request.ignore_dots)
    recipients = [clean_address(r, "recipient", domain) for r in request.recipients]
    if request.extract_recipients:
        recipients += [
            clean_address(r, "recipient in the headers", domain, EX_DATAERR)
            for r in recipients_from_headers(state.headers)
        ]
    recipients = unique([r for r in recipients if r])
    if not recipients:
        raise UsageError("no recipients (give them as arguments, or use -t)")

    writer = MessageWriter(spool)
    try:
        eight_bit = False

        def write(data: bytes) -> None:
            nonlocal eight_bit
            eight_bit = eight_bit or not data.isascii()
            writer.write(data)

        for line in added_headers(state.headers, request, sender=sender, domain=domain,
                                  user=user, writer_id=writer.message_id,
                                  recipients=recipients):
            write(line + b"\r\n")
        dropped = {"bcc"}
        dropped |= {"to", "cc"} if request.content_to else set()
        dropped |= {"from", "sender"} if request.content_from else set()
        for item in state.headers.fields:
            if name_of(item) not in dropped:
                write(b"".join(line + b"\r\n" for line in item))
        write(b"\r\n")
        if not state.ended_by_dot:
            _copy_body(state.first_body, lines, request.ignore_dots, write)
        envelope = Envelope(
            sender=sender,
            to_remote=tuple(recipients),
            body_type="8bit" if eight_bit else "7bit",
            authentication=user if request.authentication is None else request.authentication,
            client="127.0.0.1",
            mail_from_auth_in=request.from_auth_in,
            mail_from_auth_out=request.from_auth_out,
            utf8_mailbox_names=not all(a.isascii() for a in (sender, *recipients)),
        )
        pending = writer.finish(envelope)
    except BaseException:
        writer.abort()
        raise
    (error,) = spool.commit([pending])
    if error is not None:
        raise error
    if request.print_path or request.print_name:
        path = spool.content_path(pending.message_id)
        print(path if request.print_path else path.name)
    return pending.message_id


def _input(request: Request, stdin: BinaryIO) -> BinaryIO:
    """The input: --content lines, then --input-file or stdin (none with --no-stdin)."""
    parts: list[BinaryIO] = []
    if request.content_lines:
        parts.append(io.BytesIO(b"".join(line + b"\n" for line in request.content_lines)))
    if request.input_file is not None:
        try:
            parts.append(open(request.input_file, "rb"))  # noqa: SIM115 (read to the end)
        except OSError as error:
            raise UsageError(f"--input-file: {error.strerror or error}", os.EX_NOINPUT
                             ) from None
    elif not request.no_stdin:
        parts.append(stdin)
    return cast(BinaryIO, _Chain(parts))


class _Chain(io.RawIOBase):
    """Several binary streams read one after the other."""

    def __init__(self, parts: list[BinaryIO]) -> None:
        self._parts = parts

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        while self._parts:
            data = self._parts[0].read(size)
            if data:
                return data
            self._parts.pop(0)
        return b""


def _copy_body(first: list[tuple[bytes, bool]], lines: Iterator[tuple[bytes, bool]],
               ignore_dots: bool, write: Callable[[bytes], None]) -> None:
    """Copy the body with CRLF line ends; without -i, a lone "." line ends it."""
    at_line_start = True
    for line, complete in itertools.chain(first, lines):
        if at_line_start and complete and not ignore_dots and line == b".":
            return
        write(line + b"\r\n" if complete else line)
        at_line_start = complete


def main(argv: Sequence[str] | None = None, stdin: BinaryIO | None = None) -> int:
    """Entry point of relay-submit."""
    try:
        request = parse_command_line(sys.argv[1:] if argv is None else argv)
    except UsageError as error:
        print(USAGE, file=sys.stderr, end="")
        return fail(PROGRAM, str(error), error.code)
    if request.help:
        print(USAGE, end="")
        return os.EX_OK
    if request.version:
        print(f"{PROGRAM} {version()}")
        return os.EX_OK
    try:
        settings = load_settings(PROGRAM, DESCRIPTION, SETTINGS,
                                 request.settings_argv, section="submit")
        domain = local_domain(settings.domain)
    except (ConfigError, ValueError) as error:
        return fail(PROGRAM, str(error), os.EX_CONFIG)
    if request.list_queue:
        return _list_queue(settings.spool_dir)
    try:
        spool = writable_spool(settings.spool_dir)
        store(spool, request, domain, stdin or sys.stdin.buffer)
    except UsageError as error:
        return fail(PROGRAM, str(error), error.code)
    except SpoolError as error:
        return fail(PROGRAM, str(error), os.EX_CONFIG)
    except OSError as error:
        code = os.EX_CANTCREAT if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS) \
            else os.EX_TEMPFAIL
        return fail(PROGRAM, f"cannot store the message: {error.strerror or error}", code)
    return os.EX_OK


def _list_queue(directory: str) -> int:
    """-bp: the queue in sendmail's format (what `mailq` prints)."""
    try:
        sys.stdout.write(mailq_lines(directory))
    except SpoolError as error:
        return fail(PROGRAM, str(error), os.EX_CONFIG)
    except OSError as error:
        return fail(PROGRAM, f"{error.filename or directory}: {error.strerror}", os.EX_IOERR)
    return os.EX_OK


if __name__ == "__main__":
    raise SystemExit(main())
