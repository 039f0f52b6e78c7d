"""`relay --immediate`: forward a message while its client waits, as intake's last filter.

    python -I -m tools.immediate [relay-deliver options] -- CONTENT ENVELOPE

relay-intake runs this (through the small script `relay` writes for it) as the last
`--filter`, with the content file and the `.envelope.new` of a message that is not yet
committed. It sends the message to the smarthost over one connection and answers as an
intake filter does: sent to every recipient, it removes both files and exits 100
(abandon: the client gets 250, nothing is spooled, deliver has nothing to do); refused (a
recipient, MAIL or DATA) or not reached, it prints the smarthost's reply as the client's
`<<...>>` and exits 1, so the client gets the smarthost's 4xx or 5xx (and keeps the message:
nothing is lost). All recipients or none (E-MailRelay's --forward-to-all): a partial
delivery cannot be answered with one reply. Reads the two files and the client secrets
file; removes the two files after a delivery; writes nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import sys

from common.config import ConfigError, load_settings
from deliver.forward import Route, SmarthostConnection
from deliver.main import forward_settings
from deliver.outcome import Deferred, Failed, Sent, classify
from deliver.settings import DESCRIPTION, OPTIONS, build_config
from spool import EnvelopeError, HostileFile, parse_envelope
from spool.files import read_regular

PROGRAM = "relay-immediate"
EX_ABANDON = 100  # intake's filter exit: 250 to the client, the filter owns the message
EX_REFUSE = 1
MAX_ENVELOPE = 1 << 20
MAX_CONTENT = 1 << 40


def _refuse(code: int | None, text: str) -> int:
    reply = " ".join(text.split())[:300] or "smarthost refused the message"
    code = code if code is not None and 400 <= code <= 599 else 451
    print(f"<<{code} {reply}>>")
    print(f"<<immediate forwarding: {code} {reply}>>")
    return EX_REFUSE


async def forward(argv: list[str], content_path: str, envelope_path: str) -> int:
    """Send one message now; the filter's exit code."""
    settings = load_settings(PROGRAM, DESCRIPTION, OPTIONS, argv, section="deliver")
    config = build_config(settings)
    try:
        envelope = parse_envelope(read_regular(envelope_path, MAX_ENVELOPE))
        content = read_regular(content_path, MAX_CONTENT)
    except (OSError, HostileFile, EnvelopeError) as error:
        return _refuse(451, f"local error reading the message: {error}")
    how = dataclasses.replace(forward_settings(config), all_recipients=True)
    connection = SmarthostConnection(how, config.tls_context)
    try:
        attempt = await connection.transact(Route(config.host, config.port), envelope, content)
    finally:
        await connection.close()
    outcome = classify(attempt)
    if isinstance(outcome, Sent) and not outcome.failed and not outcome.deferred:
        for path in (envelope_path, content_path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        return EX_ABANDON
    if isinstance(outcome, (Deferred, Failed)):
        return _refuse(outcome.code, outcome.reason)
    return _refuse(attempt.reply.code, attempt.reply.describe())


def main(argv: list[str] | None = None) -> int:
    """Entry point (`python -I -m tools.immediate OPTIONS -- CONTENT ENVELOPE`)."""
    arguments = sys.argv[1:] if argv is None else argv
    if "--" not in arguments or len(arguments) - arguments.index("--") != 3:
        print(f"usage: {PROGRAM} [relay-deliver options] -- CONTENT ENVELOPE", file=sys.stderr)
        return os.EX_USAGE
    split = arguments.index("--")
    try:
        return asyncio.run(forward(arguments[:split], *arguments[split + 1:]))
    except ConfigError as error:
        print(f"{PROGRAM}: {error}", file=sys.stderr)
        return _refuse(451, "local configuration error")


if __name__ == "__main__":
    sys.exit(main())
