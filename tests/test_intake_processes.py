"""relay-intake's processes as real subprocesses: the storage process wherever intake runs.

relay-intake started in a working directory that holds a folder named `spool` (the spool
itself, as `cd /var && relay-intake --spool-dir spool` would have) still stores mail: the
storage process is not fooled into importing that folder as the spool package.
"""

from __future__ import annotations

import signal
from pathlib import Path

from support.intake import MESSAGE, IntakeProcess


def test_a_spool_folder_in_the_working_directory_is_not_imported(tmp_path: Path) -> None:
    """cwd holds `spool/` (the spool itself): messages are still stored (250, two files)."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir(mode=0o700)
    with IntakeProcess(Path("spool"), cwd=tmp_path) as intake:
        with intake.smtp() as client:
            client.sendmail("a@example.org", ["b@example.com"], MESSAGE)
        log = intake.finish(signal.SIGTERM)
    names = sorted(path.suffix for path in spool_dir.iterdir())
    assert names == [".content", ".envelope"], log
