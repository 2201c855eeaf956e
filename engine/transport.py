"""SMTP transport: one reused connection per sender thread, TLS verified.

The only module that imports ``smtplib`` and ``ssl``. ``SmtpTransport.send`` speaks
MAIL, RCPT, then calls ``on_commit()`` (the outbox durably marks the message
``committing``), then DATA, and returns a ``DeliveryResult`` (``engine.outcomes``);
it never raises for network or SMTP trouble. How a reply is sorted is
``engine.smtp_replies.classify_reply``; the DATA form is ``engine.smtp_wire``.
"""

from __future__ import annotations

import functools
import smtplib
import socket
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from engine.config import SmtpSettings
from engine.outcomes import DeliveryResult, Outcome, SmtpReply
from engine.smtp_replies import ENHANCED, classify_reply, parse_enhanced, parse_queue_id
from engine.smtp_wire import angle_address, data_payload

if TYPE_CHECKING:
    from engine.pacing import RateLimiter

_MAX_TEXT = 1000


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
        mail = f"MAIL FROM:{angle_address(sender)}{options}\r\n".encode(encoding)
        rcpt = f"RCPT TO:{angle_address(recipient)}\r\n".encode(encoding)

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
            conn.send(data_payload(data))
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
            conn.send(data_payload(data))
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
            lines = [ENHANCED.sub("", line, count=1).strip() for line in lines]
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
