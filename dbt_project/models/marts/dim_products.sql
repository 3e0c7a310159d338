-- One row per product of the catalogue, in its latest version.
with

products as (

    select * from {{ ref('stg_shop__products') }}

),

final as (

    select
        product_id,
        sku,
        product_name,
        category,
        price,
        stock_quantity,
        is_active,
        updated_at

    from products

)

select * from final
