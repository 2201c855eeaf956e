"""With ``[delivery] return_path`` a real send goes out with a signed VERP envelope sender,
which ``campaign bounces import`` reads back to the message (on both databases)."""

from __future__ import annotations

import dataclasses

import sqlalchemy as sa
from conftest import write_files
from test_send import FILES, add_merchants

from engine.config import DeliverySettings
from engine.models import messages
from engine.return_path import message_from_verp
from engine.sending import send_campaign
from engine.times import parse_rate


def test_the_envelope_sender_names_the_message(project, project_dir, smtp_server):
    write_files(project_dir, FILES)
    add_merchants(project, 3)
    project.settings = dataclasses.replace(
        project.settings,
        smtp=smtp_server.settings(),
        delivery=DeliverySettings(
            connections=1, rate=parse_rate("2000/s"), return_path="bounces@tokoku.id"
        ),
    )
    assert send_campaign(project, "news").states == {"sent": 3}
    with project.engine.connect() as conn:
        ids = dict(conn.execute(sa.select(messages.c.email, messages.c.id)).all())
    for received in smtp_server.messages:
        assert received.mail_from.startswith("bounces+") and received.mail_from.endswith(
            "@tokoku.id"
        )
        # The From header stays the campaign's; only the envelope changes.
        assert b"From: Tokoku <news@tokoku.id>" in received.data
        row = message_from_verp(project.settings, [received.mail_from])
        assert row == ids[received.rcpt_tos[0]]
