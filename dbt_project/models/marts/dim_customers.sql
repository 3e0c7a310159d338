-- One row per customer of the shop, in its latest version. No personal data:
-- email addresses and names stay in staging, where the campaigns read them
-- (and erasure finds them); analysis and ML need none of it.
with

customers as (

    select * from {{ ref('stg_shop__customers') }}

),

final as (

    select
        customer_id,
        signed_up_at,
        has_email_marketing_consent,
        timezone,
        country,
        created_at,
        updated_at

    from customers

)

select * from final
