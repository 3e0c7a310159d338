"""Collector throughput and latency on loopback: `make bench BENCH=collector`.

The collector runs as its own process (`python -m collector`, one uvicorn
worker) against a dedicated database `bench_collector` on the embedded server;
the load generator is another process (a minimal keep-alive HTTP/1.1 client on
asyncio, so that it costs the shared 2 cores as little as possible). Bounded:
a fixed number of requests per phase and a time cap.

Figures:
- batch_events_per_s: events/s through POST /v1/batch (100 calls of ~700 bytes a
  batch, gzip-encoded as rudder-sdk-python sends them by default);
  reference copy_events_per_s: the same events, already parsed into rows, COPY'd
  into the same table (truncated first) in one stream by one client: the most
  the table takes. Three rounds of reference then collector, in turns, the
  median of each (the machine is shared: a lone short run can be lucky).
- batch_p99_ms: the 99th percentile latency of those batch requests (all rounds).
- track_requests_per_s, track_p99_ms: single calls on POST /v1/track.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import multiprocessing
import os
import random
import socket
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import psycopg

from bench import Figure
from warehouse import settings

DATABASE = "bench_collector"
WRITE_KEY = "bench-write-key"
BATCH_SIZE = 100
BATCH_EVENTS = 40_000
BATCH_CONCURRENCY = 16
TRACK_REQUESTS = 15_000
TRACK_CONCURRENCY = 16
WARMUP_REQUESTS = 200
PHASE_TIMEOUT_S = 90.0
ROUNDS = 3  # batch runs and reference COPYs, in turns; the median of each


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_events(count: int, seed: int) -> list[dict]:
    """Storefront track calls shaped like analytics.js sends them (~700 bytes each)."""
    rng = random.Random(seed)
    # Recent timestamps: the collector refuses any more than a day ahead of its clock.
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=12)
    events = []
    for i in range(count):
        product = rng.randint(1, 500)
        events.append(
            {
                "type": "track",
                "event": rng.choice(("Product Viewed", "Product Added", "Cart Viewed", "Checkout Started")),
                "messageId": str(uuid.UUID(int=rng.getrandbits(128))),
                "anonymousId": str(uuid.UUID(int=rng.getrandbits(128))),
                "userId": f"customer-{rng.randint(1, 20000)}",
                "timestamp": (start + timedelta(milliseconds=37 * i)).isoformat(),
                "properties": {
                    "product_id": str(product),
                    "sku": f"SKU-{product:05d}",
                    "category": rng.choice(("Shoes", "Jackets", "Bags", "Hats")),
                    "name": f"Product {product}",
                    "price": round(rng.uniform(5, 300), 2),
                    "currency": "EUR",
                    "url": f"https://shop.example/p/{product}",
                    "image_url": f"https://shop.example/i/{product}.jpg",
                },
                "context": {
                    "library": {"name": "analytics.js", "version": "5.2.0"},
                    "page": {
                        "path": f"/p/{product}",
                        "url": f"https://shop.example/p/{product}",
                        "referrer": "https://search.example/",
                        "title": f"Product {product}",
                    },
                    "userAgent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36",
                    "locale": "en-GB",
                },
            }
        )
    return events


def _request(path: str, body: bytes, *, gzipped: bool) -> bytes:
    auth = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    headers = [
        f"POST {path} HTTP/1.1",
        "Host: 127.0.0.1",
        f"Authorization: Basic {auth}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ]
    if gzipped:
        headers.append("Content-Encoding: gzip")
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + body


# ---- the load generator (its own process) ----------------------------------------------


async def _connection(
    port: int, requests: list[bytes], next_index, latencies: list, statuses: dict, deadline
):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < deadline:
            index = next_index()
            if index is None:
                return
            started = time.perf_counter()
            writer.write(requests[index])
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            status = int(head[9:12])
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        writer.close()


async def _drive(port: int, requests: list[bytes], concurrency: int, timeout: float) -> dict:
    position = 0

    def next_index():
        nonlocal position
        if position >= len(requests):
            return None
        position += 1
        return position - 1

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    started = time.perf_counter()
    await asyncio.gather(
        *(
            _connection(port, requests, next_index, latencies, statuses, started + timeout)
            for _ in range(concurrency)
        )
    )
    elapsed = time.perf_counter() - started
    return {"elapsed": elapsed, "latencies": latencies, "statuses": statuses}


def _load_process(port: int, requests: list[bytes], concurrency: int, timeout: float, results) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    results.put(asyncio.run(_drive(port, requests, concurrency, timeout)))


def generate_load(
    port: int, requests: list[bytes], concurrency: int, timeout: float = PHASE_TIMEOUT_S
) -> dict:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=_load_process, args=(port, requests, concurrency, timeout, results))
    process.start()
    try:
        outcome = results.get(timeout=timeout + 30)
    finally:
        process.join(timeout=10)
        if process.is_alive():
            process.kill()
    return outcome


# ---- the run ----------------------------------------------------------------------------


def _prepare_database() -> str:
    from warehouse import embedded, migrate

    base = os.environ.get("WAREHOUSE_URL") or settings.warehouse_url()
    if settings.PG_DATA_DIR.as_posix() in base:
        embedded.start()
    url = settings.with_database(base, DATABASE)
    embedded.create_database(settings.with_database(base, "postgres"), DATABASE)
    migrate.upgrade(url=url)
    return url


def _reset(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("truncate raw.events, raw.identity_links")
        conn.execute("checkpoint")
        conn.execute("vacuum analyze raw.events")


def _count(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("select count(*) from raw.events").fetchone()[0]


def copy_reference(url: str, events: list[dict]) -> float:
    """Events/s of one COPY of the same events (parsed as the collector parses them)."""
    from collector import segment, store

    received_at = datetime.now(UTC)
    rows = [segment.parse_event(e, None, "bench", received_at, None, None, []) for e in events]
    _reset(url)
    with psycopg.connect(url) as conn:
        started = time.perf_counter()
        with conn.cursor().copy(store.COPY_EVENTS) as copy:
            for row in rows:
                copy.write_row(row)
        conn.commit()
        elapsed = time.perf_counter() - started
    assert _count(url) == len(events)
    return len(events) / elapsed


def _start_collector(url: str, port: int, log_path: Path) -> subprocess.Popen:
    environment = {
        **os.environ,
        "WAREHOUSE_URL": url,
        "COLLECTOR_PORT": str(port),
        "COLLECTOR_WRITE_KEYS": f"{WRITE_KEY}:bench",
        "COLLECTOR_LOG_LEVEL": "WARNING",
    }
    log = log_path.open("wb")
    process = subprocess.Popen([sys.executable, "-m", "collector"], env=environment, stdout=log, stderr=log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the collector exited with {process.returncode}; see {log_path}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return process
        except OSError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"the collector did not become ready; see {log_path}")


def _p99_ms(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000


def _check(outcome: dict, expected: int, phase: str) -> None:
    ok = sum(n for status, n in outcome["statuses"].items() if 200 <= status < 300)
    if ok != expected:
        raise RuntimeError(f"{phase}: {ok} of {expected} requests succeeded: {outcome['statuses']}")


def run() -> list[Figure]:
    print(
        f"load average before: {os.getloadavg()[0]:.1f} (2 cores; other work on the machine skews every figure)"
    )
    url = _prepare_database()
    from bench import BENCH_DIR

    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    batch_events = make_events(BATCH_EVENTS, seed=1)
    track_events = make_events(TRACK_REQUESTS + WARMUP_REQUESTS, seed=2)

    batches = [
        _request(
            "/v1/batch",
            gzip.compress(orjson.dumps({"batch": batch_events[i : i + BATCH_SIZE]}), compresslevel=6),
            gzipped=True,
        )
        for i in range(0, len(batch_events), BATCH_SIZE)
    ]
    tracks = [_request("/v1/track", orjson.dumps(e), gzipped=False) for e in track_events]

    port = _free_port()
    _reset(url)
    collector = _start_collector(url, port, BENCH_DIR / "collector-server.log")
    copies: list[float] = []
    batch_runs: list[dict] = []
    try:
        warmup = generate_load(port, tracks[:WARMUP_REQUESTS], 4)
        _check(warmup, WARMUP_REQUESTS, "warm-up")
        # Reference and collector in turns, the median of each: on a shared machine one short
        # run can land in a quiet (or a busy) second that the other does not.
        for _ in range(ROUNDS):
            copies.append(copy_reference(url, batch_events))
            _reset(url)
            batch = generate_load(port, batches, BATCH_CONCURRENCY)
            _check(batch, len(batches), "batch")
            if _count(url) != BATCH_EVENTS:
                raise RuntimeError(f"the batch run stored {_count(url)} events, not {BATCH_EVENTS}")
            batch_runs.append(batch)
        _reset(url)
        track = generate_load(port, tracks[WARMUP_REQUESTS:], TRACK_CONCURRENCY)
        _check(track, TRACK_REQUESTS, "track")
        if _count(url) != TRACK_REQUESTS:
            raise RuntimeError(f"the track run stored {_count(url)} events, not {TRACK_REQUESTS}")
    finally:
        collector.terminate()
        try:
            collector.wait(timeout=15)
        except subprocess.TimeoutExpired:
            collector.kill()

    print(f"load average after: {os.getloadavg()[0]:.1f}")
    copy_per_s = statistics.median(copies)
    batch_per_s = statistics.median(BATCH_EVENTS / run["elapsed"] for run in batch_runs)
    batch_latencies = [latency for run in batch_runs for latency in run["latencies"]]
    return [
        Figure(
            "batch_events_per_s",
            batch_per_s,
            "events/s",
            reference_name="copy_events_per_s",
            reference_value=copy_per_s,
            target=">= 20000 and ratio >= 0.6",
        ),
        Figure("batch_p99_ms", _p99_ms(batch_latencies), "ms", target="report"),
        Figure("track_requests_per_s", TRACK_REQUESTS / track["elapsed"], "requests/s", target=">= 1500"),
        Figure("track_p99_ms", _p99_ms(track["latencies"]), "ms", target="< 50"),
    ]
