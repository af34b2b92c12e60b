//! Quiver's SQL front end: registers every Quiver function and format on a session in one
//! place ([`register_all`]), and adds DataFrame-style entry points ([`SessionExt`],
//! [`DataFrameExt`]) so that the same session works in SQL and in Rust.
//!
//! ```no_run
//! # async fn demo() -> quiver_engine::Result<()> {
//! use quiver_sql::{DataFrameExt, SessionExt};
//! let session = quiver_sql::session(Default::default())?;
//! let images = session.read_images("photos/").await?;
//! session.sql("COPY (SELECT label, image_resize(image_decode(content), 64, 64) AS image \
//!              FROM read_images('photos/')) TO 'out/' STORED AS TFRECORD").await?.collect().await?;
//! # let _ = images; Ok(()) }
//! ```

pub mod cluster;
pub mod codec;
pub mod create_model;
pub mod display;
pub mod reply;
pub mod statements;
pub mod tls;
pub mod write;

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session as CatalogSession, TableProvider, TableProviderFactory};
use datafusion::common::plan_err;
use datafusion::dataframe::DataFrame;
use datafusion::datasource::TableType;
use datafusion::datasource::file_format::format_as_file_type;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{CreateExternalTable, LogicalPlanBuilder};
use datafusion::logical_expr::{Expr, ScalarUDF, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use quiver_engine::{Result, Session, SessionOptions, resolve_location};
use quiver_operators::experiment::{ExperimentTableFunc, Experiments};
use quiver_operators::jobs::{JobRunsFunc, JobStore};
use quiver_operators::ml;
use quiver_operators::ml::predict::{MlTableFunc, PredictFunc};
use quiver_operators::stats::FeatureStatsFunc;
use quiver_operators::{
    ImageFunc, ReadImagesFunc, ReadImagesTable, TfRecordFormat, TfRecordFormatFactory,
    TfRecordOptions,
};

pub use statements::{Statement, execute, parse, take_skipped_images};
pub use write::{collect, collect_until};

/// Names of the table functions Quiver registers.
pub const TABLE_FUNCTIONS: [&str; 7] = [
    "read_images",
    "ml_evaluate",
    "models",
    "experiments",
    "experiment_trials",
    "feature_stats",
    "job_runs",
];

/// Names of every scalar function Quiver registers.
pub fn scalar_function_names() -> Vec<&'static str> {
    let mut names: Vec<_> = quiver_operators::ImageOp::ALL
        .iter()
        .map(|op| op.name())
        .collect();
    names.push("predict");
    names
}

/// Registers all of Quiver's functions and formats on `session`.
pub fn register_all(session: &Session) -> Result<()> {
    let ctx = session.context();
    for udf in ImageFunc::all(Some(Arc::clone(session.progress()))) {
        ctx.register_udf(udf);
    }
    ctx.register_udtf(TABLE_FUNCTIONS[0], Arc::new(ReadImagesFunc));
    let registry = ml::registry(session).map_err(datafusion::error::DataFusionError::from)?;
    ctx.register_udf(ScalarUDF::new_from_impl(PredictFunc::new(registry.clone())));
    ctx.register_udtf(
        TABLE_FUNCTIONS[1],
        Arc::new(MlTableFunc::evaluate(registry.clone())),
    );
    ctx.register_udtf(TABLE_FUNCTIONS[2], Arc::new(MlTableFunc::models(registry)));
    let experiments =
        Experiments::new(session).map_err(datafusion::error::DataFusionError::from)?;
    ctx.register_udtf(
        TABLE_FUNCTIONS[3],
        Arc::new(ExperimentTableFunc::experiments(experiments.clone())),
    );
    ctx.register_udtf(
        TABLE_FUNCTIONS[4],
        Arc::new(ExperimentTableFunc::trials(experiments)),
    );
    ctx.register_udtf(TABLE_FUNCTIONS[5], Arc::new(FeatureStatsFunc));
    let jobs = JobStore::new(session).map_err(datafusion::error::DataFusionError::from)?;
    ctx.register_udtf(TABLE_FUNCTIONS[6], Arc::new(JobRunsFunc::new(jobs)));
    ctx.add_optimizer_rule(Arc::new(cluster::CopyOptionsInFormat));
    ctx.add_analyzer_rule(Arc::new(quiver_operators::image::ImageSourcePaths));
    let state = ctx.state_ref();
    let mut state = state.write();
    state.register_file_format(Arc::new(TfRecordFormatFactory::new()), true)?;
    state
        .table_factories_mut()
        .insert("TFRECORD".into(), Arc::new(TfRecordTableFactory));
    Ok(())
}

/// A TFRecord table over every file at `location` (a file, or the files directly in a folder,
/// whatever their names: TensorFlow writes `*.tfrecords`, `*.tfrecord.gz`, `train-00000-of-00010`),
/// with `schema`, or the schema inferred from the Examples.
pub async fn tfrecord_table(
    state: &dyn CatalogSession,
    location: &str,
    options: TfRecordOptions,
    schema: Option<SchemaRef>,
) -> datafusion::error::Result<TfRecordTable> {
    let schema = match schema {
        Some(schema) => schema,
        None => {
            let url = ListingTableUrl::parse(resolve_location(location)?.as_str())?;
            let listing = TfRecordTable::listing_options(&options, &url);
            listing.infer_schema(state, &url).await?
        }
    };
    TfRecordTable::try_new(location, options, schema)
}

/// A table of TFRecord files: DataFusion's listing table over [`TfRecordFormat`], kept with its
/// location and options so that cluster plans can carry it (see [`codec`]).
#[derive(Debug)]
pub struct TfRecordTable {
    location: String,
    options: TfRecordOptions,
    listing: ListingTable,
}

impl TfRecordTable {
    /// The table at `location` with a known `schema`.
    pub fn try_new(
        location: &str,
        options: TfRecordOptions,
        schema: SchemaRef,
    ) -> datafusion::error::Result<Self> {
        let location = resolve_location(location)?.to_string();
        let url = ListingTableUrl::parse(&location)?;
        let config = ListingTableConfig::new(url.clone())
            .with_listing_options(Self::listing_options(&options, &url))
            .with_schema(schema);
        Ok(Self {
            location,
            listing: ListingTable::try_new(config)?,
            options,
        })
    }

    fn listing_options(options: &TfRecordOptions, url: &ListingTableUrl) -> ListingOptions {
        let format = TfRecordFormat::new(options.clone()).in_store(url.object_store().as_str());
        ListingOptions::new(Arc::new(format)).with_file_extension("")
    }

    /// The location, as a URL.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The format options.
    pub fn options(&self) -> &TfRecordOptions {
        &self.options
    }
}

#[async_trait]
impl TableProvider for TfRecordTable {
    fn schema(&self) -> SchemaRef {
        self.listing.schema()
    }

    fn table_type(&self) -> TableType {
        self.listing.table_type()
    }

    async fn scan(
        &self,
        state: &dyn CatalogSession,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        self.listing.scan(state, projection, filters, limit).await
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        self.listing.supports_filters_pushdown(filters)
    }

    async fn insert_into(
        &self,
        state: &dyn CatalogSession,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        self.listing.insert_into(state, input, insert_op).await
    }
}

/// `CREATE EXTERNAL TABLE ... STORED AS TFRECORD LOCATION '...'`.
#[derive(Debug)]
struct TfRecordTableFactory;

#[async_trait]
impl TableProviderFactory for TfRecordTableFactory {
    async fn create(
        &self,
        state: &dyn CatalogSession,
        cmd: &CreateExternalTable,
    ) -> datafusion::error::Result<Arc<dyn TableProvider>> {
        let [location] = cmd.locations.as_slice() else {
            return plan_err!(
                "a TFRECORD table takes exactly one LOCATION, got {}",
                cmd.locations.len()
            );
        };
        if !cmd.table_partition_cols.is_empty() {
            return plan_err!("PARTITIONED BY is not supported for TFRECORD tables");
        }
        let options = TfRecordOptions::default().with_options(&cmd.options)?;
        let schema = (!cmd.schema.fields().is_empty()).then(|| Arc::clone(cmd.schema.inner()));
        Ok(Arc::new(
            tfrecord_table(state, location, options, schema).await?,
        ))
    }
}

/// A session with every Quiver function and format registered.
pub fn session(options: SessionOptions) -> Result<Session> {
    let session = Session::try_new(options)?;
    register_all(&session)?;
    Ok(session)
}

/// Reading Quiver's sources from Rust.
#[async_trait]
pub trait SessionExt {
    /// The images under `location` as `path`, `label`, `content` (see `read_images`).
    async fn read_images(&self, location: &str) -> Result<DataFrame>;
    /// A sample of the images under `location`, reproducible with `seed`.
    async fn read_images_sample(
        &self,
        location: &str,
        sample_ratio: f64,
        seed: u64,
    ) -> Result<DataFrame>;
    /// The TFRecord files at `location` (a file or a folder), schema inferred from the Examples.
    async fn read_tfrecord(&self, location: &str) -> Result<DataFrame>;
}

#[async_trait]
impl SessionExt for Session {
    async fn read_images(&self, location: &str) -> Result<DataFrame> {
        self.read_images_sample(location, 1.0, 0).await
    }

    async fn read_images_sample(
        &self,
        location: &str,
        sample_ratio: f64,
        seed: u64,
    ) -> Result<DataFrame> {
        let table = ReadImagesTable::try_new(location, sample_ratio, seed)?;
        Ok(self.context().read_table(Arc::new(table))?)
    }

    async fn read_tfrecord(&self, location: &str) -> Result<DataFrame> {
        let state = self.context().state();
        let table = tfrecord_table(&state, location, TfRecordOptions::default(), None).await?;
        Ok(self.context().read_table(Arc::new(table))?)
    }
}

/// Writing DataFrames in Quiver's formats.
#[async_trait]
pub trait DataFrameExt {
    /// Writes one TFRecord shard per partition under `location` (a folder; a single file when
    /// the location has an extension) and returns the number of rows written.
    async fn write_tfrecord(self, location: &str, options: TfRecordOptions) -> Result<u64>;
}

#[async_trait]
impl DataFrameExt for DataFrame {
    async fn write_tfrecord(self, location: &str, options: TfRecordOptions) -> Result<u64> {
        let url = resolve_location(location)?;
        let map = options.to_options();
        let (state, plan) = self.into_parts();
        let file_type = format_as_file_type(Arc::new(TfRecordFormatFactory::new()));
        let plan =
            LogicalPlanBuilder::copy_to(plan, url.to_string(), file_type, map, vec![])?.build()?;
        let batches = write::collect(DataFrame::new(state, plan)).await?;
        let count = batches
            .first()
            .and_then(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<datafusion::arrow::array::UInt64Array>()
            })
            .map(|a| a.value(0))
            .unwrap_or(0);
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn decode_crop_resize_is_planned_as_one_fused_step() {
        let session = session(SessionOptions::default()).unwrap();
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/photos/");
        let sql = format!(
            "EXPLAIN SELECT image_resize(image_center_crop(image_decode(content)), 50, 50), \
                    image_resize(image_decode(content, 'null'), 8, 8), \
                    image_resize(image_flip(image_decode(content), 'vertical'), 8, 8) \
             FROM read_images('{dir}')"
        );
        let batches = session.sql(&sql).await.unwrap().collect().await.unwrap();
        let plan = datafusion::arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        // The projection runs inside the file scan, where `content` is column 2, and every
        // decode gets the file's path (column 0) to name in messages.
        assert!(
            plan.contains("image_decode_resize(content@2, error, 50, 50, -1, -1, path@0)"),
            "{plan}"
        );
        assert!(
            plan.contains("image_decode_resize(content@2, null, 8, 8, 0, 0, path@0)"),
            "{plan}"
        );
        // Anything between decode and resize other than a centre crop stays unfused.
        assert!(
            plan.contains("image_resize(image_flip(image_decode(content@2, error, path@0)"),
            "{plan}"
        );
        // The output names are the user's.
        assert!(
            plan.contains("as image_resize(image_center_crop(image_decode(read_images().content))"),
            "{plan}"
        );
    }

    #[tokio::test]
    async fn dataframe_round_trip_through_tfrecord() {
        use datafusion::prelude::col;
        use quiver_operators::image::expr_fn::{image_center_crop, image_decode, image_resize};

        let session = session(SessionOptions::default()).unwrap();
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/photos/");
        let out = tempfile::tempdir().unwrap();
        let target = format!("{}/shards/", out.path().display());
        let frame = session.read_images(dir).await.unwrap().select(vec![
            col("label"),
            image_resize(image_center_crop(image_decode(col("content"))), 20, 20).alias("image"),
        ]);
        let options = TfRecordOptions {
            gzip: true,
            ..Default::default()
        };
        let written = frame
            .unwrap()
            .write_tfrecord(&target, options)
            .await
            .unwrap();
        assert_eq!(written, 9);
        let shards: Vec<_> = std::fs::read_dir(out.path().join("shards"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            shards.iter().all(|s| s.ends_with("-of-00002.tfrecord.gz")),
            "{shards:?}"
        );
        let back = session.read_tfrecord(&target).await.unwrap();
        let rows = back
            .aggregate(
                vec![],
                vec![datafusion::functions_aggregate::expr_fn::count(col("label")).alias("rows")],
            )
            .unwrap()
            .collect()
            .await
            .unwrap();
        datafusion::assert_batches_eq!(
            ["+------+", "| rows |", "+------+", "| 9    |", "+------+",],
            &rows
        );

        let mut counts = Vec::new();
        for _ in 0..2 {
            let sample = session.read_images_sample(dir, 0.5, 3).await.unwrap();
            counts.push(sample.count().await.unwrap());
        }
        assert_eq!(counts[0], counts[1], "the same seed gives the same sample");
        assert!(counts[0] < 9);
    }

    #[test]
    fn no_duplicate_function_names() {
        let mut names = scalar_function_names();
        names.extend(TABLE_FUNCTIONS);
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len(), "duplicate names in {names:?}");
    }
}
