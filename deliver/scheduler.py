"""When to scan the spool and who sends what: wake-ups, the queue of due ids, the workers.

The directory listing (`spool.scan_due`) is the truth; everything else only asks for a scan:
watchdog events for `*.envelope` files and for intake's trigger file (`deliver.watch`),
SIGUSR1, the `--poll` timer, and the earliest future due time of a deferred message. Scans
run one at a time in a thread (a request during a scan sets a "scan again" flag) and keep
only message ids: envelopes are parsed by the worker that claims them. N workers each own
one reusable smarthost connection. Reads directory listings; every change to a message
goes through `deliver.message`. Never parses an envelope itself.

A flush (`flush()`: SIGUSR1, the trigger file, `relay --as-client`, the admin interface's
`flush`, `--flush-every`, `--flush-at-start`) lists every waiting message, deferred ones
included, and tries them all now, as sendmail -q and E-MailRelay do: after a network outage
nothing waits for its backoff. A message that fails again gets its next backoff as usual.
Without the watch (`--no-watch`, E-MailRelay's server without --forward-on-disconnect),
nothing is sent but by a flush (new mail and deferred mail alike), as in E-MailRelay.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from common import events
from common.logs import Logger
from common.metrics import DeliverMetrics
from deliver.forward import SmarthostConnection
from deliver.message import MessageHandler, Result
from deliver.watch import Watch, ignore
from spool import ScanResult, Spool, recover, scan_due
from spool.names import State

# A connection idle this long is closed (QUIT); the next message opens a new one.
IDLE_CLOSE_SECONDS = 30.0
# How often `.busy` files of dead workers are looked for while running (also at start).
RECOVER_INTERVAL = 300.0


@dataclass
class RunStats:
    """Counts for one run (what --once reports and decides its exit code by)."""

    sent: int = 0
    deferred: int = 0
    failed: int = 0
    held: int = 0
    waiting_at_end: int = 0
    connections: int = 0
    removals_failed: int = 0  # sent, but left in the spool (sent again after recovery)


@dataclass
class Scheduler:
    """Scans, wakes up, and feeds due ids to the workers until stopped (or, --once, done)."""

    spool: Spool
    handler: MessageHandler
    new_connection: Callable[[], SmarthostConnection]
    concurrency: int = 4
    poll: float = 60.0
    once: bool = False
    flush_every: float = 0.0  # > 0: a flush every this many seconds
    flush_at_start: bool = False  # --once with this: every queued message, not just due ones
    watch: bool = True
    shutdown_timeout: float = 10.0
    log: Logger = field(default_factory=lambda: structlog.get_logger("relay-deliver"))
    stats: RunStats = field(default_factory=RunStats)
    metrics: DeliverMetrics | None = None  # --metrics: queue gauges from these scans
    on_flush: Callable[[], None] | None = None  # a flush forgets what the last tries learnt

    def __post_init__(self) -> None:
        self._pending: deque[str] = deque()
        self._attempted: set[str] = set()  # --once: each id at most once per run
        self._in_flight = 0
        self._moved_since_scan = False  # --metrics: a message changed state since the last scan
        self._stopping = False
        self._scan_wanted = False
        self._flush_wanted = self.flush_at_start
        self.flushes = 0
        self._wakeup = asyncio.Event()
        self._work_ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._hint_pending = threading.Event()  # coalesces watchdog events across threads
        self._watch: Watch | None = None
        self.last_activity = time.monotonic()  # a scan or a message handled (for /healthz)
        self._why = "startup"  # why the next scan happens, for "client: forward: start"
        self._forwarding = False

    # -- wake-ups (all may be called any number of times) -----------------------------

    def request_scan(self) -> None:
        """Ask for a scan soon (SIGUSR1, the trigger file, a watchdog event)."""
        self._scan_wanted = True
        self._wakeup.set()

    def flush(self) -> None:
        """Try every waiting message now, deferred ones included (sendmail -q).

        For SIGUSR1, the trigger file and the admin interface; call in the loop's thread
        (`flush_threadsafe` from another)."""
        self._flush_wanted = True
        self._why = "admin"
        self.request_scan()

    def flush_threadsafe(self) -> None:
        """`flush` from another thread (watchdog's, an admin interface's)."""
        if self._loop is None:
            self._flush_wanted = True
            return
        with contextlib.suppress(RuntimeError):  # the loop has closed
            self._loop.call_soon_threadsafe(self.flush)

    def request_scan_threadsafe(self) -> None:
        """From watchdog's thread: at most one hand-over to the loop is outstanding."""
        if self._loop is None or self._hint_pending.is_set():
            return
        self._hint_pending.set()
        with contextlib.suppress(RuntimeError):  # the loop has closed: nothing to wake
            self._loop.call_soon_threadsafe(self._hint_arrived)

    def _hint_arrived(self) -> None:
        self._hint_pending.clear()
        self._why = self._why or "new message"
        self.request_scan()

    def stop(self) -> None:
        """Finish or release what is in flight (bounded), then return from run()."""
        if not self._stopping:
            self.log.info("deliver_stopping", in_flight=self._in_flight)
        self._stopping = True
        self._wakeup.set()
        self._work_ready.set()
        self._idle.set()

    # -- the run -----------------------------------------------------------------------

    async def run(self) -> RunStats:
        self._loop = asyncio.get_running_loop()
        recovery: asyncio.Task[None] | None = None
        if self.once:
            await self._recover()  # this run must also send what a dead worker left behind
        else:
            # The first scan need not wait for the recovery's own listing of a big spool;
            # what the recovery puts back is found by the scan it asks for.
            recovery = asyncio.create_task(self._recover_then_scan())
        # Without the watch for new mail (--no-watch) the trigger file is still watched.
        wake = self.request_scan_threadsafe if self.watch else ignore
        self._watch = None if self.once else Watch.start(self.spool, wake,
                                                          self.flush_threadsafe, self.log)
        workers = [asyncio.create_task(self._worker(), name=f"worker-{n}")
                   for n in range(self.concurrency)]
        try:
            if self.once:
                await self._run_once()
            else:
                await self._run_forever()
        finally:
            self.stop()
            watch, self._watch = self._watch, None
            if watch is not None:
                watch.stop()
            _done, still_running = await asyncio.wait(workers, timeout=self.shutdown_timeout)
            for task in still_running:
                task.cancel()  # each releases its claim back to `.envelope` on the way out
            await asyncio.gather(*workers, return_exceptions=True)
            self._went_idle()  # a pass cut short by the stop ends too
            # Every sent message is removed before the run ends (and --once counts what is
            # left), even if a worker was cancelled: its hand-overs happened before.
            remover = self.handler.remover
            await asyncio.to_thread(remover.close)
            self.stats.removals_failed = len(remover.left_behind)
            if watch is not None:
                await asyncio.to_thread(watch.join, 2.0)
            if recovery is not None:
                await recovery
        final = await asyncio.to_thread(scan_due, self.spool)
        self.stats.waiting_at_end = final.counts.get(State.READY, 0)
        return self.stats

    async def _scan(self) -> ScanResult:
        """List what is due, or, for a flush, everything waiting (a flush is taken here)."""
        if self._flush_wanted:
            self._flush_wanted = False
            self.flushes += 1
            if self.on_flush is not None:
                self.on_flush()
            result = await asyncio.to_thread(scan_due, self.spool, math.inf)
            self.log.info("spool_flushed", waiting=len(result.due))
            return result
        return await asyncio.to_thread(scan_due, self.spool)

    async def _run_forever(self) -> None:
        next_recover = time.monotonic() + RECOVER_INTERVAL
        next_flush = (time.monotonic() + self.flush_every) if self.flush_every > 0 else math.inf
        while not self._stopping:
            self._scan_wanted = False
            self._wakeup.clear()
            if time.monotonic() >= next_flush:
                self._flush_wanted = True
                next_flush = time.monotonic() + self.flush_every
            if not self.watch and not self._flush_wanted:
                # --no-watch: nothing is sent but by a flush, deferred mail included.
                now = time.monotonic()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(),
                                           max(0.0, min(next_flush, next_recover) - now))
            else:
                await self._scan_and_wait(next_flush, next_recover)
            if time.monotonic() >= next_recover and not self._stopping:
                await self._recover()
                next_recover = time.monotonic() + RECOVER_INTERVAL

    async def _scan_and_wait(self, next_flush: float, next_recover: float) -> None:
        """One scan (or flush), its ids to the workers, then sleep until a reason to look."""
        self._moved_since_scan = False
        why, self._why = self._why or "poll", ""
        flushing = self._flush_wanted
        result = await self._scan()
        self._scanned(result)
        now = time.monotonic()
        self._pending = deque(i for i in result.due if not self.handler.held(i, now))
        self._forward_started(why, flushing)
        if self._pending:
            self._work_ready.set()
        if self._backlog():
            await self._work_down_backlog()
        else:
            timeout = self.poll if self.watch else math.inf
            timeout = min(timeout, max(0.0, next_flush - now))
            if result.next_due is not None:
                timeout = min(timeout, max(0.0, result.next_due - time.time()) + 0.05)
            hold_expiry = self.handler.next_hold_expiry()
            if hold_expiry is not None:
                timeout = min(timeout, max(0.0, hold_expiry - now) + 0.05)
            timeout = min(timeout, max(0.0, next_recover - now))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)

    def _backlog(self) -> bool:
        """True while the last scan's list is long: a new scan would only list it again."""
        return len(self._pending) > 2 * self.concurrency

    async def _work_down_backlog(self) -> None:
        """Let the workers work a long list down, with the watch off; then arm it again.

        Meanwhile every event the watch would report comes from this process's own claims
        and removals (3-4 per message), each a wake-up of watchdog's thread and Python work
        under the GIL, and none of them would change what is done next. Events are only
        hints: the caller scans right after the watch is armed again, which finds whatever
        arrived meanwhile, and so would the --poll timer or SIGUSR1.
        """
        watch = self._watch
        if watch is not None:
            await asyncio.to_thread(watch.pause)
        try:
            while self._backlog() and not self._stopping:
                await asyncio.sleep(0.05)
        finally:
            if watch is not None and not self._stopping:
                await asyncio.to_thread(watch.resume)

    async def _run_once(self) -> None:
        while not self._stopping:
            if self.flush_at_start:
                self._flush_wanted = True  # each pass of a flushing --once lists everything
            why, self._why = self._why or "poll", ""
            result = await self._scan()
            self._scanned(result)
            due = [i for i in result.due if i not in self._attempted]
            if not due:
                return
            self._attempted.update(due)
            self._pending = deque(due)
            self._forward_started(why, False)
            self._idle.clear()
            self._work_ready.set()
            await self._idle.wait()

    def _forward_started(self, why: str, flushing: bool) -> None:
        """The events of a pass: start when work appears; an explicit flush of an empty
        queue ends at once, as E-MailRelay's forward does ("no messages")."""
        if self._pending and not self._forwarding:
            self._forwarding = True
            events.emit("client", "forward", "start", why)
        elif not self._pending and not self._forwarding and flushing:
            events.emit("client", "forward", "end", "no messages")

    def _went_idle(self) -> None:
        """Nothing pending and nothing in flight: the pass (if any) has ended."""
        self._idle.set()
        if self._forwarding:
            self._forwarding = False
            events.emit("client", "forward", "end")

    def _scanned(self, result: ScanResult) -> None:
        """A scan happened: the time for /healthz, the queue gauges for --metrics."""
        self.last_activity = time.monotonic()
        if self.metrics is not None:
            now = time.time()
            oldest = result.oldest_arrival
            self.metrics.scanned({state.name.lower(): result.counts.get(state, 0)
                                  for state in State},
                                 None if oldest is None else max(0.0, now - oldest), now)

    def health(self) -> str | None:
        """None while scans and messages keep happening; else what is wrong (/healthz)."""
        if self._stopping:
            return "stopping"
        quiet = time.monotonic() - self.last_activity
        limit = 2 * min(self.poll, RECOVER_INTERVAL) + 60.0
        if quiet > limit:
            return f"no scan and no message for {int(quiet)} s (limit {int(limit)} s)"
        return None

    async def _recover_then_scan(self) -> None:
        await self._recover()
        self.request_scan()

    async def _recover(self) -> None:
        try:
            report = await asyncio.to_thread(recover, self.spool)
        except OSError as error:
            self.log.error("recovery_failed", reason=error.strerror or str(error))
            return
        if report.busy_recovered:
            self.log.warning("messages_recovered", count=len(report.busy_recovered),
                             msg_ids=",".join(report.busy_recovered[:20]))
        removed = report.new_removed + report.orphans_removed + report.temp_removed
        if removed:
            self.log.info("debris_removed", count=len(removed))

    # -- the workers ---------------------------------------------------------------------

    async def _worker(self) -> None:
        connection = self.new_connection()
        try:
            while (message_id := await self._next_id(connection)) is not None:
                self._in_flight += 1
                try:
                    handled = await self.handler.handle(connection, message_id)
                finally:
                    self._in_flight -= 1
                self._count(handled.result)
                self.last_activity = time.monotonic()
                if handled.result in (Result.SENT, Result.DEFERRED, Result.FAILED):
                    self._moved_since_scan = True
                if handled.stop_scan:
                    self._pending.clear()  # client filter exit 102: stop this scan
                if not self._pending and self._in_flight == 0:
                    self._went_idle()
                    self._scan_for_gauges()
        finally:
            self.stats.connections += connection.connections_opened
            await asyncio.shield(connection.close())

    async def _next_id(self, connection: SmarthostConnection) -> str | None:
        while not self._stopping:
            if self._pending:
                return self._pending.popleft()
            if self._in_flight == 0:
                self._went_idle()
            self._work_ready.clear()
            try:
                await asyncio.wait_for(self._work_ready.wait(), IDLE_CLOSE_SECONDS)
            except TimeoutError:
                await connection.close()
        return None

    def _scan_for_gauges(self) -> None:
        """--metrics: the workers fell idle after moving messages: scan once more, so the
        queue gauges show the end of the burst. The watch wakes deliver for `.envelope`
        names only, so without this a last `.bad` would show up at the next --poll."""
        if self.metrics is not None and self._moved_since_scan and not self.once:
            self.request_scan()

    def _count(self, result: Result) -> None:
        if result is Result.SENT:
            self.stats.sent += 1
        elif result is Result.DEFERRED:
            self.stats.deferred += 1
        elif result is Result.FAILED:
            self.stats.failed += 1
        elif result is Result.HELD:
            self.stats.held += 1
