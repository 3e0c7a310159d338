-- One row per email message: who it went to, in which campaign, when, and
-- what the provider reported about it (delivery, first open and click,
-- counts, bounce, complaint, unsubscribe), aggregated once for every mart
-- that needs it.
--
-- Incremental by message: a run recomputes every message with a provider
-- event that happened after the latest stored one minus
-- `event_lookback_hours` (extract_load reads the export by arrival time, so
-- an event arriving later than that after it happened refreshes its message
-- only on a full refresh; suppressions never wait for dbt, campaigns.timers
-- reads raw.esp_email_events itself),
-- and every message to an address whose customer record changed in that
-- window, from all of its events, and replaces it (delete+insert on
-- message_id).
--
-- Today every message comes from the email provider's export. The campaign
-- send ledger (ops.send_ledger: variant, trigger, ledger state) is the second
-- input to union here, keyed by the same message id: see `messages` below.
{{ config(
    materialized='incremental',
    incremental_strategy='delete+insert',
    unique_key='message_id',
    on_schema_change='fail',
    indexes=[
        {'columns': ['message_id'], 'unique': True},
        {'columns': ['customer_id', 'sent_at']},
        {'columns': ['last_event_at']},
    ],
) }}

{% set lookback = interval_from_var('event_lookback_hours', 'hour') %}
{% if is_incremental() %}
    {% set latest_event_at = watermark_literal(
        'select max(last_event_at) from ' ~ this
    ) %}
{% endif %}

with

email_events as (

    select * from {{ ref('stg_esp__email_events') }}

),

customers as (

    select * from {{ ref('stg_shop__customers') }}

),

{% if is_incremental() %}

    -- its own import, so email_events below stays a single, inlined scan
    recent_email_events as (

        select recent.message_id
        from {{ ref('stg_esp__email_events') }} as recent
        where
            recent.occurred_at
            > coalesce({{ latest_event_at }}, '-infinity') - {{ lookback }}

    ),

    changed_messages as (

        select recent_email_events.message_id
        from recent_email_events
        union
        select previous.message_id
        from {{ this }} as previous
        inner join customers
            on previous.email = customers.email
        where
            customers.updated_at
            > coalesce({{ latest_event_at }}, '-infinity') - {{ lookback }}

    ),

{% endif %}

esp_messages as (

    select
        message_id,
        min(campaign) as campaign,
        min(email) as email,
        coalesce(
            min(occurred_at) filter (where event_type = 'send'),
            min(occurred_at)
        ) as sent_at,
        'esp_export' as message_source,
        min(occurred_at) filter (
            where event_type = 'delivery'
        ) as delivered_at,
        min(occurred_at) filter (where event_type = 'open') as first_opened_at,
        min(occurred_at) filter (
            where event_type = 'click'
        ) as first_clicked_at,
        count(*) filter (where event_type = 'open') as open_count,
        count(*) filter (where event_type = 'click') as click_count,
        min(occurred_at) filter (where event_type = 'bounce') as bounced_at,
        min(bounce_type) filter (where event_type = 'bounce') as bounce_type,
        min(occurred_at) filter (
            where event_type = 'complaint'
        ) as complained_at,
        min(occurred_at) filter (
            where event_type = 'unsubscribe'
        ) as unsubscribed_at,
        max(occurred_at) as last_event_at

    from email_events
    {% if is_incremental() %}
        -- = any(array): the planner then expects a few ids and probes the
        -- message_id index instead of sorting the whole export
        where message_id = any(
            array(select changed_messages.message_id from changed_messages)
        )
    {% endif %}
    group by message_id

),

{#- The send ledger joins here: add stg_ops__send_ledger, select the same
    columns from it as ledger_messages (message_source 'send_ledger', the
    engagement columns from esp_messages by message_id), and union it below,
    keeping one row per message_id. #}

messages as (

    select * from esp_messages

),

final as (

    select
        messages.message_id,
        messages.campaign,
        messages.email,
        customers.customer_id,
        messages.sent_at,
        messages.message_source,
        messages.delivered_at,
        messages.first_opened_at,
        messages.first_clicked_at,
        messages.open_count,
        messages.click_count,
        messages.bounced_at,
        messages.bounce_type,
        messages.complained_at,
        messages.unsubscribed_at,
        messages.last_event_at

    from messages
    left join customers
        on messages.email = customers.email

)

select * from final
