{#
    Models land in the schema their folder names (staging, intermediate,
    marts, snapshots) rather than dbt's default <target>_<custom>, so the
    Airflow Assets (warehouse://marts/<model>) and the ML and campaign code
    can name relations without knowing the dbt target.
#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}
        {{ target.schema }}
    {%- else -%}
        {{ custom_schema_name | trim }}
    {%- endif -%}
{%- endmacro %}
