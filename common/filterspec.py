"""Filter and verifier specs as E-MailRelay 2.6.1 reads them, checked at start.

A `--filter`, `--client-filter` or `--address-verifier` value is a program path or one of
E-MailRelay's built-in specs: `exit:N`, `net:HOST:PORT` or `net:/unix/socket`,
`spam:HOST:PORT`, `spam-edit:HOST:PORT` (filters), `net:...` and `account:` (verifiers);
`file:PATH` is a path too, and a comma-separated value is a chain of filters.
`parse_filter`/`parse_verifier` turn the text into `Spec`s or raise `ConfigError` naming
the option (the programs exit 78 at start). `run_filter` runs one filter spec and reports
a `ProgramResult` (an exit code and a `<<...>>` output), so that intake and deliver read
every kind of filter with the same exit-code table. Reads only what the specs point to
(the content file for spamd); writes the content file only for `spam-edit:`.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from common.config import ConfigError, resolve_path
from common.netclient import LineClient, parse_address
from common.programs import ProgramResult, run_program
from common.spamd import spamd_check

FILTER_KINDS = ("exit", "net", "spam", "spam-edit", "file")
CLIENT_FILTER_KINDS = (*FILTER_KINDS, "mx")
VERIFIER_KINDS = ("net", "account", "file")
_UNSUPPORTED = ("copy", "deliver", "split", "mx", "msgid", "sleepms")
_SIDE = {"mx": " (a --client-filter in relay)", "split": " (a --filter in relay)"}



@dataclass(frozen=True)
class Spec:
    """One filter or verifier: its kind and its argument (a path, a number, an address)."""

    kind: str
    value: str
    text: str

    @property
    def name(self) -> str:
        """How logs and `.bad` reasons name it."""
        return self.value if self.kind == "file" else self.text


# A built-in that lives with the program that runs it (deliver's mx:): a check of its
# argument (ValueError) at start, and the coroutine that runs it as a filter would.
Builtin = tuple[Callable[[str], object],
                Callable[[Spec, str, str, float], Awaitable[ProgramResult]]]


def _program(path: str, option: str) -> str:
    resolved = str(resolve_path(path))
    if not os.path.isfile(resolved) or not os.access(resolved, os.X_OK):
        raise ConfigError(f"--{option}: {resolved} is not an executable file")
    return os.path.abspath(resolved)


def _one(text: str, option: str, kinds: tuple[str, ...],
         builtins: dict[str, Builtin] | None = None) -> Spec:
    head, colon, tail = text.partition(":")
    if colon and (head in kinds or head in _UNSUPPORTED or head in CLIENT_FILTER_KINDS):
        if head not in kinds:
            where = _SIDE.get(head, "")
            raise ConfigError(f"--{option}: {head}: is not supported by relay here{where}"
                              " (see docs/filters.md)")
        if builtins and head in builtins:
            try:
                builtins[head][0](tail)
            except ValueError as error:
                raise ConfigError(f"--{option}: {text}: {error}") from None
            return Spec(head, tail, text)
        if head == "exit":
            if not tail.isdigit() or int(tail) > 999:
                raise ConfigError(f"--{option}: exit: needs a number, not {tail!r}")
            return Spec("exit", str(int(tail)), text)
        if head in ("net", "spam", "spam-edit"):
            try:
                parse_address(tail)
            except ValueError as error:
                raise ConfigError(f"--{option}: {text}: {error}") from None
            return Spec(head, tail, text)
        if head == "account":
            from common.accounts import parse_account_spec  # noqa: PLC0415

            try:
                parse_account_spec(tail)
            except ValueError as error:
                raise ConfigError(f"--{option}: {text}: {error}") from None
            return Spec("account", tail, text)
        return Spec("file", _program(tail, option), text)
    return Spec("file", _program(text, option), text)


def parse_filter(text: str, option: str = "filter",
                 builtins: dict[str, Builtin] | None = None) -> list[Spec]:
    """The specs of one `--filter`/`--client-filter` value (a comma-separated chain);
    *builtins* adds the program's own (deliver's `mx:`)."""
    if not text:
        return [Spec("exit", "0", "exit:0")]
    kinds = (*FILTER_KINDS, *(builtins or {}))
    return [_one(part, option, kinds, builtins) for part in text.split(",")]


def parse_verifier(text: str, option: str = "address-verifier") -> Spec:
    """The spec of an `--address-verifier` value."""
    return _one(text, option, VERIFIER_KINDS)


class FilterRunner:
    """Runs filter specs; keeps the connections of `net:` filters from one use to the next."""

    def __init__(self, connect_timeout: float = 10.0,
                 builtins: dict[str, Builtin] | None = None) -> None:
        self.connect_timeout = connect_timeout
        self.builtins = builtins or {}
        self._clients: dict[str, LineClient] = {}

    async def run(self, spec: Spec, content: str, envelope: str, timeout: float) -> ProgramResult:
        """Run *spec* on the message files; an exit code and output as a program gives."""
        if spec.kind == "exit":
            return ProgramResult(int(spec.value), "", "")
        if spec.kind == "file":
            return await run_program([spec.value, content, envelope], timeout)
        if spec.kind == "net":
            return await self._net(spec, content, timeout)
        if spec.kind in self.builtins:
            return await self.builtins[spec.kind][1](spec, content, envelope, timeout)
        if spec.kind in ("spam", "spam-edit"):
            return await spamd_check(spec.value, content, edit=spec.kind == "spam-edit",
                                     timeout=timeout, connect_timeout=self.connect_timeout)
        raise ValueError(f"not a filter: {spec.text}")

    async def _net(self, spec: Spec, content: str, timeout: float) -> ProgramResult:
        client = self._clients.get(spec.value)
        if client is None:
            client = self._clients[spec.value] = LineClient(spec.value, self.connect_timeout)
        try:
            line = await client.request(content, timeout)
        except (OSError, TimeoutError, ValueError) as error:
            return ProgramResult(1, f"<<failed>>\n<<{describe(error)}>>\n", "", temporary=True)
        return net_filter_result(line)

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()


def net_filter_result(line: str) -> ProgramResult:
    """A `net:` filter server's answer as a program's exit and output (E-MailRelay's rules).

    `ok...` accepts; otherwise `[CODE ]RESPONSE[<tab>REASON]` refuses with that response
    (CODE 4xx/5xx), or abandons the message when CODE is 100.
    """
    line = line.rstrip("\r")
    if line.startswith("ok"):
        return ProgramResult(0, "", "")
    response, _tab, reason = line.partition("\t")
    code = 1
    head = response[:3]
    if head == "100" and (len(response) == 3 or response[3] == " "):
        return ProgramResult(100, "", "")
    output = f"<<{response}>>\n" + (f"<<{reason}>>\n" if reason else "")
    return ProgramResult(code, output, "")


def describe(error: BaseException) -> str:
    """An error in one printable line."""
    text = str(error) or type(error).__name__
    if isinstance(error, OSError) and error.strerror:
        text = error.strerror
    return " ".join(text.replace(">>", "> >").split())
