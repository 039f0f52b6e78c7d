"""The `relay` command's mapping of E-MailRelay switches (pure parsing, no processes)."""

from __future__ import annotations

import pytest

from tools.relay import UsageError, parse


def test_as_proxy_maps_switches_to_each_program() -> None:
    """Switches go to the program that owns them; shared ones go to both."""
    plan = parse(["--as-proxy", "smarthost:smtp", "-p", "10025", "--spool-dir", "/s",
                  "--filter", "/f", "--client-filter", "/cf", "-r", "--poll=30", "-v"])
    assert plan.mode == "as-proxy"
    assert plan.forward_to == "smarthost:smtp"
    assert plan.intake_args == ["--port", "10025", "--spool-dir", "/s", "--filter", "/f",
                                "--remote-clients", "--verbose"]
    assert plan.deliver_args == ["--spool-dir", "/s", "--client-filter", "/cf", "--poll", "30",
                                 "--verbose"]


def test_daemon_switches_are_accepted_and_noted() -> None:
    """--no-daemon, --log, --no-syslog are accepted with a note, and change nothing."""
    plan = parse(["-d", "-t", "-l", "-n"])
    assert plan.mode == "as-server"
    assert plan.intake_args == [] and len(plan.notes) == 3


@pytest.mark.parametrize("argv,message", [
    (["--bogus"], "unknown switch --bogus"),
    (["-%"], "unknown switch -%"),
    (["--port"], "--port needs a value"),
    (["--remote-clients=yes"], "takes no value"),
    (["--as-server", "--as-client", "h:25"], "cannot be combined"),
    (["stray"], "unexpected argument"),
])
def test_bad_command_lines_are_refused(argv: list[str], message: str) -> None:
    """Each kind of bad command line is refused with a message that says what is wrong."""
    with pytest.raises(UsageError, match=message):
        parse(argv)
