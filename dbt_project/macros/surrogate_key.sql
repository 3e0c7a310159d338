{#
    A hashed key for a grain without a natural key: md5 of the fields joined
    by '-', with nulls made explicit so (a, null) and (null, a) differ.
    Same contract as dbt_utils.generate_surrogate_key.
#}
{% macro surrogate_key(fields) -%}
    md5(
        {%- for field in fields %}
            coalesce(cast({{ field }} as text), '_null_')
            {%- if not loop.last %} || '-' || {% endif %}
        {%- endfor %}
    )
{%- endmacro %}
