-- One row per email message: delivery, engagement and conversions, for
-- campaign reporting and experiment analysis. Two conversion measures
-- (DECISIONS.md, "Attribution"):
--   orders_within_window / revenue_within_window: the recipient's orders in
--     the `attribution_window_days` after the send, engaged or not, which is
--     what an A/B test or a holdout comparison needs (intent to treat);
--   attributed_orders / attributed_revenue: last touch, each order credited
--     once to the latest touch (a message's first open or first click) in the
--     window before it.
-- is_window_closed says the window ended before the as-of moment, so the
-- counts of that message are final.
{{ config(indexes=[{'columns': ['message_id'], 'unique': True}]) }}

{% set window = interval_from_var('attribution_window_days', 'day') %}

with

messages as (

    select * from {{ ref('int_email_messages_unioned') }}

),

valid_orders as (

    select * from {{ ref('int_orders_counted') }}

),

as_of as (

    select {{ as_of_timestamp() }} as as_of_at

),

-- a message's touches: its first open and its first click
touches as (

    select
        messages.message_id,
        messages.customer_id,
        touch.touched_at

    from messages
    cross join
        lateral (
            values (messages.first_opened_at), (messages.first_clicked_at)
        ) as touch (touched_at)
    where
        messages.customer_id is not null
        and touch.touched_at is not null

),

-- each order credited to the latest open or click in the window before it
last_touch_orders as (

    select distinct on (valid_orders.order_id)
        valid_orders.order_id,
        valid_orders.total,
        touches.message_id

    from valid_orders
    inner join touches
        on
            valid_orders.customer_id = touches.customer_id
            and valid_orders.placed_at >= touches.touched_at
            and valid_orders.placed_at < touches.touched_at + {{ window }}
    order by
        valid_orders.order_id asc,
        touches.touched_at desc,
        touches.message_id asc

),

attributed as (

    select
        message_id,
        count(*) as attributed_orders,
        sum(total) as attributed_revenue

    from last_touch_orders
    group by message_id

),

windowed as (

    select
        messages.message_id,
        count(valid_orders.order_id) as orders_within_window,
        coalesce(sum(valid_orders.total), 0) as revenue_within_window

    from messages
    inner join valid_orders
        on
            messages.customer_id = valid_orders.customer_id
            and messages.sent_at <= valid_orders.placed_at
            and valid_orders.placed_at < messages.sent_at + {{ window }}
    group by messages.message_id

),

final as (

    select
        messages.message_id,
        messages.campaign,
        messages.customer_id,
        messages.message_source,
        messages.sent_at,
        messages.delivered_at,
        messages.first_opened_at,
        messages.first_clicked_at,
        messages.bounced_at,
        messages.bounce_type,
        messages.complained_at,
        messages.unsubscribed_at,
        coalesce(messages.open_count, 0) as open_count,
        coalesce(messages.click_count, 0) as click_count,
        messages.delivered_at is not null as is_delivered,
        messages.first_opened_at is not null as is_opened,
        messages.first_clicked_at is not null as is_clicked,
        messages.bounced_at is not null as is_bounced,
        coalesce(messages.bounce_type = 'hard', false)
            as is_hard_bounced,
        messages.complained_at is not null as is_complained,
        messages.unsubscribed_at is not null as is_unsubscribed,
        coalesce(windowed.orders_within_window, 0) as orders_within_window,
        coalesce(windowed.revenue_within_window, 0) as revenue_within_window,
        coalesce(windowed.orders_within_window, 0) > 0 as has_converted,
        coalesce(attributed.attributed_orders, 0) as attributed_orders,
        coalesce(attributed.attributed_revenue, 0) as attributed_revenue,
        {{ var('attribution_window_days') | int }} as attribution_window_days,
        messages.sent_at + {{ window }} <= as_of.as_of_at as is_window_closed,
        as_of.as_of_at

    from messages
    left join windowed
        on messages.message_id = windowed.message_id
    left join attributed
        on messages.message_id = attributed.message_id
    cross join as_of
    where messages.sent_at < as_of.as_of_at

)

select * from final
