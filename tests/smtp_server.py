"""A real SMTP server for tests (aiosmtpd) that records what it receives and misbehaves on command.

In the test process::

    server = SmtpTestServer().start()          # or the ``smtp_server`` fixture
    server.reply("rcpt", "550 5.1.1 No such user", recipient="gone@example.id")
    server.drop("body", message=3)             # third MAIL transaction: drop after the body
    server.delay("body", 2.0)                  # slow final replies
    server.greylist()                          # 451 the first time per recipient
    ...
    server.messages                            # [Received(...)], accepted messages in order
    server.connections                         # TCP connections accepted so far

Stages, in the order a client meets them:
``mail`` (reply to MAIL FROM), ``rcpt`` (reply to RCPT TO), ``data`` (reply to the
DATA command itself, before the body), ``body`` (the final reply after the body).
A drop at ``rcpt`` or ``data`` is a drop *before* the body; a drop at ``body``
happens after the whole body arrived and before the reply (the message is then
listed in ``dropped_after_body``, not in ``messages``).

In another process (kill -9 tests): ``spawn_server(record_file)`` or
``python -m tests.smtp_server --record FILE [--rules JSON]`` (binds a free port and
prints ``LISTENING host port``);
every accepted message becomes one JSON line in FILE, see ``read_records``.

Fixtures (load with ``pytest_plugins = ["smtp_server"]`` in tests/conftest.py):
``smtp_server``, ``tls_cert``, ``starttls_smtp_server``, ``tls_smtp_server``
(implicit TLS) and ``smtp_server_factory`` (``factory(**SmtpTestServer kwargs)``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

try:  # pytest is only needed for the fixtures; the subprocess entry point works without it
    import pytest
except ImportError:  # pragma: no cover
    pytest = None  # type: ignore[assignment]

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
STAGES = ("mail", "rcpt", "data", "body")
Stage = Literal["mail", "rcpt", "data", "body"]


@dataclass(frozen=True)
class Received:
    """One message the server accepted (or, in ``dropped_after_body``, received and then dropped)."""

    number: int  # MAIL transaction number on this server, from 1
    connection: int  # TCP connection number on this server, from 1
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    queue_id: str
    tls: bool = False  # the session was encrypted (STARTTLS or implicit TLS)

    @property
    def message(self) -> Message:
        return message_from_bytes(self.data)

    @property
    def message_id(self) -> str | None:
        return self.message.get("Message-ID")


@dataclass
class Rule:
    """Misbehave at ``stage``: wait ``delay`` seconds, then reply ``reply`` or drop the connection.

    ``recipient`` / ``message`` narrow it to one recipient or one MAIL transaction
    number; ``times`` limits how often it fires (None: every time).
    """

    stage: Stage
    reply: str | None = None  # e.g. "451 4.7.1 Try again later"
    drop: bool = False
    delay: float = 0.0
    recipient: str | None = None
    message: int | None = None
    times: int | None = None

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, not {self.stage!r}")
        if self.stage == "mail" and self.recipient is not None:
            raise ValueError("the recipient is not known yet at MAIL; use rcpt, data or body")
        if self.reply is not None and not self.reply[:3].isdigit():
            raise ValueError(f"reply must start with a 3-digit code: {self.reply!r}")

    def matches(self, stage: str, number: int, recipients: list[str]) -> bool:
        if self.stage != stage or self.times == 0:
            return False
        if self.message is not None and self.message != number:
            return False
        if self.recipient is not None:
            return self.recipient.lower() in (r.lower() for r in recipients)
        return True


@dataclass(frozen=True)
class CertFiles:
    """A self-signed certificate for 127.0.0.1/localhost and its key (PEM files)."""

    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        return context


def make_self_signed_cert(directory: Path) -> CertFiles:
    """Generate a throw-away certificate with the ``openssl`` command (never committed)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "2", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return CertFiles(cert, key)


class _TestSMTP(SMTP):
    """aiosmtpd's SMTP with a hook on the DATA command itself (before 354)."""

    def __init__(self, owner: SmtpTestServer, connection: int, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.owner = owner
        self.connection_number = connection

    async def smtp_DATA(self, arg: str) -> None:
        envelope = self.envelope
        if envelope is not None and envelope.rcpt_tos and not arg:
            status = await self.owner._misbehave("data", self, envelope)
            if status is not None:
                await self.push(status)
                return
        await super().smtp_DATA(arg)


class _Handler:
    def __init__(self, owner: SmtpTestServer) -> None:
        self.owner = owner

    async def handle_EHLO(
        self,
        server: _TestSMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list,
    ) -> list:
        session.host_name = hostname
        if self.owner.pipelining:  # aiosmtpd reads pipelined commands in order; say so
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(
        self, server: _TestSMTP, session: Session, envelope: Envelope, address: str, options: list
    ) -> str:
        if self.owner.auth and not session.authenticated:
            return "530 5.7.0 Authentication required"
        with self.owner._lock:
            self.owner._transactions += 1
            envelope.test_number = self.owner._transactions  # type: ignore[attr-defined]
        status = await self.owner._misbehave("mail", server, envelope)
        if status is not None:
            return status
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self, server: _TestSMTP, session: Session, envelope: Envelope, address: str, options: list
    ) -> str:
        status = await self.owner._misbehave("rcpt", server, envelope, address)
        if status is not None:
            return status
        if self.owner._greylisted(address):
            return "451 4.7.1 Greylisted, please try again later"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: _TestSMTP, session: Session, envelope: Envelope) -> str:
        number = getattr(envelope, "test_number", 0)
        received = Received(
            number=number,
            connection=server.connection_number,
            mail_from=envelope.mail_from or "",
            rcpt_tos=tuple(envelope.rcpt_tos),
            data=bytes(envelope.original_content or b""),
            queue_id=f"T{number:08X}",
            tls=server.transport is not None
            and server.transport.get_extra_info("ssl_object") is not None,
        )
        status = await self.owner._misbehave("body", server, envelope, received=received)
        if status is not None:
            return status
        self.owner._record(received, "accepted")
        return f"250 2.0.0 Ok: queued as {received.queue_id}"


class _Controller(Controller):
    """Binds a free port (port 0, no race) and builds ``_TestSMTP`` per connection."""

    def __init__(self, owner: SmtpTestServer, **kwargs: Any) -> None:
        super().__init__(_Handler(owner), hostname=HOST, port=0, **kwargs)
        self.owner = owner

    def factory(self) -> SMTP:
        with self.owner._lock:
            self.owner._connections += 1
            number = self.owner._connections
        return _TestSMTP(self.owner, number, self.handler, **self.SMTP_kwargs)

    def _trigger_server(self) -> None:
        # create_server bound port 0; learn the real port before aiosmtpd connects to it.
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


class SmtpTestServer:
    """A real SMTP server on 127.0.0.1 (free port) in a background thread."""

    def __init__(
        self,
        *,
        tls: Literal["starttls", "implicit"] | None = None,
        cert: CertFiles | None = None,
        auth: tuple[str, str] | None = None,
        auth_require_tls: bool = False,
        record_file: Path | None = None,
        record_data: bool = False,
        pipelining: bool = True,
    ) -> None:
        if tls and cert is None:
            raise ValueError("tls needs cert=make_self_signed_cert(...)")
        self.tls = tls
        self.cert = cert
        self.auth = auth
        self.auth_require_tls = auth_require_tls
        self.pipelining = pipelining
        self.record_file = Path(record_file) if record_file else None
        self.record_data = record_data
        self.rules: list[Rule] = []
        self.auth_attempts: list[
            tuple[str, str, bool]
        ] = []  # (mechanism, login, ok), never passwords
        self._lock = threading.RLock()
        self._arrived = threading.Condition(self._lock)
        self._messages: list[Received] = []
        self._dropped: list[Received] = []
        self._connections = 0
        self._transactions = 0
        self._greylist: bool = False
        self._greylist_seen: set[str] = set()
        self._record_handle: Any = None
        self._controller: _Controller | None = None
        self._port: int | None = None

    # --- life cycle -------------------------------------------------------------

    def start(self) -> SmtpTestServer:
        kwargs: dict[str, Any] = {"ready_timeout": 10.0}
        if self.tls == "implicit":
            kwargs["ssl_context"] = self.cert.server_context()
        elif self.tls == "starttls":
            kwargs["tls_context"] = self.cert.server_context()
        if self.auth:
            # auth_required is enforced in handle_MAIL: aiosmtpd's own flag warns without TLS.
            kwargs.update(authenticator=self._authenticate, auth_require_tls=self.auth_require_tls)
        if self.record_file:
            self._record_handle = self.record_file.open("a", encoding="utf-8")
        self._controller = _Controller(self, **kwargs)
        self._controller.start()
        self._port = self._controller.port
        with self._lock:
            self._connections = 0  # aiosmtpd's own start-up probe is not a client
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None
        if self._record_handle is not None:
            self._record_handle.close()
            self._record_handle = None

    def __enter__(self) -> SmtpTestServer:
        return self.start() if self._controller is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        assert self._port is not None, "server not started"
        return self._port  # still known after stop(): a closed port for "connection refused"

    @property
    def url(self) -> str:
        """A CAMPAIGN_SMTP_URL for this server (with credentials and cafile when set)."""
        scheme = "smtps" if self.tls == "implicit" else "smtp"
        user = (
            f"{quote(self.auth[0], safe='')}:{quote(self.auth[1], safe='')}@" if self.auth else ""
        )
        query = []
        if self.tls == "starttls":
            query.append("starttls=true")
        if self.tls:
            query.append(f"cafile={self.cert.cert}")
        return f"{scheme}://{user}{HOST}:{self.port}" + ("?" + "&".join(query) if query else "")

    def settings(self, **overrides: Any):
        """SmtpSettings for this server (trusting its certificate); ``overrides`` replace fields."""
        from engine.config import parse_smtp_url

        base = parse_smtp_url(self.url)
        return base.__class__(**{**base.__dict__, **overrides})

    # --- what arrived -------------------------------------------------------------

    @property
    def messages(self) -> list[Received]:
        with self._lock:
            return list(self._messages)

    @property
    def dropped_after_body(self) -> list[Received]:
        with self._lock:
            return list(self._dropped)

    @property
    def connections(self) -> int:
        with self._lock:
            return self._connections

    def recipients(self) -> list[str]:
        """Every recipient of every accepted message, in arrival order (duplicates kept)."""
        return [r for m in self.messages for r in m.rcpt_tos]

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Received]:
        """Wait until at least ``count`` messages were accepted; return them (may be fewer on timeout)."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(self._messages) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._arrived.wait(left)
            return list(self._messages)

    def reset(self) -> None:
        """Forget messages, rules, greylist and counters (not the open connections)."""
        with self._lock:
            self._messages.clear()
            self._dropped.clear()
            self.rules.clear()
            self._greylist = False
            self._greylist_seen.clear()
            self._connections = 0
            self._transactions = 0
            self.auth_attempts.clear()

    # --- misbehaviour -------------------------------------------------------------

    def add_rule(self, rule: Rule) -> Rule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def reply(self, stage: Stage, reply: str, **match: Any) -> Rule:
        """Answer ``reply`` (e.g. ``"550 5.1.1 No such user"``) at ``stage``."""
        return self.add_rule(Rule(stage, reply=reply, **match))

    def drop(self, stage: Stage, **match: Any) -> Rule:
        """Close the connection (TCP reset) instead of replying at ``stage``."""
        return self.add_rule(Rule(stage, drop=True, **match))

    def delay(self, stage: Stage, seconds: float, **match: Any) -> Rule:
        """Wait ``seconds`` before the normal reply at ``stage``."""
        return self.add_rule(Rule(stage, delay=seconds, **match))

    def greylist(self, enabled: bool = True) -> None:
        """Answer 451 4.7.1 to the first RCPT of each recipient, accept it afterwards."""
        with self._lock:
            self._greylist = enabled

    def clear_rules(self) -> None:
        with self._lock:
            self.rules.clear()
            self._greylist = False

    # --- inside the server thread -----------------------------------------------------

    def _greylisted(self, address: str) -> bool:
        with self._lock:
            if not self._greylist or address.lower() in self._greylist_seen:
                return False
            self._greylist_seen.add(address.lower())
            return True

    def _pick(self, stage: str, envelope: Envelope, recipient: str | None) -> Rule | None:
        number = getattr(envelope, "test_number", 0)
        recipients = [recipient] if recipient else list(envelope.rcpt_tos)
        with self._lock:
            for rule in self.rules:
                if rule.matches(stage, number, recipients):
                    if rule.times is not None:
                        rule.times -= 1
                    return rule
        return None

    async def _misbehave(
        self,
        stage: str,
        server: _TestSMTP,
        envelope: Envelope,
        recipient: str | None = None,
        received: Received | None = None,
    ) -> str | None:
        """Apply the first matching rule: None means carry on normally."""
        rule = self._pick(stage, envelope, recipient)
        if rule is None:
            return None
        if rule.delay:
            await asyncio.sleep(rule.delay)
        if rule.drop:
            if received is not None:
                self._record(received, "dropped")
            if server.transport is not None:
                server.transport.abort()
            # connection_lost cancels this coroutine; nothing is ever answered.
            await asyncio.sleep(60)
            return "421 4.4.2 unreachable"  # pragma: no cover
        return rule.reply

    def _record(self, received: Received, status: str) -> None:
        with self._arrived:
            (self._messages if status == "accepted" else self._dropped).append(received)
            if self._record_handle is not None:
                line = {
                    "status": status,
                    "number": received.number,
                    "connection": received.connection,
                    "mail_from": received.mail_from,
                    "rcpt_tos": list(received.rcpt_tos),
                    "queue_id": received.queue_id,
                    "message_id": received.message_id,
                    "size": len(received.data),
                }
                if self.record_data:
                    line["data"] = base64.b64encode(received.data).decode("ascii")
                self._record_handle.write(json.dumps(line) + "\n")
                self._record_handle.flush()
            self._arrived.notify_all()

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = False
        login = ""
        if isinstance(auth_data, LoginPassword) and self.auth:
            login = auth_data.login.decode("utf-8", "replace")
            ok = (login, auth_data.password.decode("utf-8", "replace")) == self.auth
        with self._lock:
            self.auth_attempts.append((mechanism, login, ok))
        return AuthResult(success=ok, handled=False)


# --- a server in another process (for kill -9 tests) ----------------------------------------


def read_records(path: Path, status: str | None = "accepted") -> list[dict]:
    """The JSON lines a server wrote to ``--record`` (only ``status`` ones; None: all)."""
    if not Path(path).exists():
        return []
    records = []
    text = Path(path).read_text(encoding="utf-8")
    # The server may be writing a line right now: only whole lines (ending in \n) count.
    for line in text[: text.rfind("\n") + 1].splitlines():
        if line.strip():
            record = json.loads(line)
            if status is None or record["status"] == status:
                records.append(record)
    return records


@dataclass
class ServerProcess:
    """A test SMTP server running in a child process; ``stop()`` ends it."""

    process: subprocess.Popen
    host: str
    port: int
    record_file: Path
    tls: str | None = None
    cafile: Path | None = None
    extra: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        if self.tls == "implicit":
            return f"smtps://{self.host}:{self.port}?cafile={self.cafile}"
        if self.tls == "starttls":
            return f"smtp://{self.host}:{self.port}?starttls=true&cafile={self.cafile}"
        return f"smtp://{self.host}:{self.port}"

    def records(self, status: str | None = "accepted") -> list[dict]:
        return read_records(self.record_file, status)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout:
            self.process.stdout.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def spawn_server(
    record_file: Path,
    *,
    rules: list[Rule] | tuple[Rule, ...] = (),
    greylist: bool = False,
    tls: str | None = None,
    cert: CertFiles | None = None,
    auth: tuple[str, str] | None = None,
    record_data: bool = False,
    timeout: float = 15.0,
) -> ServerProcess:
    """Start ``python tests/smtp_server.py`` in a child process and wait until it listens."""
    command = [sys.executable, str(Path(__file__).resolve()), "--record", str(record_file)]
    if rules:
        command += ["--rules", json.dumps([asdict(r) for r in rules])]
    if greylist:
        command.append("--greylist")
    if tls:
        assert cert is not None, "tls needs cert"
        command += ["--tls", tls, "--cert", str(cert.cert), "--key", str(cert.key)]
    if auth:
        command += ["--auth", f"{auth[0]}:{auth[1]}"]
    if record_data:
        command.append("--record-data")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPO)
    line = ""
    ready = threading.Event()

    def read_first_line() -> None:
        nonlocal line
        line = process.stdout.readline()
        ready.set()

    threading.Thread(target=read_first_line, daemon=True).start()
    if not ready.wait(timeout) or not line.startswith("LISTENING"):
        process.kill()
        process.wait()
        raise RuntimeError(f"test SMTP server did not start (got {line!r})")
    _, host, port = line.split()
    return ServerProcess(
        process, host, int(port), Path(record_file), tls, cert.cert if cert else None
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A recording, misbehaving SMTP server for tests.")
    parser.add_argument("--record", type=Path, required=True, help="append JSON lines here")
    parser.add_argument("--rules", default="[]", help="JSON list of Rule fields")
    parser.add_argument("--greylist", action="store_true")
    parser.add_argument("--tls", choices=("starttls", "implicit"))
    parser.add_argument("--cert", type=Path)
    parser.add_argument("--key", type=Path)
    parser.add_argument("--auth", help="user:password")
    parser.add_argument("--record-data", action="store_true", help="also store the bytes (base64)")
    args = parser.parse_args(argv)
    cert = CertFiles(args.cert, args.key) if args.tls else None
    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    server = SmtpTestServer(
        tls=args.tls, cert=cert, auth=auth, record_file=args.record, record_data=args.record_data
    )
    for fields in json.loads(args.rules):
        server.add_rule(Rule(**fields))
    server.greylist(args.greylist)
    server.start()
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    print(f"LISTENING {server.host} {server.port}", flush=True)
    stopped.wait()
    server.stop()


# --- pytest fixtures --------------------------------------------------------------------

if pytest is not None:

    @pytest.fixture
    def smtp_server_factory() -> Iterator:
        """``factory(**kwargs)`` starts an ``SmtpTestServer``; all are stopped after the test."""
        servers: list[SmtpTestServer] = []

        def factory(**kwargs: Any) -> SmtpTestServer:
            server = SmtpTestServer(**kwargs).start()
            servers.append(server)
            return server

        yield factory
        for server in servers:
            server.stop()

    @pytest.fixture
    def smtp_server(smtp_server_factory) -> SmtpTestServer:
        """A plain SMTP server on 127.0.0.1 (no TLS, no AUTH) that accepts everything."""
        return smtp_server_factory()

    @pytest.fixture(scope="session")
    def tls_cert(tmp_path_factory) -> CertFiles:
        """A self-signed certificate for 127.0.0.1, generated once per test session."""
        return make_self_signed_cert(tmp_path_factory.mktemp("tls"))

    @pytest.fixture
    def starttls_smtp_server(smtp_server_factory, tls_cert) -> SmtpTestServer:
        """A server offering STARTTLS with the self-signed ``tls_cert``."""
        return smtp_server_factory(tls="starttls", cert=tls_cert)

    @pytest.fixture
    def tls_smtp_server(smtp_server_factory, tls_cert) -> SmtpTestServer:
        """An implicit-TLS (smtps://) server with the self-signed ``tls_cert``."""
        return smtp_server_factory(tls="implicit", cert=tls_cert)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
