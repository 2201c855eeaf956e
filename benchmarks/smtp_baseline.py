"""The yardstick for ``benchmarks/send.py``: a plain smtplib loop and a fast SMTP sink.

``start_sink()`` runs a minimal asyncio SMTP server (it answers and counts, it
stores nothing) in a child process, so sink and sender do not share the GIL.
``smtplib_baseline(host, port, messages, connections)`` sends pre-built
messages over K reused connections (one thread each) with nothing but smtplib
and returns the throughput. Run directly for the figures with 1 and 4
connections and with a new connection per message::

    .venv/bin/python benchmarks/smtp_baseline.py [--count 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import smtplib
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path

Message = tuple[str, str, bytes]  # (envelope sender, recipient, RFC 5322 bytes)


# --- the sink --------------------------------------------------------------------------------


class _SinkProtocol(asyncio.Protocol):
    """Just enough SMTP to accept mail as fast as possible (one recipient or many, no checks)."""

    EHLO = (
        b"250-sink.localhost\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
        b"250-SMTPUTF8\r\n250 SIZE 104857600\r\n"
    )
    accepted = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = b""
        self.in_data = False
        transport.write(b"220 sink.localhost ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.buffer:
            if self.in_data:
                if self.buffer.startswith(b".\r\n"):
                    end, skip = 0, 3
                else:
                    end = self.buffer.find(b"\r\n.\r\n")
                    if end < 0:
                        return
                    skip = 5
                self.buffer = self.buffer[end + skip :]
                self.in_data = False
                _SinkProtocol.accepted += 1
                self.transport.write(b"250 2.0.0 Ok: queued as S%d\r\n" % _SinkProtocol.accepted)
                continue
            end = self.buffer.find(b"\r\n")
            if end < 0:
                return
            line, self.buffer = self.buffer[:end], self.buffer[end + 2 :]
            verb = line[:4].upper()
            if verb == b"EHLO":
                self.transport.write(self.EHLO)
            elif verb == b"DATA":
                self.in_data = True
                self.transport.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
            elif verb == b"QUIT":
                self.transport.write(b"221 2.0.0 Bye\r\n")
                self.transport.close()
                return
            elif verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP", b"HELO"):
                self.transport.write(b"250 2.0.0 Ok\r\n")
            else:
                self.transport.write(b"502 5.5.2 Not implemented\r\n")


async def _serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_SinkProtocol, "127.0.0.1", port)
    stopped = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopped.set)
    loop.add_signal_handler(signal.SIGINT, stopped.set)
    print(f"LISTENING 127.0.0.1 {server.sockets[0].getsockname()[1]}", flush=True)
    await stopped.wait()
    server.close()
    print(f"ACCEPTED {_SinkProtocol.accepted}", flush=True)


@dataclass
class Sink:
    """A running sink process; ``stop()`` returns how many messages it accepted."""

    process: subprocess.Popen
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        out, _ = self.process.communicate(timeout=10)
        for line in out.splitlines():
            if line.startswith("ACCEPTED"):
                return int(line.split()[1])
        return -1

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.stop()


def start_sink(timeout: float = 10.0) -> Sink:
    """Start the sink in a child process on a free port of 127.0.0.1."""
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--sink"], stdout=subprocess.PIPE, text=True
    )
    line = ""

    def first_line() -> None:
        nonlocal line
        line = process.stdout.readline()

    reader = threading.Thread(target=first_line, daemon=True)
    reader.start()
    reader.join(timeout)
    if not line.startswith("LISTENING"):
        process.kill()
        process.wait()
        raise RuntimeError(f"the SMTP sink did not start (got {line!r})")
    _, host, port = line.split()
    return Sink(process, host, int(port))


# --- the baseline -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Throughput:
    messages: int
    connections: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.messages / self.seconds if self.seconds else float("inf")

    def __str__(self) -> str:
        return (
            f"{self.messages} messages over {self.connections} connection(s) "
            f"in {self.seconds:.2f}s: {self.per_second:,.0f}/s"
        )


def smtplib_baseline(
    host: str,
    port: int,
    messages: Sequence[Message],
    connections: int = 1,
    *,
    reconnect_each: bool = False,
) -> Throughput:
    """Send ``messages`` with plain smtplib over ``connections`` reused connections (threads).

    ``reconnect_each`` opens a new connection for every message instead.
    """
    shares = [messages[i::connections] for i in range(connections)]
    errors: list[BaseException] = []

    def run(share: Sequence[Message]) -> None:
        try:
            if reconnect_each:
                for sender, recipient, data in share:
                    with smtplib.SMTP(host, port, local_hostname="bench.localhost") as conn:
                        conn.sendmail(sender, [recipient], data)
                return
            with smtplib.SMTP(host, port, local_hostname="bench.localhost") as conn:
                for sender, recipient, data in share:
                    conn.sendmail(sender, [recipient], data)
        except BaseException as exc:
            errors.append(exc)

    seconds = _timed_threads(run, shares)
    if errors:
        raise errors[0]
    return Throughput(len(messages), connections, seconds)


def _timed_threads(run, shares) -> float:
    """Run ``run(share)`` in one thread per share; seconds until the last one ends."""
    threads = [threading.Thread(target=run, args=(share,)) for share in shares]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def build_messages(count: int, *, sender: str = "news@toko.example.id") -> list[Message]:
    """``count`` realistic pre-built messages (multipart text + HTML, about 5 KB each)."""
    html = "<html><body>" + "<p>Halo Merchant __N__, toko Anda punya pesanan baru.</p>" * 40
    text = "Halo Merchant __N__, toko Anda punya pesanan baru minggu ini.\n" * 40
    msg = EmailMessage(policy=SMTP_POLICY)
    msg["From"] = f"Toko <{sender}>"
    msg["To"] = "merchant__N__@example.id"
    msg["Subject"] = "Toko Merchant __N__ sepi? Ini 3 ide untuk minggu ini"
    msg["Message-ID"] = "<bench-__N__@toko.example.id>"
    msg.set_content(text)
    msg.add_alternative(html + "</body></html>", subtype="html")
    template = msg.as_bytes()  # built once: the MIME work is not what this measures
    return [
        (sender, f"merchant{n}@example.id", template.replace(b"__N__", str(n).encode()))
        for n in range(count)
    ]


def transport_throughput(
    host: str, port: int, messages: Sequence[Message], connections: int = 1
) -> Throughput:
    """The same loop through ``engine.transport.SmtpTransport`` (its overhead over smtplib)."""
    from engine.config import SmtpSettings
    from engine.outcomes import Outcome
    from engine.transport import SmtpTransport

    shares = [messages[i::connections] for i in range(connections)]
    failures: list[str] = []

    def run(share: Sequence[Message]) -> None:
        with SmtpTransport(
            SmtpSettings(host=host, port=port), local_hostname="bench.localhost"
        ) as t:
            for sender, recipient, data in share:
                result = t.send(sender, recipient, data, on_commit=lambda: None)
                if result.outcome is not Outcome.SENT:
                    failures.append(str(result.reply))

    seconds = _timed_threads(run, shares)
    if failures:
        raise RuntimeError(f"{len(failures)} messages not sent, first: {failures[0]}")
    return Throughput(len(messages), connections, seconds)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--sink", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sink:
        asyncio.run(_serve(0))
        return
    messages = build_messages(args.count)
    with start_sink() as sink:
        for connections in (1, 4):
            print(
                "plain smtplib, reused:   ",
                smtplib_baseline(sink.host, sink.port, messages, connections),
            )
            print(
                "engine SmtpTransport:    ",
                transport_throughput(sink.host, sink.port, messages, connections),
            )
        few = messages[: max(1, args.count // 4)]
        print(
            "plain smtplib, reconnect:",
            smtplib_baseline(sink.host, sink.port, few, 1, reconnect_each=True),
        )
        accepted = sink.stop()
    expected = 4 * len(messages) + len(few)
    print(f"sink accepted {accepted} of {expected} messages")


if __name__ == "__main__":
    main()
