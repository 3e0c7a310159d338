with

source as (

    select * from {{ source('shop', 'products') }}

),

latest_versions as (

    select distinct on (product_id) *
    from source
    order by product_id asc, updated_at desc, _loaded_at desc

),

renamed as (

    select
        product_id,
        sku,
        name as product_name,
        category,
        price,
        image_url,
        stock as stock_quantity,
        is_active,
        created_at,
        updated_at,
        _loaded_at as loaded_at

    from latest_versions

)

select * from renamed
