"""The collector: a Segment-compatible tracking API and signed webhooks, durable in PostgreSQL.

Events land in `raw.events` (and identify/alias links in `raw.identity_links`)
before the response goes out; a NOTIFY on channel `raw_events` follows each
commit so the trigger DAG wakes at once. See collector/README.md.
"""
