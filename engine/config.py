"""Settings: ``campaign.toml`` in the project folder, overridden by ``CAMPAIGN_*`` variables.

Loaded once into a frozen ``Settings``. Every key has a default, so a project
without ``campaign.toml`` works. Secrets (the SMTP password, the secret key)
only come from the environment and are wrapped in ``Secret`` so that they never
show up in a repr, a log line or an error message.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from engine.errors import SettingsError
from engine.times import Rate, parse_duration, parse_rate

SETTINGS_FILE = "campaign.toml"
LOCALES = ("id", "en")


class Secret:
    """A value that must never be printed; ``reveal()`` hands it to the code that needs it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class SmtpSettings:
    """Where and how to reach the SMTP server (from ``CAMPAIGN_SMTP_URL``)."""

    host: str
    port: int
    ssl: bool = False  # smtps://: TLS from the first byte
    starttls: bool = False  # smtp://...?starttls=true: upgrade, refuse if not offered
    username: str | None = None
    password: Secret | None = None
    timeout: float = 30.0
    cafile: str | None = None  # extra trusted CA bundle (e.g. a test or internal CA)

    def describe(self) -> str:
        """The URL without the password, for output."""
        scheme = "smtps" if self.ssl else "smtp"
        user = f"{self.username}@" if self.username else ""
        tls = "?starttls=true" if self.starttls else ""
        return f"{scheme}://{user}{self.host}:{self.port}{tls}"


@dataclass(frozen=True)
class ProjectSettings:
    default_locale: str = "id"
    timezone: str = "Asia/Jakarta"


@dataclass(frozen=True)
class DeliverySettings:
    connections: int = 4
    rate: Rate = field(default_factory=lambda: parse_rate("50/s"))
    max_attempts: int = 6
    retry_backoff: timedelta = timedelta(minutes=5)
    lease: timedelta = timedelta(minutes=5)
    timeout: timedelta = timedelta(seconds=30)
    batch_size: int = 100


@dataclass(frozen=True)
class SchedulerSettings:
    tick: timedelta = timedelta(minutes=1)
    broadcast_grace: timedelta = timedelta(hours=6)  # a missed fire time is sent this late at most


@dataclass(frozen=True)
class LimitsSettings:
    frequency_cap: Rate | None = field(default_factory=lambda: parse_rate("3/7d", "smhdw"))
    frequency_cap_exempt: tuple[str, ...] = ("onboarding",)


@dataclass(frozen=True)
class UnsubscribeSettings:
    base_url: str = "https://crm.example.id"
    mailto: str = "unsubscribe@example.id"


@dataclass(frozen=True)
class DkimSettings:
    domain: str | None = None
    selector: str | None = None
    key_file: str | None = None  # from CAMPAIGN_DKIM_KEY_FILE only (a secret)

    @property
    def enabled(self) -> bool:
        return bool(self.domain and self.selector and self.key_file)


@dataclass(frozen=True)
class Settings:
    project_dir: Path
    database_url: str
    project: ProjectSettings = field(default_factory=ProjectSettings)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    unsubscribe: UnsubscribeSettings = field(default_factory=UnsubscribeSettings)
    dkim: DkimSettings = field(default_factory=DkimSettings)
    smtp: SmtpSettings | None = None
    secret_key: Secret | None = None

    @property
    def segments_dir(self) -> Path:
        return self.project_dir / "segments"

    @property
    def campaigns_dir(self) -> Path:
        return self.project_dir / "campaigns"

    @property
    def templates_dir(self) -> Path:
        return self.project_dir / "templates"


# --- parsing -----------------------------------------------------------------


def _locate(text: str, section: str, key: str | None) -> int | None:
    """Best-effort line number of ``[section] key`` in the TOML text."""
    current = None
    for number, line in enumerate(text.splitlines(), start=1):
        header = re.match(r"^\s*\[([^\]]+)\]\s*(#.*)?$", line)
        if header:
            current = header.group(1).strip()
            if key is None and current == section:
                return number
            continue
        if key and current == section and re.match(rf"^\s*{re.escape(key)}\s*=", line):
            return number
    return None


class _Reader:
    """Reads one TOML table with precise errors naming the file, line and key."""

    def __init__(self, path: Path, text: str, section: str, table: Mapping[str, Any]) -> None:
        self.path, self.text, self.section, self.table = path, text, section, table

    def fail(self, key: str | None, message: str) -> SettingsError:
        line = _locate(self.text, self.section, key)
        where = f"{self.path}:{line}" if line else str(self.path)
        name = f"{self.section}.{key}" if key else f"[{self.section}]"
        return SettingsError(f"{where}: {name}: {message}")

    def check_keys(self, valid: tuple[str, ...]) -> None:
        if not isinstance(self.table, Mapping):
            raise self.fail(None, "must be a table")
        for key in self.table:
            if key not in valid:
                raise self.fail(key, f"unknown key (valid keys: {', '.join(valid)})")

    def get(self, key: str, convert, default):
        if key not in self.table:
            return default
        value = self.table[key]
        try:
            return convert(value)
        except (ValueError, TypeError) as exc:
            raise self.fail(key, str(exc)) from None


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{value!r} is not a whole number above zero")
    return value


MAX_CONNECTIONS = 64  # each is a thread and an SMTP session; servers throttle far earlier


def _connections(value: Any) -> int:
    value = _positive_int(value)
    if value > MAX_CONNECTIONS:
        raise ValueError(f"{value} is more than {MAX_CONNECTIONS} connections")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a text value")
    return value


def _locale(value: Any) -> str:
    if value not in LOCALES:
        raise ValueError(f"{value!r} is not a supported locale (use one of: {', '.join(LOCALES)})")
    return value


def _timezone(value: Any) -> str:
    try:
        ZoneInfo(_text(value))
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{value!r} is not an IANA time zone (e.g. Asia/Jakarta)") from None
    return value


def _duration(value: Any) -> timedelta:
    return parse_duration(_text(value))


def _positive_duration(value: Any) -> timedelta:
    """A lease, a tick or a timeout of zero would expire at once or spin: refused."""
    span = _duration(value)
    if span <= timedelta(0):
        raise ValueError(f"{value!r} must be longer than zero")
    return span


def _cap(value: Any) -> Rate | None:
    if value in ("off", "none", False):
        return None
    return parse_rate(_text(value), "smhdw")


def _https_url(value: Any) -> str:
    parts = urlsplit(_text(value))
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise ValueError(f"{value!r} is not an http(s) URL")
    return value.rstrip("/")


def _topics(value: Any) -> tuple[str, ...]:
    from engine.campaigns.values import TOPICS  # imported here: campaigns imports this module

    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{value!r} is not a list of topic names")
    for topic in value:
        if topic not in TOPICS:
            raise ValueError(f"unknown topic {topic!r} (valid topics: {', '.join(TOPICS)})")
    return tuple(value)


def _mailto(value: Any) -> str:
    from engine.addresses import normalize_email

    return normalize_email(_text(value))


def parse_smtp_url(url: str, source: str = "CAMPAIGN_SMTP_URL") -> SmtpSettings:
    """``smtp://user:pass@host:587?starttls=true`` or ``smtps://host:465`` → SmtpSettings."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise SettingsError(f"{source}: not a valid URL (expected smtp://host:port)") from None
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        raise SettingsError(
            f"{source}: expected smtp://[user:pass@]host[:port][?starttls=true] or smtps://..."
        )
    query = parse_qs(parts.query)
    allowed = {"starttls", "timeout", "cafile"}
    for key in query:
        if key not in allowed:
            raise SettingsError(
                f"{source}: unknown option {key!r} (valid: {', '.join(sorted(allowed))})"
            )

    def flag(name: str) -> bool:
        raw = query.get(name, ["false"])[-1].lower()
        if raw not in ("true", "false", "1", "0", "yes", "no"):
            raise SettingsError(f"{source}: {name} must be true or false")
        return raw in ("true", "1", "yes")

    ssl = parts.scheme == "smtps"
    starttls = flag("starttls")
    if ssl and starttls:
        raise SettingsError(f"{source}: smtps:// is already TLS; drop starttls=true")
    try:
        timeout = float(query.get("timeout", ["30"])[-1])
    except ValueError:
        timeout = float("nan")
    if not 0 < timeout < float("inf"):  # also refuses nan: sockets need a real, positive timeout
        raise SettingsError(f"{source}: timeout must be a number of seconds above zero")
    return SmtpSettings(
        host=parts.hostname,
        port=port or (465 if ssl else 25),
        ssl=ssl,
        starttls=starttls,
        username=unquote(parts.username) if parts.username else None,
        password=Secret(unquote(parts.password)) if parts.password else None,
        timeout=timeout,
        cafile=query.get("cafile", [None])[-1],
    )


def _database_url(value: str, project_dir: Path) -> str:
    scheme = value.split(":", 1)[0]
    if scheme.startswith("postgres"):
        # Accept the plain libpq form and use psycopg 3, the driver we ship.
        for plain in ("postgresql://", "postgres://"):
            if value.startswith(plain):
                return "postgresql+psycopg://" + value[len(plain) :]
        return value
    if scheme.startswith("sqlite"):
        return value
    raise SettingsError(
        "CAMPAIGN_DATABASE_URL: unsupported database "
        f"{scheme!r} (use sqlite:///path/to/file.db or postgresql://user@host/db)"
    )


def load_settings(project_dir: Path | str = ".", env: Mapping[str, str] | None = None) -> Settings:
    """Read ``campaign.toml`` (if any) and the ``CAMPAIGN_*`` variables into ``Settings``."""
    env = os.environ if env is None else env
    project_dir = Path(project_dir).resolve()
    path = project_dir / SETTINGS_FILE
    data: dict[str, Any] = {}
    text = ""
    if path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise SettingsError(f"{path}: not UTF-8 text ({exc.reason})") from None
        except OSError as exc:
            raise SettingsError(f"{path}: cannot be read ({exc.strerror})") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            # tomllib puts the position at the end of its message: "... (at line 3, column 9)".
            message = str(exc)
            where = re.search(r"\s*\(at line (\d+), column \d+\)$", message)
            if where:
                message = message[: where.start()]
                raise SettingsError(f"{path}:{where.group(1)}: not valid TOML: {message}") from None
            raise SettingsError(f"{path}: not valid TOML: {message}") from None

    sections = ("project", "delivery", "scheduler", "limits", "unsubscribe", "dkim")
    for name in data:
        if name not in sections:
            raise _Reader(path, text, name, {}).fail(
                None, f"unknown section (valid sections: {', '.join(sections)})"
            )

    def reader(name: str, keys: tuple[str, ...]) -> _Reader:
        r = _Reader(path, text, name, data.get(name, {}))
        r.check_keys(keys)
        return r

    r = reader("project", ("default_locale", "timezone"))
    project = ProjectSettings(
        default_locale=r.get("default_locale", _locale, "id"),
        timezone=r.get("timezone", _timezone, "Asia/Jakarta"),
    )
    d = DeliverySettings()
    r = reader(
        "delivery",
        ("connections", "rate", "max_attempts", "retry_backoff", "lease", "timeout", "batch_size"),
    )
    delivery = DeliverySettings(
        connections=r.get("connections", _connections, d.connections),
        rate=r.get("rate", lambda v: parse_rate(_text(v)), d.rate),
        max_attempts=r.get("max_attempts", _positive_int, d.max_attempts),
        retry_backoff=r.get("retry_backoff", _duration, d.retry_backoff),
        lease=r.get("lease", _positive_duration, d.lease),
        timeout=r.get("timeout", _positive_duration, d.timeout),
        batch_size=r.get("batch_size", _positive_int, d.batch_size),
    )
    r = reader("scheduler", ("tick", "broadcast_grace"))
    sch = SchedulerSettings()
    scheduler = SchedulerSettings(
        tick=r.get("tick", _positive_duration, sch.tick),
        broadcast_grace=r.get("broadcast_grace", _duration, sch.broadcast_grace),
    )
    lim = LimitsSettings()
    r = reader("limits", ("frequency_cap", "frequency_cap_exempt"))
    limits = LimitsSettings(
        frequency_cap=r.get("frequency_cap", _cap, lim.frequency_cap),
        frequency_cap_exempt=r.get("frequency_cap_exempt", _topics, lim.frequency_cap_exempt),
    )
    u = UnsubscribeSettings()
    r = reader("unsubscribe", ("base_url", "mailto"))
    unsubscribe = UnsubscribeSettings(
        base_url=r.get("base_url", _https_url, u.base_url),
        mailto=r.get("mailto", _mailto, u.mailto),
    )
    r = reader("dkim", ("domain", "selector"))
    dkim = DkimSettings(
        domain=r.get("domain", _text, None),
        selector=r.get("selector", _text, None),
        key_file=env.get("CAMPAIGN_DKIM_KEY_FILE") or None,
    )

    if env.get("CAMPAIGN_BASE_URL"):
        try:
            unsubscribe = UnsubscribeSettings(
                base_url=_https_url(env["CAMPAIGN_BASE_URL"]), mailto=unsubscribe.mailto
            )
        except ValueError as exc:
            raise SettingsError(f"CAMPAIGN_BASE_URL: {exc}") from None

    raw_db = env.get("CAMPAIGN_DATABASE_URL")
    database_url = (
        _database_url(raw_db, project_dir) if raw_db else f"sqlite:///{project_dir / 'campaign.db'}"
    )
    smtp = parse_smtp_url(env["CAMPAIGN_SMTP_URL"]) if env.get("CAMPAIGN_SMTP_URL") else None
    if smtp is not None and (
        env.get("CAMPAIGN_SMTP_USERNAME") or env.get("CAMPAIGN_SMTP_PASSWORD")
    ):
        # Credentials kept apart from the URL (e.g. in a secret store) win over the URL's.
        smtp = replace(
            smtp,
            username=env.get("CAMPAIGN_SMTP_USERNAME") or smtp.username,
            password=Secret(env["CAMPAIGN_SMTP_PASSWORD"])
            if env.get("CAMPAIGN_SMTP_PASSWORD")
            else smtp.password,
        )
    secret = Secret(env["CAMPAIGN_SECRET_KEY"]) if env.get("CAMPAIGN_SECRET_KEY") else None

    return Settings(
        project_dir=project_dir,
        database_url=database_url,
        project=project,
        delivery=delivery,
        scheduler=scheduler,
        limits=limits,
        unsubscribe=unsubscribe,
        dkim=dkim,
        smtp=smtp,
        secret_key=secret,
    )
