{#
    Per-window event counts for customer_features: for each feature name in
    `event_types` (name -> event_type) and each number of days in `windows`,
    `count(*) filter (...) as <name>_<days>d`, the events of that type in the
    `days` days before `end_column`. Columns come out feature by feature,
    shortest window first (views_7d, views_30d, ..., searches_90d).
    With `coalesce_from` instead, the same column list read from that
    relation with 0 for a customer without events.
#}
{% macro windowed_counts(
    event_types, windows, time_column='occurred_at', end_column='cutoff_at'
) -%}
    {%- for name, event_type in event_types.items() -%}
        {%- set outer = loop -%}
        {%- for days in windows %}
        count(*) filter (
            where
            event_type = '{{ event_type }}'
            and {{ time_column }} >= {{ end_column }} - interval '{{ days }} day'
        ) as {{ name }}_{{ days }}d
        {%- if not (outer.last and loop.last) %},{% endif %}
        {%- endfor -%}
    {%- endfor -%}
{%- endmacro %}

{% macro windowed_count_columns(event_types, windows, relation) -%}
    {%- for name in event_types -%}
        {%- set outer = loop -%}
        {%- for days in windows %}
        coalesce({{ relation }}.{{ name }}_{{ days }}d, 0) as {{ name }}_{{ days }}d
        {%- if not (outer.last and loop.last) %},{% endif %}
        {%- endfor -%}
    {%- endfor -%}
{%- endmacro %}
