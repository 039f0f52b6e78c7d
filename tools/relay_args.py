"""`relay`'s reading of an E-MailRelay command line and config file into the switches given.

`parse` takes the words of the command line, long switches (`--name`, `--name=value`,
`--name value`) and letters (bundled `-dv`, `-p25`, `-p 25`) as `tools.emailrelay_switches`
defines them, and a config file as the last word (E-MailRelay's format: `name value` or
`name` per line, `#` comments), whose switches come after the command line's. Both may
name several instances, as E-MailRelay: `--in-spool-dir` starts instance `in`, whose
switches are `--in-port` and so on (`parse`'s docstring has the rules). Reads the config
file only; decides nothing (that is `tools.relay.plan`). `read_smtp_config` reads the value
of `--client-smtp-config` (`-c`) or `--server-smtp-config` (`-Z`) as E-MailRelay 2.6.1 reads
them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from tools import emailrelay_switches as table
from tools.emailrelay_switches import NONE, REQUIRED

EX_EMAILRELAY_USAGE = 1  # what emailrelay 2.6.1 exits with for a command line it refuses


class UsageError(Exception):
    """A command line E-MailRelay refuses too: exit 1, as emailrelay's usage errors."""

    exit_code = EX_EMAILRELAY_USAGE


class Refused(UsageError):
    """A switch or value E-MailRelay has and relay refuses on purpose (POP, Windows only,
    CHUNKING): exit 64 (EX_USAGE), with the one line saying why."""

    exit_code = os.EX_USAGE


@dataclass
class Given:
    """The switches given to one instance (command line first, then the config file), by
    long name; on the first instance, `more` holds the others (E-MailRelay's `--in-...`,
    `--out-...` instances), in the order their `--NAME-spool-dir` came."""

    values: dict[str, list[str | None]] = field(default_factory=dict)
    config_file: str | None = None
    name: str = ""  # the instance's name: its spool-dir prefix ("" for none)
    more: list[Given] = field(default_factory=list)

    def add(self, name: str, value: str | None) -> None:
        self.values.setdefault(name, []).append(value)

    def has(self, name: str) -> bool:
        return name in self.values

    def value(self, name: str) -> str | None:
        found = self.values.get(name)
        return found[0] if found else None

    def all(self, name: str) -> list[str]:
        return [value for value in self.values.get(name, []) if value is not None]


@dataclass(frozen=True)
class _Word:
    """One switch as written: its instance prefix ("" for none), the switch, its value."""

    prefix: str
    switch: table.Switch
    value: str | None
    written: str  # for messages: `--out-port`, `-p`, `config file F line N: out-port`


def _find(written: str) -> tuple[str, table.Switch] | None:
    """The switch a long name stands for and its instance prefix, as E-MailRelay finds it:
    the name itself, else what follows its first dash (`in-port`: `port` of `in`)."""
    switch = table.BY_LONG.get(written)
    if switch is not None:
        return "", switch
    prefix, dash, rest = written.partition("-")
    switch = table.BY_LONG.get(rest) if dash and prefix else None
    return None if switch is None else (prefix, switch)


def parse(argv: Sequence[str]) -> Given:
    """The switches of an E-MailRelay command line (and of its config file, if one is
    given), shared out among its instances (E-MailRelay's reference, "Configuration"):
    each `--NAME-spool-dir` starts an instance NAME, in the order given; `--NAME-X` is
    switch X of instance NAME; a switch without a prefix, and every letter, belongs to the
    first instance; a prefix no spool directory named is an unknown switch."""
    words, config_file = _words(argv)
    if config_file is not None:
        words += _config_words(config_file)
    names: list[str] = []
    for word in words:
        if word.switch.name == "spool-dir" and word.prefix not in names:
            names.append(word.prefix)  # given again: the first value wins, as for any switch
    names = names or [""]
    instances = [Given(name=name) for name in names]
    for word in words:
        if word.prefix == "":
            instances[0].add(word.switch.name, word.value)
        elif word.prefix in names:
            instances[names.index(word.prefix)].add(word.switch.name, word.value)
        else:
            raise UsageError(f"unknown switch {word.written}: no --{word.prefix}-spool-dir "
                             "names that instance (see relay --help --verbose)")
    first = instances[0]
    first.config_file = config_file
    first.more = instances[1:]
    return first


def _words(argv: Sequence[str]) -> tuple[list[_Word], str | None]:
    """The command line's switches, and the config file named after them."""
    words: list[_Word] = []
    config_file: str | None = None
    args = list(argv)
    index = 0
    while index < len(args):
        word = args[index]
        index += 1
        if word.startswith("--") and len(word) > 2:
            name, eq, inline = word[2:].partition("=")
            found = _find(name)
            if found is None:
                raise UsageError(f"unknown switch --{name} (see relay --help --verbose)")
            prefix, switch = found
            value = inline if eq else None
            if switch.value == REQUIRED and value is None:
                if index >= len(args):
                    raise UsageError(f"--{name} needs a value")
                value = args[index]
                index += 1
            elif switch.value == NONE and value is not None:
                raise UsageError(f"--{name} takes no value")
            words.append(_Word(prefix, switch, value, f"--{name}"))
        elif word.startswith("-") and len(word) > 1:
            letters = word[1:]
            while letters:
                letter = table.BY_SHORT.get(letters[0])
                if letter is None:
                    raise UsageError(f"unknown switch -{letters[0]} (see relay --help --verbose)")
                letters = letters[1:]
                argument: str | None = None
                if letter.value == REQUIRED:
                    if letters:
                        argument, letters = letters, ""
                    elif index < len(args):
                        argument = args[index]
                        index += 1
                    else:
                        raise UsageError(f"-{letter.short} (--{letter.name}) needs a value")
                words.append(_Word("", letter, argument, f"-{letter.short}"))
        else:
            if config_file is not None or index < len(args):
                raise UsageError(f"unexpected argument {word!r}: only the config file may "
                                 "follow the switches")
            config_file = word
    return words, config_file


def _config_words(path: str) -> list[_Word]:
    """E-MailRelay's config file: "name value" or "name" per line, '#' comments."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError as error:
        raise UsageError(f"config file {path}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise UsageError(f"config file {path}: not UTF-8 text") from None
    words: list[_Word] = []
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, _, value = line.partition(" ")
        name = name.strip()
        text = value.strip() or None
        if text is not None and len(text) > 1 and text[0] == text[-1] and text[0] in "\"'":
            text = text[1:-1]
        found = _find(name)
        where = f"config file {path} line {number}"
        if found is None:
            raise UsageError(f"{where}: unknown switch {name!r}")
        prefix, switch = found
        if switch.value == REQUIRED and text is None:
            raise UsageError(f"{where}: {name} needs a value")
        if switch.value == NONE and text is not None:
            raise UsageError(f"{where}: {name} takes no value")
        words.append(_Word(prefix, switch, text, f"{name} ({where})"))
    return words


class SmtpConfigItems:
    """E-MailRelay's reading of a `*-smtp-config` value: a comma list of items; each keyword
    asked for takes its items out (on: `KEY`, `+KEY`, `with-KEY`; off: `-KEY`, `noKEY`,
    `without-KEY`; its default: `=KEY`), the first form found winning; what is left at the
    end is unknown (a warning there, not an error). Items are not trimmed."""

    def __init__(self, text: str) -> None:
        self.items = [item for item in text.split(",") if item]

    def _take(self, item: str) -> bool:
        if item in self.items:
            self.items.remove(item)
            return True
        return False

    def __call__(self, key: str, default: bool) -> bool:
        for form in (key, f"+{key}", f"with-{key}"):
            if self._take(form):
                return True
        for form in (f"-{key}", f"no{key}", f"without-{key}"):
            if self._take(form):
                return False
        self._take(f"={key}")
        return default


def read_smtp_config(texts: Sequence[str],
                     defaults: Mapping[str, bool]) -> tuple[dict[str, bool], list[str]]:
    """Each keyword's value from the values of a (repeatable) `*-smtp-config` switch, its
    default where none is given; and the items no keyword took."""
    items = SmtpConfigItems(",".join(texts))
    values = {key: items(key, default) for key, default in defaults.items()}
    return values, items.items
