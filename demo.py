"""`make demo`: the whole flow on the embedded default, through Airflow.

Generates the source data (the simulated storefront, or the real CDNOW data set
with DATASET=cdnow), then runs each stage's DAG with `airflow dags test` in
dependency order. Its live stage then starts the collector, an SMTP sink and
the Airflow services running trigger_campaigns (under the real scheduler and
triggerer, as the trigger benchmark does, with `harness.live`), streams
simulated shop behaviour and a few shoppers who leave their carts through the
collector, and prints the triggered emails that reach the sink with their
latency from due time; trigger delays are scaled down for it
(CAMPAIGNS_DELAY_SCALE), and its services stop when it ends (`--no-live` skips
it). The demo ends with what ran, row counts and how to open the UIs. The demo
warehouse is rebuilt from scratch each time: it is a demo, not a shop's data.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg

from warehouse import env, settings


@dataclass
class StageResult:
    name: str
    seconds: float


def run(cmd: list[str], label: str) -> StageResult:
    print(f"\n==> {label}: {' '.join(cmd)}", flush=True)
    started = time.monotonic()
    result = subprocess.run(cmd)
    if result.returncode != 0:
        sys.exit(f"demo stopped: {label} failed (exit {result.returncode})")
    return StageResult(label, time.monotonic() - started)


def reset_warehouse() -> None:
    """Start the demo warehouse afresh: raw, dbt's schemas, ML outputs and ops state."""
    with psycopg.connect(settings.warehouse_url(), autocommit=True) as conn:
        conn.execute("drop schema if exists staging, intermediate, marts, snapshots, analytics cascade")
        tables = conn.execute(
            """select format('%I.%I', schemaname, tablename) from pg_tables
               where schemaname in ('raw', 'ml', 'ops') and tablename <> 'alembic_version'"""
        ).fetchall()
        conn.execute(f"truncate {', '.join(t for (t,) in tables)}")


def airflow_dag_test(dag_id: str, logical_date: datetime) -> StageResult:
    dag_file = settings.PROJECT_ROOT / "dags" / f"{dag_id}.py"  # parse only this DAG's file
    return run(
        ["airflow", "dags", "test", dag_id, logical_date.isoformat(), "--dagfile-path", str(dag_file)],
        f"airflow dags test {dag_id}",
    )


def row_counts() -> list[tuple[str, int]]:
    with psycopg.connect(settings.warehouse_url()) as conn:
        tables = conn.execute(
            """select format('%I.%I', schemaname, relname) from pg_stat_user_tables
               where schemaname in ('raw', 'marts', 'ml', 'ops') order by schemaname, relname"""
        ).fetchall()
        return [(t, conn.execute(f"select count(*) from {t}").fetchone()[0]) for (t,) in tables]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", choices=["simulated", "cdnow"], default="simulated")
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--no-live", action="store_true", help="skip the live stage (services, triggered emails)"
    )
    args = parser.parse_args()
    env.apply_defaults()
    started = time.monotonic()
    # The hour that just began: its interval covers everything generated so far.
    logical_date = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)

    stages = []
    if args.dataset == "cdnow":
        stages.append(run([sys.executable, "-m", "simulator", "cdnow"], "load CDNOW into the shop database"))
    else:
        stages.append(
            run(
                [
                    sys.executable,
                    "-m",
                    "simulator",
                    "generate",
                    "--customers",
                    str(args.customers),
                    "--days",
                    str(args.days),
                    "--seed",
                    str(args.seed),
                ],
                "simulate the storefront",
            )
        )
    reset_warehouse()
    stages.append(airflow_dag_test("extract_load", logical_date))
    # Cosmos renders dbt_build from the manifest: parse the project first.
    stages.append(run([sys.executable, "-m", "warehouse.dbt", "parse"], "dbt parse"))
    for dag_id in ("dbt_build", "train_models", "score_customers"):
        stages.append(airflow_dag_test(dag_id, logical_date))
    if not args.no_live and args.dataset != "cdnow":  # CDNOW is orders only: no catalogue to shop from
        stages.append(live_stage())

    print("\n==> demo finished in %.0f s" % (time.monotonic() - started))
    print("\nstages:")
    for stage in stages:
        print(f"  {stage.seconds:7.1f} s  {stage.name}")
    print("\nrow counts:")
    for table, count in row_counts():
        print(f"  {count:>12,}  {table}")
    print(
        "\nnext:\n"
        f"  Airflow UI: make airflow, then http://127.0.0.1:8080 (user admin, password in "
        f"{settings.LOCAL_DIR}/airflow/simple_auth_manager_passwords.json.generated)\n"
        "  MLflow UI:  make mlflow-ui, then http://127.0.0.1:5000\n"
        f"  psql:       psql '{settings.warehouse_url()}'\n"
        "  stop:       make stop"
    )


# --- the live stage ------------------------------------------------------------------------------

LIVE_DELAY_SCALE = "0.005"  # cart abandonment: 30 minutes -> 9 s; browse abandonment: 1 h -> 18 s
LIVE_STREAM_SECONDS = 30
LIVE_RATE = 15  # simulated behavioural events a second
LIVE_SHOPPERS = 8


def _port(name: str, default: int) -> int:
    """The port in the environment; when that is only the default and it is taken (say by
    `make airflow`), any free one."""
    from harness.live import free_port, port_free

    port = int(os.environ.get(name) or default)
    return port if port != default or port_free(port) else free_port()


def _pick_shoppers(conn: psycopg.Connection, n: int, now: datetime) -> list[dict]:
    """Customers the cart campaign would mail now: consent, daytime where they live, not held
    out, not suppressed, with no trigger yet (so no frequency cap from the catch-up)."""
    from campaigns import assignment
    from campaigns.eligibility import quiet_until
    from campaigns.schema import load_campaigns, load_policy
    from campaigns.suppressions import hash_email

    cart, policy = load_campaigns()["cart_abandonment"], load_policy()
    quiet = policy.quiet_hours
    rows = conn.execute(
        """select c.customer_id, c.email, c.timezone from (
               select distinct on (customer_id) customer_id, email, timezone, accepts_email_marketing
               from raw.shop_customers order by customer_id, updated_at desc, _loaded_at desc) c
           where c.accepts_email_marketing and c.email is not null
             and not exists (select 1 from ops.campaign_triggers t where t.customer_id = c.customer_id)
             and not exists (select 1 from ops.consent k where k.customer_id = c.customer_id)
           order by md5(c.customer_id::text) limit 2000"""
    ).fetchall()
    suppressed = {h for (h,) in conn.execute("select email_hash from ops.suppressions")}
    picked = []
    for cid, email, tz in rows:
        if assignment.assign(cart, cid)[0] == assignment.HOLDOUT or hash_email(email) in suppressed:
            continue
        if quiet and any(quiet_until(now + timedelta(minutes=m), tz, quiet.start, quiet.end) for m in (0, 5)):
            continue
        picked.append({"customer_id": cid, "timezone": tz})
        if len(picked) == n:
            break
    return picked


def _cart_events(conn: psycopg.Connection, shoppers: list[dict], start: datetime) -> list[dict]:
    """One 'Product Added' per shopper, a real product of the catalogue."""
    from harness import fixtures

    products = conn.execute(
        """select product_id, sku, name, price::float8 from (
               select distinct on (product_id) * from raw.shop_products order by product_id, updated_at desc) p
           where is_active and stock > 0 order by product_id limit 50"""
    ).fetchall()
    return [
        fixtures.cart_call(
            s["customer_id"],
            start,
            product=products[i % len(products)],
            cart_id=f"demo-live-{s['customer_id']}-{start:%H%M%S}",
            prefix="demo",
        )
        for i, s in enumerate(shoppers)
    ]


def _wait_live(conn: psycopg.Connection, live, activity_since: datetime, sent_since: datetime, until: float):
    """Until every trigger (with activity since `activity_since`) due by now, or in the next
    seconds, is decided, and every email sent since `sent_since` is in the sink."""
    while time.monotonic() < until:
        waiting = conn.execute(
            """select count(*) from ops.campaign_triggers where status = 'pending'
               and first_activity_at >= %s and due_at <= now() + interval '20 seconds'""",
            (activity_since,),
        ).fetchone()[0]
        sent = {
            m
            for (m,) in conn.execute(
                "select message_id from ops.send_ledger where state = 'sent' and sent_at >= %s", (sent_since,)
            )
        }
        if not waiting and sent <= set(live.accepted()):
            return
        time.sleep(1)


def live_stage() -> StageResult:
    """Live behaviour through the collector -> trigger_campaigns under the real scheduler and
    triggerer -> emails in the SMTP sink, with latency from due time to the sink accepting."""
    import threading

    from campaigns import timers
    from campaigns.schema import load_campaigns
    from harness.live import WRITE_KEY, LiveServices
    from simulator import live as simlive
    from warehouse import embedded

    started_at, stage_start = time.monotonic(), datetime.now(UTC)
    with env.overridden({"CAMPAIGNS_DELAY_SCALE": LIVE_DELAY_SCALE}):
        delays = {n: c.trigger.delay for n, c in load_campaigns().items() if hasattr(c.trigger, "delay")}
    print("\n==> live: collector, SMTP sink and Airflow (trigger_campaigns only); CAMPAIGNS_DELAY_SCALE="
          + LIVE_DELAY_SCALE + ": " + ", ".join(f"{n} after {d.total_seconds():g} s" for n, d in delays.items()),
          flush=True)  # fmt: skip
    wh_url = settings.warehouse_url()
    af_url = os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].replace(
        "postgresql+psycopg2://", "postgresql://", 1
    )
    af_live = settings.with_database(af_url, "airflow_live")
    embedded.create_database(settings.with_database(af_url, "postgres"), "airflow_live")
    directory = settings.LOCAL_DIR / "demo-live"
    shutil.rmtree(directory / "outbox", ignore_errors=True)
    live = LiveServices(
        directory=directory,
        warehouse_url=wh_url,
        airflow_url=af_live,
        smtp_port=_port("SMTP_SINK_PORT", 8025),
        collector_port=_port("COLLECTOR_PORT", 8765),
        api_port=_port("AIRFLOW__API__PORT", 8080),
        extra_env={"CAMPAIGNS_DELAY_SCALE": LIVE_DELAY_SCALE},
        log=lambda m: print(f"    {m}", flush=True),
    )
    with psycopg.connect(wh_url, autocommit=True) as conn:
        # Catch up first, as a deployment's first run would: timers from the last days of
        # history and this week's batch candidates (VIP offer, win-back) become due now.
        with env.overridden({"CAMPAIGNS_DELAY_SCALE": LIVE_DELAY_SCALE}):
            caught = timers.ingest(conn, load_campaigns(), candidates=True)
        backlog = conn.execute(
            "select count(*) from ops.campaign_triggers where status = 'pending'"
        ).fetchone()[0]
        print(f"    catch-up: {caught.events:,} events of history, {caught.candidates:,} batch candidates,"
              f" {backlog:,} pending triggers", flush=True)  # fmt: skip
        try:
            live.migrate_airflow()
            live.start(timeout=240)
            print(f"    services up after {time.monotonic() - started_at:.0f} s (collector {live.collector_url},"
                  f" sink 127.0.0.1:{live.smtp_port}, api-server 127.0.0.1:{live.api_port})", flush=True)  # fmt: skip
            # the catch-up: whatever was due when the services started
            _wait_live(conn, live, datetime(1970, 1, 1, tzinfo=UTC), stage_start, time.monotonic() + 120)
            catchup_sent = len(live.accepted())
            start = datetime.now(UTC)
            shoppers = _pick_shoppers(conn, LIVE_SHOPPERS, start)
            events = _cart_events(conn, shoppers, start)
            stream_stats: dict = {}

            def stream() -> None:
                stream_stats["stats"] = simlive.stream(
                    settings.shop_url(), LIVE_RATE, duration=LIVE_STREAM_SECONDS,
                    collector_url=live.collector_url, write_key=WRITE_KEY, seed=int(start.timestamp()),
                )  # fmt: skip

            print(f"    streaming {LIVE_RATE} simulated events/s for {LIVE_STREAM_SECONDS} s through the collector,"
                  f" and {len(events)} shoppers who leave a cart", flush=True)  # fmt: skip
            streamer = threading.Thread(target=stream, daemon=True)
            streamer.start()
            import httpx

            with httpx.Client(base_url=live.collector_url, auth=(WRITE_KEY, ""), timeout=10) as client:
                for e in events:
                    client.post(
                        "/v1/batch", json={"batch": [{**e, "timestamp": datetime.now(UTC).isoformat()}]}
                    )
                    time.sleep(1.5)
            streamer.join(LIVE_STREAM_SECONDS + 30)
            _wait_live(conn, live, start, start, time.monotonic() + 60)
            _print_live(conn, live, start, catchup_sent, {s["customer_id"] for s in shoppers}, stream_stats)
        finally:
            live.stop()
            print("    live services stopped", flush=True)
    return StageResult(
        "live: behaviour -> collector -> trigger_campaigns -> SMTP sink", time.monotonic() - started_at
    )


def _print_live(
    conn, live, start: datetime, catchup_sent: int, shoppers: set[int], stream_stats: dict
) -> None:
    accepted = live.accepted()
    rows = conn.execute(
        """select l.campaign, l.customer_id, l.variant, l.due_at, l.message_id
           from ops.send_ledger l join ops.campaign_triggers t using (trigger_id)
           where t.first_activity_at >= %s and l.state = 'sent' order by l.due_at""",
        (start,),
    ).fetchall()
    outcomes = conn.execute(
        """select d.outcome, count(*) from ops.decision_log d join ops.campaign_triggers t using (trigger_id)
           where t.first_activity_at >= %s group by 1 order by 2 desc""",
        (start,),
    ).fetchall()
    s = stream_stats.get("stats")
    if s is not None:
        print(
            f"    simulator: {s.events:,} events, {s.sessions:,} visits, {s.carts:,} carts, {s.orders:,} orders"
        )
    print(
        f"    catch-up run: {catchup_sent:,} emails (backlog and batch campaigns) before the live behaviour"
    )
    print("\n    triggered by live behaviour (latency: due time -> accepted by the SMTP sink):")
    print(
        f"    {'campaign':<20} {'customer':>9} {'variant':<10} {'who':<9} {'due (UTC)':<12} {'in sink':<12} latency"
    )
    latencies = []
    for campaign, cid, variant, due, mid in rows:
        at = accepted.get(mid)
        if at is None:
            continue
        latency = at - due.timestamp()
        latencies.append(latency)
        inbox = datetime.fromtimestamp(at, UTC)
        who = "shopper" if cid in shoppers else "simulated"
        print(f"    {campaign:<20} {cid:>9} {variant or '':<10} {who:<9} {_hms(due):<12} {_hms(inbox):<12}"
              f" {latency:6.2f} s")  # fmt: skip
    if latencies:
        latencies.sort()
        p95 = latencies[min(len(latencies) - 1, int(round(0.95 * (len(latencies) - 1))))]
        print(f"    {len(latencies)} emails; latency median {statistics.median(latencies):.2f} s,"
              f" p95 {p95:.2f} s, max {latencies[-1]:.2f} s")  # fmt: skip
    else:
        print("    no email from live behaviour reached the sink")
    print("    decisions on live triggers: " + ", ".join(f"{o} {n}" for o, n in outcomes))


def _hms(at: datetime) -> str:
    return f"{at:%H:%M:%S}.{at.microsecond // 1000:03d}"


if __name__ == "__main__":
    main()
