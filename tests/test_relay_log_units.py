"""How `relay` names its instances in the shared log (E-MailRelay's "unit", `[NAME]`): the
switches each instance's programs get, the lines of two real instances in one daemon, and
which lines name which instance beside the real `emailrelay` 2.6.1 with the same switches
(those comparisons skip when the binary is absent)."""

from __future__ import annotations

import contextlib
import os
import re
import smtplib
from collections.abc import Callable
from pathlib import Path

import pytest
from support.foreground import AS_ROOT, foreground
from support.programs import BIN
from support.sink import Sink, free_port
from support.spool import spool_files
from support.system import wait_until

from common.workers import default_processes
from tools.relay import parse, plan

RELAY = str(BIN / "relay")
EMAILRELAY = Path(os.environ.get("EMAILRELAY_BIN", "/work/scratch/emailrelay-bin/emailrelay"))
needs_emailrelay = pytest.mark.skipif(not EMAILRELAY.exists(),
                                      reason="the E-MailRelay 2.6.1 binary is not built here")
_UNIT = re.compile(r"(?:^| )unit=(\S+)")
_BRACKETS = re.compile(r"^emailrelay: (?:[0-9.]+: )?\w+: \[([^]]+)\] ")


def _unit_words(args: list[str] | None) -> list[str]:
    """The --unit NAME and --log-unit words of a program's arguments."""
    words: list[str] = []
    for index, word in enumerate(args or []):
        if word == "--unit":
            words += args[index:index + 2]  # type: ignore[index]
        elif word == "--log-unit":
            words.append(word)
    return words


def _units(argv: list[str]) -> dict[str, tuple[list[str], list[str]]]:
    """Each instance's --unit/--log-unit words, in relay-intake's and relay-deliver's args."""
    result = plan(parse([*argv, *AS_ROOT]))
    return {unit.name: (_unit_words(unit.intake), _unit_words(unit.deliver))
            for unit in [result, *result.more]}


TWO = ["--in-spool-dir", "/x", "--in-forward-to", "s:25", "--in-forward-on-disconnect",
       "--out-spool-dir", "/y", "--out-port", "26", "--out-forward-to", "s:25",
       "--out-forward-on-disconnect"]


@pytest.mark.parametrize(("extra", "every_line"), [
    ([], set()),
    (["--log-format=unit"], {"in"}),
    (["--in-log-format=unit", "--out-log-format=unit"], {"in", "out"}),
    (["--log-format=time", "--out-log-format=unit,address"], {"out"}),
    (["--log-address", "--out-log-format=unit"], {"out"}),
    (["--out-log-format=unit"], set()),
])
def test_which_instances_name_themselves_on_every_line(extra: list[str],
                                                       every_line: set[str]) -> None:
    """Every program of a named instance gets --unit NAME (its start line names it); it
    gets --log-unit (every line) where the instance's own --log-format has unit and the
    first instance has a --log-format or --log-address, as E-MailRelay decides."""
    units = _units([*TWO, *extra])
    for name in ("in", "out"):
        expected = ["--unit", name, *(["--log-unit"] if name in every_line else [])]
        assert units[name] == (expected, expected), (name, units)


def test_an_unnamed_instance_gets_no_unit() -> None:
    """One instance without a prefix (`--spool-dir`): its lines are as before, no unit=."""
    units = _units(["--spool-dir", "/x", "--forward-to", "s:25", "--log-format=unit"])
    assert units == {"": ([], [])}


def test_a_further_instances_log_format_counts_only_for_unit() -> None:
    """--out-log-format=unit is that instance's, without a note; its time (process-wide, the
    first instance's) is noted as ignored, and an unknown field is refused by its name."""
    assert not plan(parse([*TWO, "--out-log-format=unit,msgid", *AS_ROOT])).notes
    notes = plan(parse([*TWO, "--out-log-format=unit,time", *AS_ROOT])).notes
    assert any(note.startswith("--out-log-format: ignored") for note in notes), notes
    with pytest.raises(Exception, match="--out-log-format: unknown field 'colour'"):
        plan(parse([*TWO, "--out-log-format=colour", *AS_ROOT]))


# -- real daemons ---------------------------------------------------------------------------

def _running(program: str, args: list[str], work: Path,
             ports: dict[str, int]) -> contextlib.AbstractContextManager[Callable[[], str]]:
    """*program* (relay or emailrelay) logging to stderr, until the instances' ports answer;
    the context's value reads its log so far."""
    return foreground(program, "--log", "--no-syslog", *args, cwd=work,
                      ports=list(ports.values()))


def _send(port: int, name: str) -> int:
    """A message to *port* for name@example.com; the client's own port."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        assert client.sock is not None
        own = int(client.sock.getsockname()[1])
        client.sendmail("a@example.com", [f"{name}@example.com"],
                        f"Subject: to {name}\r\n\r\nbody\r\n".encode())
    return own


def _instances(work: Path, sink: Sink | None) -> tuple[list[str], dict[str, int]]:
    """Two instances in and out on free ports, each with its own spool (forwarding to
    *sink* as mail arrives, if given)."""
    ports = {"in": free_port(), "out": free_port()}
    args: list[str] = []
    for name, port in ports.items():
        spool = work / name
        spool.mkdir(mode=0o770)
        args += [f"--{name}-spool-dir", str(spool), f"--{name}-port", str(port),
                 f"--{name}-interface", "127.0.0.1"]
        if sink is not None:
            args += [f"--{name}-forward-to", sink.address, f"--{name}-forward-on-disconnect"]
    return args, ports


def _relay_lines(text: str) -> dict[str, list[str | None]]:
    """For each event name, the unit= of its lines in order (None: no unit=)."""
    found: dict[str, list[str | None]] = {}
    for line in text.splitlines():
        event = re.search(r"(?:^| )event=(\S+)", line)
        if event:
            unit = _UNIT.search(line)
            found.setdefault(event.group(1), []).append(unit.group(1) if unit else None)
    return found


def _relay_units(text: str, ports: dict[str, int]) -> dict[str, tuple[str | None, str | None]]:
    """For each instance: the unit= on its intake_started line (found by its port) and on
    its message_stored line (found by the recipient name@example.com)."""
    lines = text.splitlines()

    def unit_of(pattern: str) -> str | None:
        (line,) = [line for line in lines if re.search(pattern, line)][:1]
        match = _UNIT.search(line)
        return match.group(1) if match else None

    return {name: (unit_of(rf"event=intake_started .*127\.0\.0\.1:{port}\b"),
                   unit_of(rf"event=message_stored .*to={name}@example\.com"))
            for name, port in ports.items()}


def test_two_instances_name_their_lines_in_one_log(tmp_path: Path, sink: Sink) -> None:
    """relay with instances in and out, both with --NAME-log-format=unit, one --log-file:
    each message's stored and forwarded lines name the instance it was sent to; every
    program's start line names its instance; no line names a wrong one."""
    args, ports = _instances(tmp_path, sink)
    log_file = tmp_path / "relay-%d.log"
    with _running(RELAY, [*args, "--log-file", str(log_file), "--in-log-format=unit",
                          "--out-log-format=unit"], tmp_path, ports):
        for name, port in ports.items():
            _send(port, name)
        sink.wait_for(2, 60)

        def logged() -> str:
            return "".join(path.read_text() for path in tmp_path.glob("relay-*.log"))

        assert wait_until(lambda: logged().count("event=message_forwarded") == 2, 30), logged()
    assert not any(spool_files(tmp_path / name) for name in ports)
    (log,) = tmp_path.glob("relay-*.log")  # %d: today's date
    text = log.read_text()
    for name in ports:
        stored = [line for line in text.splitlines() if f"to={name}@example.com" in line]
        assert {re.search(r"event=(\S+)", line).group(1) for line in stored  # type: ignore[union-attr]
                } == {"message_stored", "message_forwarded"}, stored
        assert all(f" unit={name} " in f"{line} " for line in stored), stored
    lines = _relay_lines(text)
    assert set(lines["intake_started"]) == {"in", "out"}, lines  # a line per worker
    assert sorted(map(str, lines["deliver_started"])) == ["in", "out"], lines
    assert all(unit in ("in", "out") for units in lines.values() for unit in units), lines


def test_an_unprefixed_log_format_unit_is_the_first_instances(tmp_path: Path) -> None:
    """--log-format=unit belongs to the first instance: in's message lines name it, out's
    do not; the start lines (intake's, and its parent's workers_started) name their
    instance in any case (E-MailRelay's "[out] smtp server on" above unmarked session
    lines)."""
    args, ports = _instances(tmp_path, None)
    with _running(RELAY, [*args, "--log-format=unit"], tmp_path, ports) as log:
        for name, port in ports.items():
            _send(port, name)
        assert wait_until(lambda: "to=out@example.com" in log(), 30)
        assert _relay_units(log(), ports) == {"in": ("in", "in"), "out": ("out", None)}
        # relay-intake's parent line, one per instance when it runs workers (several CPUs)
        started = _relay_lines(log()).get("workers_started", [])
        assert sorted(map(str, started)) == (["in", "out"] if default_processes() > 1
                                             else []), started


def _emailrelay_units(text: str, ports: dict[str, int],
                      clients: dict[str, int]) -> dict[str, tuple[str | None, str | None]]:
    """For each instance: the [NAME] on emailrelay's "smtp server on" line for its port and
    on its "smtp connection from" line for the client's port (None: no [NAME])."""
    lines = text.splitlines()

    def unit_of(text: str) -> str | None:
        (line,) = [line for line in lines if line.endswith(text)][:1]
        match = _BRACKETS.match(line)
        return match.group(1) if match else None

    return {name: (unit_of(f"smtp server on 127.0.0.1:{port}"),
                   unit_of(f"smtp connection from 127.0.0.1:{clients[name]}"))
            for name, port in ports.items()}


@needs_emailrelay
@pytest.mark.parametrize("extra", [
    [],
    ["--log-format=unit"],
    ["--log-format=unit", "--out-log-format=unit"],
    ["--out-log-format=unit"],
    ["--log-address", "--out-log-format=unit"],
], ids=["none", "first", "both", "out-only", "log-address"])
def test_the_same_lines_name_the_same_instances_as_emailrelay(tmp_path: Path,
                                                              extra: list[str]) -> None:
    """Two instances, one message to each, the same switches to emailrelay 2.6.1 and to
    relay: an instance is named on the same kinds of lines (its start line: "smtp server
    on" / intake_started; its session: "smtp connection from" / message_stored)."""
    found = {}
    for program in (str(EMAILRELAY), RELAY):
        work = tmp_path / Path(program).name
        work.mkdir()
        args, ports = _instances(work, None)
        with _running(program, [*args, *extra], work, ports) as log:
            clients = {name: _send(port, name) for name, port in ports.items()}
            if program == RELAY:
                assert wait_until(lambda: "to=out@example.com" in log(), 30)
                found[program] = _relay_units(log(), ports)
            else:
                assert wait_until(lambda: f"127.0.0.1:{clients['out']}" in log(), 30)
                found[program] = _emailrelay_units(log(), ports, clients)
    assert found[RELAY] == found[str(EMAILRELAY)], found
