"""SMTP transport: one reused connection per sender thread, TLS verified, replies sorted by kind.

The only module that imports ``smtplib`` and ``ssl``. ``SmtpTransport.send`` speaks
MAIL, RCPT, then calls ``on_commit()`` (the outbox durably marks the message
``committing``), then DATA, and returns a ``DeliveryResult``; it never raises for
network or SMTP trouble. How a reply is sorted (``classify_reply``):

==========================================  ==============  =======================================
Reply                                       Outcome         What the outbox does
==========================================  ==============  =======================================
250 after the body                          ``sent``        done; the queue id is kept
4xx; connection dropped before the body     ``deferred``    retry with exponential backoff
552 at RCPT (RFC 5321 4.5.3.1.10)           ``deferred``    (treated as 452 "mailbox full")
421 anywhere; connect, TLS, AUTH failures   ``server_down`` pause the whole server, no attempt charged
5xx                                         ``failed``      permanent
5xx with 5.1.x at RCPT/DATA (bad mailbox)   ``bounced``     failed, and the address is suppressed
drop/timeout after the body, before reply   ``unknown``     the server may have it: never resent
==========================================  ==============  =======================================

5.1.7 and 5.1.8 name the *sender's* address and a 5.1.x reply to MAIL FROM is
about the sender too, so those fail without suppressing the recipient.
"""

from __future__ import annotations

import email.utils
import functools
import re
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from engine.config import SmtpSettings
from engine.times import Rate

STAGES = ("connect", "tls", "auth", "mail", "rcpt", "data", "body")
_SETUP_STAGES = ("connect", "tls", "auth")
_SENDER_BOUNCES = (
    "5.1.7",
    "5.1.8",
)  # bad sender mailbox / sender system: not the recipient's fault
_MAX_TEXT = 1000


class Outcome(StrEnum):
    SENT = "sent"
    DEFERRED = "deferred"
    FAILED = "failed"
    BOUNCED = "bounced"  # failed, and the recipient's address goes on the suppression list
    UNKNOWN = "unknown"  # the body went out but no reply came: the server may have the message
    SERVER_DOWN = "server_down"  # back off the whole server; the message is not charged an attempt


@dataclass(frozen=True)
class SmtpReply:
    """A server reply (code None when there was none: a drop, a timeout, a refused connection)."""

    code: int | None
    enhanced: str | None
    text: str
    queue_id: str | None = None

    def __str__(self) -> str:
        return " ".join(str(p) for p in (self.code, self.enhanced, self.text) if p)


@dataclass(frozen=True)
class DeliveryResult:
    outcome: Outcome
    reply: SmtpReply
    body_sent: bool
    stage: str = "body"  # where the attempt ended: one of STAGES


class Transport(Protocol):
    def send(
        self,
        sender: str,
        recipient: str,
        data: bytes,
        *,
        on_commit: Callable[[], None] | None = None,
    ) -> DeliveryResult: ...

    def close(self) -> None: ...


# --- replies ---------------------------------------------------------------------

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)")
_QUEUE_ID = (
    re.compile(r"queued as\s+<?([\w.@-]+)>?", re.IGNORECASE),  # Postfix, aiosmtpd tests
    re.compile(r"\bid=([\w.-]+)"),  # Exim
    re.compile(r"^([\w]{6,})\s+Message accepted", re.IGNORECASE),  # Sendmail
    re.compile(r"^OK\s+\d+\s+(\S+)\s+-\s+gsmtp", re.IGNORECASE),  # Gmail
    re.compile(r"^Ok\s+<?([0-9a-f][0-9a-f-]{15,})>?\s*$", re.IGNORECASE),  # SES and the like
)


def parse_enhanced(text: str) -> str | None:
    """The RFC 3463 enhanced status code at the start of a reply text (``"5.1.1"``), if any."""
    match = _ENHANCED.match(text.strip())
    return ".".join(match.groups()) if match else None


def parse_queue_id(text: str) -> str | None:
    """The server's queue id from a 250 reply (``"Ok: queued as ABC123"`` → ``"ABC123"``)."""
    for pattern in _QUEUE_ID:
        match = pattern.search(text)
        if match:
            return match.group(1)
    return None


def classify_reply(code: int | None, text: str, *, stage: str) -> Outcome:
    """Sort the reply that ended an attempt at ``stage`` (see the module's table).

    ``code`` None means no reply at all (refused, dropped, timed out). A positive
    reply classifies as SENT: callers classify only the reply that ended the attempt.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown SMTP stage {stage!r} (one of {', '.join(STAGES)})")
    if code is None or code < 100:  # no reply, or a garbled one (smtplib's -1)
        if stage == "body":
            return Outcome.UNKNOWN
        return Outcome.SERVER_DOWN if stage in _SETUP_STAGES else Outcome.DEFERRED
    if 200 <= code < 400:
        return Outcome.SENT
    if code == 421 or stage in _SETUP_STAGES:
        return Outcome.SERVER_DOWN
    if 400 <= code < 500:
        return Outcome.DEFERRED
    if 500 <= code < 600:
        if stage == "rcpt" and code == 552:
            return Outcome.DEFERRED
        enhanced = parse_enhanced(text)
        if (
            stage != "mail"
            and enhanced
            and enhanced.startswith("5.1.")
            and enhanced not in _SENDER_BOUNCES
        ):
            return Outcome.BOUNCED
        return Outcome.FAILED
    return Outcome.UNKNOWN if stage == "body" else Outcome.DEFERRED


# --- the connection ------------------------------------------------------------------


class _SMTP(smtplib.SMTP):
    """smtplib.SMTP that can start with TLS (smtps://) without leaking the raw socket on failure."""

    def __init__(self, implicit_tls: ssl.SSLContext | None, **kwargs) -> None:
        self._implicit_tls = implicit_tls
        super().__init__(**kwargs)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = socket.create_connection((host, port), timeout, self.source_address)
        if self._implicit_tls is None:
            return sock
        try:
            return self._implicit_tls.wrap_socket(sock, server_hostname=host)
        except BaseException:
            sock.close()
            raise


@functools.cache
def _fqdn() -> str:
    """The name we give in EHLO, looked up once (smtplib would ask DNS on every connection)."""
    return socket.getfqdn() or "localhost"


class _Stop(Exception):
    """Internal: the attempt ended with this result."""

    def __init__(self, result: DeliveryResult) -> None:
        self.result = result


_EOL = re.compile(rb"\r\n|\r|\n")
_LEADING_DOT = re.compile(rb"(?m)^\.")


def _angle(address: str) -> str:
    """``a@b`` or ``Name <a@b>`` → ``<a@b>`` for MAIL FROM / RCPT TO (``<>``: the null sender)."""
    if "<" in address or "(" in address:
        address = email.utils.parseaddr(address)[1]
    return f"<{address}>"


class SmtpReady(bytes):
    """Message bytes known to be in SMTP's DATA form already (see ``is_smtp_ready``)."""

    __slots__ = ()


def is_smtp_ready(data: bytes) -> bool:
    """True when ``data`` needs no change to go after DATA: CRLF line ends only, no line
    starting with a dot, a final CRLF. (Cheap scans, but scans of the whole message.)"""
    crlf = data.count(b"\r\n")
    return (
        data.endswith(b"\r\n")
        and data.count(b"\n") == crlf
        and data.count(b"\r") == crlf
        and not data.startswith(b".")
        and b"\n." not in data
    )


def _payload(data: bytes) -> bytes:
    """CRLF line ends, dot-stuffing and the end-of-data mark (RFC 5321 4.5.2)."""
    if data.__class__ is SmtpReady:  # checked when it was rendered
        return data + b".\r\n"
    crlf = data.count(b"\r\n")
    body = data
    # The checks are cheap scans; the regexes only run on bodies that need them.
    if data.count(b"\n") != crlf or data.count(b"\r") != crlf:
        body = _EOL.sub(b"\r\n", body)
    if body.startswith(b".") or b"\n." in body:
        body = _LEADING_DOT.sub(b"..", body)
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    return body + b".\r\n"


class SmtpTransport(Transport):
    """One SMTP connection, opened on first use and reused for every message after.

    Not thread-safe: give each sender thread its own transport (and share one
    ``RateLimiter`` between them). A connection that dropped is reopened on the
    next ``send``; an idle connection the server closed is reopened transparently.
    """

    def __init__(
        self,
        smtp: SmtpSettings,
        *,
        timeout: float | None = None,
        limiter: RateLimiter | None = None,
        local_hostname: str | None = None,
        pipeline_data: bool = False,
    ) -> None:
        self.smtp = smtp
        self.timeout = smtp.timeout if timeout is None else timeout
        self.limiter = limiter  # optional: acquire() before each message
        self.local_hostname = local_hostname
        self.connections_opened = 0  # how many TCP connections this transport made
        # MAIL, RCPT and DATA in one write when the server offers PIPELINING
        # (see ``_pipelined``); off by default.
        self.pipeline_data = pipeline_data
        self._conn: _SMTP | None = None
        self._context: ssl.SSLContext | None = None

    def __repr__(self) -> str:
        return f"SmtpTransport({self.smtp.describe()})"

    def __enter__(self) -> SmtpTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        return self._conn is not None

    # --- public -----------------------------------------------------------------

    def connect(self) -> DeliveryResult | None:
        """Open the connection now (greeting, STARTTLS, AUTH); None when it is ready, else why not."""
        if self._conn is not None:
            return None
        try:
            self._open()
        except _Stop as stop:
            return stop.result
        return None

    def send(
        self,
        sender: str,
        recipient: str,
        data: bytes,
        *,
        on_commit: Callable[[], None] | None = None,
    ) -> DeliveryResult:
        """MAIL, RCPT, ``on_commit()``, DATA. Exceptions raised by ``on_commit`` propagate, nothing is sent."""
        for address in (sender, recipient):
            if "\r" in address or "\n" in address:
                return self._result(
                    "mail",
                    None,
                    "an address contains a line break",
                    body_sent=False,
                    outcome=Outcome.FAILED,
                )
        if self.limiter is not None:
            self.limiter.acquire()
        for retry in (False, True):
            reused = self._conn is not None
            try:
                if self._conn is None:
                    self._open()
                result = self._transaction(sender, recipient, data, on_commit)
            except _Stop as stop:
                result = stop.result
            # A reused connection the server closed while idle (or ends with 421)
            # fails at MAIL before anything of the message went out: retry once afresh.
            if reused and not retry and result.stage == "mail" and result.reply.code in (None, 421):
                continue
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        """Say QUIT (briefly) and close the connection; never raises."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.quit()
        except (smtplib.SMTPException, OSError):
            pass
        finally:
            conn.close()

    # --- the SMTP conversation ------------------------------------------------------

    def _tls_context(self) -> ssl.SSLContext:
        if self._context is None:
            self._context = ssl.create_default_context(cafile=self.smtp.cafile)
        return self._context

    def _open(self) -> None:
        """Connect, read the greeting, STARTTLS, AUTH; raises _Stop with a SERVER_DOWN result."""
        smtp = self.smtp
        implicit = self._tls_context() if smtp.ssl else None
        conn = _SMTP(implicit, local_hostname=self.local_hostname or _fqdn(), timeout=self.timeout)
        conn._host = smtp.host  # smtplib sets it only when given the host up front; TLS needs it
        stage = "connect"
        try:
            try:
                code, text = conn.connect(smtp.host, smtp.port)
            except smtplib.SMTPServerDisconnected as exc:
                raise self._drop(stage, exc) from None
            self.connections_opened += 1
            if code != 220:
                raise self._stop("connect", code, text)
            code, text = conn.ehlo()
            if not 200 <= code < 300:  # an old server: plain HELO
                self._check(conn.helo, stage)
            if smtp.starttls:
                stage = "tls"
                if not conn.has_extn("starttls"):
                    raise self._stop(
                        "tls", None, "STARTTLS was required but the server does not offer it"
                    )
                try:
                    code, text = conn.starttls(context=self._tls_context())
                except smtplib.SMTPResponseException as exc:
                    raise self._stop("tls", exc.smtp_code, exc.smtp_error) from None
                self._check(conn.ehlo, "tls")
            if smtp.username:
                stage = "auth"
                self._login(conn)
        except _Stop:
            conn.close()
            raise
        except ssl.SSLCertVerificationError as exc:
            conn.close()
            raise self._stop(
                "tls", None, f"TLS certificate not trusted: {exc.verify_message}"
            ) from None
        except ssl.SSLError as exc:
            conn.close()
            raise self._stop("tls", None, f"TLS failed: {exc.reason or exc}") from None
        except ConnectionRefusedError:
            conn.close()
            raise self._stop(
                stage, None, f"connection refused by {smtp.host}:{smtp.port}"
            ) from None
        except TimeoutError:
            conn.close()
            raise self._stop(stage, None, f"timed out after {self.timeout:g}s ({stage})") from None
        except (smtplib.SMTPException, OSError) as exc:
            conn.close()
            raise self._drop(stage, exc) from None
        except BaseException:  # a bug of ours: still never leak the socket
            conn.close()
            raise
        self._conn = conn

    def _check(self, call: Callable[[], tuple[int, bytes]], stage: str) -> None:
        code, text = call()
        if not 200 <= code < 300:
            raise self._stop(stage, code, text)

    def _login(self, conn: _SMTP) -> None:
        password = self.smtp.password.reveal() if self.smtp.password else ""
        try:
            conn.login(self.smtp.username, password)
        except smtplib.SMTPAuthenticationError as exc:
            raise self._stop("auth", exc.smtp_code, exc.smtp_error) from None
        except smtplib.SMTPNotSupportedError:
            raise self._stop("auth", None, "the server does not offer AUTH") from None
        except UnicodeEncodeError:
            # Never show the exception: its .object is the password.
            raise self._stop("auth", None, "the user name or password is not ASCII") from None
        except smtplib.SMTPException as exc:
            if isinstance(exc, smtplib.SMTPServerDisconnected):
                raise
            raise self._stop("auth", None, f"AUTH failed: {exc}") from None
        finally:
            conn.password = ""  # smtplib keeps it on the object otherwise
            del password

    def _transaction(
        self, sender: str, recipient: str, data: bytes, on_commit: Callable[[], None] | None
    ) -> DeliveryResult:
        conn = self._conn
        assert conn is not None
        options = ""
        encoding = "ascii"
        if not (sender.isascii() and recipient.isascii()):
            if not conn.has_extn("smtputf8"):
                return self._result(
                    "mail",
                    None,
                    "the address is not ASCII and the server does not offer SMTPUTF8",
                    body_sent=False,
                    outcome=Outcome.FAILED,
                )
            options, encoding = " SMTPUTF8", "utf-8"
        if not data.isascii() and conn.has_extn("8bitmime"):
            options += " BODY=8BITMIME"
        mail = f"MAIL FROM:{_angle(sender)}{options}\r\n".encode(encoding)
        rcpt = f"RCPT TO:{_angle(recipient)}\r\n".encode(encoding)

        stage = "mail"
        if self.pipeline_data and conn.has_extn("pipelining"):
            return self._pipelined(conn, mail, rcpt, data, on_commit)
        try:
            if conn.has_extn("pipelining"):
                # RFC 2920: MAIL and RCPT in one write, one round trip saved per message.
                conn.send(mail + rcpt)
                code, text = conn.getreply()
                if code == 421:  # the server is closing: the RCPT reply will never come
                    return self._refused(stage, code, text)
                stage = "rcpt"
                try:
                    rcpt_code, rcpt_text = conn.getreply()
                except (smtplib.SMTPException, OSError):
                    if code != 250:  # the MAIL refusal is the news, not the drop after it
                        self._discard()
                        return self._result("mail", code, text, body_sent=False)
                    raise
                if code != 250:
                    return self._refused("mail", code, text)
                code, text = rcpt_code, rcpt_text
            else:
                conn.send(mail)
                code, text = conn.getreply()
                if code != 250:
                    return self._refused(stage, code, text)
                stage = "rcpt"
                conn.send(rcpt)
                code, text = conn.getreply()
            if code not in (250, 251):
                return self._refused(stage, code, text)
        except (smtplib.SMTPException, OSError) as exc:
            raise self._drop(stage, exc) from None

        if on_commit is not None:
            try:
                on_commit()
            except BaseException:
                self._reset()
                raise

        stage = "data"
        try:
            conn.putcmd("data")
            code, text = conn.getreply()
            if code != 354:
                return self._refused(stage, code, text)
            # If sending fails part-way the end-of-data mark never left this host,
            # so the server cannot have accepted the message: still a "before the body" drop.
            conn.send(_payload(data))
        except (smtplib.SMTPException, OSError) as exc:
            raise self._drop(stage, exc) from None
        return self._body_reply(conn)

    def _body_reply(self, conn: _SMTP) -> DeliveryResult:
        try:
            code, text = conn.getreply()
        except (smtplib.SMTPException, OSError) as exc:
            raise self._drop("body", exc) from None
        result = self._result("body", code, text, body_sent=True)
        if result.outcome is not Outcome.SENT and code == 421:
            self._discard()
        return result

    def _pipelined(
        self,
        conn: _SMTP,
        mail: bytes,
        rcpt: bytes,
        data: bytes,
        on_commit: Callable[[], None] | None,
    ) -> DeliveryResult:
        """MAIL, RCPT and DATA in one write (RFC 2920 allows DATA last in a group).

        One round trip fewer per message than waiting for RCPT's reply before
        DATA. ``on_commit`` runs after the 354, just before the body; from the
        354 on the server reads everything as the body, so a refusal or a failed
        ``on_commit`` there closes the connection instead of RSET (a server
        that never saw the end-of-data mark has no message).
        """
        stage = "mail"
        replies: list[tuple[int, bytes]] = []
        try:
            conn.send(mail + rcpt + b"DATA\r\n")
            for stage in ("mail", "rcpt", "data"):
                replies.append(conn.getreply())
                if replies[-1][0] == 421:  # the server is closing: no more replies will come
                    return self._refused(stage, *replies[-1])
        except (smtplib.SMTPException, OSError) as exc:
            # A refusal that came before the drop is the news, not the drop after it.
            for earlier, (code, text) in zip(("mail", "rcpt"), replies, strict=False):
                if code not in (250, 251):
                    self._discard()
                    return self._result(earlier, code, text, body_sent=False)
            raise self._drop(stage, exc) from None
        (mail_code, mail_text), (rcpt_code, rcpt_text), (data_code, data_text) = replies
        if mail_code != 250 or rcpt_code not in (250, 251):
            stage, code, text = (
                ("mail", mail_code, mail_text)
                if mail_code != 250
                else ("rcpt", rcpt_code, rcpt_text)
            )
            if data_code == 354:  # a server that wants a body anyway: never give it one
                self._discard()
                return self._result(stage, code, text, body_sent=False)
            return self._refused(stage, code, text)
        if data_code != 354:
            return self._refused("data", data_code, data_text)
        if on_commit is not None:
            try:
                on_commit()
            except BaseException:
                self._discard()
                raise
        try:
            conn.send(_payload(data))
        except (smtplib.SMTPException, OSError) as exc:
            raise self._drop("data", exc) from None
        return self._body_reply(conn)

    # --- results ---------------------------------------------------------------------

    def _refused(self, stage: str, code: int, text: bytes) -> DeliveryResult:
        """A negative reply before the body: clear the transaction so the connection can go on."""
        if code == 421:
            self._discard()
        else:
            self._reset()
        return self._result(stage, code, text, body_sent=False)

    def _reset(self) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            code, _ = conn.rset()
            if code != 250:
                self._discard()
        except (smtplib.SMTPException, OSError):
            self._discard()

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _drop(self, stage: str, exc: BaseException) -> _Stop:
        """The connection broke (or timed out) at ``stage``."""
        self._discard()
        cause = exc.__context__ if isinstance(exc, smtplib.SMTPServerDisconnected) else exc
        if isinstance(exc, TimeoutError) or isinstance(cause, TimeoutError):
            detail = f"no reply within {self.timeout:g}s"
        else:
            detail = str(exc) or type(exc).__name__
            if isinstance(cause, OSError) and cause is not exc and str(cause) not in detail:
                detail = f"{detail} ({cause})"
        where = {
            "body": "after the body was sent, before the reply",
            "data": "at DATA, before the end of the body",
        }.get(stage, f"at {stage.upper()}" if stage in ("mail", "rcpt") else f"during {stage}")
        return _Stop(
            self._result(
                stage, None, f"connection dropped {where}: {detail}", body_sent=stage == "body"
            )
        )

    def _stop(self, stage: str, code: int | None, text: bytes | str) -> _Stop:
        return _Stop(self._result(stage, code, text, body_sent=False))

    def _result(
        self,
        stage: str,
        code: int | None,
        text: bytes | str,
        *,
        body_sent: bool,
        outcome: Outcome | None = None,
    ) -> DeliveryResult:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        lines = [line.strip() for line in str(text).splitlines() if line.strip()]
        enhanced = parse_enhanced(lines[0]) if lines and code is not None else None
        if enhanced:  # the code repeats on every line of a multi-line reply; keep the words
            lines = [_ENHANCED.sub("", line, count=1).strip() for line in lines]
        clean = self._scrub(" ".join(lines))[:_MAX_TEXT]
        if outcome is None:
            outcome = classify_reply(code, f"{enhanced or ''} {clean}", stage=stage)
        queue_id = parse_queue_id(clean) if outcome is Outcome.SENT else None
        return DeliveryResult(outcome, SmtpReply(code, enhanced, clean, queue_id), body_sent, stage)

    def _scrub(self, text: str) -> str:
        """Belt and braces: a server that echoes the password must not get it into our logs."""
        password = self.smtp.password.reveal() if self.smtp.password else ""
        if password and password in text:
            text = text.replace(password, "********")
        return text


# --- pacing -----------------------------------------------------------------------------


class RateLimiter:
    """The overall sending cap shared by every connection of a process (thread-safe).

    Generic cell rate algorithm: each ``acquire()`` reserves the next free slot
    under a lock and sleeps outside it, so waiting threads queue up fairly and a
    late wake-up does not lose throughput. ``burst`` slots may be used at once.
    """

    def __init__(
        self,
        rate: Rate,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        *,
        burst: int = 1,
    ) -> None:
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.rate = rate
        self.interval = 1.0 / rate.per_second
        self._tolerance = (burst - 1) * self.interval
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next: float | None = None  # theoretical arrival time of the next message

    def acquire(self) -> float:
        """Wait for a slot; returns the seconds waited."""
        with self._lock:
            now = self._clock()
            slot = now if self._next is None else max(self._next, now)
            self._next = slot + self.interval
            wait = slot - self._tolerance - now
        if wait > 0:
            self._sleep(wait)
            return wait
        return 0.0


class ServerBackoff:
    """Pause for the whole server after consecutive SERVER_DOWN results (thread-safe).

    ``record(result)`` after every send; SERVER_DOWN number n pauses the server
    ``base * 2**(n-1)`` seconds (at most ``maximum``), anything else resets it.
    Before sending, ``remaining()`` says how long to hold off (or ``wait()``).
    """

    def __init__(
        self,
        *,
        base: float = 1.0,
        maximum: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base = base
        self.maximum = maximum
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self.failures = 0
        self._until = 0.0

    def record(self, result: DeliveryResult | Outcome) -> float:
        """Note one result; returns the pause now in force (seconds)."""
        outcome = result.outcome if isinstance(result, DeliveryResult) else result
        with self._lock:
            now = self._clock()
            if outcome is Outcome.SERVER_DOWN:
                self.failures += 1
                pause = min(self.maximum, self.base * 2 ** (self.failures - 1))
                self._until = max(self._until, now + pause)
            else:
                self.failures = 0
                self._until = 0.0
            return max(0.0, self._until - now)

    def remaining(self) -> float:
        with self._lock:
            return max(0.0, self._until - self._clock())

    def wait(self) -> float:
        """Sleep out the current pause; returns the seconds slept."""
        pause = self.remaining()
        if pause > 0:
            self._sleep(pause)
        return pause
