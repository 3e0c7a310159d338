{#
    RFM scoring and segments (DECISIONS.md, "RFM").

    rfm_quintile: a 1-5 score by quintile of the rank among all scored
    customers. Ties share a score (rank() gives tied customers the lowest
    rank), the lowest value scores 1 and the highest 5:
        score = least(5, 1 + floor(5 * (rank - 1) / (n - 1)))
    in integer arithmetic, so the SQL and an independent pandas computation
    agree exactly. For recency, fewer days is better: pass
    higher_is_better=false.
#}
{% macro rfm_quintile(column, higher_is_better=true) -%}
    least(
        5,
        1 + (
            5 * (
                rank() over (
                    order by {{ column }} {{ 'asc' if higher_is_better else 'desc' }}
                ) - 1
            )
        ) / greatest(count(*) over () - 1, 1)
    )
{%- endmacro %}

{# The FM score: the mean of F and M rounded half up, 1-5. #}
{% macro rfm_fm_score(f_score, m_score) -%}
    ({{ f_score }} + {{ m_score }} + 1) / 2
{%- endmacro %}

{#
    The rule table: R score x FM score -> segment, 14 rectangles covering the
    5 x 5 grid exactly once (tested by assert_rfm_segment_rules_cover_grid).
    Query it as marts.rfm_segment_rules.

              FM 1            FM 2             FM 3            FM 4       FM 5
    R 5   New             Potential Loyal. Potential Loyal. Champions  Champions
    R 4   Promising       Potential Loyal. Loyal            Loyal      Champions
    R 3   About to Sleep  About to Sleep   Need Attention   Loyal      Loyal
    R 2   Hibernating     Hibernating      At Risk          At Risk    Cannot Lose Them
    R 1   Lost            Lost             At Risk          At Risk    Cannot Lose Them
#}
{% macro rfm_segment_rules() %}
    {% do return([
        {'segment': 'Champions', 'r': [5, 5], 'fm': [4, 5],
         'description': 'Bought recently, buy often and spend the most.'},
        {'segment': 'Champions', 'r': [4, 4], 'fm': [5, 5],
         'description': 'Bought recently, buy often and spend the most.'},
        {'segment': 'Loyal', 'r': [4, 4], 'fm': [3, 4],
         'description': 'Buy regularly and spend well; responsive to promotions.'},
        {'segment': 'Loyal', 'r': [3, 3], 'fm': [4, 5],
         'description': 'Buy regularly and spend well; responsive to promotions.'},
        {'segment': 'Potential Loyalists', 'r': [5, 5], 'fm': [2, 3],
         'description': 'Recent customers with average frequency and spend.'},
        {'segment': 'Potential Loyalists', 'r': [4, 4], 'fm': [2, 2],
         'description': 'Recent customers with average frequency and spend.'},
        {'segment': 'New', 'r': [5, 5], 'fm': [1, 1],
         'description': 'Bought most recently, but not often.'},
        {'segment': 'Promising', 'r': [4, 4], 'fm': [1, 1],
         'description': 'Recent shoppers who have not spent much yet.'},
        {'segment': 'Need Attention', 'r': [3, 3], 'fm': [3, 3],
         'description': 'Average recency, frequency and spend.'},
        {'segment': 'About to Sleep', 'r': [3, 3], 'fm': [1, 2],
         'description': 'Below average recency and frequency; will be lost without activation.'},
        {'segment': 'At Risk', 'r': [1, 2], 'fm': [3, 4],
         'description': 'Spent and bought often, but long ago.'},
        {'segment': 'Cannot Lose Them', 'r': [1, 2], 'fm': [5, 5],
         'description': 'Made the biggest and most frequent purchases, but long ago.'},
        {'segment': 'Hibernating', 'r': [2, 2], 'fm': [1, 2],
         'description': 'Last purchase long ago, low spend and few orders.'},
        {'segment': 'Lost', 'r': [1, 1], 'fm': [1, 2],
         'description': 'Lowest recency, frequency and spend.'},
    ]) %}
{% endmacro %}

{% macro rfm_segment_names() %}
    {% set names = [] %}
    {% for rule in rfm_segment_rules() %}
        {% if rule.segment not in names %}{% do names.append(rule.segment) %}{% endif %}
    {% endfor %}
    {% do return(names) %}
{% endmacro %}

{# The segment of an (R score, FM score) pair, as a SQL case expression. #}
{% macro rfm_segment(r_score, fm_score) -%}
    case
        {%- for rule in rfm_segment_rules() %}
            when {{ r_score }} between {{ rule.r[0] }} and {{ rule.r[1] }}
                and {{ fm_score }} between {{ rule.fm[0] }} and {{ rule.fm[1] }}
                then '{{ rule.segment }}'
        {%- endfor %}
    end
{%- endmacro %}
