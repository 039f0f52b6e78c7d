"""--prompt-timeout: relay-deliver waits this long for the greeting, then says EHLO anyway,
as E-MailRelay 2.6.1's client does; --connection-timeout covers the connection only.

Against a raw-socket smarthost that never greets (and answers EHLO all the same), one that
greets late (after relay-deliver has given up waiting: the 220 comes as EHLO's reply), and
--prompt-timeout 0 (no going on). relay-deliver runs as a real process.
"""

from __future__ import annotations

import time

from support.deliver import Deliver, store, wait_until_empty
from support.deliver import run_once as run_in_process
from support.smarthost import Script, ScriptedSmarthost

from spool import Spool, State, entries, read_envelope


def test_no_greeting_then_ehlo_after_the_prompt_timeout(spool: Spool) -> None:
    """A smarthost that never greets gets EHLO after --prompt-timeout (1 s), and the message,
    although --connection-timeout (0.5 s) is shorter: that one is for the connection."""
    store(spool, 1)
    with ScriptedSmarthost(Script(greeting=None)) as smarthost:
        started = time.monotonic()
        deliver = Deliver(spool, smarthost.address, "--prompt-timeout", "1",
                          "--connection-timeout", "0.5")
        try:
            wait_until_empty(spool, timeout=30)
        finally:
            assert deliver.stop() == 0
        assert time.monotonic() - started >= 1.0
    assert smarthost.commands[0].startswith(b"EHLO ")
    assert len(smarthost.data) == 1


def test_a_greeting_after_the_prompt_timeout_defers_the_message(spool: Spool) -> None:
    """The 220 coming as the reply to EHLO (the greeting came after --prompt-timeout): the
    connection is dropped, the message stays queued with a reason naming --prompt-timeout
    (E-MailRelay 2.6.1 fails it to .bad with 'unexpected response'), and nothing more is
    sent."""
    store(spool, 1)
    with ScriptedSmarthost(Script(delay_at={"GREETING": 2.0})) as smarthost:
        assert run_in_process(spool, smarthost.address, "--prompt-timeout", "0.5") == 75
    assert smarthost.commands == [next(c for c in smarthost.commands if c.startswith(b"EHLO"))]
    (entry,) = [e for e in entries(spool) if e.state is State.READY]
    envelope = read_envelope(spool, entry.message_id, State.READY)
    assert "--prompt-timeout" in envelope.trailer


def test_prompt_timeout_zero_never_goes_on_without_a_greeting(spool: Spool) -> None:
    """--prompt-timeout 0: no EHLO without a greeting; after --response-timeout the attempt
    ends and the message stays queued."""
    store(spool, 1)
    with ScriptedSmarthost(Script(greeting=None)) as smarthost:
        assert run_in_process(spool, smarthost.address, "--prompt-timeout", "0") == 75
    assert smarthost.commands == []
    assert [e.state for e in entries(spool) if e.state is not None] == [State.READY]
