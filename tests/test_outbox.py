"""The outbox on both backends: keys, claims, leases, finishing, recovery."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from engine.models import attempts, merchants, messages
from engine.outbox import Finish, NewMessage, State, enqueue, recover, requeue_unknown, state_counts
from engine.outbox_session import claim, finish, mark_committing, release
from engine.suppressions import add_suppression, is_suppressed

NOW = datetime(2026, 12, 1, 9, 0)  # the fixed clock of these tests
LEASE = timedelta(minutes=5)


def add_merchants(engine, count: int, start: int = 1) -> None:
    with engine.begin() as conn:
        conn.execute(
            merchants.insert(),
            [
                {"id": i, "external_id": f"m{i}", "email": f"m{i}@example.id", "attributes": {}}
                for i in range(start, start + count)
            ],
        )


def new(i: int, campaign: str = "promo", topic: str = "promo", run: str = "manual") -> NewMessage:
    return NewMessage(
        key=f"{campaign}/run-{run}/m-{i}",
        campaign=campaign,
        topic=topic,
        merchant_id=i,
        email=f"m{i}@example.id",
        sender="news@example.id",
        subject=f"Hello {i}",
        message_id=f"<{i}@example.id>",
        data=f"Subject: Hello {i}\r\n\r\nbody {i}\r\n".encode(),
        run=run,
    )


def states(engine) -> dict[str, int]:
    with engine.connect() as conn:
        return state_counts(conn)


def state_of(engine, key: str) -> str:
    with engine.connect() as conn:
        return conn.execute(sa.select(messages.c.state).where(messages.c.key == key)).scalar_one()


def test_enqueue_twice_is_harmless(engine):
    add_merchants(engine, 5)
    assert enqueue(engine, [new(i) for i in range(1, 6)], now=NOW) == 5
    assert enqueue(engine, [new(i) for i in range(1, 6)], now=NOW) == 0
    assert enqueue(engine, [new(i) for i in range(3, 6)] + [new(1, run="second")], now=NOW) == 1
    assert states(engine) == {"queued": 6}


def test_claim_takes_due_messages_once_and_keeps_the_bytes(engine):
    add_merchants(engine, 3)
    enqueue(engine, [new(i) for i in range(1, 4)], now=NOW)
    first = claim(engine, worker="a", limit=2, lease=LEASE, now=NOW)
    second = claim(engine, worker="b", limit=5, lease=LEASE, now=NOW)
    assert [c.key for c in first] == ["promo/run-manual/m-1", "promo/run-manual/m-2"]
    assert [c.key for c in second] == ["promo/run-manual/m-3"]
    assert first[0].data == b"Subject: Hello 1\r\n\r\nbody 1\r\n"
    assert claim(engine, worker="c", limit=5, lease=LEASE, now=NOW) == []
    assert states(engine) == {"sending": 3}


def test_claim_filters_by_campaign(engine):
    add_merchants(engine, 2)
    enqueue(engine, [new(1, campaign="a"), new(2, campaign="b")], now=NOW)
    assert [
        c.campaign for c in claim(engine, worker="w", limit=5, lease=LEASE, campaign="b", now=NOW)
    ] == ["b"]


def test_an_unsubscribe_between_enqueue_and_claim_wins(engine):
    add_merchants(engine, 3)
    enqueue(engine, [new(i) for i in range(1, 4)], now=NOW)
    add_suppression(engine, "m2@example.id", topic="promo", reason="unsubscribe", now=NOW)
    add_suppression(engine, "M3@example.id", reason="complaint", now=NOW)  # all topics
    claimed = claim(engine, worker="w", limit=10, lease=LEASE, now=NOW)
    assert [c.key for c in claimed] == ["promo/run-manual/m-1"]
    assert states(engine) == {"sending": 1, "suppressed": 2}


def test_a_topic_suppression_does_not_block_other_topics(engine):
    add_merchants(engine, 1)
    add_suppression(engine, "m1@example.id", topic="retention", reason="unsubscribe", now=NOW)
    enqueue(engine, [new(1)], now=NOW)
    assert len(claim(engine, worker="w", limit=10, lease=LEASE, now=NOW)) == 1


def test_a_stalled_worker_cannot_overwrite_the_new_owner(engine):
    add_merchants(engine, 1)
    enqueue(engine, [new(1)], now=NOW)
    (stale,) = claim(engine, worker="stale", limit=1, lease=LEASE, now=NOW)
    later = NOW + LEASE + timedelta(seconds=1)
    assert recover(engine, now=later) == {"requeued": 1, "unknown": 0}
    (fresh,) = claim(engine, worker="fresh", limit=1, lease=LEASE, now=later)
    assert fresh.token != stale.token
    # The stalled worker wakes up: it may not mark the message nor record a result.
    assert mark_committing(engine, stale, now=NOW) is False
    assert (
        finish(engine, stale, Finish("sent", 250), max_attempts=3, retry_backoff=LEASE, now=NOW)
        is None
    )
    assert state_of(engine, fresh.key) == "sending"
    assert mark_committing(engine, fresh, now=NOW) is True
    assert (
        finish(
            engine,
            fresh,
            Finish("sent", 250, queue_id="Q1"),
            max_attempts=3,
            retry_backoff=LEASE,
            now=NOW,
        )
        == State.SENT
    )
    with engine.connect() as conn:
        row = conn.execute(sa.select(messages).where(messages.c.key == fresh.key)).mappings().one()
        outcomes = sorted(conn.execute(sa.select(attempts.c.outcome)).scalars())
    assert (row["state"], row["queue_id"], row["worker"], row["lease_token"]) == (
        "sent",
        "Q1",
        "fresh",
        None,
    )
    assert outcomes == ["sent", "sent (lease lost)"]


def test_expired_committing_becomes_unknown_and_is_never_reclaimed(engine):
    add_merchants(engine, 2)
    enqueue(engine, [new(1), new(2)], now=NOW)
    a, b = claim(engine, worker="w", limit=2, lease=LEASE, now=NOW)
    assert mark_committing(engine, a, now=NOW)
    later = NOW + LEASE * 2
    assert recover(engine, now=later) == {"requeued": 1, "unknown": 1}
    assert state_of(engine, a.key) == "unknown"
    assert state_of(engine, b.key) == "queued"
    assert [c.key for c in claim(engine, worker="w2", limit=5, lease=LEASE, now=later)] == [b.key]
    # Only on purpose: campaign retry --unknown.
    assert requeue_unknown(engine, "promo", now=later) == 1
    assert [c.key for c in claim(engine, worker="w3", limit=5, lease=LEASE, now=later)] == [a.key]


def test_deferral_backs_off_exponentially_then_fails(engine):
    add_merchants(engine, 1)
    enqueue(engine, [new(1)], now=NOW)
    backoff = timedelta(minutes=5)
    now = NOW
    waits = []
    for attempt in range(1, 4):
        (c,) = claim(engine, worker="w", limit=1, lease=LEASE, now=now)
        assert c.attempts == attempt - 1
        state = finish(
            engine,
            c,
            Finish("deferred", 451, "4.7.1", "try later"),
            max_attempts=3,
            retry_backoff=backoff,
            now=now,
        )
        with engine.connect() as conn:
            due = conn.execute(sa.select(messages.c.next_attempt_at)).scalar()
        if attempt < 3:
            assert state == State.DEFERRED
            waits.append(due - now)
            assert claim(engine, worker="w", limit=1, lease=LEASE, now=now) == []  # not due yet
            now = due
        else:
            assert state == State.FAILED
    assert waits == [backoff, backoff * 2]
    with engine.connect() as conn:
        row = conn.execute(sa.select(messages)).mappings().one()
        logged = conn.execute(
            sa.select(attempts.c.smtp_code, attempts.c.enhanced_status, attempts.c.reply)
        ).all()
    assert row["attempts"] == 3 and "gave up after 3 attempts" in row["last_error"]
    assert logged == [(451, "4.7.1", "try later")] * 3


def test_server_down_does_not_charge_an_attempt(engine):
    add_merchants(engine, 1)
    enqueue(engine, [new(1)], now=NOW)
    now = NOW
    for _ in range(5):
        (c,) = claim(engine, worker="w", limit=1, lease=LEASE, now=now)
        assert (
            finish(
                engine,
                c,
                Finish("server_down", 421, "4.3.2", "shutting down"),
                max_attempts=2,
                retry_backoff=timedelta(seconds=30),
                now=now,
            )
            == State.DEFERRED
        )
        now += timedelta(seconds=31)
    with engine.connect() as conn:
        assert conn.execute(sa.select(messages.c.attempts, messages.c.state)).one() == (
            0,
            "deferred",
        )
        assert conn.execute(sa.select(sa.func.count()).select_from(attempts)).scalar() == 5


def test_hard_bounce_fails_and_suppresses_the_address(engine):
    add_merchants(engine, 2)
    enqueue(engine, [new(1), new(2, campaign="other", topic="retention")], now=NOW)
    (c,) = claim(engine, worker="w", limit=1, lease=LEASE, campaign="promo", now=NOW)
    assert (
        finish(
            engine,
            c,
            Finish("bounced", 550, "5.1.1", "no such user"),
            max_attempts=6,
            retry_backoff=LEASE,
            now=NOW,
        )
        == State.FAILED
    )
    assert is_suppressed(engine, "m1@example.id", "anything")
    assert not is_suppressed(engine, "m2@example.id", "promo")


def test_permanent_failure_and_unknown(engine):
    add_merchants(engine, 2)
    enqueue(engine, [new(1), new(2)], now=NOW)
    a, b = claim(engine, worker="w", limit=2, lease=LEASE, now=NOW)
    assert (
        finish(
            engine,
            a,
            Finish("failed", 554, "5.7.1", "rejected"),
            max_attempts=6,
            retry_backoff=LEASE,
            now=NOW,
        )
        == State.FAILED
    )
    assert mark_committing(engine, b, now=NOW)
    assert (
        finish(
            engine,
            b,
            Finish("unknown", None, None, "connection dropped after the body"),
            max_attempts=6,
            retry_backoff=LEASE,
            now=NOW,
        )
        == State.UNKNOWN
    )
    assert states(engine) == {"failed": 1, "unknown": 1}
    assert not is_suppressed(engine, "m1@example.id", "promo")  # 5.7.1 is not a bad mailbox


def test_release_gives_claims_back(engine):
    add_merchants(engine, 2)
    enqueue(engine, [new(1), new(2)], now=NOW)
    claimed = claim(engine, worker="w", limit=2, lease=LEASE, now=NOW)
    assert release(engine, claimed, now=NOW) == 2
    assert states(engine) == {"queued": 2}


@pytest.mark.slow
def test_concurrent_claimers_never_share_a_message(engine):
    total = 300
    add_merchants(engine, total)
    enqueue(engine, [new(i) for i in range(1, total + 1)], now=NOW)
    seen: list[str] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            while True:
                claimed = claim(engine, worker=name, limit=7, lease=LEASE, now=NOW)
                if not claimed:
                    return
                for c in claimed:
                    assert mark_committing(engine, c, now=NOW)
                    finish(
                        engine, c, Finish("sent", 250), max_attempts=3, retry_backoff=LEASE, now=NOW
                    )
                with lock:
                    seen.extend(c.key for c in claimed)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(seen) == total == len(set(seen))
    assert states(engine) == {"sent": total}


def test_only_waiting_messages_are_in_the_due_index(engine):
    """A claimed message leaves ix_messages_due; release, recovery and retries put it back."""
    add_merchants(engine, 3)
    enqueue(engine, [new(i) for i in range(1, 4)], now=NOW)

    def due_at() -> dict[str, object]:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(messages.c.key, messages.c.next_attempt_at))
            return {key.rsplit("-", 1)[1]: at for key, at in rows}

    assert all(at is not None for at in due_at().values())
    a, b, c = claim(engine, worker="w", limit=3, lease=LEASE, now=NOW)
    assert set(due_at().values()) == {None}
    assert mark_committing(engine, a, now=NOW)
    assert (
        finish(engine, a, Finish("sent", 250), max_attempts=3, retry_backoff=LEASE, now=NOW)
        == State.SENT
    )
    assert release(engine, [b], now=NOW) == 1
    later = NOW + LEASE * 2
    assert recover(engine, now=later) == {"requeued": 1, "unknown": 0}
    waiting = due_at()
    assert waiting["1"] is None and waiting["2"] is not None and waiting["3"] == later
    # Both come back through the index: nothing waiting is ever out of it.
    assert {m.key for m in claim(engine, worker="w2", limit=5, lease=LEASE, now=later)} == {
        b.key,
        c.key,
    }


def test_claims_and_recovery_read_the_partial_indexes(engine):
    """SQLite uses a partial index only when the query implies its condition: keep it so."""
    from engine import outbox, outbox_session

    if engine.dialect.name != "sqlite":
        pytest.skip("query plans are checked on SQLite")
    due = outbox_session._DUE.format(filters="", lock="")
    params = {"state": "queued", "now": "2026-11-30 00:00:00.000000", "room": 5}
    recovery = (
        sa.select(messages.c.id)
        .where(outbox.lease_expired(State.SENDING, NOW))
        .compile(engine, compile_kwargs={"literal_binds": True})
    )
    with engine.connect() as conn:
        plans = {
            "ix_messages_due": conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {due}", params).all(),
            "ix_messages_leased": conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {recovery}").all(),
        }
    for index, plan in plans.items():
        assert any(index in row[-1] for row in plan), plan


def test_a_body_marked_smtp_ready_is_claimed_as_such(engine):
    """The mark made when rendering travels with the body to the sending thread."""
    from dataclasses import replace as with_

    from engine.smtp_wire import SmtpReady

    add_merchants(engine, 2)
    enqueue(engine, [with_(new(1), smtp_ready=True), new(2)], now=NOW)
    ready, plain = claim(engine, worker="w", limit=2, lease=LEASE, now=NOW)
    assert type(ready.data) is SmtpReady and type(plain.data) is bytes
    assert ready.data == b"Subject: Hello 1\r\n\r\nbody 1\r\n"
