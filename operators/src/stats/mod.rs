//! `feature_stats('table' | 'SELECT ...' | (query) [, other])`: one row per feature with its
//! type, count and missing values; min, max, mean, std, zeros, quartiles and a histogram for
//! numbers; distinct count and top values for strings and booleans. Decoded images give the
//! features `<column>.width`, `.height`, `.channels` and `.brightness` (mean pixel value),
//! binary columns `<column>.bytes`. With a second table both appear side by side (a `dataset`
//! column), on shared histogram edges, with the Jensen–Shannon distance between the two
//! distributions of every feature.
//!
//! One pass over each table, its partitions in parallel. Numeric values are kept (8 bytes
//! each) for exact quartiles, as pandas does; strings are counted per distinct value.

use quiver_engine::computed::{ComputeRows, ComputedTable, string_literal, table_or_query};
use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float64Builder, ListBuilder, RecordBatch, StringBuilder,
    StructBuilder, UInt64Builder,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use datafusion::catalog::{
    Session as CatalogSession, TableFunctionArgs, TableFunctionImpl, TableProvider,
};
use datafusion::common::{exec_datafusion_err, plan_datafusion_err};
use datafusion::common::{exec_err, plan_err};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::SessionState;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use quiver_engine::image::{ImageArray, is_image_type};
use rayon::prelude::*;

/// Equal-width histogram buckets per numeric feature.
const BUCKETS: usize = 10;
/// Most frequent values listed per categorical feature.
const TOP_VALUES: usize = 10;

/// The `feature_stats` table function.
#[derive(Debug, Default)]
pub struct FeatureStatsFunc;

const USAGE: &str =
    "usage: feature_stats('table' | 'SELECT ...' | (SELECT ...) [, 'other table' | (SELECT ...)])";

/// One argument: the name shown in the `dataset` column and the query that reads it.
#[derive(Debug, Clone)]
struct Source {
    name: String,
    sql: String,
}

impl TableFunctionImpl for FeatureStatsFunc {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let exprs = args.exprs();
        if !(1..=2).contains(&exprs.len()) {
            return plan_err!(
                "feature_stats: expected 1 or 2 arguments, got {}; {USAGE}",
                exprs.len()
            );
        }
        let mut sources = Vec::new();
        for (i, expr) in exprs.iter().enumerate() {
            let Some(text) = string_literal(expr) else {
                return plan_err!(
                    "feature_stats: argument {} ({expr}) is not a table name or a query; {USAGE}",
                    i + 1
                );
            };
            if text.trim().is_empty() {
                return plan_err!("feature_stats: argument {} is empty; {USAGE}", i + 1);
            }
            let (query, sql) = table_or_query(text);
            let name = match (query, exprs.len()) {
                (false, _) => text.trim().to_string(),
                (true, 1) => "query".into(),
                (true, _) => format!("query {}", i + 1),
            };
            let source = Source { name, sql };
            sources.push(source);
        }
        if sources.len() == 2 && sources[0].name == sources[1].name {
            sources[1].name = format!("{} (2)", sources[1].name);
        }
        Ok(Arc::new(ComputedTable::new(FeatureStatsTable { sources })))
    }
}

#[derive(Debug)]
struct FeatureStatsTable {
    sources: Vec<Source>,
}

#[async_trait]
impl ComputeRows for FeatureStatsTable {
    fn schema(&self) -> SchemaRef {
        stats_schema()
    }

    async fn rows(&self, state: &dyn CatalogSession) -> Result<RecordBatch> {
        let Some(state) = state.as_any().downcast_ref::<SessionState>() else {
            return exec_err!("feature_stats needs a DataFusion SessionState");
        };
        let ctx = SessionContext::new_with_state(state.clone());
        let mut tables = Vec::new();
        for source in &self.sources {
            let frame = ctx
                .sql(&source.sql)
                .await
                .map_err(|e| plan_datafusion_err!("feature_stats: '{}': {e}", source.name))?;
            let features = features(frame.schema().as_arrow());
            let plan = frame.create_physical_plan().await?;
            let accs = accumulate(&ctx, plan, &features)
                .await
                .map_err(|e| exec_datafusion_err!("feature_stats: '{}': {e}", source.name))?;
            tables.push((source.name.clone(), features, accs));
        }
        stats_batch(&tables)
    }
}

/// What a feature is computed from.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Measure {
    /// A numeric column, cast to f64.
    Number,
    /// A string or boolean column, cast to strings.
    Category,
    /// Width, height, channels or mean pixel of an image column.
    Image(ImageStat),
    /// Byte length of a binary column.
    Bytes,
    /// Anything else: only counted.
    Count,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum ImageStat {
    Width,
    Height,
    Channels,
    Brightness,
}

/// One row of the result per dataset.
#[derive(Debug, Clone)]
struct Feature {
    name: String,
    column: usize,
    data_type: String,
    from: Measure,
}

impl Feature {
    fn kind(&self) -> &'static str {
        match self.from {
            Measure::Number => "numeric",
            Measure::Category => "categorical",
            Measure::Image(_) => "image",
            Measure::Bytes => "binary",
            Measure::Count => "other",
        }
    }

    fn numeric(&self) -> bool {
        matches!(
            self.from,
            Measure::Number | Measure::Image(_) | Measure::Bytes
        )
    }
}

/// The features of a schema, in column order.
fn features(schema: &Schema) -> Vec<Feature> {
    let mut out = Vec::new();
    for (column, field) in schema.fields().iter().enumerate() {
        let dt = field.data_type();
        let base = |name: String, from: Measure, data_type: String| Feature {
            name,
            column,
            data_type,
            from,
        };
        if is_image_type(dt) {
            for (suffix, stat, t) in [
                ("width", ImageStat::Width, "UInt32"),
                ("height", ImageStat::Height, "UInt32"),
                ("channels", ImageStat::Channels, "UInt8"),
                ("brightness", ImageStat::Brightness, "Float64"),
            ] {
                out.push(base(
                    format!("{}.{suffix}", field.name()),
                    Measure::Image(stat),
                    format!("image {t}"),
                ));
            }
            continue;
        }
        let from = if dt.is_numeric() {
            Measure::Number
        } else if matches!(
            dt,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Boolean
        ) || matches!(dt, DataType::Dictionary(_, v) if v.is_null() || matches!(**v, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View))
        {
            Measure::Category
        } else if matches!(
            dt,
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView
        ) {
            Measure::Bytes
        } else {
            Measure::Count
        };
        let name = if from == Measure::Bytes {
            format!("{}.bytes", field.name())
        } else {
            field.name().clone()
        };
        out.push(base(name, from, dt.to_string()));
    }
    out
}

/// The values of one feature seen so far.
#[derive(Debug, Default, Clone)]
struct Acc {
    missing: u64,
    /// Present values that are not numeric or categorical.
    present: u64,
    values: Vec<f64>,
    counts: HashMap<String, u64>,
}

impl Acc {
    fn merge(&mut self, other: Acc) {
        self.missing += other.missing;
        self.present += other.present;
        self.values.extend(other.values);
        for (k, v) in other.counts {
            *self.counts.entry(k).or_default() += v;
        }
    }

    fn push_number(&mut self, v: Option<f64>) {
        match v {
            Some(v) if !v.is_nan() => self.values.push(v),
            _ => self.missing += 1,
        }
    }

    fn update(&mut self, feature: &Feature, array: &ArrayRef) -> Result<()> {
        match feature.from {
            Measure::Number => {
                let values = cast(array, &DataType::Float64)?;
                for v in values.as_primitive::<datafusion::arrow::datatypes::Float64Type>() {
                    self.push_number(v);
                }
            }
            Measure::Category => {
                let values = cast(array, &DataType::Utf8)?;
                for v in values.as_string::<i32>() {
                    match v {
                        Some(v) => *self.counts.entry(v.to_string()).or_default() += 1,
                        None => self.missing += 1,
                    }
                }
            }
            Measure::Bytes => {
                let lengths = datafusion::arrow::compute::kernels::length::length(array)?;
                let lengths = cast(&lengths, &DataType::Float64)?;
                for v in lengths.as_primitive::<datafusion::arrow::datatypes::Float64Type>() {
                    self.push_number(v);
                }
            }
            Measure::Image(stat) => {
                let images = ImageArray::try_new(array.as_ref())?;
                for i in 0..images.len() {
                    let v = images.get(i)?.map(|image| match stat {
                        ImageStat::Width => f64::from(image.width),
                        ImageStat::Height => f64::from(image.height),
                        ImageStat::Channels => f64::from(image.channels),
                        ImageStat::Brightness => {
                            let sum: u64 = image.data.iter().map(|&p| u64::from(p)).sum();
                            sum as f64 / image.data.len().max(1) as f64
                        }
                    });
                    self.push_number(v);
                }
            }
            Measure::Count => {
                let nulls = array.logical_null_count() as u64;
                self.missing += nulls;
                self.present += array.len() as u64 - nulls;
            }
        }
        Ok(())
    }
}

/// Reads every partition of `plan` in parallel and accumulates each feature.
async fn accumulate(
    ctx: &SessionContext,
    plan: Arc<dyn ExecutionPlan>,
    features: &[Feature],
) -> Result<Vec<Acc>> {
    let streams = datafusion::physical_plan::execute_stream_partitioned(plan, ctx.task_ctx())?;
    let mut tasks = tokio::task::JoinSet::new();
    for mut stream in streams {
        let features = features.to_vec();
        tasks.spawn(async move {
            let mut accs = vec![Acc::default(); features.len()];
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                for (acc, feature) in accs.iter_mut().zip(&features) {
                    acc.update(feature, batch.column(feature.column))?;
                }
            }
            Ok::<_, DataFusionError>(accs)
        });
    }
    let mut total = vec![Acc::default(); features.len()];
    while let Some(result) = tasks.join_next().await {
        let accs = result.map_err(|e| DataFusionError::External(Box::new(e)))??;
        for (t, a) in total.iter_mut().zip(accs) {
            t.merge(a);
        }
    }
    Ok(total)
}

/// Summary of one numeric feature.
#[derive(Debug, Clone, PartialEq)]
struct Numbers {
    min: f64,
    max: f64,
    mean: f64,
    std: Option<f64>,
    zeros: u64,
    p25: f64,
    median: f64,
    p75: f64,
}

/// The `q` quantile of `values` (reordered), interpolated linearly (numpy's and pandas'
/// default); found by selection, in linear time.
fn quantile(values: &mut [f64], q: f64) -> f64 {
    let pos = q * (values.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let (_, &mut low, above) = values.select_nth_unstable_by(lo, f64::total_cmp);
    let frac = pos - lo as f64;
    if frac == 0.0 {
        return low;
    }
    let high = above.iter().copied().fold(f64::INFINITY, f64::min);
    low + (high - low) * frac
}

fn numbers(values: &mut [f64]) -> Option<Numbers> {
    if values.is_empty() {
        return None;
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    // Sample standard deviation (ddof = 1), as pandas reports it.
    let std = (values.len() > 1)
        .then(|| (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt());
    Some(Numbers {
        min: values.iter().copied().fold(f64::INFINITY, f64::min),
        max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        mean,
        std,
        zeros: values.iter().filter(|&&v| v == 0.0).count() as u64,
        p25: quantile(values, 0.25),
        median: quantile(values, 0.5),
        p75: quantile(values, 0.75),
    })
}

/// Counts of `values` in `BUCKETS` equal-width buckets over `[lo, hi]` (the last bucket
/// includes `hi`); one bucket when `lo == hi`.
fn histogram(values: &[f64], lo: f64, hi: f64) -> Vec<Bucket> {
    if hi <= lo {
        return vec![(lo, hi, values.len() as u64)];
    }
    // numpy.histogram's edges and bucket rule, so that counts agree to the value.
    let step = (hi - lo) / BUCKETS as f64;
    let edge = |i: usize| {
        if i == BUCKETS {
            hi
        } else {
            lo + step * i as f64
        }
    };
    let norm = BUCKETS as f64 / (hi - lo);
    let mut counts = vec![0u64; BUCKETS];
    for &v in values {
        let mut i = (((v - lo) * norm) as usize).min(BUCKETS - 1);
        if v < edge(i) {
            i -= 1;
        } else if v >= edge(i + 1) && i != BUCKETS - 1 {
            i += 1;
        }
        counts[i] += 1;
    }
    counts
        .into_iter()
        .enumerate()
        .map(|(i, c)| (edge(i), edge(i + 1), c))
        .collect()
}

/// Jensen–Shannon distance (base 2, between 0 for equal and 1 for disjoint distributions) of
/// two count vectors over the same buckets.
fn js_distance(a: &[u64], b: &[u64]) -> Option<f64> {
    let (sa, sb) = (a.iter().sum::<u64>() as f64, b.iter().sum::<u64>() as f64);
    if sa == 0.0 || sb == 0.0 {
        return None;
    }
    let kl = |p: f64, m: f64| if p > 0.0 { p * (p / m).log2() } else { 0.0 };
    let divergence: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| {
            let (p, q) = (x as f64 / sa, y as f64 / sb);
            let m = (p + q) / 2.0;
            (kl(p, m) + kl(q, m)) / 2.0
        })
        .sum();
    Some(divergence.max(0.0).sqrt())
}

/// The distance between two datasets' values of one feature.
fn distance(feature: &Feature, a: &Acc, b: &Acc, edges: Option<(f64, f64)>) -> Option<f64> {
    if feature.numeric() {
        let (lo, hi) = edges?;
        let counts = |acc: &Acc| -> Vec<u64> {
            histogram(&acc.values, lo, hi).iter().map(|h| h.2).collect()
        };
        js_distance(&counts(a), &counts(b))
    } else if feature.from == Measure::Category {
        let mut keys: Vec<&String> = a.counts.keys().chain(b.counts.keys()).collect();
        keys.sort();
        keys.dedup();
        let side = |acc: &Acc| -> Vec<u64> {
            keys.iter()
                .map(|k| acc.counts.get(*k).copied().unwrap_or(0))
                .collect()
        };
        js_distance(&side(a), &side(b))
    } else {
        None
    }
}

fn histogram_fields() -> Fields {
    Fields::from(vec![
        Field::new("low", DataType::Float64, false),
        Field::new("high", DataType::Float64, false),
        Field::new("count", DataType::UInt64, false),
    ])
}

fn top_fields() -> Fields {
    Fields::from(vec![
        Field::new("value", DataType::Utf8, false),
        Field::new("count", DataType::UInt64, false),
    ])
}

/// The result's columns.
pub fn stats_schema() -> SchemaRef {
    let f64_col = |name: &str| Field::new(name, DataType::Float64, true);
    Arc::new(Schema::new(vec![
        Field::new("feature", DataType::Utf8, false),
        Field::new("dataset", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("type", DataType::Utf8, false),
        Field::new("count", DataType::UInt64, false),
        Field::new("missing", DataType::UInt64, false),
        Field::new("missing_pct", DataType::Float64, false),
        f64_col("mean"),
        f64_col("std"),
        f64_col("min"),
        f64_col("p25"),
        f64_col("median"),
        f64_col("p75"),
        f64_col("max"),
        Field::new("zeros", DataType::UInt64, true),
        Field::new(
            "histogram",
            DataType::List(Arc::new(Field::new(
                "item",
                DataType::Struct(histogram_fields()),
                true,
            ))),
            true,
        ),
        Field::new("distinct", DataType::UInt64, true),
        Field::new(
            "top_values",
            DataType::List(Arc::new(Field::new(
                "item",
                DataType::Struct(top_fields()),
                true,
            ))),
            true,
        ),
        f64_col("distance"),
    ]))
}

type Table = (String, Vec<Feature>, Vec<Acc>);

/// A histogram bucket: low and high edge, count.
type Bucket = (f64, f64, u64);

/// One result row before it is built: dataset, feature, values, shared histogram edges,
/// distance between the datasets.
type Row<'a> = (
    &'a str,
    &'a Feature,
    &'a Acc,
    Option<(f64, f64)>,
    Option<f64>,
);

/// The result rows: per feature (in the first table's column order), one row per dataset.
fn stats_batch(tables: &[Table]) -> Result<RecordBatch> {
    let mut feature_b = StringBuilder::new();
    let mut dataset_b = StringBuilder::new();
    let mut kind_b = StringBuilder::new();
    let mut type_b = StringBuilder::new();
    let mut count_b = UInt64Builder::new();
    let mut missing_b = UInt64Builder::new();
    let mut missing_pct_b = Float64Builder::new();
    let mut num_b: Vec<Float64Builder> = (0..7).map(|_| Float64Builder::new()).collect();
    let mut zeros_b = UInt64Builder::new();
    let mut hist_b = ListBuilder::new(StructBuilder::from_fields(histogram_fields(), 0));
    let mut distinct_b = UInt64Builder::new();
    let mut top_b = ListBuilder::new(StructBuilder::from_fields(top_fields(), 0));
    let mut distance_b = Float64Builder::new();

    let (_, first_features, _) = &tables[0];
    // Features of the second table in the first's order, then those only it has.
    let mut names: Vec<&Feature> = first_features.iter().collect();
    for (_, features, _) in &tables[1..] {
        for f in features {
            if !names.iter().any(|n| n.name == f.name) {
                names.push(f);
            }
        }
    }
    // Per feature: its datasets' values, shared histogram edges and distance, in parallel.
    let per_feature: Vec<_> = names
        .par_iter()
        .map(|feature| {
            let found: Vec<Option<(&str, &Feature, &Acc)>> = tables
                .iter()
                .map(|(dataset, features, accs)| {
                    features
                        .iter()
                        .position(|f| f.name == feature.name)
                        .map(|i| (dataset.as_str(), &features[i], &accs[i]))
                })
                .collect();
            // Shared histogram edges across datasets, so buckets line up.
            let edges = found
                .iter()
                .flatten()
                .filter(|(_, f, _)| f.numeric())
                .filter_map(|(_, _, acc)| {
                    let min = acc.values.iter().copied().fold(f64::INFINITY, f64::min);
                    let max = acc.values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    (!acc.values.is_empty()).then_some((min, max))
                })
                .reduce(|a, b| (a.0.min(b.0), a.1.max(b.1)));
            let dist = match found.as_slice() {
                [Some((_, fa, a)), Some((_, fb, b))] if fa.from == fb.from => {
                    distance(fa, a, b, edges)
                }
                _ => None,
            };
            (found, edges, dist)
        })
        .collect();
    let rows: Vec<Row<'_>> = per_feature
        .into_iter()
        .flat_map(|(found, edges, dist)| {
            found
                .into_iter()
                .flatten()
                .map(move |(dataset, f, acc)| (dataset, f, acc, edges, dist))
        })
        .collect();
    // Per row: the numeric summary and histogram, in parallel.
    let summaries: Vec<Option<(Numbers, Vec<Bucket>)>> = rows
        .par_iter()
        .map(|(_, f, acc, edges, _)| {
            if !f.numeric() {
                return None;
            }
            let mut values = acc.values.clone();
            let s = numbers(&mut values)?;
            let (lo, hi) = edges.unwrap_or((s.min, s.max));
            let h = histogram(&acc.values, lo, hi);
            Some((s, h))
        })
        .collect();
    for ((dataset, f, acc, _, dist), summary) in rows.into_iter().zip(summaries) {
        let count = if f.numeric() {
            acc.values.len() as u64
        } else if f.from == Measure::Category {
            acc.counts.values().sum()
        } else {
            acc.present
        };
        let total = count + acc.missing;
        feature_b.append_value(&f.name);
        dataset_b.append_value(dataset);
        kind_b.append_value(f.kind());
        type_b.append_value(&f.data_type);
        count_b.append_value(count);
        missing_b.append_value(acc.missing);
        missing_pct_b.append_value(if total == 0 {
            0.0
        } else {
            100.0 * acc.missing as f64 / total as f64
        });
        match &summary {
            Some((s, histogram)) => {
                for (b, v) in num_b.iter_mut().zip([
                    Some(s.mean),
                    s.std,
                    Some(s.min),
                    Some(s.p25),
                    Some(s.median),
                    Some(s.p75),
                    Some(s.max),
                ]) {
                    b.append_option(v);
                }
                zeros_b.append_value(s.zeros);
                for &(low, high, c) in histogram {
                    let item = hist_b.values();
                    item.field_builder::<Float64Builder>(0)
                        .expect("low")
                        .append_value(low);
                    item.field_builder::<Float64Builder>(1)
                        .expect("high")
                        .append_value(high);
                    item.field_builder::<UInt64Builder>(2)
                        .expect("count")
                        .append_value(c);
                    item.append(true);
                }
                hist_b.append(true);
            }
            None => {
                for b in &mut num_b {
                    b.append_null();
                }
                zeros_b.append_null();
                hist_b.append(false);
            }
        }
        if f.from == Measure::Category {
            distinct_b.append_value(acc.counts.len() as u64);
            let mut top: Vec<(&String, &u64)> = acc.counts.iter().collect();
            top.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
            for (value, c) in top.into_iter().take(TOP_VALUES) {
                let item = top_b.values();
                item.field_builder::<StringBuilder>(0)
                    .expect("value")
                    .append_value(value);
                item.field_builder::<UInt64Builder>(1)
                    .expect("count")
                    .append_value(*c);
                item.append(true);
            }
            top_b.append(true);
        } else {
            distinct_b.append_null();
            top_b.append(false);
        }
        distance_b.append_option(dist);
    }
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(feature_b.finish()),
        Arc::new(dataset_b.finish()),
        Arc::new(kind_b.finish()),
        Arc::new(type_b.finish()),
        Arc::new(count_b.finish()),
        Arc::new(missing_b.finish()),
        Arc::new(missing_pct_b.finish()),
    ];
    columns.extend(
        num_b
            .iter_mut()
            .map(|b| Arc::new(b.finish()) as Arc<dyn Array>),
    );
    columns.push(Arc::new(zeros_b.finish()));
    columns.push(Arc::new(hist_b.finish()));
    columns.push(Arc::new(distinct_b.finish()));
    columns.push(Arc::new(top_b.finish()));
    columns.push(Arc::new(distance_b.finish()));
    Ok(RecordBatch::try_new(stats_schema(), columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_match_numpy_linear_interpolation() {
        let mut v = vec![4.0, 1.0, 3.0, 2.0];
        let s = numbers(&mut v).unwrap();
        assert_eq!((s.min, s.max, s.mean), (1.0, 4.0, 2.5));
        assert_eq!((s.p25, s.median, s.p75), (1.75, 2.5, 3.25));
        assert!((s.std.unwrap() - 1.2909944487358056).abs() < 1e-12);
        assert!(numbers(&mut []).is_none());
        assert_eq!(numbers(&mut [7.0]).unwrap().std, None);
    }

    #[test]
    fn histogram_puts_the_maximum_in_the_last_bucket() {
        let h = histogram(&[0.0, 1.0, 5.0, 10.0], 0.0, 10.0);
        assert_eq!(h.len(), BUCKETS);
        assert_eq!(h[0], (0.0, 1.0, 1));
        assert_eq!(h[1].2, 1);
        assert_eq!(h[5].2, 1);
        assert_eq!(h[9], (9.0, 10.0, 1));
        assert_eq!(histogram(&[3.0, 3.0], 3.0, 3.0), vec![(3.0, 3.0, 2)]);
    }

    #[test]
    fn jensen_shannon_distance_bounds() {
        assert_eq!(js_distance(&[5, 5], &[10, 10]), Some(0.0));
        assert!((js_distance(&[1, 0], &[0, 1]).unwrap() - 1.0).abs() < 1e-12);
        let d = js_distance(&[3, 1], &[1, 3]).unwrap();
        assert!(d > 0.0 && d < 1.0);
        assert_eq!(js_distance(&[0, 0], &[1, 1]), None);
    }

    #[tokio::test]
    async fn stats_of_a_small_table_with_missing_values() {
        let ctx = SessionContext::new();
        ctx.register_udtf("feature_stats", Arc::new(FeatureStatsFunc));
        ctx.sql(
            "CREATE TABLE t AS VALUES (1.0, 'a', true), (NULL, 'b', false), (3.0, 'a', NULL), \
             (0.0, NULL, true)",
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
        let batches = ctx
            .sql("SELECT feature, count, missing, mean, zeros, distinct FROM feature_stats('t')")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        let expected = "\
+---------+-------+---------+--------------------+-------+----------+
| feature | count | missing | mean               | zeros | distinct |
+---------+-------+---------+--------------------+-------+----------+
| column1 | 3     | 1       | 1.3333333333333333 | 1     |          |
| column2 | 3     | 1       |                    |       | 2        |
| column3 | 3     | 1       |                    |       | 2        |
+---------+-------+---------+--------------------+-------+----------+";
        assert_eq!(text, expected);
        let err = ctx
            .sql("SELECT * FROM feature_stats('t', 't', 't')")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected 1 or 2 arguments"), "{err}");
        let err = ctx
            .sql("SELECT * FROM feature_stats('no_such_table')")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("'no_such_table'"), "{err}");
    }
}
