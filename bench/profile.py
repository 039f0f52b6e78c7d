"""Summarise a py-spy raw profile (collapsed stacks): `python -m bench.profile FILE [--top N]`.

py-spy writes one line per distinct stack, `frame;frame;... count`, each frame
`function (file:line)`. This prints, per thread, the share of samples spent in each
function itself (self) and under it (inclusive), which is what docs/performance.md quotes.
Reads only the given file.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
_FRAME_LINE = re.compile(r":\d+\)$")


def frame_name(frame: str) -> str:
    """`function (path:line)` -> `function (file)`: lines of one function count together."""
    name = _FRAME_LINE.sub(")", frame.strip())
    if "(" in name:
        function, _, where = name.partition(" (")
        parts = where.rstrip(")").split("/")
        where = "/".join(parts[-2:])
        return f"{function} ({where})"
    return name


def summarise(path: Path, top: int) -> str:
    self_counts: dict[str, Counter[str]] = {}
    inclusive: dict[str, Counter[str]] = {}
    totals: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        match = _LINE.match(line)
        if match is None:
            continue
        frames = match["stack"].split(";")
        count = int(match["count"])
        # With --subprocesses and --threads py-spy starts each stack with the process and
        # the thread: those make the group, the rest are calls.
        labels = [frame for frame in frames if frame.startswith(("process ", "thread "))]
        thread = " / ".join(_short_label(label) for label in labels) or "all"
        calls = [frame_name(frame) for frame in frames[len(labels):]]
        if not calls:
            continue
        totals[thread] += count
        self_counts.setdefault(thread, Counter())[calls[-1]] += count
        for name in set(calls):
            inclusive.setdefault(thread, Counter())[name] += count
    out = []
    for thread, total in totals.most_common():
        out.append(f"== {thread}: {total} samples")
        out.append("  self%  incl%  function")
        for name, _count in self_counts[thread].most_common(top):
            out.append(_line(self_counts[thread][name], inclusive[thread][name], total, name))
        out.append("  -- self, by package --")
        packages: Counter[str] = Counter()
        for name, count in self_counts[thread].items():
            packages[_package(name)] += count
        for package, count in packages.most_common(12):
            out.append(f"  {100 * count / total:5.1f}         {package}")
        out.append("  -- inclusive --")
        for name, _count in inclusive[thread].most_common(top):
            out.append(_line(self_counts[thread][name], inclusive[thread][name], total, name))
    return "\n".join(out)


def _short_label(label: str) -> str:
    """`process 123:"/path/python /path/relay-deliver --x ..."` -> `process 123 relay-deliver`."""
    if label.startswith("process "):
        number, _, command = label[len("process "):].partition(":")
        words = command.strip('"').split()
        program = next((word.rsplit("/", 1)[-1] for word in words[1:2]), "")
        if program == "-m" and len(words) > 2:
            program = words[2]
        return f"process {number} {program}"
    return label


def _package(name: str) -> str:
    """`function (asyncio/streams.py)` -> `asyncio`; a bare file name stays itself."""
    where = name.rpartition(" (")[2].rstrip(")")
    return where.split("/")[0] if "/" in where else where


def _line(own: int, under: int, total: int, name: str) -> str:
    return f"  {100 * own / total:5.1f}  {100 * under / total:5.1f}  {name}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("file", type=Path)
    parser.add_argument("--top", type=int, default=25)
    arguments = parser.parse_args(argv)
    print(summarise(arguments.file, arguments.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
