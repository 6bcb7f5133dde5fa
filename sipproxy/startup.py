# -*- test-case-name: tests.test_startup -*-
"""What ``twistd sipproxy`` checks before anything starts: the database, TLS certificates, sockets, the web port.

Each check that fails raises :class:`StartupError`, whose text is the one
line the operator reads: the option, its value and what is wrong
(``--sip-port 5060: UDP 0.0.0.0:5060 is already in use ...``).  ``tap``
turns it into a non-zero exit without a traceback.  The order is the one
in which ``makeService`` runs them: the database is opened, the TLS
certificate and key are read (when given), then the SIP sockets are
bound, then the web page listens, so that nothing serves when anything
failed.  (Mistakes in the command line itself are refused earlier,
by ``Options.postOptions``.)
"""

from __future__ import annotations

import errno
import os
import re
import socket
import sqlite3
from typing import Any

from twisted.application.service import Service
from twisted.internet import endpoints
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python.failure import Failure

from sipproxy.location import SQLitePersistence
from sipproxy.transport.certificates import CertificateError, TLSCertificates, TLSFiles
from sipproxy.transport.listen import BindError, SipListeners, bound_socket, describe_socket_error

__all__ = ["StartupError", "WebListener", "bind_sip", "load_certificates", "open_database"]

log = Logger(namespace="sipproxy")


class StartupError(Exception):
    """Start-up refused; ``str()`` is one line naming the option, its value and the reason."""


def open_database(path: str) -> SQLitePersistence:
    """``--db``: the SQLite file, opened (created if new), writable, and one of ours.

    Checked here rather than at the first REGISTER: a read-only file opens
    fine and only fails its first commit; SQLite also needs to write its
    write-ahead log beside the file.
    """
    if not path.startswith("file:"):
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise StartupError(f"--db {path}: the directory {directory} does not exist")
        if os.path.isdir(path):
            raise StartupError(f"--db {path}: is a directory, not a file")
        if os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK):
            raise StartupError(f"--db {path}: the file is not writable")
        if not os.access(directory, os.W_OK | os.X_OK):
            raise StartupError(
                f"--db {path}: the directory {directory} is not writable (SQLite writes its log beside the file)"
            )
    try:
        return SQLitePersistence(path, autocheckpoint=False)
    except sqlite3.DatabaseError as error:
        raise StartupError(f"--db {path}: not a usable SQLite database ({error})") from None
    except (OSError, RuntimeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise StartupError(f"--db {path}: {reason}") from None


def load_certificates(files: TLSFiles) -> TLSCertificates:
    """``--tls-cert``, ``--tls-key`` (and ``--tls-ca``, ``--tls-client-cert``/``-key``): read, parsed, matched.

    Checked before anything listens, so that a certbot path mistyped or a
    key that belongs to another certificate is one line at start-up, not a
    TLS listener that fails every handshake.
    """
    try:
        certificates = TLSCertificates(files)
    except CertificateError as error:
        raise StartupError(str(error)) from None
    log.info(
        "TLS certificate from {cert}: {subject}, valid until {expires}; SIGHUP reloads it",
        cert=files.cert,
        subject=certificates.subject,
        expires=certificates.expires,
    )
    certificates.warn_if_expired()
    return certificates


def bind_sip(listeners: SipListeners) -> None:
    """Bind the SIP sockets now; a failure names ``--sip-interface``, ``--sip-port`` or ``--tls-port``."""
    try:
        listeners.bind()
    except BindError as error:
        if listeners.interface and error.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
            raise StartupError(f"--sip-interface {listeners.interface}: {error}") from None
        hint = " (by another SIP server, or sipproxy running already?)" if error.errno == errno.EADDRINUSE else ""
        if error.transport == "TLS":
            raise StartupError(f"--tls-port {listeners.requested_tls_port}: {error}{hint}") from None
        raise StartupError(f"--sip-port {listeners.requested_port}: {error}{hint}") from None


class WebListener(Service):
    """The web page's port (any strports description), listened on by :meth:`listen` before the server starts.

    ``strports.service`` would listen only once twistd starts the
    application, after the SIP listeners, and a port in use would then be a
    traceback in the log of a server that half runs.
    """

    def __init__(
        self,
        reactor: Any,
        description: str,
        factory: Any,
        *,
        option: str = "--web",
        listening: str = "Bindings page on {web}",
        failed: str = "No bindings page: --web {web}: {reason}",
        reuse_port: bool = False,
    ) -> None:
        """``option`` names it in a :class:`StartupError`; ``listening`` and ``failed`` are its log lines' formats.

        The SIP WebSocket ports (``--ws``, ``--wss``) are listeners like this
        one; ``reuse_port``: every worker of ``--workers`` listens on the
        port (a ``tcp:`` description, SO_REUSEPORT).
        """
        self.option, self.listening, self.failed = option, listening, failed
        self.description = description
        if reuse_port:
            self.endpoint: Any = SharedPortEndpoint.parse(reactor, description, option)
        else:
            self.endpoint = endpoints.serverFromString(reactor, description)
        self.factory = factory
        self.port: Any = None
        self._waiting: Deferred[Any] | None = None

    def listen(self) -> None:
        """Listen now, unless done already; :class:`StartupError` if the endpoint refuses."""
        if self.port is not None or self._waiting is not None:
            return
        waiting = self.endpoint.listen(self.factory)
        if not waiting.called:  # an endpoint that listens later (none of Twisted's own): it reports when it does
            self._waiting = waiting.addCallbacks(self._listening, self._failed)
            return
        outcome: list[Any] = []
        waiting.addBoth(outcome.append)
        [result] = outcome
        if isinstance(result, Failure):
            raise StartupError(f"{self.option} {self.description}: {self._reason(result)}")
        self._listening(result)

    def _listening(self, port: Any) -> None:
        self.port, self._waiting = port, None
        log.info(self.listening, web=self.description)

    def _failed(self, failure: Failure) -> None:
        self._waiting = None
        if not failure.check(CancelledError):
            log.error(self.failed, web=self.description, reason=self._reason(failure))

    def _reason(self, failure: Failure) -> str:
        error = failure.value
        if isinstance(error, CannotListenError) and isinstance(error.socketError, OSError):
            shown = error.interface or "0.0.0.0"
            shown = f"[{shown}]" if ":" in shown else shown
            return f"TCP {shown}:{error.port} {describe_socket_error(error.socketError)}"
        return failure.getErrorMessage()

    def startService(self) -> None:
        super().startService()
        self.listen()

    def stopService(self) -> Any:
        super().stopService()
        if self._waiting is not None:
            self._waiting.cancel()
        port, self.port = self.port, None
        return port.stopListening() if port is not None else None


class SharedPortEndpoint:
    """A ``tcp:`` strports port that several processes listen on (SO_REUSEPORT, ``--workers``).

    The kernel hands each new connection to one of them by the client's
    address and port; a WebSocket phone's connection, its flow, stays with
    the worker that accepted it.
    """

    def __init__(self, reactor: Any, port: int, interface: str) -> None:
        self.reactor, self.port, self.interface = reactor, port, interface

    @classmethod
    def parse(cls, reactor: Any, description: str, option: str) -> SharedPortEndpoint:
        """``tcp:PORT[:interface=HOST]`` (or ``port=PORT``); :class:`StartupError` for anything else."""
        kind, *fields = [f.replace("\\:", ":") for f in re.split(r"(?<!\\):", description)]
        values = dict(f.split("=", 1) if "=" in f else ("port", f) for f in fields)
        port, interface = values.pop("port", ""), values.pop("interface", "")
        if kind != "tcp" or not port.isdigit() or set(values) - {"backlog"}:
            raise StartupError(f"{option} {description}: with --workers, give tcp:PORT[:interface=HOST] (shared)")
        return cls(reactor, int(port), interface)

    def listen(self, factory: Any) -> Deferred[Any]:
        host = self.interface or "0.0.0.0"
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            sock = bound_socket(family, socket.SOCK_STREAM, host, self.port, reuse_port=True)
        except OSError as error:
            return fail(CannotListenError(self.interface, self.port, error))
        try:
            return succeed(self.reactor.adoptStreamPort(sock.fileno(), family, factory))
        finally:
            sock.close()  # the reactor holds its own copy
