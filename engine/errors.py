"""Exceptions for mistakes a user can make, with messages written for people.

Every error a user can cause derives from ``CampaignError``; anything else that
escapes is a bug of ours and keeps its traceback::

    CampaignError
    ├── UsageError           a command's option or argument is wrong (--now, --step, --merchant)
    ├── NotFoundError        a merchant, campaign or run named on the command line does not exist
    ├── SettingsError        campaign.toml or a CAMPAIGN_* variable is wrong
    ├── DatabaseError        the database cannot be reached or is not ours
    ├── DataImportError      an import file cannot be read at all (bad header, missing file)
    ├── ProjectFileError     a file of the project is wrong (carries path and line)
    │   ├── SegmentError     segments/*.yaml
    │   ├── CampaignFileError campaigns/*.yaml
    │   └── TemplateError    templates/: cannot be loaded or rendered
    ├── HeaderError          a value that would reach a mail header is unsafe
    ├── SuppressionError     a suppression entry is wrong (address, topic)
    ├── TokenError           an unsubscribe or click token is malformed, forged or of an unknown key
    ├── BounceError          a returned-mail file is neither an mbox file nor a Maildir folder
    ├── DeliveryError        the SMTP server or the outbox refuses the work
    └── ReportError          a report cannot be made (unknown campaign, bad --since/--until)
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


class CampaignError(Exception):
    """A mistake the user can fix; the message is one sentence for people."""


class UsageError(CampaignError):
    pass


class NotFoundError(CampaignError):
    pass


class SettingsError(CampaignError):
    pass


class DatabaseError(CampaignError):
    pass


class DataImportError(CampaignError):
    pass


class ProjectFileError(CampaignError):
    """A problem located in a project file; several can be reported together."""

    def __init__(self, path: Path | str, line: int | None, message: str) -> None:
        self.path = Path(path)
        self.line = line
        self.detail = message
        super().__init__(f"{self.location}: {message}")

    def __reduce__(self):
        # Pickled as its own arguments, so that it crosses to and from render processes.
        return (type(self), (self.path, self.line, self.detail))

    @property
    def location(self) -> str:
        return f"{self.path}:{self.line}" if self.line else str(self.path)


class SegmentError(ProjectFileError):
    pass


class CampaignFileError(ProjectFileError):
    pass


class TemplateError(ProjectFileError):
    pass


class HeaderError(CampaignError):
    pass


class SuppressionError(CampaignError):
    pass


class TokenError(CampaignError):
    """An unsubscribe or click token is malformed, forged or signed with an unknown key."""


class BounceError(CampaignError):
    """A returned-mail file cannot be read as a mailbox (``campaign bounces import``)."""


class DeliveryError(CampaignError):
    pass


class ProblemList(CampaignError):
    """Several problems found together (e.g. every bad segment file at once)."""

    def __init__(self, problems: Iterable[CampaignError]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    def __reduce__(self):
        return (type(self), (self.problems,))


class ReportError(CampaignError):
    pass
