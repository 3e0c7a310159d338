-- Every (R score, FM score) cell of the 5 x 5 grid falls in exactly one rule
-- of the segment rule table: no customer is left without a segment and no
-- cell is ambiguous. Returns the offending cells.
with

rules as (

    select * from {{ ref('rfm_segment_rules') }}

),

grid as (

    select
        r.r_score,
        fm.fm_score

    from generate_series(1, 5) as r (r_score)
    cross join generate_series(1, 5) as fm (fm_score)

),

matches as (

    select
        grid.r_score,
        grid.fm_score,
        count(rules.rule_number) as matching_rules

    from grid
    left join rules
        on
            grid.r_score between rules.r_score_min and rules.r_score_max
            and grid.fm_score between rules.fm_score_min and rules.fm_score_max
    group by grid.r_score, grid.fm_score

)

select * from matches
where matching_rules != 1
