"""Open a page in headless Chromium and record what it did, over the DevTools protocol.

Chromium talks the protocol over two pipes (``--remote-debugging-pipe``: it reads
commands on fd 3 and writes replies and events on fd 4, each message JSON ended
by a NUL byte). The page's own network requests (``Network.requestWillBeSent``)
are told apart from the browser's background traffic, which is not the page's.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class PageLog:
    requests: list[str] = field(default_factory=list)  # every URL the page asked for
    errors: list[str] = field(default_factory=list)  # console errors, exceptions, failed loads
    loaded: bool = False


class _Pipe:
    def __init__(self, write_fd: int, read_fd: int) -> None:
        self.write_fd, self.read_fd = write_fd, read_fd
        self.messages: queue.Queue[dict] = queue.Queue()
        self.next_id = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buffer = b""
        while chunk := os.read(self.read_fd, 65536):
            buffer += chunk
            *whole, buffer = buffer.split(b"\0")
            for message in whole:
                self.messages.put(json.loads(message))

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> int:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.write_fd, json.dumps(message).encode() + b"\0")
        return self.next_id


def _high(fd: int) -> int:
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return moved


def open_page(url: str, timeout: float = 60.0, settle: float = 1.0) -> PageLog:
    """Load ``url`` in a fresh headless Chromium; what it requested and which errors it showed."""
    assert CHROMIUM, "chromium is not installed"
    log = PageLog()
    commands_r, commands_w = os.pipe()
    events_r, events_w = os.pipe()
    # Chromium's ends go to fds of 10 and up, so that putting them on 3 and 4 clobbers nothing.
    commands_r, events_w = _high(commands_r), _high(events_w)
    profile = tempfile.mkdtemp(prefix="report-chromium-")
    # bash (sh may only know fds 0-9) puts the two pipe ends on fds 3 and 4 for Chromium.
    script = f'exec "$@" 3<&{commands_r} 4>&{events_w} {commands_r}<&- {events_w}>&-'
    process = subprocess.Popen(
        [
            *("bash", "-c", script, "bash", CHROMIUM, "--headless", "--no-sandbox"),
            *("--disable-gpu", "--remote-debugging-pipe", f"--user-data-dir={profile}"),
            "about:blank",
        ],
        pass_fds=(commands_r, events_w),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(commands_r)
    os.close(events_w)
    pipe = _Pipe(commands_w, events_r)
    deadline = time.monotonic() + timeout
    replies: dict[int, dict] = {}

    def handle(message: dict) -> None:
        if "id" in message:
            replies[message["id"]] = message
            return
        method, params = message.get("method"), message.get("params", {})
        if method == "Network.requestWillBeSent":
            log.requests.append(params["request"]["url"])
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            log.errors.append(details.get("exception", {}).get("description") or details["text"])
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            log.errors.append(" ".join(str(a.get("value", "")) for a in params.get("args", [])))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            log.errors.append(params["entry"]["text"])
        elif method == "Page.loadEventFired":
            log.loaded = True

    def pump(until: float) -> None:
        while time.monotonic() < until:
            with contextlib.suppress(queue.Empty):
                handle(pipe.messages.get(timeout=0.05))

    def call(method: str, params: dict | None = None, session: str | None = None) -> dict:
        sent = pipe.send(method, params, session)
        while sent not in replies:
            if time.monotonic() > deadline:
                raise TimeoutError(f"chromium did not answer {method}")
            with contextlib.suppress(queue.Empty):
                handle(pipe.messages.get(timeout=0.1))
        reply = replies.pop(sent)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    try:
        target = call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Network", "Runtime", "Log", "Page"):
            call(f"{domain}.enable", session=session)
        call("Page.navigate", {"url": url}, session=session)
        while not log.loaded and time.monotonic() < deadline:
            pump(time.monotonic() + 0.1)
        pump(time.monotonic() + settle)  # late requests and errors after the load event
        pipe.send("Browser.close")
        process.wait(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(commands_w)
        shutil.rmtree(profile, ignore_errors=True)
    return log
