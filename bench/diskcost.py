"""What durable storing costs on this machine: `python -m bench.diskcost [--messages N]`.

Not one of the six benchmarks: a measurement that explains benchmark 1. It stores N
messages (a 4 KiB content file and a ~500-byte envelope each, then a rename) into a scratch
directory on the real disk in batches of 20 (the number of sessions of benchmark 1), by
several strategies, and prints the wall time and the CPU (user + system, all threads) per
message of each:

- `per-file fsync, 1 thread`: write+fsync content, write+fsync envelope, per message; then
  rename the batch and fsync the directory once (spool's MessageWriter/Spool.commit).
- `per-file fsync, 8 threads`: the same writes spread over 8 threads.
- `batch write, then fsync each`: write all files of the batch first, then fsync them (the
  first fsync's journal commit carries the others' data, so the rest are cheap).
- `batch write, one syncfs`: write all files, one syncfs() of the file system, rename,
  directory fsync.
- `no fsync`: the same files, nothing synced (the floor).

Each measure runs in a new directory in a block group of its own (`chattr +T` on the
scratch directory), like benchmark spools. The last line repeats `no fsync` in a plain
subdirectory of --work-dir instead: where other programs deleted many files in the last
minutes, ext4 without a journal skips every recently deleted inode one by one
(`recently_deleted()`) and file creation becomes the dominant cost.
Writes only into scratch directories under --work-dir, removed at the end.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import mark_top_directory

CONTENT = b"x" * 4096
ENVELOPE = b"X-MailRelay-Format: #2821.8\r\n" + b"X-MailRelay-Field: value\r\n" * 16
BATCH = 20
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
_libc = ctypes.CDLL(None, use_errno=True)


class Store:
    """One scratch directory and a counter for fresh names."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        self._lock = threading.Lock()
        self._next = 0

    def name(self) -> str:
        with self._lock:
            self._next += 1
            return str(self.directory / f"m{self._next}")

    def write(self, path: str, data: bytes, sync: bool) -> int:
        fd = os.open(path, _FLAGS, 0o600)
        os.write(fd, data)
        if sync:
            os.fsync(fd)
        return fd

    def commit(self, names: list[str], sync: bool = True) -> None:
        for name in names:
            os.rename(name + ".envelope.new", name + ".envelope")
        if sync:
            os.fsync(self.dir_fd)


def per_file(store: Store, batch: int, pool: ThreadPoolExecutor | None) -> None:
    def one() -> str:
        name = store.name()
        os.close(store.write(name + ".content", CONTENT, True))
        os.close(store.write(name + ".envelope.new", ENVELOPE, True))
        return name

    if pool is None:
        names = [one() for _ in range(batch)]
    else:
        names = list(pool.map(lambda _n: one(), range(batch)))
    store.commit(names)


def batch_then_fsync(store: Store, batch: int, syncfs: bool) -> None:
    names = [store.name() for _ in range(batch)]
    fds = []
    for name in names:
        fds.append(store.write(name + ".content", CONTENT, False))
        fds.append(store.write(name + ".envelope.new", ENVELOPE, False))
    if syncfs and _libc.syncfs(store.dir_fd) != 0:
        raise OSError(ctypes.get_errno(), "syncfs failed")
    for fd in fds:
        if not syncfs:
            os.fsync(fd)
        os.close(fd)
    store.commit(names)


def no_sync(store: Store, batch: int) -> None:
    names = [store.name() for _ in range(batch)]
    for name in names:
        os.close(store.write(name + ".content", CONTENT, False))
        os.close(store.write(name + ".envelope.new", ENVELOPE, False))
    store.commit(names, sync=False)


def measure(directory: Path, messages: int, strategy: Callable[[Store, int], None], *,
            fresh: bool = True) -> tuple[float, float]:
    """(wall, CPU) microseconds per message, in a new subdirectory of *directory* if fresh."""
    store = Store(Path(tempfile.mkdtemp(dir=directory)) if fresh else directory)
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    for _ in range(messages // BATCH):
        strategy(store, BATCH)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    os.close(store.dir_fd)
    return 1e6 * wall / messages, 1e6 * cpu / messages


def in_shared_group(work_dir: Path, messages: int) -> tuple[float, float]:
    """`no fsync` in a plain new subdirectory of *work_dir* (its block group, not a fresh one)."""
    directory = Path(tempfile.mkdtemp(prefix="relay-bench-diskcost-plain-", dir=work_dir))
    try:
        return measure(directory, messages, no_sync, fresh=False)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.diskcost", description=__doc__)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work-dir", type=Path, default=Path("/var/tmp"))
    arguments = parser.parse_args(argv)
    directory = Path(tempfile.mkdtemp(prefix="relay-bench-diskcost-", dir=arguments.work_dir))
    mark_top_directory(directory)
    try:
        results = compare(directory, arguments.messages, arguments.rounds)
        results[f"no fsync, in {arguments.work_dir}'s block group"] = [
            in_shared_group(arguments.work_dir, arguments.messages)]
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(f"{arguments.messages} messages x {arguments.rounds} rounds, batches of {BATCH};"
          " median per message:")
    print("| strategy | wall us/msg | CPU us/msg |")
    print("|---|---:|---:|")
    for name, values in results.items():
        walls = sorted(wall for wall, _cpu in values)
        cpus = sorted(cpu for _wall, cpu in values)
        print(f"| {name} | {walls[len(walls) // 2]:.0f} | {cpus[len(cpus) // 2]:.0f} |")
    return 0


def compare(directory: Path, messages: int, rounds: int) -> dict[str, list[tuple[float, float]]]:
    """Every strategy, *rounds* times, interleaved, in one long-lived directory."""
    with ThreadPoolExecutor(8) as pool:
        strategies: dict[str, Callable[[Store, int], None]] = {
            "per-file fsync, 1 thread": lambda s, b: per_file(s, b, None),
            "per-file fsync, 8 threads": lambda s, b: per_file(s, b, pool),
            "batch write, then fsync each": lambda s, b: batch_then_fsync(s, b, False),
            "batch write, one syncfs": lambda s, b: batch_then_fsync(s, b, True),
            "no fsync": no_sync,
        }
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in strategies}
        for _round in range(rounds):  # interleaved, like the benchmarks
            for name, strategy in strategies.items():
                results[name].append(measure(directory, messages, strategy))
    return results


if __name__ == "__main__":
    sys.exit(main())
