"""The envelope model: parse/format round trips, E-MailRelay golden files, malformed input.

Pure tests of spool.envelope (no files written); the golden files in tests/golden/ are
envelopes exactly as E-MailRelay 2.6 writes them, stored with `-text` so CRLF survives git.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spool import Envelope, EnvelopeError, format_envelope, parse_envelope
from spool.envelope import BODY_TYPES, FORMATS, printable, reason_lines

GOLDEN = Path(__file__).parent / "golden"
X = "X-MailRelay-"
CONTROLS = "".join(chr(c) for c in range(32)) + "\x7f"

# Text that may stand in an envelope line: anything but C0 controls, DEL and surrogates.
line_text = st.text(
    st.characters(blacklist_categories=["Cs"], blacklist_characters=CONTROLS), max_size=40
)
any_text = st.text(st.characters(blacklist_categories=["Cs"]), max_size=30)
certificate = st.lists(line_text, min_size=1, max_size=5).map("\n".join)
trailer = st.lists(
    st.tuples(
        st.sampled_from(["X-MailRelay-Reason", "X-MailRelay-ReasonCode", "X-Relay-Deferred"]),
        line_text,
    ),
    max_size=4,
).map(lambda pairs: "".join(f"{key}: {value}\r\n" for key, value in pairs))

# Fields a format does not have, with the value parse gives them.
_ABSENT_BEFORE: dict[str, dict[str, object]] = {
    "#2821.6": {"forward_to": "", "forward_to_address": ""},
    "#2821.7": {"utf8_mailbox_names": False},
    "#2821.8": {"client_account_selector": ""},
}


def _fit_to_version(envelope: Envelope) -> Envelope:
    """Blank the fields that the envelope's (older) format cannot carry."""
    blanks: dict[str, object] = {}
    for version, fields in _ABSENT_BEFORE.items():
        if FORMATS.index(envelope.version) < FORMATS.index(version):
            blanks.update(fields)
    return dataclasses.replace(envelope, **blanks)  # type: ignore[arg-type]


envelopes = st.builds(
    Envelope,
    sender=line_text,
    to_local=st.lists(line_text, max_size=3).map(tuple),
    to_remote=st.lists(line_text, max_size=3).map(tuple),
    body_type=st.sampled_from(BODY_TYPES),
    authentication=any_text | st.sampled_from(["user name", "a+b=c", "jürgen", "用户"]),
    client=line_text,
    client_certificate=st.just("") | certificate,
    mail_from_auth_in=any_text | st.just("<>"),
    mail_from_auth_out=line_text,
    forward_to=line_text,
    forward_to_address=line_text,
    client_account_selector=line_text,
    utf8_mailbox_names=st.booleans(),
    trailer=trailer,
    version=st.sampled_from(FORMATS),
).map(_fit_to_version)


@settings(max_examples=300, deadline=None)
@given(envelopes)
def test_round_trip(envelope: Envelope) -> None:
    """parse(format(e)) == e for every valid envelope, all fields and formats included."""
    data = format_envelope(envelope)
    assert parse_envelope(data) == envelope
    assert format_envelope(parse_envelope(data)) == data


@settings(max_examples=200, deadline=None)
@given(line_text)
def test_address_accepted_survives_unchanged(address: str) -> None:
    """An address the parser accepts (in From, To-Local or To-Remote) comes back unchanged."""
    data = format_envelope(Envelope(sender=address, to_local=(address,), to_remote=(address,)))
    parsed = parse_envelope(data)
    assert parsed.sender == address
    assert parsed.to_local == (address,)
    assert parsed.to_remote == (address,)


@settings(max_examples=200, deadline=None)
@given(line_text, st.sampled_from(CONTROLS), line_text)
def test_control_characters_never_survive(head: str, control: str, tail: str) -> None:
    """An address with a control character is refused by format and, written raw, by parse."""
    address = head + control + tail
    for envelope in (Envelope(sender=address), Envelope(to_remote=(address,))):
        with pytest.raises(EnvelopeError, match="control character"):
            format_envelope(envelope)
    if control == "\n":
        return  # a raw LF makes another line, which the order checks refuse (below)
    raw = format_envelope(Envelope(sender="PLACEHOLDER")).replace(
        b"PLACEHOLDER", address.encode("utf-8")
    )
    with pytest.raises(EnvelopeError, match="line 3: X-MailRelay-From contains a control"):
        parse_envelope(raw)


def test_forged_line_in_address_is_refused() -> None:
    """A CRLF in an address can never smuggle an extra envelope line into the file."""
    with pytest.raises(EnvelopeError, match="control character"):
        format_envelope(Envelope(to_remote=("a@b\r\nX-MailRelay-To-Remote: evil@x",)))


def test_new_envelope_is_written_in_format_8_with_crlf() -> None:
    """A default Envelope is written as #2821.8, every field present, CRLF line ends."""
    data = format_envelope(Envelope(sender="a@b", to_remote=("c@d",)))
    lines = data.split(b"\r\n")
    assert lines[0] == b"X-MailRelay-Format: #2821.8"
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert lines[-2] == b"X-MailRelay-End: 1" and lines[-1] == b""
    assert b"X-MailRelay-Authentication: \r\n" in data  # empty value keeps its space


def test_with_reason_appends_two_lines() -> None:
    """with_reason appends Reason and ReasonCode after End; control characters are flattened."""
    envelope = Envelope(to_remote=("a@b",)).with_reason("550 no\r\nsuch user", 550)
    data = format_envelope(envelope)
    assert data.endswith(b"X-MailRelay-End: 1\r\nX-MailRelay-Reason: 550 no such user\r\n"
                         b"X-MailRelay-ReasonCode: 550\r\n")
    twice = parse_envelope(data).with_reason("timeout", None)
    assert twice.reasons == ["550 no such user", "timeout"]
    assert twice.reason_codes == ["550", ""]
    assert reason_lines("x", None).endswith("X-MailRelay-ReasonCode: \r\n")
    assert printable("a\x00\tb\x7f") == "a b"


# -- golden files -----------------------------------------------------------------------

GOLDEN_EXPECTED: dict[str, dict[str, object]] = {
    "basic.envelope": {
        "version": "#2821.8", "body_type": "8bit", "sender": "alice@example.com",
        "to_remote": ("bob@example.net", "carol@example.org"), "client": "192.0.2.1",
    },
    "local-and-remote.envelope": {
        "sender": "", "to_local": ("postmaster",),
        "to_remote": ("bob@example.net", "jürgen@bücher.example"),
        "authentication": "jürgen müller=1", "client": "2001:db8::25",
        "mail_from_auth_in": "alice+sub@example.com", "forward_to": "europe",
        "forward_to_address": "smarthost.example.net:587", "client_account_selector": "eu",
        "utf8_mailbox_names": True,
    },
    "certificate.envelope": {"authentication": "alice", "mail_from_auth_in": "<>"},
    "failed-twice.envelope.bad": {
        "reasons": [
            "550 5.1.1 <bob@example.net>: Recipient address rejected: User unknown",
            "connection refused",
        ],
        "reason_codes": ["550", ""],
    },
    "format-2821.5.envelope": {"version": "#2821.5", "body_type": "7bit"},
    "format-2821.6.envelope": {
        "version": "#2821.6", "forward_to": "backup", "forward_to_address": "198.51.100.7:25",
    },
    "format-2821.7.envelope": {"version": "#2821.7", "utf8_mailbox_names": True},
}


@pytest.mark.parametrize("name", sorted(GOLDEN_EXPECTED))
def test_golden_file_parses_and_reformats_byte_for_byte(name: str) -> None:
    """An envelope as E-MailRelay writes it parses to the expected values and re-formats exactly."""
    data = (GOLDEN / name).read_bytes()
    assert b"\r\n" in data  # the .gitattributes kept CRLF
    envelope = parse_envelope(data, path=name)
    for field, value in GOLDEN_EXPECTED[name].items():
        assert getattr(envelope, field) == value, field
    assert format_envelope(envelope) == data


def test_golden_certificate_is_unfolded() -> None:
    """The folded ClientCertificate reads as the PEM with LF line breaks, no leading spaces."""
    envelope = parse_envelope((GOLDEN / "certificate.envelope").read_bytes())
    pem = envelope.client_certificate.split("\n")
    assert pem[0] == "-----BEGIN CERTIFICATE-----"
    assert pem[-1] == "-----END CERTIFICATE-----"
    assert len(pem) == 5 and not any(line.startswith(" ") for line in pem)


def test_golden_lf_only_parses_and_reformats_with_crlf() -> None:
    """An LF-only envelope parses like its CRLF twin; re-formatting writes CRLF."""
    data = (GOLDEN / "lf-only.envelope").read_bytes()
    assert b"\r" not in data
    envelope = parse_envelope(data)
    twin = parse_envelope((GOLDEN / "basic.envelope").read_bytes())
    assert envelope == twin
    assert format_envelope(envelope) == data.replace(b"\n", b"\r\n")


def test_older_formats_lack_later_fields() -> None:
    """#2821.5 has no ForwardTo lines, .6 no Utf8MailboxNames, .7 no ClientAccountSelector."""
    lacks = {
        "#2821.5": ["ForwardTo", "ForwardToAddress", "ClientAccountSelector", "Utf8MailboxNames"],
        "#2821.6": ["ClientAccountSelector", "Utf8MailboxNames"],
        "#2821.7": ["ClientAccountSelector"],
        "#2821.8": [],
    }
    for version, missing in lacks.items():
        data = format_envelope(Envelope(version=version))
        keys = {line.split(b":")[0].decode() for line in data.splitlines()}
        for field in ["ForwardTo", "ForwardToAddress", "ClientAccountSelector",
                      "Utf8MailboxNames"]:
            assert (X + field in keys) == (field not in missing), (version, field)


# -- malformed envelopes ----------------------------------------------------------------

GOOD = (GOLDEN / "basic.envelope").read_bytes()


def _error(data: bytes) -> EnvelopeError:
    with pytest.raises(EnvelopeError) as caught:
        parse_envelope(data, path="/spool/m1.envelope")
    return caught.value


@pytest.mark.parametrize(
    ("data", "line", "problem"),
    [
        (GOOD.replace(b"#2821.8", b"#2821.9"), 1, "unknown format '#2821.9'"),
        (GOOD.replace(b"#2821.8", b"#2821.4"), 1, "unknown format '#2821.4'"),
        (b"Subject: hello\r\n" + GOOD, 1, "expected X-MailRelay-Format"),
        (GOOD.replace(b"Content: 8bit", b"Content: 9bit"), 2, "unknown Content '9bit'"),
        (GOOD.replace(b"ToCount: 2", b"ToCount: 3"), 7, "ToCount says 3 but 2 recipients"),
        (GOOD.replace(b"ToCount: 2", b"ToCount: 1"), 7, "ToCount says 1 but 2 recipients"),
        (GOOD.replace(b"ToCount: 2", b"ToCount: two"), 4, "ToCount is not a number"),
        (
            GOOD.replace(b"X-MailRelay-Client: 192.0.2.1\r\n", b"").replace(
                b"X-MailRelay-Authentication: \r\n",
                b"X-MailRelay-Authentication: \r\nX-MailRelay-ClientCertificate: \r\n"
                b"X-MailRelay-Client: 192.0.2.1\r\n",
            ).replace(b"ClientCertificate: \r\nX-MailRelay-MailFromAuthIn", b"MailFromAuthIn"),
            8, "expected X-MailRelay-Client",
        ),
        (
            GOOD.replace(b"To-Remote: carol@example.org", b"To-Local: carol"),
            6, "To-Local after To-Remote",
        ),
        (GOOD.replace(b"alice@example.com", b"ali\x00ce"), 3, "From contains a control"),
        (GOOD.replace(b"bob@example.net", b"bob\tx"), 5, "To-Remote contains a control"),
        (GOOD.replace(b"192.0.2.1", b"192.0.2.1\r1"), 8, "Client contains a control"),
        (GOOD.replace(b"alice@example.com", b"alice@\xe9xample.com"), 3, "not UTF-8"),
        (GOOD[: GOOD.index(b"X-MailRelay-ForwardTo:")], 12, "file ends where"),
        (GOOD[:-2], 16, "truncated"),
        (GOOD.replace(b"End: 1", b"End: 2"), 16, "End is '2', not 1"),
        (GOOD.replace(b"Names: 0", b"Names: yes"), 15, "Utf8MailboxNames is 'yes'"),
        (GOOD.replace(b"Authentication: ", b"Authentication: a+4"), 7, "bad xtext escape"),
    ],
)
def test_malformed_envelope_names_file_line_and_problem(
    data: bytes, line: int, problem: str
) -> None:
    """Each kind of malformed envelope is refused with the file, the line and the problem."""
    error = _error(data)
    assert error.path == "/spool/m1.envelope"
    assert error.line == line
    assert problem in error.problem
    assert str(error).startswith(f"/spool/m1.envelope, line {line}: ")


def test_empty_file_is_refused_as_truncated() -> None:
    """An empty envelope (a crash between create and write) is refused as truncated."""
    assert "truncated" in str(_error(b""))


def test_format_refuses_unknown_version_and_body_type() -> None:
    """format_envelope will not write a format or a Content value it cannot read back."""
    with pytest.raises(EnvelopeError, match="cannot write format"):
        format_envelope(Envelope(version="#2821.9"))
    with pytest.raises(EnvelopeError, match="bad body type"):
        format_envelope(Envelope(body_type="quoted"))
    with pytest.raises(EnvelopeError, match="ForwardTo contains a control"):
        format_envelope(Envelope(forward_to="a\nb"))
    with pytest.raises(EnvelopeError, match="ClientCertificate contains a control"):
        format_envelope(Envelope(client_certificate="a\rb"))


def test_crlf_certificate_is_one_line_break() -> None:
    """A PEM with CRLF line ends is folded like one with LF and reads back with LF."""
    envelope = Envelope(client_certificate="-----BEGIN-----\r\nAAAA\r\n-----END-----")
    assert parse_envelope(format_envelope(envelope)).client_certificate == (
        "-----BEGIN-----\nAAAA\n-----END-----"
    )
