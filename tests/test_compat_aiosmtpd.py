"""common/compat_aiosmtpd.py: every aiosmtpd internal relay relies on is still there, still
called where relay expects, and still behaves so on a real connection. Run this first
after upgrading aiosmtpd (docs/operations.md, *Upgrading dependencies*): a failure here
names the internal that changed.
"""

from __future__ import annotations

import inspect
import logging
import signal
import smtplib
import ssl
import time
from pathlib import Path

import aiosmtpd.smtp
import pytest
import trustme
from aiosmtpd.smtp import SMTP
from support.intake import IntakeProcess, IntakeThread, RawClient
from support.tls import client_context, server_files

from common import compat_aiosmtpd
from common.compat_aiosmtpd import AIOSMTPD_LOGGER, SPURIOUS_LOG_LINES
from intake.session import STREAM_LIMIT, Session

# The internals common/compat_aiosmtpd.py renames, and what each must be.
METHODS = {
    "_call_handler_hook": True,  # coroutine function?
    "_timeout_cb": False,
    "_reset_timeout": False,
    "_getaddr": False,
    "_getparams": False,
    "_create_envelope": False,
    "_set_post_data_state": False,
    "_set_rset_state": False,
    "_create_session": False,
    "challenge_auth": True,
    "handle_exception": True,
}
# (aiosmtpd method, what its source must contain for relay's renamed hook to be reached,
# or for intake.engine's copy of aiosmtpd's command loop to still be aiosmtpd's)
CALLS = [
    ("__init__", "self._timeout_duration = timeout"),
    ("__init__", "self._tls_protocol"),
    ("__init__", "self._original_transport"),
    ("__init__", "self._handler_coroutine"),
    # the engine's STARTTLS upgrade and end of session (SMTPBase.tls_started, end_session)
    ("connection_made", "seen_starttls = (self._original_transport is not None)"),
    ("connection_made", "self.session.ssl = self._tls_protocol._extra"),
    ("connection_made", 'hook = self._handle_hooks.get("STARTTLS")'),
    ("connection_made", "self._set_rset_state()"),
    ("connection_lost", "self._original_transport.close()"),
    ("smtp_STARTTLS", "self._tls_protocol.connection_made(self._original_transport)"),
    # QUIT and AUTH reach the engine through _handler_coroutine and _reader
    ("smtp_QUIT", "self._handler_coroutine.cancel()"),
    ("challenge_auth", "await self._reader.readline()"),
    # the checks and replies of aiosmtpd's loop that intake.engine makes its own
    ("_handle_client", "await self.push('220 {} {}'.format(self.hostname, self.__ident__))"),
    ("_handle_client", "await self.push('500 Error: bad syntax')"),
    ("_handle_client", "await self.push('500 Command line too long')"),
    ("_handle_client", "await self.push('500 Error: strict ASCII mode')"),
    ("_handle_client", "'554 Command refused due to lack of security')"),
    ("_handle_client", "await self.push('530 Must issue a STARTTLS command first')"),
    ("_handle_client", "command not in ALLOWED_BEFORE_STARTTLS"),
    ("_handle_client", "self.command_size_limits[command]"),
    ("_handle_client", "if self.session.extended_smtp"),
    ("_handle_client", "method = self._smtp_methods.get(command)"),
    ("_handle_client", "bogus_budget = BOGUS_LIMIT"),
    ("_handle_client", '"502 5.5.1 Too many unrecognized commands, goodbye."'),
    ("_handle_client", "f'500 Error: command \"{command}\" not recognized'"),
    ("_handle_client", "self._reset_timeout()"),
    ("_handle_client", "status = await self.handle_exception(error)"),
    ("_handle_client", "isinstance(error, TLSSetupException)"),
    ("_handle_client", "errors='surrogateescape'"),
    ("_reset_timeout", "self._timeout_cb"),
    ("connection_made", "self._reset_timeout()"),
    ("_reset_timeout", "duration or self._timeout_duration"),
    ("_set_post_data_state", "self._create_envelope()"),
    ("_set_rset_state", "self._set_post_data_state()"),
    ("smtp_MAIL", "self._getaddr(arg)"),
    ("smtp_MAIL", "self._getparams(mail_options)"),
    ("smtp_MAIL", "self._call_handler_hook('MAIL', address, mail_options)"),
    ("smtp_RCPT", "self._getaddr(arg)"),
    ("smtp_RCPT", "self._getparams(rcpt_options)"),
    ("smtp_EHLO", "self.command_size_limits"),
    ("smtp_STARTTLS", "self._tls_protocol"),
    ("smtp_AUTH", "auth_result.message"),
]


@pytest.mark.parametrize("name", list(METHODS))
def test_the_internal_methods_relay_renames_exist(name: str) -> None:
    """Each aiosmtpd method the compatibility module overrides or calls is still there, a
    coroutine function exactly when relay awaits it."""
    method = getattr(SMTP, name, None)
    assert callable(method), f"aiosmtpd.smtp.SMTP.{name} is gone"
    assert inspect.iscoroutinefunction(method) is METHODS[name], name


def test_their_signatures_are_what_relay_passes() -> None:
    """_getaddr(arg), _getparams(params), _call_handler_hook(command, *args), the class
    attribute command_size_limits (a dict) and the constants the engine reads."""
    assert list(inspect.signature(SMTP._getaddr).parameters) == ["self", "arg"]
    assert list(inspect.signature(SMTP._getparams).parameters) == ["self", "params"]
    assert list(inspect.signature(SMTP._call_handler_hook).parameters) == [
        "self", "command", "args"]
    assert isinstance(SMTP.command_size_limits, dict)
    assert isinstance(aiosmtpd.smtp.BOGUS_LIMIT, int) and aiosmtpd.smtp.BOGUS_LIMIT > 1
    assert "STARTTLS" in aiosmtpd.smtp.ALLOWED_BEFORE_STARTTLS
    assert issubclass(aiosmtpd.smtp.TLSSetupException, Exception)
    assert aiosmtpd.smtp.MISSING is not None


@pytest.mark.parametrize(("method", "text"), CALLS, ids=[f"{m}:{t}" for m, t in CALLS])
def test_aiosmtpd_still_reaches_them_where_relay_expects(method: str, text: str) -> None:
    """aiosmtpd's own code still calls (or sets) each internal at the point the
    compatibility module relies on."""
    source = inspect.getsource(getattr(SMTP, method))
    assert text in source, f"aiosmtpd.smtp.SMTP.{method} no longer has {text!r}"


def test_a_real_session_has_the_state_relay_reads(spool_dir: Path) -> None:
    """On a live connection: the session is its own input (intake.engine), the idle timeout,
    the TLS flag, relay's own command size limits (not the class's), the buffer's limit in
    effect (a 40,000-byte line is one 500, not a dropped connection), what QUIT cancels
    and where AUTH reads its answer."""
    with IntakeThread(spool_dir, "--idle-timeout", "7") as intake:
        raw = RawClient(intake.port)
        assert raw.command(b"EHLO client.test")[:3] == "250"
        assert intake.server is not None
        (session,) = intake.server.sessions
        assert isinstance(session, Session)
        assert session.reader is session and session._reader is session
        assert session._handler_coroutine is session
        assert session.idle_timeout == 7.0 and session.tls_active is False
        assert session.command_size_limits is not SMTP.command_size_limits
        assert session.line_length_limit == STREAM_LIMIT
        assert raw.command(b"NOOP " + b"x" * 40_000)[:3] == "500"
        assert raw.command(b"NOOP")[:3] == "250"
        assert raw.command(b"QUIT")[:3] == "221"
        raw.close()


def test_the_idle_timer_reaches_relay(spool_dir: Path) -> None:
    """aiosmtpd's timer still ends in relay's on_idle_timer: a silent client gets relay's
    421 4.4.2 (aiosmtpd alone would close without a word)."""
    with IntakeThread(spool_dir, "--idle-timeout", "0.5") as intake:
        raw = RawClient(intake.port)
        started = time.monotonic()
        assert raw.reply().startswith("421 4.4.2 Idle timeout")
        assert time.monotonic() - started < 3


def test_commands_keep_a_session_past_the_idle_timeout(spool_dir: Path) -> None:
    """The idle timer armed at connect is not moved per command: when it fires it re-arms
    from relay's idle clock, so a client sending a command now and then outlives
    --idle-timeout several times over, and is dropped once it falls silent."""
    with IntakeThread(spool_dir, "--idle-timeout", "1.5") as intake:
        raw = RawClient(intake.port)
        started = time.monotonic()
        while time.monotonic() - started < 4.5:
            assert raw.command(b"NOOP")[:3] == "250"
            time.sleep(0.3)
        silent = time.monotonic()
        assert raw.reply().startswith("421 4.4.2 Idle timeout")
        assert 1.0 < time.monotonic() - silent < 10


def test_a_command_line_is_logged_only_when_wanted_and_masked(
        caplog: pytest.LogCaptureFixture) -> None:
    """log_line_read: nothing below aiosmtpd's logger's level; at INFO the line, its AUTH
    secret masked by aiosmtpd's sanitized_log."""
    with caplog.at_level(logging.WARNING, logger=AIOSMTPD_LOGGER):
        compat_aiosmtpd.log_line_read(("127.0.0.1", 1), b"AUTH PLAIN c2VjcmV0\r\n")
    assert caplog.records == []
    with caplog.at_level(logging.INFO, logger=AIOSMTPD_LOGGER):
        compat_aiosmtpd.log_line_read(("127.0.0.1", 1), b"AUTH PLAIN c2VjcmV0\r\n")
    (record,) = caplog.records
    assert "c2VjcmV0" not in record.getMessage() and "********" in record.getMessage()


def test_starttls_is_not_a_new_connection(spool_dir: Path, tmp_path: Path,
                                          ca: trustme.CA) -> None:
    """After STARTTLS the session is the same connection (counted once, still one session),
    tls_active turns on, and the Received line says ESMTPS."""
    cert, key = server_files(ca, tmp_path)
    with IntakeThread(spool_dir, "--server-tls-certificate", str(cert),
                      "--server-tls-key", str(key)) as intake:
        client = smtplib.SMTP("127.0.0.1", intake.port, local_hostname="client.test",
                              timeout=10)
        client._host = "intake.test"  # the name the certificate is for
        client.starttls(context=client_context(ca))
        client.ehlo()
        assert intake.server is not None
        (session,) = intake.server.sessions
        assert session.tls_active and intake.server.limits.total == 1
        client.sendmail("a@example.org", ["b@example.com"], b"Subject: tls\r\n\r\nhi\r\n")
        client.quit()
    (content,) = [p.read_bytes() for p in spool_dir.glob("*.content")]
    assert b"with ESMTPS" in content


def test_ssl_module_is_what_aiosmtpd_upgrades_with() -> None:
    """aiosmtpd's STARTTLS still builds on asyncio's sslproto (its _tls_protocol)."""
    assert "sslproto.SSLProtocol" in inspect.getsource(SMTP.smtp_STARTTLS)
    assert ssl.HAS_SNI


def test_aiosmtpd_still_writes_the_lines_relay_drops() -> None:
    """Each line the filter drops is still logged word for word by aiosmtpd (else the
    filter would match nothing and the upgrade would go unnoticed)."""
    source = inspect.getsource(aiosmtpd.smtp)
    assert aiosmtpd.smtp.log.name == AIOSMTPD_LOGGER
    for line in SPURIOUS_LOG_LINES:
        assert f'"{line}"' in source, line


def test_only_the_spurious_lines_are_dropped(caplog: pytest.LogCaptureFixture) -> None:
    """aiosmtpd's other warnings still reach relay's log."""
    with caplog.at_level(logging.WARNING, logger=AIOSMTPD_LOGGER):
        logger = logging.getLogger(AIOSMTPD_LOGGER)
        for line in SPURIOUS_LOG_LINES:
            logger.warning(line)
        logger.warning("something else")
    assert [record.getMessage() for record in caplog.records] == ["something else"]


def test_insecure_auth_logs_its_warning_once_not_per_connection(spool_dir: Path,
                                                                tmp_path: Path) -> None:
    """--server-auth-insecure: three connections and a successful AUTH log the operator's
    warning once and none of aiosmtpd's per-connection or deprecation lines."""
    secrets = tmp_path / "server.auth"
    secrets.write_text("server plain alice s3cret\n")
    with IntakeProcess(spool_dir, "--server-auth", str(secrets),
                       "--server-auth-insecure") as intake:
        for _ in range(2):
            with intake.smtp() as client:
                client.ehlo()
        with intake.smtp() as client:
            client.login("alice", "s3cret")
        intake.wait_for_log("client_authenticated")
        log = intake.finish(signal.SIGTERM)
    assert log.count("auth_insecure") == 1
    assert '"user": "alice"' in log
    for line in SPURIOUS_LOG_LINES:
        assert line not in log
