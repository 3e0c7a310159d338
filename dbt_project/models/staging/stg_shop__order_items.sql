with

source as (

    select * from {{ source('shop', 'order_items') }}

),

latest_versions as (

    select distinct on (order_item_id) *
    from source
    order by order_item_id asc, updated_at desc, _loaded_at desc

),

renamed as (

    select
        order_item_id,
        order_id,
        product_id,
        quantity,
        unit_price,
        discount as discount_amount,
        created_at,
        updated_at,
        _loaded_at as loaded_at

    from latest_versions

)

select * from renamed
