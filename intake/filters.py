"""Server filters (`--filter`) and the address verifier (`--address-verifier`).

E-MailRelay 2.6.1's protocols, decided here in pure functions over what a filter or
verifier reported (`common.programs.ProgramResult`); the specs (a program, or a built-in
such as `exit:`, `net:`, `spam:`, `account:`) are run by `common.filterspec` and
`common.programs` (no shell, stdin /dev/null, E-MailRelay's minimal environment, a
timeout, then SIGKILL to the process group). A filter may read and edit the message's
content file and its `.envelope.new`; this module itself reads and writes no files.

Filter exits (server side): 0 and 101 accept; 103 accepts and asks deliver to rescan;
100 abandons (the message is committed if the filter left its files, and the client gets
250 either way), 102 abandons and rescans; 1-99, 104 (with a rescan), every other code,
a crash and a timeout refuse with the filter's `<<...>>` reply (code 452 when it gives
none), its text exactly as E-MailRelay sends it (no enhanced code is added: a program that
wants one writes it). Verifier exits: 0 local (two lines: full name, mailbox), 1 remote
(two lines: any, address), 3 refused for now (450), 100 drop the connection, anything else
refused (550), in E-MailRelay's words too (`550 TEXT`, `450 TEXT`).
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from common.accounts import account_verify, net_verifier_result, parse_account_spec
from common.filterspec import FilterRunner, Spec, describe
from common.netclient import LineClient
from common.programs import ProgramResult, parse_output, printable_reply, run_program


class FilterAction(enum.Enum):
    """What intake does with the message after its filters."""

    ACCEPT = "accept"  # commit, answer 250
    REJECT = "reject"  # remove the files, answer the reply
    ABANDON = "abandon"  # answer 250; commit the files if the filter left them


@dataclass(frozen=True)
class FilterOutcome:
    """The verdict of the filter chain."""

    action: FilterAction
    reply: str = ""
    trigger_scan: bool = False
    reason: str = ""


ACCEPTED = FilterOutcome(FilterAction.ACCEPT)


def interpret_filter(result: ProgramResult, program: str) -> FilterOutcome:
    """One filter's exit, as E-MailRelay 2.6.1 reads a server filter's exit code."""
    code = result.exit_code
    if code is None:
        return FilterOutcome(FilterAction.REJECT, "452 error", reason=f"{program}: timeout")
    if code in (0, 101):
        return ACCEPTED
    if code == 103:
        return FilterOutcome(FilterAction.ACCEPT, trigger_scan=True)
    if code in (100, 102):
        return FilterOutcome(FilterAction.ABANDON, trigger_scan=code == 102)
    output = parse_output(result.stdout)
    reply_code = output.code if 400 <= output.code < 600 else 452
    reason = output.reason
    if not 1 <= code <= 104:
        stderr = printable_reply(result.stderr)[:200]
        reason = f"{reason} (exit {code}{': ' + stderr if stderr else ''})"
    return FilterOutcome(FilterAction.REJECT, f"{reply_code} {output.response}",
                         trigger_scan=code == 104, reason=f"{program}: {reason}")


async def run_filters(specs: Sequence[Spec], content: str, envelope: str, timeout: float,
                      runner: FilterRunner | None = None) -> FilterOutcome:
    """Run each filter in order until one refuses or abandons the message."""
    runner = runner or FilterRunner()
    trigger = False
    for spec in specs:
        result = await runner.run(spec, content, envelope, timeout)
        outcome = interpret_filter(result, spec.name)
        trigger = trigger or outcome.trigger_scan
        if outcome.action is not FilterAction.ACCEPT:
            return FilterOutcome(outcome.action, outcome.reply, trigger, outcome.reason)
    return FilterOutcome(FilterAction.ACCEPT, trigger_scan=trigger)


class VerifierVerdict(enum.Enum):
    """The address verifier's answer for one recipient."""

    LOCAL = "local"
    REMOTE = "remote"
    REJECT = "reject"
    DROP = "drop"


@dataclass(frozen=True)
class VerifierOutcome:
    """Verdict, the address to store (for LOCAL/REMOTE) and the reply (for REJECT/DROP)."""

    verdict: VerifierVerdict
    address: str = ""
    reply: str = ""
    reason: str = ""


def interpret_verifier(result: ProgramResult, recipient: str) -> VerifierOutcome:
    """The verifier's exit code and output, read as E-MailRelay 2.6.1 reads them."""
    code = result.exit_code
    if code is None:
        return VerifierOutcome(VerifierVerdict.REJECT, reply="450 timeout",
                               reason="timeout")
    if code == 100:
        return VerifierOutcome(VerifierVerdict.DROP, reply="421 4.7.0 Closing connection",
                               reason="address verifier abort")
    text = result.stdout.rstrip(" \n\t").replace("\r\n", "\n").replace("\r", "")
    lines = text.split("\n") if text else []
    first = printable_reply(lines[0]) if lines else ""
    second = printable_reply(lines[1]) if len(lines) > 1 else ""
    if code in (0, 1) and len(lines) >= 2 and second and second == lines[1].strip():
        verdict = VerifierVerdict.LOCAL if code == 0 else VerifierVerdict.REMOTE
        return VerifierOutcome(verdict, second)
    if code == 127 and result.stderr.startswith("cannot run"):
        return VerifierOutcome(VerifierVerdict.REJECT, reply="550 error",
                               reason="exec error")
    response = first if lines else "mailbox unavailable"
    reason = second if len(lines) > 1 else f"exit code {code}"
    if code == 3:
        return VerifierOutcome(VerifierVerdict.REJECT, reply=f"450 {response}", reason=reason)
    return VerifierOutcome(VerifierVerdict.REJECT, reply=f"550 {response}", reason=reason)


def client_display(ip: str, port: int) -> str:
    """The client's address as E-MailRelay shows it to verifiers: `1.2.3.4:25`, `::1.25`."""
    try:
        version = ipaddress.ip_address(ip.split("%", 1)[0]).version
    except ValueError:
        version = 4
    return f"{ip}{'.' if version == 6 else ':'}{port}"


def verifier_mechanism(mechanism: str) -> str:
    """The AUTH mechanism as verifiers see it: lower case, `none` when not authenticated."""
    return mechanism.lower() if mechanism else "none"


class Verifier:
    """Runs one `--address-verifier` spec (a program, `net:` or `account:`)."""

    def __init__(self, spec: Spec, domain: str, timeout: float) -> None:
        self.spec, self.domain, self.timeout = spec, domain, timeout
        self._account = parse_account_spec(spec.value) if spec.kind == "account" else None
        self._client = LineClient(spec.value) if spec.kind == "net" else None

    async def verify(self, recipient: str, *, sender: str, client: str, mechanism: str,
                     auth_name: str) -> VerifierOutcome:
        """E-MailRelay's six arguments: recipient, sender, client, domain, mechanism, name."""
        arguments = [recipient, sender, client, self.domain, verifier_mechanism(mechanism),
                     auth_name]
        if self._account is not None:
            return interpret_verifier(account_verify(self._account, recipient, self.domain),
                                      recipient)
        if self._client is not None:
            try:
                line = await self._client.request("|".join(arguments), self.timeout)
            except (OSError, ValueError) as error:
                return VerifierOutcome(VerifierVerdict.REJECT, reply="450 cannot verify",
                                       reason=f"network verifier: {describe(error)}")
            return interpret_verifier(net_verifier_result(line), recipient)
        result = await run_program([self.spec.value, *arguments], self.timeout)
        return interpret_verifier(result, recipient)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
