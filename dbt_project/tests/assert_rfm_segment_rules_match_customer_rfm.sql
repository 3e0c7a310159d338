-- The segment customer_rfm assigns is the one the rule table gives for the
-- customer's scores (the table and the case expression come from one macro,
-- this keeps them honest). Returns customers whose segment disagrees.
with

customer_rfm as (

    select * from {{ ref('customer_rfm') }}

),

rules as (

    select * from {{ ref('rfm_segment_rules') }}

)

select
    customer_rfm.customer_id,
    customer_rfm.rfm_segment,
    rules.rfm_segment as rule_segment

from customer_rfm
left join rules
    on
        customer_rfm.r_score between rules.r_score_min and rules.r_score_max
        and customer_rfm.fm_score
        between rules.fm_score_min and rules.fm_score_max
where customer_rfm.rfm_segment is distinct from rules.rfm_segment
