-- Every behavioural event once, from both streams (the web tracking export
-- and the real-time collector), with the customer it belongs to.
--
-- Incremental: each run takes the rows each stream received since its own
-- latest stored row minus `event_lookback_hours`, plus stored events whose
-- anonymous id gained (or changed) its customer link in that window, and
-- merges them on event_id. A message seen in both streams keeps the
-- collector's copy. A full refresh computes the same table (tested).
--
-- The payload's useful fields are columns (product_id, order_id, cart_id,
-- search_query, page_path); the full properties stay in staging, joinable
-- on event_id, so this table stays narrow enough to sort quickly.
{{
    config(
        materialized='incremental',
        incremental_strategy='merge',
        unique_key='event_id',
        on_schema_change='fail',
        indexes=[
            {'columns': ['event_id'], 'unique': True},
            {'columns': ['anonymous_id']},
            {'columns': ['web_received_at']},
            {'columns': ['collector_received_at']},
            {'columns': ['last_input_received_at'], 'type': 'brin'},
        ],
    )
}}

{% set lookback = interval_from_var('event_lookback_hours', 'hour') %}
{% if is_incremental() %}
    {#- each stream's latest stored arrival, as literals (macros/as_of.sql) #}
    {% set web_watermark = watermark_literal(
        'select max(web_received_at) from ' ~ this
    ) %}
    {% set collector_watermark = watermark_literal(
        'select max(collector_received_at) from ' ~ this
    ) %}
{% endif %}
{% set version_columns = [
    'event_id', 'event_stream', 'source_name', 'is_webhook', 'call_type',
    'event_name', 'page_name', 'anonymous_id', 'user_id', 'user_customer_id',
    'product_id', 'order_id', 'cart_id', 'search_query', 'page_path',
    'occurred_at', 'received_at',
] %}

with

web_events as (

    select * from {{ ref('stg_web__events') }}
    {% if is_incremental() %}
        where
            received_at
            > coalesce({{ web_watermark }}, '-infinity') - {{ lookback }}
    {% endif %}

),

collector_events as (

    select * from {{ ref('stg_collector__events') }}
    {% if is_incremental() %}
        where
            received_at
            > coalesce({{ collector_watermark }}, '-infinity') - {{ lookback }}
    {% endif %}

),

identities as (

    select * from {{ ref('int_identities_resolved') }}

),

web_versions as (

    select
        event_id,
        'web' as event_stream,
        'web' as source_name,
        false as is_webhook,
        call_type,
        event_name,
        null::text as page_name,
        anonymous_id,
        user_id,
        customer_id as user_customer_id,
        {{ safe_bigint("properties ->> 'product_id'") }} as product_id,
        {{ safe_bigint("properties ->> 'order_id'") }} as order_id,
        {{ safe_bigint("properties ->> 'cart_id'") }} as cart_id,
        properties ->> 'query' as search_query,
        properties ->> 'path' as page_path,
        occurred_at,
        received_at

    from web_events

),

collector_versions as (

    select
        event_id,
        'collector' as event_stream,
        source_name,
        is_webhook,
        call_type,
        event_name,
        page_name,
        anonymous_id,
        user_id,
        customer_id as user_customer_id,
        {{ safe_bigint("properties ->> 'product_id'") }} as product_id,
        {{ safe_bigint("properties ->> 'order_id'") }} as order_id,
        {{ safe_bigint("properties ->> 'cart_id'") }} as cart_id,
        properties ->> 'query' as search_query,
        properties ->> 'path' as page_path,
        occurred_at,
        received_at

    from collector_events

),

{% if is_incremental() %}

    new_versions as (

        select
            *,
            null::timestamptz as web_received_at,
            received_at as collector_received_at
        from collector_versions
        union all
        select
            *,
            received_at as web_received_at,
            null::timestamptz as collector_received_at
        from web_versions

    ),

    -- anonymous ids whose customer link arrived within the lookback window
    -- of the stream furthest behind (least() skips a stream with no rows)
    relinked_anonymous_ids as (

        select identities.anonymous_id
        from identities
        where
            identities.evidence_received_at
            > coalesce(
                least({{ web_watermark }}, {{ collector_watermark }}),
                '-infinity'
            ) - {{ lookback }}

    ),

    -- stored copies compete with new ones exactly as in a full refresh
    stored_versions as (

        select
            {% for column in version_columns %}
                merged.{{ column }},
            {% endfor %}
            merged.web_received_at,
            merged.collector_received_at

        from {{ this }} as merged
        where
            merged.event_id in (
                select new_versions.event_id from new_versions
            )
            or merged.anonymous_id in (
                select relinked_anonymous_ids.anonymous_id
                from relinked_anonymous_ids
            )

    ),

    versions as (

        select * from new_versions
        union all
        select * from stored_versions

    ),

    -- the winning copy of each message (the collector's first) and when
    -- each stream delivered it
    ranked_versions as (

        select
            *,
            row_number() over by_event as version_rank,
            max(web_received_at) over by_event_all as merged_web_received_at,
            max(collector_received_at) over by_event_all
                as merged_collector_received_at

        from versions
        window
            by_event as (
                partition by event_id
                order by
                    case when event_stream = 'collector' then 1 else 2 end,
                    received_at
            ),
            by_event_all as (
                by_event
                rows between unbounded preceding and unbounded following
            )

    ),

    deduplicated as (

        select
            {% for column in version_columns %}
                {{ column }},
            {% endfor %}
            merged_web_received_at as web_received_at,
            merged_collector_received_at as collector_received_at

        from ranked_versions
        where version_rank = 1

    ),

{% else %}

    -- Within a stream an event id is unique (raw.events' primary key, and
    -- extract_load's contract for raw.web_events, a unique index), so one
    -- full join pairs the copies: the collector's wins.
    deduplicated as (

        select
            coalesce(
                collector_versions.event_id, web_versions.event_id
            ) as event_id,
            {% for column in version_columns if column != 'event_id' %}
                case
                    when collector_versions.event_id is not null
                        then collector_versions.{{ column }}
                    else web_versions.{{ column }}
                end as {{ column }},
            {% endfor %}
            web_versions.received_at as web_received_at,
            collector_versions.received_at as collector_received_at

        from collector_versions
        full outer join web_versions
            on collector_versions.event_id = web_versions.event_id

    ),

{% endif %}

stitched as (

    select
        {% for column in version_columns %}
            deduplicated.{{ column }},
        {% endfor %}
        deduplicated.web_received_at,
        deduplicated.collector_received_at,
        case
            when deduplicated.call_type = 'page' then 'page_viewed'
            when deduplicated.call_type = 'track'
                then lower(replace(trim(deduplicated.event_name), ' ', '_'))
            else deduplicated.call_type
        end as event_type,
        coalesce(
            deduplicated.user_customer_id, identities.customer_id
        ) as customer_id,
        deduplicated.user_customer_id is null
        and identities.customer_id is not null as is_identity_stitched,
        case
            when deduplicated.user_customer_id is null
                then identities.evidence_received_at
        end as identity_received_at

    from deduplicated
    left join identities
        on deduplicated.anonymous_id = identities.anonymous_id

),

final as (

    select
        *,
        -- the latest arrival of anything that shaped this row: downstream
        -- incremental models reprocess what changed after their watermark
        greatest(
            web_received_at, collector_received_at, identity_received_at
        ) as last_input_received_at

    from stitched

)

select * from final
