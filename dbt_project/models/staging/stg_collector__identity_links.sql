with

source as (

    select * from {{ source('collector', 'identity_links') }}

),

renamed as (

    select
        {{ surrogate_key(['anonymous_id', 'user_id']) }} as identity_link_id,
        anonymous_id,
        user_id,
        {{ safe_bigint('user_id') }} as customer_id,
        message_id as event_id,
        linked_at

    from source

)

select * from renamed
