"""What relay-intake decides about each command: aiosmtpd's handle_* hooks.

`Handler` answers HELO/EHLO, MAIL, RCPT and the end of DATA by asking `intake.policy`
(names, addresses, free space), the address verifier and the filters (`intake.filters`),
keeps the transaction's state in the session's `intake.transaction.Transaction`, and stores
the message through the group committer (`intake.commit`): each hook returns the reply.
Files are written only through the committer (and by the filters it runs); nothing here
reads a socket.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from common.tlsconfig import peer_certificate_pem
from intake.commit import abandoned_commit
from intake.esmtp import international_address
from intake.filters import FilterAction, VerifierOutcome, client_display, run_filters
from intake.filters import VerifierVerdict as Verdict
from intake.policy import address_problem, helo_problem, path_problem, storage_error_reply
from intake.received import protocol_name, received_line
from intake.transaction import Transaction
from spool import Envelope
from spool.envelope import EnvelopeError
from spool.testhooks import checkpoint

if TYPE_CHECKING:
    from intake.listener import IntakeServer
    from intake.session import Session


class Handler:
    """aiosmtpd's hooks: policy checks, then the durable store; returns reply strings."""

    def __init__(self, server: IntakeServer) -> None:
        self.server = server
        self.config = server.config
        self.log = server.log

    async def handle_HELO(self, smtp: Session, session: Any, envelope: Any,
                          hostname: str) -> str:
        problem = helo_problem(hostname)
        if problem:
            return problem
        session.host_name = hostname
        return f"250 {smtp.hostname}"  # the domain, or with --anonymous=server "smtp"

    async def handle_EHLO(self, smtp: Session, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        problem = helo_problem(hostname)
        if problem:
            return [problem]
        session.host_name = hostname
        lines = [line for line in responses[:-1] if not line.startswith("250-AUTH")
                 and (self.config.smtputf8 or line != "250-SMTPUTF8")]
        if "server" in self.config.anonymous:
            lines[0] = "250-smtp says hello"  # E-MailRelay's anonymous EHLO
        mechanisms = smtp.auth_mechanisms()  # in E-MailRelay's order, not aiosmtpd's sorted
        if mechanisms:
            lines.append("250-AUTH " + " ".join(mechanisms))
        if self.config.pipelining:
            lines.append("250-PIPELINING")
        return [*lines, "250-ENHANCEDSTATUSCODES", "250 HELP"]

    async def handle_MAIL(self, smtp: Session, session: Any, envelope: Any, address: str,
                          mail_options: list[str]) -> str:
        parameters = smtp.mail_parameters
        checked = self._international(address, parameters.smtputf8)
        if isinstance(checked, str):
            return checked
        address, utf8 = checked
        problem = path_problem(address, null_allowed=True)
        if problem:
            return problem
        refusal = self.server.space.refusal(parameters.size)
        if refusal:
            self.log.warning("message_refused", client=smtp.client_ip, reason="spool disk full")
            return refusal
        if parameters.problem:
            return parameters.problem
        envelope.mail_from = address  # aiosmtpd's own sequencing (503 for a nested MAIL)
        smtp.begin(Transaction("" if address == "<>" else address, parameters, utf8=utf8))
        return "250 2.1.0 OK"

    def _international(self, address: str, smtputf8: bool) -> tuple[str, bool] | str:
        """(the address to store, whether it makes the message SMTPUTF8), or the refusal:
        controls never; non-ASCII as --utf8-without-smtputf8 says (intake.esmtp)."""
        problem = address_problem(address, smtputf8=True)
        if problem:
            return problem
        return international_address(address, smtputf8=smtputf8,
                                     mode=self.config.utf8_without_smtputf8)

    async def handle_RCPT(self, smtp: Session, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        transaction = smtp.transaction
        assert transaction is not None  # aiosmtpd answers 503 before MAIL
        checked = self._international(address, transaction.parameters.smtputf8)
        problem = checked if isinstance(checked, str) else None
        if not isinstance(checked, str):
            address, utf8 = checked
            problem = path_problem(address, null_allowed=False)
        if problem:
            self.log.info("recipient_refused", client=smtp.client_ip, reason=problem[10:])
            return problem
        if transaction.recipients >= self.config.max_recipients:
            return "452 4.5.3 Too many recipients"
        stored = address
        local = False
        if self.config.address_verifier:
            outcome = await self._verify(smtp, transaction, address)
            if outcome.verdict is Verdict.DROP:
                self.log.warning("client_dropped", client=smtp.client_ip, to=address,
                                 reason="address verifier asked to drop the connection")
                smtp.close_after_reply = True
                return outcome.reply
            if outcome.verdict is Verdict.REJECT:
                self.log.info("recipient_refused", client=smtp.client_ip, to=address,
                              reason=outcome.reply)
                return outcome.reply
            stored, local = outcome.address, outcome.verdict is Verdict.LOCAL
            problem = None if local else path_problem(stored, null_allowed=False)
            if problem:
                self.log.warning("recipient_refused", client=smtp.client_ip, to=stored,
                                 reason="the address verifier returned an address that "
                                 "cannot be forwarded")
                return "553 5.1.3 Address from the address verifier cannot be forwarded"
        transaction.add_recipient(stored, local=local, utf8=utf8)
        envelope.rcpt_tos.append(address)  # aiosmtpd's own sequencing
        return "250 2.1.5 OK"

    async def _verify(self, smtp: Session, transaction: Transaction,
                      address: str) -> VerifierOutcome:
        assert self.config.address_verifier is not None
        smtp.busy = True
        try:
            return await self.config.address_verifier.verify(
                address,
                sender=transaction.sender,
                client=client_display(smtp.client_ip, smtp.client_port),
                mechanism=smtp.auth_mechanism,
                auth_name=smtp.auth_name or smtp.trusted_keyword or "",
            )
        finally:
            smtp.busy = False

    async def handle_VRFY(self, smtp: Session, session: Any, envelope: Any,
                          address: str) -> str:
        """VRFY: never verified (252, RFC 5321 3.5.3); --anonymous=vrfy says less."""
        if "vrfy" in self.config.anonymous:
            return "252 2.5.2 Cannot VRFY"
        return "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery"

    async def handle_DATA(self, smtp: Session, session: Any, envelope: Any) -> str:
        checkpoint("data_received")
        transaction = smtp.transaction
        assert transaction is not None
        tls = smtp.tls_active or self.config.tls_connection
        protocol = protocol_name(extended=bool(session.extended_smtp), tls=tls,
                                 authenticated=bool(smtp.auth_name))
        trace = received_line(helo=session.host_name or "", client_ip=smtp.client_ip,
                              domain=self.config.domain, protocol=protocol)
        model = transaction.to_envelope(authentication=smtp.auth_name, client=smtp.client_ip)
        if tls and smtp.transport is not None:  # --server-tls-verify: the client's certificate
            certificate = peer_certificate_pem(smtp.transport.get_extra_info("ssl_object"))
            model = dataclasses.replace(model, client_certificate=certificate)
        smtp.busy = True
        try:
            pieces = transaction.content if "content" in self.config.anonymous else \
                (trace, *transaction.content)  # --anonymous=content: no Received line
            reply = await self._store(smtp, tuple(pieces), model)
        finally:
            smtp.busy = False
        checkpoint("before_reply")
        return reply

    async def _store(self, smtp: Session, content: tuple[bytes, ...],
                     model: Envelope) -> str:
        committer = self.server.committer
        trigger = False
        try:
            if not self.config.filters:
                pending = await committer.store(content, model)
            else:
                pending = await committer.prepare(content, model)
                try:
                    verdict = await run_filters(
                        self.config.filters, str(pending.content_path), str(pending.new_path),
                        self.config.filter_timeout, self.config.filter_runner)
                except BaseException:
                    pending.discard()
                    raise
                trigger = verdict.trigger_scan
                if verdict.action is FilterAction.REJECT:
                    pending.discard()
                    self._trigger(trigger)  # exit 104: refused, and a rescan asked for
                    self.log.info("message_refused", client=smtp.client_ip,
                                  reason=verdict.reason, reply=verdict.reply)
                    return verdict.reply
                if verdict.action is FilterAction.ABANDON:
                    # As E-MailRelay: the message is committed if the filter left its
                    # files (a token effort), and the client is told 250 either way.
                    kept = await abandoned_commit(committer, pending)
                    self._trigger(trigger)
                    self.log.info("message_abandoned", msg_id=pending.message_id,
                                  client=smtp.client_ip, committed=kept,
                                  reason="filter exit 100/102")
                    return "250 2.0.0 OK"
                pending = await committer.commit(pending)
        except OSError as error:
            self.log.error("store_failed", client=smtp.client_ip, reason=str(error))
            return storage_error_reply(error)
        except (EnvelopeError, ValueError) as error:
            self.log.error("store_failed", client=smtp.client_ip, reason=str(error))
            return "451 4.3.0 Local error in processing: message not stored"
        self._trigger(trigger)
        self.log.info("message_stored", msg_id=pending.message_id, client=smtp.client_ip,
                      **{"from": model.sender, "to": ",".join(model.recipients)},
                      size=sum(map(len, content[1:])))
        return f"250 2.0.0 OK queued as {pending.message_id}"

    def _trigger(self, wanted: bool) -> None:
        if wanted:
            try:
                self.server.spool.trigger_scan()
            except OSError as error:
                self.log.warning("trigger_failed", reason=str(error))

    async def handle_exception(self, error: Exception) -> str:
        # Never aiosmtpd's "500 Error: (OSError) ...": a local fault is temporary.
        self.log.error("session_error", reason=f"{type(error).__name__}: {error}")
        return "451 4.3.0 Local error in processing"
