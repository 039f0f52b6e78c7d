"""common.logs' own timestamp and logfmt renderer write what structlog's would, byte for byte."""

from __future__ import annotations

import datetime
import random
from typing import Any

import structlog

from common.logs import LogfmtRenderer, UtcTimeStamper

_ORDER = ["timestamp", "level", "unit", "event", "msg_id"]


def _structlog_text(nanoseconds: int) -> str:
    # datetime.now truncates the clock to the microsecond; isoformat as structlog's stamper.
    second, rest = divmod(nanoseconds, 1_000_000_000)
    moment = datetime.datetime.fromtimestamp(second, tz=datetime.UTC)
    return moment.replace(microsecond=rest // 1000).isoformat().replace("+00:00", "Z")


def test_timestamp_equals_structlogs_across_second_boundaries() -> None:
    stamper = UtcTimeStamper()
    rng = random.Random(17)
    base = 1_796_300_000 * 1_000_000_000
    instants = []
    for second in range(200):
        edge = base + second * 1_000_000_000
        instants += [edge - 1, edge, edge + 999, edge + 1000, edge + 1001, edge + 999_999_999]
        instants += [edge + rng.randrange(1_000_000_000) for _ in range(5)]
    instants += [0, 951_782_400 * 10**9 + 5000, 4_102_444_799 * 10**9 + 999_999_000]  # 2000-02-29
    for nanoseconds in instants:
        assert stamper.text(nanoseconds) == _structlog_text(nanoseconds), nanoseconds
    for nanoseconds in reversed(instants):  # going back (the clock is set back) too
        assert stamper.text(nanoseconds) == _structlog_text(nanoseconds), nanoseconds


def test_timestamp_processor_sets_now() -> None:
    before = datetime.datetime.now(tz=datetime.UTC).isoformat().replace("+00:00", "Z")
    stamped = UtcTimeStamper()(None, "info", {"event": "x"})["timestamp"]
    after = datetime.datetime.now(tz=datetime.UTC).isoformat().replace("+00:00", "Z")
    assert before[:19] <= stamped[:19] <= after[:19]
    assert stamped.endswith("Z") and len(stamped) in (20, 27)


_VALUES: list[Any] = [
    None, True, False, 0, 17, -3, 2.5, "", "plain", "two words", "a=b", 'say "hi"',
    "back\\slash", "back\\ slash", 'q"\\', "line\nbreak", "line\n break", "tab\there",
    ("a", "b"), ["x y"], {"k": "v"}, b"bytes", "<user@example.com>", "ünïcode",
]


def test_logfmt_equals_structlogs_for_many_events() -> None:
    ours = LogfmtRenderer()
    theirs = structlog.processors.LogfmtRenderer(key_order=_ORDER, drop_missing=True)
    rng = random.Random(3)
    keys = [*_ORDER, "client", "to", "size", "reason", "from", "msg_id"]
    for _ in range(3000):
        event = {key: rng.choice(_VALUES) for key in rng.sample(keys, rng.randrange(len(keys)))}
        assert ours(None, "info", dict(event)) == theirs(None, "info", dict(event)), event


def test_logfmt_refuses_a_bad_key_as_structlog_does() -> None:
    ours = LogfmtRenderer()
    for key in ("two words", "tab\tkey", "nl\n"):
        for _ in range(2):  # the second time too (a bad key is never remembered as good)
            try:
                ours(None, "info", {"event": "x", key: 1})
            except ValueError as error:
                assert key in str(error)
            else:
                raise AssertionError(f"{key!r} accepted")
