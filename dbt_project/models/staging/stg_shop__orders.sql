with

source as (

    select * from {{ source('shop', 'orders') }}

),

latest_versions as (

    select distinct on (order_id) *
    from source
    order by order_id asc, updated_at desc, _loaded_at desc

),

renamed as (

    select
        order_id,
        customer_id,
        status as order_status,
        currency,
        subtotal,
        discount as discount_amount,
        total,
        discount_code,
        discount > 0 as has_discount,
        -- cancelled and refunded orders are not revenue (DECISIONS.md)
        status not in ('cancelled', 'refunded') as is_valid,
        placed_at,
        updated_at,
        _loaded_at as loaded_at

    from latest_versions

)

select * from renamed
