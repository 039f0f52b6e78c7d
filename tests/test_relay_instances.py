"""`relay` with several E-MailRelay instances in one process (`--in-spool-dir`,
`--out-port`, ...), its admin interface on `--interface`'s addresses, and its exit codes for
command lines it refuses: parsed, planned, and run as real daemons beside the real
`emailrelay` 2.6.1 (those comparisons skip when the binary is absent)."""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import subprocess
import time
from pathlib import Path

import pytest
from support.foreground import foreground, listening
from support.processes import alive, children, command_line
from support.programs import BIN, program_env
from support.sink import Sink, free_port
from support.spool import spool_files
from support.system import wait_until

from tools.relay import UsageError, parse, plan

RELAY = str(BIN / "relay")
EMAILRELAY = Path(os.environ.get("EMAILRELAY_BIN", "/work/scratch/emailrelay-bin/emailrelay"))
ROOT = ["--user", "root"] if os.geteuid() == 0 else []
PROMPT = b"E-MailRelay> "
needs_emailrelay = pytest.mark.skipif(not EMAILRELAY.exists(),
                                      reason="the E-MailRelay 2.6.1 binary is not built here")


def _arg(args: list[str] | None, flag: str) -> str:
    assert args is not None
    return args[args.index(flag) + 1]


def _all(args: list[str] | None, flag: str) -> list[str]:
    assert args is not None
    return [args[i + 1] for i, word in enumerate(args) if word == flag]


# -- reading the command line ---------------------------------------------------------------

def test_each_spool_dir_prefix_names_an_instance() -> None:
    """--in-spool-dir and --out-spool-dir start instances in and out; --in-port and
    --out-port are theirs: each gets its own relay-intake (and relay-deliver where it
    forwards) on its own spool."""
    given = parse(["--in-spool-dir", "/x", "--in-port", "25", "--out-spool-dir", "/y",
                   "--out-port", "587", "--out-forward-to", "smarthost:25", *ROOT])
    assert (given.name, [other.name for other in given.more]) == ("in", ["out"])
    result = plan(given)
    (out,) = result.more
    assert _arg(result.intake, "--spool-dir") == "/x" and _arg(result.intake, "--port") == "25"
    assert result.deliver is None
    assert _arg(out.intake, "--spool-dir") == "/y" and _arg(out.intake, "--port") == "587"
    assert _arg(out.deliver, "--forward-to") == "smarthost:25"
    assert _arg(out.deliver, "--spool-dir") == "/y"


def test_switches_without_a_prefix_and_letters_belong_to_the_first_instance() -> None:
    """`-p 2525` and `--interface` without a prefix are the first instance's only (E-MailRelay
    2.6.1 listened on 127.0.0.1 for `in` and on every address for `out` with this line)."""
    result = plan(parse(["-p", "2525", "--in-spool-dir", "/x", "--interface", "127.0.0.2",
                         "--out-spool-dir", "/y", "--out-port", "2526", *ROOT]))
    (out,) = result.more
    assert _arg(result.intake, "--port") == "2525"
    assert _all(result.intake, "--interface") == ["127.0.0.2"]
    assert _arg(out.intake, "--port") == "2526"
    assert _all(out.intake, "--interface") == ["127.0.0.1"]  # relay's default, not in's


@pytest.mark.parametrize("argv,message", [
    (["--in-spool-dir", "/x", "--foo-port", "25"], "unknown switch --foo-port"),
    (["--in-spool-dir", "/x", "--out-port", "25"], "unknown switch --out-port"),
    (["--in-port", "25"], "unknown switch --in-port"),
    (["--in-spool-dir", "/x", "--in-bogus"], "unknown switch --in-bogus"),
])
def test_a_prefix_no_spool_dir_named_is_an_unknown_switch(argv: list[str], message: str) -> None:
    """A prefix without its --NAME-spool-dir, or a name that is no switch, is refused."""
    with pytest.raises(UsageError, match=message):
        parse(argv)


def test_process_wide_switches_count_for_the_first_instance_only() -> None:
    """--out-no-daemon and --out-log-file are ignored (with a note); the first instance's
    --log-file, --user and --tls-config reach every instance's programs; --in-no-daemon
    counts, since in is the first instance."""
    result = plan(parse(["--in-spool-dir", "/x", "--log-file", "/l/%d", "--tls-config",
                         "tlsv1.2", "--out-spool-dir", "/y", "--out-forward-to", "h:25",
                         "--out-no-daemon", "--out-log-file", "/other", "--out-poll", "60",
                         *ROOT]))
    (out,) = result.more
    assert result.daemon
    assert any(note.startswith("--out-no-daemon: ignored") for note in result.notes)
    assert any(note.startswith("--out-log-file: ignored") for note in result.notes)
    for args in (result.intake, out.intake, out.deliver):
        assert _arg(args, "--log-file") == "/l/%d" and _arg(args, "--tls-config") == "tlsv1.2"
    assert _arg(out.deliver, "--flush-every") == "60"
    assert not plan(parse(["--in-spool-dir", "/x", "--in-no-daemon", "--out-spool-dir",
                           "/y"])).daemon


def test_the_config_file_names_instances_too(tmp_path: Path) -> None:
    """The reference's example: `log`, `user root`, then in-... and out-... lines."""
    config = tmp_path / "emailrelay.conf"
    config.write_text("# emailrelay.conf\nlog\nuser root\n# in...\nin-spool-dir /var/spool/in\n"
                      "in-port 25\nin-remote-clients\nin-domain example.com\n# out...\n"
                      "out-spool-dir /var/spool/out\nout-port 587\nout-forward-on-disconnect\n"
                      "out-forward-to smtp.smarthost.com\n")
    result = plan(parse([str(config)]))
    (out,) = result.more
    assert "--remote-clients" in (result.intake or [])
    assert _arg(result.intake, "--domain") == "example.com"
    assert "--remote-clients" not in (out.intake or []) and "--domain" not in (out.intake or [])
    assert _arg(out.deliver, "--forward-to") == "smtp.smarthost.com"
    assert "--no-watch" not in (out.deliver or [])  # forward-on-disconnect: it watches


def test_as_client_in_a_further_instance_flushes_once_at_start() -> None:
    """--out-as-client H: that instance serves nothing and forwards its spool at start; the
    process goes on for the first instance (E-MailRelay ends only with the first's)."""
    result = plan(parse(["--spool-dir", "/x", "--out-spool-dir", "/y", "--out-as-client",
                         "h:25", *ROOT]))
    (out,) = result.more
    assert result.intake is not None and out.intake is None
    assert "--flush-at-start" in (out.deliver or []) and "--once" not in (out.deliver or [])
    assert not out.deliver_once and result.daemon


# -- real processes --------------------------------------------------------------------------

def _send(port: int, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail("a@example.com", ["b@example.net"],
                        f"Subject: {subject}\r\n\r\nbody\r\n".encode())


def _envelopes(spool: Path) -> list[str]:
    return [name for name in spool_files(spool) if name.endswith(".envelope")]


def test_two_instances_in_one_daemon(tmp_path: Path, sink: Sink) -> None:
    """One `relay --as-server` daemon, one pid file: instance in stores on its port and spool
    and sends nothing; instance out (--out-as-proxy) forwards each message to the smarthost;
    kill $(cat PIDFILE) stops every program of both and removes the pid file."""
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    inbox.mkdir(mode=0o770)
    outbox.mkdir(mode=0o770)
    pid_file = tmp_path / "relay.pid"
    in_port, out_port = free_port(), free_port()
    done = subprocess.run([RELAY, "--as-server", *ROOT, "--pid-file", str(pid_file),
                           "--in-spool-dir",
                           str(inbox), "--in-port", str(in_port), "--out-spool-dir",
                           str(outbox), "--out-port", str(out_port), "--out-as-proxy",
                           sink.address], cwd=tmp_path, env=program_env(),
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    pid = int(pid_file.read_text())
    try:
        programs = [command_line(child) for child in children(pid)]
        assert sum("-m intake.main" in p for p in programs) == 2, programs
        assert sum("-m deliver.main" in p for p in programs) == 1, programs
        _send(in_port, "to in")
        _send(out_port, "to out")
        sink.wait_for(1, 30)
        assert wait_until(lambda: not spool_files(outbox), 30)
        assert len(_envelopes(inbox)) == 1
        time.sleep(0.5)
        assert len(sink.messages) == 1 and b"Subject: to out" in sink.messages[0].data
    finally:
        os.kill(pid, signal.SIGTERM)
        assert wait_until(lambda: not alive(pid), 60)
    assert not pid_file.exists()
    assert not listening("127.0.0.1", in_port) and not listening("127.0.0.1", out_port)


def _two_instances(work: Path, program: str, sink: Sink) -> tuple[int, int]:
    """The reference's example config file (ports made free, out forwarding to *sink*), run
    by *program*: mail sent to each port; the envelopes left in each spool and the
    messages the smarthost got."""
    inbox, outbox = work / "in", work / "out"
    inbox.mkdir(mode=0o770)
    outbox.mkdir(mode=0o770)
    in_port, out_port = free_port(), free_port()
    config = work / "emailrelay.conf"
    config.write_text(f"# two instances\nlog\nno-syslog\nin-spool-dir {inbox}\n"
                      f"in-port {in_port}\nin-interface 127.0.0.1\nin-domain example.com\n"
                      f"out-spool-dir {outbox}\nout-port {out_port}\nout-interface 127.0.0.1\n"
                      f"out-forward-on-disconnect\nout-forward-to {sink.address}\n")
    before = len(sink.messages)
    with foreground(program, str(config), cwd=work, ports=[in_port, out_port]):
        _send(in_port, "to in")
        _send(out_port, "to out")
        assert wait_until(lambda: len(sink.messages) > before and not _envelopes(outbox), 30)
        time.sleep(1)
        return len(_envelopes(inbox)), len(sink.messages) - before


@needs_emailrelay
def test_a_config_file_with_two_instances_runs_as_in_emailrelay(tmp_path: Path,
                                                                sink: Sink) -> None:
    """The same config file, in- and out- lines, given to emailrelay 2.6.1 and to relay:
    each listens on both ports; what goes to in stays in in's spool, what goes to out is
    forwarded; the same counts from both."""
    (tmp_path / "e").mkdir()
    (tmp_path / "r").mkdir()
    theirs = _two_instances(tmp_path / "e", str(EMAILRELAY), sink)
    ours = _two_instances(tmp_path / "r", RELAY, sink)
    assert theirs == ours == (1, 1)


USAGE_ERRORS = [
    ["--frobnicate"],
    ["--port"],
    ["--in-spool-dir", "SPOOL", "--foo-port", "25"],
    ["--in-spool-dir", "SPOOL", "--out-port", "25"],
    ["--spool-dir", "SPOOL", "--forward"],
    ["--spool-dir", "SPOOL", "--server-auth-config", "m:"],
]


@pytest.mark.parametrize("argv", USAGE_ERRORS)
def test_usage_errors_exit_1_as_in_emailrelay(tmp_path: Path, argv: list[str]) -> None:
    """An unknown switch, a missing value, a prefix no spool directory names, a switch
    without the one it needs: relay exits 1 with one line, as emailrelay 2.6.1 does (checked
    on the binary when it is here)."""
    argv = [str(tmp_path) if word == "SPOOL" else word for word in argv]
    programs = [RELAY, *([str(EMAILRELAY)] if EMAILRELAY.exists() else [])]
    for program in programs:
        done = subprocess.run([program, "--no-daemon", *ROOT, *argv], cwd=tmp_path,
                              env=program_env(), capture_output=True, text=True, timeout=60,
                              check=False)
        assert done.returncode == 1, (program, done.stderr)
        assert "error" in done.stderr or program == RELAY, done.stderr
    ours = subprocess.run([RELAY, "--no-daemon", *ROOT, *argv], cwd=tmp_path,
                          env=program_env(), capture_output=True, text=True, timeout=60)
    assert ours.stderr.startswith("relay: ") and ours.stderr.count("\n") == 1, ours.stderr


def test_a_refused_switch_exits_64(tmp_path: Path) -> None:
    """--out-pop (POP, outside relay's job) in a further instance: exit 64 with the reason."""
    done = subprocess.run([RELAY, "--no-daemon", *ROOT, "--spool-dir", str(tmp_path),
                           "--out-spool-dir", str(tmp_path), "--out-pop"], env=program_env(),
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 64 and "POP" in done.stderr and done.stderr.count("\n") == 1


def test_a_bad_value_exits_1_and_a_port_in_use_2(tmp_path: Path) -> None:
    """--port 99999 (emailrelay: 'port number too big', exit 1) and an SMTP or admin port in
    use (emailrelay: 'socket bind error', exit 2): relay exits the same."""
    base = [RELAY, "--no-daemon", *ROOT, "--spool-dir", str(tmp_path), "--interface",
            "127.0.0.1"]
    bad = subprocess.run([*base, "--port", "99999"], env=program_env(), capture_output=True,
                         text=True, timeout=60, check=False)
    assert bad.returncode == 1, bad.stderr
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = str(holder.getsockname()[1])
        for extra in (["--port", taken], ["--port", str(free_port()), "--admin", taken]):
            done = subprocess.run([*base, *extra], env=program_env(), capture_output=True,
                                  text=True, timeout=120, check=False)
            assert done.returncode == 2, (extra, done.stderr)


# -- the admin interface's addresses ----------------------------------------------------------

def _admin_list(host: str, port: int) -> bytes:
    with socket.create_connection((host, port), timeout=30) as client:
        client.sendall(b"list\r\n")
        data = b""
        while not data.endswith(PROMPT):
            chunk = client.recv(4096)
            assert chunk, data
            data += chunk
        return data


def test_interface_addresses_are_shared_out_as_emailrelay_does() -> None:
    """An address without a qualifier is the SMTP server's and the admin interface's;
    smtp= and admin= are the one server's; pop= neither's."""
    result = plan(parse(["-d", *ROOT, "-I", "127.0.0.1,smtp=::1", "-I", "admin=127.0.0.2",
                         "--interface", "pop=127.0.0.3"]))
    assert _all(result.intake, "--interface") == ["127.0.0.1", "::1"]
    assert result.admin_interfaces == ["127.0.0.1", "127.0.0.2"]


@pytest.mark.parametrize("interface,admin_on,smtp_on", [
    ("admin=127.0.0.2", "127.0.0.2", "127.0.0.1"),
    ("127.0.0.3", "127.0.0.3", "127.0.0.3"),
    ("smtp=127.0.0.4,admin=127.0.0.5", "127.0.0.5", "127.0.0.4"),
])
def test_the_admin_server_listens_on_its_interface(tmp_path: Path, interface: str,
                                                   admin_on: str, smtp_on: str) -> None:
    """--interface admin=ADDRESS, or an address without a qualifier, is where the admin port
    listens, and nowhere else (E-MailRelay 2.6.1's rule; checked on the binary by
    test_emailrelay_binds_its_admin_port_as_relay)."""
    smtp_port, admin_port = free_port(), free_port()
    with foreground(RELAY, "--spool-dir", str(tmp_path), "--port", str(smtp_port),
                     "--admin", str(admin_port), "--interface", interface, cwd=tmp_path,
                     ports=[]):
        assert wait_until(lambda: listening(admin_on, admin_port), 90)
        assert _admin_list(admin_on, admin_port) == b"<none>\r\n" + PROMPT
        assert listening(smtp_on, smtp_port)
        for other in {"127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.5"} - {admin_on}:
            assert not listening(other, admin_port), other


@needs_emailrelay
def test_emailrelay_binds_its_admin_port_as_relay(tmp_path: Path) -> None:
    """The binary with the same --interface values: its admin port answers on the same
    address, and not on 127.0.0.1."""
    for interface, admin_on in (("admin=127.0.0.2", "127.0.0.2"), ("127.0.0.3", "127.0.0.3")):
        smtp_port, admin_port = free_port(), free_port()
        with foreground(str(EMAILRELAY), "--spool-dir", str(tmp_path), "--port",
                         str(smtp_port), "--admin", str(admin_port), "--interface", interface,
                         cwd=tmp_path, ports=[]):
            assert wait_until(lambda: listening(admin_on, admin_port), 30)
            assert _admin_list(admin_on, admin_port) == b"<none>\r\n" + PROMPT
            assert not listening("127.0.0.1", admin_port)


def test_each_instance_has_its_own_admin_interface(tmp_path: Path) -> None:
    """--out-admin PORT: instance out's admin interface lists out's spool, the first
    instance's lists its own."""
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    inbox.mkdir(mode=0o770)
    outbox.mkdir(mode=0o770)
    in_port, out_port, in_admin, out_admin = (free_port() for _ in range(4))
    with foreground(RELAY, "--in-spool-dir", str(inbox), "--in-port", str(in_port),
                     "--in-admin", str(in_admin), "--out-spool-dir", str(outbox),
                     "--out-port", str(out_port), "--out-admin", str(out_admin),
                     cwd=tmp_path, ports=[in_port, out_port, in_admin, out_admin]):
        _send(out_port, "to out")
        (stored,) = _envelopes(outbox)
        assert _admin_list("127.0.0.1", in_admin) == b"<none>\r\n" + PROMPT
        listed = _admin_list("127.0.0.1", out_admin)
        assert listed == stored.removesuffix(".envelope").encode() + b"\r\n" + PROMPT
