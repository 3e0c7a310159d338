-- Deduplicated on (message_id, received_at): copies of one message share its
-- received_at, and keeping that column in DISTINCT ON lets PostgreSQL push an
-- incremental model's filter on received_at down into the scan of raw.
with

source as (

    select * from {{ source('web', 'events') }}

),

deduplicated as (

    select distinct on (message_id, received_at) *
    from source
    order by message_id asc, received_at asc, _loaded_at desc

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

    from deduplicated

)

select * from renamed
