-- One row per order, in its latest version (status changes are new versions
-- in raw; stg_shop__order_versions keeps every one for point-in-time models).
-- is_valid: neither cancelled nor refunded (DECISIONS.md, "Orders that
-- count"). The ML stage reads its orders (labels, CLV holdouts) here.
with

orders as (

    select * from {{ ref('stg_shop__orders') }}

),

final as (

    select
        order_id,
        customer_id,
        order_status,
        currency,
        subtotal,
        discount_amount,
        total,
        has_discount,
        is_valid,
        placed_at,
        updated_at

    from orders

)

select * from final
