"""Triggered campaigns: definitions as code, eligibility, assignment, render, deliver, ledger.

The real-time path never waits for dbt: timers live in `ops.campaign_triggers`,
maintained incrementally from `raw.events` (see `campaigns.timers`), and the
`trigger_campaigns` DAG (or `python -m campaigns run-once`) processes them with
`campaigns.engine.Engine` (see README.md for the modules).
"""
