"""Client filters (`--client-filter`): run on each message before it is sent.

Each filter spec (a program run as `prog <content-path> <envelope-path>` with the claimed
`.busy` envelope, or a built-in: `exit:N`, `net:`, `spam:`, `spam-edit:`) runs through
`common.filterspec`, in order; the exit code decides as E-MailRelay 2.6.1's client side
does: 0, 101 and 103 forward; 102 forwards and stops this scan; 100 abandons the message
for now (it stays waiting), 104 abandons and stops the scan; 1-99 and every other code, a
crash and a timeout fail it (`.bad`, ReasonCode 550, the Reason in E-MailRelay's words),
105 fails and stops the scan. A built-in's local fault (spamd down) defers the message
instead: it is never sent unscanned and never failed for it. A filter may edit both
files; deliver re-reads the envelope afterwards. This module reads the programs' output
only; it never touches spool files itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from common.filterspec import FilterRunner, Spec
from common.programs import ProgramResult, parse_output, printable_reply

REJECT_CODE = 550


class FilterVerdict(Enum):
    """What the filters decided for one message."""

    FORWARD = "forward"  # 0, 101, 103 (and 102, with stop_scan)
    SKIP = "skip"  # 100 (104 with stop_scan): leave it waiting for now
    FAIL = "fail"  # 1-99, 105 (with stop_scan), anything else, a timeout: `.bad`
    DEFER = "defer"  # a built-in filter's local fault: retry later


@dataclass(frozen=True)
class FilterDecision:
    """The verdict, whether to stop this scan, and for FAIL/DEFER the reason to record."""

    verdict: FilterVerdict
    reason: str = ""
    program: str = ""
    stop_scan: bool = False
    detail: str = ""  # for FAIL: which filter and how it ended, for the log


def interpret(program: str, result: ProgramResult) -> FilterDecision:
    """The meaning of one client filter's exit (pure)."""
    code = result.exit_code
    if code in (0, 101, 103):
        return FilterDecision(FilterVerdict.FORWARD, program=program)
    if code == 102:
        return FilterDecision(FilterVerdict.FORWARD, program=program, stop_scan=True)
    if code in (100, 104):
        return FilterDecision(FilterVerdict.SKIP, program=program, stop_scan=code == 104)
    if result.temporary:
        output = parse_output(result.stdout, default="")
        return FilterDecision(FilterVerdict.DEFER, f"client filter {program}: {output.reason}",
                              program)
    # The `.bad` reason in E-MailRelay 2.6.1's words (the <<...>> reason line, else the
    # response, else `rejected`; `timeout`); relay's own description goes to the log.
    output = parse_output(result.stdout)
    if result.timed_out:
        reason, why = "timeout", "timed out"
    else:
        reason, why = output.reason, f"exit {code}"
        detail = printable_reply(result.stderr.strip().splitlines()[-1]) if result.stderr.strip() \
            else ""
        if code == 127 and detail:
            why = f"failed ({detail})"
    return FilterDecision(FilterVerdict.FAIL, reason, program, stop_scan=code == 105,
                          detail=f"client filter {program} {why}")


async def run_filters(specs: Sequence[Spec], content_path: str, envelope_path: str,
                      timeout: float, runner: FilterRunner | None = None) -> FilterDecision:
    """Run each filter in turn; the first that does not say 'forward' decides."""
    runner = runner or FilterRunner()
    stop = False
    for spec in specs:
        result = await runner.run(spec, content_path, envelope_path, timeout)
        decision = interpret(spec.name, result)
        stop = stop or decision.stop_scan
        if decision.verdict is not FilterVerdict.FORWARD:
            return FilterDecision(decision.verdict, decision.reason, decision.program,
                                  stop or decision.stop_scan)
    return FilterDecision(FilterVerdict.FORWARD, stop_scan=stop)
