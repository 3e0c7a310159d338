-- One row: the first whole second after the latest moment the warehouse has
-- data for (an exclusive bound: marts take what happened before it). Marts
-- are computed as of it unless the `as_of` var pins another moment
-- (macros/as_of.sql).
{{ config(materialized='table') }}

with

orders as (

    select max(placed_at) as latest_at from {{ ref('stg_shop__orders') }}

),

events as (

    select
        greatest(
            max(web_received_at), max(collector_received_at)
        ) as latest_at

    from {{ ref('int_events_stitched') }}

),

email_events as (

    select max(occurred_at) as latest_at
    from {{ ref('stg_esp__email_events') }}

),

carts as (

    select max(updated_at) as latest_at from {{ ref('stg_shop__carts') }}

),

final as (

    select
        date_trunc(
            'second',
            greatest(
                orders.latest_at,
                events.latest_at,
                email_events.latest_at,
                carts.latest_at
            )
        ) + interval '1 second' as as_of_at

    from orders
    cross join events
    cross join email_events
    cross join carts

)

select * from final
