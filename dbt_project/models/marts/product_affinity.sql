-- Item-to-item affinity from two kinds of baskets: the products of one order
-- (co_purchase) and the products viewed in one session (co_view), over the
-- `affinity_lookback_days` before the as-of moment. For a pair (A, B):
--   support    = baskets with A and B / all baskets
--   confidence = baskets with A and B / baskets with A     (P(B | A))
--   lift       = confidence / (baskets with B / all baskets)
-- Pairs seen in fewer than `affinity_min_pair_count` baskets are left out.
{{ config(indexes=[{'columns': ['product_id', 'affinity_type']}]) }}

with

order_lines as (

    select * from {{ ref('int_order_lines_enriched') }}

),

sessions as (

    select * from {{ ref('int_sessions_inferred') }}

),

window_bounds as (

    select
        {{ as_of_timestamp() }} as as_of_at,
        {{ as_of_timestamp() }}
        - {{ interval_from_var('affinity_lookback_days', 'day') }}
            as window_start_at

),

-- one row per basket with its distinct products, sorted
purchase_baskets as (

    select
        'co_purchase' as affinity_type,
        order_lines.order_id::text as basket_id,
        array_agg(distinct order_lines.product_id) as product_ids

    from order_lines
    cross join window_bounds
    where
        order_lines.is_valid_order
        and order_lines.placed_at >= window_bounds.window_start_at
        and order_lines.placed_at < window_bounds.as_of_at
    group by order_lines.order_id

),

view_baskets as (

    select
        'co_view' as affinity_type,
        sessions.session_id as basket_id,
        sessions.viewed_product_ids as product_ids

    from sessions
    cross join window_bounds
    where
        sessions.started_at >= window_bounds.window_start_at
        and sessions.started_at < window_bounds.as_of_at
        and cardinality(sessions.viewed_product_ids) > 0

),

baskets as (

    select * from purchase_baskets
    union all
    select * from view_baskets

),

basket_totals as (

    select
        affinity_type,
        count(*) as basket_count

    from baskets
    group by affinity_type

),

product_totals as (

    select
        baskets.affinity_type,
        item.product_id,
        count(*) as product_basket_count

    from baskets
    cross join lateral unnest(baskets.product_ids) as item (product_id)
    group by baskets.affinity_type, item.product_id

),

-- each pair of different products in a basket, counted over baskets: once
-- per unordered pair (a basket's products are distinct: each product with
-- the ones after it), half the rows of counting both directions
unordered_pairs as (

    select
        baskets.affinity_type,
        left_item.product_id,
        right_item.product_id as related_product_id,
        count(*) as pair_basket_count

    from baskets
    cross join
        lateral unnest(baskets.product_ids)
        with ordinality as left_item (product_id, item_number)
    cross join
        lateral unnest(
            baskets.product_ids[left_item.item_number + 1:]
        ) as right_item (product_id)
    where cardinality(baskets.product_ids) > 1
    group by
        baskets.affinity_type,
        left_item.product_id,
        right_item.product_id
    having count(*) >= {{ var('affinity_min_pair_count') | int }}

),

product_shares as (

    select
        product_totals.affinity_type,
        product_totals.product_id,
        product_totals.product_basket_count,
        basket_totals.basket_count

    from product_totals
    inner join basket_totals
        on product_totals.affinity_type = basket_totals.affinity_type

),

-- each pair with both products' basket counts, joined once per unordered
-- pair
counted_pairs as (

    select
        unordered_pairs.affinity_type,
        unordered_pairs.product_id,
        unordered_pairs.related_product_id,
        unordered_pairs.pair_basket_count,
        antecedents.product_basket_count,
        consequents.product_basket_count as related_product_basket_count,
        antecedents.basket_count

    from unordered_pairs
    inner join product_shares as antecedents
        on
            unordered_pairs.affinity_type = antecedents.affinity_type
            and unordered_pairs.product_id = antecedents.product_id
    inner join product_shares as consequents
        on
            unordered_pairs.affinity_type = consequents.affinity_type
            and unordered_pairs.related_product_id = consequents.product_id

),

-- both directions of each pair (confidence is asymmetric)
pairs as (

    select * from counted_pairs
    union all
    select
        affinity_type,
        related_product_id as product_id,
        product_id as related_product_id,
        pair_basket_count,
        related_product_basket_count as product_basket_count,
        product_basket_count as related_product_basket_count,
        basket_count
    from counted_pairs

),

measured as (

    select
        *,
        pair_basket_count::numeric / basket_count as support,
        pair_basket_count::numeric / product_basket_count as confidence,
        (pair_basket_count::numeric / product_basket_count)
        / (related_product_basket_count::numeric / basket_count) as lift

    from pairs

),

final as (

    select
        {{ surrogate_key([
            'affinity_type', 'product_id', 'related_product_id'
        ]) }} as product_affinity_id,
        affinity_type,
        product_id,
        related_product_id,
        pair_basket_count,
        product_basket_count,
        related_product_basket_count,
        basket_count,
        round(support, 8) as support,
        round(confidence, 8) as confidence,
        round(lift, 6) as lift,
        row_number() over (
            partition by affinity_type, product_id
            order by lift desc, confidence desc, related_product_id asc
        ) as related_rank

    from measured

)

select * from final
