"""ops.campaign_cursors: the oldest transaction still running when an ingest began

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02

The trigger ingest re-reads the 10 s before its cursor (campaigns.timers.OVERLAP),
because a collector transaction can commit after a later one and so land behind
the cursor. It re-read every row of that window, however long ago the window
was: the next wake after a burst of 10,000 events ingested all 10,000 again.
Rows whose transaction had finished before the previous ingest began (older than
that ingest's snapshot xmin, kept here) were already read, so only the others
are read again.
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("alter table ops.campaign_cursors add column if not exists snapshot_xmin bigint")


def downgrade() -> None:
    op.execute("alter table ops.campaign_cursors drop column if exists snapshot_xmin")
