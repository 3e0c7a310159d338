"""raw: indexes the incremental dbt models read by, and the event exports' unique ids

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01

dbt's incremental event models read only what arrived after their watermark
(raw.web_events by received_at, raw.esp_email_events by occurred_at) and then
every event of the messages that changed (esp_email_events by message_id).
Without these indexes each hourly run scanned both exports whole (about 2 GB
at 100,000 customers). The event ids of both exports are unique indexes:
extract_load's contract (each event written once; a rerun of a batch deletes
its rows first, in the same transaction) is then enforced where the rows are
written, and dbt's unique tests on these columns need not re-read millions of
rows every hour (dbt_project/macros/test_unique.sql).
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

INDEXES = {
    "web_events_message_id": "raw.web_events (message_id)",
    "esp_email_events_event_id": "raw.esp_email_events (event_id)",
    "web_events_received_at": "raw.web_events (received_at)",
    "esp_email_events_occurred_at": "raw.esp_email_events (occurred_at)",
    "esp_email_events_message_id": "raw.esp_email_events (message_id)",
}
UNIQUE = {"web_events_message_id", "esp_email_events_event_id"}


def upgrade() -> None:
    for name, target in INDEXES.items():
        unique = "unique " if name in UNIQUE else ""
        op.execute(f"create {unique}index if not exists {name} on {target}")


def downgrade() -> None:
    for name in INDEXES:
        op.execute(f"drop index if exists raw.{name}")
