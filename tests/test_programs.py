"""Running filters and verifiers: exit codes, `<<...>>`/`[[...]]` replies, timeout, environment.

Real child processes (small /bin/sh scripts in tmp_path); nothing is mocked.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from common.programs import ProgramResult, printable_reply, run_program


def _script(tmp_path: Path, body: str, name: str = "prog") -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o700)
    return str(path)


def _run(argv: list[str], timeout: float = 10.0) -> ProgramResult:
    return asyncio.run(run_program(argv, timeout))


def test_exit_code_stdout_and_arguments(tmp_path: Path) -> None:
    """The exit code and stdout come back; arguments are passed without a shell."""
    prog = _script(tmp_path, 'echo "first:$1"\necho "second:$2"\necho oops >&2\nexit 7\n')
    result = _run([prog, "a b; rm -rf /", "$HOME"])
    assert result.exit_code == 7 and not result.timed_out
    assert result.lines == ["first:a b; rm -rf /", "second:$HOME"]
    assert result.stderr == "oops\n"


@pytest.mark.parametrize(
    ("stdout", "reply"),
    [
        ("<<550 5.7.1 spam>>", (550, "5.7.1 spam")),
        ("[[451 later]]", (451, "later")),
        ("<<no thanks>>", (452, "no thanks")),
        ("[[ rejected by policy ]]", (452, "rejected by policy")),
        ("noise\nmore <<550 second line>> after", (550, "second line")),
        ("<<250 not an error code>>", (452, "250 not an error code")),
        ("nothing in brackets", (452, "rejected")),
        ("<<550 >>", (550, "rejected")),
    ],
)
def test_reply_parsing(tmp_path: Path, stdout: str, reply: tuple[int, str]) -> None:
    """The first `<<...>>` or `[[...]]` on stdout is the reply; a leading 4xx/5xx is its code."""
    prog = _script(tmp_path, f"printf '%s\\n' '{stdout.replace(chr(10), chr(39) + ' ' + chr(39))}'"
                   "\nexit 1\n")
    result = _run([prog])
    assert result.exit_code == 1
    assert result.reply() == reply


def test_reply_default_code_and_printable() -> None:
    """The default code is the caller's; control characters never reach the reply line."""
    assert ProgramResult(1, "<<go away>>", "").reply(554) == (554, "go away")
    assert printable_reply("a\x00b\rc") == "a b c"
    assert len(printable_reply("x" * 1000)) == 400


def test_timeout_kills_a_sleeping_script_quickly(tmp_path: Path) -> None:
    """A program that outlives its timeout is killed (with its children) and reports timed_out."""
    prog = _script(tmp_path, "sleep 30 &\nsleep 30\n")
    started = time.monotonic()
    result = _run([prog], timeout=0.5)
    assert time.monotonic() - started < 5
    assert result.timed_out and result.exit_code is None
    assert "timed out" in result.stderr


def test_minimal_environment() -> None:
    """The program sees only PATH=/usr/bin:/bin, whatever the caller's environment holds."""
    result = _run(["/usr/bin/env"])
    assert result.exit_code == 0
    assert result.lines == ["PATH=/usr/bin:/bin"]


def test_stdin_is_dev_null(tmp_path: Path) -> None:
    """The program's stdin is /dev/null: reading it gives end of file at once."""
    prog = _script(tmp_path, 'if read line; then echo "got:$line"; else echo eof; fi\n'
                   'readlink /proc/self/fd/0\n')
    result = _run([prog], timeout=5)
    assert result.lines == ["eof", "/dev/null"]


def test_missing_program_is_exit_127(tmp_path: Path) -> None:
    """A program that cannot be run reports exit 127 and the reason."""
    result = _run([str(tmp_path / "absent")])
    assert result.exit_code == 127
    assert "cannot run" in result.stderr
