"""Server filters (`--filter`) and the address verifier (`--address-verifier`).

E-MailRelay's protocols (docs/intake.md): what each exit code means is decided here,
in pure functions over `common.programs.ProgramResult`; the programs are run by
`common.programs.run_program` (no shell, stdin /dev/null, PATH=/usr/bin:/bin, a timeout,
then SIGKILL to the process group). A filter may read and edit the message's content file
and its `.envelope.new`; this module itself reads and writes no files.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common.programs import ProgramResult, printable_reply, run_program


class FilterAction(enum.Enum):
    """What intake does with the message after its filters."""

    ACCEPT = "accept"  # commit, answer 250
    REJECT = "reject"  # remove the files, answer the reply
    TAKEN = "taken"  # the filter took the message: answer 250, commit nothing


@dataclass(frozen=True)
class FilterOutcome:
    """The verdict of the filter chain."""

    action: FilterAction
    reply: str = ""
    trigger_scan: bool = False
    reason: str = ""


ACCEPTED = FilterOutcome(FilterAction.ACCEPT)


def interpret_filter(result: ProgramResult, program: str) -> FilterOutcome:
    """One filter's exit code, as the table in docs/intake.md has it."""
    code = result.exit_code
    if code is None:
        # A hung filter is a local fault, not the message's: temporary, so the client retries.
        return FilterOutcome(
            FilterAction.REJECT, "451 4.3.0 Message filter timed out", reason=f"{program}: timeout"
        )
    if code in (0, 101):
        return ACCEPTED
    if code == 103:
        return FilterOutcome(FilterAction.ACCEPT, trigger_scan=True)
    if code in (100, 102):
        return FilterOutcome(FilterAction.TAKEN, trigger_scan=code == 102)
    if 1 <= code <= 99:
        reply_code, text = result.reply(452)
        enhanced = "4.7.1" if reply_code < 500 else "5.7.1"
        return FilterOutcome(
            FilterAction.REJECT, f"{reply_code} {enhanced} {text}", reason=f"{program}: exit {code}"
        )
    # A crash (signal), exit 127 (cannot run) or any undefined code: a broken filter is a
    # local fault, answered 451 like any local processing error.
    stderr = printable_reply(result.stderr)[:200]
    return FilterOutcome(
        FilterAction.REJECT,
        "451 4.3.0 Message filter failed",
        reason=f"{program}: exit {code} {stderr}".strip(),
    )


async def run_filters(
    programs: Sequence[str], content: Path, envelope: Path, timeout: float
) -> FilterOutcome:
    """Run each filter in order until one rejects or takes the message."""
    trigger = False
    for program in programs:
        result = await run_program([program, str(content), str(envelope)], timeout)
        outcome = interpret_filter(result, program)
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


def interpret_verifier(result: ProgramResult, recipient: str) -> VerifierOutcome:
    """The verifier's exit code and output (line 1 text, line 2 mailbox or address)."""
    lines = result.lines
    first = printable_reply(lines[0]) if lines else ""
    second = lines[1].strip() if len(lines) > 1 else ""
    code = result.exit_code
    if code in (0, 1) and second != printable_reply(second):
        code = -1  # an address with controls would forge an envelope line: a broken verifier
    if code == 0:
        return VerifierOutcome(VerifierVerdict.LOCAL, second or recipient)
    if code == 1:
        return VerifierOutcome(VerifierVerdict.REMOTE, second or recipient)
    if code == 2:
        return VerifierOutcome(
            VerifierVerdict.REJECT, reply=f"550 5.1.1 {first or 'Mailbox unavailable'}"
        )
    if code == 3:
        return VerifierOutcome(
            VerifierVerdict.REJECT, reply=f"450 4.1.1 {first or 'Mailbox temporarily unavailable'}"
        )
    if code == 100:
        return VerifierOutcome(VerifierVerdict.DROP, reply="421 4.7.0 Closing connection")
    # Timeout, crash or an undefined code: a local fault, so a temporary refusal.
    return VerifierOutcome(VerifierVerdict.REJECT, reply="450 4.3.0 Address verifier failed")


async def verify_address(
    program: str,
    recipient: str,
    *,
    sender: str,
    client: str,
    domain: str,
    mechanism: str,
    auth_name: str,
    timeout: float,
) -> VerifierOutcome:
    """Run the verifier for one RCPT TO (E-MailRelay's six arguments)."""
    argv = [program, recipient, sender, client, domain, mechanism, auth_name]
    return interpret_verifier(await run_program(argv, timeout), recipient)
