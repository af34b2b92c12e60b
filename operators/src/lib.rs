//! Quiver's operators, one folder per capability:
//!
//! - [`image`]: `read_images`, the image kernels and the `image_*` SQL functions;
//! - [`tfrecord`]: the TFRecord file format, read and written as a DataFusion file format;
//! - [`ml`]: models, data loading, the training loop, evaluation, the registry, `predict`;
//! - [`experiment`]: hyperparameter searches, one trial per slot, and their tables;
//! - [`stats`]: `feature_stats`, per-feature statistics and drift between two tables;
//! - [`jobs`]: batch job runs in the shared store and `job_runs`.

/// The methods of a [`datafusion::datasource::physical_plan::FileSource`] that every Quiver file
/// source shares, for a source with `table_schema`, `projection` (a `SplitProjection`) and
/// `metrics` fields and `Clone`.
macro_rules! projected_file_source {
    () => {
        fn table_schema(&self) -> &TableSchema {
            &self.table_schema
        }

        fn try_pushdown_projection(
            &self,
            projection: &ProjectionExprs,
        ) -> Result<Option<Arc<dyn FileSource>>> {
            let mut source = self.clone();
            let merged = self.projection.source.try_merge(projection)?;
            source.projection = SplitProjection::new(self.table_schema.file_schema(), &merged);
            Ok(Some(Arc::new(source)))
        }

        fn projection(&self) -> Option<&ProjectionExprs> {
            Some(&self.projection.source)
        }

        fn metrics(&self) -> &ExecutionPlanMetricsSet {
            &self.metrics
        }

        fn apply_expressions(
            &self,
            f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
        ) -> Result<TreeNodeRecursion> {
            datafusion::physical_plan::apply_expression_roots(self.projection.source.iter(), f)
        }
    };
}

pub mod experiment;
pub mod image;
pub mod jobs;
pub mod ml;
pub mod stats;
pub mod tfrecord;

pub use image::{
    ImageFunc, ImageOp, ReadImagesFunc, ReadImagesSource, ReadImagesTable, read_images_schema,
};
pub use tfrecord::{TfRecordFormat, TfRecordFormatFactory, TfRecordOptions};
