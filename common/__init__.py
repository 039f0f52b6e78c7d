"""What every relay program shares and none of it is the spool.

- `config`: options, the shared TOML file, RELAY_* environment, command lines.
- `logs`: structlog set-up (stderr, syslog, formats).
- `secrets`: E-MailRelay's secrets file (client and server accounts, trust lines).
- `programs`: running filters and address verifiers as E-MailRelay does.
- `eventloop`: asyncio's loop or uvloop.
- `xtext`: RFC 3461 xtext, used by envelope fields and secrets files.

Nothing here reads or writes spool files: that is `spool/`'s job alone.
"""
