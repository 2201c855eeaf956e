"""The outbox's hot path on one connection: claim, mark committing, record the result, release.

A sender thread keeps one ``OutboxSession`` (an ``engine.db.WriteSession``) for its
lifetime; the module-level functions do the same one call at a time, on a pooled
connection. Statements go straight to the DBAPI cursor (see ``engine.db``).
Due times compare with the command's clock (``now``); leases are real time
(``lease_now``, default ``now``).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import Engine

from engine.db import WriteSession, id_list
from engine.outbox import LEASE_FOR_DATA, Claim, Finish
from engine.outcomes import Outcome
from engine.retry import next_state
from engine.smtp_wire import SmtpReady
from engine.states import State
from engine.suppressions import suppress_in

_DUE = (
    "SELECT id FROM messages WHERE state = :state AND next_attempt_at <= :now{filters}"
    " ORDER BY next_attempt_at, id LIMIT :room{lock}"
)
_SUPPRESS_CLAIMED = (
    "UPDATE messages SET state = 'suppressed', last_error = 'address suppressed before sending',"
    " next_attempt_at = NULL, updated_at = :now"
    " WHERE id IN ({ids}) AND EXISTS (SELECT 1 FROM suppressions"
    " WHERE suppressions.email = messages.email AND suppressions.topic IN (messages.topic, '*'))"
)
_TAKE = (  # next_attempt_at cleared: the message leaves ix_messages_due until it waits again
    "UPDATE messages SET state = 'sending', lease_token = :token, lease_expires_at = :expires,"
    " worker = :worker, updated_at = :now, next_attempt_at = NULL"
    " WHERE id IN ({ids}) AND state IN ('queued', 'deferred')"
)
_CLAIMED = (
    "SELECT messages.id, messages.key, messages.campaign, messages.email, messages.sender,"
    " message_bodies.data, messages.attempts, message_bodies.smtp_ready"
    " FROM messages LEFT OUTER JOIN message_bodies ON message_bodies.message_id = messages.id"
    " WHERE messages.id IN ({ids}) AND messages.lease_token = :token ORDER BY messages.id"
)
_RELEASE = (
    "UPDATE messages SET state = CASE WHEN attempts = 0 THEN 'queued' ELSE 'deferred' END,"
    " lease_token = NULL, lease_expires_at = NULL, next_attempt_at = :not_before, updated_at = :now"
    " WHERE id = :id AND lease_token = :token AND state = 'sending'"
)
_FINISH = (
    "UPDATE messages SET state = :state, attempts = :attempts, next_attempt_at = :next_attempt_at,"
    " last_error = :last_error, queue_id = :queue_id, sent_at = :sent_at, updated_at = :now,"
    " lease_token = NULL, lease_expires_at = NULL"
    " WHERE id = :id AND lease_token = :token AND state IN ('sending', 'committing')"
)
_ATTEMPT = (
    "INSERT INTO attempts (message_id, at, worker, smtp_code, enhanced_status, reply, outcome)"
    " VALUES (:message_id, :at, :worker, :smtp_code, :enhanced_status, :reply, :outcome)"
)
_COMMITTING = (
    "UPDATE messages SET state = 'committing', updated_at = :now, lease_expires_at = :expires"
    " WHERE id = :id AND lease_token = :token AND state = 'sending'"
)


def _scope_sql(campaign: str | None, run: str | None, step: int | None) -> str:
    """The claim's optional filters: one campaign, and within it one run (or drip step)."""
    parts = [
        f" AND {column} = :{column}"
        for column, value in (("campaign", campaign), ("run", run), ("step", step))
        if value is not None
    ]
    return "".join(parts)


class OutboxSession(WriteSession):
    """The outbox's statements on one connection; each call's writes are committed before it returns."""

    # --- claiming ---------------------------------------------------------------

    def claim(
        self,
        *,
        worker: str,
        limit: int,
        lease: timedelta,
        now: datetime,
        lease_now: datetime | None = None,
        campaign: str | None = None,
        run: str | None = None,
        step: int | None = None,
    ) -> list[Claim]:
        """See ``claim``."""
        expires = (lease_now or now) + lease
        token = secrets.token_hex(16)
        # One ordered index range per state (ix_messages_due): no sort of the
        # whole backlog for each small claim. Retries first, they have waited longest.
        due = _DUE.format(
            filters=_scope_sql(campaign, run, step),
            lock="" if self.sqlite else " FOR UPDATE OF messages SKIP LOCKED",
        )

        def work(s: OutboxSession) -> list[tuple]:
            ids: list[int] = []
            for state in (State.DEFERRED, State.QUEUED):
                if len(ids) < limit:
                    params = {
                        "state": str(state),
                        "now": now,
                        "room": limit - len(ids),
                        "campaign": campaign,
                        "run": run,
                        "step": step,
                    }
                    ids += [row[0] for row in s.rows(due, params)]
            if not ids:
                return []
            listed = id_list(ids)
            s.execute(_SUPPRESS_CLAIMED, {"now": now}, listed)
            s.execute(
                _TAKE,
                {"token": token, "expires": expires, "worker": worker, "now": now},
                listed,
            )
            return s.rows(_CLAIMED, {"token": token}, listed)

        return [
            Claim(
                id,
                key,
                campaign_name,
                email,
                sender,
                SmtpReady(data or b"") if ready else bytes(data or b""),
                attempts,
                token,
                worker,
            )
            for id, key, campaign_name, email, sender, data, attempts, ready in self.write(work)
        ]

    def release(
        self,
        claims: Iterable[Claim],
        *,
        now: datetime,
        not_before: datetime | None = None,
    ) -> int:
        """See ``release``."""
        params = [
            {"id": c.id, "token": c.token, "now": now, "not_before": not_before or now}
            for c in claims
        ]
        return self.write(lambda s: sum(s.execute(_RELEASE, p) for p in params))

    # --- the committing mark and the result ---------------------------------------

    def mark_committing(
        self,
        claim: Claim,
        *,
        lease: timedelta | None = None,
        now: datetime,
        lease_now: datetime | None = None,
    ) -> bool:
        """See ``mark_committing``."""
        return self.write(
            lambda s: s._commit_in(claim, lease=lease, now=now, lease_now=lease_now or now)
        )

    def finish(
        self,
        claim: Claim,
        result: Finish,
        *,
        max_attempts: int,
        retry_backoff: timedelta,
        server_backoff: timedelta | None = None,
        now: datetime,
    ) -> State | None:
        """See ``finish``."""
        return self.write(
            lambda s: s._finish_in(
                claim,
                result,
                max_attempts=max_attempts,
                retry_backoff=retry_backoff,
                server_backoff=server_backoff,
                now=now,
            )
        )

    def finish_and_commit(
        self,
        done: tuple[Claim, Finish] | None,
        claim: Claim,
        *,
        max_attempts: int,
        retry_backoff: timedelta,
        lease: timedelta | None = None,
        now: datetime,
        lease_now: datetime | None = None,
    ) -> tuple[State | None, bool]:
        """See ``finish_and_commit``."""

        def work(s: OutboxSession) -> tuple[State | None, bool]:
            state = None
            if done is not None:
                state = s._finish_in(
                    done[0],
                    done[1],
                    max_attempts=max_attempts,
                    retry_backoff=retry_backoff,
                    server_backoff=None,
                    now=now,
                )
            return state, s._commit_in(claim, lease=lease, now=now, lease_now=lease_now or now)

        return self.write(work)

    def _commit_in(
        self, claim: Claim, *, lease: timedelta | None, now: datetime, lease_now: datetime
    ) -> bool:
        params = {
            "id": claim.id,
            "token": claim.token,
            "now": now,
            "expires": lease_now + (lease or LEASE_FOR_DATA),
        }
        return self.execute(_COMMITTING, params) == 1

    def _finish_in(
        self,
        claim: Claim,
        result: Finish,
        *,
        max_attempts: int,
        retry_backoff: timedelta,
        server_backoff: timedelta | None,
        now: datetime,
    ) -> State | None:
        outcome = result.outcome
        now = result.at or now
        decision = next_state(
            outcome,
            attempts=claim.attempts,
            max_attempts=max_attempts,
            retry_backoff=retry_backoff,
            at=now,
            error=result.describe(),
            server_backoff=server_backoff,
        )
        state = decision.state
        sent = outcome is Outcome.SENT
        values: dict[str, Any] = {
            "id": claim.id,
            "token": claim.token,
            "now": now,
            "attempts": decision.attempts,
            "next_attempt_at": decision.next_attempt_at,
            "last_error": decision.error,
            "queue_id": result.queue_id if sent else None,
            "sent_at": now if sent else None,
        }
        values["state"] = str(state)
        updated = self.execute(_FINISH, values)
        self.execute(
            _ATTEMPT,
            {
                "message_id": claim.id,
                "at": now,
                "worker": claim.worker,
                "smtp_code": result.code,
                "enhanced_status": result.enhanced,
                "reply": (result.text or "")[:2000],
                "outcome": str(outcome) if updated else f"{outcome} (lease lost)"[:20],
            },
        )
        if outcome is Outcome.BOUNCED:
            source = f"smtp {result.enhanced or result.code}"
            suppress_in(self.conn, claim.email, reason="hard_bounce", source=source, now=now)
        return state if updated else None


@contextmanager
def _session(engine: Engine) -> Iterator[OutboxSession]:
    """A session on a pooled connection, for one call."""
    with engine.connect() as conn:
        session = OutboxSession(conn)
        try:
            yield session
        finally:
            session.close()


# --- the same, one call at a time ---------------------------------------------------


def claim(
    engine: Engine,
    *,
    worker: str,
    limit: int,
    lease: timedelta,
    now: datetime,
    lease_now: datetime | None = None,
    campaign: str | None = None,
    run: str | None = None,
    step: int | None = None,
) -> list[Claim]:
    """Claim up to ``limit`` due messages for ``worker``, in one short committed transaction.

    Messages whose address was suppressed after they were queued become
    ``suppressed`` here instead (an unsubscribe between enqueue and send wins).
    ``campaign``, ``run`` and ``step`` narrow the claim to one campaign's run or step.
    """
    with _session(engine) as session:
        return session.claim(
            worker=worker,
            limit=limit,
            lease=lease,
            now=now,
            lease_now=lease_now,
            campaign=campaign,
            run=run,
            step=step,
        )


def mark_committing(
    engine: Engine,
    claim: Claim,
    *,
    lease: timedelta | None = None,
    now: datetime,
    lease_now: datetime | None = None,
) -> bool:
    """The durable mark written just before the body goes out; False if the claim was lost.

    ``lease`` renews the claim from now: it has to cover the DATA exchange only,
    not the time the message waited behind others of its batch.
    """
    with _session(engine) as session:
        return session.mark_committing(claim, lease=lease, now=now, lease_now=lease_now)


def release(
    engine: Engine,
    claims: Iterable[Claim],
    *,
    now: datetime,
    not_before: datetime | None = None,
) -> int:
    """Give back claimed messages that were never tried (shutdown, server down)."""
    with _session(engine) as session:
        return session.release(claims, now=now, not_before=not_before)


def finish(
    engine: Engine,
    claim: Claim,
    result: Finish,
    *,
    max_attempts: int,
    retry_backoff: timedelta,
    server_backoff: timedelta | None = None,
    now: datetime,
) -> State | None:
    """Record an attempt and move the message on; None when the claim was no longer ours.

    The attempt row is written either way: it happened, and the log must say so.
    """
    with _session(engine) as session:
        return session.finish(
            claim,
            result,
            max_attempts=max_attempts,
            retry_backoff=retry_backoff,
            server_backoff=server_backoff,
            now=now,
        )
