# -*- test-case-name: tests.test_transport_tls -*-
"""The TLS certificates: ours (server and client side), the peers' trust roots, reloaded on SIGHUP (RFC 3261 §26.2.1).

:class:`TLSCertificates` holds what the TLS listener presents
(``--tls-cert``/``--tls-key``, a PEM chain such as certbot's
``fullchain.pem`` and its key), what outgoing connections present when a
peer asks for a client certificate (mutual TLS with trunks: the same pair
unless ``--tls-client-cert``/``--tls-client-key`` name another), and the CAs
an outgoing connection's peer is checked against (``--tls-ca``, else the
system's trust store).

The listener makes each new connection from the *current* OpenSSL context
(:meth:`TLSCertificates.serverConnectionForTLS`); :meth:`reload` reads the
files again and swaps the context, so that new connections get the renewed
certificate while those already open keep theirs (an OpenSSL connection
holds a reference to the context it was made from).  A reload that fails
keeps the old certificate and says why in one line.

Every failure to read the files is a :class:`CertificateError` whose text
is one line naming the option, the file and what is wrong.
"""

from __future__ import annotations

import datetime
import signal
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.application.service import Service
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

__all__ = ["CertificateError", "ReloadOnHangup", "TLSCertificates", "TLSFiles", "describe_ssl_error", "trust_root"]

log = Logger(namespace="sipproxy")

PrivateKey = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
    | dsa.DSAPrivateKey
)
"""The keys OpenSSL contexts take."""

MINIMUM_TLS = ssl.TLSVersion.TLSv1_2
"""TLS 1.2 and 1.3 only, both ways (RFC 8996 deprecates 1.0 and 1.1)."""


class CertificateError(Exception):
    """A certificate, key or CA file cannot be used; ``str()`` is one line: option, file, reason."""


@dataclass(frozen=True)
class TLSFiles:
    """The files given on the command line (paths; ``None``: not given)."""

    cert: str
    key: str
    ca: str | None = None
    client_cert: str | None = None
    client_key: str | None = None


def describe_ssl_error(error: BaseException) -> str:
    """OpenSSL's error queue in words: ``"no start line"``, ``"certificate verify failed"``."""
    if isinstance(error, SSL.Error) and error.args and isinstance(error.args[0], list):
        reasons = [entry[-1] for entry in error.args[0] if isinstance(entry, tuple) and entry and entry[-1]]
        if reasons:
            return "; ".join(dict.fromkeys(str(r) for r in reasons))
    return str(error) or type(error).__name__


def _read(option: str, path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        raise CertificateError(f"{option} {path}: cannot read it: {error.strerror or error}") from None


def _certificates(option: str, path: str, data: bytes) -> list[x509.Certificate]:
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise CertificateError(f"{option} {path}: no PEM certificate in it (-----BEGIN CERTIFICATE-----)")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as error:
        raise CertificateError(f"{option} {path}: not a readable PEM certificate ({error})") from None


def trust_root(option: str, path: str) -> Any:
    """The CA certificates in the PEM file ``path`` as Twisted's trust root; :class:`CertificateError`, one line."""
    roots = _certificates(option, path, _read(option, path))
    return ssl.trustRootFromCertificates([ssl.Certificate(crypto.X509.from_cryptography(c)) for c in roots])


def _key(option: str, path: str, data: bytes) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # "Password was not given but private key is encrypted"
        raise CertificateError(
            f"{option} {path}: not a readable PEM private key (an encrypted key? sipproxy reads unencrypted ones)"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CertificateError(f"{option} {path}: not a readable PEM private key ({reason})") from None
    if not isinstance(key, PrivateKey):
        raise CertificateError(f"{option} {path}: a {type(key).__name__}, not a key TLS can use (RSA, EC, Ed25519)")
    return key


def _subject(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if names:
        return str(names[0].value)
    try:
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "(no name)"
    dns = alt.get_values_for_type(x509.DNSName)
    return dns[0] if dns else "(no name)"


@dataclass(frozen=True)
class _Pair:
    """A certificate chain and its key, checked to belong together."""

    chain: list[x509.Certificate]
    key: PrivateKey

    @classmethod
    def load(cls, cert_option: str, cert_path: str, key_option: str, key_path: str) -> _Pair:
        chain = _certificates(cert_option, cert_path, _read(cert_option, cert_path))
        key = _key(key_option, key_path, _read(key_option, key_path))
        pair = cls(chain, key)
        try:
            pair.install(SSL.Context(SSL.TLS_METHOD))
        except SSL.Error:
            mismatch = f"{key_option} {key_path}: is not the key of the certificate in {cert_path}"
            raise CertificateError(mismatch) from None
        return pair

    def install(self, context: SSL.Context) -> SSL.Context:
        """Present this chain and key on ``context``; ``SSL.Error`` if the key is not the certificate's."""
        context.use_certificate(self.chain[0])
        for extra in self.chain[1:]:
            context.add_extra_chain_cert(extra)
        context.use_privatekey(self.key)
        context.check_privatekey()
        return context


def _no_application_protocol(connection: SSL.Connection, offered: list[bytes]) -> object:
    """ALPN (RFC 7301): we choose none, as a server without ALPN would; browsers offer it on every WSS connection.

    This replaces the callback Twisted puts on every context, which looks
    for the Twisted protocol in the connection's app data (ours carry none)
    and, had it found one, would have answered an empty name: either way the
    handshake of every client offering ALPN failed with an internal error.
    """
    return SSL.NO_OVERLAPPING_PROTOCOLS


@implementer(IOpenSSLServerConnectionCreator)
class TLSCertificates:
    """Our certificate for the listener, the client side's certificate and trust roots; :meth:`reload` swaps them."""

    def __init__(self, files: TLSFiles) -> None:
        self.files = files
        self._load()

    def _load(self) -> None:
        """Read every file; :class:`CertificateError` (and nothing changes) if one is unusable."""
        files = self.files
        server = _Pair.load("--tls-cert", files.cert, "--tls-key", files.key)
        if files.client_cert:
            client = _Pair.load("--tls-client-cert", files.client_cert, "--tls-client-key", files.client_key or "")
        else:
            client = server
        trust: Any = trust_root("--tls-ca", files.ca) if files.ca else None
        # Twisted's defaults (ciphers, no compression, no renegotiation), TLS 1.2 or newer.
        context = server.install(ssl.CertificateOptions(raiseMinimumTo=MINIMUM_TLS).getContext())
        context.set_alpn_select_callback(_no_application_protocol)
        # Everything read: now swap, all at once.
        self.context = context
        first = server.chain[0]
        self.subject = _subject(first)
        self.expires = first.not_valid_after_utc.strftime("%Y-%m-%d %H:%M UTC")
        self.expired = first.not_valid_after_utc < datetime.datetime.now(datetime.UTC)
        self._client = client
        self._trust = trust if trust is not None else ssl.platformTrust()

    def reload(self) -> bool:
        """Read the files again (SIGHUP); new connections get the new certificate, open ones keep theirs.

        True when the files were read; on failure the old certificates stay
        in use and the log says why.
        """
        try:
            self._load()
        except CertificateError as error:
            log.error("TLS certificates not reloaded, still serving the old ones: {error}", error=str(error))
            return False
        log.info(
            "TLS certificate reloaded from {cert}: {subject}, valid until {expires}",
            cert=self.files.cert,
            subject=self.subject,
            expires=self.expires,
        )
        self.warn_if_expired()
        return True

    def warn_if_expired(self) -> None:
        if self.expired:
            log.warn(
                "The TLS certificate in {cert} expired on {expires}: peers that check it refuse the connection",
                cert=self.files.cert,
                expires=self.expires,
            )

    # -- IOpenSSLServerConnectionCreator: the listener's connections ----------

    def serverConnectionForTLS(self, protocol: object) -> SSL.Connection:
        """A new inbound connection, from the context current now."""
        return SSL.Connection(self.context, None)

    # -- outgoing connections --------------------------------------------------

    def client_options(self, name: str) -> IOpenSSLClientConnectionCreator:
        """For a connection to ``name`` (a host name or IP address): its certificate must name it (RFC 5922 §7.2).

        Checked by ``service_identity`` against the trust roots; our client
        certificate goes along when the peer asks for one (mutual TLS).
        """
        client = self._client
        extra: dict[str, Any] = {
            "raiseMinimumTo": MINIMUM_TLS,
            # cryptography objects: pyOpenSSL takes them (its own X509/PKey are deprecated)
            "privateKey": client.key,
            "certificate": client.chain[0],
            "extraCertChain": client.chain[1:],
        }
        return ssl.optionsForClientTLS(name, trustRoot=self._trust, extraCertificateOptions=extra)


class ReloadOnHangup(Service):
    """While running, SIGHUP reloads ``certificates`` (what certbot's ``--deploy-hook`` sends after a renewal).

    The signal only schedules the reload in the reactor's thread; a handler
    installed before (another part of the server's) still runs.
    """

    def __init__(self, reactor: Any, certificates: TLSCertificates) -> None:
        self.reactor = reactor
        self.certificates = certificates
        self._previous: Any = None

    def startService(self) -> None:
        super().startService()
        self._previous = signal.signal(signal.SIGHUP, self._hangup)

    def _hangup(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self.reload)
        if callable(self._previous):
            self._previous(signum, frame)

    def reload(self) -> None:
        log.info("SIGHUP: reloading the TLS certificates from {cert}", cert=self.certificates.files.cert)
        self.certificates.reload()

    def stopService(self) -> Any:
        super().stopService()
        if signal.getsignal(signal.SIGHUP) == self._hangup:
            signal.signal(signal.SIGHUP, self._previous if self._previous is not None else signal.SIG_DFL)
