-- Every extracted version of every order, with the period it was current:
-- point-in-time models (customer_features) read an order's status as it was
-- at their cutoff, not as it is today.
with

source as (

    select * from {{ source('shop', 'orders') }}

),

distinct_versions as (

    select distinct on (order_id, updated_at) *
    from source
    order by order_id asc, updated_at asc, _loaded_at desc

),

renamed as (

    select
        {{ surrogate_key([
            'order_id', "updated_at at time zone 'UTC'"
        ]) }} as order_version_id,
        order_id,
        customer_id,
        status as order_status,
        subtotal,
        discount as discount_amount,
        total,
        discount > 0 as has_discount,
        status not in ('cancelled', 'refunded') as is_valid,
        placed_at,
        updated_at as valid_from,
        lead(updated_at) over (
            partition by order_id order by updated_at
        ) as valid_to

    from distinct_versions

)

select * from renamed
