"""relay-resubmit against real spool directories, run as a subprocess (and racing itself)."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

from support.programs import BIN, run_tool
from support.spool import spool_files
from support.tools import CONTENT, emailrelay_envelope, failures_of, write_bad

from spool import Spool, State, claim, entries


def test_counts_reason_lines_of_emailrelay_files(spool_dir: Path) -> None:
    """With the default of 5, messages with 0..4 failures go back to the queue, 5 and 6 stay."""
    envelopes = {}
    for count in range(7):
        envelopes[count] = emailrelay_envelope(failures=failures_of(count))
        write_bad(spool_dir, f"emailrelay.100.1700000000.{count}", envelopes[count])
    result = run_tool("relay-resubmit", "--spool-dir", str(spool_dir))
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"" and result.stderr == b""  # silent, so cron mails nothing
    for count in range(7):
        message_id = f"emailrelay.100.1700000000.{count}"
        state = State.READY if count < 5 else State.BAD
        path = spool_dir / (message_id + state.suffix)
        assert path.read_bytes() == envelopes[count], f"{count} failures: not moved intact"
        assert (spool_dir / f"{message_id}.content").read_bytes() == CONTENT


def test_reason_code_lines_do_not_count(spool_dir: Path) -> None:
    """Only X-MailRelay-Reason lines count: one failure with extra ReasonCode lines is retried."""
    envelope = emailrelay_envelope(failures=failures_of(1))
    envelope += b"X-MailRelay-ReasonCode: 550\r\n" * 6
    write_bad(spool_dir, "m1", envelope)
    result = run_tool("relay-resubmit", "--spool-dir", str(spool_dir), "--max-retries", "2")
    assert result.returncode == 0
    assert spool_files(spool_dir) == ["m1.content", "m1.envelope"]


def test_files_the_parser_would_refuse_are_still_resubmitted(spool_dir: Path) -> None:
    """An old-format, LF-only or garbled .bad is counted textually, never refused."""
    write_bad(spool_dir, "old", b"X-MailRelay-Format: #2821.3\nX-MailRelay-From: a@b\n"
              b"X-MailRelay-End: 1\nX-MailRelay-Reason: 550 no\nX-MailRelay-ReasonCode: 550\n")
    write_bad(spool_dir, "junk", b"\xff\xfe not an envelope at all\r\n")
    write_bad(spool_dir, "worn", b"garbage\n" + b"X-MailRelay-Reason: x\n" * 5)
    result = run_tool("relay-resubmit", "--spool-dir", str(spool_dir))
    assert result.returncode == 0, result.stderr
    assert spool_files(spool_dir) == [
        "junk.content", "junk.envelope", "old.content", "old.envelope",
        "worn.content", "worn.envelope.bad",
    ]


def test_max_retries_from_flag_env_and_config_file(spool_dir: Path, tmp_path: Path) -> None:
    """--max-retries beats RELAY_MAX_RETRIES, which beats [resubmit] in the config file."""
    config = tmp_path / "relay.toml"
    config.write_text(f'spool-dir = "{spool_dir}"\n[resubmit]\nmax-retries = 1\n')
    write_bad(spool_dir, "two", emailrelay_envelope(failures=failures_of(2)))
    assert run_tool("relay-resubmit", "--config", str(config)).returncode == 0
    assert (spool_dir / "two.envelope.bad").exists()  # file says 1: 2 failures stay
    env = {"RELAY_MAX_RETRIES": "2"}
    assert run_tool("relay-resubmit", "--config", str(config), env=env).returncode == 0
    assert (spool_dir / "two.envelope.bad").exists()  # env says 2: still stays
    result = run_tool("relay-resubmit", "--config", str(config), "--max-retries", "3", env=env)
    assert result.returncode == 0
    assert (spool_dir / "two.envelope").exists()


def test_verbose_and_dry_run(spool_dir: Path) -> None:
    """--dry-run moves nothing and says what it would do; --verbose logs each message moved."""
    write_bad(spool_dir, "m1", emailrelay_envelope(failures=failures_of(1)))
    dry = run_tool("relay-resubmit", "--spool-dir", str(spool_dir), "--dry-run")
    assert dry.returncode == 0
    assert b"would resubmit m1 (1 failures)" in dry.stdout
    assert (spool_dir / "m1.envelope.bad").exists()
    verbose = run_tool("relay-resubmit", "--spool-dir", str(spool_dir), "--verbose")
    assert verbose.returncode == 0
    assert b"message_resubmitted" in verbose.stderr and b"msg_id=m1" in verbose.stderr
    assert (spool_dir / "m1.envelope").exists()


def test_unusable_spool_directory_exits_78(tmp_path: Path) -> None:
    """A missing spool, a file, or one writable by others: exit 78 with a one-line reason."""
    missing = run_tool("relay-resubmit", "--spool-dir", str(tmp_path / "nope"))
    assert missing.returncode == os.EX_CONFIG
    assert b"does not exist" in missing.stderr and len(missing.stderr.splitlines()) == 1
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o777)
    assert run_tool("relay-resubmit", "--spool-dir", str(shared)).returncode == os.EX_CONFIG
    usage = run_tool("relay-resubmit", "--max-retries", "many")
    assert usage.returncode in (os.EX_USAGE, os.EX_CONFIG)


def test_symlinked_bad_file_is_left_alone(spool_dir: Path, tmp_path: Path) -> None:
    """A symlink planted as `.envelope.bad` is neither followed nor moved."""
    target = tmp_path / "elsewhere"
    target.write_bytes(emailrelay_envelope())
    os.symlink(target, spool_dir / "trap.envelope.bad")
    result = run_tool("relay-resubmit", "--spool-dir", str(spool_dir))
    assert result.returncode == 0
    assert os.path.islink(spool_dir / "trap.envelope.bad")


def test_two_resubmits_racing_move_each_message_exactly_once(spool_dir: Path) -> None:
    """Two runs at once over 200 .bad files: every one moved once, by one of them, none lost."""
    envelope = emailrelay_envelope(failures=failures_of(1))
    ids = [f"emailrelay.7.1700000000.{n}" for n in range(200)]
    for message_id in ids:
        write_bad(spool_dir, message_id, envelope, content=message_id.encode())
    command = [str(BIN / "relay-resubmit"), "--spool-dir", str(spool_dir), "--verbose",
               "--log-format", "json"]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for _ in range(2)]
    outputs = [run.communicate(timeout=30) for run in runs]
    assert [run.returncode for run in runs] == [0, 0]
    moved: list[str] = []
    for _stdout, stderr in outputs:
        moved += [line.split(b'"msg_id": "')[1].split(b'"')[0].decode()
                  for line in stderr.splitlines() if b"message_resubmitted" in line]
    assert sorted(moved) == sorted(ids)  # each exactly once
    assert spool_files(spool_dir) == sorted(
        [f"{i}.content" for i in ids] + [f"{i}.envelope" for i in ids])
    for message_id in ids:
        assert (spool_dir / f"{message_id}.content").read_bytes() == message_id.encode()


def test_resubmit_while_a_deliverer_claims_and_fails(spool_dir: Path) -> None:
    """Resubmit runs while a worker keeps claiming and failing: no message lost or doubled."""
    spool = Spool(spool_dir)
    ids = [f"m{n:02d}" for n in range(40)]
    for message_id in ids:
        write_bad(spool_dir, message_id, emailrelay_envelope(), content=message_id.encode())
    stop = threading.Event()
    claims_made = 0

    def deliverer() -> None:
        nonlocal claims_made
        while not stop.is_set():
            for entry in list(entries(spool)):
                if entry.state is State.READY and (held := claim(spool, entry.message_id)):
                    held.fail("550 5.7.1 still refused", 550)
                    claims_made += 1

    worker = threading.Thread(target=deliverer)
    worker.start()
    try:
        for _ in range(4):
            result = run_tool("relay-resubmit", "--spool-dir", str(spool_dir),
                              "--max-retries", "3")
            assert result.returncode == 0, result.stderr
    finally:
        stop.set()
        worker.join()
    assert claims_made > 0
    for message_id in ids:
        envelopes = [name for name in spool_files(spool_dir)
                     if name.startswith(message_id + ".envelope")]
        assert len(envelopes) == 1, envelopes  # exactly one state per message
        assert envelopes[0] in (f"{message_id}.envelope", f"{message_id}.envelope.bad")
        text = (spool_dir / envelopes[0]).read_bytes()
        assert text.count(b"X-MailRelay-Reason:") <= 3  # never retried past the limit
        assert (spool_dir / f"{message_id}.content").read_bytes() == message_id.encode()
