"""Shared fixtures: a private spool directory, a controllable SMTP sink, a small disk, the
test CA. Shared helpers (no fixtures) are in the support package beside this file."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

sys.path.insert(0, os.path.dirname(__file__))

from support.sink import Sink

from spool import Spool


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    """An empty spool directory, mode 0700."""
    path = tmp_path / "spool"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
def spool(spool_dir: Path) -> Spool:
    return Spool(spool_dir)


@pytest.fixture
def sink() -> Iterator[Sink]:
    """A running aiosmtpd sink on 127.0.0.1 that accepts everything until told otherwise."""
    with Sink() as running:
        yield running


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs mounted for this test (needs root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill the spool's disk needs root")
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs",
                              str(mount_point)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    """A throwaway certificate authority; support.tls makes certificates, keys and contexts
    from it."""
    return trustme.CA()
