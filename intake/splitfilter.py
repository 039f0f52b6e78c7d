"""The built-in `split:` server filter: one message per recipient domain (E-MailRelay 2.6.1).

`--filter split:` (`split:raw` compares domains exactly, `split:PORT` adds `:PORT` to each
`ForwardTo`) groups the remote recipients of the `.envelope.new` by domain (case-blind
unless `raw`). With one domain it only writes that domain into `ForwardTo`; with several,
the message keeps the first domain's recipients (in sorted order) and each other domain
gets a new message of its own (a copy of the content, committed durably through
`Spool.store`), each with `ForwardTo` set, so that `--client-filter mx:` can route them.
Local recipients stay with the original. As in E-MailRelay, the new messages are committed
at once and see no later filter. The original's envelope is rewritten by rename (as a
filter program may); its content is only read.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from pathlib import Path

from common.durable import replace_file
from common.filterspec import Builtin, Spec
from common.programs import ProgramResult
from spool import Spool
from spool.envelope import Envelope, EnvelopeError, format_envelope, parse_envelope


@dataclass(frozen=True)
class SplitSpec:
    """`raw`: exact domain comparison; `port`: appended to each ForwardTo."""

    raw: bool = False
    port: str = ""


def parse_split_spec(text: str) -> SplitSpec:
    """`split:[raw][;PORT]`; ValueError for anything else."""
    raw, port = False, ""
    for word in filter(None, text.split(";")):
        if word == "raw":
            raw = True
        elif word.isdigit() and 0 < int(word) < 65536:
            port = word
        else:
            raise ValueError(f"unknown parameter {word!r} (split:raw, split:PORT)")
    return SplitSpec(raw, port)


def groups(recipients: tuple[str, ...], raw: bool) -> list[tuple[str, tuple[str, ...]]]:
    """(domain, recipients) per domain, domains sorted (pure)."""
    found: dict[str, list[str]] = {}
    for recipient in recipients:
        domain = recipient.rpartition("@")[2]
        found.setdefault(domain if raw else domain.lower(), []).append(recipient)
    return [(domain, tuple(found[domain])) for domain in sorted(found)]


def _forward_to(recipients: tuple[str, ...], port: str) -> str:
    domain = recipients[0].rpartition("@")[2]
    return f"{domain}:{port}" if port else domain


def _rewrite(envelope_path: str, envelope: Envelope) -> None:
    replace_file(envelope_path, format_envelope(envelope), f"{envelope_path}.split")


def split_message(spec: SplitSpec, content_path: str, envelope_path: str) -> list[str]:
    """Split the message (see the module docstring); the ids of the new messages."""
    with open(envelope_path, "rb") as file:
        envelope = parse_envelope(file.read(), path=envelope_path)
    by_domain = groups(envelope.to_remote, spec.raw)
    if not by_domain:
        return []
    created: list[str] = []
    if len(by_domain) > 1:
        with open(content_path, "rb") as file:
            content = file.read()
        spool = Spool(Path(content_path).parent, check=False)
        for _domain, recipients in by_domain[1:]:
            copy = replace(envelope, to_local=(), to_remote=recipients,
                           forward_to=_forward_to(recipients, spec.port), trailer="")
            created.append(spool.store([content], copy))
    first = by_domain[0][1]
    _rewrite(envelope_path, replace(envelope, to_remote=first,
                                    forward_to=_forward_to(first, spec.port)))
    return created


async def _run_spec(spec: Spec, content: str, envelope: str, _timeout: float) -> ProgramResult:
    try:
        created = await asyncio.to_thread(split_message, parse_split_spec(spec.value), content,
                                          envelope)
    except (OSError, EnvelopeError, ValueError) as error:
        return ProgramResult(1, f"<<failed>>\n<<split: {error}>>\n", "", temporary=True)
    return ProgramResult(103 if created else 0, "", "")  # new messages: ask for a rescan


BUILTINS: dict[str, Builtin] = {"split": (parse_split_spec, _run_spec)}
