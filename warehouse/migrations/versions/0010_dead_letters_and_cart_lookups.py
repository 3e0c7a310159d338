"""ops.dead_letters: input rows the trigger ingest set aside, and raw cart look-ups by cart

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04

The trigger ingest reads hostile input (client events, exports, batch
candidates). A row it cannot use (a timestamp out of range, a quantity that is
not a number, an id that is not one) is written here with its error, in the
same transaction that moves the ingest's cursor past it, and everything else
goes on: before, one such row failed every run of trigger_campaigns.
`python -m campaigns dead-letters` lists them. Only the stage, the row's key and
the error are kept, never the row: no personal data lands here.

The ingest also turns carts seen only in the shop's database (raw.shop_carts,
raw.shop_cart_items) into cart timers; it reads the latest version of every
cart a new extract batch touched, by cart id.
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        create table ops.dead_letters (
            dead_letter_id bigserial primary key,
            stage text not null,            -- where it was set aside: the table it came from
            source_key text not null,       -- the row's key there (message_id, event_id, ...)
            error text not null,
            created_at timestamptz not null default now(),
            unique (stage, source_key)      -- a row read again is not recorded twice
        )
        """
    )
    op.execute("create index dead_letters_created on ops.dead_letters (created_at)")
    op.execute("create index if not exists shop_carts_cart on raw.shop_carts (cart_id, updated_at)")
    op.execute("create index if not exists shop_cart_items_cart on raw.shop_cart_items (cart_id, updated_at)")


def downgrade() -> None:
    op.execute("drop index if exists raw.shop_cart_items_cart")
    op.execute("drop index if exists raw.shop_carts_cart")
    op.execute("drop table ops.dead_letters")
