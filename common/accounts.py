"""The built-in `account:` address verifier (E-MailRelay 2.6.1's), and `net:` verifier answers.

`account:[RANGE][;lowercase][;check][;remote]` accepts a recipient whose local part is a
system account (uid within RANGE, default 1000-32767) and whose domain is `--domain`
(compared without regard to case), as a local mailbox named after the account; `check`
accepts every other address as remote, `remote` treats matching accounts as remote, and
`lowercase` lower-cases the mailbox name. `postmaster` with no domain is always local.
Both verifiers report what a verifier program would (an exit code and two output lines),
so that intake reads every verifier with the same rules. Reads the password database only.
"""

from __future__ import annotations

import pwd
from dataclasses import dataclass

from common.programs import ProgramResult


@dataclass(frozen=True)
class AccountSpec:
    """The parameters of an `account:` verifier."""

    low: int = 1000
    high: int = 32767
    lowercase: bool = False
    check: bool = False
    remote: bool = False


def parse_account_spec(text: str) -> AccountSpec:
    """`account:`'s parameters; ValueError for one it does not know."""
    spec = AccountSpec()
    low, high, lowercase, check, remote = spec.low, spec.high, False, False, False
    for word in filter(None, text.split(";")):
        if word[0].isdigit():
            first, _, last = word.partition("-")
            if not first.isdigit() or (last and not last.isdigit()):
                raise ValueError(f"bad uid range {word!r}")
            low, high = int(first), int(last or first)
        elif word == "lowercase" or (len(word) <= 3 and "l" in word):
            lowercase = True
        elif word == "remote" or (len(word) <= 3 and "r" in word):
            remote = True
        elif word == "check" or (len(word) <= 3 and "c" in word):
            check = True
        else:
            raise ValueError(f"unknown parameter {word!r}")
    return AccountSpec(low, high, lowercase, check, remote)


def _dequote(text: str) -> str:
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == '"' else text


def account_verify(spec: AccountSpec, address: str, domain: str) -> ProgramResult:
    """The `account:` verifier's answer for *address*, as a verifier program's exit."""
    bare = _dequote(address)
    user, at, mail_domain = bare.rpartition("@")
    if not at:
        user, mail_domain = bare, ""
    user = _dequote(user)
    if user == "postmaster" and not mail_domain:
        return ProgramResult(0, "\npostmaster\n", "")
    reason = ""
    mailbox = ""
    if mail_domain.lower() != domain.lower():
        reason = f"[{mail_domain}] does not match [{domain}]"
    else:
        entry = _lookup(user)
        if entry is None and user.isascii():
            entry = _lookup(user.lower())
        if entry is None:
            reason = f"[{user}] is not a valid account name"
        elif not spec.low <= entry.pw_uid <= spec.high:
            reason = f"uid {entry.pw_uid} is not in the range {spec.low}-{spec.high}"
        else:
            mailbox = entry.pw_name
    if mailbox:
        if spec.remote:
            return ProgramResult(1, f"\n{address}\n", "")
        return ProgramResult(0, f"\n{mailbox.lower() if spec.lowercase else mailbox}\n", "")
    if spec.check:
        return ProgramResult(1, f"\n{address}\n", "")
    return ProgramResult(2, f"rejected\n{reason}\n", "")


def _lookup(user: str) -> pwd.struct_passwd | None:
    if not user or "\x00" in user:
        return None
    try:
        return pwd.getpwnam(user)
    except KeyError:
        return None


def net_verifier_result(line: str) -> ProgramResult:
    """A `net:` verifier server's pipe-separated answer as a verifier program's exit.

    `0|mailbox|full name` (local), `1|address` (remote), `2|response[|reason]` (550),
    `3|response[|reason]` (450), `100` (drop the connection); anything else refuses (550).
    """
    parts = line.rstrip("\r").split("|")
    head = parts[0]
    if head == "100":
        return ProgramResult(100, "", "")
    if head == "1" and len(parts) >= 2:
        return ProgramResult(1, f"\n{parts[1]}\n", "")
    if head == "0" and len(parts) >= 3:
        return ProgramResult(0, f"{parts[2]}\n{parts[1]}\n", "")
    if head in ("2", "3") and len(parts) >= 2:
        reason = parts[2] if len(parts) >= 3 else ""
        return ProgramResult(int(head), f"{parts[1]}\n{reason}\n", "")
    return ProgramResult(2, "", "")
