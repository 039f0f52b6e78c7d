"""relay-queue, mailq and relay-submit -bp as real processes, on a spool with a message in
every state, against a running relay-deliver and on a spool E-MailRelay 2.6.1 wrote."""

from __future__ import annotations

import json
import os
import smtplib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.deliver import Deliver
from support.programs import run_tool
from support.sink import Sink, free_port
from support.tools import CONTENT, emailrelay_envelope, failures_of

from spool import Envelope, Spool, State, claim, parse_envelope
from spool.names import TRIGGER_NAME

EMAILRELAY = Path("/work/scratch/emailrelay-bin/emailrelay")
GOLDEN = Path(__file__).resolve().parent / "golden"
HOUR = 3600.0


def write(spool_dir: Path, message_id: str, suffix: str, envelope: bytes,
          mtime: float | None = None) -> None:
    """Drop a message in any state: content first, then the envelope, mode 0600."""
    for name, data in ((f"{message_id}.content", CONTENT), (f"{message_id}{suffix}", envelope)):
        path = spool_dir / name
        path.write_bytes(data)
        os.chmod(path, 0o600)
    if mtime is not None:
        os.utime(spool_dir / f"{message_id}{suffix}", (mtime, mtime))


@pytest.fixture
def every_state(spool_dir: Path) -> Path:
    """ready, deferred (due in an hour), busy (written as such), bad, held and new messages."""
    now = time.time()
    write(spool_dir, "m-ready", ".envelope", emailrelay_envelope("ann@a.test", ["bo@b.test"]))
    deferred = emailrelay_envelope("dee@a.test", ["x@b.test"]) + \
        b"X-Relay-Deferred: 1732442400 451 4.3.0 greylisted, try later\r\n"
    write(spool_dir, "m-deferred", ".envelope", deferred, mtime=now + HOUR)
    write(spool_dir, "m-bad", ".envelope.bad",
          emailrelay_envelope("bea@a.test", ["y@b.test"], failures_of(2)))
    write(spool_dir, "m-held", ".envelope.held", emailrelay_envelope("hal@a.test", ["z@b.test"]))
    write(spool_dir, "m-new", ".envelope.new", emailrelay_envelope("nu@a.test", ["n@b.test"]))
    return spool_dir


def queue(spool_dir: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return run_tool("relay-queue", "--spool-dir", str(spool_dir), *args)


def listing(spool_dir: Path, *args: str) -> dict[str, dict[str, object]]:
    done = queue(spool_dir, "list", "--json", *args)
    assert done.returncode == 0, done.stderr
    return {item["id"]: item for item in json.loads(done.stdout)}


def names(spool_dir: Path) -> list[str]:
    return sorted(n for n in os.listdir(spool_dir) if not n.startswith("."))


def test_list_shows_every_state_with_its_facts(every_state: Path) -> None:
    """list --json: id, state, size, sender, recipients, attempts, next try, last reason."""
    found = listing(every_state)
    assert {k: v["state"] for k, v in found.items()} == {
        "m-ready": "ready", "m-deferred": "ready", "m-bad": "bad", "m-held": "held",
        "m-new": "new"}
    deferred = found["m-deferred"]
    assert deferred["sender"] == "dee@a.test" and deferred["recipients"] == ["x@b.test"]
    assert deferred["attempts"] == 1
    assert deferred["last_reason"] == "451 4.3.0 greylisted, try later"
    assert isinstance(deferred["next_try"], float) and deferred["next_try"] > time.time() + 3000
    bad = found["m-bad"]
    assert bad["attempts"] == 2 and bad["next_try"] is None
    assert str(bad["last_reason"]).startswith("550 5.1.1")
    assert found["m-ready"]["size"] == len(CONTENT)
    table = queue(every_state, "list").stdout.decode()
    assert "m-deferred" in table and "in 59m" in table and "5 messages" in table


def test_list_filters(every_state: Path) -> None:
    """--state (repeatable), --sender, --recipient and --older-than select messages."""
    assert set(listing(every_state, "--state", "bad", "--state", "held")) == {"m-bad", "m-held"}
    assert set(listing(every_state, "--sender", "DEE@")) == {"m-deferred"}
    assert set(listing(every_state, "--recipient", "z@b")) == {"m-held"}
    old = time.time() - 2 * HOUR
    os.utime(every_state / "m-bad.content", (old, old))
    assert set(listing(every_state, "--older-than", "1h")) == {"m-bad"}
    bad = queue(every_state, "list", "--older-than", "soon")
    assert bad.returncode == os.EX_USAGE and b"not a duration" in bad.stderr


def test_show_prints_envelope_and_headers(every_state: Path) -> None:
    """show ID: state, envelope fields, the failure lines and the content's headers."""
    done = queue(every_state, "show", "m-bad")
    assert done.returncode == 0, done.stderr
    text = done.stdout.decode()
    assert "state: bad" in text and "sender: <bea@a.test>" in text and "to: y@b.test" in text
    assert "X-MailRelay-Reason: 550 5.1.1" in text
    assert "Subject: quarterly figures" in text and "The figures are attached" not in text


def test_show_prints_every_field_of_an_emailrelay_envelope(spool_dir: Path) -> None:
    """show ID on E-MailRelay's golden envelopes: the client certificate, MailFromAuthIn,
    routing fields and the local recipients are all shown, made printable."""
    for name in ("certificate.envelope", "local-and-remote.envelope"):
        write(spool_dir, name.split(".")[0], ".envelope", (GOLDEN / name).read_bytes())
    done = queue(spool_dir, "show", "certificate")
    assert done.returncode == 0, done.stderr
    text = done.stdout.decode()
    assert "authenticated as: alice" in text and "mail from auth in: <>" in text
    assert "  client certificate:\n    -----BEGIN CERTIFICATE-----\n    MIIBszCC" in text
    assert "    -----END CERTIFICATE-----" in text
    shown = queue(spool_dir, "show", "local-and-remote").stdout.decode()
    assert "to (local): postmaster" in shown and "forward to address: smarthost.example.net:587" \
        in shown and "client account: eu" in shown


def test_show_an_unreadable_envelope(spool_dir: Path) -> None:
    """An envelope relay cannot parse is shown raw (made printable) with the parse error."""
    write(spool_dir, "odd", ".envelope", b"X-MailRelay-Format: #2821.9\r\nX-Evil: \x1b[31m\r\n")
    done = queue(spool_dir, "show", "odd")
    assert done.returncode == 0, done.stderr
    assert b"unreadable: unknown format" in done.stdout and b"\x1b" not in done.stdout
    assert "unreadable envelope" in str(listing(spool_dir)["odd"]["last_reason"])


def test_unknown_and_malformed_ids(every_state: Path) -> None:
    """An unknown id: exit 66; a path or hidden name as an id: exit 64; nothing changed."""
    before = names(every_state)
    for command in ("show", "hold", "delete", "requeue", "flush", "bounce", "release"):
        done = queue(every_state, command, "no-such-id")
        assert done.returncode == os.EX_NOINPUT, (command, done.stderr)
        assert b"no such message" in done.stderr
        assert queue(every_state, command, "../m-ready").returncode == os.EX_USAGE
        assert queue(every_state, command, ".relay-tools").returncode == os.EX_USAGE
    assert names(every_state) == before


def test_not_a_spool(tmp_path: Path) -> None:
    """A missing directory, or one holding other files only: a clear message and exit 78."""
    missing = queue(tmp_path / "nowhere", "list")
    assert missing.returncode == os.EX_CONFIG and b"does not exist" in missing.stderr
    other = tmp_path / "other"
    other.mkdir(mode=0o700)
    (other / "notes.txt").write_text("not mail")
    done = queue(other, "flush")
    assert done.returncode == os.EX_CONFIG
    assert b"does not look like a spool directory" in done.stderr
    assert sorted(os.listdir(other)) == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir(mode=0o700)
    assert queue(empty, "list").stdout == b"queue is empty\n"


def test_a_claimed_message_is_left_alone(spool: Spool) -> None:
    """A message deliver has claimed at this moment: exit 75 for each command, nothing changed."""
    message_id = spool.store(CONTENT, Envelope(sender="a@a.test", to_remote=("b@b.test",)))
    held_claim = claim(spool, message_id)
    assert held_claim is not None
    try:
        before = names(spool.path)
        for command in ("hold", "delete", "flush", "bounce", "requeue", "release"):
            done = queue(spool.path, command, message_id)
            assert done.returncode == os.EX_TEMPFAIL, (command, done.stderr)
            assert b"being delivered at this moment" in done.stderr
        assert names(spool.path) == before
        assert queue(spool.path, "flush").returncode == 0  # flush-all skips it quietly
        assert names(spool.path) == before
        assert listing(spool.path)[message_id]["state"] == "busy"
    finally:
        held_claim.give_back()


def test_wrong_state_is_refused(every_state: Path) -> None:
    """requeue of a waiting message, release of one not held, hold of a failed one: exit 65."""
    before = names(every_state)
    assert queue(every_state, "requeue", "m-ready").returncode == os.EX_DATAERR
    assert queue(every_state, "release", "m-ready").returncode == os.EX_DATAERR
    assert queue(every_state, "hold", "m-bad").returncode == os.EX_DATAERR
    done = queue(every_state, "flush", "m-held")
    assert done.returncode == os.EX_DATAERR and b"on hold" in done.stderr
    new = queue(every_state, "delete", "m-new")
    assert new.returncode == os.EX_TEMPFAIL and b"being received" in new.stderr
    assert names(every_state) == before


def test_flush_makes_deferred_mail_due_and_wakes_deliver(spool: Spool, sink: Sink) -> None:
    """A message deferred for an hour is forwarded within seconds of `flush`, by a running
    relay-deliver woken by the trigger file (its --poll is an hour)."""
    message_id = spool.store(CONTENT, Envelope(sender="a@a.test", to_remote=("b@b.test",)))
    later = time.time() + HOUR
    os.utime(spool.envelope_path(message_id, State.READY), (later, later))
    deliver = Deliver(spool, f"127.0.0.1:{sink.port}", "--poll", "1h")
    try:
        time.sleep(0.5)
        assert sink.messages == []
        done = queue(spool.path, "flush", message_id)
        assert done.returncode == 0 and done.stdout == f"{message_id}: due now\n".encode()
        deadline = time.monotonic() + 10
        while not sink.messages and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(sink.messages) == 1
        assert sink.messages[0].data.endswith(CONTENT)
    finally:
        deliver.stop()


def test_flush_all_counts_what_it_made_due(every_state: Path) -> None:
    """flush without ids: every waiting message (deferred included) is due now; held, bad and
    new messages are left as they are; the trigger file is touched."""
    done = queue(every_state, "flush")
    assert done.returncode == 0 and done.stdout == b"2 messages due now\n"
    assert os.stat(every_state / "m-deferred.envelope").st_mtime <= time.time()
    assert (every_state / TRIGGER_NAME).exists()
    assert {k: v["state"] for k, v in listing(every_state).items()}["m-held"] == "held"


def test_hold_and_release_with_deliver_running(spool: Spool, sink: Sink) -> None:
    """A held message is not forwarded by a running relay-deliver; released, it is."""
    later = time.time() + HOUR
    message_id = spool.store(CONTENT, Envelope(sender="a@a.test", to_remote=("b@b.test",)))
    os.utime(spool.envelope_path(message_id, State.READY), (later, later))  # not due yet
    deliver = Deliver(spool, f"127.0.0.1:{sink.port}", "--poll", "1")
    try:
        done = queue(spool.path, "hold", message_id)
        assert done.returncode == 0, done.stderr
        assert done.stdout == f"{message_id}: on hold\n".encode()
        os.utime(spool.envelope_path(message_id, State.HELD), (0, 0))  # long due
        time.sleep(2.5)  # two polls
        assert sink.messages == []
        assert names(spool.path) == sorted([f"{message_id}.content",
                                            f"{message_id}.envelope.held"])
        assert queue(spool.path, "release", message_id).returncode == 0
        deadline = time.monotonic() + 10
        while not sink.messages and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(sink.messages) == 1
    finally:
        deliver.stop()


def test_delete_in_each_state(every_state: Path) -> None:
    """delete removes a waiting, a held and a failed message, envelope and content."""
    done = queue(every_state, "delete", "m-ready", "m-held", "m-bad")
    assert done.returncode == 0, done.stderr
    assert names(every_state) == sorted(["m-deferred.content", "m-deferred.envelope",
                                         "m-new.content", "m-new.envelope.new"])


def test_several_ids_report_each_and_return_the_first_failure(every_state: Path) -> None:
    """hold of a good, an unknown and another good id: both held, exit 66 for the unknown."""
    write(every_state, "m-two", ".envelope", emailrelay_envelope())
    done = queue(every_state, "hold", "m-ready", "nope", "m-two")
    assert done.returncode == os.EX_NOINPUT
    assert done.stdout == b"m-ready: on hold\nm-two: on hold\n"
    assert (every_state / "m-two.envelope.held").exists()


def test_requeue_puts_one_failed_message_back(every_state: Path) -> None:
    """requeue: `.bad` back to `.envelope`, due now, reasons kept; one id only."""
    assert queue(every_state, "requeue", "m-bad", "m-ready").returncode == os.EX_USAGE
    assert queue(every_state, "requeue", "m-bad").returncode == 0
    envelope = every_state / "m-bad.envelope"
    assert envelope.exists() and not (every_state / "m-bad.envelope.bad").exists()
    assert os.stat(envelope).st_mtime <= time.time()
    assert len(parse_envelope(envelope.read_bytes()).reasons) == 2


def test_bounce_stores_a_notification_then_removes(every_state: Path) -> None:
    """bounce of a waiting and a failed message: a DSN to each sender from <>, both gone."""
    done = queue(every_state, "bounce", "--domain", "relay.test", "m-ready", "m-bad")
    assert done.returncode == 0, done.stderr
    assert not any(n.startswith(("m-ready.", "m-bad.")) for n in names(every_state))
    found = listing(every_state)
    dsns = [v for k, v in found.items() if k.startswith("emailrelay.")]
    assert sorted(str(d["recipients"]) for d in dsns) == ["['ann@a.test']", "['bea@a.test']"]
    assert all(d["sender"] == "" for d in dsns)
    ids = [k for k in found if k.startswith("emailrelay.")]
    texts = [(every_state / f"{i}.content").read_bytes() for i in ids]
    assert any(b"relay-queue bounce" in t for t in texts)
    assert all(b"Subject: quarterly figures" in t for t in texts)


def test_bounce_of_a_bounce_sends_nothing(spool_dir: Path) -> None:
    """A message with a null sender is removed without a notification (no loops)."""
    write(spool_dir, "m0", ".envelope", emailrelay_envelope(sender=""))
    done = queue(spool_dir, "bounce", "m0")
    assert done.returncode == 0 and b"no notification" in done.stdout
    assert names(spool_dir) == []


def test_mailq_and_submit_bp(every_state: Path) -> None:
    """mailq and relay-submit -bp print sendmail's layout: `!` marks held, the reason in
    parentheses, a total line; an empty queue says so."""
    mailq = run_tool("mailq", "--spool-dir", str(every_state))
    submit = run_tool("relay-submit", "-bp", "--spool-dir", str(every_state))
    assert mailq.returncode == 0 and submit.returncode == 0
    assert mailq.stdout == submit.stdout
    lines = mailq.stdout.decode().splitlines()
    assert lines[0].startswith("-Queue ID-") and "--Size--" in lines[0]
    assert any(line.startswith("m-held!") for line in lines)
    assert "(451 4.3.0 greylisted, try later)" in lines
    kbytes = 5 * len(CONTENT) // 1024
    assert lines[-1] == f"-- {kbytes} Kbytes in 5 Requests."
    for name in names(every_state):
        (every_state / name).unlink()
    assert run_tool("mailq", "--spool-dir", str(every_state)).stdout == b"Mail queue is empty\n"


def test_mailq_dates_and_total_as_postfix_prints_them(spool_dir: Path) -> None:
    """mailq's arrival time pads a one-digit day with a space (`Nov  3`, C's asctime, as
    Postfix prints it) and the total counts whole Kbytes (Postfix: 854 bytes are 0 Kbytes)."""
    write(spool_dir, "m-early", ".envelope", emailrelay_envelope("ann@a.test", ["bo@b.test"]))
    arrival = time.mktime((2024, 11, 3, 9, 5, 7, 0, 0, -1))
    os.utime(spool_dir / "m-early.content", (arrival, arrival))
    done = run_tool("mailq", "--spool-dir", str(spool_dir))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    size = len(CONTENT)
    assert lines[1].split() == ["m-early", str(size), "Sun", "Nov", "3", "09:05:07", "ann@a.test"]
    assert f"{size} Sun Nov  3 09:05:07  ann@a.test" in lines[1]
    assert lines[-1] == f"-- {size // 1024} Kbytes in 1 Request."


@pytest.fixture
def emailrelay_spool(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A spool written by E-MailRelay 2.6.1 itself (--as-server), two messages received."""
    if not EMAILRELAY.exists():
        pytest.skip("E-MailRelay 2.6.1 is not built here")
    spool_dir = tmp_path / "er-spool"
    spool_dir.mkdir(mode=0o700)
    port = free_port()
    pid_file = tmp_path / "er.pid"
    server = subprocess.Popen([str(EMAILRELAY), "--as-server", "--port", str(port),
                               "--interface", "127.0.0.1", "--spool-dir", str(spool_dir),
                               "--pid-file", str(pid_file), "--no-daemon"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client = smtplib.SMTP("127.0.0.1", port, timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        with client:
            for number in (1, 2):
                client.sendmail("er@a.test", [f"r{number}@b.test"],
                                f"Subject: er {number}\r\n\r\nbody\r\n".encode())
        yield spool_dir, port
    finally:
        server.terminate()
        server.wait(10)


def test_works_on_a_spool_emailrelay_wrote(emailrelay_spool: tuple[Path, int]) -> None:
    """relay-queue lists E-MailRelay's messages; one it holds is invisible to E-MailRelay,
    whose --as-client forwards only the other one."""
    spool_dir, _port = emailrelay_spool
    found = listing(spool_dir)
    assert len(found) == 2 and all(v["sender"] == "er@a.test" for v in found.values())
    held, other = sorted(found, key=lambda k: str(found[k]["recipients"]))
    assert queue(spool_dir, "hold", held).returncode == 0
    with Sink() as sink:
        subprocess.run([str(EMAILRELAY), "--as-client", f"127.0.0.1:{sink.port}",
                        "--spool-dir", str(spool_dir), "--no-syslog"],
                       check=True, timeout=30, capture_output=True)
        assert [m.rcpt_tos for m in sink.messages] == [["r2@b.test"]]
    assert names(spool_dir) == sorted([f"{held}.content", f"{held}.envelope.held"])
    assert other not in listing(spool_dir)
    assert queue(spool_dir, "release", held).returncode == 0
    assert listing(spool_dir)[held]["state"] == "ready"


def test_a_fifo_for_an_envelope_is_listed_never_read(spool_dir: Path) -> None:
    """A FIFO named like an envelope: listed as not a message, never opened for reading."""
    os.mkfifo(spool_dir / "trap.envelope", 0o600)
    found = listing(spool_dir)
    assert "not a message" in str(found["trap"]["last_reason"])
    shown = queue(spool_dir, "show", "trap")
    assert shown.returncode == os.EX_DATAERR and b"is a FIFO" in shown.stderr
