-- One row per customer who had signed up before the cutoff, with features
-- computed only from what was known at the cutoff (the `cutoff` var, else
-- as_of): orders placed before it with the status they had then, events that
-- happened and arrived before it, emails sent, opened and clicked before it
-- (a message's first open and first click).
-- Labels (what happens after the cutoff) belong to the ML code, never here.
-- The one definition of every batch feature the models use (ml/DECISIONS.md,
-- "Features"). Ages measured to the scoring moment (days since the last order,
-- the first order, sign-up, the last open or click) are not columns: the mart
-- gives the moments and ml/realtime.py measures them, at a training cutoff,
-- the mart's cutoff or the send time alike.

{#- the 7/30/90-day event counts: feature name -> event type, and windows #}
{% set event_windows = {
    'views': 'product_viewed',
    'cart_adds': 'product_added',
    'searches': 'products_searched',
} %}
{% set window_days = [7, 30, 90] %}
{#- order counts and revenue over the last N days #}
{% set order_window_days = [30, 90, 180, 365] %}
{% set revenue_window_days = [90, 365] %}

with

customers as (

    select * from {{ ref('stg_shop__customers') }}

),

order_versions as (

    select * from {{ ref('stg_shop__order_versions') }}

),

order_lines as (

    select * from {{ ref('int_order_lines_enriched') }}

),

events as (

    select * from {{ ref('int_events_stitched') }}

),

email_messages as (

    select * from {{ ref('int_email_messages_unioned') }}

),

cutoff as (

    select {{ cutoff_timestamp() }} as cutoff_at

),

known_customers as (

    select
        customers.customer_id,
        customers.signed_up_at,
        cutoff.cutoff_at

    from customers
    cross join cutoff
    where customers.signed_up_at < cutoff.cutoff_at

),

-- each order placed before the cutoff as it stood at the cutoff: its latest
-- version by then, or (extracted only later) its earliest known version
orders_at_cutoff as (

    select distinct on (order_versions.order_id)
        order_versions.order_id,
        order_versions.customer_id,
        order_versions.placed_at,
        order_versions.subtotal,
        order_versions.discount_amount,
        order_versions.total,
        order_versions.has_discount,
        cutoff.cutoff_at,
        case
            when order_versions.valid_from <= cutoff.cutoff_at
                then order_versions.is_valid
            else true
        end as is_valid

    from order_versions
    cross join cutoff
    where order_versions.placed_at < cutoff.cutoff_at
    order by
        order_versions.order_id asc,
        case
            when order_versions.valid_from <= cutoff.cutoff_at
                then order_versions.valid_from
        end desc nulls last,
        order_versions.valid_from asc

),

valid_orders as (

    select
        *,
        placed_at - lag(placed_at) over (
            partition by customer_id order by placed_at asc, order_id asc
        ) as since_previous_order

    from orders_at_cutoff
    where is_valid

),

order_features as (

    select
        customer_id,
        count(*) as order_count,
        sum(total) as total_revenue,
        max(total) as max_order_value,
        min(placed_at) as first_order_at,
        max(placed_at) as last_order_at,
        {%- for days in order_window_days %}
            count(*) filter (
                where placed_at >= cutoff_at - interval '{{ days }} day'
            ) as orders_{{ days }}d,
        {%- endfor %}
        {%- for days in revenue_window_days %}
            coalesce(sum(total) filter (
                where placed_at >= cutoff_at - interval '{{ days }} day'
            ), 0) as revenue_{{ days }}d,
        {%- endfor %}
        avg(extract(epoch from since_previous_order) / 86400.0)::float
            as avg_days_between_orders,
        avg(case when has_discount then 1.0 else 0.0 end)::float
            as discount_order_share,
        (sum(discount_amount) / nullif(sum(subtotal), 0))::float
            as discount_amount_share

    from valid_orders
    group by customer_id

),

-- BG/NBD's inputs (ml/clv.py): purchases are days, several orders on one
-- day are one purchase (as in the CDNOW data); the first day is not a repeat
purchase_days as (

    select
        customer_id,
        (placed_at at time zone 'UTC')::date as purchased_on,
        sum(total) as day_revenue

    from valid_orders
    group by customer_id, (placed_at at time zone 'UTC')::date

),

repeat_purchase_features as (

    select
        customer_id,
        count(*) - 1 as repeat_purchase_days,
        max(purchased_on) - min(purchased_on) as purchase_span_days,
        coalesce(
            (sum(day_revenue) - min(first_day_revenue))::float
            / nullif(count(*) - 1, 0),
            0
        ) as repeat_purchase_value

    from (
        select
            *,
            first_value(day_revenue) over (
                partition by customer_id order by purchased_on asc
            ) as first_day_revenue
        from purchase_days
    ) as ranked_days
    group by customer_id

),

rfm_scored as (

    select
        order_features.customer_id,
        (cutoff.cutoff_at at time zone 'UTC')::date
        - (order_features.last_order_at at time zone 'UTC')::date
            as recency_days,
        {{ rfm_quintile(
            "(cutoff.cutoff_at at time zone 'UTC')::date"
            ~ " - (order_features.last_order_at at time zone 'UTC')::date",
            higher_is_better=false
        ) }} as r_score,
        {{ rfm_quintile('order_features.order_count') }} as f_score,
        {{ rfm_quintile('order_features.total_revenue') }} as m_score

    from order_features
    cross join cutoff

),

category_counts as (

    select
        valid_orders.customer_id,
        order_lines.category,
        sum(order_lines.quantity) as units

    from valid_orders
    inner join order_lines
        on valid_orders.order_id = order_lines.order_id
    group by valid_orders.customer_id, order_lines.category

),

category_features as (

    select
        customer_id,
        count(*) as purchased_category_count,
        -- Shannon entropy (nats) of the customer's units over categories
        coalesce(
            -sum(
                (units::float / total_units) * ln(units::float / total_units)
            ),
            0
        ) as category_entropy

    from (
        select
            *,
            sum(units) over (partition by customer_id) as total_units
        from category_counts
        where units > 0
    ) as category_shares
    group by customer_id

),

recent_events as (

    select
        events.customer_id,
        events.event_type,
        events.occurred_at,
        cutoff.cutoff_at

    from events
    cross join cutoff
    where
        events.customer_id is not null
        and events.event_type in (
            {%- for event_type in event_windows.values() %}
                '{{ event_type }}'{% if not loop.last %},{% endif %}
            {%- endfor %}
        )
        and events.occurred_at
        >= cutoff.cutoff_at - interval '{{ window_days | max }} day'
        and events.occurred_at < cutoff.cutoff_at
        and events.received_at < cutoff.cutoff_at

),

event_features as (

    select
        customer_id,
        {{ windowed_counts(event_windows, window_days) }}

    from recent_events
    group by customer_id

),

-- emails sent before the cutoff and whether they were opened or clicked by
-- then (a message's first open and first click)
email_features as (

    select
        email_messages.customer_id,
        count(*) as emails_sent,
        count(*) filter (
            where email_messages.first_opened_at < cutoff.cutoff_at
        ) as emails_opened,
        count(*) filter (
            where email_messages.first_clicked_at < cutoff.cutoff_at
        ) as emails_clicked,
        max(email_messages.first_opened_at) filter (
            where email_messages.first_opened_at < cutoff.cutoff_at
        ) as last_opened_at,
        max(email_messages.first_clicked_at) filter (
            where email_messages.first_clicked_at < cutoff.cutoff_at
        ) as last_clicked_at

    from email_messages
    cross join cutoff
    where
        email_messages.customer_id is not null
        and email_messages.sent_at < cutoff.cutoff_at
    group by email_messages.customer_id

),

final as (

    select
        known_customers.customer_id,
        known_customers.cutoff_at,
        known_customers.signed_up_at,
        order_features.first_order_at,
        order_features.last_order_at,
        coalesce(order_features.order_count, 0) as order_count,
        coalesce(order_features.total_revenue, 0) as total_revenue,
        order_features.total_revenue::float
        / nullif(order_features.order_count, 0) as average_order_value,
        order_features.max_order_value,
        order_features.avg_days_between_orders,
        {%- for days in order_window_days %}
            coalesce(order_features.orders_{{ days }}d, 0)
                as orders_{{ days }}d,
        {%- endfor %}
        {%- for days in revenue_window_days %}
            coalesce(order_features.revenue_{{ days }}d, 0)
                as revenue_{{ days }}d,
        {%- endfor %}
        coalesce(repeat_purchase_features.repeat_purchase_days, 0)
            as repeat_purchase_days,
        coalesce(repeat_purchase_features.purchase_span_days, 0)
            as purchase_span_days,
        coalesce(repeat_purchase_features.repeat_purchase_value, 0)
            as repeat_purchase_value,
        rfm_scored.r_score,
        rfm_scored.f_score,
        rfm_scored.m_score,
        {{ rfm_segment(
            'rfm_scored.r_score',
            rfm_fm_score('rfm_scored.f_score', 'rfm_scored.m_score')
        ) }} as rfm_segment,
        coalesce(category_features.purchased_category_count, 0)
            as purchased_category_count,
        coalesce(category_features.category_entropy, 0) as category_entropy,
        {{ windowed_count_columns(
            event_windows, window_days, 'event_features'
        ) }},
        coalesce(email_features.emails_sent, 0) as emails_sent,
        email_features.emails_opened::float
        / nullif(email_features.emails_sent, 0) as email_open_rate,
        email_features.emails_clicked::float
        / nullif(email_features.emails_sent, 0) as email_click_rate,
        email_features.last_opened_at,
        email_features.last_clicked_at,
        order_features.discount_order_share,
        order_features.discount_amount_share

    from known_customers
    left join order_features
        on known_customers.customer_id = order_features.customer_id
    left join repeat_purchase_features
        on known_customers.customer_id = repeat_purchase_features.customer_id
    left join rfm_scored
        on known_customers.customer_id = rfm_scored.customer_id
    left join category_features
        on known_customers.customer_id = category_features.customer_id
    left join event_features
        on known_customers.customer_id = event_features.customer_id
    left join email_features
        on known_customers.customer_id = email_features.customer_id

)

select * from final
