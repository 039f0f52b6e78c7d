"""Shared fixtures: a private spool directory and a controllable SMTP sink."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from sink import Sink

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
