//! The TFRecord [`FileFormat`] and its factory (`STORED AS TFRECORD`).

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::catalog::Session as CatalogSession;
use datafusion::common::{GetExt, Statistics, not_impl_err, plan_err};
use datafusion::datasource::file_format::file_compression_type::FileCompressionType;
use datafusion::datasource::file_format::{FileFormat, FileFormatFactory};
use datafusion::datasource::physical_plan::{FileScanConfig, FileSinkConfig, FileSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::error::Result;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::physical_expr::LexRequirement;
use datafusion::physical_plan::ExecutionPlan;
use object_store::{ObjectMeta, ObjectStore};

use super::convert::infer_schema;
use super::files::{file_name, parse_examples, read_file};
use super::options::TfRecordOptions;
use super::sink::plan_write;
use super::source::TfRecordSource;

/// Creates [`TfRecordFormat`]s for `STORED AS TFRECORD`.
#[derive(Debug, Default)]
pub struct TfRecordFormatFactory {
    options: HashMap<String, String>,
}

impl TfRecordFormatFactory {
    /// A factory of formats with the default options.
    pub fn new() -> Self {
        Self::with_options(HashMap::new())
    }

    /// A factory whose formats start from `options` (`OPTIONS (...)` keys); a statement's own
    /// options override them. A cluster's planner gets a COPY's options this way, since plans
    /// carry the format but not the statement's options.
    pub fn with_options(options: HashMap<String, String>) -> Self {
        Self { options }
    }

    /// The options the formats start from.
    pub fn options(&self) -> &HashMap<String, String> {
        &self.options
    }
}

impl GetExt for TfRecordFormatFactory {
    fn get_ext(&self) -> String {
        "tfrecord".into()
    }
}

impl FileFormatFactory for TfRecordFormatFactory {
    fn create(
        &self,
        _state: &dyn CatalogSession,
        options: &HashMap<String, String>,
    ) -> Result<Arc<dyn FileFormat>> {
        let mut all = self.options.clone();
        all.extend(options.iter().map(|(k, v)| (k.clone(), v.clone())));
        Ok(Arc::new(TfRecordFormat::new(
            TfRecordOptions::default().with_options(&all)?,
        )))
    }

    fn default(&self) -> Arc<dyn FileFormat> {
        Arc::new(TfRecordFormat::default())
    }
}

/// The TFRecord file format.
#[derive(Debug, Default, Clone)]
pub struct TfRecordFormat {
    options: TfRecordOptions,
    /// The URL of the store its files are in (`file:///`, `s3://bucket/`), for messages.
    store_url: Option<String>,
}

impl TfRecordFormat {
    /// A format with `options`.
    pub fn new(options: TfRecordOptions) -> Self {
        Self {
            options,
            store_url: None,
        }
    }

    /// The same format, naming files in messages as URLs of the store at `store_url`.
    pub fn in_store(mut self, store_url: &str) -> Self {
        self.store_url = Some(store_url.to_string());
        self
    }

    /// The options.
    pub fn options(&self) -> &TfRecordOptions {
        &self.options
    }
}

#[async_trait]
impl FileFormat for TfRecordFormat {
    fn get_ext(&self) -> String {
        TfRecordFormatFactory::new().get_ext()
    }

    fn get_ext_with_compression(&self, compression: &FileCompressionType) -> Result<String> {
        Ok(format!("{}{}", self.get_ext(), compression.get_ext()))
    }

    fn compression_type(&self) -> Option<FileCompressionType> {
        None
    }

    async fn infer_schema(
        &self,
        _state: &dyn CatalogSession,
        store: &Arc<dyn ObjectStore>,
        objects: &[ObjectMeta],
    ) -> Result<SchemaRef> {
        let mut examples = Vec::new();
        for object in objects {
            let budget = self
                .options
                .schema_infer_max_records
                .saturating_sub(examples.len());
            if budget == 0 {
                break;
            }
            let name = file_name(self.store_url.as_deref(), &object.location);
            let data = read_file(store, object, &name).await?;
            examples.extend(parse_examples(&data, &name, budget)?);
        }
        if examples.is_empty() && !objects.is_empty() {
            return plan_err!(
                "cannot infer a TFRecord schema: the {} file(s) hold no records; declare the columns",
                objects.len()
            );
        }
        let schema: Schema = infer_schema(&examples)?;
        Ok(Arc::new(schema))
    }

    async fn infer_stats(
        &self,
        _state: &dyn CatalogSession,
        _store: &Arc<dyn ObjectStore>,
        table_schema: SchemaRef,
        _object: &ObjectMeta,
    ) -> Result<Statistics> {
        Ok(Statistics::new_unknown(&table_schema))
    }

    async fn create_physical_plan(
        &self,
        _state: &dyn CatalogSession,
        conf: FileScanConfig,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(DataSourceExec::from_data_source(conf))
    }

    async fn create_writer_physical_plan(
        &self,
        input: Arc<dyn ExecutionPlan>,
        state: &dyn CatalogSession,
        conf: FileSinkConfig,
        _order_requirements: Option<LexRequirement>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if conf.insert_op != InsertOp::Append {
            return not_impl_err!("TFRecord tables support appending new shards only");
        }
        if !conf.table_partition_cols.is_empty() {
            return not_impl_err!("PARTITIONED BY is not supported for TFRECORD");
        }
        let store = state.runtime_env().object_store(&conf.object_store_url)?;
        plan_write(input, store, conf, self.options.clone()).await
    }

    fn file_source(&self, table_schema: TableSchema) -> Arc<dyn FileSource> {
        Arc::new(TfRecordSource::new(table_schema))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tfrecord::convert::ImageEncoding;

    #[test]
    fn options_parse_and_reject_unknown() {
        let o = |pairs: &[(&str, &str)]| {
            let map = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            TfRecordOptions::default().with_options(&map)
        };
        assert!(o(&[("format.compression", "gzip")]).unwrap().gzip);
        assert!(!o(&[("compression", "NONE")]).unwrap().gzip);
        assert_eq!(
            o(&[("format.image_format", "raw")]).unwrap().image_format,
            ImageEncoding::Raw
        );
        assert!(o(&[("execution.keep_partition_by_columns", "true")]).is_ok());
        let err = o(&[("format.compression", "zstd")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("compression") && err.contains("zstd"), "{err}");
        let err = o(&[("format.colour", "red")]).unwrap_err().to_string();
        assert!(err.contains("unknown TFRECORD option 'colour'"), "{err}");
    }
}
