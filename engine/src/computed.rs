//! Tables whose rows are computed when they are scanned, not when they are planned: the table
//! functions over the store (`models()`, `ml_evaluate`, `experiments()`, `job_runs`) and
//! `feature_stats`.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session as CatalogSession, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::Result;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

/// Computes a table's rows in one batch.
#[async_trait]
pub trait ComputeRows: std::fmt::Debug + Send + Sync + 'static {
    /// The columns.
    fn schema(&self) -> SchemaRef;
    /// The rows, computed in `state` (the session running the query).
    async fn rows(&self, state: &dyn CatalogSession) -> Result<RecordBatch>;
}

/// The table of a [`ComputeRows`].
#[derive(Debug)]
pub struct ComputedTable(Box<dyn ComputeRows>);

impl ComputedTable {
    /// The table whose rows `rows` computes.
    pub fn new(rows: impl ComputeRows) -> Self {
        Self(Box::new(rows))
    }
}

/// Whether `provider` is computed from the store in the session that scans it (`models()`,
/// `experiments()`, `experiment_trials`, `job_runs`, `ml_evaluate`, `feature_stats`).
pub fn is_computed(provider: &dyn TableProvider) -> bool {
    provider.is::<ComputedTable>()
}

#[async_trait]
impl TableProvider for ComputedTable {
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

/// The text of a string literal argument.
pub fn string_literal(expr: &Expr) -> Option<&str> {
    match expr {
        Expr::Literal(
            ScalarValue::Utf8(Some(s))
            | ScalarValue::LargeUtf8(Some(s))
            | ScalarValue::Utf8View(Some(s)),
            _,
        ) => Some(s),
        _ => None,
    }
}

/// A table-function argument naming a table or holding a query: whether it is a query, and
/// the SQL that reads it.
pub fn table_or_query(text: &str) -> (bool, String) {
    let text = text.trim();
    let lower = text.to_ascii_lowercase();
    if lower.starts_with("select") || lower.starts_with("with") {
        (true, text.to_string())
    } else {
        (false, format!("SELECT * FROM {text}"))
    }
}
