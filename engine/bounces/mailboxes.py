"""Reading returned mail from an mbox file or a Maildir folder, one raw message at a time."""

from __future__ import annotations

import mailbox
from collections.abc import Iterator
from pathlib import Path

from engine.errors import BounceError


def _is_maildir(path: Path) -> bool:
    return (path / "cur").is_dir() and (path / "new").is_dir()


def open_mailbox(path: Path) -> mailbox.Mailbox:
    """The mailbox at ``path``; ``BounceError`` (one sentence) if it is not one."""
    if path.is_dir():
        if not _is_maildir(path):
            raise BounceError(
                f"{path}: a folder, but not a Maildir (it has no cur/ and new/ folders)"
            )
        return mailbox.Maildir(path, factory=None, create=False)
    if not path.exists():
        raise BounceError(f"{path}: no such file or folder")
    try:
        with path.open("rb") as handle:
            start = handle.read(5)
    except OSError as exc:
        raise BounceError(f"{path}: cannot be read ({exc.strerror})") from None
    if start and start != b"From ":
        raise BounceError(
            f"{path}: not an mbox file (it does not start with a 'From ' line) nor a Maildir folder"
        )
    return mailbox.mbox(path, factory=None, create=False)


def raw_messages(path: Path) -> Iterator[bytes]:
    """Every message of the mailbox as bytes, in the mailbox's order."""
    box = open_mailbox(path)
    try:
        for key in sorted(box.iterkeys()) if isinstance(box, mailbox.Maildir) else box.iterkeys():
            try:
                yield box.get_bytes(key)
            except OSError as exc:
                raise BounceError(
                    f"{path}: message {key} cannot be read ({exc.strerror})"
                ) from None
    finally:
        box.close()
