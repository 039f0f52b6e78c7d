"""common.pidfile: written whole by rename; removed at exit only while it is still ours."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from common.pidfile import remove_pid_file, write_pid_file


def test_written_by_rename_and_removed_when_ours(tmp_path: Path) -> None:
    """The pid file holds our pid and a newline, no temporary file stays, removal takes it."""
    path = tmp_path / "x.pid"
    path.write_text("stale\n")
    write_pid_file(str(path))
    assert path.read_text() == f"{os.getpid()}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.pid"]
    remove_pid_file(str(path))
    assert not path.exists()


def test_another_processs_pid_file_is_left_alone(tmp_path: Path) -> None:
    """A pid file taken over by a newer instance is not removed by the old one's exit."""
    path = tmp_path / "x.pid"
    path.write_text("1\n")
    remove_pid_file(str(path))
    assert path.read_text() == "1\n"


def test_unwritable_directory_raises_and_leaves_no_temporary(tmp_path: Path) -> None:
    """A pid file that cannot be written is an OSError (the programs exit 78), nothing left."""
    with pytest.raises(OSError):
        write_pid_file(str(tmp_path / "missing" / "x.pid"))
    assert list(tmp_path.iterdir()) == []
