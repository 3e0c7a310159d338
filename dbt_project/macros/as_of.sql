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
