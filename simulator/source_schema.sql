-- The source systems a real shop has, as the simulator (or the CDNOW loader)
-- writes them into the `shop` database. extract_load reads these tables
-- incrementally by `updated_at` (or, for the append-only exports, `received_at`:
-- when a row arrived) and never writes to them. Every timestamp is UTC.

create schema if not exists shop;      -- the shop's own database
create schema if not exists esp;       -- the email provider's event export
create schema if not exists web;       -- web and app tracking (Segment warehouse layout)
create schema if not exists simulator; -- ground truth for evaluation; never extracted

create table if not exists shop.customers (
    customer_id bigint primary key,
    email text not null unique,
    first_name text,                        -- null for some: templates need a fallback
    last_name text,
    accepts_email_marketing boolean not null,
    email_consent_at timestamptz,           -- when marketing consent was given
    timezone text not null,                 -- IANA name, for quiet hours
    country text not null,
    signup_at timestamptz not null,
    created_at timestamptz not null,
    updated_at timestamptz not null
);

create table if not exists shop.products (
    product_id bigint primary key,
    sku text not null unique,
    name text not null,
    category text not null,
    price numeric(10, 2) not null,
    image_url text not null,
    stock integer not null,
    is_active boolean not null,
    created_at timestamptz not null,
    updated_at timestamptz not null
);

create table if not exists shop.orders (
    order_id bigint primary key,
    customer_id bigint not null references shop.customers,
    -- placed -> paid -> shipped -> delivered, or cancelled / refunded later
    status text not null,
    currency text not null,
    subtotal numeric(12, 2) not null,
    discount numeric(12, 2) not null,
    total numeric(12, 2) not null,
    discount_code text,
    placed_at timestamptz not null,
    updated_at timestamptz not null         -- bumped on every status change
);

create table if not exists shop.order_items (
    order_item_id bigint primary key,
    order_id bigint not null references shop.orders,
    product_id bigint not null references shop.products,
    quantity integer not null,
    unit_price numeric(10, 2) not null,
    discount numeric(10, 2) not null,
    created_at timestamptz not null,
    updated_at timestamptz not null
);

create table if not exists shop.carts (
    cart_id bigint primary key,
    customer_id bigint references shop.customers,  -- null while anonymous
    anonymous_id text not null,
    status text not null,                   -- open, converted, abandoned
    converted_order_id bigint,
    created_at timestamptz not null,
    updated_at timestamptz not null
);

create table if not exists shop.cart_items (
    cart_item_id bigint primary key,
    cart_id bigint not null references shop.carts,
    product_id bigint not null references shop.products,
    quantity integer not null,
    unit_price numeric(10, 2) not null,
    added_at timestamptz not null,
    removed_at timestamptz,
    updated_at timestamptz not null
);

-- One row per provider event, as ESPs export them (SendGrid, Postmark, SES).
create table if not exists esp.email_events (
    event_id text primary key,
    message_id text not null,               -- the provider's id of one email
    campaign text not null,
    email text not null,
    event_type text not null,  -- send, delivery, open, click, bounce, complaint, unsubscribe
    url text,                               -- clicks only
    bounce_type text,                       -- bounces only: hard, soft
    occurred_at timestamptz not null,
    received_at timestamptz not null        -- when it arrived in the export (bounces: up to days late)
);
-- an export created before received_at existed (the next generate refills it)
alter table esp.email_events add column if not exists received_at timestamptz;

-- Segment's warehouse layout, one table for all calls: track, page, identify.
create table if not exists web.events (
    message_id text primary key,
    type text not null,                     -- track, page, identify
    event text,                             -- Segment e-commerce spec name for track
    anonymous_id text not null,
    user_id text,                           -- customer_id as text once logged in
    properties jsonb not null default '{}',
    context jsonb not null default '{}',
    occurred_at timestamptz not null,       -- Segment's `timestamp`
    received_at timestamptz not null
);

create table if not exists simulator.customer_truth (
    customer_id bigint primary key,
    behaviour_type text not null,  -- loyal_high_spender, regular, bargain_hunter, one_time, churning
    favourite_category text not null,
    churned_at timestamptz,                 -- when a churning customer stops buying
    expected_orders_per_year double precision not null,
    expected_order_value double precision not null
);

-- extract_load reads by these columns
create index if not exists customers_updated_at on shop.customers (updated_at);
create index if not exists products_updated_at on shop.products (updated_at);
create index if not exists orders_updated_at on shop.orders (updated_at);
create index if not exists order_items_updated_at on shop.order_items (updated_at);
create index if not exists carts_updated_at on shop.carts (updated_at);
create index if not exists cart_items_updated_at on shop.cart_items (updated_at);
drop index if exists esp.email_events_occurred_at;
create index if not exists email_events_received_at on esp.email_events (received_at);
create index if not exists events_received_at on web.events (received_at);
