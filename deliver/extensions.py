"""What MAIL FROM says for one message to one smarthost, or why the message cannot go there.

`mail_plan(envelope, offered, size, strict)` is E-MailRelay 2.6.1's client rule, the pure
core of relay-deliver's `--eightbit-strict`, `--smtputf8-strict` and `--binarymime-strict`
(E-MailRelay's `--client-smtp-config` keywords): a message whose envelope needs an
extension the smarthost does not offer (`Content: 8bit` and no 8BITMIME, `binarymime` and
not both BINARYMIME and CHUNKING, `Utf8MailboxNames: 1` and no SMTPUTF8) fails for good
with E-MailRelay's reason when that keyword is on (by default: smtputf8strict and
binarymimestrict on, eightbitstrict off), and otherwise goes out without the parameter, as
E-MailRelay sends it. The parameters are E-MailRelay's: `BODY=7BIT` or `BODY=8BITMIME`
when 8BITMIME is offered, `BODY=BINARYMIME` (the content then goes in one BDAT),
`SMTPUTF8`, and relay's `SIZE=`. No I/O.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

# E-MailRelay 2.6.1's reasons, word for word (its envelope's X-MailRelay-Reason).
EIGHTBIT_REASON = "cannot send 8-bit message to 7-bit server"
BINARYMIME_REASON = "cannot send binarymime message to a non-chunking server"
SMTPUTF8_REASON = "cannot send utf8 message to non-smtputf8 server"


@dataclass(frozen=True)
class Strict:
    """Which missing extension fails a message (E-MailRelay's defaults)."""

    eightbit: bool = False
    smtputf8: bool = True
    binarymime: bool = True


@dataclass(frozen=True)
class MailPlan:
    """The MAIL FROM parameters, whether the content goes in BDAT, and the extensions the
    message needed and went without (for a warning)."""

    parameters: list[str]
    bdat: bool = False
    without: list[str] = field(default_factory=list)
    size: int = 0  # what SIZE= says: as DATA sends it, or for BDAT as stored


def mail_plan(body_type: str, utf8_names: bool, offered: Collection[str], size: int,
              strict: Strict, *, stored_size: int | None = None) -> MailPlan | str:
    """The plan for a message of *body_type* (`Content:`) and *utf8_names*, to a smarthost
    whose EHLO *offered* these extensions (lower case); or the reason it fails for good.
    *size* is the content's size as DATA sends it, *stored_size* as stored (BDAT's)."""
    eightbit = "8bitmime" in offered
    chunking = "binarymime" in offered and "chunking" in offered
    utf8 = "smtputf8" in offered
    without: list[str] = []
    if body_type == "8bit" and not eightbit:
        if strict.eightbit:
            return EIGHTBIT_REASON
        without.append("8BITMIME")
    if body_type == "binarymime" and not chunking:
        if strict.binarymime:
            return BINARYMIME_REASON
        without.append("BINARYMIME")
    if utf8_names and not utf8:
        if strict.smtputf8:
            return SMTPUTF8_REASON
        without.append("SMTPUTF8")
    bdat = body_type == "binarymime" and chunking
    if bdat and stored_size is not None:
        size = stored_size
    parameters: list[str] = []
    if "size" in offered:
        parameters.append(f"SIZE={size}")
    if bdat:
        parameters.append("BODY=BINARYMIME")
    elif eightbit and body_type in ("7bit", "8bit"):
        parameters.append("BODY=8BITMIME" if body_type == "8bit" else "BODY=7BIT")
    if utf8_names and utf8:
        parameters.append("SMTPUTF8")
    return MailPlan(parameters, bdat, without, size)
