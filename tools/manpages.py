"""Each program's own command line as an argparse parser, for its man page (argparse-manpage).

`make install` runs `argparse-manpage --module tools.manpages --function NAME` for every
program in `PROGRAMS`; each function returns the parser the program itself parses with (the
same `Option` tables and descriptions), so a man page can never say something the program
does not do. `relay` and `relay-submit` parse their E-MailRelay and sendmail command lines by
hand; their parsers here are built from the switch table (`tools.relay.SWITCHES`) and the
usage text (`tools.submit.USAGE`) those parsers use. Reads and writes nothing.
"""

from __future__ import annotations

import argparse
import re

from common.config import build_parser

# `  -f SENDER       text` or `  --spool-dir DIR the spool directory`: flags, then the text
_USAGE_LINE = re.compile(r"\s*((?:-[-\w]+(?: [A-Z]+)?)(?:, -[-\w]+(?: [A-Z]+)?)*)\s+(\S.*)")


def relay_intake() -> argparse.ArgumentParser:
    from intake.settings import DESCRIPTION, OPTIONS, PROGRAM  # noqa: PLC0415 (one each)

    return build_parser(PROGRAM, DESCRIPTION, OPTIONS)


def relay_deliver() -> argparse.ArgumentParser:
    from deliver.main import ALL_OPTIONS  # noqa: PLC0415
    from deliver.settings import DESCRIPTION, PROGRAM  # noqa: PLC0415

    return build_parser(PROGRAM, DESCRIPTION, ALL_OPTIONS)


def relay_resubmit() -> argparse.ArgumentParser:
    from tools.resubmit import DESCRIPTION, OPTIONS, PROGRAM  # noqa: PLC0415

    return build_parser(PROGRAM, DESCRIPTION, OPTIONS)


def relay_notify() -> argparse.ArgumentParser:
    from tools.notify import DESCRIPTION, OPTIONS, PROGRAM  # noqa: PLC0415

    return build_parser(PROGRAM, DESCRIPTION, OPTIONS)


def relay_queue() -> argparse.ArgumentParser:
    from tools.queue import build_parser as queue_parser  # noqa: PLC0415

    return queue_parser()


def mailq() -> argparse.ArgumentParser:
    from tools.queue import mailq_parser  # noqa: PLC0415

    return mailq_parser()


def relay_passwd() -> argparse.ArgumentParser:
    from tools.passwd import _parser  # noqa: PLC0415 (the module's own parser)

    return _parser()


def relay_submit() -> argparse.ArgumentParser:
    """sendmail's flags, parsed with getopt: the usage text is the description."""
    from tools.submit import DESCRIPTION, PROGRAM, USAGE  # noqa: PLC0415

    parser = argparse.ArgumentParser(
        prog=PROGRAM, usage=USAGE.splitlines()[0].removeprefix("usage: "),
        description=DESCRIPTION + ". " + " ".join(USAGE.splitlines()[2:3]),
        formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False)
    options = parser.add_argument_group("options")
    for line in USAGE.splitlines()[3:]:
        match = _USAGE_LINE.match(line)
        if match:
            names = [flag.split()[0] for flag in match.group(1).split(", ")]
            options.add_argument(*names, help=match.group(2), action="store_true",
                                 dest=names[0].lstrip("-").replace("-", "_"))
    parser.epilog = "\n".join(line for line in USAGE.splitlines()[3:]
                              if not line.strip().startswith("-"))
    return parser


def relay() -> argparse.ArgumentParser:
    """E-MailRelay's switches as `relay` takes them (tools.emailrelay_switches)."""
    from tools import emailrelay_switches as table  # noqa: PLC0415

    parser = argparse.ArgumentParser(
        prog="relay", add_help=False,
        usage="relay [switch ...] [config-file]",
        description="E-MailRelay 2.6.1's command line for relay: runs relay-intake and"
                    " relay-deliver as emailrelay would run (docs/emailrelay.md).")
    groups = {name: parser.add_argument_group(name) for name in table.GROUPS}
    for switch in table.SWITCHES:
        names = [f"--{switch.name}"] + ([f"-{switch.short}"] if switch.short else [])
        reason = table.refusal(switch)
        text = (switch.help + (f" (refused: {reason})" if reason else "")).replace("%", "%%")
        group = groups[switch.group]
        if switch.value == table.NONE:
            group.add_argument(*names, help=text, action="store_true")
        else:
            group.add_argument(*names, help=text, metavar=(switch.metavar or "VALUE").upper(),
                               nargs="?" if switch.value == table.OPTIONAL else None)
    return parser


# program name -> the function above that gives its parser
PROGRAMS = {
    "relay": "relay",
    "relay-intake": "relay_intake",
    "relay-deliver": "relay_deliver",
    "relay-queue": "relay_queue",
    "mailq": "mailq",
    "relay-resubmit": "relay_resubmit",
    "relay-notify": "relay_notify",
    "relay-submit": "relay_submit",
    "relay-passwd": "relay_passwd",
}


def main() -> None:
    """Print `program function` lines for the Makefile."""
    for program, function in PROGRAMS.items():
        print(program, function)


if __name__ == "__main__":
    main()
