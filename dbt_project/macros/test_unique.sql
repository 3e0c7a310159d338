{#
    The `unique` test on PostgreSQL: when the tested relation is a table with
    a valid unique index on exactly that column (the incremental models and
    the larger marts declare one in their config), PostgreSQL already
    guarantees there are no duplicates and the test reads no rows: the check
    is a one-time filter in front of the scan. Otherwise (views, expressions,
    no such index) it is dbt's own test, a full group by. It fails exactly
    when dbt's would; it only skips re-proving what the index enforces, which
    saved reading millions of rows on every hourly run.
#}
{% macro postgres__test_unique(model, column_name) %}

with

enforcing_index as (

    select 1 as is_enforced
    from pg_catalog.pg_index as indexes
    inner join pg_catalog.pg_attribute as attributes
        on
            indexes.indrelid = attributes.attrelid
            and indexes.indkey[0] = attributes.attnum
    where
        indexes.indrelid = to_regclass('{{ model }}')
        and indexes.indisunique
        and indexes.indisvalid
        and indexes.indnkeyatts = 1
        and indexes.indpred is null
        and attributes.attname = '{{ column_name | replace('"', '') }}'

)

select
    {{ column_name }} as unique_field,
    count(*) as n_records

from {{ model }}
where
    {{ column_name }} is not null
    and not exists (select 1 as is_enforced from enforcing_index)
group by {{ column_name }}
having count(*) > 1

{% endmacro %}
