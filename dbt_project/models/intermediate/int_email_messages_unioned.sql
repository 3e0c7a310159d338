-- One row per email message: who it went to, in which campaign, and when.
--
-- Today every message comes from the email provider's export. The campaign
-- send ledger (ops.send_ledger: variant, trigger, ledger state) is the second
-- input to union here, keyed by the same message_id, once it is a source.
with

email_events as (

    select * from {{ ref('stg_esp__email_events') }}

),

customers as (

    select * from {{ ref('stg_shop__customers') }}

),

esp_messages as (

    select
        message_id,
        min(campaign) as campaign,
        min(email) as email,
        coalesce(
            min(occurred_at) filter (where event_type = 'send'),
            min(occurred_at)
        ) as sent_at,
        'esp_export' as message_source

    from email_events
    group by message_id

),

{#- The send ledger joins here: add stg_ops__send_ledger, select the same
    columns from it as ledger_messages (message_source 'send_ledger'), and
    union it below, keeping one row per message_id. #}

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
        messages.message_source

    from messages
    left join customers
        on messages.email = customers.email

)

select * from final
