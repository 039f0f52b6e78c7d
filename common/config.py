"""Shared configuration for every relay program: flags > RELAY_* environment > file > defaults.

Each program declares its `Option`s; `load_settings` builds the argparse parser, reads the
one shared TOML config file (`--config FILE` or `RELAY_CONFIG`), the `RELAY_*` environment
and the command line, and returns an `argparse.Namespace` whose attributes are the option
names with `_` for `-`. The file has shared keys at the top and may have a table per
program (`[intake]`, `[deliver]`, ...) whose keys win over the shared ones; a program
ignores top-level keys that belong to other programs but refuses unknown keys in its own
table. Reads the config file only.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

EX_USAGE = os.EX_USAGE  # 64
EX_CONFIG = os.EX_CONFIG  # 78
ENV_PREFIX = "RELAY_"
KINDS = ("str", "int", "float", "bool", "list", "size", "duration")
DEFAULT_SPOOL_DIR = "/var/spool/relay"


class ConfigError(Exception):
    """A setting that cannot be used; the message names where it came from."""


@dataclass(frozen=True)
class Option:
    """One setting: its long flag name (without dashes), kind, default and help."""

    name: str
    help: str
    default: Any = None
    kind: str = "str"
    metavar: str | None = None
    short: str | None = None
    choices: tuple[str, ...] | None = None

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper().replace("-", "_")


COMMON_OPTIONS: tuple[Option, ...] = (
    Option("config", "shared TOML config file (also RELAY_CONFIG)", None, metavar="FILE"),
    Option(
        "log-format",
        "log line format",
        "logfmt",
        choices=("console", "logfmt", "json"),
    ),
    Option("syslog", "also log to syslog (the facility: --syslog-facility)", False, "bool"),
    Option("syslog-facility", "syslog facility for --syslog", "mail", metavar="FACILITY"),
    Option("log-file", "log to this file instead of stderr; %d in the name is today's date "
           "(YYYYMMDD: a file a day); reopened on SIGHUP", None, metavar="FILE"),
    Option("log-time", "a timestamp on every line (--no-log-time: none, e.g. under syslog)",
           True, "bool"),
    Option("verbose", "log debug detail, the SMTP dialogue included", False, "bool", short="v"),
)


def version() -> str:
    """relay's version, from the installed package's metadata."""
    from importlib import metadata  # noqa: PLC0415 (only --version needs it)

    try:
        return metadata.version("relay")
    except metadata.PackageNotFoundError:
        return "unknown"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"^\s*(\d+)\s*([kKmMgG]?)[iI]?[bB]?\s*$")
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def parse_size(text: str) -> int:
    """'32M', '1g', '4096' -> bytes."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (use bytes or a K, M, G suffix)")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def parse_duration(text: str | float | int) -> float:
    """'90', '0.5', '90s', '15m', '2h', '5d' (or a number) -> seconds. ValueError otherwise."""
    if isinstance(text, bool):
        raise ValueError(f"not a duration: {text!r}")
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        match = _DURATION.match(str(text).lower())
        if not match:
            raise ValueError(f"not a duration: {text!r} (use seconds or an s, m, h, d suffix)")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds < 0:
        raise ValueError(f"not a duration: {text!r} (negative)")
    return seconds


SPOOL_DIR_OPTION = Option("spool-dir", "the spool directory", DEFAULT_SPOOL_DIR, metavar="DIR")


def convert(option: Option, value: Any, source: str) -> Any:
    """Convert a raw value (str from env/flags, TOML types from the file) to the option's kind."""
    try:
        if option.kind == "list":
            if isinstance(value, list):
                return [str(item) for item in value]
            return [item.strip() for item in str(value).split(",") if item.strip()]
        if option.kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError(f"not a boolean: {value!r}")
        if option.kind == "int":
            if isinstance(value, bool):
                raise ValueError(f"not a whole number: {value!r}")
            return int(value)
        if option.kind == "float":
            if isinstance(value, bool):
                raise ValueError(f"not a number: {value!r}")
            return float(value)
        if option.kind == "duration":
            return parse_duration(value)
        if option.kind == "size":
            return value if isinstance(value, int) and not isinstance(value, bool) else parse_size(
                str(value)
            )
        text = str(value)
        if option.choices and text not in option.choices:
            raise ValueError(f"{text!r} is not one of {', '.join(option.choices)}")
        return text
    except ValueError as error:
        raise ConfigError(f"{source}: {option.name}: {error}") from None


class _Parser(argparse.ArgumentParser):
    """argparse that exits 64 (EX_USAGE) on a usage error, as the house rules ask."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


def build_parser(prog: str, description: str, options: Sequence[Option]) -> argparse.ArgumentParser:
    """The argparse parser for *options* (plus the common ones); defaults are left unset."""
    parser = _Parser(prog=prog, description=description, argument_default=argparse.SUPPRESS)
    parser.add_argument("--version", action="version", version=f"{prog} {version()}",
                        help="print the version and exit")
    for option in (*options, *COMMON_OPTIONS):
        flags = [f"--{option.name}"] + ([f"-{option.short}"] if option.short else [])
        shown = option.default not in (None, [], False)
        default_text = f" (default: {option.default})" if shown else ""
        # argparse formats help with %: a literal % (the --log-file date) is written %%
        help_text = f"{option.help}{default_text} [env {option.env}]".replace("%", "%%")
        if option.kind == "bool":
            parser.add_argument(*flags, dest=option.dest, help=help_text,
                                action=argparse.BooleanOptionalAction)
        elif option.kind == "list":
            parser.add_argument(*flags, dest=option.dest, help=help_text + " (repeatable)",
                                action="append", metavar=option.metavar or "VALUE")
        else:
            parser.add_argument(*flags, dest=option.dest, help=help_text,
                                metavar=option.metavar or option.name.split("-")[-1].upper(),
                                choices=option.choices)
    return parser


def read_config_file(path: str) -> dict[str, Any]:
    """The TOML config file as a dict; ConfigError with the reason if it cannot be read."""
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as error:
        raise ConfigError(f"config file {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path}: {error}") from None


def _default(option: Option) -> Any:
    """An option's default in its kind: a fresh list, or '5d' / '32M' parsed like a value."""
    if isinstance(option.default, list):
        return list(option.default)
    if option.kind in ("duration", "size") and isinstance(option.default, str):
        return convert(option, option.default, "default")
    return option.default


def load_settings(
    prog: str,
    description: str,
    options: Sequence[Option],
    argv: Sequence[str] | None,
    *,
    section: str | None = None,
    environ: dict[str, str] | None = None,
) -> argparse.Namespace:
    """Merge defaults, config file, environment and flags (in rising priority).

    Usage errors exit 64 (argparse); bad values raise ConfigError (exit 78 in callers).
    """
    environ = dict(os.environ) if environ is None else environ
    all_options = (*options, *COMMON_OPTIONS)
    by_name = {option.name: option for option in all_options}
    parser = build_parser(prog, description, options)
    flags = vars(parser.parse_args(list(argv) if argv is not None else None))

    merged: dict[str, Any] = {option.dest: _default(option) for option in all_options}
    config_path = flags.get("config") or environ.get(ENV_PREFIX + "CONFIG")
    if config_path:
        data = read_config_file(config_path)
        table = data.get(section, {}) if section else {}
        if not isinstance(table, dict):
            raise ConfigError(f"config file {config_path}: [{section}] must be a table")
        for key, value in data.items():
            if key in by_name and not isinstance(value, dict):
                source = f"config file {config_path}"
                merged[by_name[key].dest] = convert(by_name[key], value, source)
        for key, value in table.items():
            if key not in by_name:
                raise ConfigError(f"config file {config_path}: [{section}] has unknown key {key!r}")
            merged[by_name[key].dest] = convert(
                by_name[key], value, f"config file {config_path} [{section}]"
            )
        merged["config"] = config_path
    for option in all_options:
        if option.env in environ and option.name != "config":
            merged[option.dest] = convert(option, environ[option.env], f"environment {option.env}")
    for dest, value in flags.items():
        option = next(o for o in all_options if o.dest == dest)
        merged[dest] = convert(option, value, f"--{option.name}")
    return argparse.Namespace(**merged)


def split_host_port(text: str, default_port: int = 25) -> tuple[str, int]:
    """'host:port', '[v6]:port', 'host:smtp' -> (host, port); a service name is looked up."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if not host:
        raise ConfigError(f"{text!r}: no host name")
    if not port_text:
        return host, default_port
    if port_text.isascii() and port_text.isdigit():  # int() would take '²' or '٣'
        port = int(port_text)
    else:
        try:
            port = socket.getservbyname(port_text, "tcp")
        except OSError:
            raise ConfigError(f"{text!r}: unknown service name {port_text!r}") from None
    if not 0 < port < 65536:
        raise ConfigError(f"{text!r}: port out of range")
    return host, port


def local_fqdn() -> str:
    """This host's fully qualified name as `hostname -f` finds it: the canonical name of the
    host name (socket.getfqdn prefers an alias, often 'localhost'); the host name if that
    lookup fails."""
    name = socket.gethostname()
    try:
        canonical = socket.getaddrinfo(name, None, 0, socket.SOCK_STREAM, 0,
                                       socket.AI_CANONNAME)[0][3]
    except (OSError, IndexError, UnicodeError):
        canonical = ""
    return canonical or name or "localhost"


def resolve_path(value: str | None) -> Path | None:
    """A path setting as a Path (None stays None); '~' is expanded."""
    return Path(os.path.expanduser(value)) if value else None
