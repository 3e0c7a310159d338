{#
    Fails for every row where the SQL expression is not true, e.g.
        data_tests:
          - expression_is_true:
              arguments:
                expression: "confidence between 0 and 1"
    Null counts as a failure; guard nullable columns in the expression.
#}
{% test expression_is_true(model, expression, column_name=none) %}

    select *
    from {{ model }}
    where not coalesce(({{ expression }}), false)

{% endtest %}
