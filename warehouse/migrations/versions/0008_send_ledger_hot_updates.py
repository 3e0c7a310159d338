"""ops.send_ledger: updates of a send's state stay on its page (HOT)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02

A send's ledger row changes state twice after its insert ('sending' just
before the relay sees it, 'sent' once the relay accepts it). The index on
(customer_id, sent_at) made every 'sent' a non-HOT update: a new entry in
each of the table's four indexes. Frequency caps look sends up by customer
only (sent_at is read through coalesce(sent_at, sending_at), which that index
cannot serve), so the index is now on customer_id alone, and the table keeps
half of each page free, so both updates can stay on the row's page and touch
no index at all.
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("create index if not exists send_ledger_customer on ops.send_ledger (customer_id)")
    op.execute("drop index if exists ops.send_ledger_customer_recent")
    op.execute("alter table ops.send_ledger set (fillfactor = 50)")


def downgrade() -> None:
    op.execute("alter table ops.send_ledger reset (fillfactor)")
    op.execute(
        "create index if not exists send_ledger_customer_recent on ops.send_ledger (customer_id, sent_at)"
    )
    op.execute("drop index if exists ops.send_ledger_customer")
