//! Naming the file behind undecodable image bytes. `image_decode(bytes [, on_error [, source]])`
//! names `source` when it cannot decode a row (and lists it when it skips the row); this
//! analyzer rule fills `source` in wherever the bytes are a `read_images` scan's `content`
//! column: the scan's `path` column is carried up to the call, through projections (as a
//! hidden column when the query drops it), aliases, filters, sorts, limits, joins, unions of
//! such inputs and groupings by the bytes (one of the files with those bytes names them),
//! whatever the query's shape. Output names stay as the user wrote them.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, Result};
use datafusion::datasource::source_as_provider;
use datafusion::functions_aggregate::expr_fn::min;
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::{
    Aggregate, Expr, LogicalPlan, Projection, SubqueryAlias, Union, expr::ScalarFunction, lit,
};
use datafusion::optimizer::AnalyzerRule;

use super::udfs::ImageOp;
use crate::ReadImagesTable;

/// The name of the hidden column that carries the path of `bytes` through a projection that
/// drops it.
fn hidden_path(bytes: &Column) -> String {
    format!("__quiver_source_of_{}", bytes.flat_name().replace('.', "_"))
}

/// The analyzer rule (see the module's doc).
#[derive(Debug, Default)]
pub struct ImageSourcePaths;

/// The bytes column of a decode call that has no `source` yet.
fn unnamed_bytes(expr: &Expr) -> Option<&Column> {
    let Expr::ScalarFunction(f) = expr else {
        return None;
    };
    let without_source = match f.func.name() {
        n if n == ImageOp::Decode.name() => f.args.len() <= 2,
        n if n == ImageOp::DecodeResize.name() => f.args.len() == 6,
        _ => false,
    };
    match f.args.first() {
        Some(Expr::Column(c)) if without_source => Some(c),
        _ => None,
    }
}

/// `call` with `source` as its last argument (and `on_error`'s default before it).
fn with_source(call: &ScalarFunction, source: Column) -> Expr {
    let mut args = call.args.clone();
    if args.len() == 1 {
        args.push(lit("error"));
    }
    args.push(Expr::Column(source));
    Expr::ScalarFunction(ScalarFunction::new_udf(Arc::clone(&call.func), args))
}

/// The column of `expr` when it is a column, or an alias of one.
fn plain_column(expr: &Expr) -> Option<&Column> {
    match expr {
        Expr::Column(c) => Some(c),
        Expr::Alias(alias) => plain_column(&alias.expr),
        _ => None,
    }
}

/// Rewrites `plan` so that its output has a column holding the `read_images` path of the bytes
/// in its column `bytes`; returns the rewritten plan and that column, or `None` when the bytes
/// do not come straight from a `read_images` scan.
fn carry_path(plan: &LogicalPlan, bytes: &Column) -> Result<Option<(LogicalPlan, Column)>> {
    let column_at = |plan: &LogicalPlan, i: usize| Column::from(plan.schema().qualified_field(i));
    match plan {
        LogicalPlan::TableScan(scan) => {
            let is_images =
                source_as_provider(&scan.source).is_ok_and(|p| p.is::<ReadImagesTable>());
            let path = Column::new(Some(scan.table_name.clone()), "path");
            let found = |c: &Column| plan.schema().index_of_column(c).is_ok();
            Ok(
                (is_images && bytes.name == "content" && found(bytes) && found(&path))
                    .then(|| (plan.clone(), path)),
            )
        }
        LogicalPlan::Projection(p) => {
            let Ok(i) = p.schema.index_of_column(bytes) else {
                return Ok(None);
            };
            let Some(inner) = plain_column(&p.expr[i]) else {
                return Ok(None);
            };
            let Some((input, path)) = carry_path(&p.input, inner)? else {
                return Ok(None);
            };
            let mut exprs = p.expr.clone();
            let out = match exprs.iter().position(|e| plain_column(e) == Some(&path)) {
                Some(j) => j,
                None => {
                    exprs.push(Expr::Column(path).alias(hidden_path(bytes)));
                    exprs.len() - 1
                }
            };
            let projection = LogicalPlan::Projection(Projection::try_new(exprs, Arc::new(input))?);
            let column = column_at(&projection, out);
            Ok(Some((projection, column)))
        }
        LogicalPlan::SubqueryAlias(a) => {
            let Ok(i) = a.schema.index_of_column(bytes) else {
                return Ok(None);
            };
            let inner = column_at(&a.input, i);
            let Some((input, path)) = carry_path(&a.input, &inner)? else {
                return Ok(None);
            };
            let j = input.schema().index_of_column(&path)?;
            let alias = LogicalPlan::SubqueryAlias(SubqueryAlias::try_new(
                Arc::new(input),
                a.alias.clone(),
            )?);
            let column = column_at(&alias, j);
            Ok(Some((alias, column)))
        }
        LogicalPlan::Filter(_)
        | LogicalPlan::Sort(_)
        | LogicalPlan::Limit(_)
        | LogicalPlan::Repartition(_) => {
            let Some((input, path)) = carry_path(plan.inputs()[0], bytes)? else {
                return Ok(None);
            };
            Ok(Some((
                plan.with_new_exprs(plan.expressions(), vec![input])?,
                path,
            )))
        }
        LogicalPlan::Join(join) => {
            let (left, right) = (join.left.as_ref(), join.right.as_ref());
            let on_left = left.schema().index_of_column(bytes).is_ok();
            let side = if on_left { left } else { right };
            let Some((input, path)) = carry_path(side, bytes)? else {
                return Ok(None);
            };
            let inputs = if on_left {
                vec![input, right.clone()]
            } else {
                vec![left.clone(), input]
            };
            Ok(Some((
                plan.with_new_exprs(plan.expressions(), inputs)?,
                path,
            )))
        }
        LogicalPlan::Union(union) => {
            let Ok(i) = union.schema.index_of_column(bytes) else {
                return Ok(None);
            };
            let width = union.schema.fields().len();
            let mut inputs = Vec::with_capacity(union.inputs.len());
            for input in &union.inputs {
                let Some((carried, path)) = carry_path(input, &column_at(input, i))? else {
                    return Ok(None);
                };
                // Each input's own columns, then its path: the inputs still line up.
                let mut exprs: Vec<Expr> = (0..width)
                    .map(|j| Expr::Column(column_at(input, j)))
                    .collect();
                exprs.push(Expr::Column(path).alias(hidden_path(bytes)));
                let projection = Projection::try_new(exprs, Arc::new(carried))?;
                inputs.push(Arc::new(LogicalPlan::Projection(projection)));
            }
            let union = LogicalPlan::Union(Union::try_new_with_loose_types(inputs)?);
            let column = column_at(&union, width);
            Ok(Some((union, column)))
        }
        LogicalPlan::Aggregate(aggregate) => {
            // Grouped by the bytes: the smallest path among the files that hold them.
            let Ok(i) = aggregate.schema.index_of_column(bytes) else {
                return Ok(None);
            };
            let Some(inner) = aggregate.group_expr.get(i).and_then(plain_column) else {
                return Ok(None);
            };
            let Some((input, path)) = carry_path(&aggregate.input, inner)? else {
                return Ok(None);
            };
            let mut aggr_expr = aggregate.aggr_expr.clone();
            aggr_expr.push(min(Expr::Column(path)).alias(hidden_path(bytes)));
            let grouped = LogicalPlan::Aggregate(Aggregate::try_new(
                Arc::new(input),
                aggregate.group_expr.clone(),
                aggr_expr,
            )?);
            let column = column_at(&grouped, grouped.schema().fields().len() - 1);
            Ok(Some((grouped, column)))
        }
        _ => Ok(None),
    }
}

/// Fills in the `source` of the decode calls in `plan`'s own expressions.
fn name_sources(plan: LogicalPlan) -> Result<Transformed<LogicalPlan>> {
    let inputs = plan.inputs();
    let [input] = inputs.as_slice() else {
        return Ok(Transformed::no(plan));
    };
    let mut wanted: Vec<Column> = Vec::new();
    for expr in plan.expressions() {
        expr.apply(|e| {
            if let Some(c) = unnamed_bytes(e)
                && !wanted.contains(c)
            {
                wanted.push(c.clone());
            }
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        })?;
    }
    if wanted.is_empty() {
        return Ok(Transformed::no(plan));
    }
    let mut input = (*input).clone();
    let mut sources = HashMap::new();
    for bytes in wanted {
        if let Some((carried, path)) = carry_path(&input, &bytes)? {
            input = carried;
            sources.insert(bytes, path);
        }
    }
    if sources.is_empty() {
        return Ok(Transformed::no(plan));
    }
    let names = NamePreserver::new(&plan);
    let exprs = plan
        .expressions()
        .into_iter()
        .map(|expr| {
            let saved = names.save(&expr);
            let rewritten = expr
                .transform_up(|e| {
                    let source = unnamed_bytes(&e).and_then(|c| sources.get(c)).cloned();
                    match (&e, source) {
                        (Expr::ScalarFunction(call), Some(source)) => {
                            Ok(Transformed::yes(with_source(call, source)))
                        }
                        _ => Ok(Transformed::no(e)),
                    }
                })?
                .data;
            Ok(saved.restore(rewritten))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Transformed::yes(plan.with_new_exprs(exprs, vec![input])?))
}

impl AnalyzerRule for ImageSourcePaths {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        Ok(plan.transform_up(name_sources)?.data)
    }

    fn name(&self) -> &str {
        "quiver_image_source_paths"
    }
}
