-- One row per order line, with its order's customer, time and validity and
-- its product's category. A view over int_order_lines_enriched, which is
-- already a table: a second copy would cost every hourly run its rows.
{{ config(materialized='view') }}

with

order_lines as (

    select * from {{ ref('int_order_lines_enriched') }}

),

final as (

    select
        order_item_id,
        order_id,
        customer_id,
        product_id,
        category,
        quantity,
        unit_price,
        discount_amount,
        line_revenue::numeric(12, 2) as line_revenue,
        is_valid_order,
        placed_at

    from order_lines

)

select * from final
