with

source as (

    select * from {{ source('esp', 'email_events') }}

),

-- a re-extracted window can hold an event twice; the copies are identical
deduplicated as (

    select distinct on (event_id) *
    from source
    order by event_id asc, _loaded_at desc

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

    from deduplicated

)

select * from renamed
