"""raw landing tables for extract_load and the ops.extract_batches ledger

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Every raw table is the source table's columns plus load metadata: the batch
# that wrote the row (one per source table and data interval) and when.
LOAD_METADATA = """
    _batch_id text not null,
    _loaded_at timestamptz not null
"""

RAW_TABLES = {
    "shop_customers": """
        customer_id bigint not null,
        email text not null,
        first_name text,
        last_name text,
        accepts_email_marketing boolean not null,
        email_consent_at timestamptz,
        timezone text not null,
        country text not null,
        signup_at timestamptz not null,
        created_at timestamptz not null,
        updated_at timestamptz not null,
    """,
    "shop_products": """
        product_id bigint not null,
        sku text not null,
        name text not null,
        category text not null,
        price numeric(10, 2) not null,
        image_url text not null,
        stock integer not null,
        is_active boolean not null,
        created_at timestamptz not null,
        updated_at timestamptz not null,
    """,
    "shop_orders": """
        order_id bigint not null,
        customer_id bigint not null,
        status text not null,
        currency text not null,
        subtotal numeric(12, 2) not null,
        discount numeric(12, 2) not null,
        total numeric(12, 2) not null,
        discount_code text,
        placed_at timestamptz not null,
        updated_at timestamptz not null,
    """,
    "shop_order_items": """
        order_item_id bigint not null,
        order_id bigint not null,
        product_id bigint not null,
        quantity integer not null,
        unit_price numeric(10, 2) not null,
        discount numeric(10, 2) not null,
        created_at timestamptz not null,
        updated_at timestamptz not null,
    """,
    "shop_carts": """
        cart_id bigint not null,
        customer_id bigint,
        anonymous_id text not null,
        status text not null,
        converted_order_id bigint,
        created_at timestamptz not null,
        updated_at timestamptz not null,
    """,
    "shop_cart_items": """
        cart_item_id bigint not null,
        cart_id bigint not null,
        product_id bigint not null,
        quantity integer not null,
        unit_price numeric(10, 2) not null,
        added_at timestamptz not null,
        removed_at timestamptz,
        updated_at timestamptz not null,
    """,
    "esp_email_events": """
        event_id text not null,
        message_id text not null,
        campaign text not null,
        email text not null,
        event_type text not null,
        url text,
        bounce_type text,
        occurred_at timestamptz not null,
    """,
    "web_events": """
        message_id text not null,
        type text not null,
        event text,
        anonymous_id text not null,
        user_id text,
        properties jsonb not null,
        context jsonb not null,
        occurred_at timestamptz not null,
        received_at timestamptz not null,
    """,
}


def upgrade() -> None:
    op.execute("create schema if not exists raw")
    for table, columns in RAW_TABLES.items():
        op.execute(f"create table raw.{table} ({columns}{LOAD_METADATA})")
        op.execute(f"create index {table}_batch on raw.{table} (_batch_id)")
    # One row per (source table, data interval): the window a batch covered, so
    # a rerun of the same interval extracts exactly the same rows again.
    op.execute(
        """
        create table ops.extract_batches (
            batch_id text primary key,
            source_table text not null,
            window_start timestamptz,          -- null: from the beginning
            window_end timestamptz not null,
            row_count bigint not null,
            loaded_at timestamptz not null
        )
        """
    )


def downgrade() -> None:
    op.execute("drop table ops.extract_batches")
    for table in RAW_TABLES:
        op.execute(f"drop table raw.{table}")
