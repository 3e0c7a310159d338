"""ml schema: customer segments (current + history), CRM write-back, recommendations, scoring runs

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


SEGMENT_COLUMNS = """
    segment text not null,                 -- primary label: vip, churned, at_risk, new, active, prospect
    segments text[] not null,              -- every label the customer carries (campaign audiences)
    vip_segment text,                      -- vip | null
    churn_segment text,                    -- churned | at_risk | null
    value_segment text,                    -- CLV tier: high | medium | low
    rfm_segment text
"""


def upgrade() -> None:
    op.execute("create schema if not exists ml")
    # Written by score_customers: one row per customer, upserted by customer_id.
    # scored_at is the run's logical date, so a rerun writes the same rows.
    op.execute(
        f"""
        create table ml.customer_segments (
            customer_id bigint primary key,
            vip_score double precision,        -- P(top 10% spend in the next 180 days)
            churn_score double precision,      -- P(no order in the next 90 days); null before a first order
            predicted_clv double precision,    -- BG/NBD + Gamma-Gamma, next 12 months
            p_alive double precision,          -- BG/NBD; null before a first order
            expected_purchases double precision,
            {SEGMENT_COLUMNS},
            vip_model_version text,
            churn_model_version text,
            clv_model_version text,
            features_cutoff_at timestamptz not null,
            scored_at timestamptz not null
        )
        """
    )
    op.execute("create index customer_segments_segment on ml.customer_segments (segment)")
    # A row whenever a customer's labels change (valid from that scoring run on).
    op.execute(
        f"""
        create table ml.customer_segment_history (
            customer_id bigint not null,
            valid_from timestamptz not null,   -- scored_at of the run that assigned the labels
            {SEGMENT_COLUMNS},
            previous_segment text,
            vip_score double precision,
            churn_score double precision,
            predicted_clv double precision,
            vip_model_version text,
            churn_model_version text,
            clv_model_version text,
            primary key (customer_id, valid_from)
        )
        """
    )
    # What the CRM sync pushes: the latest attributes, changed_at bumped only
    # when they change, synced_at set by the connector after a push.
    op.execute(
        """
        create table ml.crm_segment_sync (
            customer_id bigint primary key,
            segment text not null,
            segments text[] not null,
            value_segment text,
            vip_score double precision,
            churn_score double precision,
            predicted_clv double precision,
            changed_at timestamptz not null,
            synced_at timestamptz
        )
        """
    )
    op.execute(
        "create index crm_segment_sync_pending on ml.crm_segment_sync (changed_at) where synced_at is null"
    )
    op.execute(
        """
        create table ml.recommendations (
            customer_id bigint not null,
            rank smallint not null,
            product_id bigint not null,
            score double precision not null,
            source text not null,              -- item_cf | popular (fallback)
            model_version text not null,       -- the recommend run's MLflow run id
            generated_at timestamptz not null,
            primary key (customer_id, rank)
        )
        """
    )
    op.execute(
        """
        create table ml.scoring_runs (
            scored_at timestamptz primary key,
            features_cutoff_at timestamptz not null,
            customers bigint not null,
            vip_model_version text,
            churn_model_version text,
            clv_model_version text,
            mlflow_run_id text,
            seconds double precision,
            segment_counts jsonb not null
        )
        """
    )


def downgrade() -> None:
    for table in (
        "scoring_runs",
        "recommendations",
        "crm_segment_sync",
        "customer_segment_history",
        "customer_segments",
    ):
        op.execute(f"drop table if exists ml.{table}")
    op.execute("drop schema if exists ml")
