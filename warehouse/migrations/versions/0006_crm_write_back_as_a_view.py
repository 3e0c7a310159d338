"""ml.crm_segment_sync becomes a view over ml.customer_segments

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01

The CRM table held a second copy of every customer's labels and scores (a
million rows rewritten by every scoring run at scale). Its two own columns
move onto ml.customer_segments: labels_changed_at (bumped only when a label
changes) and crm_synced_at (set by the CRM connector, cleared on a change).
The view keeps the table's name and columns; it is auto-updatable, so a
connector still runs `update ml.crm_segment_sync set synced_at = ...`.

customer_segments also gets fillfactor 50: every scoring run rewrites every
row, and with half of each page free the new versions stay on their page as
HOT updates (no index entries; 1M rows: ~6-11 s instead of ~25-29 s here).
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

VIEW = """
    create view ml.crm_segment_sync as
    select customer_id, segment, segments, value_segment, vip_score, churn_score, predicted_clv,
           coalesce(labels_changed_at, scored_at) as changed_at, crm_synced_at as synced_at
    from ml.customer_segments
"""


def upgrade() -> None:
    op.execute("alter table ml.customer_segments add column labels_changed_at timestamptz")
    op.execute("alter table ml.customer_segments add column crm_synced_at timestamptz")
    op.execute(
        """
        update ml.customer_segments c set labels_changed_at = k.changed_at, crm_synced_at = k.synced_at
        from ml.crm_segment_sync k where k.customer_id = c.customer_id
        """
    )
    op.execute("drop table ml.crm_segment_sync")
    op.execute(VIEW)
    op.execute("alter table ml.customer_segments set (fillfactor = 50)")
    op.execute(
        "comment on view ml.crm_segment_sync is 'CRM write-back: changed_at moves only when a label "
        "changes; the connector sets synced_at, a change clears it'"
    )


def downgrade() -> None:
    op.execute("drop view ml.crm_segment_sync")
    op.execute("alter table ml.customer_segments reset (fillfactor)")
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
        """
        insert into ml.crm_segment_sync
        select customer_id, segment, segments, value_segment, vip_score, churn_score, predicted_clv,
               coalesce(labels_changed_at, scored_at), crm_synced_at
        from ml.customer_segments
        """
    )
    op.execute(
        "create index crm_segment_sync_pending on ml.crm_segment_sync (changed_at) where synced_at is null"
    )
    op.execute("alter table ml.customer_segments drop column crm_synced_at")
    op.execute("alter table ml.customer_segments drop column labels_changed_at")
