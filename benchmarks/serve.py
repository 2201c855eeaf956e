"""`campaign serve` under load: one-click unsubscribes and pages, and the events API.

Starts the real command (a subprocess, SQLite database, no access log) and
drives it from this process with a small asyncio HTTP/1.1 keep-alive client
(raw sockets: a heavy client would take the CPU the server needs on two cores):

1. Baselines measured in the same run: a bare Starlette "ok" under uvicorn (the
   framework's ceiling on this machine) and GET /healthz (one trivial query).
2. 10,000 one-click POSTs (distinct merchants and tokens) mixed with GETs of the
   unsubscribe page: requests/s, p50/p99 latency, errors, the ratio to the
   baseline, and that every POSTed merchant is suppressed afterwards (nothing lost).
   Target: 500 requests/s or more, no errors, nothing lost.
3. The events API importing 100,000 orders in batches of 1,000. Target: under 30 s.

    python benchmarks/serve.py [--merchants 10000] [--gets 5000] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from engine.project import open_project
from engine.unsubscribe import Signer

SECRET = "benchmark-secret-key"
API_TOKEN = "benchmark-api-token"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_project(root: Path, merchants: int) -> dict[str, str]:
    env = {**os.environ, "CAMPAIGN_SECRET_KEY": SECRET, "CAMPAIGN_API_TOKEN": API_TOKEN}
    env.pop("CAMPAIGN_DATABASE_URL", None)
    project = open_project(root, env=env)
    project.database()
    project.close()
    with sqlite3.connect(root / "campaign.db") as db:
        db.executemany(
            "INSERT INTO merchants (id, external_id, email, store_name, locale, timezone, status,"
            " created_at, attributes) VALUES (?, ?, ?, ?, ?, 'Asia/Jakarta', 'active', ?, '{}')",
            [
                (i, f"m{i:06d}", f"owner{i}@toko{i}.id", f"Toko {i}", "id" if i % 3 else "en",
                 "2026-01-01 00:00:00.000000")
                for i in range(1, merchants + 1)
            ],
        )  # fmt: skip
    return env


class Connection:
    """One keep-alive HTTP/1.1 connection; requests one at a time."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"", headers: str = "") -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        head = f"{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: {len(body)}\r\n{headers}\r\n"
        self.writer.write(head.encode() + body)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("closed")
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        await self.reader.readexactly(length)
        return int(status_line.split()[1])


async def drive(port: int, jobs: list[tuple], concurrency: int) -> tuple[float, list[float], int]:
    """Run ``jobs`` (method, path, body, headers) over ``concurrency`` connections."""
    queue = list(reversed(jobs))
    latencies: list[float] = []
    errors = 0

    async def worker() -> None:
        nonlocal errors
        conn = Connection(port)
        while queue:
            method, path, body, headers, expected = queue.pop()
            start = time.perf_counter()
            try:
                status = await conn.request(method, path, body, headers)
            except (ConnectionError, OSError, asyncio.IncompleteReadError):
                status, conn = 0, Connection(port)
            latencies.append(time.perf_counter() - start)
            if status != expected:
                errors += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start, latencies, errors


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] * 1000


def report(name: str, elapsed: float, latencies: list[float], errors: int) -> float:
    rate = len(latencies) / elapsed
    print(
        f"{name:<34} {len(latencies):>7} requests in {elapsed:6.2f} s: {rate:7.0f} req/s, "
        f"p50 {percentile(latencies, 0.5):6.1f} ms, p99 {percentile(latencies, 0.99):6.1f} ms, "
        f"errors {errors}"
    )
    return rate


BARE_APP = """
import sys, uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
async def ok(request):
    return PlainTextResponse("ok")
app = Starlette(routes=[Route("/ok", ok)])
uvicorn.run(app, port=int(sys.argv[1]), log_level="warning", access_log=False, server_header=False)
"""


def bare_baseline(concurrency: int) -> float:
    """Requests/s of a bare Starlette "ok" under uvicorn: the framework's own ceiling here."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", BARE_APP, str(port)])
    try:
        wait_until_up(port, server)
        jobs = [("GET", "/ok", b"", "", 200)] * 5000
        return report("baseline: bare Starlette GET", *asyncio.run(drive(port, jobs, concurrency)))
    finally:
        server.terminate()
        server.wait(10)


def wait_until_up(port: int, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"campaign serve exited with {server.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("campaign serve did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--merchants", type=int, default=10_000)
    parser.add_argument("--gets", type=int, default=5_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--workers", type=int, default=1, help="campaign serve --workers")
    args = parser.parse_args()

    bare = bare_baseline(args.concurrency)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = make_project(root, args.merchants)
        port = free_port()
        command = [sys.executable, "-c", "from engine.cli import main; main()", "serve",
                   "--port", str(port), "--no-access-log", "--workers", str(args.workers),
                   "--project", str(root)]  # fmt: skip
        server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
        try:
            wait_until_up(port, server)
            print(
                f"campaign serve on SQLite, {args.workers} worker(s), {os.cpu_count()} CPUs, "
                f"{args.concurrency} connections"
            )
            health = [("GET", "/healthz", b"", "", 200)] * 5000
            baseline = report(
                "baseline: GET /healthz", *asyncio.run(drive(port, health, args.concurrency))
            )

            signer = Signer({1: SECRET})
            form = "Content-Type: application/x-www-form-urlencoded\r\n"
            posts = [
                (
                    "POST",
                    f"/u/{signer.token(i, 'retention')}",
                    b"List-Unsubscribe=One-Click",
                    form,
                    200,
                )
                for i in range(1, args.merchants + 1)
            ]
            rng = random.Random(12)
            gets = [
                ("GET", f"/u/{signer.token(rng.randint(1, args.merchants), 'promo')}", b"", "", 200)
                for _ in range(args.gets)
            ]
            mixed = posts + gets
            rng.shuffle(mixed)
            result = asyncio.run(drive(port, mixed, args.concurrency))
            rate, http_errors = report("one-click POSTs + page GETs", *result), result[2]
            print(
                f"{'':<34} ratio to GET /healthz: {rate / baseline:.2f}, to bare Starlette: {rate / bare:.2f}"
            )
            with sqlite3.connect(root / "campaign.db") as db:
                stored = db.execute(
                    "SELECT count(DISTINCT email) FROM suppressions WHERE topic = 'retention'"
                    " AND reason = 'unsubscribe'"
                ).fetchone()[0]
            lost = args.merchants - stored
            print(f"{'':<34} suppressed afterwards: {stored} of {args.merchants} (lost: {lost})")

            auth = f"Authorization: Bearer {API_TOKEN}\r\nContent-Type: application/json\r\n"
            batches = []
            for start in range(0, args.orders, args.batch):
                orders = [
                    {"merchant_external_id": f"m{1 + (n % args.merchants):06d}", "order_ref": f"o{n}",
                     "amount": 10_000 + n % 500_000, "status": "paid",
                     "placed_at": datetime(2026, 11, 1 + n % 28, n % 24).isoformat()}
                    for n in range(start, min(start + args.batch, args.orders))
                ]  # fmt: skip
                batches.append(
                    ("POST", "/api/v1/events", json.dumps({"orders": orders}).encode(), auth, 200)
                )
            elapsed, latencies, errors = asyncio.run(drive(port, batches, 2))
            print(
                f"{'events API: orders':<34} {args.orders:>7} rows in {elapsed:6.2f} s "
                f"({args.orders / elapsed:,.0f} rows/s, batches of {args.batch}, "
                f"p50 {percentile(latencies, 0.5):.0f} ms per batch), errors {errors}"
            )
            with sqlite3.connect(root / "campaign.db") as db:
                count = db.execute("SELECT count(*) FROM orders").fetchone()[0]
            print(f"{'':<34} orders stored: {count} of {args.orders}")
            missed = [
                name
                for name, met in (
                    (f"500 req/s ({rate:.0f})", rate >= 500),
                    (f"nothing lost ({lost} lost)", lost == 0),
                    (f"no errors ({http_errors} + {errors})", http_errors == 0 and errors == 0),
                    (f"events under 30 s ({elapsed:.1f} s)", elapsed < 30),
                    (f"every order stored ({count})", count == args.orders),
                )
                if not met
            ]
            print("targets met" if not missed else "targets missed: " + ", ".join(missed))
        finally:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main()
