"""Every long option of every relay program has an example in docs/: a code span or code
block that contains `--name`. The options are read from the parsers the programs themselves
parse with (`tools.manpages`, which builds them from each program's `Option` table, the
E-MailRelay switch table of `relay`) and, for relay-submit, which parses with getopt, from
its getopt table `tools.submit.LONG_OPTIONS`."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from tools import manpages, submit

DOCS = Path(__file__).resolve().parents[1] / "docs"
_FENCE = re.compile(r"^(`{3,}|~{3,})[^\n]*\n(.*?)^\1[ \t]*$", re.DOTALL | re.MULTILINE)
_SPAN = re.compile(r"(`+)(.+?)\1", re.DOTALL)


def code_text(markdown: str) -> str:
    """The code blocks and code spans of a Markdown text, one per line."""
    pieces = [match.group(2) for match in _FENCE.finditer(markdown)]
    prose = _FENCE.sub("", markdown)
    pieces += [match.group(2) for match in _SPAN.finditer(prose)]
    return "\n".join(pieces)


def docs_code() -> str:
    return "\n".join(code_text(page.read_text()) for page in sorted(DOCS.glob("*.md")))


def long_options(parser: argparse.ArgumentParser, prefix: str = "") -> list[str]:
    """The parser's long options (`--name`), its subcommands' too (`list --state`).

    A boolean's `--no-name` twin (argparse.BooleanOptionalAction) is not listed: the rule
    for it is documented once, in configuration.md (test below).
    """
    names: list[str] = []
    for action in parser._actions:  # argparse has no public list of them
        if isinstance(action, argparse._SubParsersAction):
            for command, sub in action.choices.items():
                names += long_options(sub, f"{prefix}{command} ")
            continue
        flags = [flag for flag in action.option_strings if flag.startswith("--")]
        if isinstance(action, argparse.BooleanOptionalAction):
            flags = flags[:1]
        names += [prefix + flag for flag in flags if prefix + flag not in names]
    return names


def program_options(program: str) -> list[str]:
    """PROGRAM's long options, as it parses them (subcommands' `--help` left out)."""
    if program == "relay-submit":
        return ["--" + name.rstrip("=") for name in submit.LONG_OPTIONS]
    parser: argparse.ArgumentParser = getattr(manpages, manpages.PROGRAMS[program])()
    return [option for option in long_options(parser) if not option.endswith(" --help")]


def documented(option: str, code: str) -> bool:
    """`--name` (or `command --name` as ` command ... --name`) is in the code text."""
    *command, flag = option.split(" ")
    pattern = re.escape(flag) + r"(?![\w-])"
    if command:
        pattern = r"\b" + re.escape(command[0]) + r"\b[^\n]*" + pattern
    return re.search(pattern, code) is not None


def test_code_text_finds_spans_and_blocks_only() -> None:
    """Only code is an example: `--a` and a fenced --b count, a --c in prose does not."""
    code = code_text("Use `relay-intake --a` here.\n\n```sh\nrelay --b x\n```\n\nnot --c.\n")
    assert documented("--a", code)
    assert documented("--b", code)
    assert not documented("--c", code)
    assert not documented("--a-longer", code)


def test_configuration_md_gives_the_no_form_of_booleans() -> None:
    """configuration.md says, with an example, that each boolean flag has a `--no-` form."""
    code = code_text((DOCS / "configuration.md").read_text())
    assert documented("--remote-clients", code)
    assert documented("--no-remote-clients", code)


@pytest.mark.parametrize("program", sorted(manpages.PROGRAMS))
def test_every_long_option_has_an_example_in_docs(program: str) -> None:
    """Each long option of PROGRAM appears in a code span or block somewhere in docs/."""
    options = program_options(program)
    assert options, f"{program}: no long options found (has its parser changed?)"
    code = docs_code()
    missing = [option for option in options if not documented(option, code)]
    assert not missing, f"{program}: {len(missing)} options without an example in docs/: " + \
        " ".join(missing)


# The page about each program; options shared by every program are in configuration.md.
HOME_PAGES = {"relay": "emailrelay.md", "relay-intake": "intake.md",
              "relay-deliver": "deliver.md"}


@pytest.mark.parametrize("program", sorted(manpages.PROGRAMS))
def test_every_long_option_has_an_example_on_its_programs_page(program: str) -> None:
    """Each long option of PROGRAM is in an example on its page (or configuration.md)."""
    home = HOME_PAGES.get(program, "tools.md")
    code = code_text((DOCS / home).read_text()) + "\n" + code_text(
        (DOCS / "configuration.md").read_text())
    missing = [option for option in program_options(program) if not documented(option, code)]
    assert not missing, f"{program}: {len(missing)} options without an example in docs/{home}" \
        " (nor in configuration.md): " + " ".join(missing)


def test_readme_links_every_docs_page() -> None:
    """README.md links each page of docs/ (a Markdown link to docs/NAME.md)."""
    readme = (DOCS.parent / "README.md").read_text()
    unlinked = [page.name for page in sorted(DOCS.glob("*.md"))
                if f"](docs/{page.name})" not in readme]
    assert not unlinked, "README.md does not link: " + " ".join(unlinked)
