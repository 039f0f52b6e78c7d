"""relay-intake's processes as real subprocesses: worker processes and the storage process.

With `--processes 2` both workers accept on the one port and store (each message once);
SIGTERM to the program stops both and exits 0; a client network's connections all reach
one worker, so a per-client limit holds exactly across workers. relay-intake started in a
working directory that holds a folder named `spool` (the spool itself, as `cd /var &&
relay-intake --spool-dir spool` would have) still stores mail: the storage process is not
fooled into importing that folder as the spool package.
"""

from __future__ import annotations

import json
import os
import signal
import smtplib
import subprocess
import time
from collections import Counter
from pathlib import Path

from support.intake import MESSAGE, IntakeProcess, RawClient
from support.processes import children, command_line
from support.spool import accepted


def log_events(log: str, event: str) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == event]


def test_two_workers_both_accept_and_store_each_message_once(spool_dir: Path) -> None:
    """--processes 2: 60 one-message connections from loopback, both workers store some,
    every message is in the spool once, and SIGTERM stops the program with exit 0."""
    with IntakeProcess(spool_dir, "--processes", "2") as intake:
        deadline = time.monotonic() + 20
        while len(log_events(intake.log(), "intake_started")) < 2:
            assert time.monotonic() < deadline, intake.log()
            time.sleep(0.02)
        for number in range(60):
            with intake.smtp() as client:
                client.sendmail("a@example.org", ["b@example.com"],
                                f"Subject: {number}\r\n\r\nbody {number}\r\n".encode())
        assert intake.stop() == 0
        log = intake.log()
    stored = log_events(log, "message_stored")
    workers = Counter(line["process"] for line in stored)
    assert sorted(workers) == [0, 1] and sum(workers.values()) == 60, workers
    subjects = Counter(content.split(b"Subject: ")[1].split(b"\r\n")[0]
                       for _, content in accepted(spool_dir))
    assert subjects == Counter(str(number).encode() for number in range(60))
    assert sorted(line["process"] for line in log_events(log, "intake_stopped")) == [0, 1]


def test_per_client_limit_is_exact_across_workers(spool_dir: Path) -> None:
    """Two workers, loopback not exempt, 3 connections per client: the 4th from the same
    address gets 421 whichever worker it reached, and a slot freed is usable again."""
    with IntakeProcess(spool_dir, "--processes", "2", "--exempt-networks", "none",
                       "--max-connections-per-client", "3") as intake:
        clients = [RawClient(intake.port) for _ in range(3)]
        assert all(client.greeting.startswith("220") for client in clients)
        for _ in range(5):
            refused = RawClient(intake.port)
            assert refused.greeting.startswith("421"), refused.greeting
        clients.pop().command(b"QUIT")
        time.sleep(0.2)
        again = RawClient(intake.port)
        assert again.greeting.startswith("220")
        assert intake.stop() == 0


def test_listen_backlog_reaches_the_socket(spool_dir: Path) -> None:
    """--listen-backlog 333: the kernel shows that backlog on the listening sockets."""
    with IntakeProcess(spool_dir, "--processes", "2", "--listen-backlog", "333") as intake:
        shown = subprocess.run(["ss", "-ltnH", f"sport = :{intake.port}"], capture_output=True,
                               text=True, check=True).stdout.splitlines()
        assert len(shown) == 2 and all(line.split()[2] == "333" for line in shown), shown
        with smtplib.SMTP("127.0.0.1", intake.port, timeout=10) as client:
            client.noop()
        assert intake.stop() == 0


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


def _storage_processes(pids: list[int]) -> list[int]:
    return [pid for pid in pids if "intake.storage_process" in command_line(pid).split()]


def test_workers_share_one_storage_process_and_survive_its_death(spool_dir: Path) -> None:
    """--processes 2: one storage process, the parent's child, serves both workers (none of
    its own); after a kill -9 of it, each worker starts one of its own and mail is stored
    again; every message answered 250 is in the spool."""
    with IntakeProcess(spool_dir, "--processes", "2") as intake:
        deadline = time.monotonic() + 20
        while len(log_events(intake.log(), "intake_started")) < 2:
            assert time.monotonic() < deadline, intake.log()
            time.sleep(0.02)
        parent = intake.process.pid
        under_parent = children(parent)
        (shared,) = _storage_processes(under_parent)
        workers = [pid for pid in under_parent if pid != shared]
        assert len(workers) == 2
        assert all(_storage_processes(children(worker)) == [] for worker in workers)
        answered = 0
        for number in range(10):
            with intake.smtp() as client:
                client.sendmail("a@example.org", ["b@example.com"],
                                f"Subject: {number}\r\n\r\nx\r\n")
                answered += 1
        os.kill(shared, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while len(log_events(intake.log(), "storage_process_died")) < 2:
            assert time.monotonic() < deadline, intake.log()
            time.sleep(0.02)
        for number in range(10, 30):
            with intake.smtp() as client:
                client.sendmail("a@example.org", ["b@example.com"],
                                f"Subject: {number}\r\n\r\nx\r\n")
                answered += 1
        assert all(len(_storage_processes(children(worker))) == 1 for worker in workers)
        assert intake.stop() == 0
    assert answered == 30 and len(accepted(spool_dir)) == 30
