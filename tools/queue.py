"""relay-queue: see and operate the queue (Postfix's postqueue and postsuper in one).

    relay-queue [--spool-dir DIR] list [--state S]... [--sender T] [--recipient T]
                                       [--older-than DURATION] [--json]
    relay-queue show ID
    relay-queue flush [ID...]        make waiting mail (deferred included) due now
    relay-queue hold ID... | release ID...
    relay-queue delete ID...
    relay-queue requeue ID           one failed (.bad) message back to the queue
    relay-queue bounce ID... [--domain D]
    mailq                            the list in sendmail's format (also relay-submit -bp)

Reads the spool through `tools.queue_list`; changes it only through `tools.queue_actions`
(and so `spool`), holding the tools lock so that relay-resubmit and relay-notify runs
take turns with it. `flush` without ids also touches the trigger file (a flush of
everything); otherwise the rename of each message back to `.envelope` wakes deliver.
Exit codes: 0 done; 64 usage or a malformed id; 65 a message in the wrong state for the
command; 66 no such message; 75 a message deliver (or intake) is working on right now;
78 the spool directory cannot be used. With several ids the first failure's code is
returned and the others are still done.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence

from common.config import (
    DEFAULT_SPOOL_DIR,
    ENV_PREFIX,
    ConfigError,
    parse_duration,
    read_config_file,
    version,
)
from spool import (
    EnvelopeError,
    Spool,
    SpoolError,
    State,
    entries,
    looks_like_a_spool,
    parse_envelope,
)
from spool.envelope import printable
from spool.files import HostileFile
from spool.notifications import settle
from tools.common import local_domain, open_spool, tools_lock
from tools.dsn import header_block
from tools.notify import original_headers
from tools.queue_actions import (
    ActionError,
    Outcome,
    bounce,
    delete,
    flush,
    flush_all,
    hold,
    release,
    requeue,
    states_of,
)
from tools.queue_list import (
    STATE_NAMES,
    STATES_BY_NAME,
    Filters,
    describe,
    format_json,
    format_mailq,
    format_table,
    read_envelope_bytes,
    read_queue,
    select,
    timestamp,
)

PROGRAM = "relay-queue"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(os.EX_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """relay-queue's command line (also the source of its man page)."""
    parser = _Parser(prog=PROGRAM, description="See and operate relay's queue.")
    parser.add_argument("--version", action="version", version=f"{PROGRAM} {version()}")
    parser.add_argument("--spool-dir", metavar="DIR",
                        help=f"the spool directory (default: {DEFAULT_SPOOL_DIR})"
                             f" [env {ENV_PREFIX}SPOOL_DIR]")
    parser.add_argument("--config", metavar="FILE",
                        help=f"shared TOML config file, for spool-dir [env {ENV_PREFIX}CONFIG]")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                     parser_class=_Parser)
    listing = commands.add_parser("list", help="list the messages")
    listing.add_argument("--state", action="append", choices=sorted(STATES_BY_NAME),
                         help="only messages in this state (repeatable)")
    listing.add_argument("--sender", metavar="TEXT", help="only senders containing TEXT")
    listing.add_argument("--recipient", metavar="TEXT",
                         help="only messages with a recipient containing TEXT")
    listing.add_argument("--older-than", metavar="DURATION",
                         help="only messages that arrived longer ago (90s, 15m, 2h, 5d)")
    listing.add_argument("--json", action="store_true", help="a JSON array, one object each")
    show = commands.add_parser("show", help="a message's envelope and headers")
    show.add_argument("id", metavar="ID")
    flushing = commands.add_parser(
        "flush", help="make waiting mail due now (every message, or those named) and wake"
                      " relay-deliver")
    flushing.add_argument("ids", metavar="ID", nargs="*")
    for name, text in (("hold", "put waiting messages on hold (deliver skips them)"),
                       ("release", "put held messages back in the queue"),
                       ("delete", "remove messages (not while being delivered)")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("ids", metavar="ID", nargs="+")
    requeuing = commands.add_parser("requeue", help="put one failed (.bad) message back")
    requeuing.add_argument("id", metavar="ID")
    bouncing = commands.add_parser("bounce", help="return messages to their senders now"
                                                  " (a delivery status notification)")
    bouncing.add_argument("ids", metavar="ID", nargs="+")
    bouncing.add_argument("--domain", metavar="NAME",
                          help="domain of MAILER-DAEMON (default: the host name)")
    return parser


def spool_directory(flag: str | None, config: str | None,
                    environ: dict[str, str] | None = None) -> str:
    """--spool-dir > RELAY_SPOOL_DIR > the config file's spool-dir > the default."""
    environ = dict(os.environ) if environ is None else environ
    if flag:
        return flag
    from_environment = environ.get(ENV_PREFIX + "SPOOL_DIR")
    if from_environment:
        return from_environment
    config = config or environ.get(ENV_PREFIX + "CONFIG")
    if config:
        value = read_config_file(config).get("spool-dir")
        if value is not None:
            if not isinstance(value, str):
                raise ConfigError(f"config file {config}: spool-dir must be a string")
            return value
    return DEFAULT_SPOOL_DIR


def _say(text: str) -> None:
    sys.stdout.write(text)


def _error(text: str) -> None:
    print(f"{PROGRAM}: {text}", file=sys.stderr)


def cmd_list(spool: Spool, args: argparse.Namespace) -> int:
    try:
        older = None if args.older_than is None else parse_duration(args.older_than)
    except ValueError as error:
        _error(f"--older-than: {error}")
        return os.EX_USAGE
    filters = Filters(frozenset(args.state or ()), args.sender, args.recipient, older)
    now = time.time()
    queue = select(read_queue(spool), filters, now)
    _say(format_json(queue, now) if args.json else format_table(queue, now))
    return os.EX_OK


def cmd_show(spool: Spool, message_id: str) -> int:
    found = states_of(spool, message_id)
    if not found:
        raise ActionError(f"{message_id}: no such message in {spool.path}", os.EX_NOINPUT)
    state = next(s for s in (State.BUSY, State.READY, State.HELD, State.BAD, State.NEW,
                                    State.DSN)
                 if s in found)
    try:
        data = read_envelope_bytes(spool, message_id, state)
    except HostileFile as error:
        raise ActionError(f"{message_id}: not a message: {error}", os.EX_DATAERR) from None
    if data is None:
        raise ActionError(f"{message_id}: gone meanwhile", os.EX_NOINPUT)
    try:
        mtime = os.lstat(spool.envelope_path(message_id, state)).st_mtime
    except FileNotFoundError:
        raise ActionError(f"{message_id}: gone meanwhile", os.EX_NOINPUT) from None
    entry = describe(spool, message_id, state, mtime)
    if entry is None:
        raise ActionError(f"{message_id}: gone meanwhile", os.EX_NOINPUT)
    lines = [
        f"id: {message_id}",
        f"state: {STATE_NAMES[state]}",
        f"file: {spool.envelope_path(message_id, state)}",
        f"arrived: {timestamp(entry.arrival)}",
        f"size: {'-' if entry.size is None else entry.size}",
        f"attempts: {entry.attempts}",
        f"next try: {timestamp(entry.next_try)}",
    ]
    if entry.last_reason:
        lines.append(f"last reason: {entry.last_reason}")
    try:
        envelope = parse_envelope(data)
    except EnvelopeError as error:
        lines.append(f"envelope (unreadable: {error.problem}):")
        raw = data.decode("utf-8", errors="replace").splitlines()
        lines += ["  " + printable(line) for line in raw]
    else:
        lines += [
            "envelope:",
            f"  sender: <{envelope.sender}>",
            *[f"  to (local): {r}" for r in envelope.to_local],
            *[f"  to: {r}" for r in envelope.to_remote],
            f"  format: {envelope.version}  body: {envelope.body_type}"
            f"  smtputf8: {'yes' if envelope.utf8_mailbox_names else 'no'}",
            f"  client: {envelope.client or '-'}  authenticated as: "
            f"{printable(envelope.authentication) or '-'}",
        ]
        for key, value in (("mail from auth in", envelope.mail_from_auth_in),
                           ("mail from auth out", envelope.mail_from_auth_out),
                           ("forward to", envelope.forward_to),
                           ("forward to address", envelope.forward_to_address),
                           ("client account", envelope.client_account_selector)):
            if value:
                lines.append(f"  {key}: {printable(value)}")
        if envelope.client_certificate:
            lines.append("  client certificate:")
            lines += ["    " + printable(line)
                      for line in envelope.client_certificate.splitlines() if line.strip()]
        lines += ["  " + printable(line) for line in envelope.trailer.splitlines() if line]
    headers = _headers(spool, message_id)
    lines.append("headers:" if headers else "headers: (no content file)")
    lines += ["  " + line for line in headers.splitlines()]
    _say("\n".join(lines) + "\n")
    return os.EX_OK


def _headers(spool: Spool, message_id: str) -> str:
    raw = original_headers(spool, message_id)
    return header_block(raw) if raw else ""


def _each(ids: Sequence[str], action: Callable[[str], Outcome]) -> int:
    """Run *action* on every id; print what became of each; the first failure's code."""
    status = os.EX_OK
    for message_id in ids:
        try:
            outcome = action(message_id)
        except ActionError as error:
            _error(str(error))
            status = status or error.code
        else:
            print(f"{outcome.message_id}: {outcome.text}")
    return status


def run(spool: Spool, args: argparse.Namespace) -> int:
    """Carry out one parsed command on *spool*."""
    command = args.command
    if command == "list":
        return cmd_list(spool, args)
    if command == "show":
        return cmd_show(spool, args.id)
    with tools_lock(spool):
        if command == "flush" and not args.ids:
            ready = [e.message_id for e in entries(spool) if e.state is State.READY]
            count = flush_all(spool, ready)
            spool.trigger_scan()
            print(f"{count} message{'s' if count != 1 else ''} due now")
            return os.EX_OK
        actions: dict[str, Callable[[str], Outcome]] = {
            "flush": lambda i: flush(spool, i),
            "hold": lambda i: hold(spool, i),
            "release": lambda i: release(spool, i),
            "delete": lambda i: delete(spool, i),
            "requeue": lambda i: requeue(spool, i),
        }
        if command == "bounce":
            domain = local_domain(args.domain)
            settle(spool)  # what a killed bounce left, before anything is bounced again
            actions["bounce"] = lambda i: bounce(spool, i, domain)
        ids = [args.id] if command == "requeue" else args.ids
        # No trigger file here: each message's rename to `.envelope` (and a notification's
        # commit) is the file event that wakes deliver, and the trigger would ask deliver
        # to flush everything, which only `flush` without ids means.
        return _each(ids, actions[command])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of relay-queue."""
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    try:
        directory = spool_directory(args.spool_dir, args.config)
        spool = open_spool(directory)
        problem = looks_like_a_spool(spool)
        if problem is not None:
            raise SpoolError(problem)
        return run(spool, args)
    except ConfigError as error:
        _error(str(error))
        return os.EX_CONFIG
    except ValueError as error:  # a --domain that is not a host name
        _error(str(error))
        return os.EX_USAGE
    except ActionError as error:
        _error(str(error))
        return error.code
    except SpoolError as error:
        _error(str(error))
        return os.EX_CONFIG
    except OSError as error:
        _error(f"{error.filename or 'spool'}: {error.strerror or error}")
        return os.EX_IOERR


def mailq_lines(directory: str) -> str:
    """The queue in sendmail's `mailq` format (SpoolError/OSError for an unusable spool)."""
    spool = open_spool(directory)
    problem = looks_like_a_spool(spool)
    if problem is not None:
        raise SpoolError(problem)
    return format_mailq(read_queue(spool))


def mailq_parser() -> argparse.ArgumentParser:
    """mailq's command line (also the source of its man page)."""
    parser = _Parser(prog="mailq", description="List relay's queue in sendmail's format.")
    parser.add_argument("--version", action="version", version=f"mailq (relay) {version()}")
    parser.add_argument("--spool-dir", metavar="DIR",
                        help=f"the spool directory (default: {DEFAULT_SPOOL_DIR})")
    parser.add_argument("--config", metavar="FILE", help="shared TOML config file")
    return parser


def mailq_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `mailq`: the queue in sendmail's format."""
    args = mailq_parser().parse_args(list(argv) if argv is not None else None)
    try:
        _say(mailq_lines(spool_directory(args.spool_dir, args.config)))
    except (ConfigError, SpoolError) as error:
        print(f"mailq: {error}", file=sys.stderr)
        return os.EX_CONFIG
    except OSError as error:
        print(f"mailq: {error.filename or 'spool'}: {error.strerror or error}", file=sys.stderr)
        return os.EX_IOERR
    return os.EX_OK


if __name__ == "__main__":
    raise SystemExit(main())
