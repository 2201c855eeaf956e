"""The SMTP transport against a real (aiosmtpd) server that misbehaves on command."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from smtp_server import Rule, spawn_server

from engine.config import Secret
from engine.outcomes import STAGES, DeliveryResult, Outcome
from engine.pacing import RateLimiter, ServerBackoff
from engine.smtp_replies import classify_reply, parse_enhanced, parse_queue_id
from engine.times import Rate, parse_rate
from engine.transport import SmtpTransport

SENDER = "news@toko.example.id"
GOOD = "budi@example.id"
BODY = (
    b"From: news@toko.example.id\r\nTo: budi@example.id\r\nSubject: Halo\r\n"
    b"Message-ID: <m1@toko.example.id>\r\n\r\nHalo Budi,\r\n.a line starting with a dot\r\n"
)


class Commits:
    """An on_commit callback that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


@pytest.fixture
def transport(smtp_server):
    t = SmtpTransport(smtp_server.settings(), timeout=5)
    yield t
    t.close()


# --- the reply table ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "text", "stage", "outcome"),
    [
        (250, "2.0.0 Ok: queued as ABC123", "body", Outcome.SENT),
        (421, "4.3.2 Service shutting down", "rcpt", Outcome.SERVER_DOWN),
        (421, "4.3.2 Service shutting down", "body", Outcome.SERVER_DOWN),
        (450, "4.2.1 Mailbox busy", "rcpt", Outcome.DEFERRED),
        (451, "4.7.1 Greylisted", "rcpt", Outcome.DEFERRED),
        (452, "4.2.2 Mailbox full", "body", Outcome.DEFERRED),
        (550, "5.1.1 No such user", "rcpt", Outcome.BOUNCED),
        (551, "5.1.6 User has moved", "rcpt", Outcome.BOUNCED),
        (553, "5.1.3 Bad address syntax", "rcpt", Outcome.BOUNCED),
        (550, "5.1.1 No such user", "body", Outcome.BOUNCED),
        (550, "5.1.8 Bad sender domain", "rcpt", Outcome.FAILED),  # the sender's fault
        (550, "5.1.1 Sender unknown", "mail", Outcome.FAILED),  # about the sender
        (550, "5.7.1 Rejected by policy", "rcpt", Outcome.FAILED),
        (550, "No such user", "rcpt", Outcome.FAILED),  # no enhanced code: no guessing
        (552, "5.2.2 Mailbox full", "rcpt", Outcome.DEFERRED),  # RFC 5321 4.5.3.1.10
        (552, "5.3.4 Message too big", "body", Outcome.FAILED),
        (554, "5.7.1 Spam", "body", Outcome.FAILED),
        (554, "5.7.1 Spam", "data", Outcome.FAILED),
        (535, "5.7.8 Authentication failed", "auth", Outcome.SERVER_DOWN),
        (454, "4.7.0 TLS not available", "tls", Outcome.SERVER_DOWN),
        (554, "No SMTP service here", "connect", Outcome.SERVER_DOWN),
        (None, "connection refused", "connect", Outcome.SERVER_DOWN),
        (None, "connection dropped", "rcpt", Outcome.DEFERRED),
        (None, "connection dropped", "data", Outcome.DEFERRED),
        (None, "connection dropped", "body", Outcome.UNKNOWN),
        (-1, "garbled", "body", Outcome.UNKNOWN),
    ],
)
def test_reply_table(code, text, stage, outcome):
    assert classify_reply(code, text, stage=stage) is outcome


def test_classify_rejects_an_unknown_stage():
    with pytest.raises(ValueError, match="unknown SMTP stage"):
        classify_reply(250, "ok", stage="quit")


@settings(max_examples=80, deadline=None)
@given(
    code=st.one_of(st.none(), st.integers(min_value=-1, max_value=699)),
    enhanced=st.one_of(st.none(), st.from_regex(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}", fullmatch=True)),
    stage=st.sampled_from(STAGES),
)
def test_reply_classes_hold_for_any_reply(code, enhanced, stage):
    outcome = classify_reply(code, f"{enhanced or ''} words", stage=stage)
    if code is not None and 400 <= code < 500:
        assert outcome not in (Outcome.FAILED, Outcome.BOUNCED, Outcome.SENT)
    if stage in ("connect", "tls", "auth") and not (code and 200 <= code < 400):
        assert outcome is Outcome.SERVER_DOWN
    if outcome is Outcome.UNKNOWN:
        assert stage == "body"
    if outcome is Outcome.BOUNCED:
        assert code is not None and 500 <= code < 600 and enhanced and enhanced.startswith("5.1.")


@pytest.mark.parametrize(
    ("text", "queue_id"),
    [
        ("Ok: queued as 4Xyz1234", "4Xyz1234"),
        ("OK id=1rABCD-000Abc-2x", "1rABCD-000Abc-2x"),
        ("x8DKEa4C012345 Message accepted for delivery", "x8DKEa4C012345"),
        ("OK  1700000000 a1-20020a17090a.123 - gsmtp", "a1-20020a17090a.123"),
        ("Ok 0100018c1a2b3c4d-5e6f7a8b-0000", "0100018c1a2b3c4d-5e6f7a8b-0000"),
        ("OK", None),
    ],
)
def test_queue_id_from_common_servers(text, queue_id):
    assert parse_queue_id(text) == queue_id


def test_enhanced_code_parsing():
    assert parse_enhanced("5.1.1 <x@y>: Recipient address rejected") == "5.1.1"
    assert parse_enhanced("4.7.1") == "4.7.1"
    assert parse_enhanced("Ok 2.0.0") is None
    assert parse_enhanced("5.1.1x") is None


# --- sending ---------------------------------------------------------------------------------


def test_sends_keeps_the_queue_id_and_the_bytes_arrive_intact(smtp_server, transport):
    commits = Commits()
    result = transport.send(SENDER, GOOD, BODY, on_commit=commits)
    assert result == DeliveryResult(Outcome.SENT, result.reply, body_sent=True, stage="body")
    assert (result.reply.code, result.reply.enhanced) == (250, "2.0.0")
    assert result.reply.queue_id == smtp_server.messages[0].queue_id == "T00000001"
    assert commits.calls == 1
    [message] = smtp_server.messages
    assert (message.mail_from, message.rcpt_tos) == (SENDER, (GOOD,))
    assert message.data == BODY  # dot-stuffing undone by the server, CRLF kept


def test_bare_newlines_become_crlf(smtp_server, transport):
    assert (
        transport.send(SENDER, GOOD, b"Subject: x\n\nline one\n.dot\nend").outcome is Outcome.SENT
    )
    assert smtp_server.messages[0].data == b"Subject: x\r\n\r\nline one\r\n.dot\r\nend\r\n"


def test_one_connection_carries_many_messages(smtp_server, transport):
    results = [transport.send(SENDER, f"m{i}@example.id", BODY) for i in range(10)]
    assert all(r.outcome is Outcome.SENT for r in results)
    assert smtp_server.connections == 1
    assert transport.connections_opened == 1
    assert {m.connection for m in smtp_server.messages} == {1}
    assert len({r.reply.queue_id for r in results}) == 10


RCPT_REPLIES = [
    ("421 4.3.2 Service shutting down", Outcome.SERVER_DOWN),
    ("450 4.2.1 Mailbox busy", Outcome.DEFERRED),
    ("451 4.3.0 Local error", Outcome.DEFERRED),
    ("452 4.2.2 Mailbox full", Outcome.DEFERRED),
    ("550 5.1.1 No such user", Outcome.BOUNCED),
    ("552 5.2.2 Over quota", Outcome.DEFERRED),
    ("554 5.7.1 Relay denied", Outcome.FAILED),
]


@pytest.mark.parametrize(("reply", "outcome"), RCPT_REPLIES)
def test_reply_at_rcpt(smtp_server, transport, reply, outcome):
    smtp_server.reply("rcpt", reply, recipient="x@example.id")
    commits = Commits()
    result = transport.send(SENDER, "x@example.id", BODY, on_commit=commits)
    assert result.outcome is outcome
    assert (result.reply.code, result.reply.enhanced) == (int(reply[:3]), reply.split()[1])
    assert result.reply.text == reply.split(" ", 2)[2]
    assert (result.stage, result.body_sent, commits.calls) == ("rcpt", False, 0)
    assert smtp_server.messages == []
    # The connection goes on after a refusal (a 421 closes it: a new one is opened).
    assert transport.send(SENDER, GOOD, BODY).outcome is Outcome.SENT
    assert smtp_server.connections == (2 if reply.startswith("421") else 1)


BODY_REPLIES = [
    ("421 4.3.2 Service shutting down", Outcome.SERVER_DOWN),
    ("450 4.2.1 Mailbox busy", Outcome.DEFERRED),
    ("451 4.3.0 Local error", Outcome.DEFERRED),
    ("452 4.3.1 Insufficient storage", Outcome.DEFERRED),
    ("550 5.1.1 No such user", Outcome.BOUNCED),
    ("552 5.3.4 Message too big", Outcome.FAILED),
    ("554 5.6.0 Content rejected", Outcome.FAILED),
]


@pytest.mark.parametrize(("reply", "outcome"), BODY_REPLIES)
def test_reply_after_the_body(smtp_server, transport, reply, outcome):
    smtp_server.reply("body", reply, times=1)
    commits = Commits()
    result = transport.send(SENDER, GOOD, BODY, on_commit=commits)
    assert result.outcome is outcome
    assert (result.reply.code, result.reply.enhanced) == (int(reply[:3]), reply.split()[1])
    assert (result.stage, result.body_sent, commits.calls) == ("body", True, 1)
    assert smtp_server.messages == []
    assert transport.send(SENDER, GOOD, BODY).outcome is Outcome.SENT


@pytest.mark.parametrize(
    ("reply", "outcome"),
    [
        ("421 4.3.2 Closing", Outcome.SERVER_DOWN),
        ("451 4.3.0 Try later", Outcome.DEFERRED),
        ("452 4.3.1 No room", Outcome.DEFERRED),
        ("554 5.5.1 No valid recipients", Outcome.FAILED),
    ],
)
def test_reply_to_the_data_command(smtp_server, transport, reply, outcome):
    smtp_server.reply("data", reply, times=1)
    commits = Commits()
    result = transport.send(SENDER, GOOD, BODY, on_commit=commits)
    assert (result.outcome, result.stage, result.body_sent) == (outcome, "data", False)
    assert commits.calls == 1  # committing was marked, but no body went out
    assert smtp_server.messages == [] and smtp_server.dropped_after_body == []
    assert transport.send(SENDER, GOOD, BODY).outcome is Outcome.SENT


def test_a_sender_refused_at_mail_fails_without_bouncing_the_recipient(smtp_server, transport):
    smtp_server.reply("mail", "553 5.1.8 Sender domain does not exist", times=1)
    result = transport.send(SENDER, GOOD, BODY)
    assert (result.outcome, result.stage) == (Outcome.FAILED, "mail")


def test_drop_at_rcpt_defers_and_the_next_message_reconnects(smtp_server, transport):
    smtp_server.drop("rcpt", times=1)
    commits = Commits()
    result = transport.send(SENDER, GOOD, BODY, on_commit=commits)
    assert (result.outcome, result.stage, result.body_sent) == (Outcome.DEFERRED, "rcpt", False)
    assert result.reply.code is None
    assert result.reply.text.startswith("connection dropped at RCPT")
    assert commits.calls == 0
    assert transport.send(SENDER, GOOD, BODY).outcome is Outcome.SENT
    assert smtp_server.connections == 2
    assert len(smtp_server.messages) == 1


def test_drop_at_the_data_command_defers(smtp_server, transport):
    smtp_server.drop("data", times=1)
    result = transport.send(SENDER, GOOD, BODY, on_commit=Commits())
    assert (result.outcome, result.stage, result.body_sent) == (Outcome.DEFERRED, "data", False)
    assert smtp_server.messages == []


def test_drop_after_the_body_is_unknown(smtp_server, transport):
    smtp_server.drop("body", times=1)
    commits = Commits()
    result = transport.send(SENDER, GOOD, BODY, on_commit=commits)
    assert (result.outcome, result.stage, result.body_sent) == (Outcome.UNKNOWN, "body", True)
    assert result.reply.text.startswith("connection dropped after the body was sent")
    assert commits.calls == 1
    assert [m.rcpt_tos for m in smtp_server.dropped_after_body] == [(GOOD,)]
    assert transport.send(SENDER, GOOD, BODY).outcome is Outcome.SENT


def test_an_idle_connection_closed_by_the_server_is_reopened_transparently(smtp_server, transport):
    assert transport.send(SENDER, GOOD, BODY).outcome is Outcome.SENT
    smtp_server.drop("mail", times=1)  # as if the server had timed the idle connection out
    assert transport.send(SENDER, GOOD, BODY).outcome is Outcome.SENT
    smtp_server.reply("mail", "421 4.4.2 Idle timeout", times=1)
    assert transport.send(SENDER, GOOD, BODY).outcome is Outcome.SENT
    assert smtp_server.connections == 3
    assert len(smtp_server.messages) == 3


def test_a_fresh_connection_is_not_retried(smtp_server, transport):
    smtp_server.reply("mail", "421 4.3.2 Going down", times=1)
    result = transport.send(SENDER, GOOD, BODY)
    assert (result.outcome, result.stage) == (Outcome.SERVER_DOWN, "mail")
    assert smtp_server.connections == 1


def test_slow_server_times_out(smtp_server):
    transport = SmtpTransport(smtp_server.settings(), timeout=0.3)
    smtp_server.delay("rcpt", 1.0, times=1)
    started = time.monotonic()
    result = transport.send(SENDER, GOOD, BODY)
    assert (result.outcome, result.stage) == (Outcome.DEFERRED, "rcpt")
    assert "no reply within 0.3s" in result.reply.text
    smtp_server.delay("body", 1.0, times=1)
    result = transport.send(SENDER, GOOD, BODY)
    assert (result.outcome, result.body_sent) == (Outcome.UNKNOWN, True)
    assert time.monotonic() - started < 2.0
    transport.close()


def test_slow_but_within_the_timeout_is_fine(smtp_server):
    smtp_server.delay("body", 0.2)
    with SmtpTransport(smtp_server.settings(), timeout=2) as transport:
        assert transport.send(SENDER, GOOD, BODY).outcome is Outcome.SENT


def test_greylisting_defers_then_sends(smtp_server, transport):
    smtp_server.greylist()
    first = transport.send(SENDER, GOOD, BODY)
    assert (first.outcome, first.reply.code, first.reply.enhanced) == (
        Outcome.DEFERRED,
        451,
        "4.7.1",
    )
    second = transport.send(SENDER, GOOD, BODY)
    assert second.outcome is Outcome.SENT
    assert [m.rcpt_tos for m in smtp_server.messages] == [(GOOD,)]


def test_on_commit_failure_propagates_and_sends_nothing(smtp_server, transport):
    class LeaseLost(Exception):
        pass

    def lost() -> None:
        raise LeaseLost

    with pytest.raises(LeaseLost):
        transport.send(SENDER, GOOD, BODY, on_commit=lost)
    assert smtp_server.messages == []
    assert transport.send(SENDER, GOOD, BODY).outcome is Outcome.SENT  # transaction was reset
    assert smtp_server.connections == 1


def test_connection_refused_is_server_down(smtp_server):
    settings = smtp_server.settings()
    smtp_server.stop()
    result = SmtpTransport(settings, timeout=2).send(SENDER, GOOD, BODY)
    assert (result.outcome, result.stage, result.reply.code) == (
        Outcome.SERVER_DOWN,
        "connect",
        None,
    )
    assert "connection refused" in result.reply.text


def test_addresses_with_line_breaks_fail_without_touching_the_network(smtp_server, transport):
    result = transport.send(SENDER, "a@example.id\r\nRCPT TO:<b@example.id>", BODY)
    assert result.outcome is Outcome.FAILED
    assert smtp_server.connections == 0


def test_international_address_uses_smtputf8(smtp_server, transport):
    result = transport.send(SENDER, "bülent@example.id", BODY)
    assert result.outcome is Outcome.SENT
    assert smtp_server.messages[0].rcpt_tos == ("bülent@example.id",)


# --- AUTH and TLS ------------------------------------------------------------------------------

PASSWORD = "s3cret-pässwort"


def test_auth_succeeds(smtp_server_factory):
    server = smtp_server_factory(auth=("mailer", "s3cret"))
    with SmtpTransport(server.settings(), timeout=5) as transport:
        assert transport.send(SENDER, GOOD, BODY).outcome is Outcome.SENT
        assert transport.send(SENDER, GOOD, BODY).outcome is Outcome.SENT
    assert [ok for _, _, ok in server.auth_attempts] == [True]


def test_failed_auth_is_server_down_and_never_shows_the_password(smtp_server_factory):
    server = smtp_server_factory(auth=("mailer", "right"))
    settings = server.settings(password=Secret("wrong-horse-battery"))
    transport = SmtpTransport(settings, timeout=5)
    result = transport.send(SENDER, GOOD, BODY)
    assert (result.outcome, result.stage, result.reply.code) == (Outcome.SERVER_DOWN, "auth", 535)
    assert server.messages == []
    for shown in (repr(transport), str(transport), repr(settings), repr(result), str(result.reply)):
        assert "wrong-horse-battery" not in shown
    assert "mailer@" in repr(transport)


def test_non_ascii_password_fails_without_echoing_it(smtp_server_factory):
    server = smtp_server_factory(auth=("mailer", "right"))
    result = SmtpTransport(server.settings(password=Secret(PASSWORD)), timeout=5).send(
        SENDER, GOOD, BODY
    )
    assert (result.outcome, result.stage) == (Outcome.SERVER_DOWN, "auth")
    assert PASSWORD not in repr(result)


def test_a_server_echoing_the_password_does_not_get_it_into_results(smtp_server_factory):
    server = smtp_server_factory(auth=("mailer", "hunter2-long"))
    server.reply("rcpt", "550 5.7.1 you said hunter2-long, rejected", times=1)
    with SmtpTransport(server.settings(), timeout=5) as transport:
        result = transport.send(SENDER, GOOD, BODY)
    assert result.outcome is Outcome.FAILED
    assert "hunter2-long" not in repr(result)
    assert "********" in result.reply.text


def test_starttls_required_but_not_offered_refuses_to_send(smtp_server):
    settings = replace(smtp_server.settings(), starttls=True)
    result = SmtpTransport(settings, timeout=5).send(SENDER, GOOD, BODY)
    assert (result.outcome, result.stage) == (Outcome.SERVER_DOWN, "tls")
    assert "does not offer" in result.reply.text
    assert smtp_server.messages == [] and smtp_server._transactions == 0


def test_starttls_with_a_trusted_certificate(starttls_smtp_server):
    with SmtpTransport(starttls_smtp_server.settings(), timeout=5) as transport:
        assert transport.send(SENDER, GOOD, BODY).outcome is Outcome.SENT
        assert transport.send(SENDER, GOOD, BODY).outcome is Outcome.SENT
    assert [m.tls for m in starttls_smtp_server.messages] == [True, True]
    assert starttls_smtp_server.connections == 1


def test_starttls_with_an_untrusted_certificate_is_refused(starttls_smtp_server):
    settings = starttls_smtp_server.settings(cafile=None)  # only the system CAs
    result = SmtpTransport(settings, timeout=5).send(SENDER, GOOD, BODY)
    assert (result.outcome, result.stage) == (Outcome.SERVER_DOWN, "tls")
    assert "certificate" in result.reply.text
    assert starttls_smtp_server.messages == []


def test_smtps_with_a_trusted_certificate(tls_smtp_server):
    assert tls_smtp_server.url.startswith("smtps://")
    with SmtpTransport(tls_smtp_server.settings(), timeout=5) as transport:
        assert transport.send(SENDER, GOOD, BODY).outcome is Outcome.SENT
    assert tls_smtp_server.messages[0].tls


def test_smtps_with_an_untrusted_certificate_is_refused(tls_smtp_server):
    result = SmtpTransport(tls_smtp_server.settings(cafile=None), timeout=5).send(
        SENDER, GOOD, BODY
    )
    assert (result.outcome, result.stage) == (Outcome.SERVER_DOWN, "tls")
    assert "certificate" in result.reply.text
    assert tls_smtp_server.messages == []


def test_smtps_against_a_plain_server_is_a_tls_failure(smtp_server):
    result = SmtpTransport(smtp_server.settings(ssl=True), timeout=2).send(SENDER, GOOD, BODY)
    assert (result.outcome, result.stage) == (Outcome.SERVER_DOWN, "tls")
    assert smtp_server.messages == []


def test_auth_over_starttls(smtp_server_factory, tls_cert):
    server = smtp_server_factory(
        tls="starttls", cert=tls_cert, auth=("u", "p"), auth_require_tls=True
    )
    with SmtpTransport(server.settings(), timeout=5) as transport:
        assert transport.send(SENDER, GOOD, BODY).outcome is Outcome.SENT
    assert server.auth_attempts == [("PLAIN", "u", True)]


# --- a server in another process ------------------------------------------------------------------


def test_server_in_a_subprocess_records_every_message(tmp_path):
    from engine.config import parse_smtp_url

    with spawn_server(
        tmp_path / "received.jsonl", rules=[Rule("rcpt", reply="550 5.1.1 no", message=2)]
    ) as server:
        with SmtpTransport(parse_smtp_url(server.url), timeout=5) as transport:
            outcomes = [transport.send(SENDER, f"m{i}@example.id", BODY).outcome for i in range(3)]
        assert outcomes == [Outcome.SENT, Outcome.BOUNCED, Outcome.SENT]
        records = server.records()
    assert [r["rcpt_tos"] for r in records] == [["m0@example.id"], ["m2@example.id"]]
    assert records[0]["message_id"] == "<m1@toko.example.id>"
    assert {r["connection"] for r in records} == {1}


# --- pacing -------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_rate_limiter_spaces_messages_evenly():
    clock = FakeClock()
    limiter = RateLimiter(parse_rate("5/s"), clock=clock, sleep=clock.sleep)
    for _ in range(11):
        limiter.acquire()
    assert clock.now - 100.0 == pytest.approx(2.0)
    assert clock.slept == pytest.approx([0.2] * 10)


def test_rate_limiter_allows_a_burst_and_does_not_save_up_idle_time():
    clock = FakeClock()
    limiter = RateLimiter(Rate(60, timedelta(minutes=1)), clock=clock, sleep=clock.sleep, burst=3)
    assert [limiter.acquire() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire() == pytest.approx(1.0)
    clock.now += 3600  # an idle hour does not buy an hour's worth of messages
    waits = [limiter.acquire() for _ in range(5)]
    assert waits[:3] == [0.0, 0.0, 0.0] and waits[3:] == pytest.approx([1.0, 1.0])


def test_rate_limiter_caps_all_threads_together():
    limiter = RateLimiter(parse_rate("200/s"))
    started = time.monotonic()
    threads = [
        threading.Thread(target=lambda: [limiter.acquire() for _ in range(10)]) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert time.monotonic() - started >= 39 / 200 - 0.01


def test_server_backoff_doubles_and_resets():
    clock = FakeClock()
    backoff = ServerBackoff(base=2, maximum=10, clock=clock, sleep=clock.sleep)
    assert backoff.remaining() == 0
    assert [backoff.record(Outcome.SERVER_DOWN) for _ in range(4)] == [2, 4, 8, 10]
    assert backoff.wait() == 10 and backoff.remaining() == 0
    assert backoff.record(Outcome.DEFERRED) == 0 and backoff.failures == 0
    assert backoff.record(Outcome.SERVER_DOWN) == 2


def test_without_pipelining_the_commands_go_one_by_one(smtp_server_factory):
    server = smtp_server_factory(pipelining=False)
    server.reply("mail", "550 5.7.1 Sender rejected", times=1)
    server.reply("rcpt", "550 5.1.1 No such user", recipient="gone@example.id")
    server.drop("rcpt", recipient="drop@example.id", times=1)
    with SmtpTransport(server.settings(), timeout=5) as transport:
        assert transport.send(SENDER, GOOD, BODY).stage == "mail"
        assert transport.send(SENDER, "gone@example.id", BODY).outcome is Outcome.BOUNCED
        dropped = transport.send(SENDER, "drop@example.id", BODY)
        assert (dropped.outcome, dropped.stage) == (Outcome.DEFERRED, "rcpt")
        assert transport.send(SENDER, GOOD, BODY).outcome is Outcome.SENT
    assert server.connections == 2
    assert [m.rcpt_tos for m in server.messages] == [(GOOD,)]


def test_a_display_name_sender_is_reduced_to_its_address(smtp_server, transport):
    assert transport.send(f"Toko Budi <{SENDER}>", GOOD, BODY).outcome is Outcome.SENT
    assert smtp_server.messages[0].mail_from == SENDER


def test_connect_opens_the_connection_up_front(smtp_server):
    with SmtpTransport(smtp_server.settings(), timeout=5) as transport:
        assert transport.connect() is None and transport.connected
        assert transport.send(SENDER, GOOD, BODY).outcome is Outcome.SENT
    assert smtp_server.connections == 1
    smtp_server.stop()
    failure = SmtpTransport(smtp_server.settings(), timeout=2).connect()
    assert failure is not None and failure.outcome is Outcome.SERVER_DOWN


@settings(max_examples=80, deadline=None)
@given(lines=st.lists(st.binary(max_size=20).filter(lambda b: b"\r" not in b and b"\n" not in b)))
def test_payload_is_dot_stuffed_crlf_text_ending_in_the_end_mark(lines):
    from engine.smtp_wire import data_payload as _payload

    data = b"\n".join(lines)
    payload = _payload(data)
    assert payload.endswith(b"\r\n.\r\n")
    body_lines = payload[: -len(b".\r\n")].split(b"\r\n")[:-1]
    assert b"\n" not in b"".join(body_lines) and b"\r" not in b"".join(body_lines)
    unstuffed = [line[1:] if line.startswith(b".") else line for line in body_lines]
    assert all(not line.startswith(b".") or line.startswith(b"..") for line in body_lines)
    expected = data if data.endswith(b"\n") else data + b"\n"  # a final line end is added once
    assert unstuffed == expected.split(b"\n")[:-1]


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=40)
    | st.lists(st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n"])).map(b"".join)
)
def test_a_body_checked_as_smtp_ready_goes_out_unchanged(data):
    """``is_smtp_ready`` says yes only where ``_payload`` would change nothing; a body
    marked ready (``SmtpReady``) is then sent with the end mark alone, unscanned."""
    from engine.smtp_wire import SmtpReady, is_smtp_ready
    from engine.smtp_wire import data_payload as _payload

    assert (_payload(data) == data + b".\r\n") == is_smtp_ready(data)
    if is_smtp_ready(data):
        assert _payload(SmtpReady(data)) == _payload(data)


def test_a_ready_body_arrives_intact(smtp_server, transport):
    from engine.smtp_wire import SmtpReady, is_smtp_ready

    assert not is_smtp_ready(BODY)  # it has a line starting with a dot
    ready = BODY.replace(b"\r\n.a line", b"\r\na line")
    assert is_smtp_ready(ready)
    assert transport.send(SENDER, GOOD, SmtpReady(ready)).outcome is Outcome.SENT
    assert smtp_server.messages[0].data == ready
