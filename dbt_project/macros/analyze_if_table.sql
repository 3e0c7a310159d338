{#
    Post-hook of every model (dbt_project.yml): refresh the planner's
    statistics of a table dbt just wrote, so the next models' joins over
    millions of events get good plans without waiting for autovacuum.
    Views have no statistics: nothing to do.
#}
{% macro analyze_if_table() -%}
    {%- if config.get('materialized') in ('table', 'incremental') -%}
        analyze {{ this }}
    {%- endif -%}
{%- endmacro %}
