-- Which customer each anonymous id belongs to, from identify calls in both
-- event streams and the collector's identity links (identify and alias).
-- The first link wins: a shared device keeps the customer who logged in on it
-- first (DECISIONS.md). `evidence_received_at` is when the winning evidence
-- arrived, so int_events_stitched can re-stitch events a new link explains.
{{ config(materialized='table', indexes=[
    {'columns': ['anonymous_id'], 'unique': True},
    {'columns': ['evidence_received_at']},
]) }}

with

web_events as (

    select * from {{ ref('stg_web__events') }}

),

collector_events as (

    select * from {{ ref('stg_collector__events') }}

),

identity_links as (

    select * from {{ ref('stg_collector__identity_links') }}

),

web_identifies as (

    select
        anonymous_id,
        customer_id,
        occurred_at as linked_at,
        received_at as evidence_received_at,
        event_id

    from web_events
    where
        call_type = 'identify'
        and anonymous_id is not null
        and customer_id is not null

),

collector_identifies as (

    select
        coalesce(anonymous_id, previous_id) as anonymous_id,
        customer_id,
        occurred_at as linked_at,
        received_at as evidence_received_at,
        event_id

    from collector_events
    where
        call_type in ('identify', 'alias')
        and coalesce(anonymous_id, previous_id) is not null
        and customer_id is not null

),

collector_links as (

    select
        anonymous_id,
        customer_id,
        linked_at,
        linked_at as evidence_received_at,
        event_id

    from identity_links
    where customer_id is not null

),

evidence as (

    select * from web_identifies
    union all
    select * from collector_identifies
    union all
    select * from collector_links

),

first_links as (

    select distinct on (anonymous_id)
        anonymous_id,
        customer_id,
        linked_at,
        evidence_received_at,
        event_id as evidence_event_id

    from evidence
    order by
        anonymous_id asc,
        linked_at asc,
        customer_id asc,
        evidence_received_at asc,
        event_id asc

)

select * from first_links
