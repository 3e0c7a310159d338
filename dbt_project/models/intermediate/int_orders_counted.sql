-- The orders that count (DECISIONS.md, "Orders that count"): valid orders
-- (neither cancelled nor refunded, by their latest status) placed before the
-- as-of moment. Ephemeral: RFM, trigger candidates and campaign facts inline
-- it, so the rule lives in one place and costs no table.
{{ config(materialized='ephemeral') }}

with

orders as (

    select * from {{ ref('stg_shop__orders') }}

),

as_of as (

    select {{ as_of_timestamp() }} as as_of_at

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
        discount_code,
        has_discount,
        is_valid,
        placed_at,
        updated_at,
        loaded_at

    from orders
    where
        is_valid
        and placed_at < (select as_of.as_of_at from as_of)

)

select * from final
