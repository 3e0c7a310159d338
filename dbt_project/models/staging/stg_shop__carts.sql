with

source as (

    select * from {{ source('shop', 'carts') }}

),

latest_versions as (

    select distinct on (cart_id) *
    from source
    order by cart_id asc, updated_at desc, _loaded_at desc

),

renamed as (

    select
        cart_id,
        customer_id,
        anonymous_id,
        status as cart_status,
        converted_order_id,
        created_at,
        updated_at,
        _loaded_at as loaded_at

    from latest_versions

)

select * from renamed
