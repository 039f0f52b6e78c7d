"""`spam:` and `spam-edit:` against Debian's real spamd on 127.0.0.1 (`.ci/run` installs it).

GTUBE is refused and a clean message passes; spamd down is a temporary refusal in intake
and a deferral in deliver: never lost, never passed unscanned.
"""

from __future__ import annotations

import smtplib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.deliver import run_once
from support.intake import IntakeThread
from support.sink import Sink, free_port
from support.spamd import CLEAN, GTUBE, SPAMD, running_spamd
from support.spool import accepted, spool_files, strip_received

from spool import Envelope, Spool

pytestmark = pytest.mark.skipif(SPAMD is None, reason="spamd is not installed (.ci/run does it)")


@pytest.fixture(scope="module")
def spamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real spamd on 127.0.0.1 for this module's tests."""
    with running_spamd(tmp_path_factory.mktemp("spamd")) as address:
        yield address


def send(intake: IntakeThread, message: bytes) -> None:
    with intake.smtp(timeout=60) as client:
        client.sendmail("a@example.org", ["b@example.com"], message)


def test_spam_refuses_gtube_and_passes_a_clean_message(spool_dir: Path, spamd: str) -> None:
    """`spam:`: GTUBE gets 452 and is not stored; a clean message is stored unchanged."""
    with IntakeThread(spool_dir, "--filter", f"spam:{spamd}") as intake:
        with pytest.raises(smtplib.SMTPDataError) as error:
            send(intake, GTUBE)
        assert (error.value.smtp_code, error.value.smtp_error) == (452, b"rejected")
        send(intake, CLEAN)
    ((_envelope, content),) = accepted(spool_dir)
    assert strip_received(content) == CLEAN


def test_spam_edit_rewrites_and_passes(spool_dir: Path, spamd: str) -> None:
    """`spam-edit:`: both pass; spamd's headers are in the stored content."""
    with IntakeThread(spool_dir, "--filter", f"spam-edit:{spamd}") as intake:
        send(intake, GTUBE)
        send(intake, CLEAN)
    contents = sorted(content for _envelope, content in accepted(spool_dir))
    assert len(contents) == 2
    assert any(b"X-Spam-Flag: YES" in content for content in contents)
    assert all(b"X-Spam-Checker-Version: SpamAssassin" in content for content in contents)
    assert not list(spool_dir.glob("*.spamd"))


def test_spamd_down_is_a_temporary_refusal(spool_dir: Path) -> None:
    """spamd not listening: 452 in intake, nothing stored, nothing passed unscanned."""
    with IntakeThread(spool_dir, "--filter", f"spam:127.0.0.1:{free_port()}") as intake:
        with pytest.raises(smtplib.SMTPDataError) as error:
            send(intake, CLEAN)
        assert error.value.smtp_code == 452
    assert spool_files(spool_dir) == []


def test_client_filter_spamd_down_defers(spool: Spool, sink: Sink, spamd: str) -> None:
    """As a client filter: spamd down defers (kept, not sent, not .bad); spamd up sends
    the clean one and fails the spam."""
    clean = spool.store([CLEAN], Envelope(sender="a@x.test", to_remote=("b@y.test",)))
    down = f"spam:127.0.0.1:{free_port()}"
    assert run_once(spool, sink.address, "--client-filter", down, "--retry-first", "1s") == 75
    assert sink.messages == []
    assert spool.content_path(clean).exists()
    assert not list(spool.path.glob("*.bad"))
    time.sleep(1.2)  # the backoff passes
    spam = spool.store([GTUBE], Envelope(sender="a@x.test", to_remote=("b@y.test",)))
    assert run_once(spool, sink.address, "--client-filter", f"spam:{spamd}") == 0
    assert [m.data.endswith(b"See you at five.\r\n") for m in sink.messages] == [True]
    assert spool.path.joinpath(f"{spam}.envelope.bad").exists()
