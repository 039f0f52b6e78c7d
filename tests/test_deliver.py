"""relay-deliver --once against real aiosmtpd sinks on 127.0.0.1 and a real spool directory.

Runs deliver.main.main in this process (the console script itself runs in
test_deliver_process.py): every outcome, partial refusals, backoff across runs, bad spool
input, max-age, client filters, per-message routing, concurrency, reuse, TLS and AUTH.
"""

from __future__ import annotations

import os
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import trustme
from support import tls
from support.sink import Behaviour, Sink, authenticator, client_auth_file, free_port
from support.spool import by_state

from deliver.main import main
from spool import Envelope, Spool, State, read_envelope
from tools.resubmit import main as resubmit_main

FAST = ["--retry-first", "30", "--response-timeout", "2", "--connection-timeout", "2",
        "--data-timeout", "5", "--content-grace", "0", "--log-format", "json"]


def body(number: int, size: int = 0) -> bytes:
    """A small CRLF message, unique per *number*."""
    return (f"From: a@example.com\r\nTo: b@example.com\r\nSubject: test {number}\r\n\r\n"
            f"body {number}\r\n").encode() + b"x" * size + (b"\r\n" if size else b"")


def store(spool: Spool, number: int = 0, *, to: tuple[str, ...] = ("b@example.com",),
          **fields: Any) -> str:
    return spool.store(body(number), Envelope(sender="a@example.com", to_remote=to, **fields))


def run_once(spool: Spool, forward_to: str, *extra: str) -> int:
    return main(["--once", "--spool-dir", str(spool.path), "--forward-to", forward_to,
                 *FAST, *extra])


def only(spool: Spool, state: State) -> Envelope:
    """The envelope of the one message in *state*."""
    (message_id,) = by_state(spool)[state]
    return read_envelope(spool, message_id, state)


def test_accepted_mail_arrives_unchanged_and_leaves_the_spool(spool: Spool, sink: Sink) -> None:
    """All accepted: byte-identical content, sender and recipients; both files deleted; exit 0."""
    ids = [store(spool, n, to=("b@example.com", "c@example.com")) for n in range(3)]
    assert run_once(spool, sink.address) == 0
    got = sorted(sink.messages, key=lambda m: m.data)
    assert [m.data for m in got] == sorted(body(n) for n in range(3))
    assert all(m.mail_from == "a@example.com" for m in got)
    assert all(m.rcpt_tos == ["b@example.com", "c@example.com"] for m in got)
    assert os.listdir(spool.path) == []
    assert len(ids) == 3


def test_4xx_at_mail_defers_with_backoff_and_exit_75(spool: Spool, sink: Sink) -> None:
    """451 at MAIL: kept as .envelope, a deferral line, due again only after the backoff."""
    sink.behaviour.mail_reply = "451 4.3.0 try later"
    message_id = store(spool)
    before = time.time()
    assert run_once(spool, sink.address) == 75
    envelope = only(spool, State.READY)
    assert "X-Relay-Deferred:" in envelope.trailer and "451 4.3.0 try later" in envelope.trailer
    due = os.stat(spool.envelope_path(message_id, State.READY)).st_mtime
    assert before + 25 < due < time.time() + 35  # --retry-first 30
    assert os.path.exists(spool.content_path(message_id))


def test_deferred_message_is_not_retried_early_by_a_restart(spool: Spool, sink: Sink) -> None:
    """The backoff lives in the file: a second run right after the first sends nothing."""
    sink.behaviour.mail_reply = "451 later"
    store(spool)
    assert run_once(spool, sink.address) == 75
    sink.behaviour.mail_reply = None
    attempts_before = sink.data_attempts
    assert run_once(spool, sink.address) == 75
    assert sink.data_attempts == attempts_before and sink.messages == []
    assert only(spool, State.READY).trailer.count("X-Relay-Deferred") == 1


def test_second_failure_doubles_the_backoff(spool: Spool, sink: Sink) -> None:
    """The deferral lines count the attempts: the second temporary failure waits 2x first."""
    sink.behaviour.mail_reply = "451 later"
    message_id = store(spool)
    assert run_once(spool, sink.address) == 75
    path = spool.envelope_path(message_id, State.READY)
    os.utime(path, (time.time(), time.time() - 1))  # make it due now
    start = time.time()
    assert run_once(spool, sink.address) == 75
    assert start + 55 < os.stat(path).st_mtime < time.time() + 65
    assert only(spool, State.READY).trailer.count("X-Relay-Deferred") == 2


@pytest.mark.parametrize(
    ("behaviour", "code", "words"),
    [
        (Behaviour(mail_reply="550 5.7.1 sender refused"), "550", "sender refused"),
        (Behaviour(data_reply="554 5.6.0 content refused"), "554", "content refused"),
        (Behaviour(rcpt_replies={"b@example.com": "550 5.1.1 no such user"}), "550",
         "no such user"),
    ],
)
def test_5xx_fails_to_bad_as_emailrelay_writes_it(spool: Spool, behaviour: Behaviour,
                                                    code: str, words: str) -> None:
    """5xx at MAIL, DATA or for the only recipient: .bad with Reason and ReasonCode lines."""
    with Sink(behaviour) as sink:
        message_id = store(spool)
        assert run_once(spool, sink.address) == 0
        assert sink.messages == []
    data = spool.envelope_path(message_id, State.BAD).read_bytes()
    reason_line = next(
        line for line in data.split(b"\r\n") if line.startswith(b"X-MailRelay-Reason:")
    )
    assert words.encode() in reason_line
    assert f"X-MailRelay-ReasonCode: {code}\r\n".encode() in data
    assert os.path.exists(spool.content_path(message_id))


@pytest.mark.parametrize(
    "behaviour",
    [
        Behaviour(data_reply="452 4.3.1 out of space"),
        Behaviour(hangup_after_data=True),
        Behaviour(rcpt_replies={"b@example.com": "450 mailbox busy"}),
    ],
)
def test_temporary_failures_keep_the_message(spool: Spool, behaviour: Behaviour) -> None:
    """4xx at DATA, a hang-up after the dot, 4xx for the only recipient: deferred, exit 75."""
    with Sink(behaviour) as sink:
        store(spool)
        assert run_once(spool, sink.address) == 75
    assert "X-Relay-Deferred" in only(spool, State.READY).trailer


def test_stall_beyond_the_reply_timeout_defers(spool: Spool) -> None:
    """A smarthost that does not answer RCPT within --response-timeout: deferred (timed out)."""
    with Sink(Behaviour(stall_at_rcpt=3.0)) as sink:
        store(spool)
        started = time.monotonic()
        assert run_once(spool, sink.address, "--response-timeout", "0.5") == 75
        assert time.monotonic() - started < 3.0
    assert "time" in only(spool, State.READY).trailer.lower()


def test_no_reply_after_the_dot_defers(spool: Spool) -> None:
    """No reply after the final dot within --data-timeout: deferred, not failed."""
    with Sink(Behaviour(stall_after_data=3.0)) as sink:
        store(spool)
        assert run_once(spool, sink.address, "--data-timeout", "0.5") == 75
    assert "X-Relay-Deferred: " in only(spool, State.READY).trailer


def test_refused_connection_defers(spool: Spool) -> None:
    """Nothing listening at the smarthost's port: deferred with the connection error."""
    store(spool)
    assert run_once(spool, f"127.0.0.1:{free_port()}") == 75
    assert "connecting to the smarthost" in only(spool, State.READY).trailer


def test_partial_refusal_splits_so_nobody_gets_it_twice(spool: Spool) -> None:
    """550 for one, 451 for another, 250 for the third: each handled once, then retried once."""
    behaviour = Behaviour(rcpt_replies={"perm@x.test": "550 5.1.1 unknown user",
                                        "temp@x.test": "451 4.2.0 greylisted"})
    with Sink(behaviour) as sink:
        original = store(spool, to=("perm@x.test", "temp@x.test", "ok@x.test"))
        assert run_once(spool, sink.address) == 75
        assert [m.rcpt_tos for m in sink.messages] == [["ok@x.test"]]
        found = by_state(spool)
        assert original not in found.get(State.READY, []) + found.get(State.BAD, [])
        failed = only(spool, State.BAD)
        assert failed.to_remote == ("perm@x.test",)
        assert "unknown user" in failed.reasons[0] and failed.reason_codes == ["550"]
        deferred = only(spool, State.READY)
        assert deferred.to_remote == ("temp@x.test",) and "greylisted" in deferred.trailer
        # the greylisting is over: only the deferred recipient gets it, once
        (deferred_id,) = found[State.READY]
        path = spool.envelope_path(deferred_id, State.READY)
        os.utime(path, (time.time(), time.time() - 1))
        behaviour.rcpt_replies.clear()
        assert run_once(spool, sink.address) == 0
        assert [m.rcpt_tos for m in sink.messages] == [["ok@x.test"], ["temp@x.test"]]
        assert all(m.data == body(0) for m in sink.messages)


def test_body_8bitmime_and_smtputf8(spool: Spool) -> None:
    """Content 8bit sends BODY=8BITMIME; Utf8MailboxNames 1 sends SMTPUTF8 and the UTF-8 name."""
    with Sink(enable_SMTPUTF8=True) as sink:
        store(spool, 1, body_type="8bit")
        store(spool, 2, to=("jörg@example.com",), utf8_mailbox_names=True)
        assert run_once(spool, sink.address) == 0
    by_body = {m.data: m for m in sink.messages}
    assert "BODY=8BITMIME" in by_body[body(1)].mail_options
    assert "SMTPUTF8" in by_body[body(2)].mail_options
    assert by_body[body(2)].rcpt_tos == ["jörg@example.com"]


def test_connections_are_reused(spool: Spool, sink: Sink) -> None:
    """40 messages with --concurrency 2 go over at most 2 connections."""
    for n in range(40):
        store(spool, n)
    assert run_once(spool, sink.address, "--concurrency", "2") == 0
    assert len(sink.messages) == 40
    assert len(sink.connections_seen) <= 2


def test_concurrent_connections_send_each_message_once(spool: Spool) -> None:
    """--concurrency 4 really sends in parallel, and no message is sent twice."""
    with Sink(Behaviour(stall_after_data=0.3)) as sink:
        for n in range(12):
            store(spool, n)
        assert run_once(spool, sink.address, "--concurrency", "4") == 0
    assert sorted(m.data for m in sink.messages) == sorted(body(n) for n in range(12))
    assert sink.most_data_at_once >= 2


def test_once_returns_only_when_the_spool_is_empty(spool: Spool, sink: Sink) -> None:
    """300 messages over 4 connections, every tenth one big (slower to remove): when --once
    returns 0, every removal is done (the run waits for the remover thread)."""
    big_line = b"y" * 76 + b"\r\n"
    sent = []
    for n in range(300):
        content = body(n) + (big_line * 1000 if n % 10 == 0 else b"")  # 78 KB
        spool.store(content, Envelope(sender="a@example.com", to_remote=("b@example.com",)))
        sent.append(content)
    assert run_once(spool, sink.address, "--concurrency", "4") == 0
    assert os.listdir(spool.path) == []
    # The remover's thread has ended: nothing of this run can still be removing files.
    assert [t for t in threading.enumerate() if t.name == "relay-remover"] == []
    assert sorted(m.data for m in sink.messages) == sorted(sent)


def test_bad_envelope_and_missing_content_go_to_bad_and_the_rest_is_sent(
    spool: Spool, sink: Sink
) -> None:
    """A garbled envelope and an envelope without content become .bad with a clear reason."""
    good = store(spool, 1)
    (spool.path / "garbled.content").write_bytes(body(2))
    (spool.path / "garbled.envelope").write_bytes(b"X-MailRelay-Format: #2821.8\r\nnonsense\r\n")
    (spool.path / "lonely.envelope").write_bytes(
        spool.envelope_path(good, State.READY).read_bytes()
    )
    assert run_once(spool, sink.address) == 0
    assert [m.data for m in sink.messages] == [body(1)]
    garbled = spool.envelope_path("garbled", State.BAD).read_text()
    assert "bad envelope" in garbled and "line 2" in garbled
    lonely = spool.envelope_path("lonely", State.BAD).read_text()
    assert "lonely.content is missing" in lonely


def test_missing_content_waits_for_the_grace(spool: Spool, sink: Sink) -> None:
    """A fresh envelope whose content is not there yet is not failed within --content-grace."""
    (spool.path / "early.envelope").write_bytes(
        b"X-MailRelay-Format: #2821.8\r\nX-MailRelay-Content: 7bit\r\nX-MailRelay-From: a@x\r\n"
        b"X-MailRelay-ToCount: 1\r\nX-MailRelay-To-Remote: b@x\r\nX-MailRelay-Authentication: \r\n"
        b"X-MailRelay-Client: \r\nX-MailRelay-ClientCertificate: \r\n"
        b"X-MailRelay-MailFromAuthIn: \r\nX-MailRelay-MailFromAuthOut: \r\n"
        b"X-MailRelay-ForwardTo: \r\nX-MailRelay-ForwardToAddress: \r\n"
        b"X-MailRelay-ClientAccountSelector: \r\nX-MailRelay-Utf8MailboxNames: 0\r\n"
        b"X-MailRelay-End: 1\r\n"
    )
    assert run_once(spool, sink.address, "--content-grace", "60") == 75
    assert by_state(spool) == {State.READY: ["early"]}


def test_past_max_age_a_temporary_failure_is_final(spool: Spool) -> None:
    """A message older than --max-age (content mtime) that fails temporarily becomes .bad."""
    with Sink(Behaviour(mail_reply="451 4.4.1 still down")) as sink:
        message_id = store(spool)
        old = time.time() - 7200
        os.utime(spool.content_path(message_id), (old, old))
        assert run_once(spool, sink.address, "--max-age", "1h") == 0
    failed = only(spool, State.BAD)
    assert "still down" in failed.reasons[0] and "max-age" in failed.reasons[0]
    assert failed.reason_codes == ["451"]


def test_past_max_age_a_deferred_message_fails_without_another_try(spool: Spool) -> None:
    """A deferred message past --max-age when it is due again: .bad with the max-age reason
    and its last one, and the smarthost (which would take it now) never sees it again;
    brought back by relay-resubmit, it gets its try."""
    with Sink(Behaviour(mail_reply="451 4.3.0 try later")) as sink:
        message_id = store(spool)
        assert run_once(spool, sink.address, "--max-age", "1h") == 75
    old = time.time() - 7200
    os.utime(spool.content_path(message_id), (old, old))
    path = spool.envelope_path(message_id, State.READY)
    os.utime(path, (time.time(), time.time() - 1))  # due now
    with Sink() as sink:
        assert run_once(spool, sink.address, "--max-age", "1h") == 0
        assert sink.messages == [] and sink.data_attempts == 0
    failed = only(spool, State.BAD)
    assert failed.reasons == ["queued longer than max-age (3600 s), not tried again; last"
                              " reason: MAIL FROM: 451 4.3.0 try later"]
    assert failed.reason_codes == ["451"]
    # relay-resubmit brings it back: that is one more try, and it goes.
    assert resubmit_main(["--spool-dir", str(spool.path)]) == 0
    with Sink() as sink:
        assert run_once(spool, sink.address, "--max-age", "1h") == 0
        assert [m.data for m in sink.messages] == [body(0)]
    assert by_state(spool) == {}


def test_past_max_age_a_message_never_tried_gets_its_try(spool: Spool, sink: Sink) -> None:
    """A message stored longer than --max-age ago but never tried (a long outage of
    deliver itself): tried once, and sent."""
    message_id = store(spool)
    old = time.time() - 7200
    os.utime(spool.content_path(message_id), (old, old))
    assert run_once(spool, sink.address, "--max-age", "1h") == 0
    assert [m.data for m in sink.messages] == [body(0)]
    assert os.listdir(spool.path) == []


def write_filter(tmp_path: Path, name: str, script: str) -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return str(path)


def test_client_filters(tmp_path: Path, spool: Spool, sink: Sink) -> None:
    """Exit 1 fails with the <<reason>> and 550; exit 100 leaves it waiting; edits are honoured."""
    reject = write_filter(tmp_path, "reject",
                          'grep -q "test 1" "$1" && { echo "<<spam here>>"; exit 1; }\nexit 0\n')
    skip = write_filter(tmp_path, "skip", 'grep -q "test 2" "$1" && exit 100\nexit 0\n')
    # rewrites the envelope by rename, as sed -i does: the new recipient must be used
    edit = write_filter(tmp_path, "edit",
                        'sed -i "s/To-Remote: b@example.com/To-Remote: edited@example.com/" "$2"\n')
    rejected, skipped, edited = store(spool, 1), store(spool, 2), store(spool, 3)
    code = run_once(spool, sink.address, "--client-filter", reject, "--client-filter", skip,
                    "--client-filter", edit)
    assert code == 75  # the skipped one is still waiting
    failed = read_envelope(spool, rejected, State.BAD)
    assert failed.reasons == ["spam here"] and failed.reason_codes == ["550"]
    assert by_state(spool)[State.READY] == [skipped]
    assert "X-Relay-Deferred" not in read_envelope(spool, skipped, State.READY).trailer
    assert [(m.data, m.rcpt_tos) for m in sink.messages] == [(body(3), ["edited@example.com"])]
    assert not os.path.exists(spool.content_path(edited))


def test_filter_timeout_fails_the_message(tmp_path: Path, spool: Spool, sink: Sink) -> None:
    """A client filter that runs past --filter-timeout fails the message."""
    slow = write_filter(tmp_path, "slow", "sleep 5\n")
    message_id = store(spool)
    assert run_once(spool, sink.address, "--client-filter", slow, "--filter-timeout", "0.3") == 0
    assert read_envelope(spool, message_id, State.BAD).reasons == ["timeout"]  # E-MailRelay's


def test_forward_to_address_overrides_the_smarthost(spool: Spool, sink: Sink) -> None:
    """X-MailRelay-ForwardToAddress sends that message to its own host:port."""
    with Sink() as other:
        store(spool, 1)
        store(spool, 2, forward_to_address=other.address)
        assert run_once(spool, sink.address) == 0
        assert [m.data for m in sink.messages] == [body(1)]
        assert [m.data for m in other.messages] == [body(2)]


# -- TLS and AUTH ---------------------------------------------------------------------------


@pytest.fixture
def certificate(ca: trustme.CA, tmp_path: Path) -> tuple[ssl.SSLContext, str]:
    """A server TLS context for 127.0.0.1 and the file of the CA that signed it."""
    return tls.server_context(ca, "127.0.0.1"), str(tls.ca_file(ca, tmp_path))


def submission_sink(server_context: ssl.SSLContext) -> Sink:
    """A port-587 style sink: STARTTLS required, then AUTH with the test account."""
    return Sink(tls_context=server_context, require_starttls=True, authenticator=authenticator,
                auth_required=True, auth_require_tls=True)


def test_starttls_and_auth(tmp_path: Path, spool: Spool,
                           certificate: tuple[ssl.SSLContext, str]) -> None:
    """Port-587 style: STARTTLS verified against the CA, then AUTH PLAIN from the secrets file."""
    server_context, ca_file = certificate
    with submission_sink(server_context) as sink:
        store(spool)
        assert run_once(spool, sink.address, "--client-tls", "--client-tls-required",
                        "--client-tls-verify", ca_file,
                        "--client-auth", client_auth_file(tmp_path)) == 0
        assert [m.data for m in sink.messages] == [body(0)]


def test_wrong_password_defers(tmp_path: Path, spool: Spool,
                               certificate: tuple[ssl.SSLContext, str]) -> None:
    """A refused AUTH keeps the mail (deferred) for the operator to fix the secrets file."""
    server_context, ca_file = certificate
    with submission_sink(server_context) as sink:
        store(spool)
        assert run_once(spool, sink.address, "--client-tls", "--client-tls-verify", ca_file,
                        "--client-auth", client_auth_file(tmp_path, "wrong")) == 75
        assert sink.messages == []
    assert "authenticating" in only(spool, State.READY).trailer


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_implicit_tls(tmp_path: Path, spool: Spool,
                      certificate: tuple[ssl.SSLContext, str]) -> None:
    """Port-465 style: TLS from the first byte (--client-tls-connection) with AUTH."""
    server_context, ca_file = certificate
    with Sink(ssl_context=server_context, authenticator=authenticator,
              auth_required=True, auth_require_tls=False) as sink:
        store(spool)
        assert run_once(spool, sink.address, "--client-tls-connection",
                        "--client-tls-verify", ca_file,
                        "--client-auth", client_auth_file(tmp_path)) == 0
        assert [m.data for m in sink.messages] == [body(0)]


def test_tls_required_but_not_offered_defers(spool: Spool, sink: Sink) -> None:
    """--client-tls-required never sends in the clear: deferred when STARTTLS is missing."""
    store(spool)
    assert run_once(spool, sink.address, "--client-tls-required") == 75
    assert sink.messages == []


def test_usage_and_config_errors(spool: Spool) -> None:
    """No --forward-to, or a bad duration: exit 78; an unknown flag: exit 64."""
    assert main(["--once", "--spool-dir", str(spool.path)]) == 78
    assert main(["--once", "--spool-dir", str(spool.path), "--forward-to", "h:25",
                 "--poll", "soon"]) == 78
    with pytest.raises(SystemExit) as exited:
        main(["--no-such-flag"])
    assert exited.value.code == 64
