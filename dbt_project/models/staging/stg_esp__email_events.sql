-- One row per provider event. The export has no versions and extract_load
-- writes each event once (a rerun of a batch replaces its rows); a unique
-- index on raw.esp_email_events.event_id enforces that contract (the source's
-- unique test checks it is there) instead of a sort of the whole export on
-- every read.
with

source as (

    select * from {{ source('esp', 'email_events') }}

),

renamed as (

    select
        event_id as email_event_id,
        message_id,
        campaign,
        lower(trim(email)) as email,
        event_type,
        url,
        bounce_type,
        occurred_at,
        _loaded_at as loaded_at

    from source

)

select * from renamed
