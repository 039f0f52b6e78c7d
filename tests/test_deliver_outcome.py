"""relay-deliver's pure core: classify, next_attempt, parse_duration, client filter exits."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.config import parse_duration
from common.programs import ProgramResult
from deliver.clientfilter import FilterVerdict, interpret
from deliver.outcome import Attempt, Deferred, Failed, Reply, Sent, Stage, classify, next_attempt

OK = Reply(250, "OK")


def test_250_after_the_dot_is_sent_to_everyone() -> None:
    """All recipients accepted and 250 after the dot: Sent to all, nothing split off."""
    attempt = Attempt(Stage.DONE, OK, accepted=("a@x", "b@x"))
    assert classify(attempt) == Sent(("a@x", "b@x"))


@pytest.mark.parametrize(
    ("stage", "code", "expected"),
    [
        (Stage.MAIL, 451, Deferred),
        (Stage.MAIL, 550, Failed),
        (Stage.DATA, 554, Failed),
        (Stage.DATA, 452, Deferred),
        (Stage.DATA, None, Deferred),  # hang-up or no reply after the dot
        (Stage.MAIL, None, Deferred),  # timeout
        (Stage.CONNECT, None, Deferred),  # refused connection
        (Stage.CONNECT, 554, Deferred),  # a smarthost refusing us is the operator's problem
        (Stage.AUTH, 535, Deferred),  # a wrong password must not fail the queue for good
        (Stage.MAIL, 354, Deferred),  # nonsense is never taken as permanent
    ],
)
def test_whole_message_outcomes(stage: Stage, code: int | None, expected: type) -> None:
    """4xx, no reply and local trouble are temporary; 5xx at MAIL/DATA is permanent."""
    outcome = classify(Attempt(stage, Reply(code, "text")))
    assert isinstance(outcome, expected)
    assert isinstance(outcome, Deferred | Failed)
    assert outcome.code == code
    assert "text" in outcome.reason


def test_partial_refusal_splits_by_code() -> None:
    """Some recipients refused: delivered to the rest, the 5xx ones failed, the 4xx retried."""
    refused = (("a@x", Reply(550, "no such user")), ("b@x", Reply(451, "later")))
    outcome = classify(Attempt(Stage.DONE, OK, accepted=("c@x",), refused=refused))
    assert outcome == Sent(("c@x",), failed=(refused[0],), deferred=(refused[1],))


def test_every_recipient_refused() -> None:
    """All 5xx: Failed; all 4xx: Deferred; a mix: nobody delivered, both split off."""
    perm = (("a@x", Reply(550, "no")), ("b@x", Reply(553, "no")))
    temp = (("a@x", Reply(450, "busy")),)
    assert isinstance(classify(Attempt(Stage.RCPT, perm[0][1], refused=perm)), Failed)
    assert isinstance(classify(Attempt(Stage.RCPT, temp[0][1], refused=temp)), Deferred)
    mixed = (perm[0], temp[0])
    assert classify(Attempt(Stage.RCPT, perm[0][1], refused=mixed)) == Sent(
        (), failed=(perm[0],), deferred=(temp[0],)
    )


def test_next_attempt_doubles_up_to_the_maximum() -> None:
    """The defaults (60 s, 1 h) give 1, 2, 4, 8, 16, 32 minutes, then an hour for good."""
    assert [next_attempt(n, 60, 3600) for n in range(1, 9)] == [
        60, 120, 240, 480, 960, 1920, 3600, 3600,
    ]
    assert next_attempt(10_000, 60, 3600) == 3600


@given(st.integers(min_value=1, max_value=100_000), st.floats(0.01, 1e4), st.floats(0.01, 1e6))
def test_next_attempt_is_bounded_and_monotonic(attempts: int, first: float, top: float) -> None:
    """Never above the maximum, never shorter than the attempt before."""
    delay = next_attempt(attempts, first, top)
    assert 0 < delay <= top
    assert delay >= next_attempt(attempts - 1, first, top)


def test_parse_duration() -> None:
    """Seconds, or s/m/h/d suffixes; garbage and negative values are refused."""
    assert parse_duration("90") == 90
    assert parse_duration("15m") == 900
    assert parse_duration("5d") == 432000
    assert parse_duration(0.5) == 0.5
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("5 weeks")
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(-1)


@pytest.mark.parametrize(
    ("code", "verdict", "stop"),
    [
        (0, FilterVerdict.FORWARD, False),
        (101, FilterVerdict.FORWARD, False),
        (103, FilterVerdict.FORWARD, False),
        (102, FilterVerdict.FORWARD, True),
        (100, FilterVerdict.SKIP, False),
        (104, FilterVerdict.SKIP, True),
        (1, FilterVerdict.FAIL, False),
        (99, FilterVerdict.FAIL, False),
        (105, FilterVerdict.FAIL, True),
        (106, FilterVerdict.FAIL, False),
        (-9, FilterVerdict.FAIL, False),  # killed by a signal
        (None, FilterVerdict.FAIL, False),  # killed for the timeout
    ],
)
def test_client_filter_exit_codes(code: int | None, verdict: FilterVerdict, stop: bool) -> None:
    """E-MailRelay 2.6.1's client filter exit codes, the stop-scanning flag included."""
    decision = interpret("f", ProgramResult(code, "", ""))
    assert decision.verdict is verdict and decision.stop_scan is stop


def test_client_filter_local_fault_defers() -> None:
    """A built-in filter's local fault (spamd down) defers: never sent, never failed."""
    decision = interpret("spam:x", ProgramResult(1, "<<rejected>>\n<<spamd: down>>\n", "",
                                                  temporary=True))
    assert decision.verdict is FilterVerdict.DEFER and "spamd: down" in decision.reason


def test_client_filter_reason_comes_from_the_reply_text() -> None:
    """Exit 1-99: the reason is the <<...>> text of the first such stdout line."""
    decision = interpret("f", ProgramResult(3, "noise\n<<spam detected>>\n", ""))
    assert decision.reason == "spam detected"
