{#
    The moment marts are computed "as of": the `as_of` var when given, else
    the latest time the data knows about (int_as_of). Never now(): a rerun
    on the same data gives the same tables.
#}
{% macro as_of_timestamp() -%}
    {%- if var('as_of') is not none -%}
        cast('{{ var("as_of") }}' as timestamptz)
    {%- else -%}
        (select as_of.as_of_at from {{ ref('int_as_of') }} as as_of)
    {%- endif -%}
{%- endmacro %}

{# customer_features' point in time: the `cutoff` var, else as_of. #}
{% macro cutoff_timestamp() -%}
    {%- if var('cutoff') is not none -%}
        cast('{{ var("cutoff") }}' as timestamptz)
    {%- else -%}
        {{ as_of_timestamp() }}
    {%- endif -%}
{%- endmacro %}

{# A whole number var as an interval, e.g. interval_from_var('vip_lapse_days', 'day'). #}
{% macro interval_from_var(name, unit) -%}
    interval '{{ var(name) | int }} {{ unit }}'
{%- endmacro %}

{#
    An incremental model's watermark as a timestamp literal: the value of
    `query` (one timestamptz; null when there is nothing yet, and then the
    literal is null too) read before the model's SQL is sent. As a literal the planner sees the real bound, so it
    picks an index range scan over the few new rows instead of planning for a
    third of the table, which it does for a bound it cannot see.
#}
{% macro watermark_literal(query) -%}
    {%- set value = none -%}
    {%- if execute -%}
        {%- set value = run_query(
            "select (extract(epoch from q.v) * 1000000)::bigint from ("
            ~ query ~ ") as q (v)"
        ).columns[0].values()[0] -%}
    {%- endif -%}
    {%- if value is none -%}
        null::timestamptz
    {%- else -%}
        {%- set dt = modules.datetime -%}
        {%- set utc = dt.datetime(1970, 1, 1)
            + dt.timedelta(microseconds=value | int) -%}
        '{{ utc.isoformat() }}+00'::timestamptz
    {%- endif -%}
{%- endmacro %}
