"""raw.esp_email_events: when each event arrived in the provider's export

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04

extract_load now reads the export by arrival (`received_at`), not by event
time: a bounce reported hours after it happened lands in an hour that was
already extracted, and a window on `occurred_at` never read it (so it never
became a suppression). raw keeps the arrival time beside the event time; rows
extracted before this revision have none.
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("alter table raw.esp_email_events add column if not exists received_at timestamptz")


def downgrade() -> None:
    op.execute("alter table raw.esp_email_events drop column if exists received_at")
