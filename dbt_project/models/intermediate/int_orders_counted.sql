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

    select orders.*
    from orders
    cross join as_of
    where orders.is_valid and orders.placed_at < as_of.as_of_at

)

select * from final
