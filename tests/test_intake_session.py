"""intake.session's explicit state table: the table itself, and a real session on 127.0.0.1
moving along it (greeting, MAIL, RSET, DATA, the reply, QUIT) with its Transaction."""

from __future__ import annotations

import time
from pathlib import Path

from support.intake import IntakeThread, RawClient

from intake.session import MOVES, Session, State


def test_the_table_has_one_way_in_and_closed_is_final() -> None:
    """Every state can close; nothing goes back to CONNECTED; CLOSED leads nowhere else;
    DATA is entered only from a transaction."""
    assert set(MOVES) == set(State)
    assert all(State.CLOSED in targets for targets in MOVES.values())
    assert not any(State.CONNECTED in targets for targets in MOVES.values())
    assert MOVES[State.CLOSED] == {State.CLOSED}
    assert [s for s, targets in MOVES.items() if State.DATA in targets] == [State.TRANSACTION]


def wait_for(session: Session, state: State) -> None:
    deadline = time.monotonic() + 5
    while session.state is not state and time.monotonic() < deadline:
        time.sleep(0.01)
    assert session.state is state


def test_a_session_moves_along_the_table(spool_dir: Path) -> None:
    """Greeted: COMMANDS; MAIL: TRANSACTION with the sender and parameters; RCPT counts;
    RSET: COMMANDS, no transaction; DATA after the 354; COMMANDS after the 250; CLOSED and
    forgotten after QUIT."""
    with IntakeThread(spool_dir) as intake:
        raw = RawClient(intake.port)
        assert intake.server is not None
        (session,) = intake.server.sessions
        wait_for(session, State.COMMANDS)
        raw.command(b"EHLO client.test")
        assert raw.command(b"MAIL FROM:<a@example.org> SIZE=100 BODY=8BITMIME")[:3] == "250"
        wait_for(session, State.TRANSACTION)
        assert session.transaction is not None
        assert session.transaction.sender == "a@example.org"
        assert session.transaction.parameters.size == 100
        assert session.transaction.parameters.body == "8bit"
        assert raw.command(b"RCPT TO:<b@example.com>")[:3] == "250"
        assert session.transaction.recipients == 1 and session.in_transaction
        assert raw.command(b"RSET")[:3] == "250"
        wait_for(session, State.COMMANDS)
        assert session.transaction is None and not session.in_transaction
        raw.start_data()
        wait_for(session, State.DATA)
        raw.send(b"Subject: s\r\n\r\nhi\r\n")
        assert raw.command(b".")[:3] == "250"
        wait_for(session, State.COMMANDS)
        assert raw.command(b"QUIT")[:3] == "221"
        assert raw.closed()
        wait_for(session, State.CLOSED)
        deadline = time.monotonic() + 5
        while intake.server.sessions and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not intake.server.sessions
