"""relay-resubmit: put failed messages back in the queue, until they have failed N times.

    relay-resubmit [--spool-dir D] [--max-retries N] [--dry-run] [--verbose]

Reads each `<id>.envelope.bad` in the spool and counts its `X-MailRelay-Reason:` lines
textually (so E-MailRelay's files are never refused for a parse quirk). One with fewer
than N goes back to `<id>.envelope` by one rename (`spool.unfail`), which deliver then
retries. Never changes a file's contents, never touches content files, `.envelope`,
`.busy` or `.new` files. Runs from cron while deliver runs; two runs at once take turns
on the tools lock, and a rename that lost a race is simply skipped.

Silent on success (cron mails any output); `--verbose` logs each message moved,
`--dry-run` prints what it would move. A `.envelope.bad` that is not a regular file
with one link (a FIFO, a symlink, a hard link, a device, a directory) is never read nor
moved: one line on stderr (which cron mails) names it and what it is; it is no message,
so the run still exits 0. Exit 0, 64 for usage, 75 for an I/O error, 78 for an unusable
spool.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from common.config import SPOOL_DIR_OPTION, ConfigError, load_settings
from common.logs import setup_logging_from
from spool import HostileFile, SpoolError, State, entries, unfail
from spool.store import fsync_directory
from tools.common import (
    DRY_RUN_OPTION,
    MAX_RETRIES_OPTION,
    count_reasons,
    fail,
    open_spool,
    read_bad_envelope,
    tools_lock,
)

DESCRIPTION = "Move failed messages (.envelope.bad) with fewer than N failures back to the queue."
PROGRAM = "relay-resubmit"
OPTIONS = (SPOOL_DIR_OPTION, MAX_RETRIES_OPTION, DRY_RUN_OPTION)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of relay-resubmit."""
    try:
        settings = load_settings(
            PROGRAM,
            DESCRIPTION,
            OPTIONS,
            argv,
            section="resubmit",
        )
    except ConfigError as error:
        return fail(PROGRAM, str(error), os.EX_CONFIG)
    if settings.max_retries < 0:
        return fail(PROGRAM, "--max-retries must be 0 or more", os.EX_USAGE)
    try:
        log = setup_logging_from(PROGRAM, settings)
    except (OSError, ValueError) as error:
        return fail(PROGRAM, f"logging: {error}", os.EX_CONFIG)
    try:
        spool = open_spool(settings.spool_dir)
        with tools_lock(spool):
            moved = 0
            for entry in sorted(entries(spool), key=lambda item: item.message_id):
                if entry.state is not State.BAD:
                    continue
                try:
                    data = read_bad_envelope(spool, entry.message_id)
                except HostileFile as error:
                    # Never resubmitted: deliver would only refuse it again.
                    print(f"{PROGRAM}: {error}: not resubmitted, remove it by hand",
                          file=sys.stderr)
                    continue
                if data is None:
                    continue  # gone since the listing: a person or notify took it
                failures = count_reasons(data)
                if failures >= settings.max_retries:
                    log.debug("message_kept_failed", msg_id=entry.message_id, failures=failures)
                    continue
                if settings.dry_run:
                    print(f"would resubmit {entry.message_id} ({failures} failures)")
                    continue
                if unfail(spool, entry.message_id):
                    moved += 1
                    log.debug("message_resubmitted", msg_id=entry.message_id, failures=failures)
            if moved:
                # The renames must survive a crash before deliver picks them up; the
                # trigger file is only a hint to a running deliver.
                fsync_directory(spool.path)
                spool.trigger_scan()
            log.debug("resubmit_finished", resubmitted=moved)
    except SpoolError as error:
        return fail(PROGRAM, str(error), os.EX_CONFIG)
    except OSError as error:
        return fail(PROGRAM, f"{error.filename or 'spool'}: {error.strerror}", os.EX_TEMPFAIL)
    return os.EX_OK


if __name__ == "__main__":
    raise SystemExit(main())
