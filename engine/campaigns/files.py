"""Reading campaign files (``campaigns/NAME.yaml``) into ``Campaign`` values.

Every file is checked before anything runs, and every mistake in every file is
reported together (a ``ProblemList`` of ``CampaignFileError``), each naming the
file and line. Rules inside a campaign (a drip's ``exit`` and a step's ``when``)
use the segment rule language and are parsed by ``engine.segments.parse_rule``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Collection, Mapping
from datetime import time, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from engine.addresses import normalize_email, split_address
from engine.campaigns.values import (
    DAYS,
    KINDS,
    MAX_HOLDOUT,
    Campaign,
    SendWindow,
    Step,
    check_cron,
)
from engine.config import TOPICS
from engine.errors import CampaignFileError, ProblemList
from engine.times import parse_duration
from engine.yamlfile import YamlDocument, YamlSyntaxError, load_yaml

if TYPE_CHECKING:
    from engine.config import Settings
    from engine.segments import Rule, SegmentSet


_KEYS: dict[str, tuple[str, ...]] = {
    "common": (
        "kind",
        "topic",
        "segment",
        "from",
        "reply_to",
        "send_window",
        "holdout",
        "track_clicks",
    ),
    "drip": ("exit", "steps", "reenter_after"),
    "broadcast": ("template", "schedule", "timezone"),
}
KEYS = _KEYS  # the schema (engine.campaigns.schema) is generated from these
_ALL_KEYS = tuple(k for keys in _KEYS.values() for k in keys)
STEP_KEYS = _STEP_KEYS = ("template", "delay", "when")
WINDOW_KEYS = _WINDOW_KEYS = ("days", "hours")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_TEMPLATE_NAME = re.compile(r"^[A-Za-z0-9_-]+(?:/[A-Za-z0-9_-]+)*$")
HOURS_PATTERN = r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$"
_HOURS = re.compile(HOURS_PATTERN)
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


# --- loading ----------------------------------------------------------------


def campaign_files(campaigns_dir: Path) -> list[Path]:
    """The campaign files of a project, sorted by name."""
    if not campaigns_dir.is_dir():
        return []
    return sorted(
        p for p in campaigns_dir.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()
    )


def load_campaigns(settings: Settings, segments: SegmentSet) -> dict[str, Campaign]:
    """Validate every campaign file; raise one ``ProblemList`` naming every mistake."""
    problems: list[CampaignFileError] = []
    campaigns: dict[str, Campaign] = {}
    seen: dict[str, Path] = {}
    for path in campaign_files(settings.campaigns_dir):
        if path.stem in seen:
            problems.append(
                CampaignFileError(
                    path, None, f"campaign {path.stem!r} is also defined in {seen[path.stem].name}"
                )
            )
            continue
        seen[path.stem] = path
        try:
            campaigns[path.stem] = _load_file(path, settings, segments)
        except ProblemList as exc:
            problems.extend(exc.problems)  # type: ignore[arg-type]
    if problems:
        raise ProblemList(problems)
    return campaigns


def load_campaign(settings: Settings, name: str, segments: SegmentSet) -> Campaign:
    """Validate and return one campaign by name (raises ``ProblemList`` of its mistakes)."""
    for path in campaign_files(settings.campaigns_dir):
        if path.stem == name:
            return _load_file(path, settings, segments)
    known = [p.stem for p in campaign_files(settings.campaigns_dir)]
    hint = _suggest(name, known) or (
        f" (known: {', '.join(known)})" if known else " (there are none)"
    )
    raise ProblemList(
        [
            CampaignFileError(
                settings.campaigns_dir / f"{name}.yaml", None, f"no campaign named {name!r}{hint}"
            )
        ]
    )


def _load_file(path: Path, settings: Settings, segments: SegmentSet) -> Campaign:
    try:
        doc = load_yaml(path)
    except YamlSyntaxError as exc:
        raise ProblemList([CampaignFileError(path, exc.line, str(exc))]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProblemList([CampaignFileError(path, None, f"cannot be read ({exc})")]) from None
    reader = _Reader(doc, settings, segments)
    campaign = reader.campaign(path.stem)
    if reader.problems:
        raise ProblemList(reader.problems)
    assert campaign is not None
    return campaign


def _suggest(word: str, choices: Collection[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _describe(value: Any) -> str:
    kind = {
        bool: "true/false",
        int: "a number",
        float: "a number",
        str: "text",
        list: "a list",
        dict: "a mapping",
    }
    return "nothing" if value is None else kind.get(type(value), type(value).__name__)


class _Skip(Exception):
    """A key's value was wrong; the problem is already recorded."""


class _Reader:
    """Reads one campaign document, recording every problem with its line."""

    def __init__(self, doc: YamlDocument, settings: Settings, segments: SegmentSet) -> None:
        self.doc, self.settings, self.segments = doc, settings, segments
        self.problems: list[CampaignFileError] = []

    # recording

    def fail(self, loc: tuple, message: str, *, key: bool = False) -> _Skip:
        line = self.doc.key_line(loc) if key else self.doc.line(loc)
        self.problems.append(CampaignFileError(self.doc.path, line, message))
        return _Skip()

    def field(self, loc: tuple, convert: Callable[[tuple, Any], Any], default: Any = None) -> Any:
        """Convert the value at ``loc``; on a mistake record it and return ``default``."""
        node: Any = self.doc.data
        for part in loc:
            node = node[part]
        try:
            return convert(loc, node)
        except _Skip:
            return default

    def check_keys(self, loc: tuple, mapping: Mapping, valid: tuple[str, ...], what: str) -> None:
        for key in mapping:
            if key not in valid:
                hint = _suggest(str(key), valid) or f" (valid keys: {', '.join(valid)})"
                self.fail((*loc, key), f"unknown key {key!r} in {what}{hint}", key=True)

    # the document

    def campaign(self, name: str) -> Campaign | None:
        data = self.doc.data
        if not isinstance(data, dict):
            self.fail(
                (),
                f"a campaign file must be a mapping of keys (kind, topic, segment, ...), not {_describe(data)}",
            )
            return None
        if not _NAME.match(name):
            self.fail(
                (),
                f"campaign name {name!r} (the file name) may use only letters, digits, '-', '_' and '.'",
            )

        for key in ("kind", "topic", "segment", "from"):
            if key not in data:
                self.fail((), f"missing required key {key!r}")
        kind = self.field(("kind",), self.kind) if "kind" in data else None

        for key in data:
            if key not in _ALL_KEYS:
                hint = _suggest(str(key), _ALL_KEYS) or f" (valid keys: {', '.join(_ALL_KEYS)})"
                self.fail((key,), f"unknown key {key!r}{hint}", key=True)
            elif kind is not None and key in _KEYS[_other(kind)]:
                self.fail(
                    (key,),
                    f"{key!r} is for {_other(kind)} campaigns, not a {kind}{_why(key)}",
                    key=True,
                )

        topic = self.field(("topic",), self.topic) if "topic" in data else None
        segment = self.field(("segment",), self.segment_name) if "segment" in data else None
        sender = self.field(("from",), self.address) if "from" in data else None
        reply_to = self.field(("reply_to",), self.address) if "reply_to" in data else None
        window = self.field(("send_window",), self.send_window) if "send_window" in data else None
        holdout = self.field(("holdout",), self.holdout, 0.0) if "holdout" in data else 0.0
        track_clicks = "track_clicks" in data and self.field(("track_clicks",), self.flag, False)

        steps: tuple[Step, ...] = ()
        exit_rule = template = schedule = reenter = None
        timezone = self.settings.project.timezone
        if kind == "drip":
            if "steps" not in data:
                self.fail((), "a drip needs 'steps' (a list of {template, delay, when})")
            else:
                steps = self.field(("steps",), self.steps, ())
            if "exit" in data:
                exit_rule = self.field(("exit",), self.rule)
            if "reenter_after" in data:
                reenter = self.field(("reenter_after",), self.duration)
        elif kind == "broadcast":
            if "template" not in data:
                self.fail((), "a broadcast needs 'template' (e.g. promo/harbolnas-1212)")
            else:
                template = self.field(("template",), self.template)
            if "timezone" in data:
                timezone = self.field(("timezone",), self.timezone, timezone)
            if "schedule" in data:
                schedule = self.field(("schedule",), lambda loc, v: self.schedule(loc, v, timezone))

        if self.problems:
            return None
        return Campaign(
            name=name,
            path=self.doc.path,
            kind=kind,
            topic=topic,
            segment=segment,
            sender=sender,
            reply_to=reply_to,
            exit=exit_rule,
            steps=steps,
            template=template,
            send_window=window,
            holdout=holdout,
            schedule=schedule,
            timezone=timezone,
            reenter_after=reenter,
            track_clicks=bool(track_clicks),
        )

    # converters: (loc, value) -> result, or raise _Skip after recording

    def text(self, loc: tuple, value: Any, what: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(loc, f"{loc[-1]} must be {what}, not {_describe(value)}")
        return value.strip()

    def kind(self, loc: tuple, value: Any) -> str:
        if value not in KINDS:
            raise self.fail(loc, f"kind must be one of {', '.join(KINDS)}, not {value!r}")
        return value

    def topic(self, loc: tuple, value: Any) -> str:
        if value not in TOPICS:
            hint = _suggest(str(value), TOPICS)
            raise self.fail(
                loc, f"unknown topic {value!r}{hint} (valid topics: {', '.join(TOPICS)})"
            )
        return value

    def segment_name(self, loc: tuple, value: Any) -> str:
        name = self.text(loc, value, "a segment name")
        if name not in self.segments:
            hint = _suggest(name, list(self.segments)) or (
                f" (segments: {', '.join(sorted(self.segments))})"
                if self.segments
                else " (there are no segments)"
            )
            raise self.fail(loc, f"unknown segment {name!r}{hint}")
        return name

    def address(self, loc: tuple, value: Any) -> str:
        raw = self.text(loc, value, 'an address such as "User Success <success@example.id>"')
        if any(ch in raw for ch in "\r\n\x00"):
            raise self.fail(
                loc, f"{loc[-1]} must be on one line (line breaks in a header are refused)"
            )
        if "=?" in raw:
            raise self.fail(loc, f"{loc[-1]} must be plain text, not an encoded word (=?...?=)")
        example = '"User Success <success@example.id>"'
        split = split_address(raw)
        if split is None:
            raise self.fail(loc, f"{loc[-1]}: {raw!r} is not one address such as {example}")
        try:
            normalize_email(split[1])
        except ValueError as exc:
            raise self.fail(loc, f"{loc[-1]}: {exc}") from None
        return raw

    def template(self, loc: tuple, value: Any) -> str:
        name = self.text(loc, value, "a template name such as onboarding/welcome")
        if name.endswith((".html", ".txt")):
            raise self.fail(
                loc, f"name the template without locale or extension (e.g. {name.split('.')[0]!r})"
            )
        if not _TEMPLATE_NAME.match(name):
            raise self.fail(
                loc,
                f"{name!r} is not a template name (letters, digits, '-', '_', and '/' between folders)",
            )
        if name.split("/")[0] in ("layouts", "partials"):
            raise self.fail(loc, f"{name!r} is a shared piece, not an email template")
        base = self.settings.templates_dir / name
        folder = base.parent
        variants = (
            [
                p
                for p in folder.glob(f"{base.name}.*html")
                if re.fullmatch(rf"{re.escape(base.name)}(\.[a-z]{{2}})?\.html", p.name)
            ]
            if folder.is_dir()
            else []
        )
        if not variants:
            raise self.fail(
                loc,
                f"template {name!r} not found (expected templates/{name}.html or templates/{name}.<locale>.html)",
            )
        return name

    def duration(self, loc: tuple, value: Any) -> timedelta:
        try:
            return parse_duration(value if isinstance(value, str) else repr(value), "hdw")
        except ValueError:
            # str() for YAML's own types: a date shows as 2026-12-01, not datetime.date(...).
            shown = repr(value) if isinstance(value, str) else str(value)
            raise self.fail(
                loc, f"{loc[-1]}: {shown} is not a duration (use Nh, Nd or Nw, e.g. 3d)"
            ) from None

    def timezone(self, loc: tuple, value: Any) -> str:
        zone = self.text(loc, value, "an IANA time zone such as Asia/Jakarta")
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise self.fail(
                loc, f"{zone!r} is not an IANA time zone (e.g. Asia/Jakarta, Asia/Makassar)"
            ) from None
        return zone

    def flag(self, loc: tuple, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self.fail(loc, f"{loc[-1]} must be true or false, not {_describe(value)}")
        return value

    def holdout(self, loc: tuple, value: Any) -> float:
        if isinstance(value, str) and _PERCENT.match(value):
            share = float(_PERCENT.match(value).group(1)) / 100
        elif (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and 0 <= value <= MAX_HOLDOUT
        ):
            share = float(value)
        else:
            raise self.fail(loc, f"holdout must be a percentage such as 10%, not {value!r}")
        if not 0 <= share <= MAX_HOLDOUT:
            raise self.fail(loc, f"holdout must be between 0% and {MAX_HOLDOUT:.0%}, not {value}")
        return share

    def send_window(self, loc: tuple, value: Any) -> SendWindow:
        if not isinstance(value, dict):
            raise self.fail(
                loc,
                'send_window must be a mapping such as {days: [mon, tue], hours: "09:00-17:00"}',
            )
        self.check_keys(loc, value, _WINDOW_KEYS, "send_window")
        if not value:
            raise self.fail(loc, "send_window needs days, hours or both")
        days = frozenset(range(7))
        start, end = time(0, 0), time.max
        ok = True
        if "days" in value:
            raw = value["days"]
            if not isinstance(raw, list) or not raw:
                self.fail(
                    (*loc, "days"),
                    f"days must be a list such as [mon, tue, wed, thu, fri], not {_describe(raw)}",
                )
                ok = False
            else:
                picked = set()
                for i, day in enumerate(raw):
                    name = str(day).lower()[:3] if isinstance(day, str) else None
                    if name not in DAYS or str(day).lower() not in (
                        name,
                        _FULL_DAYS[DAYS.index(name)],
                    ):
                        self.fail((*loc, "days", i), f"unknown day {day!r} (use {', '.join(DAYS)})")
                        ok = False
                    else:
                        picked.add(DAYS.index(name))
                days = frozenset(picked)
        if "hours" in value:
            raw = value["hours"]
            match = _HOURS.match(raw) if isinstance(raw, str) else None
            times = None
            if match:
                h1, m1, h2, m2 = (int(g) for g in match.groups())
                if h1 < 24 and h2 < 24 and m1 < 60 and m2 < 60:
                    times = time(h1, m1), time(h2, m2)
            if times is None:
                self.fail((*loc, "hours"), f'hours must look like "09:00-17:00", not {raw!r}')
                ok = False
            elif times[0] >= times[1]:
                self.fail(
                    (*loc, "hours"),
                    f"hours {raw!r} must start before they end (windows across midnight are not supported)",
                )
                ok = False
            else:
                start, end = times
        if not ok:
            raise _Skip()
        return SendWindow(days=days, start=start, end=end)

    def steps(self, loc: tuple, value: Any) -> tuple[Step, ...]:
        if not isinstance(value, list) or not value:
            raise self.fail(
                loc, "steps must be a list with at least one step ({template, delay, when})"
            )
        steps = []
        ok = True
        for i, item in enumerate(value):
            step = self.step((*loc, i), item, i + 1)
            if step is None:
                ok = False
            else:
                steps.append(step)
        if not ok:
            raise _Skip()
        return tuple(steps)

    def step(self, loc: tuple, value: Any, number: int) -> Step | None:
        if not isinstance(value, dict):
            self.fail(
                loc, f"step {number} must be a mapping with template, delay and optional when"
            )
            return None
        before = len(self.problems)
        self.check_keys(loc, value, _STEP_KEYS, f"step {number}")
        template = None
        if "template" not in value:
            self.fail(loc, f"step {number} needs a template")
        else:
            template = self.field((*loc, "template"), self.template)
        if "delay" in value:
            delay = self.field((*loc, "delay"), self.duration)
        elif number == 1:
            delay = timedelta(0)  # the first step may start at entry without saying so
        else:
            delay = None
            self.fail(loc, f"step {number} needs a delay (after the previous step), e.g. delay: 3d")
        when = self.field((*loc, "when"), self.rule) if "when" in value else None
        if len(self.problems) > before:
            return None
        return Step(number=number, template=template, delay=delay, when=when)

    def rule(self, loc: tuple, value: Any) -> Rule:
        from engine.segments import parse_rule

        try:
            return parse_rule(
                self.doc, loc, known_segments=set(self.segments), error_cls=CampaignFileError
            )
        except CampaignFileError as exc:
            self.problems.append(exc)
        except ProblemList as exc:
            self.problems.extend(exc.problems)  # type: ignore[arg-type]
        raise _Skip()

    def schedule(self, loc: tuple, value: Any, timezone: str) -> str:
        expr = self.text(loc, value, 'a cron expression such as "0 9 * * mon"')
        try:
            check_cron(expr, timezone)
        except ValueError as exc:
            raise self.fail(loc, f"schedule {expr!r}: {exc}") from None
        return expr


_FULL_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def _other(kind: str) -> str:
    return "broadcast" if kind == "drip" else "drip"


def _why(key: str) -> str:
    return {
        "template": " (a drip names a template in each step)",
        "steps": " (a broadcast has one 'template')",
        "timezone": " (send windows use each merchant's own time zone)",
        "schedule": " (a drip runs on every scheduler tick)",
    }.get(key, "")
