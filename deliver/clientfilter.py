"""Client filters (`--client-filter`): E-MailRelay's programs run on each message before it is sent.

Each filter runs (through `common.programs.run_program`) as `prog <content-path>
<envelope-path>` with the claimed `.busy` envelope, in order; the exit code decides
(docs/deliver.md, *Client filters*). A filter may edit both files; deliver re-reads the
envelope afterwards. This module reads the programs' output only; it never touches spool
files itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from common.programs import ProgramResult, run_program

REJECT_CODE = 550


class FilterVerdict(Enum):
    """What the filters decided for one message."""

    FORWARD = "forward"  # 0, 101, 103
    FORWARD_THEN_STOP = "forward_then_stop"  # 102: forward, then stop this scan
    SKIP = "skip"  # 100: leave it waiting for now
    FAIL = "fail"  # 1-99, anything else, a timeout: `.bad`


@dataclass(frozen=True)
class FilterDecision:
    """The verdict, and for FAIL the reason to record (with ReasonCode 550)."""

    verdict: FilterVerdict
    reason: str = ""
    program: str = ""


def interpret(program: str, result: ProgramResult) -> FilterDecision:
    """The meaning of one filter's exit (pure)."""
    code = result.exit_code
    if code in (0, 101, 103):
        return FilterDecision(FilterVerdict.FORWARD, program=program)
    if code == 102:
        return FilterDecision(FilterVerdict.FORWARD_THEN_STOP, program=program)
    if code == 100:
        return FilterDecision(FilterVerdict.SKIP, program=program)
    if code is not None and 1 <= code <= 99:
        _reply_code, text = result.reply(default_code=REJECT_CODE)
        return FilterDecision(FilterVerdict.FAIL, f"client filter: {text}", program)
    if result.timed_out:
        why = "timed out"
    else:
        detail = result.stderr.strip().splitlines()[-1:] or [f"exit {code}"]
        why = f"failed ({detail[0]})" if code == 127 else f"exit {code}"
    return FilterDecision(FilterVerdict.FAIL, f"client filter {program} {why}", program)


async def run_filters(programs: list[str], content_path: str, envelope_path: str,
                      timeout: float) -> FilterDecision:
    """Run each filter in turn; the first that does not say 'forward' decides."""
    stop = False
    for program in programs:
        result = await run_program([program, content_path, envelope_path], timeout)
        decision = interpret(program, result)
        if decision.verdict in (FilterVerdict.SKIP, FilterVerdict.FAIL):
            return decision
        stop = stop or decision.verdict is FilterVerdict.FORWARD_THEN_STOP
    return FilterDecision(FilterVerdict.FORWARD_THEN_STOP if stop else FilterVerdict.FORWARD)
