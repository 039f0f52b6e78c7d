"""Benchmark 8, a burst of connections: 1,000 clients connect at once; when is each greeted?

Each round starts relay-intake (its connection limits raised above the burst) and, when
EMAILRELAY_BIN names its binary, E-MailRelay `--as-server`, on fresh spools, and runs
`bench.burst` (its own process) against each in turn: every connection is opened at once
and held until all are greeted. Figures: how many were greeted within 2 s, and the
slowest greeting. What decides it is the listen backlog (a connection the kernel's accept
queue had no room for waits for a SYN retransmission, 1 s and then 3 s later) and how fast
the server accepts and greets. Postfix is not run here: it serves each connection with a
process of its own (100 by default; its answer to bursts is postscreen). Writes only into
scratch directories.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.common import Context, Process, Row, helper, median, parse_json_line, python_env
from bench.peers import EmailRelay, RelayIntake, System, emailrelay_program

NAME = "burst"
WITHIN = 2.0


def relay_limits(connections: int) -> tuple[str, ...]:
    return ("--max-connections", str(connections + 100),
            "--max-connections-per-client", str(connections + 100))


def burst(ctx: Context, system: System, connections: int) -> dict[str, Any]:
    logs = ctx.scratch(f"{NAME}-logs")
    process = Process(helper("burst", "--port", str(system.port), "--connections",
                             str(connections), "--timeout", "30"),
                      logs / "burst.log", stdout_lines=True, env=python_env())
    try:
        line = process.wait_line(lambda text: text.startswith("{"), 60)
        process.wait(30)
    finally:
        process.stop()
    return parse_json_line(line)


def run(ctx: Context) -> list[Row]:
    connections = ctx.sizes.burst_connections
    starters: dict[str, Callable[[], System]] = {
        "relay": lambda: RelayIntake(ctx, *relay_limits(connections))}
    program = emailrelay_program()
    if program is not None:
        starters["E-MailRelay"] = lambda: EmailRelay(ctx, program)
    within: dict[str, list[int]] = {name: [] for name in starters}
    slowest: dict[str, list[float]] = {name: [] for name in starters}
    for round_number in range(ctx.sizes.runs):
        names = list(starters)
        order = names if round_number % 2 == 0 else names[::-1]
        for name in order:
            system = starters[name]()
            try:
                result = burst(ctx, system, connections)
            finally:
                system.stop()
            times = result["times"]
            within[name].append(sum(1 for seconds in times if seconds <= WITHIN))
            slowest[name].append(result["max"] if len(times) == connections else 30.0)
            print(f"  burst round {round_number + 1}, {name}: {len(times)} of {connections}"
                  f" greeted, {within[name][-1]} within {WITHIN:.0f} s, p50"
                  f" {result['p50'] or 0:.3f} s, slowest {result['max'] or 0:.3f} s,"
                  f" {result['failed']} failed", flush=True)
    baseline = "E-MailRelay" if "E-MailRelay" in starters else None
    relay_within = median(within["relay"])
    return [
        Row("8 burst", f"{connections} connections at once: greeted within {WITHIN:.0f} s"
            f" (baseline: {baseline or 'none'})", relay_within,
            median(within[baseline]) if baseline else None, "connections",
            target=f"all {connections}", met=min(within["relay"]) == connections),
        Row("8 burst", f"{connections} connections at once: the slowest greeting (30: not all"
            " greeted within 30 s)", median(slowest["relay"]),
            median(slowest[baseline]) if baseline else None, "s",
            target=f"<= {WITHIN:.0f} s", met=median(slowest["relay"]) <= WITHIN),
    ]
