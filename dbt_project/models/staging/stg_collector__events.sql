with

source as (

    select * from {{ source('collector', 'events') }}

),

renamed as (

    select
        message_id as event_id,
        type as call_type,
        event as event_name,
        name as page_name,
        nullif(user_id, '') as user_id,
        nullif(anonymous_id, '') as anonymous_id,
        nullif(previous_id, '') as previous_id,
        {{ safe_bigint('user_id') }} as customer_id,
        properties,
        traits,
        context,
        occurred_at,
        sent_at,
        received_at,
        source as source_name,
        source like 'webhook:%' as is_webhook

    from source

)

select * from renamed
