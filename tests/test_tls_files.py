"""Bad PEM files for --server-tls-certificate/--server-tls-key and --client-tls-certificate:
each refusal names the file and says in words what is wrong with it (not a certificate, no
private key, a key of another certificate, an encrypted key, damaged, unreadable) instead
of OpenSSL's "PEM lib"; --check says the same. Writes PEM files under tmp_path only."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from support.programs import DELIVER, INTAKE, program_env
from support.tls import server_files

from common.config import ConfigError
from common.tlsconfig import client_context, server_context


def pem_files(ca: trustme.CA, directory: Path) -> dict[str, Path]:
    """A good certificate and key, and every kind of bad file, by name."""
    cert, key = server_files(ca, directory)
    other = ca.issue_cert("other.test").private_key_pem.bytes()
    good_key = key.read_bytes()
    loaded = serialization.load_pem_private_key(good_key, None)
    encrypted = loaded.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.BestAvailableEncryption(b"secret"))
    cert_pem = cert.read_bytes()
    files = {
        "text": b"not a certificate\n",
        "other_key": other,
        "encrypted_key": encrypted,
        "both": good_key + cert_pem,
        "damaged": good_key + cert_pem[:100] + b"!!!!" + cert_pem[104:],
        "damaged_key": good_key[:100] + b"!!!!" + good_key[104:],
    }
    paths = {"cert": cert, "key": key}
    for name, content in files.items():
        paths[name] = directory / f"{name}.pem"
        paths[name].write_bytes(content)
    paths["directory"] = directory / "a-directory"
    paths["directory"].mkdir()
    return paths


@pytest.mark.parametrize(("cert", "key", "said"), [
    ("text", None, "{text} is not a certificate: not a PEM file: no '-----BEGIN CERTIFICATE-----'"
     " block"),
    ("key", None, "{key} is not a certificate: a private key but no '-----BEGIN CERTIFICATE"),
    ("cert", None, "no private key in {cert} (and no separate key file was given)"),
    ("cert", "cert", "no private key in {cert}"),
    ("cert", "other_key", "the private key in {other_key} does not match the certificate in"
     " {cert}"),
    ("cert", "encrypted_key", "the private key in {encrypted_key} is encrypted: relay needs it"
     " without a pass phrase"),
    ("damaged", None, "{damaged}: the certificate is damaged (its PEM does not decode)"),
    ("cert", "damaged_key", "the private key in {damaged_key} cannot be loaded: damaged, or a"
     " kind OpenSSL does not know"),
    ("directory", None, "{directory}: cannot read: Is a directory"),
    ("cert", "directory", "{directory}: cannot read: Is a directory"),
])
def test_what_is_wrong_with_the_files_is_said(tmp_path: Path, ca: trustme.CA, cert: str,
                                              key: str | None, said: str) -> None:
    """Each bad certificate/key pair: a ConfigError naming the option, the file and the
    problem in words, for the server's context and the client's alike; no "PEM lib"."""
    paths = pem_files(ca, tmp_path)
    names = {name: str(path) for name, path in paths.items()}
    key_path = None if key is None else str(paths[key])
    with pytest.raises(ConfigError) as server:
        server_context(str(paths[cert]), key_path)
    assert str(server.value).startswith(f"--server-tls-certificate: {said.format(**names)}")
    assert "PEM lib" not in str(server.value)
    with pytest.raises(ConfigError) as client:
        client_context(certificate=str(paths[cert]), key=key_path)
    assert str(client.value).startswith(f"--client-tls-certificate: {said.format(**names)}")


def test_good_files_still_load(tmp_path: Path, ca: trustme.CA) -> None:
    """The certificate with its key, apart or in one file, loads for server and client."""
    paths = pem_files(ca, tmp_path)
    server_context(str(paths["cert"]), str(paths["key"]))
    server_context(str(paths["both"]), None)
    client_context(certificate=str(paths["both"]))


def test_check_says_it_without_a_prompt(tmp_path: Path, ca: trustme.CA) -> None:
    """--check of relay-intake and relay-deliver: the plain words, exit 78, and no pass
    phrase prompt (stdin is a pipe OpenSSL would otherwise read from)."""
    paths = pem_files(ca, tmp_path)
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir(mode=0o700)
    intake = subprocess.run([INTAKE, "--spool-dir", str(spool_dir), "--port", "0", "--check",
                             "--server-tls-certificate", str(paths["cert"]),
                             "--server-tls-key", str(paths["encrypted_key"])],
                            input="secret\n", capture_output=True, text=True, timeout=60,
                            env=program_env())
    assert intake.returncode == os.EX_CONFIG
    assert (f"--server-tls-certificate: the private key in {paths['encrypted_key']} is"
            " encrypted" in intake.stderr), intake.stderr
    assert "pass phrase:" not in intake.stderr
    deliver = subprocess.run([DELIVER, "--spool-dir", str(spool_dir), "--forward-to",
                              "127.0.0.1:1", "--check", "--client-tls-certificate",
                              str(paths["other_key"]), "--client-tls-certificate",
                              str(paths["cert"])],
                             capture_output=True, text=True, timeout=60, env=program_env())
    assert deliver.returncode == os.EX_CONFIG
    assert (f"the private key in {paths['other_key']} does not match the certificate in"
            f" {paths['cert']}" in deliver.stderr), deliver.stderr
