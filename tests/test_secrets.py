"""The secrets file: E-MailRelay's record format, xtext/base64, trust rules, rereads.

Pure parsing plus a real file in tmp_path for SecretsFile.
"""

from __future__ import annotations

import base64
import hmac
import os
from pathlib import Path

import pytest

from common.md5state import dotted, hmac_md5, masked_key, undotted
from common.secrets import SecretsError, SecretsFile, TrustRule, parse_secrets

SAMPLE = """\
# E-MailRelay secrets
server plain alice s3cret
server plain j+C3+BCrgen p+20w+3Dd
server plain:b {user_b64} {password_b64}
server none 192.168.1.0/24 lan
server none 10.0.0.* wildcard
server none ::1 loopback6
client plain relayuser relaypass
client plain euuser eupass eu
"""


def _sample() -> str:
    encode = base64.b64encode
    return SAMPLE.format(user_b64=encode(b"bob@example.com").decode(),
                         password_b64=encode("pässword".encode()).decode())


def test_server_plain_lines_with_xtext_and_base64() -> None:
    """plain fields are xtext-decoded, plain:b fields base64-decoded; passwords are checked."""
    secrets = parse_secrets(_sample())
    assert secrets.check_server("alice", "s3cret")
    assert not secrets.check_server("alice", "wrong")
    assert secrets.check_server("jürgen", "p w=d")
    assert secrets.check_server("bob@example.com", "pässword")
    assert not secrets.check_server("nobody", "s3cret")


def test_client_lines_and_selector() -> None:
    """client lines give the smarthost account; a fifth word is the account selector."""
    secrets = parse_secrets(_sample())
    default = secrets.client_account()
    assert default is not None and (default.user, default.password) == ("relayuser", "relaypass")
    assert default.authenticates
    selected = secrets.client_account("eu")
    assert selected is not None and selected.user == "euuser"
    assert secrets.client_account("nope") is None


@pytest.mark.parametrize(
    ("address", "keyword"),
    [
        ("192.168.1.77", "lan"),
        ("::ffff:192.168.1.5", "lan"),
        ("10.0.0.9", "wildcard"),
        ("::1", "loopback6"),
        ("192.168.2.1", None),
        ("10.0.1.9", None),
        ("127.0.0.1", None),
    ],
)
def test_server_none_trusts_cidr_wildcard_and_exact(address: str, keyword: str | None) -> None:
    """`server none` lines trust a CIDR, a wildcard or one address (IPv4-mapped too)."""
    assert parse_secrets(_sample()).trusted_keyword(address) == keyword


def test_trust_rule_with_bad_pattern_matches_nothing() -> None:
    """A pattern that is neither an address, a CIDR nor a wildcard trusts nobody."""
    assert not TrustRule("not-an-address", "x").matches("192.0.2.1")


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("server plain alice", "too few fields"),
        ("proxy plain alice topsecret", "invalid value in first field: [proxy]"),
        ("server plain alice top+ZZsecret", "invalid xtext encoding of secret"),
        ("server plain:b YWxpY2U= !!topsecret!!", "invalid base64 encoding of secret"),
        ("server plain:b !!! eA==", "invalid base64 encoding of id"),
        ("server plain ok again", "duplicate server secret"),
        ("server md5 carol topsecret", "invalid base64 encoding of secret"),
        ("server md5 carol dG9wc2VjcmV0", "32-byte MD5 state"),
        ("server none 10.0.0.* again", "duplicate server trust address"),
        ("client plain dave topsecret", "duplicate client secret"),
    ],
)
def test_bad_line_is_named_by_number_without_the_secret(line: str, problem: str) -> None:
    """A bad line raises SecretsError naming file and line number, never echoing the secret."""
    text = ("# comment\n\nserver plain ok fine\nserver none 10.0.0.* lan\n"
            f"client plain x y\n{line}\n")
    with pytest.raises(SecretsError) as caught:
        parse_secrets(text, "/etc/relay.auth")
    message = str(caught.value)
    assert message.startswith("/etc/relay.auth, line 6: ")
    assert problem in message
    assert "topsecret" not in message


def test_the_whole_grammar() -> None:
    """login = plain, cram-md5 = md5, comments after field 4, extra fields ignored,
    `client plain:b = = SELECTOR` an account without AUTH, other types read and unused."""
    state = masked_key(b"secret")
    secrets = parse_secrets(f"""
server login alice pw1 # a comment in the fifth field
server cram-md5 bob {base64.b64encode(state).decode()}
server md5 dotty {dotted(state)}
server sha1 sam c2VjcmV0
client plain:b = = noauth
client md5 carol {base64.b64encode(state).decode()} hashed
client plain dave pw2 a b c
""")
    assert secrets.check_server("alice", "pw1")
    challenge = b"<1.2@x>"
    expected = hmac.new(b"secret", challenge, "md5").hexdigest()
    assert secrets.cram_digest("md5", "bob", challenge) == expected
    assert secrets.cram_digest("md5", "dotty", challenge) == expected
    assert secrets.cram_digest("md5", "alice", challenge) == hmac.new(b"pw1", challenge,
                                                                     "md5").hexdigest()
    assert secrets.cram_digest("md5", "sam", challenge) is None
    assert not secrets.check_server("bob", "secret")  # md5 secrets do CRAM-MD5 only
    noauth = secrets.client_account("noauth")
    assert noauth is not None and not noauth.authenticates
    hashed = secrets.client_account("hashed")
    assert hashed is not None and hashed.user == "carol" and hashed.md5_state == state
    assert secrets.client_account("a") is not None  # dave's fifth field is his selector
    assert secrets.client_account("") is None  # no default line: no account (E-MailRelay)
    assert secrets.client_account("unknown") is None


def test_md5_state_is_hmac_md5() -> None:
    """The MD5 state functions give hashlib's HMAC-MD5 for passwords short and long."""
    for password in (b"", b"s", b"x" * 64, b"y" * 65, "pässword".encode()):
        for message in (b"", b"<challenge@host>", b"z" * 200):
            assert hmac_md5(masked_key(password), message) == hmac.new(password, message,
                                                                       "md5").digest()
    assert undotted(dotted(masked_key(b"k"))) == masked_key(b"k")


def test_secrets_file_rereads_on_change(tmp_path: Path) -> None:
    """SecretsFile picks up a changed file and keeps the last good one after a bad edit."""
    path = tmp_path / "auth"
    path.write_text("server plain alice one\n")
    secrets_file = SecretsFile(path)
    assert secrets_file.get().check_server("alice", "one")
    path.write_text("server plain alice two-longer\n")
    assert secrets_file.get().check_server("alice", "two-longer")
    replacement = tmp_path / "auth.new"
    replacement.write_text("server plain alice three\n")
    os.replace(replacement, path)  # an editor's atomic save: new inode
    assert secrets_file.get().check_server("alice", "three")
    path.write_text("garbage line here\n")
    assert secrets_file.get().check_server("alice", "three")
    path.unlink()
    assert secrets_file.get().check_server("alice", "three")


def test_secrets_file_missing_or_bad_at_start_is_an_error(tmp_path: Path) -> None:
    """A secrets file that is missing or malformed when first read raises SecretsError."""
    with pytest.raises(SecretsError, match="No such file"):
        SecretsFile(tmp_path / "missing")
    bad = tmp_path / "bad"
    bad.write_text("server plain alice\n")
    with pytest.raises(SecretsError, match="line 1"):
        SecretsFile(bad)


def test_secrets_file_not_utf8_is_a_secrets_error(tmp_path: Path) -> None:
    """A non-UTF-8 secrets file is a SecretsError at start, and keeps the last good one later."""
    path = tmp_path / "auth"
    path.write_bytes(b"server plain alice one\nserver plain b\xe9b two\n")
    with pytest.raises(SecretsError, match="line 2: not UTF-8"):
        SecretsFile(path)
    path.write_text("server plain alice one\n")
    secrets_file = SecretsFile(path)
    path.write_bytes(b"server plain alice \xff\xfe\n")
    assert secrets_file.get().check_server("alice", "one")
