-- RFM as of one moment (the `as_of` var, else the latest data): recency,
-- frequency and monetary value, their 1-5 quintile scores and the named
-- segment from the rule table (macros/rfm.sql, marts.rfm_segment_rules).
with

scored_customers as (

    select * from {{ ref('int_customers_rfm_scored') }}

),

final as (

    select
        customer_id,
        as_of_at,
        first_order_at,
        last_order_at,
        recency_days,
        frequency,
        monetary,
        average_order_value,
        r_score,
        f_score,
        m_score,
        fm_score,
        r_score::text || f_score::text || m_score::text as rfm_cell,
        {{ rfm_segment('r_score', 'fm_score') }} as rfm_segment

    from scored_customers

)

select * from final
