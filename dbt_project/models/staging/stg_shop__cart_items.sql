with

source as (

    select * from {{ source('shop', 'cart_items') }}

),

latest_versions as (

    select distinct on (cart_item_id) *
    from source
    order by cart_item_id asc, updated_at desc, _loaded_at desc

),

renamed as (

    select
        cart_item_id,
        cart_id,
        product_id,
        quantity,
        unit_price,
        added_at,
        removed_at,
        removed_at is not null as is_removed,
        updated_at,
        _loaded_at as loaded_at

    from latest_versions

)

select * from renamed
