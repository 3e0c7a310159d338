"""Triggered campaigns, end to end, with the real Airflow scheduler and triggerer.

`make bench BENCH=triggers`. In its own warehouse and Airflow metadata
databases (created, migrated and dropped by the run), it starts the collector,
the SMTP sink (its own process) and the Airflow api-server, scheduler,
dag-processor and triggerer (orchestration.airflow_services) with only the
trigger_campaigns DAG, then measures:

- trigger_latency_p50_s / p95_s / max_s: 60 cart abandonments sent through the
  collector (/v1/batch) with Segment timestamps set so their timers fall due
  8-38 s later; latency = the SMTP sink accepting the email minus the trigger's
  due time. Most are served by a task that stays for triggers due within
  `linger_s`; trigger_latency_cold_max_s covers three triggers due further apart,
  each waking an idle DAG (deferred sensor -> triggerer -> scheduler -> task).
- emails_per_s: 10,000 carts abandoned 31 minutes ago (all due at once) sent
  through the collector; from the first request to the sink accepting the
  10,000th email. Reference smtp_sink_messages_per_s: the same sink process
  receiving 3,000 messages built from the same templates, through the engine's
  SMTP client path (pipelined groups) over the same number of connections (2
  engines x 8 lanes), just before and just after (mean of the two: the machine
  is shared), each with the DAG idle (its sensor deferred), after two warm-up
  blasts. Rounds 2 and 3 also ingest the previous round's events again (the
  ingest re-reads the 10 s before its cursor for late commits). Three rounds; the one with the median ratio is reported, with the
  others in the target column. throughput_first_email_s: from the first request
  to the first email (collector, DAG wake-up, ingest, first batch).
  emails_per_s_vs_unpipelined_sink compares the same rate with the reference as
  earlier runs measured it (two round trips a message, 3 connections).
- renders_per_s_per_core: rendering alone (subject, preheader, HTML, text)
  across all campaigns and variants, per CPU second.
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg

from bench import BENCH_DIR, Figure
from warehouse import settings

LATENCY_TRIGGERS = 60
THROUGHPUT_TRIGGERS = 10_000
THROUGHPUT_ROUNDS = 3
SENDERS = 8  # the DAG's defaults: SMTP connections per engine ...
WORKERS = 2  # ... and engines working a backlog side by side
CONNECTIONS = SENDERS * WORKERS
LEDGER_GROUP = 16


def _log(msg: str) -> None:
    print(f"[triggers {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- renders ------------------------------------------------------------------------------------


def measure_renders(n: int = 6000) -> float:
    from campaigns import preview, render
    from campaigns.schema import load_campaigns

    campaigns = load_campaigns()
    renderer = render.Renderer(campaigns)
    jobs = []
    for i in range(200):
        c = list(campaigns.values())[i % len(campaigns)]
        v = c.variants[i % len(c.variants)]
        ctx = render.make_context(
            campaign=c,
            customer={"customer_id": i, "first_name": None if i % 5 == 0 else f"Name{i}"},
            payload=preview.sample_payload() if i % 3 else {},
            recommendations=preview.sample_products()[i % 3 :],
            recommendations_are_fallback=bool(i % 2),
            unsubscribe_url=f"https://shop.example/unsubscribe?token=t{i}",
        )
        jobs.append((c.name, v.name, ctx))
    for name, variant, ctx in jobs[:50]:  # warm up
        renderer.render(name, variant, ctx)
    t0 = time.process_time()
    for i in range(n):
        name, variant, ctx = jobs[i % len(jobs)]
        renderer.render(name, variant, ctx)
    return n / (time.process_time() - t0)


# --- the end-to-end setup -----------------------------------------------------------------------


class Stack:
    """Bench databases (created, migrated, dropped) with the live services on top
    (harness.live: collector, SMTP sink, Airflow with only trigger_campaigns)."""

    def __init__(self) -> None:
        from harness.live import LiveServices, free_port

        self.suffix = uuid.uuid4().hex[:8]
        base = os.environ.get("WAREHOUSE_URL") or settings.embedded_url("warehouse")
        self.wh_name, self.af_name = f"bench_wh_{self.suffix}", f"bench_af_{self.suffix}"
        self.wh_url = settings.with_database(base, self.wh_name)
        self.af_url = settings.with_database(base, self.af_name)
        self.admin_url = settings.with_database(base, "postgres")
        self.dir = BENCH_DIR / f"triggers-{self.suffix}"
        self.live = LiveServices(
            directory=self.dir,
            warehouse_url=self.wh_url,
            airflow_url=self.af_url,
            smtp_port=free_port(),
            collector_port=free_port(),
            api_port=free_port(),
            log=_log,
        )
        self.outbox = self.live.outbox
        self.smtp_port, self.collector_port = self.live.smtp_port, self.live.collector_port

    def start(self) -> None:
        from warehouse import embedded, migrate

        for name in (self.wh_name, self.af_name):
            embedded.create_database(self.admin_url, name)
        migrate.upgrade(url=self.wh_url)
        _log("migrating the bench Airflow metadata database")
        self.live.migrate_airflow()
        self.live.start(timeout=180)

    def wait_sensor_deferred(self, timeout: float) -> None:
        self.live.wait_sensor_deferred(timeout)

    def close(self) -> None:
        self.live.stop()
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            for name in (self.wh_name, self.af_name):
                conn.execute(f'drop database if exists "{name}" with (force)')
        shutil.rmtree(self.outbox, ignore_errors=True)


def _new_customers(stack: Stack, n: int, start: int) -> list[int]:
    """`n` customers from id `start` whom the cart campaign does not hold out, written to
    the bench warehouse (consenting, where it is daytime), with the catalogue their carts
    name (emails show only catalogue products)."""
    from campaigns.schema import load_campaigns
    from harness import fixtures

    ids = fixtures.treated_customers(load_campaigns()["cart_abandonment"], n, start)
    with psycopg.connect(stack.wh_url, autocommit=True) as conn:
        fixtures.insert_customers(conn, ids, timezone=fixtures.daytime_timezone())
        if not conn.execute("select exists (select 1 from raw.shop_products)").fetchone()[0]:
            fixtures.insert_products(conn)
    return ids


def _latencies(stack: Stack, ids: list[int], accepted: dict[str, float]) -> list[float]:
    """Seconds from each of these customers' triggers coming due to the sink accepting its email."""
    with psycopg.connect(stack.wh_url, autocommit=True) as conn:
        rows = conn.execute(
            "select message_id, extract(epoch from due_at) from ops.send_ledger where customer_id = any(%s)",
            (ids,),
        ).fetchall()
    return sorted(accepted[m] - float(due) for m, due in rows if m in accepted)


def _send_batches(port: int, events: list[dict], size: int = 100) -> None:
    import httpx

    from harness.live import WRITE_KEY

    with httpx.Client(base_url=f"http://127.0.0.1:{port}", auth=(WRITE_KEY, ""), timeout=30) as client:
        for i in range(0, len(events), size):
            r = client.post("/v1/batch", json={"batch": events[i : i + size]})
            r.raise_for_status()


def _cart_call(cid: int, occurred_at: datetime) -> dict:
    from harness import fixtures

    return fixtures.cart_call(cid, occurred_at, cart_id=f"bench-{cid}", prefix="bench")


def measure_latency(stack: Stack) -> list[float]:
    ids = _new_customers(stack, LATENCY_TRIGGERS, 1_000_000)
    now = datetime.now(UTC)
    calls = [
        _cart_call(cid, now - timedelta(minutes=30) + timedelta(seconds=8 + i * 0.5))
        for i, cid in enumerate(ids)
    ]
    _send_batches(stack.collector_port, calls, size=20)
    latencies = _latencies(stack, ids, stack.live.wait_accepted(LATENCY_TRIGGERS, timeout=150))
    if len(latencies) < LATENCY_TRIGGERS:
        _log(f"only {len(latencies)} of {LATENCY_TRIGGERS} latency emails arrived")
    return latencies


def measure_cold_latency(stack: Stack, gaps=(40, 70, 100)) -> list[float]:
    """Triggers due further apart than the task's linger: each one wakes an idle DAG
    (sensor deferred in the triggerer -> it ends there -> scheduler -> task)."""
    stack.wait_sensor_deferred(timeout=120)
    ids = _new_customers(stack, len(gaps), 1_500_000)
    before = len(stack.live.accepted())
    now = datetime.now(UTC)
    calls = [
        _cart_call(cid, now - timedelta(minutes=30) + timedelta(seconds=g))
        for cid, g in zip(ids, gaps, strict=True)
    ]
    _send_batches(stack.collector_port, calls)
    return _latencies(stack, ids, stack.live.wait_accepted(before + len(ids), timeout=max(gaps) + 60))


@dataclass
class Throughput:
    sent: int
    seconds: float  # first request to the collector -> the sink accepting the last email
    collector_s: float  # posting the events (500 a request)
    first_email_s: float  # first request -> the first email accepted

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0


def measure_throughput(stack: Stack, first_id: int) -> Throughput:
    ids = _new_customers(stack, THROUGHPUT_TRIGGERS, first_id)
    before = len(stack.live.accepted())
    at = datetime.now(UTC) - timedelta(minutes=31)
    calls = [_cart_call(cid, at) for cid in ids]
    t0 = time.time()
    _send_batches(stack.collector_port, calls, size=500)
    collector_s = time.time() - t0
    got = stack.live.wait_accepted(before + THROUGHPUT_TRIGGERS, timeout=600)
    with psycopg.connect(stack.wh_url, autocommit=True) as conn:
        mids = {
            m
            for (m,) in conn.execute(
                "select message_id from ops.send_ledger where customer_id = any(%s)", (ids,)
            )
        }
    times = sorted(got[m] for m in mids if m in got)
    _log_wake(stack, t0)
    if not times:
        return Throughput(0, 0.0, collector_s, float("nan"))
    return Throughput(len(times), times[-1] - t0, collector_s, times[0] - t0)


def _log_wake(stack: Stack, t0: float) -> None:
    """Where the time to the first email went: when the sensor ended and the task started,
    and the task's own account (its XCom: setup_s, ingest_s) once it has ended."""
    with psycopg.connect(stack.af_url, autocommit=True) as conn:
        for _ in range(40):  # the task ends after a last ingest
            done = conn.execute(
                """select value from xcom where dag_id = 'trigger_campaigns' and task_id = 'process_due_triggers'
                   and key = 'return_value' and timestamp > to_timestamp(%s) order by timestamp desc limit 1""",
                (t0,),
            ).fetchone()
            if done:
                _log(f"task: {done[0]}")
                break
            time.sleep(0.25)
        rows = conn.execute(
            """select task_id, extract(epoch from start_date), extract(epoch from end_date) from task_instance
               where dag_id = 'trigger_campaigns' and (end_date is null or end_date > to_timestamp(%s))
                 and start_date is not null order by start_date""",
            (t0,),
        ).fetchall()
    _log(
        ", ".join(
            f"{task} {float(s) - t0:+.1f}s.." + (f"{float(e) - t0:+.1f}s" if e else "") for task, s, e in rows
        )
    )


def reference_messages(n: int = 3000) -> list[bytes]:
    """Messages like the engine's (same templates, sizes, headers), built ahead of time."""
    from campaigns import deliver, preview, render
    from campaigns.schema import load_campaigns

    campaigns = load_campaigns()
    renderer = render.Renderer(campaigns)
    cart = campaigns["cart_abandonment"]
    out = []
    for i in range(n):
        ctx = render.make_context(
            campaign=cart,
            customer={"customer_id": i, "first_name": "Ada"},
            payload=preview.sample_payload(),
            recommendations=preview.sample_products(),
            recommendations_are_fallback=True,
            unsubscribe_url=f"http://127.0.0.1:8765/unsubscribe?token=reference{i}",
        )
        email = renderer.render(cart.name, cart.variants[i % 2].name, ctx)
        out.append(
            deliver.build_message(
                sender="Emailp Shop <hello@shop.example>",
                recipient=f"ref{i}@example.test",
                reply_to=None,
                message_id=f"<reference-{uuid.uuid4().hex}@shop.example>",
                subject=email.subject,
                html=email.html,
                text=email.text,
                list_unsubscribe_url=f"http://127.0.0.1:8765/unsubscribe?token=reference{i}",
                list_unsubscribe_mailto=None,
            )
        )
    return out


def _idle(stack: Stack) -> Stack:
    """`stack` once the DAG is idle again (the next run's sensor deferred, its task process
    gone): each sink reference and each round starts from the same quiet machine, not
    beside a task process starting up."""
    stack.wait_sensor_deferred(timeout=120)
    time.sleep(1.0)
    return stack


def measure_sink(stack: Stack, messages: list[bytes]) -> float:
    """The sink's own limit: prebuilt messages through the engine's SMTP client path
    (pipelined groups of LEDGER_GROUP, TCP_NODELAY) over as many connections as the
    engine opens when it works a backlog (WORKERS x SENDERS)."""
    from campaigns.deliver import _SMTP

    chunks = [messages[i::CONNECTIONS] for i in range(CONNECTIONS)]
    errors: list[Exception] = []

    def blast(chunk: list[bytes]) -> None:
        try:
            client = _SMTP("127.0.0.1", stack.smtp_port)
            client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client.ehlo()
            for i in range(0, len(chunk), LEDGER_GROUP):
                replies: list = []
                client.send_many_bytes(
                    [
                        ("bench@shop.example", "reference@example.test", m)
                        for m in chunk[i : i + LEDGER_GROUP]
                    ],
                    replies,
                )
                if any(replies):
                    raise RuntimeError(f"the sink refused a reference message: {replies}")
            client.quit()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=blast, args=(c,)) for c in chunks]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return len(messages) / elapsed


def measure_sink_unpipelined(stack: Stack, messages: list[bytes], connections: int = 3) -> float:
    """The reference as it was measured before the engine pipelined across messages (two
    round trips a message, 3 connections): informational, to compare with earlier runs."""
    from campaigns.deliver import _SMTP

    def blast(chunk: list[bytes]) -> None:
        client = _SMTP("127.0.0.1", stack.smtp_port)
        client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.ehlo()
        for m in chunk:
            client.send_message_bytes("bench@shop.example", "reference@example.test", m)
        client.quit()

    threads = [threading.Thread(target=blast, args=(messages[i::connections],)) for i in range(connections)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(messages) / (time.perf_counter() - t0)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return (
        statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]
    )


def run() -> list[Figure]:
    figures: list[Figure] = []
    _log("measuring renders")
    renders = measure_renders()
    figures.append(Figure("renders_per_s_per_core", renders, "renders/s", target=">= 5000"))
    stack = Stack()
    try:
        stack.start()
        _log(f"stack up ({stack.dir}); latency: {LATENCY_TRIGGERS} triggers through the collector")
        latencies = measure_latency(stack)
        figures += [
            Figure("trigger_latency_p50_s", statistics.median(latencies), "s", target="informational"),
            Figure("trigger_latency_p95_s", _pct(latencies, 95), "s", target="<= 5"),
            Figure("trigger_latency_max_s", max(latencies), "s", target="informational"),
            Figure("trigger_latency_count", float(len(latencies)), "emails", target=f"== {LATENCY_TRIGGERS}"),
        ]
        _log("cold wakes: triggers due further apart than the in-task linger")
        cold = measure_cold_latency(stack)
        figures.append(
            Figure(
                "trigger_latency_cold_max_s",
                max(cold) if cold else float("nan"),
                "s",
                target=f"informational; {len(cold)} idle-DAG wakes",
            )
        )
        # THROUGHPUT_ROUNDS rounds, each between two measurements of the sink's own
        # rate (the machine is shared); the round with the median ratio is reported
        messages = reference_messages()
        # the first blasts run at about half the later rate (seen in most runs, cause not
        # found): they are not references, or round 1 would look better than it is
        for _ in range(2):
            _log(f"sink warm-up: {measure_sink(_idle(stack), messages):.0f}/s")
        sink = [measure_sink(_idle(stack), messages)]
        rounds: list[Throughput] = []
        for i in range(THROUGHPUT_ROUNDS):
            _log(
                f"sink alone: {sink[-1]:.0f}/s; throughput round {i + 1}: {THROUGHPUT_TRIGGERS} due triggers"
            )
            rounds.append(measure_throughput(_idle(stack), 2_000_000 + i * 100_000))  # ids apart: none reused
            sink.append(measure_sink(_idle(stack), messages))
            t = rounds[-1]
            _log(
                f"{t.sent} emails in {t.seconds:.1f}s, {t.rate:.0f}/s (collector {t.collector_s:.1f}s, "
                f"first email at {t.first_email_s:.1f}s); sink alone after: {sink[-1]:.0f}/s"
            )
        ratios = [t.rate / ((sink[i] + sink[i + 1]) / 2) for i, t in enumerate(rounds)]
        median = sorted(range(len(rounds)), key=ratios.__getitem__)[len(rounds) // 2]
        best = rounds[median]
        sink_unpipelined = measure_sink_unpipelined(stack, messages)
        all_rounds = ", ".join(f"{t.rate:.0f}/s at {r:.2f}" for t, r in zip(rounds, ratios, strict=True))
        figures += [
            Figure(
                "emails_per_s",
                best.rate,
                "emails/s",
                "smtp_sink_messages_per_s",
                (sink[median] + sink[median + 1]) / 2,
                f">= 300 and ratio >= 0.6 (median of {len(rounds)} rounds: {all_rounds})",
            ),
            Figure("throughput_emails_sent", float(best.sent), "emails", target=f"== {THROUGHPUT_TRIGGERS}"),
            Figure(
                "throughput_first_email_s",
                best.first_email_s,
                "s",
                target=f"informational: collector took {best.collector_s:.1f}s of it",
            ),
            Figure(
                "emails_per_s_vs_unpipelined_sink",
                best.rate,
                "emails/s",
                "smtp_sink_unpipelined_3conn_per_s",
                sink_unpipelined,
                "informational: the reference as measured before cross-message pipelining",
            ),
        ]
    finally:
        stack.close()
    return figures
