"""Settings: defaults, campaign.toml, environment overrides, precise errors, secrets hidden."""

from __future__ import annotations

from datetime import timedelta

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from engine.cli import cli
from engine.config import load_settings, parse_smtp_url
from engine.errors import SettingsError
from engine.times import parse_duration, parse_rate


def test_every_key_has_a_default(tmp_path):
    settings = load_settings(tmp_path, env={})
    assert settings.database_url == f"sqlite:///{tmp_path.resolve() / 'campaign.db'}"
    assert settings.project.default_locale == "id"
    assert settings.delivery.connections == 4
    assert settings.delivery.rate.per_second == 50
    assert settings.delivery.retry_backoff == timedelta(minutes=5)
    assert settings.limits.frequency_cap.count == 3
    assert settings.limits.frequency_cap.per == timedelta(days=7)
    assert settings.limits.frequency_cap_exempt == ("onboarding",)
    assert settings.smtp is None and settings.secret_key is None


def test_toml_and_environment(tmp_path):
    (tmp_path / "campaign.toml").write_text(
        '[project]\ndefault_locale = "en"\n[delivery]\nconnections = 2\nrate = "10/m"\n'
        '[limits]\nfrequency_cap = "off"\n[unsubscribe]\nbase_url = "https://a.example.id/"\n'
    )
    env = {
        "CAMPAIGN_DATABASE_URL": "postgresql://u:pw@db.example/crm",
        "CAMPAIGN_SMTP_URL": "smtp://mailer:s3cr%40t@mail.example.id:587?starttls=true",
        "CAMPAIGN_SECRET_KEY": "k" * 32,
        "CAMPAIGN_BASE_URL": "https://crm.example.id",
    }
    settings = load_settings(tmp_path, env=env)
    assert settings.project.default_locale == "en"
    assert settings.delivery.connections == 2
    assert settings.delivery.rate.per_second == pytest.approx(1 / 6)
    assert settings.limits.frequency_cap is None
    assert settings.unsubscribe.base_url == "https://crm.example.id"
    assert settings.database_url == "postgresql+psycopg://u:pw@db.example/crm"
    assert settings.smtp.host == "mail.example.id" and settings.smtp.port == 587
    assert settings.smtp.starttls and not settings.smtp.ssl
    assert settings.smtp.password.reveal() == "s3cr@t"
    # Secrets never show up in output.
    assert "s3cr" not in repr(settings) and "kkkk" not in repr(settings)
    assert "s3cr" not in settings.smtp.describe()


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[delivery]\nrate = "fast"\n', r"campaign.toml:2: delivery.rate: 'fast' is not a rate"),
        (
            "[delivery]\nspeed = 3\n",
            r"campaign.toml:2: delivery.speed: unknown key \(valid keys: connections",
        ),
        (
            '[project]\ntimezone = "Mars/Base"\n',
            r"campaign.toml:2: project.timezone: 'Mars/Base' is not an IANA",
        ),
        (
            "[delivery]\nconnections = 0\n",
            r"delivery.connections: 0 is not a whole number above zero",
        ),
        (
            "[delivery]\nconnections = 1000\n",
            r"campaign.toml:2: delivery.connections: 1000 is more than 64 connections",
        ),
        ("[deliveries]\n", r"campaign.toml:1: \[deliveries\]: unknown section"),
        (
            '[unsubscribe]\nbase_url = "crm"\n',
            r"unsubscribe.base_url: 'crm' is not an http\(s\) URL",
        ),
        ('[delivery]\nlease = "0s"\n', r"campaign.toml:2: delivery.lease: '0s' must be longer"),
        ('[scheduler]\ntick = "0m"\n', r"campaign.toml:2: scheduler.tick: '0m' must be longer"),
        ("[project\n", r"campaign.toml:1: not valid TOML: Expected"),
        ("[project]\nx = = 1\n", r"campaign.toml:2: not valid TOML: Invalid value"),
        (
            '[unsubscribe]\nmailto = "not an email"\n',
            r"campaign.toml:2: unsubscribe.mailto: 'not an email' is not a valid email address",
        ),
        (
            '[limits]\nfrequency_cap_exempt = ["onboardin"]\n',
            r"campaign.toml:2: limits.frequency_cap_exempt: unknown topic 'onboardin'",
        ),
    ],
)
def test_bad_settings_name_file_line_and_key(tmp_path, toml, message):
    (tmp_path / "campaign.toml").write_text(toml)
    with pytest.raises(SettingsError, match=message):
        load_settings(tmp_path, env={})


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://mail.example.id", "expected smtp://"),
        ("smtp://mail.example.id:99999", "not a valid URL"),
        ("smtps://h:465?starttls=true", "already TLS"),
        ("smtp://h?starttls=maybe", "starttls must be true or false"),
        ("smtp://h?verify=no", "unknown option 'verify'"),
        ("smtp://h?timeout=abc", "timeout must be a number of seconds above zero"),
        ("smtp://h?timeout=-1", "timeout must be a number of seconds above zero"),
        ("smtp://h?timeout=nan", "timeout must be a number of seconds above zero"),
    ],
)
def test_bad_smtp_urls(url, message):
    with pytest.raises(SettingsError, match=message):
        parse_smtp_url(url)


def test_smtp_url_error_never_prints_the_password():
    with pytest.raises(SettingsError) as info:
        parse_smtp_url("smtp://u:hunter2@h?bogus=1")
    assert "hunter2" not in str(info.value)


def test_cli_reports_bad_settings_in_one_sentence(tmp_path):
    (tmp_path / "campaign.toml").write_text('[delivery]\nrate = "fast"\n')
    result = CliRunner().invoke(
        cli, ["db", "upgrade", "--project", str(tmp_path)], env={"CAMPAIGN_DATABASE_URL": ""}
    )
    assert result.exit_code == 1
    assert "delivery.rate: 'fast' is not a rate" in result.stderr
    assert "Traceback" not in result.output


def test_a_settings_file_that_is_not_utf8_is_one_sentence(tmp_path):
    (tmp_path / "campaign.toml").write_bytes(b"\xff\xfe[project]\n")
    with pytest.raises(SettingsError, match=r"campaign.toml: not UTF-8 text"):
        load_settings(tmp_path, env={})


def test_unreachable_database_is_one_sentence(tmp_path):
    env = {"CAMPAIGN_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
    result = CliRunner().invoke(cli, ["db", "upgrade", "--project", str(tmp_path)], env=env)
    assert result.exit_code == 1
    assert "cannot reach the database" in result.stderr
    assert "Traceback" not in result.output


@given(st.integers(1, 10_000), st.sampled_from("smhdw"))
def test_durations_round_trip(number, unit):
    seconds = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit]
    assert parse_duration(f"{number}{unit}").total_seconds() == number * seconds


@given(st.text(max_size=12))
def test_parse_rate_never_crashes(text):
    try:
        rate = parse_rate(text)
    except ValueError as exc:
        assert "is not a rate" in str(exc)
    else:
        assert rate.count > 0 and rate.per.total_seconds() > 0


def test_smtp_credentials_from_their_own_variables(tmp_path):
    env = {
        "CAMPAIGN_SMTP_URL": "smtp://mail.example.id:587?starttls=true",
        "CAMPAIGN_SMTP_USERNAME": "mailer",
        "CAMPAIGN_SMTP_PASSWORD": "p@ss word",
    }
    smtp = load_settings(tmp_path, env=env).smtp
    assert smtp.username == "mailer"
    assert smtp.password.reveal() == "p@ss word"
    assert "p@ss" not in repr(smtp) and "p@ss" not in smtp.describe()


def test_a_lease_not_longer_than_the_smtp_timeout_is_refused_with_its_line(tmp_path):
    """Such a lease runs out while the server still answers: accepted mail would read `unknown`."""
    from engine.config import load_settings
    from engine.errors import SettingsError

    (tmp_path / "campaign.toml").write_text('[delivery]\ntimeout = "60s"\nlease = "30s"\n')
    with pytest.raises(SettingsError) as caught:
        load_settings(tmp_path, env={})
    assert str(caught.value).startswith(f"{tmp_path / 'campaign.toml'}:3: delivery.lease: 30s")
    assert "SMTP timeout (1m)" in str(caught.value)
    (tmp_path / "campaign.toml").write_text('[delivery]\ntimeout = "60s"\nlease = "5m"\n')
    assert load_settings(tmp_path, env={}).delivery.lease.total_seconds() == 300
