"""`relay`'s reading of an E-MailRelay command line and config file into the switches given.

`parse` takes the words of the command line, long switches (`--name`, `--name=value`,
`--name value`) and letters (bundled `-dv`, `-p25`, `-p 25`) as `tools.emailrelay_switches`
defines them, and a config file as the last word (E-MailRelay's format: `name value` or
`name` per line, `#` comments), whose switches come after the command line's. Reads the
config file only; decides nothing (that is `tools.relay.plan`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from tools import emailrelay_switches as table
from tools.emailrelay_switches import NONE, REQUIRED


class UsageError(Exception):
    """A command line that relay cannot run (exit 64)."""


@dataclass
class Given:
    """The switches given (command line first, then the config file), by long name."""

    values: dict[str, list[str | None]] = field(default_factory=dict)
    config_file: str | None = None

    def add(self, name: str, value: str | None) -> None:
        self.values.setdefault(name, []).append(value)

    def has(self, name: str) -> bool:
        return name in self.values

    def value(self, name: str) -> str | None:
        found = self.values.get(name)
        return found[0] if found else None

    def all(self, name: str) -> list[str]:
        return [value for value in self.values.get(name, []) if value is not None]


def parse(argv: Sequence[str]) -> Given:
    """The switches of an E-MailRelay command line (and of its config file, if one is given)."""
    given = Given()
    args = list(argv)
    index = 0
    while index < len(args):
        word = args[index]
        index += 1
        if word.startswith("--") and len(word) > 2:
            name, eq, inline = word[2:].partition("=")
            switch = table.BY_LONG.get(name)
            if switch is None:
                raise UsageError(f"unknown switch --{name} (see relay --help --verbose)")
            value = inline if eq else None
            if switch.value == REQUIRED and value is None:
                if index >= len(args):
                    raise UsageError(f"--{name} needs a value")
                value = args[index]
                index += 1
            elif switch.value == NONE and value is not None:
                raise UsageError(f"--{name} takes no value")
            given.add(switch.name, value)
        elif word.startswith("-") and len(word) > 1:
            letters = word[1:]
            while letters:
                switch = table.BY_SHORT.get(letters[0])
                if switch is None:
                    raise UsageError(f"unknown switch -{letters[0]} (see relay --help --verbose)")
                letters = letters[1:]
                argument: str | None = None
                if switch.value == REQUIRED:
                    if letters:
                        argument, letters = letters, ""
                    elif index < len(args):
                        argument = args[index]
                        index += 1
                    else:
                        raise UsageError(f"-{switch.short} (--{switch.name}) needs a value")
                given.add(switch.name, argument)
        else:
            if given.config_file is not None or index < len(args):
                raise UsageError(f"unexpected argument {word!r}: only the config file may "
                                 "follow the switches")
            given.config_file = word
    if given.config_file is not None:
        read_config_file(given.config_file, given)
    return given


def read_config_file(path: str, given: Given) -> None:
    """E-MailRelay's config file: "name value" or "name" per line, '#' comments."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError as error:
        raise UsageError(f"config file {path}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise UsageError(f"config file {path}: not UTF-8 text") from None
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, _, value = line.partition(" ")
        name = name.strip()
        text = value.strip() or None
        if text is not None and len(text) > 1 and text[0] == text[-1] and text[0] in "\"'":
            text = text[1:-1]
        switch = table.BY_LONG.get(name)
        where = f"config file {path} line {number}"
        if switch is None:
            raise UsageError(f"{where}: unknown switch {name!r}")
        if switch.value == REQUIRED and text is None:
            raise UsageError(f"{where}: {name} needs a value")
        if switch.value == NONE and text is not None:
            raise UsageError(f"{where}: {name} takes no value")
        given.add(name, text)
