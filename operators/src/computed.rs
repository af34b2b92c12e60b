//! Tables whose rows are computed when they are scanned, not when they are planned: the table
//! functions over the store (`models()`, `ml_evaluate`, `experiments()`, `job_runs`) and
//! `feature_stats`.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session as CatalogSession, TableProvider};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::Result;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

/// Computes a table's rows in one batch.
#[async_trait]
pub(crate) trait ComputeRows: std::fmt::Debug + Send + Sync + 'static {
    /// The columns.
    fn schema(&self) -> SchemaRef;
    /// The rows, computed in `state` (the session running the query).
    async fn rows(&self, state: &dyn CatalogSession) -> Result<RecordBatch>;
}

/// The table of a [`ComputeRows`].
#[derive(Debug)]
pub(crate) struct ComputedTable<T>(pub(crate) T);

#[async_trait]
impl<T: ComputeRows> TableProvider for ComputedTable<T> {
    fn schema(&self) -> SchemaRef {
        self.0.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        state: &dyn CatalogSession,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let batch = self.0.rows(state).await?;
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            self.0.schema(),
            projection.cloned(),
        )?)
    }
}
