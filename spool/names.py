"""Spool file names: states as named constants, and the mapping between names and states.

Pure; touches no files. A message is `<id>.content` plus one `<id>.envelope<state>`.
"""

from __future__ import annotations

from enum import Enum


class State(Enum):
    """The state of a message, as carried by its envelope file's suffix."""

    NEW = ".envelope.new"  # being written or filtered at intake
    READY = ".envelope"  # accepted, waiting to be forwarded
    BUSY = ".envelope.busy"  # claimed by one deliver worker
    BAD = ".envelope.bad"  # failed; reasons appended inside
    # put aside by an administrator (relay-queue hold): deliver, resubmit and notify skip
    # it, and E-MailRelay's programs, which look for names ending in `.envelope` or
    # `.envelope.bad`, do not see it at all
    HELD = ".envelope.held"
    # a delivery status notification relay-notify has stored but not yet released (it
    # becomes `.envelope` once the failed message it answers has left the spool): ignored
    # by deliver and, ending in neither `.envelope` nor `.envelope.bad`, by E-MailRelay
    DSN = ".envelope.dsn"

    @property
    def suffix(self) -> str:
        return self.value


CONTENT_SUFFIX = ".content"
# Touched by intake (filter exit 102/103) and tools to ask deliver to scan now.
TRIGGER_NAME = ".relay-scan-now"
# Held (flock) by the cron tools so that two runs at once do not step on each other.
TOOLS_LOCK_NAME = ".relay-tools.lock"
# Suffix of a temporary file relay writes before renaming it into place.
TEMP_SUFFIX = ".tmp"

_BY_SUFFIX = sorted(State, key=lambda state: len(state.value), reverse=True)


def envelope_name(message_id: str, state: State) -> str:
    """The envelope file name for *message_id* in *state*."""
    return message_id + state.value


def content_name(message_id: str) -> str:
    """The content file name for *message_id*."""
    return message_id + CONTENT_SUFFIX


def parse_name(name: str) -> tuple[str, State | None] | None:
    """(id, state) for an envelope, (id, None) for a content file, None for anything else."""
    if name.startswith(".") or name.endswith(TEMP_SUFFIX):
        return None
    if name.endswith(CONTENT_SUFFIX):
        message_id = name[: -len(CONTENT_SUFFIX)]
        return (message_id, None) if message_id else None
    for state in _BY_SUFFIX:
        if name.endswith(state.value):
            message_id = name[: -len(state.value)]
            return (message_id, state) if message_id else None
    return None
