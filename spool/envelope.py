"""The envelope file: a pure model with parse and format, compatible with E-MailRelay 2.x.

Reads and writes no files: `parse_envelope(bytes) -> Envelope` and
`format_envelope(Envelope) -> bytes` are the whole contract. Formats #2821.5 to
#2821.8 are read; an envelope keeps its version so that a re-format is byte-identical,
and every envelope relay creates is #2821.8. Lines after `X-MailRelay-End` (the reasons a
failure appends, relay's own `X-Relay-` bookkeeping) are kept verbatim in `trailer`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from common.xtext import XtextError, xtext_decode, xtext_encode

FORMAT_LATEST = "#2821.8"
PREFIX = "X-MailRelay-"
BODY_TYPES = ("7bit", "8bit", "binarymime", "unknown")

# The fields after the recipients, in their fixed order, and the format that added each,
# as E-MailRelay's GStore::Envelope::read has them: #2821.5 (2.0) has the first five,
# #2821.6 (2.4) adds ForwardTo and ForwardToAddress, #2821.7 adds Utf8MailboxNames and
# #2821.8 (2.5) adds ClientAccountSelector, which it writes before Utf8MailboxNames.
_FIELDS_AFTER_RECIPIENTS: tuple[tuple[str, str], ...] = (
    ("Authentication", "#2821.5"),
    ("Client", "#2821.5"),
    ("ClientCertificate", "#2821.5"),
    ("MailFromAuthIn", "#2821.5"),
    ("MailFromAuthOut", "#2821.5"),
    ("ForwardTo", "#2821.6"),
    ("ForwardToAddress", "#2821.6"),
    ("ClientAccountSelector", "#2821.8"),
    ("Utf8MailboxNames", "#2821.7"),
)
FORMATS = ("#2821.5", "#2821.6", "#2821.7", "#2821.8")

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
REASON_KEY = "X-MailRelay-Reason"
REASON_CODE_KEY = "X-MailRelay-ReasonCode"


# No envelope is this large (a few hundred bytes, plus a line per failure or deferral): a
# larger file is refused unread rather than read into memory.
MAX_ENVELOPE_BYTES = 16 * 1024 * 1024


class EnvelopeError(ValueError):
    """An envelope that cannot be read: names the file (when known), the line and the problem."""

    def __init__(self, problem: str, *, line: int | None = None, path: str | None = None) -> None:
        self.problem = problem
        self.line = line
        self.path = path
        super().__init__(self._text())

    def _text(self) -> str:
        where = self.path or "envelope"
        if self.line is not None:
            where = f"{where}, line {self.line}"
        return f"{where}: {self.problem}"

    def in_file(self, path: str) -> EnvelopeError:
        """The same error, naming *path*."""
        return EnvelopeError(self.problem, line=self.line, path=path)


@dataclass(frozen=True)
class Envelope:
    """One message's envelope. Text fields hold decoded values (no xtext, no folding)."""

    sender: str = ""
    to_local: tuple[str, ...] = ()
    to_remote: tuple[str, ...] = ()
    body_type: str = "7bit"
    authentication: str = ""
    client: str = ""
    client_certificate: str = ""
    mail_from_auth_in: str = ""
    mail_from_auth_out: str = ""
    forward_to: str = ""
    forward_to_address: str = ""
    client_account_selector: str = ""
    utf8_mailbox_names: bool = False
    trailer: str = ""
    version: str = FORMAT_LATEST

    @property
    def recipients(self) -> tuple[str, ...]:
        """Every recipient, local ones first, as counted by ToCount."""
        return self.to_local + self.to_remote

    @property
    def reasons(self) -> list[str]:
        """The failure reasons appended after End, oldest first."""
        return [value for key, value in trailer_fields(self.trailer) if key == REASON_KEY]

    @property
    def reason_codes(self) -> list[str]:
        """The failure codes appended after End, oldest first ('' where there was none)."""
        return [value for key, value in trailer_fields(self.trailer) if key == REASON_CODE_KEY]

    def with_reason(self, reason: str, code: int | str | None) -> Envelope:
        """This envelope with a failure reason and code appended after End."""
        return replace(self, trailer=self.trailer + reason_lines(reason, code))


def printable(text: str) -> str:
    """*text* made safe for one envelope line: controls become spaces, runs are squeezed."""
    return " ".join(_CONTROL.sub(" ", text).split())


def trailer_line(key: str, value: str) -> str:
    """One line for after End; the value is made printable so it can never split a line."""
    if not key or _CONTROL.search(key) or ":" in key:
        raise ValueError(f"bad trailer key {key!r}")
    return f"{key}: {printable(value)}\r\n"


def reason_lines(reason: str, code: int | str | None) -> str:
    """The two lines a permanent failure appends, exactly as E-MailRelay writes them."""
    code_text = "" if code is None else str(code).strip()
    return trailer_line(REASON_KEY, reason) + trailer_line(REASON_CODE_KEY, code_text)


def trailer_fields(trailer: str) -> list[tuple[str, str]]:
    """The `Key: value` lines of a trailer (lines of another shape are skipped)."""
    fields: list[tuple[str, str]] = []
    for line in trailer.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.append((key.strip(), value[1:] if value.startswith(" ") else value))
    return fields


def check_address(address: str, what: str = "address") -> None:
    """Refuse an address that could forge an envelope line or file name."""
    if _CONTROL.search(address):
        raise EnvelopeError(f"{what} contains a control character: {address!r}")


def format_envelope(envelope: Envelope) -> bytes:
    """The envelope file's bytes: fixed field order, CRLF, empty values as `Key: `."""
    if envelope.version not in FORMATS:
        raise EnvelopeError(f"cannot write format {envelope.version!r}")
    if envelope.body_type not in BODY_TYPES:
        raise EnvelopeError(f"bad body type {envelope.body_type!r}")
    check_address(envelope.sender, "sender")
    for recipient in envelope.recipients:
        check_address(recipient, "recipient")
    lines = [
        f"{PREFIX}Format: {envelope.version}",
        f"{PREFIX}Content: {envelope.body_type}",
        f"{PREFIX}From: {envelope.sender}",
        f"{PREFIX}ToCount: {len(envelope.recipients)}",
    ]
    lines += [f"{PREFIX}To-Local: {r}" for r in envelope.to_local]
    lines += [f"{PREFIX}To-Remote: {r}" for r in envelope.to_remote]
    values = _field_values(envelope)
    for name, since in _FIELDS_AFTER_RECIPIENTS:
        if FORMATS.index(since) > FORMATS.index(envelope.version):
            continue
        value = values[name]
        if name == "ClientCertificate":
            # A CRLF in the PEM is one line break; any other control would break the folding.
            value = value.replace("\r\n", "\n")
            if _CONTROL.search(value.replace("\n", "")):
                raise EnvelopeError(f"{name} contains a control character: {value!r}")
            value = "\r\n ".join(value.split("\n")) if value else ""
        elif _CONTROL.search(value):
            raise EnvelopeError(f"{name} contains a control character: {value!r}")
        lines.append(f"{PREFIX}{name}: {value}")
    lines.append(f"{PREFIX}End: 1")
    return ("\r\n".join(lines) + "\r\n" + envelope.trailer).encode("utf-8")


def _field_values(envelope: Envelope) -> dict[str, str]:
    return {
        "Authentication": xtext_encode(envelope.authentication),
        "Client": envelope.client,
        "ClientCertificate": envelope.client_certificate,
        "MailFromAuthIn": _encode_auth_in(envelope.mail_from_auth_in),
        "MailFromAuthOut": envelope.mail_from_auth_out,
        "ForwardTo": envelope.forward_to,
        "ForwardToAddress": envelope.forward_to_address,
        "ClientAccountSelector": envelope.client_account_selector,
        "Utf8MailboxNames": "1" if envelope.utf8_mailbox_names else "0",
    }


# E-MailRelay stores `MAIL FROM:<...> AUTH=<>` as a lone "+" (not valid xtext); relay's
# model holds it as "<>", the value as the client sent it.
_AUTH_EMPTY, _AUTH_EMPTY_STORED = "<>", "+"


def _encode_auth_in(value: str) -> str:
    return _AUTH_EMPTY_STORED if value == _AUTH_EMPTY else xtext_encode(value)


def _decode_auth_in(value: str) -> str:
    return _AUTH_EMPTY if value == _AUTH_EMPTY_STORED else xtext_decode(value)


class _Lines:
    """A cursor over the envelope's lines that remembers line numbers for errors."""

    def __init__(self, text: str) -> None:
        self.lines = text.split("\n")
        self.index = 0

    @property
    def number(self) -> int:
        return self.index + 1

    def fail(self, problem: str) -> EnvelopeError:
        return EnvelopeError(problem, line=self.number)

    def peek(self) -> str | None:
        if self.index >= len(self.lines) - 1:  # the last element follows the final newline
            return None
        return self.lines[self.index].removesuffix("\r")

    def take(self, key: str) -> str:
        line = self.peek()
        if line is None:
            raise self.fail(f"file ends where {PREFIX}{key} was expected (truncated)")
        name, sep, value = line.partition(":")
        if not sep or name != PREFIX + key:
            raise self.fail(f"expected {PREFIX}{key}, found {line[:60]!r}")
        value = value[1:] if value.startswith(" ") else value
        if _CONTROL.search(value):
            raise self.fail(f"{PREFIX}{key} contains a control character")
        self.index += 1
        return value

    def take_continuations(self) -> list[str]:
        extra: list[str] = []
        while (line := self.peek()) is not None and line.startswith(" "):
            if _CONTROL.search(line):
                raise self.fail("folded line contains a control character")
            extra.append(line[1:])
            self.index += 1
        return extra

    def rest(self) -> str:
        return "\n".join(self.lines[self.index :])


def parse_envelope(data: bytes, *, path: str | None = None) -> Envelope:
    """Parse an envelope file; anything malformed raises EnvelopeError naming the line."""
    try:
        return _parse(data)
    except EnvelopeError as error:
        raise error.in_file(path) if path else error from None


def _parse(data: bytes) -> Envelope:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise EnvelopeError("not UTF-8", line=line) from None
    if not text:
        raise EnvelopeError("file is empty (truncated)")
    cursor = _Lines(text)
    version = cursor.take("Format")
    if version not in FORMATS:
        known = ", ".join(FORMATS)
        raise EnvelopeError(f"unknown format {version!r} (relay reads {known})", line=1)
    body_type = cursor.take("Content")
    if body_type not in BODY_TYPES:
        raise EnvelopeError(f"unknown Content {body_type!r}", line=2)
    sender = cursor.take("From")
    count_text = cursor.take("ToCount")
    if not (count_text.isascii() and count_text.isdigit()):  # int() takes '²' and '٣'...
        raise EnvelopeError(f"ToCount is not a number: {count_text!r}", line=cursor.number - 1)
    to_local: list[str] = []
    to_remote: list[str] = []
    while (next_line := cursor.peek()) is not None and next_line.startswith(PREFIX + "To-"):
        if next_line.startswith(PREFIX + "To-Local:"):
            if to_remote:
                raise cursor.fail("To-Local after To-Remote")
            to_local.append(cursor.take("To-Local"))
        else:
            to_remote.append(cursor.take("To-Remote"))
    if len(to_local) + len(to_remote) != int(count_text):
        raise EnvelopeError(
            f"ToCount says {count_text} but {len(to_local) + len(to_remote)} recipients follow",
            line=cursor.number,
        )
    values: dict[str, str] = {}
    line_of: dict[str, int] = {}
    for name, since in _FIELDS_AFTER_RECIPIENTS:
        if FORMATS.index(since) > FORMATS.index(version):
            continue
        line_of[name] = cursor.number
        values[name] = cursor.take(name)
        if name == "ClientCertificate":
            # Continuations are taken even after an empty first line, so that a value
            # starting with a line break reads back as written.
            values[name] = "\n".join([values[name], *cursor.take_continuations()])
    end_line = cursor.number
    end = cursor.take("End")
    if end != "1":
        raise EnvelopeError(f"{PREFIX}End is {end!r}, not 1", line=end_line)
    decoded: dict[str, str] = {}
    for name, decode in (("Authentication", xtext_decode), ("MailFromAuthIn", _decode_auth_in)):
        try:
            decoded[name] = decode(values.get(name, ""))
        except XtextError as error:
            raise EnvelopeError(f"{PREFIX}{name}: {error}", line=line_of.get(name)) from None
    authentication, auth_in = decoded["Authentication"], decoded["MailFromAuthIn"]
    utf8 = values.get("Utf8MailboxNames", "0")
    if utf8 not in ("0", "1"):
        raise EnvelopeError(
            f"{PREFIX}Utf8MailboxNames is {utf8!r}, not 0 or 1", line=line_of["Utf8MailboxNames"]
        )
    return Envelope(
        sender=sender,
        to_local=tuple(to_local),
        to_remote=tuple(to_remote),
        body_type=body_type,
        authentication=authentication,
        client=values.get("Client", ""),
        client_certificate=values.get("ClientCertificate", ""),
        mail_from_auth_in=auth_in,
        mail_from_auth_out=values.get("MailFromAuthOut", ""),
        forward_to=values.get("ForwardTo", ""),
        forward_to_address=values.get("ForwardToAddress", ""),
        client_account_selector=values.get("ClientAccountSelector", ""),
        utf8_mailbox_names=utf8 == "1",
        trailer=cursor.rest(),
        version=version,
    )
