"""Site and app behaviour: sessions, Segment events (web.events), carts and cart items.

Every order comes from a purchase session that ends in `Order Completed` at the
order's placed_at; browse sessions view, search and sometimes add to a cart that is
then abandoned; email clicks open sessions tagged with the campaign; anonymous
visitors browse without an account. Each device has an anonymousId; the first
session in which its owner logs in carries an `identify` call, events after it carry
the userId, and earlier sessions stay anonymous, as Segment's analytics.js does.

Everything is built as flat arrays (sessions -> views -> adds -> events) and sorted
once, so millions of events cost a few seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from simulator import strings as s
from simulator.behaviour import (
    BARGAIN,
    CATEGORIES,
    CATEGORY_NOUNS,
    CATEGORY_POPULARITY,
    CHURNED_SESSIONS_PER_YEAR,
    CHURNING,
    LOCATION_SHARES,
    LOCATIONS,
    ONE_TIME,
    PARAMS,
    Calendar,
    expected_activity,
    sample_times,
)
from simulator.catalog import Catalog
from simulator.customers import Customers
from simulator.email import Clicks
from simulator.load import Table
from simulator.orders import CURRENCY, Orders

BROWSE, SIGNUP, PURCHASE, CLICK, ANONYMOUS = range(5)
ANON = 5  # parameter row of anonymous visitors, after the five behaviour types
VIEWS_PER_SESSION = np.append(PARAMS.views_per_session, 1.0)
SEARCH_RATE = np.append(PARAMS.search_rate, 0.25)
ADD_RATE = np.append(PARAMS.add_rate, 0.2)
ANONYMOUS_DEVICES_PER_CUSTOMER_YEAR = 0.3
LOGIN_RATE = 0.25  # chance a browse session is the one where the owner logs in
OPEN_CART_HOURS = 24  # carts idle for less than this at the end are still open

PAGE, TRACK, IDENTIFY = range(3)
CALL_TYPES = ("page", "track", "identify")
EVENT_NAMES = (
    None,
    "Product Viewed",
    "Products Searched",
    "Product Added",
    "Product Removed",
    "Checkout Started",
    "Order Completed",
)
NO_EVENT, VIEWED, SEARCHED, ADDED, REMOVED, CHECKOUT, COMPLETED = range(7)
# seq orders events inside a session
SEQ_LANDING, SEQ_LOGIN_EARLY, SEQ_SEARCH, SEQ_VIEWS, SEQ_ADDS, SEQ_REMOVE, SEQ_LOGIN_LATE, SEQ_CHECKOUT = (
    0,
    1,
    2,
    10,
    1000,
    1500,
    1900,
    2000,
)
MAX_VIEWS = 400
SEARCH_TERMS = [n.lower() for nouns in CATEGORY_NOUNS for n in nouns]
NOUN_COUNT = np.array([len(n) for n in CATEGORY_NOUNS])
NOUN_START = np.concatenate([[0], np.cumsum(NOUN_COUNT)[:-1]])  # each category's first term
EVENT_STREAMS = 2  # connections loading web.events at once (see load.Loader)


@dataclass(frozen=True)
class Devices:
    customer: np.ndarray  # -1: an anonymous visitor's device
    app: np.ndarray
    logged_in_before: np.ndarray  # its owner logged in before the window
    anonymous_id: pa.Array
    first_of_customer: np.ndarray  # per customer, index of their first device
    per_customer: np.ndarray  # per customer, how many devices


def _devices(rng: np.random.Generator, c: Customers, cal: Calendar, part: Part) -> Devices:
    n = part.stop - part.start
    count = 1 + (rng.random(n) < 0.45) + (rng.random(n) < 0.15)
    first_local = _group_starts(count)
    owner = part.start + np.repeat(np.arange(n), count)
    rank = np.arange(len(owner)) - first_local[owner - part.start]
    first = np.zeros(c.size, dtype=np.int64)
    first[part.start : part.stop] = first_local
    per_customer = np.zeros(c.size, dtype=np.int64)
    per_customer[part.start : part.stop] = count
    n_anon = part.anonymous_devices
    customer = np.concatenate([owner, np.full(n_anon, -1)])
    rank = np.concatenate([rank, np.zeros(n_anon, dtype=np.int64)])
    app_share = np.where(customer < 0, 0.15, np.where(rank == 0, 0.25, 0.55))
    app = rng.random(len(customer)) < app_share
    existing = (customer >= 0) & (c.signup < cal.start_epoch)[np.maximum(customer, 0)]
    logged = existing & (rng.random(len(customer)) < np.where(rank == 0, 0.7, 0.3))
    return Devices(customer, app, logged, s.uuids(rng, len(customer)), first, per_customer)


@dataclass
class Sessions:
    customer: np.ndarray
    device: np.ndarray
    kind: np.ndarray
    at: np.ndarray  # ms: start (purchase sessions: the order's placed_at, where they end)
    order: np.ndarray  # -1 unless a purchase session
    campaign: np.ndarray  # -1 unless opened by an email click
    params: np.ndarray  # behaviour type, or ANON

    @property
    def purchases(self) -> np.ndarray:
        return np.flatnonzero(self.kind == PURCHASE)


def _sessions(
    rng: np.random.Generator, c: Customers, o: Orders, clicks: Clicks, dev: Devices, cal: Calendar, part: Part
) -> Sessions:
    start, end = cal.start_epoch, cal.end_epoch
    parts: list[dict[str, np.ndarray]] = []

    def pick_device(who: np.ndarray, primary: float) -> np.ndarray:
        r = rng.random(len(who))
        other = (rng.random(len(who)) * dev.per_customer[who]).astype(np.int64)
        return dev.first_of_customer[who] + np.where(r < primary, 0, other)

    def add(kind, customer, device, at, order=None, campaign=None, params=None) -> None:
        n = len(customer)
        parts.append(
            dict(
                customer=customer,
                device=device,
                kind=np.full(n, kind),
                at=at,
                order=np.full(n, -1) if order is None else order,
                campaign=np.full(n, -1) if campaign is None else campaign,
                params=c.behaviour[customer] if params is None else params,
            )
        )

    # Browsing while active, and rarely after churning.
    ids = np.arange(part.start, part.stop)
    kind = c.behaviour[ids]
    individual = np.sqrt(c.order_rate[ids] / PARAMS.orders_per_year[kind])
    individual = np.where(kind == ONE_TIME, 1.0, individual)
    bargain = kind == BARGAIN
    for lo, hi, rate in (
        (c.active_from[ids], c.buying_until[ids], PARAMS.browse_sessions_per_year[kind] * individual),
        (
            c.buying_until[ids],
            np.full(len(ids), end),
            np.where(kind == CHURNING, CHURNED_SESSIONS_PER_YEAR, 0.0),
        ),
    ):
        mass = np.where(
            bargain,
            expected_activity(cal.sale_hungry, cal, lo, hi),
            expected_activity(cal.ordinary, cal, lo, hi),
        )
        count = rng.poisson(rate * mass / 365.0)
        local = np.repeat(np.arange(len(ids)), count)
        who = ids[local]
        at = np.empty(len(who), dtype=np.int64)
        for mask, curve in ((bargain[local], cal.sale_hungry), (~bargain[local], cal.ordinary)):
            at[mask] = sample_times(
                rng, curve, cal, lo[local][mask], hi[local][mask], c.utc_offset[who][mask]
            )
        add(BROWSE, who, pick_device(who, 0.6), at * 1000 + rng.integers(0, 1000, len(who)))

    # Sign-ups inside the window: the session where the account is created.
    who = ids[c.signup[ids] >= start]
    add(SIGNUP, who, dev.first_of_customer[who], (c.signup[who] - 45) * 1000)
    # One purchase session per order, ending at placed_at.
    mine = np.flatnonzero((o.customer >= part.start) & (o.customer < part.stop))
    add(PURCHASE, o.customer[mine], pick_device(o.customer[mine], 0.6), o.placed_at[mine] * 1000, order=mine)
    # Email clicks open the site on the customer's main device.
    mine = np.flatnonzero((clicks.customer >= part.start) & (clicks.customer < part.stop))
    who = clicks.customer[mine]
    add(CLICK, who, dev.first_of_customer[who], clicks.at[mine] * 1000 + 1500, campaign=clicks.campaign[mine])
    # Anonymous visitors: a few sessions each.
    anon_dev = np.flatnonzero(dev.customer < 0)
    count = 1 + rng.poisson(0.8, len(anon_dev))
    adev = np.repeat(anon_dev, count)
    loc = rng.choice(len(LOCATIONS), size=len(adev), p=LOCATION_SHARES)
    offset = np.array([x[2] for x in LOCATIONS])[loc]
    at = sample_times(rng, cal.ordinary, cal, np.full(len(adev), start), np.full(len(adev), end), offset)
    add(
        ANONYMOUS,
        np.full(len(adev), -1),
        adev,
        at * 1000 + rng.integers(0, 1000, len(adev)),
        params=np.full(len(adev), ANON),
    )

    cols = {k: np.concatenate([p[k] for p in parts]).astype(np.int64) for k in parts[0]}
    return Sessions(**cols)


def _group_starts(counts: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)


def _within(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(group, position in group) for each element of consecutive groups of `counts`."""
    group = np.repeat(np.arange(len(counts)), counts)
    return group, np.arange(len(group)) - _group_starts(counts)[group]


@dataclass(frozen=True)
class Part:
    """A slice of the customers (and anonymous visitors) whose web activity is built together.

    Parts are built one after another so loading the first overlaps building the next;
    ids continue from the previous part's.
    """

    start: int  # customer index range
    stop: int
    anonymous_devices: int
    first_cart_id: int = 1
    first_cart_item_id: int = 1
    first_event: int = 0  # row number of the first event: message ids continue from there


def parts(c: Customers, cal: Calendar, size: int = 25_000) -> list[Part]:
    """Customer ranges of about `size` (ids are filled in as the parts are built)."""
    n_anon = int(round(ANONYMOUS_DEVICES_PER_CUSTOMER_YEAR * c.size * cal.days / 365))
    k = max(1, -(-c.size // size))
    bounds = np.linspace(0, c.size, k + 1).astype(int)
    anon = np.diff(np.linspace(0, n_anon, k + 1).astype(int))
    return [Part(int(a), int(b), int(m)) for a, b, m in zip(bounds[:-1], bounds[1:], anon, strict=True)]


@dataclass(frozen=True)
class Built:
    tables: list[Table]
    carts: int
    cart_items: int
    events: int


def build(
    rng: np.random.Generator,
    c: Customers,
    catalog: Catalog,
    o: Orders,
    clicks: Clicks,
    cal: Calendar,
    part: Part,
) -> Built:
    """One part's carts, cart items and events.

    Each step draws from `rng` in turn, so the steps' order is the output's:
    reordering them changes every table (test_simulator_determinism)."""
    end_ms = cal.end_epoch * 1000
    dev = _devices(rng, c, cal, part)
    ss = _sessions(rng, c, o, clicks, dev, cal, part)
    login = _logins(rng, ss, dev)
    views = _views(rng, c, catalog, o, ss)
    searches = _searches(rng, catalog, ss, views)
    adds = _adds(rng, o, ss, views)
    ev = _components(ss, login, views, searches, adds)
    e_time = _event_times(rng, ev, ss, end_ms)
    add_time = e_time[np.flatnonzero(ev.event == ADDED)]  # in (session, position) order, as adds
    remove_time = np.full(len(adds.session), -1, dtype=np.int64)
    remove_time[adds.removed] = e_time[np.flatnonzero(ev.event == REMOVED)]
    carts, cart_id_of_sess = _carts(ss, dev, login, adds, add_time, remove_time, part, end_ms)
    cart_items = _cart_items(catalog, adds, add_time, remove_time, cart_id_of_sess, part)
    properties = _properties(catalog, o, ss, login, views, searches, adds, cart_id_of_sess)
    events = _events_table(rng, c, ss, dev, login, ev, e_time, properties, clicks, part, end_ms)
    return Built([carts, cart_items, events], carts.rows, cart_items.rows, events.rows)


@dataclass(frozen=True)
class Logins:
    here: np.ndarray  # per session: its device's owner logs in during it (an identify call)
    before: np.ndarray  # per session: the device was identified before it
    seq: np.ndarray  # per session: where in it the identify call falls

    @property
    def sessions(self) -> np.ndarray:
        return np.flatnonzero(self.here)


def _logins(rng: np.random.Generator, ss: Sessions, dev: Devices) -> Logins:
    """Per device, the first candidate session (sign-up, purchase, or a browse or click
    session by chance) is where its owner logs in; sessions after it are identified."""
    n_sess = len(ss.kind)
    candidate = (ss.kind == SIGNUP) | (ss.kind == PURCHASE)
    candidate |= ((ss.kind == BROWSE) | (ss.kind == CLICK)) & (rng.random(n_sess) < LOGIN_RATE)
    by_device = np.lexsort((ss.at, ss.device))
    cand_sorted = candidate[by_device].astype(np.int64)
    dev_sorted = ss.device[by_device]
    new_group = np.concatenate([[True], dev_sorted[1:] != dev_sorted[:-1]])
    first_idx = np.maximum.accumulate(np.where(new_group, np.arange(n_sess), 0))
    cum = np.cumsum(cand_sorted)
    prior_sorted = cum - cand_sorted - (cum[first_idx] - cand_sorted[first_idx])
    prior = np.empty(n_sess, dtype=np.int64)
    prior[by_device] = prior_sorted
    before = dev.logged_in_before[ss.device]
    login_seq = np.where((ss.kind == PURCHASE) & (rng.random(n_sess) < 0.5), SEQ_LOGIN_LATE, SEQ_LOGIN_EARLY)
    return Logins(here=candidate & (prior == 0) & ~before, before=before | (prior > 0), seq=login_seq)


@dataclass(frozen=True)
class Views:
    count: np.ndarray  # per session
    start: np.ndarray  # per session: index of its first view
    bought: np.ndarray  # per session: items of its order (purchase sessions), else 0
    session: np.ndarray  # per view
    position: np.ndarray  # per view: its rank in the session
    product: np.ndarray  # per view


def _views(rng: np.random.Generator, c: Customers, catalog: Catalog, o: Orders, ss: Sessions) -> Views:
    """Product views: mostly the customer's favourite category near their price level;
    a purchase session first views the products it buys."""
    n_sess = len(ss.kind)
    ptype = ss.params
    buy = ss.kind == PURCHASE
    items = np.where(buy, o.items_per_order[np.maximum(ss.order, 0)], 0)
    n_views = np.where(
        ss.kind == SIGNUP,
        rng.poisson(0.8, n_sess),
        np.where(buy, items + rng.poisson(0.8, n_sess), 1 + rng.poisson(VIEWS_PER_SESSION[ptype])),
    )
    n_views = np.minimum(n_views, MAX_VIEWS)
    n_views = np.where(buy, np.maximum(n_views, items), n_views)
    v_sess, v_pos = _within(n_views)
    vstart = _group_starts(n_views)
    cust = ss.customer
    anon_view = cust[v_sess] < 0
    focus = np.where(
        anon_view,
        rng.choice(len(CATEGORIES), size=len(v_sess), p=CATEGORY_POPULARITY),
        c.favourite[cust[v_sess]],
    )
    share = np.where(
        anon_view, 0.3, np.minimum(PARAMS.favourite_share[np.minimum(ptype[v_sess], 4)] + 0.05, 0.95)
    )
    level = np.where(anon_view, rng.beta(2, 2, len(v_sess)), c.price_level[cust[v_sess]])
    v_product = catalog.pick_products(rng, catalog.pick_categories(rng, focus, share), level)
    b_sess, b_pos = _within(items * buy)
    v_product[vstart[b_sess] + b_pos] = o.item_product[o.item_start[ss.order[b_sess]] + b_pos]
    return Views(n_views, vstart, items, v_sess, v_pos, v_product)


@dataclass(frozen=True)
class Searches:
    session: np.ndarray  # the sessions with a search
    term: np.ndarray  # per search: index into SEARCH_TERMS


def _searches(rng: np.random.Generator, catalog: Catalog, ss: Sessions, views: Views) -> Searches:
    """Some sessions search for a noun of the category of the first product they view."""
    n_sess = len(ss.kind)
    has_search = (ss.kind != SIGNUP) & (rng.random(n_sess) < SEARCH_RATE[ss.params])
    first_view = views.product[np.minimum(views.start, len(views.product) - 1)]
    first_cat = np.where(views.count > 0, catalog.category[first_view], 0)
    term = NOUN_START[first_cat] + (rng.random(n_sess) * NOUN_COUNT[first_cat]).astype(np.int64)
    session = np.flatnonzero(has_search)
    return Searches(session, term[session])


@dataclass(frozen=True)
class Adds:
    count: np.ndarray  # per session
    session: np.ndarray  # per add, in (session, position) order
    position: np.ndarray
    product: np.ndarray
    quantity: np.ndarray
    removed: np.ndarray  # indexes of the adds removed again later in their session


def _adds(rng: np.random.Generator, o: Orders, ss: Sessions, views: Views) -> Adds:
    """Cart adds: every item a purchase session buys (sometimes one more, removed
    again), and in some browse sessions one or two viewed products (the second
    sometimes removed)."""
    n_sess = len(ss.kind)
    ptype = ss.params
    buy = ss.kind == PURCHASE
    items = views.bought
    browse_like = (ss.kind == BROWSE) | (ss.kind == CLICK) | (ss.kind == ANONYMOUS)
    adds_browse = browse_like & (views.count > 0) & (rng.random(n_sess) < ADD_RATE[ptype])
    n_add_browse = np.where(adds_browse, np.minimum(1 + (rng.random(n_sess) < 0.3), views.count), 0)
    extra = buy & (views.count > items) & (rng.random(n_sess) < 0.15)
    n_add = np.where(buy, items + extra, n_add_browse)
    removes = (adds_browse & (n_add_browse >= 2) & (rng.random(n_sess) < 0.3)) | extra
    a_sess, a_pos = _within(n_add)
    a_product = views.product[views.start[a_sess] + a_pos]
    a_item = np.where(
        buy[a_sess] & (a_pos < items[a_sess]), o.item_start[np.maximum(ss.order[a_sess], 0)] + a_pos, -1
    )
    a_qty = np.where(a_item >= 0, o.item_quantity[np.maximum(a_item, 0)], 1)
    removed = np.flatnonzero(removes[a_sess] & (a_pos == n_add[a_sess] - 1))
    return Adds(n_add, a_sess, a_pos, a_product, a_qty, removed)


@dataclass(frozen=True)
class Components:
    """Every event, grouped by component in a fixed order (_properties follows it)."""

    session: np.ndarray
    seq: np.ndarray  # order inside the session
    call: np.ndarray  # PAGE, TRACK, IDENTIFY
    event: np.ndarray  # index into EVENT_NAMES


def _components(ss: Sessions, login: Logins, views: Views, searches: Searches, adds: Adds) -> Components:
    n_sess = len(ss.kind)
    login_sess = login.sessions
    buy_sess = ss.purchases
    parts = (
        (np.arange(n_sess), np.full(n_sess, SEQ_LANDING), PAGE, NO_EVENT),
        (login_sess, login.seq[login_sess], IDENTIFY, NO_EVENT),
        (searches.session, np.full(len(searches.session), SEQ_SEARCH), TRACK, SEARCHED),
        (views.session, SEQ_VIEWS + 2 * views.position, PAGE, NO_EVENT),
        (views.session, SEQ_VIEWS + 2 * views.position + 1, TRACK, VIEWED),
        (adds.session, SEQ_ADDS + adds.position, TRACK, ADDED),
        (adds.session[adds.removed], np.full(len(adds.removed), SEQ_REMOVE), TRACK, REMOVED),
        (buy_sess, np.full(len(buy_sess), SEQ_CHECKOUT), TRACK, CHECKOUT),
        (buy_sess, np.full(len(buy_sess), SEQ_CHECKOUT + 1), TRACK, COMPLETED),
    )
    return Components(
        session=np.concatenate([p[0] for p in parts]),
        seq=np.concatenate([p[1] for p in parts]),
        call=np.concatenate([np.full(len(p[0]), p[2], dtype=np.int8) for p in parts]),
        event=np.concatenate([np.full(len(p[0]), p[3], dtype=np.int8) for p in parts]),
    )


def _event_times(rng: np.random.Generator, ev: Components, ss: Sessions, end_ms: int) -> np.ndarray:
    """Each event's time (ms): gaps by event kind accumulated within its session; a
    purchase session ends at its order's placed_at, others start at the session's time
    (and end before the window does)."""
    n_ev = len(ev.session)
    ord_s = np.argsort(ev.session * 4096 + ev.seq, kind="stable")  # seq < 4096
    kind_sorted = ev.event[ord_s]
    type_sorted = ev.call[ord_s]
    gap = np.zeros(n_ev, dtype=np.int64)
    exp = rng.exponential(1.0, n_ev)
    gap = np.where(type_sorted == PAGE, 2000 + (40000 * exp).astype(np.int64), gap)
    gap = np.where(type_sorted == IDENTIFY, 5000 + (30000 * exp).astype(np.int64), gap)
    gap = np.where(kind_sorted == VIEWED, 100 + (800 * rng.random(n_ev)).astype(np.int64), gap)
    gap = np.where(kind_sorted == SEARCHED, 1000 + (20000 * exp).astype(np.int64), gap)
    gap = np.where(
        (kind_sorted == ADDED) | (kind_sorted == REMOVED), 2000 + (30000 * exp).astype(np.int64), gap
    )
    gap = np.where(kind_sorted == CHECKOUT, 5000 + (40000 * exp).astype(np.int64), gap)
    gap = np.where(kind_sorted == COMPLETED, 30000 + (90000 * exp).astype(np.int64), gap)
    sess_sorted = ev.session[ord_s]
    first = np.concatenate([[True], sess_sorted[1:] != sess_sorted[:-1]])
    gap[first] = 0
    cum = np.cumsum(gap)
    first_pos = np.maximum.accumulate(np.where(first, np.arange(n_ev), 0))
    rel_sorted = cum - cum[first_pos]
    duration = np.zeros(len(ss.kind), dtype=np.int64)
    np.maximum.at(duration, sess_sorted, rel_sorted)
    start_ms = np.where(ss.kind == PURCHASE, ss.at - duration, np.minimum(ss.at, end_ms - duration - 1000))
    e_time = np.empty(n_ev, dtype=np.int64)
    e_time[ord_s] = start_ms[sess_sorted] + rel_sorted
    return e_time


def _carts(
    ss: Sessions,
    dev: Devices,
    login: Logins,
    adds: Adds,
    add_time: np.ndarray,
    remove_time: np.ndarray,
    part: Part,
    end_ms: int,
) -> tuple[Table, np.ndarray]:
    """shop.carts: one cart per session with adds, ids in creation order; and each
    session's cart id (-1 without one)."""
    n_sess = len(ss.kind)
    buy = ss.kind == PURCHASE
    a_first = np.concatenate([[0], np.cumsum(adds.count)])
    cart_sess = np.flatnonzero(adds.count > 0)
    created = add_time[a_first[cart_sess]]
    last_touch = np.maximum(
        np.maximum.reduceat(add_time, a_first[cart_sess]),
        np.maximum.reduceat(remove_time, a_first[cart_sess]),
    )
    converted = buy[cart_sess]
    updated = np.where(converted, ss.at[cart_sess], last_touch)
    status = np.where(converted, 0, np.where(updated >= end_ms - OPEN_CART_HOURS * 3600 * 1000, 1, 2))
    cart_rank = np.lexsort((cart_sess, created))
    cart_id_of_sess = np.full(n_sess, -1, dtype=np.int64)
    cart_id_of_sess[cart_sess[cart_rank]] = part.first_cart_id + np.arange(len(cart_sess))
    cust = ss.customer
    identified = (login.before | login.here)[cart_sess] & (cust[cart_sess] >= 0)
    cart_customer = np.where(identified, cust[cart_sess] + 1, -1)[cart_rank]
    cs = cart_sess[cart_rank]  # rows sorted by cart_id
    carts = Table(
        "shop.carts",
        {
            "cart_id": s.ints(part.first_cart_id + np.arange(len(cs))),
            "customer_id": s.with_nulls(s.ints(np.maximum(cart_customer, 0)), cart_customer < 0),
            "anonymous_id": dev.anonymous_id.take(ss.device[cs]),
            "status": s.pick(("converted", "open", "abandoned"), status[cart_rank]),
            "converted_order_id": s.with_nulls(s.ints(ss.order[cs] + 1), ~converted[cart_rank]),
            "created_at": s.timestamps(created[cart_rank], "ms"),
            "updated_at": s.timestamps(updated[cart_rank], "ms"),
        },
    )
    return carts, cart_id_of_sess


def _cart_items(
    catalog: Catalog,
    adds: Adds,
    add_time: np.ndarray,
    remove_time: np.ndarray,
    cart_id_of_sess: np.ndarray,
    part: Part,
) -> Table:
    """shop.cart_items: one row per add, sorted by cart and position."""
    rank = np.lexsort((adds.position, cart_id_of_sess[adds.session]))
    product = adds.product[rank]
    removed_at = remove_time[rank]
    return Table(
        "shop.cart_items",
        {
            "cart_item_id": s.ints(part.first_cart_item_id + np.arange(len(adds.session))),
            "cart_id": s.ints(cart_id_of_sess[adds.session][rank]),
            "product_id": s.ints(product + 1),
            "quantity": s.ints(adds.quantity[rank]),
            "unit_price": s.money(catalog.price_cents[product]),
            "added_at": s.timestamps(add_time[rank], "ms"),
            "removed_at": s.with_nulls(s.timestamps(np.maximum(removed_at, 0), "ms"), removed_at < 0),
            "updated_at": s.timestamps(np.maximum(add_time[rank], removed_at), "ms"),
        },
    )


def _properties(
    catalog: Catalog,
    o: Orders,
    ss: Sessions,
    login: Logins,
    views: Views,
    searches: Searches,
    adds: Adds,
    cart_id_of_sess: np.ndarray,
) -> pa.Array:
    """Each event's Segment properties (JSON text), in the order of _components."""
    props: list[pa.Array] = [
        pc.if_else(
            pa.array(ss.kind == SIGNUP),
            '{"name":"Sign Up","path":"/account/signup"}',
            '{"name":"Home","path":"/"}',
        ),
        pa.array(["{}"] * len(login.sessions), type=pa.string()),
        s.concat('{"query":"', s.pick(SEARCH_TERMS, searches.term), '"}'),
        catalog.page_json.take(views.product),
        catalog.viewed_json.take(views.product),
    ]
    cart_text = s.ints(np.maximum(cart_id_of_sess, 0))
    added = s.concat(
        '{"cart_id":"',
        cart_text.take(adds.session),
        '",',
        catalog.json_fields.take(adds.product),
        ',"quantity":',
        s.ints(adds.quantity),
        "}",
    )
    props += [added, added.take(adds.removed)]
    products = _order_products(o, catalog)
    buy_sess = ss.purchases
    bo = ss.order[buy_sess]
    oid = s.ints(bo + 1)
    total = s.money(o.subtotal[bo] - o.discount[bo])
    coupon_names = pa.array(list(o.coupon_names) + [""], type=pa.string())
    coupon = coupon_names.take(pa.array(np.where(o.coupon[bo] < 0, len(o.coupon_names), o.coupon[bo])))
    head = s.concat('{"order_id":"', oid, '","cart_id":"', cart_text.take(buy_sess), '",')
    tail = s.concat(',"currency":"', CURRENCY, '","products":[', products.take(bo), "]}")
    props.append(s.concat(head, '"value":', total, ',"revenue":', total, tail))
    props.append(
        s.concat(
            head,
            '"total":',
            total,
            ',"revenue":',
            total,
            ',"discount":',
            s.money(o.discount[bo]),
            s.optional(o.coupon[bo] >= 0, ',"coupon":"', coupon, '"'),
            tail,
        )
    )
    return pa.concat_arrays([s.as_chunk(p) for p in props])


def _events_table(
    rng: np.random.Generator,
    c: Customers,
    ss: Sessions,
    dev: Devices,
    login: Logins,
    ev: Components,
    e_time: np.ndarray,
    properties: pa.Array,
    clicks: Clicks,
    part: Part,
    end_ms: int,
) -> Table:
    """web.events in time order: identity (userId once logged in), context (channel, and
    the campaign on landings from email clicks) and arrival (apps send late, a few
    after hours offline)."""
    n_ev = len(ev.session)
    e_cust = ss.customer[ev.session]
    logged = (login.before[ev.session] | (login.here[ev.session] & (ev.seq >= login.seq[ev.session]))) & (
        e_cust >= 0
    )
    e_dev = ss.device[ev.session]
    app = dev.app[e_dev]
    delay = np.where(
        app,
        500 + (rng.random(n_ev) * 30000).astype(np.int64),
        50 + (rng.random(n_ev) * 2000).astype(np.int64),
    )
    offline = app & (rng.random(n_ev) < 0.03)
    delay = np.where(offline, 600_000 + (rng.random(n_ev) * 8 * 3600_000).astype(np.int64), delay)
    received = np.minimum(e_time + delay, np.maximum(end_ms - 1, e_time))
    # context from a small dictionary: the channel, plus the campaign on landings from email clicks
    campaign_landing = (ev.seq == SEQ_LANDING) & (ss.campaign[ev.session] >= 0)
    contexts = ['{"channel":"web"}', '{"channel":"app"}'] + [
        f'{{"channel":"{channel}","campaign":{{"source":"email","medium":"email","name":"{name}"}}}}'
        for name in clicks.names
        for channel in ("web", "app")
    ]
    context_code = np.where(campaign_landing, 2 + 2 * np.maximum(ss.campaign[ev.session], 0), 0) + app

    final = np.argsort(e_time, kind="stable")  # ties keep (component) order: deterministic
    t = e_time[final]
    user = s.ints(e_cust[final] + 1)
    return Table(
        "web.events",
        {
            "message_id": s.ordered_uuids(rng, len(t), first=part.first_event),
            "type": s.pick(CALL_TYPES, ev.call[final]),
            "event": s.pick(EVENT_NAMES, ev.event[final]),
            "anonymous_id": dev.anonymous_id.take(pa.array(e_dev[final])),
            "user_id": s.with_nulls(user, ~logged[final]),
            "properties": properties.take(pa.array(final)),
            "context": s.pick(contexts, context_code[final]),
            "occurred_at": t.astype("datetime64[ms]"),
            "received_at": received[final].astype("datetime64[ms]"),
        },
        binary=True,
        jsonb=frozenset({"properties", "context"}),
        streams=EVENT_STREAMS if c.size > 25_000 else 1,
    )


def _order_products(o: Orders, catalog: Catalog) -> pa.Array:
    """Each order's Segment `products` array body: {..},{..} per item."""
    item = s.concat(
        "{", catalog.json_fields.take(o.item_product), ',"quantity":', s.ints(o.item_quantity), "}"
    )
    lists = pa.ListArray.from_arrays(pa.array(o.item_start.astype(np.int32)), s.as_chunk(item))
    return s.as_chunk(pc.binary_join(lists, ","))
