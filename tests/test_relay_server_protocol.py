"""`relay`'s SMTP server protocol switches, run as E-MailRelay is run: `--server-smtp-config`
(`-Z`), `--server-auth-config` and `--server-auth`, each through a real `relay` daemon (its
relay-intake) driven by smtplib on 127.0.0.1.

What each test expects is what E-MailRelay 2.6.1 did with the same switches when run by
hand beside relay (docs/emailrelay.md): without `-Z` it advertises PIPELINING and 8BITMIME
but not SMTPUTF8, wants angle brackets, and takes a UTF-8 mailbox without SMTPUTF8; with
`--server-auth` and no `--server-auth-config` it offers every mechanism before TLS too.
"""

from __future__ import annotations

import os
import signal
import smtplib
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from support import tls
from support.programs import BIN, program_env
from support.sink import free_port
from support.spool import accepted
from support.system import wait_until

from tools.emailrelay_server import intake_options
from tools.relay_args import UsageError, parse

RELAY = str(BIN / "relay")


def run_relay(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`relay ARGS` in *workdir*: returns when it does (a daemon: once it listens)."""
    return subprocess.run([RELAY, *args], cwd=workdir, env=program_env(), text=True,
                          capture_output=True, timeout=90, check=False)


class Relay:
    """A `relay -d` daemon on a free port, spooling into workdir/queue; stopped by its pid."""

    def __init__(self, workdir: Path, *args: str) -> None:
        self.port = free_port()
        self.queue = workdir / "queue"
        pid_file = workdir / f"relay-{self.port}.pid"
        self.done = run_relay(workdir, "-d", "-u", "root", "-s", str(self.queue), "-p",
                              str(self.port), "--pid-file", str(pid_file), *args)
        assert self.done.returncode == 0, self.done.stderr
        self.pid = int(pid_file.read_text().strip())

    def smtp(self) -> smtplib.SMTP:
        client = smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.test", timeout=15)
        client._host = "relay.test"  # the name the test certificate is for
        return client

    def stop(self) -> None:
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        assert wait_until(lambda: not Path(f"/proc/{self.pid}").exists()
                          or " Z " in Path(f"/proc/{self.pid}/stat").read_text(), 45)


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A working directory with an empty spool directory, queue/."""
    with tempfile.TemporaryDirectory(prefix="rl-srv-", dir="/tmp") as name:
        base = Path(name)
        (base / "queue").mkdir(mode=0o770)
        yield base


@pytest.fixture
def relays() -> Iterator[list[Relay]]:
    running: list[Relay] = []
    yield running
    for daemon in running:
        daemon.stop()


def extensions(client: smtplib.SMTP) -> list[str]:
    code, text = client.ehlo()
    assert code == 250
    return text.decode().split("\n")[1:]


def test_without_z_relay_serves_what_emailrelay_serves(workdir: Path,
                                                       relays: list[Relay]) -> None:
    """No -Z: PIPELINING and 8BITMIME, no SMTPUTF8; MAIL FROM without angle brackets is
    refused; a UTF-8 mailbox without SMTPUTF8 is taken and stored as an SMTPUTF8 message."""
    daemon = Relay(workdir)
    relays.append(daemon)
    with daemon.smtp() as client:
        found = extensions(client)
        assert "PIPELINING" in found and "8BITMIME" in found and "SMTPUTF8" not in found
        assert client.docmd("MAIL FROM:a@example.com")[0] == 553
        client.send("MAIL FROM:<j\u00f6@example.com>\r\n".encode())
        assert client.getreply()[0] == 250
        assert client.docmd("RCPT TO:<b@example.net>")[0] == 250
        assert client.docmd("DATA")[0] == 354
        client.send(b"Subject: s\r\n\r\nbody\r\n.\r\n")
        assert client.getreply()[0] == 250
    assert wait_until(lambda: len(accepted(daemon.queue)) == 1, 20)
    ((envelope, _),) = accepted(daemon.queue)
    assert envelope.sender == "j\u00f6@example.com" and envelope.utf8_mailbox_names


def test_z_features_change_what_is_served(workdir: Path, relays: list[Relay]) -> None:
    """-Z -pipelining,+smtputf8,smtputf8strict,nostrictparsing (and -Z given twice):
    no PIPELINING, SMTPUTF8 offered, a UTF-8 mailbox needs SMTPUTF8, no brackets needed."""
    daemon = Relay(workdir, "-Z", "-pipelining,+smtputf8", "-Z",
                   "smtputf8strict,nostrictparsing")
    relays.append(daemon)
    with daemon.smtp() as client:
        found = extensions(client)
        assert "PIPELINING" not in found and "SMTPUTF8" in found
        client.send("MAIL FROM:<j\u00f6@example.com>\r\n".encode())
        assert client.getreply()[0] == 553
        assert client.docmd("MAIL FROM:a@example.com")[0] == 250


def test_chunking_is_refused_and_an_unknown_item_only_warned_about(
        workdir: Path, relays: list[Relay]) -> None:
    """-Z +chunking exits 64 with one line saying why; an unknown item is a warning and
    relay starts (E-MailRelay warns 'unknown smtp-config item' and goes on)."""
    refused = run_relay(workdir, "-d", "-u", "root", "-s", str(workdir / "queue"), "-p",
                        str(free_port()), "-Z", "+chunking")
    assert refused.returncode == 64
    assert refused.stderr.count("\n") == 1 and "CHUNKING" in refused.stderr
    daemon = Relay(workdir, "-Z", "warp,pipelining")
    relays.append(daemon)
    assert "unknown item 'warp'" in daemon.done.stderr
    with daemon.smtp() as client:
        assert "PIPELINING" in extensions(client)


def test_server_auth_config_needs_server_auth(workdir: Path) -> None:
    """--server-auth-config without --server-auth: refused before anything starts (E-MailRelay
    says 'the --server-auth-config option requires --server-auth' and exits 1; so does
    relay)."""
    done = run_relay(workdir, "-d", "-u", "root", "-s", str(workdir / "queue"), "-p",
                     str(free_port()), "--server-auth-config", "m:;a:plain")
    assert done.returncode == 1
    assert done.stderr == ("relay: the --server-auth-config option requires "
                           "--server-auth\n")


def test_server_auth_without_config_offers_every_mechanism_before_tls(
        workdir: Path, relays: list[Relay]) -> None:
    """-S FILE alone, no TLS: AUTH CRAM-SHA512 CRAM-SHA256 CRAM-SHA1 CRAM-MD5 PLAIN LOGIN is
    offered and LOGIN works, as E-MailRelay offers its mechanisms without TLS when no
    --server-auth-config limits them."""
    secrets = workdir / "server.auth"
    secrets.write_text("server plain alice s3cret\n")
    daemon = Relay(workdir, "-S", str(secrets))
    relays.append(daemon)
    with daemon.smtp() as client:
        assert ("AUTH CRAM-SHA512 CRAM-SHA256 CRAM-SHA1 CRAM-MD5 PLAIN LOGIN"
                in extensions(client))
        client.login("alice", "s3cret")
        client.sendmail("a@example.com", ["b@example.net"], b"Subject: s\r\n\r\nbody\r\n")
    assert wait_until(lambda: len(accepted(daemon.queue)) == 1, 20)


def test_server_auth_config_lists_before_and_after_starttls(
        workdir: Path, relays: list[Relay], ca: trustme.CA) -> None:
    """-S FILE --server-auth-config m:;a:plain --server-tls: no AUTH before STARTTLS (MAIL is
    530), AUTH PLAIN only after it, and PLAIN authenticates."""
    secrets = workdir / "server.auth"
    secrets.write_text("server plain alice s3cret\n")
    cert, key = tls.server_files(ca, workdir, "relay.test")
    daemon = Relay(workdir, "-S", str(secrets), "--server-auth-config", "m:;a:plain", "-K",
                   "--server-tls-certificate", str(key), "--server-tls-certificate",
                   str(cert))
    relays.append(daemon)
    with daemon.smtp() as client:
        assert not [line for line in extensions(client) if line.startswith("AUTH")]
        assert client.docmd("MAIL FROM:<a@example.com>")[0] == 530
        client.starttls(context=tls.client_context(ca))
        assert "AUTH PLAIN" in extensions(client)
        assert client.docmd("AUTH LOGIN")[0] == 504
        client.login("alice", "s3cret")


def _z_help() -> str:
    """The -Z entry of `relay --help --verbose`, its lines joined."""
    text = subprocess.run([RELAY, "--help", "--verbose"], env=program_env(), text=True,
                          capture_output=True, timeout=30, check=True).stdout
    entry = text[text.index("--server-smtp-config"):]
    return " ".join(entry[: entry.index("\n  -", 1)].split())


def test_the_z_help_says_what_each_item_does() -> None:
    """Every item `relay --help` names for -Z does what the help says: the four that change
    relay-intake's options each change them, noalabels and nolinger change nothing,
    +chunking is refused."""
    help_text = _z_help()
    default = intake_options(parse([]), [])
    changing = {"-pipelining": "--no-pipelining", "+smtputf8": "--no-smtputf8",
                "smtputf8strict": "domain", "nostrictparsing": "--require-angle-brackets"}
    for item, option in changing.items():
        assert item in help_text, item
        changed = intake_options(parse(["-Z", item]), [])
        assert changed != default, item
        assert (option in changed) != (option in default), item
    assert "noalabels and nolinger change nothing" in help_text
    for item in ("noalabels", "nolinger"):
        assert intake_options(parse(["-Z", item]), []) == default, item
    assert "+chunking is refused" in help_text
    with pytest.raises(UsageError, match="no BDAT"):
        intake_options(parse(["-Z", "+chunking"]), [])


def test_size_is_offered_by_default_and_m0_offers_none(workdir: Path,
                                                      relays: list[Relay]) -> None:
    """Without -M relay-intake offers SIZE 33554432 (E-MailRelay 2.6.1 offers no SIZE);
    -M 1000 offers SIZE 1000; -M 0 no limit and no SIZE, as E-MailRelay without -M."""
    for args, size in (((), "SIZE 33554432"), (("-M", "1000"), "SIZE 1000"), (("-M", "0"), None)):
        daemon = Relay(workdir, *args)
        relays.append(daemon)
        with daemon.smtp() as client:
            found = [line for line in extensions(client) if line.startswith("SIZE")]
        assert found == ([size] if size else []), args
        daemon.stop()
