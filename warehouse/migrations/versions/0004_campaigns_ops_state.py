"""ops state of triggered campaigns: timers, send ledger, decision log, suppressions, consent, experiments

Revision ID: 0004
Revises: 0002
Create Date: 2026-11-29
"""

from alembic import op

revision = "0004"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Due triggers, maintained incrementally from raw.events (cart and browse
    # timers) and from marts.trigger_candidates / ml.customer_segments (batch
    # campaigns). One row per (campaign, customer, trigger_key): a new cart event
    # moves the timer, a purchase cancels it. Workers claim due rows with
    # FOR UPDATE SKIP LOCKED and hold the row lock while they process them.
    op.execute(
        """
        create table ops.campaign_triggers (
            trigger_id text primary key,
            campaign text not null,
            customer_id bigint not null,
            trigger_key text not null,
            status text not null default 'pending'
                check (status in ('pending', 'done', 'cancelled')),
            priority integer not null default 0,
            first_activity_at timestamptz not null,
            last_activity_at timestamptz not null,
            original_due_at timestamptz not null,
            due_at timestamptz not null,
            expires_at timestamptz,
            cancelled_at timestamptz,           -- the purchase that cancelled it
            payload jsonb not null default '{}',
            outcome text,                       -- last decision for done rows
            attempts integer not null default 0,
            created_at timestamptz not null default now(),
            updated_at timestamptz not null default now(),
            unique (campaign, customer_id, trigger_key)
        )
        """
    )
    op.execute(
        "create index campaign_triggers_due on ops.campaign_triggers (due_at) where status = 'pending'"
    )
    op.execute("create index campaign_triggers_customer on ops.campaign_triggers (customer_id)")

    # Exactly once: one row per (campaign, customer, trigger), whatever happens.
    # claimed -> rendering -> sending -> sent | failed. 'sending' rows found by a
    # later worker are in doubt and are resent with the same Message-ID.
    op.execute(
        """
        create table ops.send_ledger (
            ledger_id bigserial primary key,
            campaign text not null,
            customer_id bigint not null,
            trigger_id text not null,
            state text not null
                check (state in ('claimed', 'rendering', 'sending', 'sent', 'failed')),
            variant text not null,
            template_version text,
            message_id text not null unique,
            email_hash text not null,
            attempts integer not null default 0,
            last_error text,
            due_at timestamptz not null,
            created_at timestamptz not null default now(),
            updated_at timestamptz not null default now(),
            sending_at timestamptz,
            sent_at timestamptz,
            unique (campaign, customer_id, trigger_id)
        )
        """
    )
    # frequency caps look back over a customer's recent sends
    op.execute("create index send_ledger_customer_recent on ops.send_ledger (customer_id, sent_at)")

    # Every decision about every candidate, with its reason.
    op.execute(
        """
        create table ops.decision_log (
            decision_id bigserial primary key,
            decided_at timestamptz not null default now(),
            campaign text not null,
            customer_id bigint,
            trigger_id text not null,
            outcome text not null check (outcome in (
                'sent', 'suppressed', 'unsubscribed', 'no_consent', 'frequency_capped',
                'quiet_hours', 'held_out', 'purchased_since', 'expired', 'no_profile',
                'audience_mismatch', 'nothing_to_show', 'cancelled', 'failed', 'retry')),
            variant text,
            detail jsonb not null default '{}'
        )
        """
    )
    op.execute("create index decision_log_trigger on ops.decision_log (trigger_id)")
    op.execute("create index decision_log_campaign_time on ops.decision_log (campaign, decided_at)")

    # Never mailed again: keyed by a hash of the normalised address, so an
    # erased customer stays suppressed without their address being kept.
    op.execute(
        """
        create table ops.suppressions (
            email_hash text primary key,
            reason text not null check (reason in ('unsubscribe', 'hard_bounce', 'complaint', 'erasure', 'manual')),
            source text not null,
            created_at timestamptz not null default now()
        )
        """
    )
    # Consent history; the latest row wins over the shop's accepts_email_marketing.
    op.execute(
        """
        create table ops.consent (
            consent_id bigserial primary key,
            customer_id bigint,
            email_hash text not null,
            granted boolean not null,
            source text not null,
            recorded_at timestamptz not null default now()
        )
        """
    )
    op.execute("create index consent_customer on ops.consent (customer_id, recorded_at desc)")
    op.execute("create index consent_email_hash on ops.consent (email_hash, recorded_at desc)")

    # Deterministic, stable assignment per (campaign, customer) for A/B analysis.
    op.execute(
        """
        create table ops.experiment_assignments (
            campaign text not null,
            customer_id bigint not null,
            experiment text not null,           -- campaign definition's experiment id (salt)
            variant text not null,              -- a variant name or 'holdout'
            bucket double precision not null,
            assigned_at timestamptz not null default now(),
            primary key (campaign, customer_id, experiment)
        )
        """
    )
    # Where incremental readers of raw tables are: raw.events by received_at,
    # raw.esp_email_events by _loaded_at.
    op.execute(
        """
        create table ops.campaign_cursors (
            name text primary key,
            position timestamptz not null,
            updated_at timestamptz not null default now()
        )
        """
    )
    # Audit of erasure requests: no personal data, only the hash and counts.
    op.execute(
        """
        create table ops.erasure_log (
            erasure_id bigserial primary key,
            email_hash text,
            customer_id_hash text,
            rows_deleted jsonb not null,
            erased_at timestamptz not null default now()
        )
        """
    )
    # Profile look-ups take the latest version of a customer from the
    # append-only raw table.
    op.execute(
        "create index if not exists shop_customers_latest on raw.shop_customers (customer_id, updated_at desc)"
    )
    op.execute("create index if not exists events_user_time on raw.events (user_id, occurred_at)")
    # "purchased since" checks look up a customer's latest order
    op.execute(
        "create index if not exists shop_orders_customer_placed on raw.shop_orders (customer_id, placed_at)"
    )


def downgrade() -> None:
    op.execute("drop index if exists raw.shop_orders_customer_placed")
    op.execute("drop index if exists raw.events_user_time")
    op.execute("drop index if exists raw.shop_customers_latest")
    for table in (
        "erasure_log",
        "campaign_cursors",
        "experiment_assignments",
        "consent",
        "suppressions",
        "decision_log",
        "send_ledger",
        "campaign_triggers",
    ):
        op.execute(f"drop table ops.{table}")
