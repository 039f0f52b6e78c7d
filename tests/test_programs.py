"""Running filters and verifiers: exit codes, `<<...>>`/`[[...]]` replies, timeout, environment.

Real child processes (small /bin/sh scripts in tmp_path); nothing is mocked.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from common.programs import ProgramResult, parse_output, printable_reply, run_program


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
    ("stdout", "parsed"),
    [
        ("<<550 5.7.1 spam>>", ("5.7.1 spam", 550, "5.7.1 spam")),
        ("[[451 later]]", ("later", 451, "later")),
        ("<<no thanks>>", ("no thanks", 0, "no thanks")),
        ("<<refused>>\n<<why: rule 7>>", ("refused", 0, "why: rule 7")),
        ("noise\nmore <<550 not at the start>> after", ("rejected", 0, "rejected")),
        ("<<250 not an error code>>", ("250 not an error code", 0, "250 not an error code")),
        ("<<5501 no space>>", ("5501 no space", 0, "5501 no space")),
        ("<<452\tafter a tab>>", ("after a tab", 452, "after a tab")),
        ("nothing in brackets", ("rejected", 0, "rejected")),
        ("<<unclosed\n<<closed>>", ("closed", 0, "closed")),
    ],
)
def test_parse_output_as_emailrelay(stdout: str, parsed: tuple[str, int, str]) -> None:
    """Only lines starting with <<...>>/[[...]] count; a 4xx/5xx and a space is the code."""
    output = parse_output(stdout)
    assert (output.response, output.code, output.reason) == parsed


def test_printable_reply() -> None:
    """Control characters never reach a reply line; its length is bounded."""
    assert printable_reply("a\x00b\rc") == "a b c"
    assert len(printable_reply("x" * 1000)) == 400


def test_exit_not_end_of_output(tmp_path: Path) -> None:
    """A program that exits leaving a child holding its stdout is done when it exits."""
    prog = _script(tmp_path, "echo '<<from the filter>>'\nsleep 30 &\nexit 0\n")
    started = time.monotonic()
    result = _run([prog], timeout=20)
    assert time.monotonic() - started < 5
    assert result.exit_code == 0 and result.lines == ["<<from the filter>>"]


def test_timeout_kills_a_sleeping_script_quickly(tmp_path: Path) -> None:
    """A program that outlives its timeout is killed (with its children) and reports timed_out."""
    prog = _script(tmp_path, "sleep 30 &\nsleep 30\n")
    started = time.monotonic()
    result = _run([prog], timeout=0.5)
    assert time.monotonic() - started < 5
    assert result.timed_out and result.exit_code is None
    assert "timed out" in result.stderr


def test_minimal_environment() -> None:
    """E-MailRelay's environment only: PATH=/usr/bin:/bin and IFS, whatever the caller has."""
    result = _run(["/usr/bin/env", "-0"])
    assert result.exit_code == 0
    assert sorted(result.stdout.split("\0")[:-1]) == ["IFS= \t\n", "PATH=/usr/bin:/bin"]


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
