"""``SmtpTransport(pipeline_data=True)``: MAIL, RCPT and DATA in one write, against a real server.

The delivery threads use this mode. What differs from the default mode: a
refusal of the DATA command comes before ``on_commit`` (no committing mark is
written for it), and a failed ``on_commit`` after the 354 closes the connection
instead of resetting it; either way no body reaches the server.
"""

from __future__ import annotations

import pytest
from test_transport import BODY, BODY_REPLIES, GOOD, RCPT_REPLIES, SENDER, Commits

from engine.outcomes import Outcome
from engine.transport import SmtpTransport


@pytest.fixture
def transport(smtp_server):
    t = SmtpTransport(smtp_server.settings(), timeout=5, pipeline_data=True)
    yield t
    t.close()


def test_messages_arrive_intact_over_one_connection(smtp_server, transport):
    commits = Commits()
    for n in range(5):
        result = transport.send(SENDER, f"m{n}@example.id", BODY, on_commit=commits)
        assert (result.outcome, result.body_sent) == (Outcome.SENT, True)
        assert result.reply.queue_id == smtp_server.messages[-1].queue_id
    assert commits.calls == 5
    assert smtp_server.connections == 1
    assert [m.data for m in smtp_server.messages] == [BODY] * 5


@pytest.mark.parametrize(("reply", "outcome"), RCPT_REPLIES)
def test_reply_at_rcpt(smtp_server, transport, reply, outcome):
    smtp_server.reply("rcpt", reply, recipient="x@example.id")
    commits = Commits()
    result = transport.send(SENDER, "x@example.id", BODY, on_commit=commits)
    assert result.outcome is outcome
    assert (result.reply.code, result.reply.enhanced) == (int(reply[:3]), reply.split()[1])
    assert (result.stage, result.body_sent, commits.calls) == ("rcpt", False, 0)
    assert smtp_server.messages == []
    assert transport.send(SENDER, GOOD, BODY).outcome is Outcome.SENT
    assert smtp_server.connections == (2 if reply.startswith("421") else 1)


@pytest.mark.parametrize(
    ("reply", "outcome"),
    [
        ("421 4.3.2 Closing", Outcome.SERVER_DOWN),
        ("451 4.3.0 Try later", Outcome.DEFERRED),
        ("452 4.3.1 No room", Outcome.DEFERRED),
        ("554 5.5.1 No valid recipients", Outcome.FAILED),
    ],
)
def test_reply_to_the_data_command_comes_before_the_commit(smtp_server, transport, reply, outcome):
    smtp_server.reply("data", reply, times=1)
    commits = Commits()
    result = transport.send(SENDER, GOOD, BODY, on_commit=commits)
    assert (result.outcome, result.stage, result.body_sent) == (outcome, "data", False)
    assert commits.calls == 0
    assert smtp_server.messages == [] and smtp_server.dropped_after_body == []
    assert transport.send(SENDER, GOOD, BODY).outcome is Outcome.SENT


@pytest.mark.parametrize(("reply", "outcome"), BODY_REPLIES)
def test_reply_after_the_body(smtp_server, transport, reply, outcome):
    smtp_server.reply("body", reply, times=1)
    commits = Commits()
    result = transport.send(SENDER, GOOD, BODY, on_commit=commits)
    assert result.outcome is outcome
    assert (result.stage, result.body_sent, commits.calls) == ("body", True, 1)
    assert smtp_server.messages == []
    assert transport.send(SENDER, GOOD, BODY).outcome is Outcome.SENT


def test_a_sender_refused_at_mail(smtp_server, transport):
    smtp_server.reply("mail", "553 5.1.8 Sender domain does not exist", times=1)
    commits = Commits()
    result = transport.send(SENDER, GOOD, BODY, on_commit=commits)
    assert (result.outcome, result.stage, commits.calls) == (Outcome.FAILED, "mail", 0)
    assert transport.send(SENDER, GOOD, BODY).outcome is Outcome.SENT
    assert smtp_server.connections == 1


def test_a_failed_commit_after_the_354_closes_the_connection_and_sends_nothing(
    smtp_server, transport
):
    class LeaseLost(Exception):
        pass

    def lost() -> None:
        raise LeaseLost

    with pytest.raises(LeaseLost):
        transport.send(SENDER, GOOD, BODY, on_commit=lost)
    assert transport.send(SENDER, GOOD, BODY).outcome is Outcome.SENT
    assert smtp_server.connections == 2
    assert [m.rcpt_tos for m in smtp_server.messages] == [(GOOD,)]
    assert smtp_server.dropped_after_body == []


def test_drops_before_and_after_the_body(smtp_server, transport):
    smtp_server.drop("rcpt", times=1)
    result = transport.send(SENDER, GOOD, BODY, on_commit=Commits())
    assert (result.outcome, result.stage, result.body_sent) == (Outcome.DEFERRED, "rcpt", False)
    smtp_server.drop("data", times=1)
    result = transport.send(SENDER, GOOD, BODY, on_commit=Commits())
    assert (result.outcome, result.stage, result.body_sent) == (Outcome.DEFERRED, "data", False)
    assert smtp_server.messages == []
    smtp_server.drop("body", times=1)
    result = transport.send(SENDER, GOOD, BODY, on_commit=Commits())
    assert (result.outcome, result.stage, result.body_sent) == (Outcome.UNKNOWN, "body", True)
    assert transport.send(SENDER, GOOD, BODY).outcome is Outcome.SENT
    assert len(smtp_server.messages) == 1


def test_an_idle_connection_closed_by_the_server_is_reopened_transparently(smtp_server, transport):
    assert transport.send(SENDER, GOOD, BODY).outcome is Outcome.SENT
    smtp_server.drop("mail", times=1)
    assert transport.send(SENDER, GOOD, BODY).outcome is Outcome.SENT
    smtp_server.reply("mail", "421 4.4.2 Idle timeout", times=1)
    assert transport.send(SENDER, GOOD, BODY).outcome is Outcome.SENT
    assert smtp_server.connections == 3
    assert len(smtp_server.messages) == 3


def test_without_pipelining_on_offer_the_commands_go_one_by_one(smtp_server_factory):
    server = smtp_server_factory(pipelining=False)
    server.reply("rcpt", "550 5.1.1 No such user", recipient="gone@example.id")
    with SmtpTransport(server.settings(), timeout=5, pipeline_data=True) as transport:
        assert transport.send(SENDER, "gone@example.id", BODY).outcome is Outcome.BOUNCED
        assert transport.send(SENDER, GOOD, BODY).outcome is Outcome.SENT
    assert [m.rcpt_tos for m in server.messages] == [(GOOD,)]
