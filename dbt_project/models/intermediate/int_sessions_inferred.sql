-- Browsing sessions: a device's (anonymous id's) page and track events, split
-- after `session_timeout_minutes` of inactivity (Google Analytics' 30 minutes).
--
-- Incremental by device: a run recomputes every session of the devices with
-- events (or new customer links) received since the latest stored session
-- input minus `event_lookback_hours`, and replaces that device's sessions
-- (delete+insert on anonymous_id), so a late event that joins or splits
-- sessions gives the same sessions as a full refresh.
{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key='anonymous_id',
        on_schema_change='fail',
        indexes=[
            {'columns': ['session_id'], 'unique': True},
            {'columns': ['anonymous_id']},
            {'columns': ['last_input_received_at']},
        ],
    )
}}

{% set lookback = interval_from_var('event_lookback_hours', 'hour') %}
{% set timeout = interval_from_var('session_timeout_minutes', 'minute') %}
{% if is_incremental() %}
    {% set watermark = watermark_literal(
        'select max(last_input_received_at) from ' ~ this
    ) %}
{% endif %}

with

events as (

    select * from {{ ref('int_events_stitched') }}

),

activity as (

    select
        event_id,
        anonymous_id,
        customer_id,
        event_type,
        product_id,
        occurred_at,
        last_input_received_at

    from events
    where
        anonymous_id is not null
        and not is_webhook
        and call_type in ('page', 'track', 'screen')
    {#- incremental: the changed devices are their own import, so `events`
        stays inlined, and = any(array): the planner then probes the
        anonymous_id index per device instead of scanning every event #}
    {% if is_incremental() %}
        and anonymous_id = any(
            array(
                select distinct changed.anonymous_id
                from {{ ref('int_events_stitched') }} as changed
                where
                    changed.last_input_received_at
                    > coalesce({{ watermark }}, '-infinity')
                    - {{ lookback }}
            )
        )
    {% endif %}

),

gaps as (

    select
        *,
        occurred_at - lag(occurred_at) over (
            partition by anonymous_id order by occurred_at asc, event_id asc
        ) as since_previous

    from activity

),

numbered as (

    select
        *,
        sum(
            case
                when since_previous is null or since_previous > {{ timeout }}
                    then 1
                else 0
            end
        ) over (
            partition by anonymous_id
            order by occurred_at asc, event_id asc
            rows between unbounded preceding and current row
        ) as session_number,
        since_previous is null
        or since_previous > {{ timeout }} as is_session_start

    from gaps

),

sessions as (

    select
        anonymous_id,
        session_number,
        min(case when is_session_start then event_id end) as first_event_id,
        max(customer_id) as customer_id,
        min(occurred_at) as started_at,
        max(occurred_at) as ended_at,
        count(*) as event_count,
        count(*) filter (where event_type = 'page_viewed') as page_view_count,
        count(*) filter (
            where event_type = 'product_viewed'
        ) as product_view_count,
        count(*) filter (where event_type = 'product_added') as cart_add_count,
        count(*) filter (
            where event_type = 'products_searched'
        ) as search_count,
        count(*) filter (
            where event_type = 'order_completed'
        ) > 0 as has_order_completed,
        array_agg(distinct product_id) filter (
            where event_type = 'product_viewed' and product_id is not null
        ) as viewed_product_ids,
        max(last_input_received_at) as last_input_received_at

    from numbered
    group by anonymous_id, session_number

),

final as (

    select
        {{ surrogate_key(['anonymous_id', 'first_event_id']) }} as session_id,
        anonymous_id,
        customer_id,
        started_at,
        ended_at,
        extract(epoch from ended_at - started_at)::integer
            as duration_seconds,
        event_count,
        page_view_count,
        product_view_count,
        cart_add_count,
        search_count,
        has_order_completed,
        coalesce(viewed_product_ids, '{}') as viewed_product_ids,
        last_input_received_at

    from sessions

)

select * from final
