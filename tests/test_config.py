"""Shared settings: precedence flags > RELAY_* env > config file > defaults, kinds, errors.

Real TOML files in tmp_path; the environment is passed explicitly (never os.environ).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from common.config import (
    DEFAULT_SPOOL_DIR,
    ConfigError,
    Option,
    convert,
    load_settings,
    parse_size,
    resolve_path,
    split_host_port,
)
from deliver.settings import OPTIONS as DELIVER_OPTIONS
from intake.settings import OPTIONS as INTAKE_OPTIONS
from tools.notify import OPTIONS as NOTIFY_OPTIONS
from tools.resubmit import OPTIONS as RESUBMIT_OPTIONS

OPTIONS = [
    Option("port", "listening port", 25, "int"),
    Option("size", "largest message", 32 * 1024 * 1024, "size"),
    Option("remote-clients", "allow remote clients", False, "bool"),
    Option("filter", "filter programs", [], "list"),
    Option("forward-to", "smarthost", "localhost:smtp"),
    Option("poll", "seconds between scans", 60.0, "float"),
]


def _load(
    argv: list[str], environ: dict[str, str] | None = None, section: str = "intake"
) -> dict[str, object]:
    settings = load_settings("relay-test", "test", OPTIONS, argv, section=section,
                             environ=environ or {})
    return vars(settings)


def _config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "relay.toml"
    path.write_text(text)
    return str(path)


def test_defaults_when_nothing_is_set() -> None:
    """With no flags, environment or file, every option has its default."""
    settings = _load([])
    assert settings["port"] == 25 and settings["size"] == 32 * 1024 * 1024
    assert settings["remote_clients"] is False and settings["filter"] == []
    assert settings["log_format"] == "logfmt" and settings["verbose"] is False
    assert settings["config"] is None


def test_precedence_flags_over_env_over_file_over_defaults(tmp_path: Path) -> None:
    """Each layer overrides the one below: flag > RELAY_* > [program] table > top level."""
    config = _config(tmp_path, 'port = 2525\npoll = 5\nforward-to = "top:25"\n'
                               '[intake]\nport = 2526\nforward-to = "table:25"\n'
                               '[deliver]\nport = 9999\n')
    settings = _load(["--config", config])
    assert settings["port"] == 2526 and settings["forward_to"] == "table:25"
    assert settings["poll"] == 5.0  # top-level key, no table key
    settings = _load(["--config", config], {"RELAY_PORT": "2527"})
    assert settings["port"] == 2527
    settings = _load(["--config", config, "--port", "2528"], {"RELAY_PORT": "2527"})
    assert settings["port"] == 2528
    assert _load(["--config", config], section="deliver")["port"] == 9999


def test_config_file_from_relay_config_env(tmp_path: Path) -> None:
    """RELAY_CONFIG names the config file when --config is not given; --config wins over it."""
    first = _config(tmp_path, "port = 1111\n")
    second = tmp_path / "other.toml"
    second.write_text("port = 2222\n")
    assert _load([], {"RELAY_CONFIG": first})["port"] == 1111
    assert _load(["--config", str(second)], {"RELAY_CONFIG": first})["port"] == 2222


def test_kinds_from_environment() -> None:
    """Sizes take K/M/G, booleans yes/no/1/0, lists are comma separated."""
    settings = _load([], {"RELAY_SIZE": "32M", "RELAY_REMOTE_CLIENTS": "yes",
                          "RELAY_FILTER": "/bin/a, /bin/b,,", "RELAY_POLL": "0.5"})
    assert settings["size"] == 32 * 1024 * 1024
    assert settings["remote_clients"] is True
    assert settings["filter"] == ["/bin/a", "/bin/b"]
    assert settings["poll"] == 0.5
    assert _load([], {"RELAY_REMOTE_CLIENTS": "0"})["remote_clients"] is False


def test_kinds_from_file_and_flags(tmp_path: Path) -> None:
    """TOML arrays are lists, TOML booleans booleans; repeated list flags collect."""
    config = _config(tmp_path, 'filter = ["/bin/a", "/bin/b"]\nremote-clients = true\n'
                               'size = "1g"\n')
    settings = _load(["--config", config])
    assert settings["filter"] == ["/bin/a", "/bin/b"]
    assert settings["remote_clients"] is True and settings["size"] == 1024**3
    settings = _load(["--config", config, "--filter", "/x", "--filter", "/y",
                      "--no-remote-clients", "--size", "4096"])
    assert settings["filter"] == ["/x", "/y"]
    assert settings["remote_clients"] is False and settings["size"] == 4096


def test_parse_size_units() -> None:
    """parse_size reads bytes and K/M/G suffixes (binary), with optional B or iB."""
    assert parse_size("4096") == 4096
    assert parse_size("10k") == 10 * 1024
    assert parse_size("32MB") == 32 * 1024**2
    assert parse_size("2GiB") == 2 * 1024**3
    with pytest.raises(ValueError, match="not a size"):
        parse_size("big")


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"RELAY_PORT": "many"}, "environment RELAY_PORT: port:"),
        ({"RELAY_REMOTE_CLIENTS": "perhaps"}, "not a boolean"),
        ({"RELAY_SIZE": "lots"}, "not a size"),
        ({"RELAY_LOG_FORMAT": "xml"}, "'xml' is not one of console, logfmt, json"),
    ],
)
def test_bad_environment_value_is_a_config_error(environ: dict[str, str], message: str) -> None:
    """A bad value in the environment raises ConfigError naming the variable and the problem."""
    with pytest.raises(ConfigError, match=message):
        _load([], environ)


def test_unknown_key_in_own_table_is_refused(tmp_path: Path) -> None:
    """An unknown key in the program's own table is an error; other programs' keys are ignored."""
    config = _config(tmp_path, 'max-retries = 5\n[intake]\nprot = 25\n[notify]\nx = 1\n')
    with pytest.raises(ConfigError, match=r"\[intake\] has unknown key 'prot'"):
        _load(["--config", config])
    assert _load(["--config", config], section="deliver")["port"] == 25


def test_bad_config_files_are_config_errors(tmp_path: Path) -> None:
    """A missing file, bad TOML, a non-table section or a bad value name the file."""
    with pytest.raises(ConfigError, match="does not exist"):
        _load(["--config", str(tmp_path / "missing.toml")])
    with pytest.raises(ConfigError, match=r"relay\.toml"):
        _load(["--config", _config(tmp_path, "port = \n")])
    with pytest.raises(ConfigError, match="must be a table"):
        _load(["--config", _config(tmp_path, "intake = 3\n")])
    with pytest.raises(ConfigError, match=r"relay\.toml \[intake\]: port"):
        _load(["--config", _config(tmp_path, '[intake]\nport = "x"\n')])


def test_usage_error_exits_64(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown flag or a bad choice exits with EX_USAGE (64) and a usage line."""
    for argv in (["--no-such-flag"], ["--log-format", "xml"], ["--port"]):
        with pytest.raises(SystemExit) as caught:
            _load(argv)
        assert caught.value.code == 64
    assert "usage:" in capsys.readouterr().err


def test_common_options_are_on_every_program() -> None:
    """--config, --log-format, --syslog and --verbose/-v come with every option list."""
    settings = _load(["--log-format", "json", "--syslog", "-v"])
    assert settings["log_format"] == "json"
    assert settings["syslog"] is True and settings["verbose"] is True


def test_convert_keeps_int_for_size_and_refuses_bool_for_int() -> None:
    """A TOML integer is a size in bytes; a TOML boolean is not a number."""
    size, port = OPTIONS[1], OPTIONS[0]
    assert convert(size, 100, "file") == 100
    with pytest.raises(ConfigError, match="not a whole number"):
        convert(port, True, "file")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("smarthost:smtp", ("smarthost", 25)),
        ("smarthost:submission", ("smarthost", 587)),
        ("smarthost:2525", ("smarthost", 2525)),
        ("smarthost", ("smarthost", 25)),
        ("[2001:db8::1]:587", ("2001:db8::1", 587)),
        ("[::1]", ("::1", 25)),
        ("::1", ("::1", 25)),
        (" 192.0.2.1:26 ", ("192.0.2.1", 26)),
    ],
)
def test_split_host_port(text: str, expected: tuple[str, int]) -> None:
    """host:port takes numbers, service names and bracketed IPv6 addresses."""
    assert split_host_port(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("host:nosuchservice", "unknown service name"),
        ("host:0", "out of range"),
        ("host:70000", "out of range"),
        (":25", "no host name"),
        ("host:²", "unknown service name"),
    ],
)
def test_split_host_port_errors(text: str, message: str) -> None:
    """A bad host:port raises ConfigError saying what is wrong."""
    with pytest.raises(ConfigError, match=message):
        split_host_port(text)


def test_resolve_path_expands_home() -> None:
    """Path settings expand ~ and keep None."""
    assert resolve_path(None) is None
    assert resolve_path("~/spool") == Path.home() / "spool"


def test_duration_kind_from_every_source(tmp_path: Path) -> None:
    """A duration takes seconds or s/m/h/d from flags, environment and file; bad ones are 78s."""
    option = Option("filter-timeout", "t", 60.0, "duration")
    assert convert(option, "1m", "--filter-timeout") == 60.0
    assert convert(option, 90, "file") == 90.0
    assert convert(option, "0.5", "env") == 0.5
    assert convert(option, "2h", "env") == 7200.0
    for bad in ("5 weeks", "-1", True):
        with pytest.raises(ConfigError, match="filter-timeout: not a duration"):
            convert(option, bad, "--filter-timeout")
    defaulted = load_settings("relay-test", "t", [Option("max-age", "a", "5d", "duration")], [],
                              environ={})
    assert defaulted.max_age == 5 * 86400.0


def test_every_program_reads_durations_and_the_spool_dir_alike() -> None:
    """One shape: intake and deliver take `1m` for --filter-timeout and share one default spool."""
    for options, section in ((INTAKE_OPTIONS, "intake"), (DELIVER_OPTIONS, "deliver")):
        settings = load_settings("p", "d", options, ["--filter-timeout", "1m"], section=section,
                                 environ={})
        assert settings.filter_timeout == 60.0
        assert settings.spool_dir == DEFAULT_SPOOL_DIR
    for options in (NOTIFY_OPTIONS, RESUBMIT_OPTIONS):
        spool_dir = next(option for option in options if option.name == "spool-dir")
        assert spool_dir.default == DEFAULT_SPOOL_DIR


@pytest.mark.parametrize("program", ["relay-intake", "relay-deliver", "relay-resubmit",
                                     "relay-notify"])
def test_help_of_every_program_prints(program: str) -> None:
    """--help works in every program (a % in a help text, the --log-file date, once broke it)."""
    done = subprocess.run([str(Path(sys.executable).with_name(program)), "--help"],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0 and "--log-file" in done.stdout and "%d" in done.stdout
