"""What a daemon does to its own process: run as another user, say it is ready, quiet stderr.

relay-intake and relay-deliver (and `relay`, which starts them) share these steps:
`--user NAME` switches a process started as root to that user for good (groups, then gid,
then uid; real, effective and saved ids alike), after intake has bound its port and before
either reads a message, so that filters and verifiers run as that user too; `--ready-fd N`
(given by `relay`) is a pipe on which the program writes one line once it is serving, so
that a daemonising parent can return 0 only then; `--close-stderr` points stderr at
/dev/null once started (see `common.logs.close_stderr`). Reads the password database;
writes only the ready pipe.

`settle_heap()` is the step before serving: the objects of the start-up (modules,
configuration) are moved out of the cyclic garbage collector's sight (`gc.freeze`), and
its youngest generation is collected less often. Each connection leaves a few dozen
objects in reference cycles (aiosmtpd's protocol, its stream reader and writer, its task
and the bound methods they hold of each other), which only the collector frees; with the
defaults it ran a collection every ~15 connections, walking the live sessions' objects
again each time (docs/performance.md).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import os
import pwd

from common.config import ConfigError, Option

# Container allocations (net of frees) between two collections of the youngest generation:
# Python's default is 700. The older generations keep their defaults (10, 10).
YOUNG_GENERATION_THRESHOLD = 7000
DEFAULT_USER = "daemon"  # E-MailRelay's default --user
USER_ENV = "RELAY_STORAGE_USER"  # intake's storage process: the user to become at start

USER_OPTION = Option(
    "user", "when started as root: the user to switch to once the port is bound, before any "
    "message is read (filters and verifiers run as it too); 'root' stays root. Not root: "
    "ignored", None, metavar="NAME")
READY_FD_OPTION = Option(
    "ready-fd", "file descriptor on which to write one line once serving (for `relay`)",
    None, "int", metavar="FD")
CLOSE_STDERR_OPTION = Option(
    "close-stderr", "point stderr at /dev/null once started (logs: --log-file or --syslog)",
    False, "bool")


def lookup_user(name: str) -> pwd.struct_passwd:
    """The password entry of *name* (a name or a number); ConfigError if there is none."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        if name.isdigit():
            try:
                return pwd.getpwuid(int(name))
            except KeyError:
                pass
        raise ConfigError(f"--user: no such user {name!r}") from None


# Imported on first use by the event loop and asyncio's threads: a Python installed where
# the --user may not read (a root-only home) must have them loaded before the switch.
_LATE_IMPORTS = ("concurrent.futures.thread", "concurrent.futures.process", "uvloop",
                 "asyncio.unix_events", "encodings.idna", "ssl")


def _import_while_root() -> None:
    for module in _LATE_IMPORTS:
        with contextlib.suppress(ImportError):
            importlib.import_module(module)


def drop_privileges(name: str | None) -> str | None:
    """Become user *name* if running as root; returns the name switched to, or None.

    The switch is for good (setuid sets every uid), so that nothing run later, a filter
    or a hostile message's verifier, can take root back.
    """
    if name is None or name == "root" or os.geteuid() != 0:
        return None
    entry = lookup_user(name)
    _import_while_root()
    os.initgroups(entry.pw_name, entry.pw_gid)
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    if os.getuid() != entry.pw_uid or os.geteuid() != entry.pw_uid:
        raise ConfigError(f"--user: could not switch to {name!r}")
    os.environ["HOME"] = entry.pw_dir
    os.environ["USER"] = os.environ["LOGNAME"] = entry.pw_name
    return entry.pw_name


def notify_ready(fd: int | None, message: str = "ready") -> None:
    """Write one line to the ready pipe (if any) and close it; a parent that left is fine."""
    if fd is None:
        return
    with contextlib.suppress(OSError):
        os.write(fd, f"{message}\n".encode())
    with contextlib.suppress(OSError):
        os.close(fd)


def settle_heap() -> None:
    """Before serving: freeze what start-up made, collect the youngest generation less often."""
    gc.collect()
    gc.freeze()
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, middle, old)
