"""The `relay` command's reading of E-MailRelay's command line (parsing and planning only)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tools import emailrelay_switches as table
from tools.relay import UsageError, parse, plan

# E-MailRelay 2.6.1's `emailrelay --help --verbose` on Unix: every switch and its letter.
EMAILRELAY_2_6_1 = {
    "as-client": "q", "as-proxy": "y", "as-server": "d", "spool-dir": "s", "verbose": "v",
    "help": "h", "log": "l", "port": "p", "remote-clients": "r", "version": "V",
    "address-verifier": None, "admin": "a", "admin-terminate": "Q", "anonymous": "A",
    "client-auth": "C", "client-auth-config": None, "client-smtp-config": "c",
    "client-tls": "j", "client-tls-certificate": None, "client-tls-connection": "b",
    "client-tls-required": None, "client-tls-server-name": None, "client-tls-verify": None,
    "client-tls-verify-name": None, "debug": "g", "delivery-dir": None, "dnsbl": None,
    "domain": "D", "dont-serve": "x", "filter": "z", "filter-timeout": "W", "forward": "f",
    "forward-on-disconnect": "1", "forward-to": "o", "interface": "I", "localedir": None,
    "log-address": None, "log-file": "N", "log-format": None, "log-time": "L",
    "no-daemon": "t", "no-smtp": "X", "no-syslog": "n", "pid-file": "i", "poll": "O",
    "pop": "B", "pop-by-name": "J", "pop-no-delete": "G", "pop-port": "E",
    "prompt-timeout": "w", "server-auth": "S", "server-auth-config": None,
    "server-smtp-config": "Z", "server-tls": "K", "server-tls-certificate": None,
    "server-tls-connection": None, "server-tls-required": None, "server-tls-verify": None,
    "size": "M", "syslog": "k", "tls-config": "9", "user": "u", "client-filter": "Y",
    "client-interface": "6", "close-stderr": "e", "connection-timeout": "U",
    "idle-timeout": None, "pop-auth": "F", "response-timeout": "T", "forward-to-all": None,
    "forward-to-some": None, "immediate": "m",
}


def test_the_table_has_every_emailrelay_switch_with_its_letter() -> None:
    """All 72 switches of 2.6.1 are in the table, long names and letters exactly (besides the
    two Windows-only ones, which are refused, and relay's own --check)."""
    assert len(EMAILRELAY_2_6_1) == 72
    ours = {s.name: s.short for s in table.SWITCHES
            if s.name not in (*table.WINDOWS_ONLY, *table.RELAY_ONLY)}
    assert ours == EMAILRELAY_2_6_1


def test_the_three_letters_that_meant_something_else() -> None:
    """-Y is --client-filter, -Z --server-smtp-config, -K the flag --server-tls."""
    given = parse(["-Y", "/cf", "-Z", "pipelining", "-K", "--server-tls-certificate", "/c"])
    assert given.value("client-filter") == "/cf"
    assert given.value("server-smtp-config") == "pipelining"
    assert given.has("server-tls") and given.value("server-tls") is None


def test_bundled_letters_and_attached_values() -> None:
    """-dvl bundles flags; -p25 and -p 25 both give the port."""
    given = parse(["-dvl", "-p25", "-s", "/s"])
    assert all(given.has(name) for name in ("as-server", "verbose", "log"))
    assert given.value("port") == "25" and given.value("spool-dir") == "/s"


def test_optional_values_only_with_an_equals_sign(tmp_path: Path) -> None:
    """--syslog and --syslog=local0; a word after --syslog is not its value."""
    config = tmp_path / "e.conf"
    config.write_text("port 25\n")
    assert parse(["--syslog"]).value("syslog") is None
    assert parse(["--syslog=local0"]).value("syslog") == "local0"
    assert parse(["--syslog", str(config)]).config_file == str(config)


def test_as_proxy_plans_intake_and_a_watching_deliver() -> None:
    """--as-proxy: intake and deliver; deliver forwards as mail arrives, all recipients."""
    result = plan(parse(["--as-proxy", "smarthost:smtp", "-p", "10025", "-s", "/s",
                         "-z", "/f", "-Y", "/cf", "-r", "-v", "-u", "root"]))
    assert result.intake is not None and result.deliver is not None
    assert result.daemon and result.close_stderr
    assert "--remote-clients" in result.intake and "/f" in result.intake
    assert result.deliver[result.deliver.index("--forward-to") + 1] == "smarthost:smtp"
    assert "--no-watch" not in result.deliver and "--forward-to-all" in result.deliver
    assert "--client-filter" in result.deliver and "--verbose" in result.deliver
    assert "--flush-every" not in result.deliver


def deliver_option(argv: list[str], name: str) -> list[str]:
    """The values of relay-deliver's option *name* in the plan of `relay argv` (deliver's
    own arguments and --immediate's)."""
    result = plan(parse(argv))
    found = []
    for args in (result.deliver or [], result.immediate or []):
        found += [args[i + 1] for i, word in enumerate(args) if word == name]
    return found


@pytest.mark.parametrize(("argv", "expected"), [
    (["--as-proxy", "h:25"], ["1800"]),
    (["--as-proxy", "h:25", "-T", "30"], ["30"]),
    (["--as-client", "h:25"], ["1800"]),
    (["--as-server", "-o", "h:25", "--response-timeout", "90"], ["90"]),
    (["--as-proxy", "h:25", "--immediate"], ["1800", "1800"]),
])
def test_the_response_timeout_is_emailrelays_unless_given(argv: list[str],
                                                          expected: list[str]) -> None:
    """Without -T, relay-deliver waits E-MailRelay 2.6.1's 1800 s for a reply (not its own
    60 s); -T or --response-timeout is passed as given, once."""
    assert deliver_option([*argv, "-u", "root"], "--response-timeout") == expected


@pytest.mark.parametrize(("argv", "expected"), [
    (["--as-server"], "1800"),
    (["--as-proxy", "h:25", "--idle-timeout", "45"], "45"),
])
def test_the_idle_timeout_is_emailrelays_unless_given(argv: list[str], expected: str) -> None:
    """Without --idle-timeout, relay-intake waits E-MailRelay 2.6.1's 1800 s for a silent
    client (its source's default; its --help says 60), passed once."""
    intake = plan(parse([*argv, "-u", "root"])).intake
    assert intake is not None
    found = [intake[i + 1] for i, word in enumerate(intake) if word == "--idle-timeout"]
    assert found == [expected]


def test_a_server_with_poll_forwards_the_whole_spool_every_period() -> None:
    """--as-server --forward-to H --poll 30: deliver flushes every 30 s, no watch."""
    result = plan(parse(["--as-server", "-o", "h:25", "-O", "30", "-u", "root"]))
    assert result.deliver is not None
    assert "--no-watch" in result.deliver
    assert result.deliver[result.deliver.index("--flush-every") + 1] == "30"


def test_as_client_is_one_flush_in_the_foreground() -> None:
    """--as-client: no intake, no daemon, deliver --once --flush, no syslog."""
    result = plan(parse(["--as-client", "h:25", "-s", "/s", "-u", "root"]))
    assert result.intake is None and result.deliver_once and not result.daemon
    assert result.deliver is not None
    assert "--once" in result.deliver and "--flush" in result.deliver
    assert "--syslog" not in result.deliver


def test_interface_lists_and_qualifiers() -> None:
    """Comma lists and repeats; smtp= for intake; admin= and pop= are not intake's."""
    result = plan(parse(["-d", "-u", "root", "-I", "127.0.0.1,smtp=::1", "-I",
                         "admin=127.0.0.2", "--interface", "pop=127.0.0.3"]))
    assert result.intake is not None
    listened = [result.intake[i + 1] for i, word in enumerate(result.intake)
                if word == "--interface"]
    assert listened == ["127.0.0.1", "::1"]


def test_relative_paths_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon leaves the working directory: every path switch is made absolute first."""
    monkeypatch.chdir(tmp_path)
    result = plan(parse(["-d", "-u", "root", "-s", "spool", "--pid-file", "r.pid",
                         "--log-file", "log/%d.log", "-z", "net:localhost:9"]))
    assert result.intake is not None
    assert f"{tmp_path}/spool" in result.intake and result.pid_file == f"{tmp_path}/r.pid"
    assert f"{tmp_path}/log/%d.log" in result.intake
    assert "net:localhost:9" in result.intake


def test_log_switches_reach_every_program() -> None:
    """--syslog=local3, --log-time, --log-format=time,address and -N reach both programs."""
    result = plan(parse(["-y", "h:25", "-u", "root", "--syslog=local3", "-N", "/l/%d",
                         "--log-format=address"]))
    assert result.intake is not None and result.deliver is not None
    for args in (result.intake, result.deliver):
        assert args[args.index("--syslog-facility") + 1] == "local3"
        assert "--no-log-time" in args and args[args.index("--log-file") + 1] == "/l/%d"
    timed = plan(parse(["-d", "-u", "root", "--log-format=time,msgid"]))
    assert timed.intake is not None and "--log-time" in timed.intake


def test_server_auth_config_goes_to_intake_and_its_absence_offers_auth_without_tls() -> None:
    """--server-auth-config reaches relay-intake as given; -S without it offers every
    mechanism before TLS too (--server-auth-insecure), E-MailRelay's default."""
    config = plan(parse(["-d", "-u", "root", "-S", "/s", "--server-auth-config", "m:;a:plain"]))
    default = plan(parse(["-d", "-u", "root", "-S", "/s"]))
    assert config.intake is not None and default.intake is not None
    assert config.intake[config.intake.index("--server-auth-config") + 1] == "m:;a:plain"
    assert "--server-auth-insecure" not in config.intake
    assert "--server-auth-insecure" in default.intake


def test_server_tls_certificate_twice_is_key_then_certificate() -> None:
    """--server-tls-certificate KEY --server-tls-certificate CERT (E-MailRelay's two-file form)."""
    result = plan(parse(["-d", "-u", "root", "-K", "--server-tls-certificate", "/k.pem",
                         "--server-tls-certificate", "/c.pem"]))
    assert result.intake is not None
    args = result.intake
    assert args[args.index("--server-tls-certificate") + 1] == "/c.pem"
    assert args[args.index("--server-tls-key") + 1] == "/k.pem"


def test_config_file_lines(tmp_path: Path) -> None:
    """E-MailRelay's config file: 'name value', bare flags, comments; the command line first."""
    config = tmp_path / "emailrelay.conf"
    config.write_text("# emailrelay.conf\nspool-dir /var/spool/x\n#verbose\nremote-clients\n"
                      "port 2525\nforward-to smarthost:25\npoll 60\n")
    given = parse(["--port", "10025", str(config)])
    assert given.value("port") == "10025" and given.value("spool-dir") == "/var/spool/x"
    assert given.has("remote-clients") and not given.has("verbose")
    assert given.value("poll") == "60"


@pytest.mark.parametrize("argv,message", [
    (["--bogus"], "unknown switch --bogus"),
    (["-%"], "unknown switch -%"),
    (["--port"], "--port needs a value"),
    (["--remote-clients=yes"], "takes no value"),
    (["a.conf", "b.conf"], "only the config file"),
])
def test_bad_command_lines_are_refused(argv: list[str], message: str) -> None:
    """Each kind of bad command line is refused with a message that says what is wrong."""
    with pytest.raises(UsageError, match=message):
        parse(argv)


@pytest.mark.parametrize("argv,message", [
    (["--as-server", "--as-client", "h:25"], "cannot be combined"),
    (["--poll", "5"], "--poll needs --forward-to"),
    (["--forward"], "--forward needs --forward-to"),
    (["--pop"], "not a POP server"),
    (["-B"], "not a POP server"),
    (["--hidden"], "Windows only"),
    (["--server-tls"], "need --server-tls-certificate"),
    (["--client-auth-config", "m:plain"], "requires --client-auth"),
    (["--log-format", "colour"], "unknown field 'colour'"),
])
def test_plans_that_are_refused(argv: list[str], message: str) -> None:
    """Switch combinations E-MailRelay needs more for, and switches relay refuses, say why."""
    with pytest.raises(UsageError, match=message):
        plan(parse(argv))


def test_every_refused_switch_gives_one_line_reason() -> None:
    """Each refused switch has a reason of one line."""
    for switch in table.SWITCHES:
        reason = table.refusal(switch)
        if reason is not None:
            assert "\n" not in reason and len(reason) > 10


@pytest.mark.skipif(os.geteuid() != 0, reason="the default --user applies to root only")
def test_root_switches_to_daemon_by_default() -> None:
    """Started as root without --user, the programs run as 'daemon' (E-MailRelay's default)."""
    result = plan(parse(["-d"]))
    assert result.intake is not None
    assert result.intake[result.intake.index("--user") + 1] == "daemon"
    assert "--user" not in (plan(parse(["-d", "-u", "root"])).intake or [])


def test_tls_switches_reach_their_program() -> None:
    """The client TLS switches go to deliver, the server ones to intake, --tls-config to both;
    --server-tls-connection needs the certificate and passes it on."""
    result = plan(parse(["-y", "h:465", "-u", "root", "-b", "--client-tls-certificate",
                         "/k.pem", "--client-tls-certificate", "/c.pem",
                         "--client-tls-server-name", "mx.example.net",
                         "--client-tls-verify", "<default>", "--client-tls-verify-name",
                         "mx.example.net", "--server-tls-connection",
                         "--server-tls-certificate", "/s.pem", "--server-tls-verify", "/ca.pem",
                         "--tls-config", "tlsv1.2"]))
    assert result.intake is not None and result.deliver is not None
    deliver, intake = result.deliver, result.intake
    assert [deliver[i + 1] for i, w in enumerate(deliver) if w == "--client-tls-certificate"] \
        == ["/k.pem", "/c.pem"]
    assert deliver[deliver.index("--client-tls-verify") + 1] == "system"
    assert deliver[deliver.index("--client-tls-verify-name") + 1] == "mx.example.net"
    assert "--server-tls-connection" in intake and "/s.pem" in intake
    assert intake[intake.index("--server-tls-verify") + 1] == "/ca.pem"
    assert "tlsv1.2" in intake and "tlsv1.2" in deliver


def test_check_and_admin_are_planned() -> None:
    """--check goes to every program; --admin's port and admin= addresses are kept for
    tools.admin, with a one-off flush command for its flush."""
    result = plan(parse(["-d", "-u", "root", "-o", "h:25", "--check", "--admin", "10026",
                         "-Q", "-I", "admin=127.0.0.1"]))
    assert result.check and result.intake is not None and "--check" in result.intake
    assert result.admin_port == "10026" and result.admin_terminate
    assert result.admin_interfaces == ["127.0.0.1"]
    assert result.flush_command is not None and result.flush_command[-2:] == ["--once", "--flush"]


def test_anonymous_scopes() -> None:
    """--anonymous alone means every scope; with a value, those scopes go to intake."""
    every = plan(parse(["-d", "-u", "root", "-A"]))
    some = plan(parse(["-d", "-u", "root", "--anonymous=content"]))
    assert every.intake is not None and some.intake is not None
    assert every.intake[every.intake.index("--anonymous") + 1] == "vrfy,server,content,client"
    assert some.intake[some.intake.index("--anonymous") + 1] == "content"
