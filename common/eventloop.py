"""Which asyncio event loop relay-intake and relay-deliver run on: asyncio's own or uvloop.

uvloop (the optional `fast` extra: `pip install 'relay[fast]'`) implements the same event
loop on libuv; its socket and pipe transports cost less CPU per call, which is most of
what intake's event loop does (docs/performance.md). `--event-loop auto`, the default,
takes uvloop when it is installed and asyncio's loop otherwise, so uvloop is never a
requirement; `asyncio` or `uvloop` choose explicitly (`uvloop` without it installed is a
configuration error). Touches no files.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from common.config import ConfigError, Option

CHOICES = ("auto", "asyncio", "uvloop")
EVENT_LOOP_OPTION = Option(
    "event-loop",
    "the event loop: auto (uvloop when installed, else asyncio's), asyncio or uvloop",
    "auto",
    choices=CHOICES,
)
Result = TypeVar("Result")


def uvloop_installed() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def resolve(choice: str) -> str:
    """'asyncio' or 'uvloop' for a setting; ConfigError when uvloop is asked for but missing."""
    if choice not in CHOICES:
        raise ConfigError(f"event-loop must be one of {', '.join(CHOICES)}, not {choice!r}")
    if choice == "auto":
        return "uvloop" if uvloop_installed() else "asyncio"
    if choice == "uvloop" and not uvloop_installed():
        raise ConfigError("event-loop uvloop: uvloop is not installed (pip install 'relay[fast]')")
    return choice


def _loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if kind == "uvloop":
        import uvloop  # noqa: PLC0415 - optional, imported only when chosen

        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return factory
    return None


def run(main: Coroutine[Any, Any, Result], kind: str) -> Result:
    """Run *main* to completion on a new loop of *kind* ('asyncio' or 'uvloop')."""
    with asyncio.Runner(loop_factory=_loop_factory(kind)) as runner:
        return runner.run(main)
