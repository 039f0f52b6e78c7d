"""TLS contexts for intake and deliver, with E-MailRelay 2.6.1's switches.

Client (relay-deliver): `--client-tls-verify CAFILE|CADIR|system|<default>` checks the
smarthost's certificate chain only; the name in it is checked only with
`--client-tls-verify-name NAME` (against NAME, not against the host connected to, so a
smarthost given by IP address works); `--client-tls-server-name NAME` is the name sent in
the handshake (SNI); `--client-tls-certificate` is the client's own certificate (and key).
Server (relay-intake): `--server-tls-verify CAFILE|CADIR|system` asks every client for a
certificate and refuses the handshake without a good one. `--tls-config` takes
E-MailRelay's keywords: `tlsv1.2` (the lowest version allowed), `-tlsv1.2` (the highest),
`openssl` (relay's only library). Reads the certificate, key and CA files; writes nothing.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from typing import Any

from common.config import ConfigError

_VERSIONS = {
    "tlsv1.0": ssl.TLSVersion.TLSv1, "tlsv1.1": ssl.TLSVersion.TLSv1_1,
    "tlsv1.2": ssl.TLSVersion.TLSv1_2, "tlsv1.3": ssl.TLSVersion.TLSv1_3,
}
SYSTEM_CAS = ("system", "<default>")


@dataclass(frozen=True)
class TlsConfig:
    """`--tls-config`: the protocol versions allowed."""

    minimum: ssl.TLSVersion | None = None
    maximum: ssl.TLSVersion | None = None


def parse_tls_config(text: str | None) -> TlsConfig:
    """E-MailRelay's `--tls-config` keywords; ConfigError for one relay cannot honour."""
    minimum = maximum = None
    for word in filter(None, (part.strip().lower() for part in (text or "").split(","))):
        if word in _VERSIONS:
            minimum = _VERSIONS[word]
        elif word.startswith("-") and word[1:] in _VERSIONS:
            maximum = _VERSIONS[word[1:]]
        elif word != "openssl":
            raise ConfigError(f"--tls-config: {word!r} is not a keyword relay knows "
                              "(tlsv1.2, -tlsv1.3, openssl)")
    return TlsConfig(minimum, maximum)


def _versions(context: ssl.SSLContext, config: TlsConfig) -> None:
    if config.minimum is not None:
        context.minimum_version = config.minimum
    if config.maximum is not None:
        context.maximum_version = config.maximum


def _trust(context: ssl.SSLContext, cas: str, option: str) -> None:
    try:
        if cas in SYSTEM_CAS:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH if option.startswith("client")
                                       else ssl.Purpose.CLIENT_AUTH)
        elif os.path.isdir(cas):
            context.load_verify_locations(capath=cas)
        else:
            context.load_verify_locations(cafile=cas)
    except FileNotFoundError:
        raise ConfigError(f"--{option}: {cas}: no such file") from None
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(f"--{option}: {cas}: cannot load: {error}") from None


class _PassPhraseWanted(Exception):
    """OpenSSL asked for a pass phrase: the key is encrypted (never prompt on a terminal)."""


def _no_pass_phrase() -> str:
    raise _PassPhraseWanted


def _certificate(context: ssl.SSLContext, certificate: str, key: str | None,
                 option: str) -> None:
    try:
        context.load_cert_chain(certificate, key, password=_no_pass_phrase)
    except _PassPhraseWanted:
        raise ConfigError(f"--{option}: the private key in {key or certificate} is encrypted:"
                          " relay needs it without a pass phrase") from None
    except FileNotFoundError as error:
        raise ConfigError(f"--{option}: {error.filename or certificate}: no such file") from None
    except ssl.SSLError as error:  # before OSError: it is one
        raise ConfigError(f"--{option}: {_pem_problem(certificate, key, error)}") from None
    except OSError as error:
        raise ConfigError(f"--{option}: {_unreadable(certificate, key, error)}") from None


def _unreadable(certificate: str, key: str | None, error: OSError) -> str:
    """Which of the files cannot be read, and why, in words."""
    for path in (certificate, key):
        if path is None:
            continue
        try:
            with open(path, "rb") as file:
                file.read(1)
        except OSError as reading:
            return f"{path}: cannot read: {reading.strerror or reading}"
    return f"cannot load: {error.strerror or error}"


def _pem_problem(certificate: str, key: str | None, error: ssl.SSLError) -> str:
    """What is wrong with the PEM files OpenSSL refused, said plainly; OpenSSL's own
    words (often only "PEM lib") when nothing more can be found out."""
    # OpenSSL's "PEM lib" says nothing a reader can use; anything else goes along.
    openssl = "" if "PEM lib" in str(error) else f" (OpenSSL: {error})"
    key_file = key or certificate
    if error.reason == "KEY_VALUES_MISMATCH":
        return (f"the private key in {key_file} does not match the certificate in "
                f"{certificate}")
    try:
        with open(certificate, "rb") as file:
            cert_text = file.read().decode("ascii", "replace")
        with open(key_file, "rb") as file:
            key_text = file.read().decode("ascii", "replace")
    except OSError as reading:
        return f"{reading.filename}: cannot read: {reading.strerror or reading}"
    if "-----BEGIN CERTIFICATE-----" not in cert_text:
        what = "a private key but" if "PRIVATE KEY-----" in cert_text else "not a PEM file:"
        return (f"{certificate} is not a certificate: {what} no '-----BEGIN CERTIFICATE-----'"
                " block")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=cert_text)
    except ssl.SSLError:
        return f"{certificate}: the certificate is damaged (its PEM does not decode){openssl}"
    if "PRIVATE KEY-----" not in key_text:
        where = key_file if key else f"{certificate} (and no separate key file was given)"
        return f"no private key in {where}"
    return (f"the private key in {key_file} cannot be loaded: damaged, or a kind OpenSSL"
            f" does not know{openssl}")


class _NamedClientContext(ssl.SSLContext):
    """A client context that sends (and checks) its own name, not the host connected to.

    asyncio and uvloop create every TLS connection through `wrap_bio`, passing the name
    they were given; this context replaces it with `--client-tls-verify-name` or
    `--client-tls-server-name`. tests/test_tls.py fails if that stops being so.
    """

    relay_name: str | None = None

    def wrap_bio(self, incoming: Any, outgoing: Any, server_side: bool = False,
                 server_hostname: Any = None, session: Any = None) -> ssl.SSLObject:
        name = self.relay_name or server_hostname
        return super().wrap_bio(incoming, outgoing, server_side, name, session)


def client_context(*, verify: str | None = None, verify_name: str | None = None,
                   server_name: str | None = None, certificate: str | None = None,
                   key: str | None = None, config: TlsConfig = TlsConfig()) -> ssl.SSLContext:
    """relay-deliver's context (see the module docstring); ConfigError naming the option."""
    if verify_name and not verify:
        raise ConfigError("--client-tls-verify-name needs --client-tls-verify (the CAs to "
                          "check the chain against)")
    context = _NamedClientContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = bool(verify_name)
    if verify:
        context.verify_mode = ssl.CERT_REQUIRED
        _trust(context, verify, "client-tls-verify")
    else:
        context.verify_mode = ssl.CERT_NONE  # E-MailRelay's default: encryption only
    if certificate:
        _certificate(context, certificate, key, "client-tls-certificate")
    _versions(context, config)
    context.relay_name = verify_name or server_name or None
    return context


def server_context(certificate: str, key: str | None, *, verify: str | None = None,
                   config: TlsConfig = TlsConfig()) -> ssl.SSLContext:
    """relay-intake's context; with *verify*, a client certificate is required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _certificate(context, certificate, key, "server-tls-certificate")
    if verify:
        context.verify_mode = ssl.CERT_REQUIRED
        _trust(context, verify, "server-tls-verify")
    _versions(context, config)
    return context


def peer_certificate_pem(ssl_object: Any) -> str:
    """The client's certificate as PEM (for the envelope's ClientCertificate), or ''."""
    getter = getattr(ssl_object, "getpeercert", None)
    if getter is None:
        return ""
    der = getter(binary_form=True)
    return ssl.DER_cert_to_PEM_cert(der) if der else ""
