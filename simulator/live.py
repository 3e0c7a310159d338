"""Live mode: the shop keeps trading now, at a chosen rate of events per second.

Visitors browse, search, add to carts, log in and check out; orders move on through
paid, shipped and delivered; idle carts are marked abandoned. Shop rows are written
with the current time (so extract_load's next run picks them up by updated_at) and
web events go to the collector through Segment's HTTP API, or straight into
web.events when no collector is given. With a collector and the shop's webhook
secret, a purchase is reported as the shop's backend reports it, a signed
`order.placed` webhook (only signed purchases cancel a cart timer: a browser's
"Order Completed" could be forged); without the secret it is a web event. Unlike `generate`, this is per-event Python:
rates here are tens to a few thousand events a second.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import httpx
import numpy as np
import orjson
import psycopg
from standardwebhooks.webhooks import Webhook

from simulator.behaviour import CATEGORIES, CATEGORY_NOUNS, PARAMS, TYPES

log = logging.getLogger(__name__)

BATCH_SIZE = 100  # Segment's limit per /v1/batch request
FLUSH_SECONDS = 0.25
ABANDON_AFTER = dt.timedelta(minutes=30)
NEXT_STATUS = {"placed": "paid", "paid": "shipped", "shipped": "delivered"}
STATUS_CHANGE_SHARE = 0.08  # of events, an order moves on
ANONYMOUS_SHARE = 0.2  # of sessions, by visitors without an account


@dataclass
class Stats:
    events: int = 0
    web_events: int = 0
    sessions: int = 0
    carts: int = 0
    cart_items: int = 0
    orders: int = 0
    status_changes: int = 0
    abandoned_carts: int = 0
    batches_sent: int = 0
    batches_failed: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        return ", ".join(
            f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in asdict(self).items()
        )


@dataclass
class _World:
    """What live mode needs to know about the shop, read once at start."""

    customer_ids: np.ndarray
    customer_weights: np.ndarray
    favourite: np.ndarray  # category index per customer (random when no truth is stored)
    product_ids: np.ndarray
    product_sku: list[str]
    product_category: np.ndarray
    product_cents: np.ndarray
    next_id: dict[str, int] = field(default_factory=dict)
    open_orders: deque[tuple[int, str]] = field(
        default_factory=deque
    )  # (order_id, status), oldest change first
    open_carts: dict[int, float] = field(default_factory=dict)  # cart_id -> epoch of its last change

    def take_id(self, table: str) -> int:
        self.next_id[table] = int(self.next_id[table]) + 1
        return self.next_id[table]


def _read_world(conn: psycopg.Connection, rng: np.random.Generator) -> _World:
    rows = conn.execute(
        """
        select c.customer_id, t.behaviour_type, t.favourite_category
        from shop.customers c left join simulator.customer_truth t using (customer_id)
        order by c.customer_id
        """
    ).fetchall()
    if not rows:
        raise RuntimeError("the shop has no customers: run `python -m simulator generate` (or cdnow) first")
    products = conn.execute(
        "select product_id, sku, category, price from shop.products where is_active and stock > 0 order by product_id"
    ).fetchall()
    if not products:
        raise RuntimeError("the shop has no products in stock: run `python -m simulator generate` first")
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    kind = np.array([TYPES.index(r[1]) if r[1] in TYPES else 1 for r in rows])
    weights = PARAMS.browse_sessions_per_year[kind] + PARAMS.orders_per_year[kind]
    fav = np.array(
        [CATEGORIES.index(r[2]) if r[2] in CATEGORIES else rng.integers(len(CATEGORIES)) for r in rows]
    )
    cat_index = {c: i for i, c in enumerate(CATEGORIES)}
    world = _World(
        customer_ids=ids,
        customer_weights=weights / weights.sum(),
        favourite=fav,
        product_ids=np.array([p[0] for p in products], dtype=np.int64),
        product_sku=[p[1] for p in products],
        product_category=np.array([cat_index.get(p[2], 0) for p in products]),
        product_cents=np.array([int(round(float(p[3]) * 100)) for p in products], dtype=np.int64),
    )
    for table, key in (
        ("shop.carts", "cart_id"),
        ("shop.cart_items", "cart_item_id"),
        ("shop.orders", "order_id"),
        ("shop.order_items", "order_item_id"),
    ):
        world.next_id[table] = conn.execute(f"select coalesce(max({key}), 0) from {table}").fetchone()[0]
    for order_id, status in conn.execute(
        "select order_id, status from shop.orders where status in ('placed', 'paid', 'shipped') order by updated_at, order_id"
    ):
        world.open_orders.append((order_id, status))
    for cart_id, updated in conn.execute("select cart_id, updated_at from shop.carts where status = 'open'"):
        world.open_carts[cart_id] = updated.timestamp()
    return world


def _uuid(rng: np.random.Generator) -> str:
    return str(uuid.UUID(int=int(rng.integers(0, 1 << 63)) << 64 | int(rng.integers(0, 1 << 63)), version=4))


def _iso(at: dt.datetime) -> str:
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _Sink:
    """Shop writes on one connection, web events batched to the collector or to web.events."""

    def __init__(
        self,
        conn: psycopg.Connection,
        collector_url: str | None,
        write_key: str | None,
        stats: Stats,
        shop_webhook_secret: str | None = None,
    ):
        self.conn = conn
        self.stats = stats
        self.events: list[dict] = []
        self.client = (
            httpx.Client(base_url=collector_url.rstrip("/"), auth=(write_key or "", ""), timeout=10.0)
            if collector_url
            else None
        )
        self.shop_webhook = Webhook(shop_webhook_secret) if shop_webhook_secret and collector_url else None

    def order_placed(self, event: dict) -> None:
        """The shop's signed `order.placed` webhook for a purchase (its web event without the
        secret). Sent after the order's rows commit, as a shop backend would."""
        if self.shop_webhook is None:
            self.web(event)
            return
        self.conn.commit()
        data = {**event["properties"], "user_id": event.get("userId"), "anonymous_id": event["anonymousId"]}
        body = orjson.dumps({"type": "order.placed", "timestamp": event["timestamp"], "data": data}).decode()
        now = dt.datetime.now(dt.UTC)
        webhook_id = f"order-{data['order_id']}"
        headers = {
            "webhook-id": webhook_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": self.shop_webhook.sign(webhook_id, now, body),
            "content-type": "application/json",
        }
        try:
            response = self.client.post("/webhooks/shop", content=body, headers=headers)
            if response.status_code >= 300:
                log.warning(
                    "collector answered the order webhook %s: %s", response.status_code, response.text[:200]
                )
        except httpx.HTTPError as error:
            log.warning("order webhook not delivered (%s)", error)

    def web(self, event: dict) -> None:
        self.events.append(event)
        self.stats.web_events += 1
        if len(self.events) >= BATCH_SIZE:
            self.flush()

    def flush(self) -> None:
        self.conn.commit()
        events, self.events = self.events, []
        if not events:
            return
        if self.client is not None:
            self._post(events)
        else:
            self._insert(events)

    def _post(self, events: list[dict]) -> None:
        body = orjson.dumps({"batch": events, "sentAt": _iso(dt.datetime.now(dt.UTC))})
        for attempt in range(3):
            try:
                response = self.client.post(
                    "/v1/batch", content=body, headers={"Content-Type": "application/json"}
                )
                if response.status_code < 300:
                    self.stats.batches_sent += 1
                    return
                log.warning("collector answered %s: %s", response.status_code, response.text[:200])
                if response.status_code < 500:
                    break  # a client error does not go away by retrying
            except httpx.HTTPError as error:
                log.warning("collector unreachable (%s), attempt %d", error, attempt + 1)
            time.sleep(0.2 * 2**attempt)
        self.stats.batches_failed += 1

    def _insert(self, events: list[dict]) -> None:
        now = dt.datetime.now(dt.UTC)
        with self.conn.cursor() as cur:
            cur.executemany(
                "insert into web.events (message_id, type, event, anonymous_id, user_id, properties, context, "
                "occurred_at, received_at) values (%s, %s, %s, %s, %s, %s::jsonb, %s::jsonb, %s, %s) "
                "on conflict (message_id) do nothing",
                [
                    (
                        e["messageId"],
                        e["type"],
                        e.get("event"),
                        e["anonymousId"],
                        e.get("userId"),
                        orjson.dumps(e.get("properties") or e.get("traits") or {}).decode(),
                        orjson.dumps(e["context"]).decode(),
                        e["timestamp"],
                        now,
                    )
                    for e in events
                ],
            )
        self.conn.commit()

    def close(self) -> None:
        self.flush()
        if self.client is not None:
            self.client.close()


class _Shop:
    """Sessions as generators: each `next()` performs one behavioural event."""

    def __init__(self, world: _World, sink: _Sink, rng: np.random.Generator, stats: Stats):
        self.world, self.sink, self.rng, self.stats = world, sink, rng, stats
        self.devices: dict[int, str] = {}
        self.logged_in: set[str] = set()

    def _now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    def _product(self, customer: int | None) -> int:
        w, rng = self.world, self.rng
        if customer is not None and rng.random() < 0.6:
            pool = np.flatnonzero(w.product_category == w.favourite[customer])
            if len(pool):
                return int(rng.choice(pool))
        return int(rng.integers(len(w.product_ids)))

    def _product_props(self, p: int) -> dict:
        w = self.world
        return {
            "product_id": str(w.product_ids[p]),
            "sku": w.product_sku[p],
            "category": CATEGORIES[w.product_category[p]],
            "price": int(w.product_cents[p]) / 100,
        }

    def _emit(
        self, kind: str, anonymous_id: str, user_id: str | None, channel: str, signed: bool = False, **fields
    ) -> None:
        event = {
            "type": kind,
            "anonymousId": anonymous_id,
            "context": {"channel": channel},
            "timestamp": _iso(self._now()),
            "messageId": _uuid(self.rng),
            **fields,
        }
        if user_id is not None:
            event["userId"] = user_id
        if signed:
            self.sink.order_placed(event)
        else:
            self.sink.web(event)
        self.stats.events += 1

    def session(self) -> Iterator[None]:
        """One visit, yielding after every event."""
        w, rng, conn = self.world, self.rng, self.sink.conn
        self.stats.sessions += 1
        customer = (
            None
            if rng.random() < ANONYMOUS_SHARE
            else int(rng.choice(len(w.customer_ids), p=w.customer_weights))
        )
        if customer is None:
            anonymous_id = _uuid(rng)
        else:
            anonymous_id = self.devices.get(customer) or self.devices.setdefault(customer, _uuid(rng))
        user_id = (
            str(w.customer_ids[customer]) if customer is not None and anonymous_id in self.logged_in else None
        )
        channel = "app" if rng.random() < 0.3 else "web"

        def login() -> Iterator[None]:
            nonlocal user_id
            if customer is not None and user_id is None:
                user_id = str(w.customer_ids[customer])
                self.logged_in.add(anonymous_id)
                self._emit("identify", anonymous_id, user_id, channel, traits={})
                yield

        self._emit(
            "page", anonymous_id, user_id, channel, name="Home", properties={"name": "Home", "path": "/"}
        )
        yield
        if customer is not None and rng.random() < 0.3:
            yield from login()
        if rng.random() < 0.3:
            cat = int(w.favourite[customer]) if customer is not None else int(rng.integers(len(CATEGORIES)))
            query = str(rng.choice(CATEGORY_NOUNS[cat])).lower()
            self._emit(
                "track",
                anonymous_id,
                user_id,
                channel,
                event="Products Searched",
                properties={"query": query},
            )
            yield
        viewed = [self._product(customer) for _ in range(1 + rng.poisson(2.0))]
        for p in viewed:
            path = f"/p/{w.product_sku[p]}"
            self._emit(
                "page",
                anonymous_id,
                user_id,
                channel,
                name="Product",
                properties={"name": "Product", "path": path},
            )
            yield
            self._emit(
                "track",
                anonymous_id,
                user_id,
                channel,
                event="Product Viewed",
                properties=self._product_props(p),
            )
            yield
        if rng.random() > 0.35:
            return
        # Add to cart: the shop creates the cart (bound to the customer once logged in).
        now = self._now()
        cart_id = w.take_id("shop.carts")
        conn.execute(
            "insert into shop.carts (cart_id, customer_id, anonymous_id, status, converted_order_id, created_at, "
            "updated_at) values (%s, %s, %s, 'open', null, %s, %s)",
            (cart_id, int(w.customer_ids[customer]) if user_id else None, anonymous_id, now, now),
        )
        self.stats.carts += 1
        w.open_carts[cart_id] = now.timestamp()
        lines: list[tuple[int, int, int]] = []  # (cart_item_id, product, quantity)
        for p in viewed[: 1 + int(rng.random() < 0.3)]:
            quantity = 1 + int(rng.random() < 0.15)
            item_id = w.take_id("shop.cart_items")
            now = self._now()
            conn.execute(
                "insert into shop.cart_items (cart_item_id, cart_id, product_id, quantity, unit_price, added_at, "
                "removed_at, updated_at) values (%s, %s, %s, %s, %s, %s, null, %s)",
                (item_id, cart_id, int(w.product_ids[p]), quantity, int(w.product_cents[p]) / 100, now, now),
            )
            conn.execute("update shop.carts set updated_at = %s where cart_id = %s", (now, cart_id))
            w.open_carts[cart_id] = now.timestamp()
            self.stats.cart_items += 1
            lines.append((item_id, p, quantity))
            props = {"cart_id": str(cart_id), **self._product_props(p), "quantity": quantity}
            self._emit("track", anonymous_id, user_id, channel, event="Product Added", properties=props)
            yield
        if customer is None or rng.random() > 0.45:
            return  # abandoned: the housekeeping marks it later
        yield from login()
        conn.execute(
            "update shop.carts set customer_id = %s where cart_id = %s",
            (int(w.customer_ids[customer]), cart_id),
        )
        subtotal = sum(int(w.product_cents[p]) * q for _, p, q in lines)
        order_id = w.take_id("shop.orders")
        products = [{**self._product_props(p), "quantity": q} for _, p, q in lines]
        checkout = {
            "order_id": str(order_id),
            "cart_id": str(cart_id),
            "value": subtotal / 100,
            "revenue": subtotal / 100,
        }
        self._emit(
            "track", anonymous_id, user_id, channel, event="Checkout Started",
            properties={**checkout, "currency": "USD", "products": products},
        )  # fmt: skip
        yield
        now = self._now()
        conn.execute(
            "insert into shop.orders (order_id, customer_id, status, currency, subtotal, discount, total, "
            "discount_code, placed_at, updated_at) values (%s, %s, 'placed', 'USD', %s, 0, %s, null, %s, %s)",
            (order_id, int(w.customer_ids[customer]), subtotal / 100, subtotal / 100, now, now),
        )
        for _, p, q in lines:
            conn.execute(
                "insert into shop.order_items (order_item_id, order_id, product_id, quantity, unit_price, discount, "
                "created_at, updated_at) values (%s, %s, %s, %s, %s, 0, %s, %s)",
                (
                    w.take_id("shop.order_items"),
                    order_id,
                    int(w.product_ids[p]),
                    q,
                    int(w.product_cents[p]) / 100,
                    now,
                    now,
                ),
            )
        conn.execute(
            "update shop.carts set status = 'converted', converted_order_id = %s, updated_at = %s where cart_id = %s",
            (order_id, now, cart_id),
        )
        self.stats.orders += 1
        w.open_carts.pop(cart_id, None)
        w.open_orders.append((order_id, "placed"))
        completed = {
            "order_id": str(order_id), "cart_id": str(cart_id), "total": subtotal / 100, "revenue": subtotal / 100,
            "discount": 0, "currency": "USD", "products": products,
        }  # fmt: skip
        self._emit(
            "track",
            anonymous_id,
            user_id,
            channel,
            event="Order Completed",
            properties=completed,
            signed=True,
        )
        yield

    def advance_order(self) -> bool:
        """Move the order whose status changed longest ago on to its next status."""
        if not self.world.open_orders:
            return False
        order_id, status = self.world.open_orders.popleft()
        new = NEXT_STATUS[status]
        cur = self.sink.conn.execute(
            "update shop.orders set status = %s, updated_at = %s where order_id = %s and status = %s",
            (new, self._now(), order_id, status),
        )
        if new in NEXT_STATUS:
            self.world.open_orders.append((order_id, new))
        if cur.rowcount:
            self.stats.status_changes += 1
            self.stats.events += 1
        return True

    def abandon_idle_carts(self) -> None:
        """The shop's housekeeping: open carts idle for a while become abandoned."""
        now = self._now()
        idle = [c for c, at in self.world.open_carts.items() if at < (now - ABANDON_AFTER).timestamp()]
        for cart_id in idle:
            self.sink.conn.execute(
                "update shop.carts set status = 'abandoned', updated_at = %s where cart_id = %s and status = 'open'",
                (now, cart_id),
            )
            del self.world.open_carts[cart_id]
        self.stats.abandoned_carts += len(idle)


def stream(
    url: str,
    rate: float,
    duration: float | None = None,
    collector_url: str | None = None,
    write_key: str | None = None,
    seed: int | None = None,
    should_stop: Callable[[], bool] | None = None,
    shop_webhook_secret: str | None = None,
) -> Stats:
    """Produce about `rate` behavioural events a second until `duration` seconds pass (or forever).

    An event is a web event or an order status change; shop rows follow from them.
    """
    if rate <= 0:
        raise ValueError("rate must be positive")
    rng = np.random.default_rng(seed)
    stats = Stats()
    started = time.monotonic()
    with psycopg.connect(url) as conn:
        world = _read_world(conn, rng)
        conn.commit()
        sink = _Sink(conn, collector_url, write_key, stats, shop_webhook_secret)
        shop = _Shop(world, sink, rng, stats)
        concurrent = max(1, min(100, int(rate // 20)))  # interleaved visits, each done in seconds
        sessions: list[Iterator[None]] = [shop.session() for _ in range(concurrent)]
        last_flush = last_housekeeping = time.monotonic()
        try:
            while True:
                now = time.monotonic()
                elapsed = now - started
                if (duration is not None and elapsed >= duration) or (should_stop and should_stop()):
                    break
                due = int(rate * elapsed) + 1 - stats.events
                if due <= 0:
                    time.sleep(min(0.05, (stats.events - rate * elapsed + 1) / rate))
                else:
                    for _ in range(min(due, 1000)):
                        if rng.random() < STATUS_CHANGE_SHARE and shop.advance_order():
                            continue
                        i = int(rng.integers(len(sessions)))
                        try:
                            next(sessions[i])
                        except StopIteration:
                            sessions[i] = shop.session()
                if now - last_flush >= FLUSH_SECONDS:
                    sink.flush()
                    last_flush = now
                if now - last_housekeeping >= 10:
                    shop.abandon_idle_carts()
                    last_housekeeping = now
        finally:
            sink.close()
    stats.seconds = time.monotonic() - started
    log.info("live: %s", stats)
    return stats
