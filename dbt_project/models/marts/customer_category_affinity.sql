-- How much each customer leans to each product category, from what they
-- viewed, put in a cart and bought before the as-of moment. The score
-- weights a unit bought 3, a cart add 2 and a view 1 (DECISIONS.md);
-- category_share is the customer's score in this category over all of theirs.
with

events as (

    select * from {{ ref('int_events_stitched') }}

),

order_lines as (

    select * from {{ ref('int_order_lines_enriched') }}

),

products as (

    select * from {{ ref('stg_shop__products') }}

),

as_of as (

    select {{ as_of_timestamp() }} as as_of_at

),

browsing as (

    select
        events.customer_id,
        products.category,
        count(*) filter (
            where events.event_type = 'product_viewed'
        ) as view_count,
        count(*) filter (
            where events.event_type = 'product_added'
        ) as cart_add_count,
        max(events.occurred_at) as last_browsed_at

    from events
    inner join products
        on events.product_id = products.product_id
    cross join as_of
    where
        events.customer_id is not null
        and events.event_type in ('product_viewed', 'product_added')
        and events.occurred_at < as_of.as_of_at
    group by events.customer_id, products.category

),

purchases as (

    select
        order_lines.customer_id,
        order_lines.category,
        sum(order_lines.quantity) as purchased_units,
        sum(order_lines.line_revenue) as revenue,
        max(order_lines.placed_at) as last_purchased_at

    from order_lines
    cross join as_of
    where
        order_lines.is_valid_order
        and order_lines.placed_at < as_of.as_of_at
    group by order_lines.customer_id, order_lines.category

),

combined as (

    select
        coalesce(browsing.customer_id, purchases.customer_id) as customer_id,
        coalesce(browsing.category, purchases.category) as category,
        coalesce(browsing.view_count, 0) as view_count,
        coalesce(browsing.cart_add_count, 0) as cart_add_count,
        coalesce(purchases.purchased_units, 0) as purchased_units,
        coalesce(purchases.revenue, 0) as revenue,
        browsing.last_browsed_at,
        purchases.last_purchased_at

    from browsing
    full outer join purchases
        on
            browsing.customer_id = purchases.customer_id
            and browsing.category = purchases.category

),

scored as (

    select
        *,
        3 * purchased_units + 2 * cart_add_count + view_count
            as affinity_score

    from combined

),

final as (

    select
        {{ surrogate_key(['scored.customer_id', 'scored.category']) }}
            as customer_category_affinity_id,
        scored.customer_id,
        scored.category,
        scored.view_count,
        scored.cart_add_count,
        scored.purchased_units,
        scored.revenue,
        scored.last_browsed_at,
        scored.last_purchased_at,
        scored.affinity_score,
        round(
            scored.affinity_score::numeric
            / nullif(sum(scored.affinity_score) over (
                partition by scored.customer_id
            ), 0),
            6
        ) as category_share,
        row_number() over (
            partition by scored.customer_id
            order by scored.affinity_score desc, scored.category asc
        ) as category_rank,
        as_of.as_of_at

    from scored
    cross join as_of

)

select * from final
