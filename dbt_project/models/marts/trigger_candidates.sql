-- Batch audiences a campaign may mail as of the as-of moment, one row per
-- candidate. Cart and browse abandonment are not here: campaigns/timers.py
-- owns them (it reads the collector's events, the web export and the shop's
-- carts as they arrive, seconds-fast); see DECISIONS.md, "Trigger candidates".
-- trigger_id is stable for as long as the situation is the same, so the send
-- ledger can key exactly-once delivery on it; the campaign re-checks
-- eligibility (consent, frequency caps) when it sends. The columns are a
-- contract (_marts__models.yml): campaigns/timers.py reads them by name.
--   lapsed_vip  a high-value customer (FM score >= `vip_min_fm_score`, the
--               value side of Champions, Loyal, Cannot Lose Them) with no
--               order for `vip_lapse_days`
{{ config(indexes=[{'columns': ['customer_id']}]) }}

with

scored_customers as (

    select * from {{ ref('int_customers_rfm_scored') }}

),

as_of as (

    select {{ as_of_timestamp() }} as as_of_at

),

lapsed_vips as (

    select
        'lapsed_vip'::text as trigger_type,
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

final as (

    select
        {{ surrogate_key([
            'lapsed_vips.trigger_type',
            'lapsed_vips.subject_key',
            "lapsed_vips.last_activity_at at time zone 'UTC'",
        ]) }}
            as trigger_id,
        lapsed_vips.customer_id::bigint as customer_id,
        lapsed_vips.trigger_type,
        lapsed_vips.last_activity_at,
        lapsed_vips.due_at,
        lapsed_vips.payload,
        as_of.as_of_at

    from lapsed_vips
    cross join as_of

)

select * from final
