"""relay-submit: sendmail semantics into a real spool, as a subprocess and in-process."""

from __future__ import annotations

import io
import os
import pwd
from pathlib import Path

import pytest
from support.programs import run_tool
from support.spool import spool_files

from spool import Envelope, parse_envelope
from tools import submit

USER = pwd.getpwuid(os.getuid()).pw_name


def stored(spool_dir: Path) -> tuple[Envelope, bytes]:
    """The one message in the spool: its envelope and content."""
    names = spool_files(spool_dir)
    assert len(names) == 2 and names[1].endswith(".envelope"), names
    message_id = names[1][: -len(".envelope")]
    envelope = parse_envelope((spool_dir / names[1]).read_bytes())
    return envelope, (spool_dir / f"{message_id}.content").read_bytes()


def header_names(content: bytes) -> list[str]:
    head = content.split(b"\r\n\r\n", 1)[0]
    return [line.split(b":", 1)[0].decode() for line in head.split(b"\r\n")
            if line and line[:1] not in (b" ", b"\t")]


def submit_in_process(spool_dir: Path, args: list[str], data: bytes) -> int:
    return submit.main(["--spool-dir", str(spool_dir), "--domain", "host.test", *args],
                       stdin=io.BytesIO(data))


def test_t_takes_recipients_from_headers_and_removes_bcc(spool_dir: Path) -> None:
    """-t -i: To, Cc (folded) and Bcc plus arguments become recipients; Bcc leaves the content."""
    message = (b"To: Alice <alice@example.org>, bob@example.org\n"
               b"Cc: carol@example.org,\n dave@example.org\n"
               b"Bcc: secret@example.net\n"
               b"Subject: hello\n\nHi all.\n")
    result = run_tool("relay-submit", "-t", "-i", "--spool-dir", str(spool_dir),
                      "--domain", "host.test", "extra@example.com", stdin=message)
    assert (result.returncode, result.stderr) == (0, b"")
    envelope, content = stored(spool_dir)
    assert envelope.to_remote == ("extra@example.com", "alice@example.org", "bob@example.org",
                                  "carol@example.org", "dave@example.org", "secret@example.net")
    assert envelope.sender == f"{USER}@host.test"
    assert envelope.authentication == USER and envelope.client == "127.0.0.1"
    assert envelope.body_type == "7bit"
    assert b"secret@example.net" not in content
    assert header_names(content) == ["Received", "From", "Date", "Message-ID", "To", "Cc",
                                     "Subject"]
    assert content.endswith(b"\r\n\r\nHi all.\r\n")
    assert b"Cc: carol@example.org,\r\n dave@example.org\r\n" in content


def test_existing_headers_kept_and_sender_from_f_and_F(spool_dir: Path) -> None:
    """-f sets the envelope sender; Date/Message-ID/From present are not added again."""
    message = (b"From: Someone <someone@example.com>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
               b"Message-ID: <x@y>\r\nSubject: s\r\n\r\nbody\r\n")
    assert submit_in_process(spool_dir, ["-f", "<bounces@example.com>", "-F", "Ignored",
                                         "rcpt@example.org"], message) == 0
    envelope, content = stored(spool_dir)
    assert envelope.sender == "bounces@example.com"
    assert header_names(content) == ["Received", "From", "Date", "Message-ID", "Subject"]
    assert content.split(b"\r\n", 1)[1] == message


def test_added_from_uses_f_and_full_name(spool_dir: Path) -> None:
    """Without a From header, -fADDR (attached) and -F NAME make `From: NAME <ADDR>`."""
    assert submit_in_process(spool_dir, ["-fme@example.com", "-F", "Mary Example", "u"],
                             b"Subject: x\n\nbody\n") == 0
    envelope, content = stored(spool_dir)
    assert envelope.to_remote == ("u@host.test",)  # a bare local name is qualified
    assert b"\r\nFrom: Mary Example <me@example.com>\r\n" in content


def test_eight_bit_content_marks_the_envelope(spool_dir: Path) -> None:
    """A message with 8-bit bytes is stored as Content 8bit, its bytes unchanged."""
    body = "Grüße aus Köln\n".encode()
    assert submit_in_process(spool_dir, ["a@example.org"], b"Subject: x\n\n" + body) == 0
    envelope, content = stored(spool_dir)
    assert envelope.body_type == "8bit"
    assert content.endswith(body.replace(b"\n", b"\r\n"))


def test_binary_unsafe_input_nul_and_bare_cr(spool_dir: Path) -> None:
    """NUL bytes and bare CRs survive; LF and CRLF both become one CRLF; a last line gets one."""
    message = b"Subject: x\r\n\r\na\x00b\rc\nd\r\ne\r\r\nlast"
    result = run_tool("relay-submit", "--spool-dir", str(spool_dir), "a@example.org",
                      stdin=message)
    assert result.returncode == 0, result.stderr
    _, content = stored(spool_dir)
    assert content.endswith(b"\r\n\r\na\x00b\rc\r\nd\r\ne\r\r\nlast\r\n")


@pytest.mark.parametrize(
    ("flags", "body"),
    [
        ([], b"one\r\n..two\r\n"),
        (["-i"], b"one\r\n..two\r\n.\r\nthree\r\n"),
        (["-oi"], b"one\r\n..two\r\n.\r\nthree\r\n"),
    ],
)
def test_dot_line_ends_input_unless_i(spool_dir: Path, flags: list[str], body: bytes) -> None:
    """Without -i/-oi a lone "." ends the input; with them it is data; ".." is never unstuffed."""
    result = run_tool("relay-submit", *flags, "--spool-dir", str(spool_dir), "a@example.org",
                      stdin=b"Subject: x\n\none\n..two\n.\nthree\n")
    assert result.returncode == 0, result.stderr
    _, content = stored(spool_dir)
    assert content.endswith(b"\r\n\r\n" + body)


def test_dot_in_headers_ends_input_too(spool_dir: Path) -> None:
    """A lone "." among the headers ends the message there (an empty body)."""
    assert submit_in_process(spool_dir, ["a@example.org"], b"Subject: x\n.\nTo: late\n") == 0
    _, content = stored(spool_dir)
    assert b"Subject: x\r\n\r\n" in content and b"late" not in content


def test_long_lines_and_one_byte_reads_keep_bytes(spool_dir: Path) -> None:
    """A 3 MiB line and a stream read one byte at a time keep every byte and each CRLF."""
    long_line = b"x" * (3 << 20)

    class Trickle(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self.data = data

        def read(self, size: int = -1) -> bytes:
            piece, self.data = self.data[:1], self.data[1:]
            return piece

    assert submit_in_process(spool_dir, ["a@example.org"],
                             b"Subject: x\n\n" + long_line + b"\r\nend\r\n") == 0
    _, content = stored(spool_dir)
    assert content.endswith(b"\r\n\r\n" + long_line + b"\r\nend\r\n")
    for name in spool_files(spool_dir):
        os.unlink(spool_dir / name)
    trickle = b"Subject: y\r\n\r\nab\r\ncd\re\n.x\n"
    assert submit.main(["--spool-dir", str(spool_dir), "a@example.org"],
                       stdin=Trickle(trickle)) == 0  # type: ignore[arg-type]
    _, content = stored(spool_dir)
    assert content.endswith(b"\r\n\r\nab\r\ncd\re\r\n.x\r\n")


def test_message_without_headers_gets_a_separator(spool_dir: Path) -> None:
    """Input that starts with a body line gets the added headers and a blank line before it."""
    assert submit_in_process(spool_dir, ["a@example.org"], b"just text\nmore\n") == 0
    _, content = stored(spool_dir)
    assert content.endswith(b"\r\n\r\njust text\r\nmore\r\n")
    assert header_names(content) == ["Received", "From", "Date", "Message-ID"]


def test_ignored_sendmail_flags_write_nowhere_else(spool_dir: Path, tmp_path: Path) -> None:
    """-oQ, -C, -X, -N, -R, -V, -B, -odi, -oem, -bm, -v, -U ... are accepted and change nothing."""
    elsewhere = tmp_path / "elsewhere"
    result = run_tool(
        "relay-submit", "-oem", "-odi", f"-oQ{elsewhere}", "-C", str(elsewhere / "cf"),
        "-X", str(elsewhere / "log"), "-N", "never", "-R", "hdrs", "-V", "env1", "-B", "8BITMIME",
        "-bm", "-v", "-U", "-G", "-L", "tag", "-h", "10", "-Ooption=1", "-ti",
        "--spool-dir", str(spool_dir), "a@example.org", stdin=b"To: b@example.org\n\nx\n")
    assert (result.returncode, result.stderr) == (0, b"")
    assert not elsewhere.exists()
    envelope, _ = stored(spool_dir)
    assert envelope.to_remote == ("a@example.org", "b@example.org")


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        ([], os.EX_USAGE, b"no recipients"),
        (["-t"], os.EX_USAGE, b"no recipients"),
        (["a@example.org\r\nRCPT TO:<b@x>"], os.EX_USAGE, b"control character"),
        (["-f", "me@x\nX-Evil: 1", "a@example.org"], os.EX_USAGE, b"control character"),
        (["-F", "Name\nBcc: b@x", "a@example.org"], os.EX_USAGE, b"control character"),
        (["-bs"], os.EX_USAGE, b"-bs is not supported"),
        (["-q"], os.EX_USAGE, b"-q"),
        (["--no-such-flag", "a@example.org"], os.EX_USAGE, b"not recognized"),
    ],
)
def test_refusals_with_a_one_line_reason(spool_dir: Path, args: list[str], code: int,
                                         says: bytes) -> None:
    """Usage problems and unsafe addresses exit 64 with the reason on stderr and store nothing."""
    result = run_tool("relay-submit", "--spool-dir", str(spool_dir), *args,
                      stdin=b"Subject: x\n\nbody\n")
    assert result.returncode == code
    assert says in result.stderr
    assert spool_files(spool_dir) == []


def test_control_characters_in_header_recipients_exit_65(spool_dir: Path) -> None:
    """With -t, a To address holding a NUL is refused as bad data (65), nothing stored."""
    code = submit_in_process(spool_dir, ["-t"], b"To: a\x00b@example.org\n\nx\n")
    assert code == os.EX_DATAERR
    assert spool_files(spool_dir) == []


def test_spool_problems_exit_78_or_73(spool_dir: Path, tmp_path: Path) -> None:
    """A missing spool is 78; a spool this user cannot write to is 73."""
    missing = run_tool("relay-submit", "--spool-dir", str(tmp_path / "nope"), "a@example.org",
                       stdin=b"x\n")
    assert missing.returncode == os.EX_CONFIG and b"does not exist" in missing.stderr
    if os.getuid() == 0:
        return  # root writes anywhere: the 73 case cannot be staged here
    os.chmod(spool_dir, 0o500)
    try:
        result = run_tool("relay-submit", "--spool-dir", str(spool_dir), "a@example.org",
                          stdin=b"x\n")
    finally:
        os.chmod(spool_dir, 0o700)
    assert result.returncode == os.EX_CANTCREAT


def test_spool_dir_from_env_and_config(spool_dir: Path, tmp_path: Path) -> None:
    """RELAY_SPOOL_DIR and the config file's [submit] table name the spool when no flag does."""
    config = tmp_path / "relay.toml"
    config.write_text(f'[submit]\nspool-dir = "{spool_dir}"\ndomain = "conf.test"\n')
    result = run_tool("relay-submit", "a", env={"RELAY_CONFIG": str(config)}, stdin=b"x\n")
    assert result.returncode == 0, result.stderr
    envelope, _ = stored(spool_dir)
    assert envelope.to_remote == ("a@conf.test",)
    for name in spool_files(spool_dir):
        os.unlink(spool_dir / name)
    result = run_tool("relay-submit", "b@example.org", env={"RELAY_SPOOL_DIR": str(spool_dir)},
                      stdin=b"x\n")
    assert result.returncode == 0, result.stderr
    assert stored(spool_dir)[0].to_remote == ("b@example.org",)


def test_emailrelay_submit_switches(spool_dir: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """emailrelay-submit's --from, --to, --input-file, --content-to, --content-from,
    --content-message-id=DOMAIN, --auth, --from-auth-in/out and --verbose do what they do
    there."""
    message = tmp_path / "message.txt"
    message.write_bytes(b"From: someone@else.test\nTo: old@x.test\nSubject: s\n\nbody\n")
    code = submit_in_process(spool_dir, [
        "--from", "me@host.test", "--to", "you@x.test", "--input-file", str(message),
        "--content-to", "--content-from", "--content-message-id=ids.test", "--auth", "alice",
        "--from-auth-in", "<>", "--from-auth-out", "bob", "--verbose", "extra@x.test"], b"")
    assert code == 0
    envelope, content = stored(spool_dir)
    assert envelope.sender == "me@host.test"
    assert envelope.to_remote == ("extra@x.test", "you@x.test")
    assert envelope.authentication == "alice" and envelope.mail_from_auth_out == "bob"
    head = content.split(b"\r\n\r\n", 1)[0]
    assert b"To: extra@x.test, you@x.test" in head and b"old@x.test" not in head
    assert b"From: me@host.test" in head and b"someone@else.test" not in head
    assert b"@ids.test>" in head and content.endswith(b"\r\n\r\nbody\r\n")
    printed = capsys.readouterr().out.strip()
    assert printed.endswith(".content") and os.path.isabs(printed)


def test_emailrelay_submit_body_content_and_no_stdin(spool_dir: Path) -> None:
    """--content lines (base64) and --body with --no-stdin: a message made on the command line,
    its lines the body (a header-looking line stays body)."""
    code = submit_in_process(spool_dir, ["--no-stdin", "--body", "--content",
                                         "U3ViamVjdDogbm90IGEgaGVhZGVy", "--content",
                                         "bGluZSB0d28=", "b@x.test"], b"ignored\n")
    assert code == 0
    _envelope, content = stored(spool_dir)
    assert content.endswith(b"\r\n\r\nSubject: not a header\r\nline two\r\n")
    assert b"ignored" not in content


@pytest.mark.parametrize("args,message", [
    (["--copy", "b@x.test"], "one spool directory"),
    (["--bcc-split", "b@x.test"], "--bcc-split"),
    (["--content", "%%%", "b@x.test"], "not base64"),
])
def test_emailrelay_submit_refusals(spool_dir: Path, args: list[str], message: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """What relay-submit does not do of emailrelay-submit's exits 64 with the reason."""
    assert submit_in_process(spool_dir, args, b"x\n") == 64
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("flag", sorted({*submit._SETS_TRUE, *submit._SETS_VALUE}))
def test_each_table_flag_sets_its_field_and_only_that(flag: str) -> None:
    """Each flag of relay-submit's tables sets the one Request field it names, to True or
    to its value, and leaves every other field as it was."""
    if flag in submit._SETS_TRUE:
        name, argv, wanted = submit._SETS_TRUE[flag], [flag], True
    else:
        name, argv, wanted = submit._SETS_VALUE[flag], [flag, "v@x.test"], "v@x.test"
    request = submit.parse_command_line([*argv, "r@x.test"])
    default = submit.Request(recipients=["r@x.test"])
    assert getattr(request, name) == wanted and getattr(default, name) != wanted
    setattr(default, name, wanted)
    assert request == default
