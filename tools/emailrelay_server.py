"""`relay`'s reading of E-MailRelay's SMTP server protocol switches into relay-intake options.

`--server-smtp-config` (`-Z`) is read as E-MailRelay 2.6.1 reads it: comma-separated items,
each feature named alone, `+name` or `with-name` (on), `-name`, `noname` or `without-name`
(off), `=name` (its default); an item it does not know is a warning, not an error. Each
feature's default is E-MailRelay's, so `relay` without `-Z` serves what `emailrelay` does
(PIPELINING, no SMTPUTF8 advertised, addresses in angle brackets, UTF-8 addresses taken
without SMTPUTF8). `chunking` is refused (exit 64): relay-intake's SMTP server (aiosmtpd)
has no BDAT, so it offers neither CHUNKING nor BINARYMIME; relay-deliver does send BDAT, for
a binarymime message that came into the spool another way. `--server-auth-config` goes
to relay-intake as it is; without it, `--server-auth` offers every mechanism with and without
TLS, E-MailRelay's default; and it needs `--server-auth`, as there. Reads and writes nothing.
"""

from __future__ import annotations

from intake.esmtp import MECHANISMS, unknown_mechanisms
from tools.relay_args import Given, Refused, UsageError, read_smtp_config

# Each feature of --server-smtp-config and E-MailRelay 2.6.1's default for it.
SERVER_FEATURES = {
    "strictparsing": True, "pipelining": True, "chunking": False, "smtputf8": False,
    "smtputf8strict": False, "alabels": True, "linger": True,
}
_CHUNKING = ("--server-smtp-config: chunking: relay-intake has no CHUNKING (BDAT) nor "
             "BINARYMIME: its SMTP server, aiosmtpd, has no BDAT command")


def intake_options(given: Given, notes: list[str]) -> list[str]:
    """relay-intake's options for -Z and --server-auth-config (UsageError: exit 1, as
    E-MailRelay; Refused, exit 64, for chunking)."""
    if given.has("server-auth-config") and not given.has("server-auth"):
        raise UsageError("the --server-auth-config option requires --server-auth")
    values, unknown = read_smtp_config(given.all("server-smtp-config"), SERVER_FEATURES)
    for item in unknown:
        notes.append(f"--server-smtp-config: unknown item {item!r}, ignored (as E-MailRelay "
                     "warns and goes on)")
    if values["chunking"]:
        raise Refused(_CHUNKING)
    if not values["linger"]:
        notes.append("--server-smtp-config: nolinger: relay-intake closes connections "
                     "normally (no reset)")
    args = [] if values["pipelining"] else ["--no-pipelining"]
    if not values["smtputf8"]:
        args.append("--no-smtputf8")
    args += ["--utf8-without-smtputf8", "domain" if values["smtputf8strict"] else "accept"]
    if values["strictparsing"]:
        args.append("--require-angle-brackets")
    if given.has("server-auth"):
        config = given.value("server-auth-config")
        if config is None:  # E-MailRelay's default: every mechanism, with TLS or without
            args.append("--server-auth-insecure")
        else:
            args += ["--server-auth-config", config]
            for name in unknown_mechanisms(config):
                notes.append(f"--server-auth-config: relay has no {name} (only "
                             f"{', '.join(MECHANISMS)}): not offered")
    return args
