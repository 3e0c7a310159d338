-- Customers a triggered campaign may mail as of the as-of moment, one row
-- per candidate. trigger_id is stable for as long as the situation is the
-- same (same cart state, same browse, same last order), so the send ledger
-- can key exactly-once delivery on it; the campaign re-checks eligibility
-- (purchase since, consent, frequency caps) when it sends.
--   cart_abandoned   items left in a cart `cart_abandon_delay_minutes` ago,
--                    no purchase since, at most `cart_max_age_days` old
--   browse_abandoned products viewed in the last `browse_window_days`, not
--                    bought since, quiet for `browse_abandon_delay_minutes`,
--                    no order since the last view
--   lapsed_vip       a high-value customer (FM score >= `vip_min_fm_score`,
--                    the value side of Champions, Loyal, Cannot Lose Them)
--                    with no order for `vip_lapse_days`
{{ config(indexes=[{'columns': ['customer_id']}]) }}

with

carts as (

    select * from {{ ref('stg_shop__carts') }}

),

cart_items as (

    select * from {{ ref('stg_shop__cart_items') }}

),

products as (

    select * from {{ ref('stg_shop__products') }}

),

valid_orders as (

    select * from {{ ref('int_orders_counted') }}

),

order_lines as (

    select * from {{ ref('int_order_lines_enriched') }}

),

events as (

    select * from {{ ref('int_events_stitched') }}

),

identities as (

    select * from {{ ref('int_identities_resolved') }}

),

scored_customers as (

    select * from {{ ref('int_customers_rfm_scored') }}

),

as_of as (

    select {{ as_of_timestamp() }} as as_of_at

),

-- carts ------------------------------------------------------------------

-- carts with any activity (created, an item added or removed) within
-- `cart_max_age_days`: exactly those whose last activity can be recent
-- enough, so only they are aggregated below
recent_carts as (

    select cart_items.cart_id
    from cart_items
    cross join as_of
    where
        greatest(cart_items.added_at, cart_items.removed_at)
        > as_of.as_of_at - {{ interval_from_var('cart_max_age_days', 'day') }}
    union
    select carts.cart_id
    from carts
    cross join as_of
    where
        carts.created_at
        > as_of.as_of_at - {{ interval_from_var('cart_max_age_days', 'day') }}

),

cart_activity as (

    select
        carts.cart_id,
        coalesce(carts.customer_id, identities.customer_id) as customer_id,
        greatest(
            carts.created_at,
            max(cart_items.added_at),
            max(cart_items.removed_at)
        ) as last_activity_at,
        jsonb_agg(
            jsonb_build_object(
                'product_id', cart_items.product_id,
                'product_name', products.product_name,
                'quantity', cart_items.quantity,
                'unit_price', cart_items.unit_price,
                'image_url', products.image_url
            )
            order by cart_items.added_at, cart_items.cart_item_id
        ) filter (where not cart_items.is_removed) as items,
        sum(cart_items.quantity * cart_items.unit_price) filter (
            where not cart_items.is_removed
        ) as cart_value

    from carts
    inner join cart_items
        on carts.cart_id = cart_items.cart_id
    left join products
        on cart_items.product_id = products.product_id
    left join identities
        on carts.anonymous_id = identities.anonymous_id
    where
        carts.cart_status in ('open', 'abandoned')
        and carts.converted_order_id is null
        and carts.cart_id in (select recent_carts.cart_id from recent_carts)
    group by
        carts.cart_id,
        carts.customer_id,
        carts.created_at,
        identities.customer_id

),

abandoned_carts as (

    select
        'cart_abandoned' as trigger_type,
        cart_activity.customer_id,
        cart_activity.last_activity_at,
        cart_activity.last_activity_at
        + {{ interval_from_var('cart_abandon_delay_minutes', 'minute') }}
            as due_at,
        cart_activity.cart_id::text as subject_key,
        jsonb_build_object(
            'cart_id', cart_activity.cart_id,
            'cart_value', cart_activity.cart_value,
            'items', cart_activity.items
        ) as payload

    from cart_activity
    cross join as_of
    where
        cart_activity.customer_id is not null
        and cart_activity.items is not null
        and cart_activity.last_activity_at
        + {{ interval_from_var('cart_abandon_delay_minutes', 'minute') }}
        <= as_of.as_of_at
        and cart_activity.last_activity_at
        > as_of.as_of_at - {{ interval_from_var('cart_max_age_days', 'day') }}
        and not exists (
            select 1 as has_order
            from valid_orders
            where
                valid_orders.customer_id = cart_activity.customer_id
                and valid_orders.placed_at >= cart_activity.last_activity_at
        )

),

-- browsing ---------------------------------------------------------------

product_views as (

    select
        events.customer_id,
        events.product_id,
        max(events.occurred_at) as last_viewed_at,
        count(*) as view_count

    from events
    cross join as_of
    where
        events.event_type = 'product_viewed'
        and events.customer_id is not null
        and events.product_id is not null
        and events.occurred_at < as_of.as_of_at
        and events.occurred_at
        >= as_of.as_of_at - {{ interval_from_var('browse_window_days', 'day') }}
    group by events.customer_id, events.product_id

),

unbought_views as (

    select
        product_views.*,
        row_number() over (
            partition by product_views.customer_id
            order by
                product_views.last_viewed_at desc,
                product_views.view_count desc,
                product_views.product_id asc
        ) as recency_rank

    from product_views
    cross join as_of
    where not exists (
        select 1 as has_order
        from order_lines
        where
            order_lines.customer_id = product_views.customer_id
            and order_lines.product_id = product_views.product_id
            and order_lines.is_valid_order
            and order_lines.placed_at >= product_views.last_viewed_at
            and order_lines.placed_at < as_of.as_of_at
    )

),

-- the latest activity of each browsing customer: a later view of anything,
-- bought or not, moves the trigger
last_browse as (

    select
        customer_id,
        max(last_viewed_at) as last_activity_at

    from product_views
    group by customer_id

),

abandoned_browses as (

    select
        'browse_abandoned' as trigger_type,
        unbought_views.customer_id,
        last_browse.last_activity_at,
        last_browse.last_activity_at
        + {{ interval_from_var('browse_abandon_delay_minutes', 'minute') }}
            as due_at,
        unbought_views.customer_id::text as subject_key,
        jsonb_build_object(
            'product_ids',
            jsonb_agg(
                unbought_views.product_id order by unbought_views.recency_rank
            ),
            'products',
            jsonb_agg(
                jsonb_build_object(
                    'product_id', unbought_views.product_id,
                    'product_name', products.product_name,
                    'category', products.category,
                    'price', products.price,
                    'image_url', products.image_url
                )
                order by unbought_views.recency_rank
            )
        ) as payload

    from unbought_views
    inner join last_browse
        on unbought_views.customer_id = last_browse.customer_id
    left join products
        on unbought_views.product_id = products.product_id
    cross join as_of
    where
        unbought_views.recency_rank <= {{ var('browse_max_products') | int }}
        and last_browse.last_activity_at
        + {{ interval_from_var('browse_abandon_delay_minutes', 'minute') }}
        <= as_of.as_of_at
        and not exists (
            select 1 as has_order
            from valid_orders
            where
                valid_orders.customer_id = unbought_views.customer_id
                and valid_orders.placed_at >= last_browse.last_activity_at
        )
    group by unbought_views.customer_id, last_browse.last_activity_at

),

-- lapsed VIPs ------------------------------------------------------------

lapsed_vips as (

    select
        'lapsed_vip' as trigger_type,
        scored_customers.customer_id,
        scored_customers.last_order_at as last_activity_at,
        scored_customers.last_order_at
        + {{ interval_from_var('vip_lapse_days', 'day') }} as due_at,
        scored_customers.customer_id::text as subject_key,
        jsonb_build_object(
            'rfm_segment',
            {{ rfm_segment(
                'scored_customers.r_score', 'scored_customers.fm_score'
            ) }},
            'fm_score', scored_customers.fm_score,
            'last_order_at', scored_customers.last_order_at,
            'order_count', scored_customers.frequency,
            'total_revenue', scored_customers.monetary
        ) as payload

    from scored_customers
    cross join as_of
    where
        scored_customers.fm_score >= {{ var('vip_min_fm_score') | int }}
        and scored_customers.last_order_at
        + {{ interval_from_var('vip_lapse_days', 'day') }}
        <= as_of.as_of_at
        and scored_customers.last_order_at
        > as_of.as_of_at - {{ interval_from_var('vip_max_lapse_days', 'day') }}

),

candidates as (

    select * from abandoned_carts
    union all
    select * from abandoned_browses
    union all
    select * from lapsed_vips

),

final as (

    select
        {{ surrogate_key([
            'candidates.trigger_type',
            'candidates.subject_key',
            "candidates.last_activity_at at time zone 'UTC'",
        ]) }}
            as trigger_id,
        candidates.customer_id,
        candidates.trigger_type,
        candidates.last_activity_at,
        candidates.due_at,
        candidates.payload,
        as_of.as_of_at

    from candidates
    cross join as_of

)

select * from final
