-- One row per tracking call. extract_load writes each source row once (a
-- rerun of a batch replaces its rows), so there is nothing to deduplicate
-- here; a unique index on raw.web_events.message_id enforces that contract
-- (the source's unique test checks it is there), and
-- int_events_stitched deduplicates across the web and collector streams.
-- Kept a plain projection so incremental models' filters on received_at reach
-- the scan of raw.web_events.
with

source as (

    select * from {{ source('web', 'events') }}

),

renamed as (

    select
        message_id as event_id,
        type as call_type,
        event as event_name,
        nullif(anonymous_id, '') as anonymous_id,
        nullif(user_id, '') as user_id,
        {{ safe_bigint('user_id') }} as customer_id,
        properties,
        context,
        occurred_at,
        received_at,
        _loaded_at as loaded_at

    from source

)

select * from renamed
