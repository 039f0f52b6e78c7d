"""AUTH guessing across connections: failures counted per client address over a window
(like Postfix's anvil), 454 for that address afterwards, one `auth_blocked` line per
cut-off, and the fail2ban filter of docs/intake.md matched against that very line (with
Python's re and, when it is installed, fail2ban-regex itself).
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from support.intake import IntakeThread, RawClient

from intake.limits import AuthFailures

DOCS = Path(__file__).resolve().parent.parent / "docs" / "intake.md"


def plain(user: str, password: str) -> bytes:
    return b"AUTH PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode())


def auth_intake(spool_dir: Path, tmp_path: Path, *args: str) -> IntakeThread:
    secrets = tmp_path / "server.auth"
    secrets.write_text("server plain alice s3cret\n")
    return IntakeThread(spool_dir, "--server-auth", str(secrets), "--server-auth-insecure",
                        *args)


def guesser(port: int, replies: list[str], source: str = "127.0.0.1") -> None:
    """One connection that makes three wrong guesses, collecting every reply code (a 421
    that closes the connection, after a guess or after the third, included)."""
    raw = RawClient(port, source=source)
    raw.command(b"EHLO guesser.test")
    try:
        for number in range(4):
            if number < 3:
                raw.send(plain("alice", f"guess{number}") + b"\r\n")
            reply = raw.reply()[:3]
            if not reply:
                break
            replies.append(reply)
            if reply == "421":
                break
    except OSError:  # reset: the server closed after its 421
        pass
    raw.close()


def test_thirty_connections_get_exactly_the_limit_of_guesses(
        spool_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With the defaults, 30 connections at once making 90 wrong guesses from one address get
    exactly 10 passwords checked (535), then 454 and 421; the right password is refused
    from that address while another address still logs in; one auth_blocked line."""
    with auth_intake(spool_dir, tmp_path) as intake:
        replies: list[str] = []
        threads = [threading.Thread(target=guesser, args=(intake.port, replies))
                   for _ in range(30)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert replies.count("535") == 10
        assert "454" in replies and "421" in replies
        assert set(replies) <= {"535", "454", "421"}
        blocked = RawClient(intake.port)
        blocked.command(b"EHLO right.test")
        assert blocked.command(plain("alice", "s3cret")).startswith("454 4.7.0")
        other = RawClient(intake.port, source="127.0.0.2")
        other.command(b"EHLO right.test")
        assert other.command(plain("alice", "s3cret"))[:3] == "235"
        blocked.close()
        other.close()
    cut_offs = [line for line in capsys.readouterr().err.splitlines() if "auth_blocked" in line]
    assert len(cut_offs) == 1 and "client=127.0.0.1" in cut_offs[0]


def test_a_block_ends_after_the_window(spool_dir: Path, tmp_path: Path) -> None:
    """Two failures with --auth-failure-limit 2: 421 at once; the right password gets 454
    until --auth-failure-window has passed, then 235."""
    with auth_intake(spool_dir, tmp_path, "--auth-failure-limit", "2",
                     "--auth-failure-window", "1.5") as intake:
        raw = RawClient(intake.port)
        raw.command(b"EHLO client.test")
        assert raw.command(plain("alice", "wrong"))[:3] == "535"
        assert raw.command(plain("alice", "wrong"))[:3] == "535"
        assert raw.reply().startswith("421 4.7.0") and raw.closed()
        started = time.monotonic()
        again = RawClient(intake.port)
        again.command(b"EHLO client.test")
        assert again.command(plain("alice", "s3cret"))[:3] == "454"
        assert again.command(plain("alice", "s3cret"))[:3] == "454"
        time.sleep(max(0.0, 1.6 - (time.monotonic() - started)))
        assert again.command(plain("alice", "s3cret"))[:3] == "235"
        again.close()


def test_limit_zero_keeps_only_the_per_connection_strikes(spool_dir: Path,
                                                          tmp_path: Path) -> None:
    """--auth-failure-limit 0: no cross-connection block (six failures over two
    connections, each closed after its third), and the right password then works."""
    with auth_intake(spool_dir, tmp_path, "--auth-failure-limit", "0") as intake:
        for _ in range(2):
            replies: list[str] = []
            guesser(intake.port, replies)
            assert replies == ["535", "535", "535", "421"]
        raw = RawClient(intake.port)
        raw.command(b"EHLO client.test")
        assert raw.command(plain("alice", "s3cret"))[:3] == "235"
        raw.close()


def test_auth_failures_window_slides_and_memory_is_bounded() -> None:
    """Failures older than the window are forgotten; the limit blocks for one window; at
    most max_addresses addresses are remembered."""
    failures = AuthFailures(limit=3, window=10.0, max_addresses=2)
    assert not failures.failed("a", 0.0) and not failures.failed("a", 5.0)
    assert not failures.failed("a", 11.0)  # the one at 0.0 has left the window
    assert failures.failed("a", 12.0) and failures.blocked("a", 21.9)
    assert not failures.blocked("a", 22.0) and not failures.failed("a", 22.0)
    for name in ("b", "c", "d"):
        failures.failed(name, 30.0)
    assert len(failures._failures) == 2


def documented_filter() -> str:
    """The fail2ban filter file given in docs/intake.md (the ini block after its marker)."""
    text = DOCS.read_text()
    match = re.search(r"/etc/fail2ban/filter\.d/relay-auth\.conf\n```ini\n(.*?)```", text,
                      re.DOTALL)
    assert match, "docs/intake.md has no relay-auth.conf block"
    return match.group(1)


def real_cut_off_line(spool_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                      *args: str) -> str:
    with auth_intake(spool_dir, tmp_path, "--auth-failure-limit", "1", *args) as intake:
        raw = RawClient(intake.port, source="127.0.0.7")
        raw.command(b"EHLO client.test")
        assert raw.command(plain("alice", "wrong"))[:3] == "535"
        assert raw.reply()[:3] == "421"
        raw.close()
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "auth_blocked" in line]
    return line


@pytest.mark.parametrize("log_format", ["logfmt", "json"])
def test_documented_fail2ban_filter_matches_the_real_line(
        spool_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        log_format: str) -> None:
    """The failregex of docs/intake.md, with fail2ban's <HOST>, finds the client address in
    the auth_blocked line intake really writes (logfmt and json), and in no other line;
    fail2ban-regex agrees when it is installed."""
    line = real_cut_off_line(spool_dir, tmp_path, capsys, "--log-format", log_format)
    conf = documented_filter()
    regexes = [r.strip() for r in re.search(r"failregex\s*=(.*?)\n(?:\S|$)", conf + "\nend",
                                            re.DOTALL).group(1).splitlines() if r.strip()]
    hosts = []
    for regex in regexes:
        found = re.search(regex.replace("<HOST>", r"(?P<host>[0-9a-fA-F:.]+)"), line)
        if found:
            hosts.append(found.group("host"))
    assert hosts == ["127.0.0.7"]
    failed = '... level=warning event=auth_failed client=127.0.0.7 failures=1'
    assert not any(re.search(r.replace("<HOST>", r"(?P<host>\S+)"), failed) for r in regexes)
    if shutil.which("fail2ban-regex") is None:
        return
    log, filter_file = tmp_path / "intake.log", tmp_path / "relay-auth.conf"
    log.write_text(line + "\n")
    filter_file.write_text(conf)
    result = subprocess.run(["fail2ban-regex", "--print-all-matched", str(log),
                             str(filter_file)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert re.search(r"Failregex: 1 total", result.stdout), result.stdout
    assert "127.0.0.7" in result.stdout
