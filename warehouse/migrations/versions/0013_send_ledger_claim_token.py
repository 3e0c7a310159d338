"""ops.send_ledger.claim_token: the claim a message's sending belongs to (fencing)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04

A batch's claim on its triggers is a transaction's row locks. When the session
holding them dies (a PostgreSQL restart, an idle timeout, pg_terminate_backend),
another engine can claim the same triggers while the first one's sender lanes
are still sending. Each claimed batch writes its own random token on the ledger
rows of its messages, and the statement that marks a group `sending` updates
only rows that still carry it (campaigns.ledger.mark_group): a lane whose claim
was taken over marks nothing and stops. No index: rows are found by ledger_id,
and an unindexed column keeps the ledger's updates HOT (0008).
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("alter table ops.send_ledger add column if not exists claim_token uuid")


def downgrade() -> None:
    op.execute("alter table ops.send_ledger drop column if exists claim_token")
