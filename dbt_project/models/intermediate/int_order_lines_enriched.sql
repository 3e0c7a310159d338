-- Order lines with their order (customer, time, status) and product
-- (name, category): the grain of purchase behaviour. A table: four marts
-- read it, and it saves each of them deduplicating orders and lines again.
{{ config(
    materialized='table',
    indexes=[
        {'columns': ['order_item_id'], 'unique': True},
        {'columns': ['customer_id', 'product_id']},
    ],
) }}
with

order_items as (

    select * from {{ ref('stg_shop__order_items') }}

),

orders as (

    select * from {{ ref('stg_shop__orders') }}

),

products as (

    select * from {{ ref('stg_shop__products') }}

),

final as (

    select
        order_items.order_item_id,
        order_items.order_id,
        orders.customer_id,
        order_items.product_id,
        products.product_name,
        coalesce(products.category, 'unknown') as category,
        order_items.quantity,
        order_items.unit_price,
        order_items.discount_amount,
        order_items.quantity * order_items.unit_price
        - order_items.discount_amount as line_revenue,
        orders.order_status,
        orders.is_valid as is_valid_order,
        orders.placed_at

    from order_items
    inner join orders
        on order_items.order_id = orders.order_id
    left join products
        on order_items.product_id = products.product_id

)

select * from final
