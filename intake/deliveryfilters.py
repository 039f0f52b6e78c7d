"""The built-in `copy:` and `deliver:` server filters: E-MailRelay 2.6.1's local delivery.

`deliver:` puts a copy of the message into the mailbox of each local recipient (the
`X-MailRelay-To-Local` names an address verifier gave, e.g. `account:`), under
`--delivery-dir` (default: the spool directory); a message with only local recipients is
then removed from the spool (the client is told 250), one with remote recipients too goes
on to be forwarded. `copy:` puts a copy into every subdirectory of the spool (not
`postmaster`, not one whose name starts with a dot) and removes the original. A mailbox that
has `tmp`, `cur` and `new` is a maildir: the content goes to `new` (through `tmp`);
otherwise the mailbox gets `<id>.content` and `<id>.envelope`. Parameters (`;`-separated):
`nodelete` keeps the original; `hardlink` is accepted and copies (relay refuses hard-linked
spool files, so a link would turn the original into a `.bad` message). Each copy is written
to a temporary name, fsynced and renamed, and the mailbox directory fsynced, before the
original goes. Writes only mailbox files and, when removing it, the original's two files.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from common.durable import replace_file
from common.filterspec import Builtin, Spec
from common.programs import ProgramResult
from spool.envelope import EnvelopeError, parse_envelope

_SEQUENCE = itertools.count()


@dataclass(frozen=True)
class DeliverySpec:
    """`nodelete` keeps the original; where `deliver:` puts mailboxes (None: the spool)."""

    no_delete: bool = False
    delivery_dir: str | None = None


def parse_delivery_spec(text: str) -> DeliverySpec:
    """`copy:` / `deliver:` parameters; ValueError for one relay does not have."""
    no_delete = False
    for word in filter(None, text.split(";")):
        if word in ("n", "nodelete", "no_delete"):
            no_delete = True
        elif word in ("p", "pop"):
            raise ValueError("pop: relay has no POP server")
        elif word not in ("h", "hardlink"):
            raise ValueError(f"unknown parameter {word!r} (nodelete, hardlink)")
    return DeliverySpec(no_delete)


def _copy_file(source: str, directory: Path, name: str) -> None:
    """*source* into *directory*/*name*: written to a temporary name, fsynced, renamed."""
    with open(source, "rb") as reader:
        data = reader.read()
    replace_file(directory / name, data, directory / f".{name}.tmp")


def _sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def deliver_to(mailbox: Path, content_path: str, envelope_path: str) -> None:
    """One copy of the message into *mailbox* (a maildir, or a plain directory)."""
    if all((mailbox / part).is_dir() for part in ("tmp", "cur", "new")):
        unique = f"{time.time():.6f}.{os.getpid()}_{next(_SEQUENCE)}.{socket.gethostname()}"
        _copy_file(content_path, mailbox / "tmp", unique)
        os.replace(mailbox / "tmp" / unique, mailbox / "new" / unique)
        _sync_directory(mailbox / "tmp")
        _sync_directory(mailbox / "new")
        return
    message_id = Path(content_path).name.removesuffix(".content")
    _copy_file(content_path, mailbox, f"{message_id}.content")
    _copy_file(envelope_path, mailbox, f"{message_id}.envelope")
    _sync_directory(mailbox)


def _remove_original(content_path: str, envelope_path: str) -> None:
    for path in (envelope_path, content_path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def copy_message(spec: DeliverySpec, content_path: str, envelope_path: str) -> bool:
    """`copy:`; True when the original was removed."""
    spool = Path(content_path).parent
    targets = sorted(entry for entry in spool.iterdir()
                     if entry.is_dir() and not entry.is_symlink()
                     and not entry.name.startswith(".") and entry.name != "postmaster")
    for target in targets:
        deliver_to(target, content_path, envelope_path)
    if not targets or spec.no_delete:
        return False
    _remove_original(content_path, envelope_path)
    return True


def valid_mailbox(name: str) -> bool:
    """A mailbox name that is one plain path component."""
    return bool(name) and name.isprintable() and "/" not in name and name not in (".", "..")


def deliver_message(spec: DeliverySpec, content_path: str, envelope_path: str) -> bool:
    """`deliver:`; True when the original was removed (it had only local recipients)."""
    with open(envelope_path, "rb") as file:
        envelope = parse_envelope(file.read(), path=envelope_path)
    if not envelope.to_local:
        return False
    base = Path(spec.delivery_dir) if spec.delivery_dir else Path(content_path).parent
    for name in sorted(set(envelope.to_local)):
        if not valid_mailbox(name):
            raise ValueError(f"invalid mailbox name {name!r}")
        mailbox = base / name
        if not mailbox.is_dir():
            mailbox.mkdir(mode=0o700)
        deliver_to(mailbox, content_path, envelope_path)
    if envelope.to_remote or spec.no_delete:
        return False
    _remove_original(content_path, envelope_path)
    return True


def builtins(delivery_dir: str | None) -> dict[str, Builtin]:
    """`copy:` and `deliver:` for a FilterRunner (with `--delivery-dir`)."""

    def run(action: str) -> Builtin:
        async def run_spec(spec: Spec, content: str, envelope: str,
                           _timeout: float) -> ProgramResult:
            parsed = parse_delivery_spec(spec.value)
            parsed = DeliverySpec(parsed.no_delete, delivery_dir)
            work = copy_message if action == "copy" else deliver_message
            try:
                removed = await asyncio.to_thread(work, parsed, content, envelope)
            except (OSError, EnvelopeError, ValueError) as error:
                return ProgramResult(1, f"<<failed>>\n<<{action}: {error}>>\n", "",
                                     temporary=True)
            return ProgramResult(100 if removed else 0, "", "")

        return (parse_delivery_spec, run_spec)

    return {"copy": run("copy"), "deliver": run("deliver")}
