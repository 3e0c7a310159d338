{# Text to bigint when it is a whole number, else null (ids in JSON payloads). #}
{% macro safe_bigint(expression) -%}
    case
        when {{ expression }} ~ '^[0-9]{1,18}$' then cast({{ expression }} as bigint)
    end
{%- endmacro %}
