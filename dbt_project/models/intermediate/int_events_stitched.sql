-- Every behavioural event once, from both streams (the web tracking export
-- and the real-time collector), with the customer it belongs to.
--
-- Incremental: each run takes the rows each stream received since its own
-- latest stored row minus `event_lookback_hours`, plus stored events whose
-- anonymous id gained (or changed) its customer link in that window, and
-- merges them on event_id. A message seen in both streams keeps the
-- collector's copy. A full refresh computes the same table (tested).
{{
    config(
        materialized='incremental',
        incremental_strategy='merge',
        unique_key='event_id',
        on_schema_change='fail',
        indexes=[
            {'columns': ['event_id'], 'unique': True},
            {'columns': ['anonymous_id']},
            {'columns': ['customer_id', 'occurred_at']},
            {'columns': ['received_at']},
            {'columns': ['web_received_at']},
            {'columns': ['collector_received_at']},
            {'columns': ['last_input_received_at']},
        ],
    )
}}

{% set lookback = interval_from_var('event_lookback_hours', 'hour') %}

with

web_events as (

    select * from {{ ref('stg_web__events') }}
    {% if is_incremental() %}
        where received_at > (
            select
                coalesce(max(merged.web_received_at), '-infinity')
                - {{ lookback }}
            from {{ this }} as merged
        )
    {% endif %}

),

collector_events as (

    select * from {{ ref('stg_collector__events') }}
    {% if is_incremental() %}
        where received_at > (
            select
                coalesce(max(merged.collector_received_at), '-infinity')
                - {{ lookback }}
            from {{ this }} as merged
        )
    {% endif %}

),

identities as (

    select * from {{ ref('int_identities_resolved') }}

),

web_versions as (

    select
        event_id,
        2 as stream_priority,
        'web' as event_stream,
        'web' as source_name,
        false as is_webhook,
        call_type,
        event_name,
        null::text as page_name,
        anonymous_id,
        user_id,
        customer_id as user_customer_id,
        properties,
        occurred_at,
        received_at,
        received_at as web_received_at,
        null::timestamptz as collector_received_at

    from web_events

),

collector_versions as (

    select
        event_id,
        1 as stream_priority,
        'collector' as event_stream,
        source_name,
        is_webhook,
        call_type,
        event_name,
        page_name,
        anonymous_id,
        user_id,
        customer_id as user_customer_id,
        properties,
        occurred_at,
        received_at,
        null::timestamptz as web_received_at,
        received_at as collector_received_at

    from collector_events

),

new_versions as (

    select * from collector_versions
    union all
    select * from web_versions

),

{% if is_incremental() %}

    merged_events as (

        select
            event_id,
            case
                when event_stream = 'collector' then 1 else 2
            end as stream_priority,
            event_stream,
            source_name,
            is_webhook,
            call_type,
            event_name,
            page_name,
            anonymous_id,
            user_id,
            user_customer_id,
            properties,
            occurred_at,
            received_at,
            web_received_at,
            collector_received_at

        from {{ this }}

    ),

    -- anonymous ids whose customer link arrived within the lookback window
    relinked_anonymous_ids as (

        select identities.anonymous_id
        from identities
        where identities.evidence_received_at > (
            select
                least(
                    coalesce(max(merged.web_received_at), '-infinity'),
                    coalesce(max(merged.collector_received_at), '-infinity')
                ) - {{ lookback }}
            from {{ this }} as merged
        )

    ),

    -- stored copies compete with new ones exactly as in a full refresh
    stored_versions as (

        select merged_events.*
        from merged_events
        where
            merged_events.event_id in (
                select new_versions.event_id from new_versions
            )
            or merged_events.anonymous_id in (
                select relinked_anonymous_ids.anonymous_id
                from relinked_anonymous_ids
            )

    ),

    versions as (

        select * from new_versions
        union all
        select * from stored_versions

    ),

{% else %}

    versions as (

        select * from new_versions

    ),

{% endif %}

ranked_versions as (

    select
        *,
        max(web_received_at) over (
            partition by event_id
        ) as merged_web_received_at,
        max(collector_received_at) over (
            partition by event_id
        ) as merged_collector_received_at

    from versions

),

deduplicated as (

    select distinct on (event_id) *
    from ranked_versions
    order by event_id asc, stream_priority asc, received_at asc

),

stitched as (

    select
        deduplicated.event_id,
        deduplicated.event_stream,
        deduplicated.source_name,
        deduplicated.is_webhook,
        deduplicated.call_type,
        deduplicated.event_name,
        case
            when deduplicated.call_type = 'page' then 'page_viewed'
            when deduplicated.call_type = 'track'
                then lower(
                    regexp_replace(
                        trim(deduplicated.event_name), '[^A-Za-z0-9]+', '_', 'g'
                    )
                )
            else deduplicated.call_type
        end as event_type,
        deduplicated.page_name,
        deduplicated.anonymous_id,
        deduplicated.user_id,
        deduplicated.user_customer_id,
        coalesce(
            deduplicated.user_customer_id, identities.customer_id
        ) as customer_id,
        deduplicated.user_customer_id is null
        and identities.customer_id is not null as is_identity_stitched,
        {{ safe_bigint("deduplicated.properties ->> 'product_id'") }}
            as product_id,
        {{ safe_bigint("deduplicated.properties ->> 'order_id'") }}
            as order_id,
        {{ safe_bigint("deduplicated.properties ->> 'cart_id'") }}
            as cart_id,
        deduplicated.properties ->> 'query' as search_query,
        deduplicated.properties,
        deduplicated.occurred_at,
        deduplicated.received_at,
        deduplicated.merged_web_received_at as web_received_at,
        deduplicated.merged_collector_received_at as collector_received_at,
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
