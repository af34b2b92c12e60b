//! Reading TFRecord files: the [`FileSource`] and its opener.

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{
    FileOpenFuture, FileOpener, FileScanConfig, FileSource,
};
use datafusion::datasource::projection::{ProjectionOpener, SplitProjection};
use datafusion::datasource::table_schema::TableSchema;
use datafusion::error::Result;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::projection::ProjectionExprs;
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use futures::StreamExt;
use object_store::ObjectStore;

use super::convert::examples_to_batch;
use super::files::{file_name, parse_examples, read_file};
use datafusion::common::exec_datafusion_err;

/// Scans TFRecord files; every record's CRCs are checked.
#[derive(Clone)]
pub struct TfRecordSource {
    table_schema: TableSchema,
    batch_size: Option<usize>,
    metrics: ExecutionPlanMetricsSet,
    projection: SplitProjection,
}

impl TfRecordSource {
    /// A source for `table_schema`.
    pub fn new(table_schema: impl Into<TableSchema>) -> Self {
        let table_schema = table_schema.into();
        Self {
            projection: SplitProjection::unprojected(&table_schema),
            table_schema,
            batch_size: None,
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }
}

struct TfRecordOpener {
    batch_size: usize,
    schema: SchemaRef,
    store: Arc<dyn ObjectStore>,
    store_url: String,
}

impl FileOpener for TfRecordOpener {
    fn open(&self, file: PartitionedFile) -> Result<FileOpenFuture> {
        let store = Arc::clone(&self.store);
        let schema = Arc::clone(&self.schema);
        let batch_size = self.batch_size.max(1);
        let name = file_name(Some(&self.store_url), &file.object_meta.location);
        Ok(Box::pin(async move {
            let meta = file.object_meta;
            let data = read_file(&store, &meta, &name).await?;
            let examples = parse_examples(&data, &name, usize::MAX)?;
            let batches: Vec<Result<_>> = examples
                .chunks(batch_size)
                .enumerate()
                .map(|(i, chunk)| examples_to_batch(chunk, &schema, (i * batch_size) as u64))
                .map(|r| r.map_err(|e| exec_datafusion_err!("TFRecord file '{name}': {e}")))
                .collect();
            Ok(futures::stream::iter(batches).boxed())
        }))
    }
}

impl FileSource for TfRecordSource {
    projected_file_source!();

    fn create_file_opener(
        &self,
        store: Arc<dyn ObjectStore>,
        base_config: &FileScanConfig,
        _partition: usize,
    ) -> Result<Arc<dyn FileOpener>> {
        let file_schema = self.table_schema.file_schema();
        let schema = Arc::new(file_schema.project(&self.projection.file_indices)?);
        let opener = Arc::new(TfRecordOpener {
            batch_size: self.batch_size.unwrap_or(8192),
            schema,
            store,
            store_url: base_config.object_store_url.as_str().to_string(),
        });
        ProjectionOpener::try_new(self.projection.clone(), opener, file_schema)
    }

    fn with_batch_size(&self, batch_size: usize) -> Arc<dyn FileSource> {
        let mut source = self.clone();
        source.batch_size = Some(batch_size);
        Arc::new(source)
    }

    fn file_type(&self) -> &str {
        "tfrecord"
    }

    fn supports_repartitioning(&self) -> bool {
        // Records cannot be found from an arbitrary byte offset (and gzip cannot be split).
        false
    }
}
