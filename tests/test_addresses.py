"""Email addresses: one parser; internationalised domains accepted in their ASCII form."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.addresses import normalize_email, parse_address, split_address
from engine.smtp_wire import angle_address


def test_an_internationalised_domain_is_stored_in_its_ascii_form():
    assert normalize_email("budi@tökö.id") == "budi@xn--tk-fkab.id"
    assert normalize_email("Budi@TÖKÖ.ID") == "budi@xn--tk-fkab.id"
    assert normalize_email("siti@bücher.example.id") == "siti@xn--bcher-kva.example.id"


@pytest.mark.parametrize(
    "bad", ["bùdi@toko.id", "budi@tö ko.id", "a@b", "", "two@a.id, three@b.id", "a@@b.id"]
)
def test_what_is_still_refused(bad):
    with pytest.raises(ValueError):
        normalize_email(bad)


def test_one_parser_for_names_and_addresses():
    assert parse_address('"Tim, Sukses" <Success@Tokoku.id>') == (
        "Tim, Sukses",
        "success@tokoku.id",
    )
    assert parse_address("Tim <a@tökö.id>") == ("Tim", "a@xn--tk-fkab.id")
    assert parse_address("a@b.id") == ("", "a@b.id")
    assert split_address("x <a@b.id>, y <c@d.id>") is None
    assert angle_address("Tim <a@b.id>") == "<a@b.id>" and angle_address("") == "<>"


@given(st.text(max_size=80))
def test_parsing_never_raises_anything_but_value_error(text):
    try:
        name, address = parse_address(text)
    except ValueError:
        return
    assert address == address.lower() and address.isascii() and "\n" not in name


def test_an_idn_merchant_imports_and_is_sent_to(project, tmp_path, smtp_server):
    """Imported with its ASCII domain, so headers and SMTP need no SMTPUTF8."""
    import dataclasses

    from conftest import write_files

    from engine.importer import import_file
    from engine.sending import send_campaign

    source = tmp_path / "m.csv"
    source.write_text(
        "external_id,email,store_name\nidn-1,budi@tökö.id,Toko Budi\n", encoding="utf-8"
    )
    report = import_file(project.engine, "merchants", source)
    assert report.imported == 1 and report.ok
    write_files(
        project.root,
        {
            "segments/all.yaml": "description: all\nrules:\n  field: status\n  eq: active\n",
            "campaigns/hi.yaml": 'kind: broadcast\ntopic: promo\nsegment: all\nfrom: "T <t@toko.id>"\ntemplate: hi\n',
            "templates/hi.html": '---\nsubject: "Halo"\n---\n<p>Halo</p><a href="{{ unsubscribe_url }}">x</a>\n',
        },
    )
    project.settings = dataclasses.replace(project.settings, smtp=smtp_server.settings())
    sent = send_campaign(project, "hi")
    assert sent.states == {"sent": 1}
    assert list(smtp_server.messages[0].rcpt_tos) == ["budi@xn--tk-fkab.id"]
