"""TLS material from the test CA (the `ca` fixture of conftest.py, a trustme.CA): a server
certificate and key as PEM files, server and client contexts, the CA's own PEM file.

Writes only the PEM files it is asked for, in the directory it is given.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import trustme


def server_files(ca: trustme.CA, directory: Path,
                 *identities: str) -> tuple[Path, Path]:
    """A server certificate (default: for intake.test) and its key, as cert.pem and key.pem
    in *directory*."""
    cert = ca.issue_cert(*(identities or ("intake.test",)))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    return cert_path, key_path


def server_context(ca: trustme.CA, *identities: str) -> ssl.SSLContext:
    """A server-side context with a certificate for *identities* (default: 127.0.0.1)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert(*(identities or ("127.0.0.1",))).configure_cert(context)
    return context


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    """A verifying client context that trusts the test CA."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def ca_file(ca: trustme.CA, directory: Path) -> Path:
    """The CA certificate as ca.pem in *directory* (for --client-tls-verify)."""
    path = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path
