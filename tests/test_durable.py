"""common.durable.replace_file on real files: whole replacement, nothing left behind, and a
temporary name already taken (a file, a link) refused without writing through it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from common.durable import replace_file


def test_replaces_the_file_whole_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "m.envelope"
    target.write_bytes(b"old\n")
    replace_file(target, b"new\n" * 10_000, tmp_path / "m.envelope.mx")
    assert target.read_bytes() == b"new\n" * 10_000
    assert sorted(os.listdir(tmp_path)) == ["m.envelope"]
    assert target.stat().st_mode & 0o777 == 0o600


def test_a_link_at_the_temporary_name_is_refused_and_never_followed(tmp_path: Path) -> None:
    target = tmp_path / "m.envelope"
    target.write_bytes(b"old\n")
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep\n")
    (tmp_path / "m.envelope.mx").symlink_to(victim)
    with pytest.raises(FileExistsError):
        replace_file(target, b"new\n", tmp_path / "m.envelope.mx")
    assert victim.read_bytes() == b"keep\n"
    assert target.read_bytes() == b"old\n"


def test_a_failed_write_removes_the_temporary_and_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "m.envelope"
    target.write_bytes(b"old\n")
    with pytest.raises(TypeError):
        replace_file(target, "not bytes", tmp_path / "m.envelope.mx")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old\n"
    assert sorted(os.listdir(tmp_path)) == ["m.envelope"]
