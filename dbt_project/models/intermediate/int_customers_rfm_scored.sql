-- Recency, frequency and monetary value of every customer with a valid order
-- before the as-of moment, and their 1-5 quintile scores (macros/rfm.sql).
with

valid_orders as (

    select * from {{ ref('int_orders_counted') }}

),

as_of as (

    select {{ as_of_timestamp() }} as as_of_at

),

customer_orders as (

    select
        customer_id,
        min(placed_at) as first_order_at,
        max(placed_at) as last_order_at,
        count(*) as frequency,
        sum(total) as monetary

    from valid_orders
    group by customer_id

),

measured as (

    select
        customer_orders.customer_id,
        as_of.as_of_at,
        customer_orders.first_order_at,
        customer_orders.last_order_at,
        (as_of.as_of_at at time zone 'UTC')::date
        - (customer_orders.last_order_at at time zone 'UTC')::date
            as recency_days,
        customer_orders.frequency,
        customer_orders.monetary,
        customer_orders.monetary / customer_orders.frequency
            as average_order_value

    from customer_orders
    cross join as_of

),

scored as (

    select
        *,
        {{ rfm_quintile('recency_days', higher_is_better=false) }} as r_score,
        {{ rfm_quintile('frequency') }} as f_score,
        {{ rfm_quintile('monetary') }} as m_score

    from measured

),

final as (

    select
        *,
        {{ rfm_fm_score('f_score', 'm_score') }} as fm_score

    from scored

)

select * from final
