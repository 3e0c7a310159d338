with

source as (

    select * from {{ source('shop', 'customers') }}

),

latest_versions as (

    select distinct on (customer_id) *
    from source
    order by customer_id asc, updated_at desc, _loaded_at desc

),

renamed as (

    select
        customer_id,
        lower(trim(email)) as email,
        first_name,
        last_name,
        accepts_email_marketing as has_email_marketing_consent,
        email_consent_at,
        timezone,
        country,
        signup_at as signed_up_at,
        created_at,
        updated_at,
        _loaded_at as loaded_at

    from latest_versions

)

select * from renamed
