"""What a project folder holds right now, cheaply: a stamp of its files, and a cache keyed by it.

The worker ticks every minute and ``simulate`` ticks a few hundred times; each tick
prepares every due step, which reads the segment files and compiles (and inlines
the CSS of) the templates. Those files rarely change, so the prepared form is kept
per folder and used again while the folder's stamp (every file's path and a
digest of its bytes: a millisecond's reading for a project's few dozen files)
is unchanged. An edited, added, removed or replaced file changes the stamp, and
the next tick prepares the folder afresh: a long-running worker picks up an edit
at its next tick.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

Stamp = tuple[tuple[str, str], ...]

DIGEST_UP_TO = 1024 * 1024  # bytes: the largest project file (YAML, template) read


def folder_stamp(folder: Path) -> Stamp:
    """Every file under ``folder`` (followed links included) with a digest of its content.

    The content, not the modification time: a file rewritten within the file
    system's clock tick (a few milliseconds) keeps its time but not its digest.
    A file larger than ``DIGEST_UP_TO`` (an image beside the templates, say) is
    stamped by its size, modification time and inode instead of being read.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return ()
    entries = []
    for path in folder.rglob("*"):
        try:
            if not path.is_file():
                continue
            info = path.stat()
            if info.st_size > DIGEST_UP_TO:
                digest = f"{info.st_size}:{info.st_mtime_ns}:{info.st_ino}"
            else:
                digest = hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
        except OSError:  # removed while we looked, or unreadable: part of the stamp too
            digest = "unreadable"
        entries.append((path.as_posix(), digest))
    entries.sort()
    return tuple(entries)


class FolderCache:
    """Values built from a folder's files, kept while the folder's stamp is unchanged.

    Only successful builds are kept: a build that raises (a broken file) is tried
    again on the next call, so its error is reported every time.
    """

    def __init__(self, size: int = 8) -> None:
        self._size = size
        self._entries: dict[Hashable, tuple[Stamp, object]] = {}
        self._lock = threading.Lock()

    def get(self, folder: Path, key: Hashable, build: Callable[[], T]) -> T:
        stamp = folder_stamp(folder)
        with self._lock:
            known = self._entries.get(key)
        if known is not None and known[0] == stamp:
            return known[1]  # type: ignore[return-value]
        value = build()
        with self._lock:
            self._entries.pop(key, None)
            while len(self._entries) >= self._size:
                self._entries.pop(next(iter(self._entries)))
            self._entries[key] = (stamp, value)
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
