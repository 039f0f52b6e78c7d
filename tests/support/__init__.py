"""Helpers the test modules share; no tests here.

Each module has one role: `sink` (an aiosmtpd sink that can misbehave, and its account),
`smarthost` (a raw-socket smarthost run from a script), `intake` (relay-intake in a thread
or as a child process, and a raw SMTP client), `programs` (the console scripts and their
environment, `relay-deliver --once`), `spool` (reading and listing a spool directory,
filling its disk), `tls` (certificate files and contexts from the `ca` fixture of
conftest.py), `tools` (E-MailRelay style failed messages for the tools' tests), `system`
(the shipped supervisord.conf in a private folder). Test modules import from here, never
from each other.
"""
