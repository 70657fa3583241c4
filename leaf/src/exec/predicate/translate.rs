//! Translation of DataFusion's physical filter expressions into [`IndexPredicate`]s.

use std::ops::Bound;
use std::sync::Arc;

use datafusion::logical_expr::Operator;
use datafusion::physical_expr::expressions::{
    BinaryExpr, Column, InListExpr, IsNotNullExpr, IsNullExpr, LikeExpr, Literal, NotExpr,
};
use datafusion::physical_expr::{PhysicalExpr, ScalarFunctionExpr};

use altdb_common::columns::SCORE_COLUMN;
use altdb_common::geo::{GeoBox, GEO_DISTANCE, GEO_WITHIN_BOX, GEO_WITHIN_RADIUS};
use altdb_common::search::SEARCH_FUNCTION;

use super::{IndexPredicate, Scalar};

/// The column an expression is, unless it is `_score` (computed by the scan,
/// not stored, so no index knows it).
fn column_name(expr: &Arc<dyn PhysicalExpr>) -> Option<String> {
    expr.downcast_ref::<Column>()
        .map(|c| c.name().to_string())
        .filter(|name| name != SCORE_COLUMN)
}

fn literal(expr: &Arc<dyn PhysicalExpr>) -> Option<Scalar> {
    expr.downcast_ref::<Literal>()
        .and_then(|l| Scalar::of(l.value()))
}

impl IndexPredicate {
    /// Translates a physical filter expression.
    pub fn from_physical(expr: &Arc<dyn PhysicalExpr>) -> IndexPredicate {
        Self::translate(expr).unwrap_or(IndexPredicate::Opaque)
    }

    fn translate(expr: &Arc<dyn PhysicalExpr>) -> Option<IndexPredicate> {
        if let Some(binary) = expr.downcast_ref::<BinaryExpr>() {
            let op = *binary.op();
            if matches!(op, Operator::And | Operator::Or) {
                let mut children = Vec::new();
                for side in [binary.left(), binary.right()] {
                    match (Self::from_physical(side), op) {
                        (IndexPredicate::And(inner), Operator::And)
                        | (IndexPredicate::Or(inner), Operator::Or) => children.extend(inner),
                        (child, _) => children.push(child),
                    }
                }
                return Some(if op == Operator::And {
                    IndexPredicate::And(merge_ranges(children))
                } else {
                    IndexPredicate::Or(children)
                });
            }
            if let Some(bounds) = distance_bound(binary) {
                return Some(IndexPredicate::Superset(Box::new(bounds)));
            }
            let (column, value, op) = match (column_name(binary.left()), literal(binary.right())) {
                (Some(c), Some(v)) => (c, v, op),
                _ => (
                    column_name(binary.right())?,
                    literal(binary.left())?,
                    op.swap()?,
                ),
            };
            let range = |lower, upper| IndexPredicate::Range {
                column: column.clone(),
                lower,
                upper,
            };
            return Some(match op {
                Operator::Eq => IndexPredicate::Eq(column, value),
                Operator::NotEq => IndexPredicate::Not(Box::new(IndexPredicate::Eq(column, value))),
                Operator::Lt => range(Bound::Unbounded, Bound::Excluded(value)),
                Operator::LtEq => range(Bound::Unbounded, Bound::Included(value)),
                Operator::Gt => range(Bound::Excluded(value), Bound::Unbounded),
                Operator::GtEq => range(Bound::Included(value), Bound::Unbounded),
                _ => return None,
            });
        }
        if let Some(list) = expr.downcast_ref::<InListExpr>() {
            let column = column_name(list.expr())?;
            let values = list
                .list()
                .iter()
                .map(literal)
                .collect::<Option<Vec<_>>>()?;
            let predicate = IndexPredicate::In(column, values);
            return Some(if list.negated() {
                IndexPredicate::Not(Box::new(predicate))
            } else {
                predicate
            });
        }
        if let Some(is_null) = expr.downcast_ref::<IsNullExpr>() {
            return Some(IndexPredicate::IsNull(column_name(is_null.arg())?));
        }
        if let Some(not_null) = expr.downcast_ref::<IsNotNullExpr>() {
            return Some(IndexPredicate::IsNotNull(column_name(not_null.arg())?));
        }
        if let Some(not) = expr.downcast_ref::<NotExpr>() {
            return Some(IndexPredicate::Not(Box::new(Self::from_physical(
                not.arg(),
            ))));
        }
        if let Some(function) = expr.downcast_ref::<ScalarFunctionExpr>() {
            if let Some(bounds) = geo_function(function) {
                return Some(IndexPredicate::Superset(Box::new(bounds)));
            }
            if function.name() != SEARCH_FUNCTION {
                return None;
            }
            let [column, query] = function.args() else {
                return None;
            };
            let Scalar::Str(query) = literal(query)? else {
                return None;
            };
            return Some(IndexPredicate::Search {
                column: column_name(column)?,
                query,
            });
        }
        if let Some(like) = expr.downcast_ref::<LikeExpr>() {
            if like.case_insensitive() {
                return None;
            }
            let column = column_name(like.expr())?;
            let Scalar::Str(pattern) = literal(like.pattern())? else {
                return None;
            };
            let predicate = like_predicate(column, &pattern)?;
            return Some(if like.negated() {
                IndexPredicate::Not(Box::new(predicate))
            } else {
                predicate
            });
        }
        None
    }
}

/// A literal number as f64.
fn number(expr: &Arc<dyn PhysicalExpr>) -> Option<f64> {
    match literal(expr)? {
        Scalar::F64(v) => Some(v),
        Scalar::I64(v) => Some(v as f64),
        _ => None,
    }
}

/// The index question for "the point (lat, lon) is in the box": a range on
/// each column (two longitude ranges when the box crosses ±180°). The geo
/// function above still checks each candidate exactly.
fn within_box(lat: String, lon: String, bounds: GeoBox) -> IndexPredicate {
    let range = |column: &str, lower: f64, upper: f64| IndexPredicate::Range {
        column: column.to_string(),
        lower: Bound::Included(Scalar::F64(lower)),
        upper: Bound::Included(Scalar::F64(upper)),
    };
    let mut parts = vec![range(&lat, bounds.south, bounds.north)];
    match bounds.west_east {
        None => {}
        Some((west, east)) if west <= east => parts.push(range(&lon, west, east)),
        Some((west, east)) => parts.push(IndexPredicate::Or(vec![
            range(&lon, west, 180.0),
            range(&lon, -180.0, east),
        ])),
    }
    IndexPredicate::And(parts)
}

/// `geo_within_box(lat, lon, s, w, n, e)` and `geo_within_radius(lat, lon, ..)`
/// over two columns and literal bounds.
fn geo_function(function: &ScalarFunctionExpr) -> Option<IndexPredicate> {
    let args = function.args();
    let (lat, lon) = (column_name(args.first()?)?, column_name(args.get(1)?)?);
    let bounds = match function.name() {
        GEO_WITHIN_BOX => {
            let [_, _, south, west, north, east] = args else {
                return None;
            };
            GeoBox {
                south: number(south)?,
                north: number(north)?,
                west_east: Some((number(west)?, number(east)?)),
            }
        }
        GEO_WITHIN_RADIUS => {
            let [_, _, center_lat, center_lon, meters] = args else {
                return None;
            };
            GeoBox::around(number(center_lat)?, number(center_lon)?, number(meters)?)
        }
        _ => return None,
    };
    Some(within_box(lat, lon, bounds))
}

/// `geo_distance(lat, lon, clat, clon) < meters` (or `<=`, or mirrored).
fn distance_bound(binary: &BinaryExpr) -> Option<IndexPredicate> {
    let (distance, meters) = match binary.op() {
        Operator::Lt | Operator::LtEq => (binary.left(), binary.right()),
        Operator::Gt | Operator::GtEq => (binary.right(), binary.left()),
        _ => return None,
    };
    let function = distance.downcast_ref::<ScalarFunctionExpr>()?;
    let [lat, lon, center_lat, center_lon] = function.args() else {
        return None;
    };
    if function.name() != GEO_DISTANCE {
        return None;
    }
    Some(within_box(
        column_name(lat)?,
        column_name(lon)?,
        GeoBox::around(number(center_lat)?, number(center_lon)?, number(meters)?),
    ))
}

/// Ranges on the same column AND-ed together become one range (`a >= x AND
/// a < y` reads the terms between x and y, not the two halves).
fn merge_ranges(children: Vec<IndexPredicate>) -> Vec<IndexPredicate> {
    use std::cmp::Ordering;
    let tighter = |a: &Bound<Scalar>, b: &Bound<Scalar>, keep: Ordering| -> Option<Bound<Scalar>> {
        let value = |b: &Bound<Scalar>| match b {
            Bound::Included(v) | Bound::Excluded(v) => Some(v.clone()),
            Bound::Unbounded => None,
        };
        Some(match (value(a), value(b)) {
            (None, _) => b.clone(),
            (_, None) => a.clone(),
            (Some(x), Some(y)) => match x.compare(&y)? {
                Ordering::Equal => match (a, b) {
                    (Bound::Excluded(_), _) => a.clone(),
                    _ => b.clone(),
                },
                order if order == keep => a.clone(),
                _ => b.clone(),
            },
        })
    };
    let mut merged: Vec<IndexPredicate> = Vec::with_capacity(children.len());
    for child in children {
        if let IndexPredicate::Range {
            column,
            lower,
            upper,
        } = &child
        {
            let existing = merged.iter_mut().find_map(|m| match m {
                IndexPredicate::Range {
                    column: c,
                    lower: l,
                    upper: u,
                } if c == column => Some((l, u)),
                _ => None,
            });
            if let Some((l, u)) = existing {
                if let (Some(new_lower), Some(new_upper)) = (
                    tighter(l, lower, Ordering::Greater),
                    tighter(u, upper, Ordering::Less),
                ) {
                    *l = new_lower;
                    *u = new_upper;
                    continue;
                }
            }
        }
        merged.push(child);
    }
    merged
}

/// `LIKE` with a pattern that is a literal or a literal followed by `%`.
fn like_predicate(column: String, pattern: &str) -> Option<IndexPredicate> {
    let (literal, wildcard) = match pattern.strip_suffix('%') {
        Some(prefix) => (prefix, true),
        None => (pattern, false),
    };
    if literal.contains(['%', '_', '\\']) {
        return None;
    }
    Some(if wildcard {
        IndexPredicate::Prefix(column, literal.to_string())
    } else {
        IndexPredicate::Eq(column, Scalar::Str(literal.to_string()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::common::DFSchema;
    use datafusion::execution::context::ExecutionProps;
    use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
    use datafusion::logical_expr::{col, lit};
    use datafusion::physical_expr::create_physical_expr;

    /// `expr`, planned over columns `fields`, as an index predicate.
    fn translate_over(fields: Vec<Field>, expr: datafusion::logical_expr::Expr) -> IndexPredicate {
        let df_schema = DFSchema::try_from(Schema::new(fields)).unwrap();
        let physical = create_physical_expr(
            &expr,
            &df_schema,
            &ExecutionProps::new(),
            &PhysicalPlanningContext::default(),
        )
        .unwrap();
        IndexPredicate::from_physical(&physical)
    }

    fn translate(expr: datafusion::logical_expr::Expr) -> IndexPredicate {
        let fields = vec![
            Field::new("a", DataType::Int64, true),
            Field::new("s", DataType::Utf8, true),
        ];
        translate_over(fields, expr)
    }

    #[test]
    fn filters_translate_and_ranges_merge() {
        assert_eq!(
            translate(col("a").gt_eq(lit(5i64)).and(col("a").lt(lit(9i64)))),
            IndexPredicate::And(vec![IndexPredicate::Range {
                column: "a".into(),
                lower: Bound::Included(Scalar::I64(5)),
                upper: Bound::Excluded(Scalar::I64(9)),
            }])
        );
        assert_eq!(
            translate(col("a").gt(lit(5i64)).and(col("a").gt_eq(lit(5i64)))),
            IndexPredicate::And(vec![IndexPredicate::Range {
                column: "a".into(),
                lower: Bound::Excluded(Scalar::I64(5)),
                upper: Bound::Unbounded,
            }])
        );
        assert_eq!(
            translate(lit("x").eq(col("s")).or(col("s").like(lit("ab%")))),
            IndexPredicate::Or(vec![
                IndexPredicate::Eq("s".into(), Scalar::Str("x".into())),
                IndexPredicate::Prefix("s".into(), "ab".into()),
            ])
        );
        // `a + 1 = 3` is not answerable; under AND it narrows nothing.
        let opaque = translate((col("a") + lit(1i64)).eq(lit(3i64)).and(col("s").is_null()));
        assert_eq!(
            opaque,
            IndexPredicate::And(vec![
                IndexPredicate::Opaque,
                IndexPredicate::IsNull("s".into())
            ])
        );
        assert!(!opaque.is_opaque());
        assert!(translate((col("a") + lit(1i64)).eq(lit(3i64)).or(col("s").is_null())).is_opaque());
        assert_eq!(
            translate(col("s").eq(lit("k")).and(col("a").eq(lit(1i64)))).ids(),
            None
        );
    }

    /// Strings too long to be terms are found through `_long` and filtered;
    /// short ones stay exact.

    #[test]
    fn geo_predicates_become_ranges() {
        use altdb_common::geo::{GeoWithinBox, GeoWithinRadius};
        use datafusion::logical_expr::Expr;
        let translate = |expr: Expr| {
            let fields = vec![
                Field::new("lat", DataType::Float64, true),
                Field::new("lon", DataType::Float64, true),
            ];
            translate_over(fields, expr)
        };
        let range = |column: &str, lower: f64, upper: f64| IndexPredicate::Range {
            column: column.into(),
            lower: Bound::Included(Scalar::F64(lower)),
            upper: Bound::Included(Scalar::F64(upper)),
        };
        let boxed = GeoWithinBox::udf().call(vec![
            col("lat"),
            col("lon"),
            lit(59.0),
            lit(170.0),
            lit(60.0),
            lit(-170.0),
        ]);
        assert_eq!(
            translate(boxed),
            IndexPredicate::Superset(Box::new(IndexPredicate::And(vec![
                range("lat", 59.0, 60.0),
                IndexPredicate::Or(vec![
                    range("lon", 170.0, 180.0),
                    range("lon", -180.0, -170.0)
                ]),
            ])))
        );
        let radius = GeoWithinRadius::udf().call(vec![
            col("lat"),
            col("lon"),
            lit(0.0),
            lit(0.0),
            lit(111_195.0),
        ]);
        let IndexPredicate::Superset(boxed) = translate(radius) else {
            panic!("a radius is read as its box");
        };
        let IndexPredicate::And(parts) = *boxed else {
            panic!("a radius is a box");
        };
        let IndexPredicate::Range {
            lower: Bound::Included(Scalar::F64(south)),
            ..
        } = &parts[0]
        else {
            panic!("{parts:?}");
        };
        assert!((south + 1.0).abs() < 1e-3, "{south}");
    }
}
