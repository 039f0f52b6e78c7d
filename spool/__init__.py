"""The spool: its modules are the only code that touches spool files.

- `envelope`: the envelope model, `parse_envelope`/`format_envelope` (pure).
- `names`: states (`State`) and file names (pure).
- `files`: opening a spool file that may be hostile (only regular files with one link).
- `store`: the `Spool` directory and durable, group-committable writes.
- `claims`: claim, then defer/give_back/fail/remove/split_off/hold/make_due, each one
  rename; recover_busy.
- `unclaimed`: unfail, unhold, remove_message, archive_failed (the tools), read_envelope.
- `notifications`: relay-notify's DSNs stored unreleased, released, settled after a kill.
- `scan`: what is due (mtime = due time), recovery of debris, whether a directory is a spool.
- `testhooks`: named fault points for the crash tests.

What the programs share beyond the spool (settings, logs, secrets, running programs) is in
`common/`.
"""

from spool.claims import Claim, claim, recover_busy
from spool.envelope import Envelope, EnvelopeError, format_envelope, parse_envelope
from spool.files import HostileFile
from spool.names import State
from spool.scan import ScanResult, entries, looks_like_a_spool, recover, scan_due
from spool.store import MessageWriter, PendingMessage, Spool, SpoolError, check_spool_directory
from spool.unclaimed import read_envelope, remove_message, unfail

__all__ = [
    "Claim",
    "Envelope",
    "EnvelopeError",
    "HostileFile",
    "MessageWriter",
    "PendingMessage",
    "ScanResult",
    "Spool",
    "SpoolError",
    "State",
    "check_spool_directory",
    "claim",
    "entries",
    "format_envelope",
    "looks_like_a_spool",
    "parse_envelope",
    "read_envelope",
    "recover",
    "recover_busy",
    "remove_message",
    "scan_due",
    "unfail",
]
