"""One mail transaction's state, declared once, and the parsing of what MAIL FROM carries.

`Transaction` is what relay-intake knows between `MAIL FROM` and the end of DATA (the
sender, the MAIL parameters, the recipients split into local and remote, the content in
the pieces it arrived in); `to_envelope` turns it into the spool's `Envelope`.
`parse_mail_parameters` reads the parameters of `MAIL FROM` (SIZE, BODY, SMTPUTF8, AUTH)
from the text as the client sent it: the one place relay parses them (aiosmtpd checks their
syntax before, on an upper-cased copy that would change an AUTH= mailbox). `simple_path`
parses the everyday `<dot-atom@domain>` path without the standard library's general
parser. Pure: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from common.xtext import XtextError, xtext_decode
from intake.policy import address_problem
from spool import Envelope

# X-MailRelay-Content by BODY=; binarymime would need CHUNKING, which relay does not offer.
_BODY_TYPES = {"7BIT": "7bit", "8BITMIME": "8bit", "BINARYMIME": "binarymime"}
# A reverse-path or forward-path of the everyday kind: <dot-atom@domain>, then parameters.
# Such paths skip aiosmtpd's general parser (email._header_value_parser, which also builds a
# typing.Protocol class per call) and give the same answer (tests/test_intake_data.py).
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_SIMPLE_PATH = re.compile(
    rf"<({_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>(?: +([^ \t(][^\t(]*))?"
)
MALFORMED_AUTH = "501 5.5.4 Malformed AUTH= parameter"


@dataclass(frozen=True)
class MailParameters:
    """What MAIL FROM's parameters ask for."""

    size: int = 0  # SIZE=, the client's estimate (0: not given)
    body: str = "7bit"  # BODY=, as X-MailRelay-Content
    smtputf8: bool = False  # SMTPUTF8
    auth: str = ""  # AUTH=, decoded from xtext ("" when absent, "<>" when unknown)
    problem: str | None = None  # the reply refusing the parameters, if any


def parse_mail_parameters(text: str) -> MailParameters:
    """MAIL FROM's parameters as sent (`SIZE=4096 BODY=8BITMIME AUTH=a+2Bb@example.org`).

    Their syntax has been checked already (aiosmtpd answers 501/552/555 for the rest); here
    only AUTH= can still be refused: its xtext must decode to an address without controls.
    """
    size, body, smtputf8, auth = 0, "7bit", False, ""
    for word in text.split():
        key, _, value = word.partition("=")
        key = key.upper()
        if key == "SIZE" and value.isdigit():
            size = int(value)
        elif key == "BODY":
            body = _BODY_TYPES.get(value.upper(), "7bit")
        elif key == "SMTPUTF8":
            smtputf8 = True
        elif key == "AUTH":
            try:
                auth = value if value in ("", "<>") else xtext_decode(value)
            except XtextError:
                auth = "\x00"
            if address_problem(auth, smtputf8=False):
                return MailParameters(size, body, smtputf8, "", MALFORMED_AUTH)
    return MailParameters(size, body, smtputf8, auth)


def simple_path(arg: str, local_part_limit: int) -> tuple[str | None, str | None] | None:
    """(address, parameters) for an everyday path, (None, None) if its local part is too
    long, or None when the general parser must decide."""
    match = _SIMPLE_PATH.fullmatch(arg) if arg else None
    if match is None:
        return ("<>", "") if arg == "<>" else None
    address = match[1]
    if local_part_limit and address.rindex("@") > local_part_limit:
        return None, None
    return address, match[2] or ""


@dataclass
class Transaction:
    """Everything relay keeps of one transaction, from MAIL FROM to the reply after DATA."""

    sender: str  # "" for the null reverse-path <>
    parameters: MailParameters = field(default_factory=MailParameters)
    to_local: list[str] = field(default_factory=list)  # To-Local (the verifier said so)
    to_remote: list[str] = field(default_factory=list)  # To-Remote
    recipients: int = 0  # RCPTs accepted, local and remote
    content: list[bytes] = field(default_factory=list)  # DATA, unstuffed, as it came
    # A non-ASCII local part accepted without SMTPUTF8 (--utf8-without-smtputf8 accept):
    # the message is stored as an SMTPUTF8 one, as E-MailRelay does.
    utf8: bool = False

    def add_recipient(self, address: str, *, local: bool, utf8: bool = False) -> None:
        """An accepted RCPT TO, with the address to store (*utf8*: it needs SMTPUTF8)."""
        (self.to_local if local else self.to_remote).append(address)
        self.recipients += 1
        self.utf8 = self.utf8 or (utf8 and not local)

    def to_envelope(self, *, authentication: str, client: str) -> Envelope:
        """The spool envelope of this transaction."""
        return Envelope(
            sender=self.sender,
            to_local=tuple(self.to_local),
            to_remote=tuple(self.to_remote),
            body_type=self.parameters.body,
            authentication=authentication,
            client=client,
            mail_from_auth_in=self.parameters.auth,
            utf8_mailbox_names=self.parameters.smtputf8 or self.utf8,
        )
