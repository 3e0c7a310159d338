"""raw.events and raw.identity_links, written by the collector

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Segment's spec fields, one table for every call type and for webhooks
    # (mapped to track calls). Unique on message_id: a client's retry of the
    # same message is acknowledged without a second row.
    op.execute(
        """
        create table raw.events (
            message_id text primary key,
            type text not null,             -- track, identify, page, screen, group, alias
            event text,                     -- track: event name
            name text,                      -- page / screen: name
            user_id text,
            anonymous_id text,
            group_id text,
            previous_id text,               -- alias
            properties jsonb not null default '{}',
            traits jsonb not null default '{}',
            context jsonb not null default '{}',
            occurred_at timestamptz not null,   -- the client's `timestamp`
            sent_at timestamptz,
            received_at timestamptz not null,
            source text not null            -- write key's source name, or webhook:<source>
        )
        """
    )
    op.execute("create index events_received_at on raw.events (received_at)")
    op.execute("create index events_user_id on raw.events (user_id) where user_id is not null")
    # identify and alias calls: which anonymous id (or previous id) is which user.
    op.execute(
        """
        create table raw.identity_links (
            anonymous_id text not null,
            user_id text not null,
            message_id text not null,
            linked_at timestamptz not null,
            primary key (anonymous_id, user_id)
        )
        """
    )


def downgrade() -> None:
    op.execute("drop table raw.identity_links")
    op.execute("drop table raw.events")
