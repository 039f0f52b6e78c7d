"""`python -m bench [names...]`: run relay's benchmarks and print the table of figures.

Each benchmark measures relay and its baseline in the same run, interleaved, and reports
the median of per-round ratios (see bench/README.md). Scratch spools and logs go under
--work-dir (real disk, /var/tmp by default) and are removed afterwards; with --json the
rows are also written to that file. Touches no repository file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path

from bench import (
    big_latency,
    big_message,
    big_spool,
    connection_burst,
    drain,
    durable_intake,
    end_to_end,
    idle,
    peer_forward,
    peer_intake,
)
from bench.common import BenchError, Context, Row, Sizes, relay_available
from common import eventloop

BENCHMARKS: dict[str, tuple[Callable[[Context], list[Row]], tuple[str, ...]]] = {
    # In this order: the benchmarks that delete many files (deliver does) come after the
    # intake ones, see Context.spool.
    "intake": (durable_intake.run, ("relay-intake",)),
    "peers": (peer_intake.run, ("relay-intake",)),
    "burst": (connection_burst.run, ("relay-intake",)),
    "e2e": (end_to_end.run, ("relay-intake", "relay-deliver")),
    "forward": (peer_forward.run, ("relay-intake", "relay-deliver")),
    "drain": (drain.run, ("relay-deliver",)),
    "bigspool": (big_spool.run, ("relay-deliver",)),
    "bigmessage": (big_message.run, ("relay-intake", "relay-deliver")),
    "biglatency": (big_latency.run, ("relay-intake", "relay-deliver")),
    "idle": (idle.run, ("relay-intake", "relay-deliver")),
}


def format_number(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(rows: list[Row]) -> str:
    lines = [
        "| # | figure | relay | baseline | unit | ratio | target | met |",
        "|---|---|---:|---:|---|---:|---|---|",
    ]
    for row in rows:
        met = "-" if row.met is None else ("yes" if row.met else "**no**")
        figure = row.figure + (f" ({row.note})" if row.note else "")
        ratio = "-" if row.ratio is None else f"{row.ratio:.2f}x"
        lines.append(
            f"| {row.bench} | {figure} | {format_number(row.relay)} | "
            f"{format_number(row.baseline)} | {row.unit} | {ratio} | {row.target} | {met} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run (default all): {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true",
                        default=os.environ.get("BENCH_QUICK", "") not in ("", "0"),
                        help="small sizes, to check that the benchmarks work (BENCH_QUICK=1)")
    parser.add_argument("--runs", type=int, help="rounds per benchmark (default 3)")
    parser.add_argument("--work-dir", default=os.environ.get("BENCH_WORK_DIR", "/var/tmp"),
                        help="where scratch spools go; must be a real disk, not tmpfs")
    parser.add_argument("--profile", metavar="DIR",
                        help="sample relay's processes with py-spy (if installed) into DIR")
    parser.add_argument("--uvloop", action=argparse.BooleanOptionalAction,
                        default=eventloop.uvloop_installed(),
                        help="relay's programs (--event-loop), bench's servers and clients all"
                        " run on uvloop (default when it is installed), or all on asyncio's"
                        " own loop (--no-uvloop)")
    parser.add_argument("--loadgen-processes", type=int, default=1,
                        help="split the SMTP load generator over this many processes")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON here")
    parser.add_argument("--keep", action="store_true",
                        help="keep the scratch directory (spools and logs) for inspection")
    arguments = parser.parse_args(argv)
    names = arguments.names or list(BENCHMARKS)
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(BENCHMARKS)}")
    sizes = Sizes.quick() if arguments.quick else Sizes()
    if arguments.runs:
        sizes = replace(sizes, runs=arguments.runs)
    work_dir = Path(arguments.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    ctx = Context(sizes=sizes, work_dir=work_dir, uvloop=arguments.uvloop,
                  loadgen_processes=arguments.loadgen_processes, profile=arguments.profile)
    started = time.monotonic()
    print(f"relay benchmarks, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs,"
          f" {'quick sizes' if arguments.quick else 'full sizes'}, work dir {work_dir}",
          flush=True)
    creation = ctx.file_creation_us()
    print(f"file creation: {creation:.0f} us per 4 KiB file", flush=True)
    if creation > 200:
        ctx.notes.append(
            f"creating a file took {creation:.0f} us (normally 20-60): many files were deleted"
            " on this file system in the last minutes (another bench run's cleanup?); intake"
            " figures will be low. Wait ~5 minutes and run again (docs/performance.md).")
    failed = True
    try:
        rows, failed = run_all(ctx, names)
    finally:
        ctx.close(keep=failed or arguments.keep)
    print()
    print(table(rows))
    for note in dict.fromkeys(ctx.notes):
        print(f"note: {note}")
    print(f"\ntotal {time.monotonic() - started:.0f} s")
    if arguments.json:
        Path(arguments.json).write_text(json.dumps([asdict(row) for row in rows], indent=2))
    return 1 if failed else 0


def run_all(ctx: Context, names: list[str]) -> tuple[list[Row], bool]:
    """Run the named benchmarks in order; (rows, whether any failed)."""
    rows: list[Row] = []
    failed = False
    for name in names:
        function, needs = BENCHMARKS[name]
        missing = [reason for program in needs if (reason := relay_available(program))]
        if missing:
            rows.append(Row(name, f"not measured: {missing[0]}", None, None, ""))
            print(f"{name}: skipped, {missing[0]}", flush=True)
            continue
        bench_started = time.monotonic()
        print(f"{name}: running", flush=True)
        try:
            new_rows = function(ctx)
        except BenchError as error:
            failed = True
            new_rows = [Row(name, f"failed: {str(error).splitlines()[0]}", None, None, "")]
            print(f"{name}: FAILED: {error}", file=sys.stderr, flush=True)
        rows.extend(new_rows)
        print(table(new_rows).splitlines()[-1]
              if len(new_rows) == 1 else "\n".join(table(new_rows).splitlines()[2:]),
              f"\n{name}: {time.monotonic() - bench_started:.0f} s", flush=True)
    return rows, failed


if __name__ == "__main__":
    sys.exit(main())
