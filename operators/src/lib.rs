//! Quiver's operators: image functions, `read_images`, the TFRecord file format, and machine
//! learning (models, training, evaluation, the registry, `predict`), and feature statistics.

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

pub mod computed;
pub mod experiment;
pub mod image_ops;
pub mod image_paths;
pub mod image_udfs;
pub mod jobs;
pub mod ml;
pub mod read_images;
pub mod stats;
pub mod tfrecord;

pub use image_udfs::{ImageFunc, ImageOp};
pub use read_images::{ReadImagesFunc, ReadImagesSource, ReadImagesTable, read_images_schema};
pub use tfrecord::{TfRecordFormat, TfRecordFormatFactory, TfRecordOptions};
