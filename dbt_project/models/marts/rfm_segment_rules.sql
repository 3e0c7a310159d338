-- The RFM segment rule table as a relation, rendered from the same macro
-- customer_rfm uses, for analysts and BI tools to read.
with

rules as (

    {% for rule in rfm_segment_rules() %}
        select
            {{ loop.index }} as rule_number,
            '{{ rule.segment }}' as rfm_segment,
            {{ rule.r[0] }} as r_score_min,
            {{ rule.r[1] }} as r_score_max,
            {{ rule.fm[0] }} as fm_score_min,
            {{ rule.fm[1] }} as fm_score_max,
            '{{ rule.description }}' as segment_description
        {% if not loop.last %}union all{% endif %}
    {% endfor %}

)

select * from rules
