//! The TFRecord [`FileFormat`] and its factory (`STORED AS TFRECORD`), with options.

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
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::physical_expr::LexRequirement;
use datafusion::physical_plan::ExecutionPlan;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use prost::Message;

use super::convert::{ImageEncoding, infer_schema};
use super::example::Example;
use super::record::{RecordReader, gunzip, is_gzip};
use super::sink::plan_write;
use super::source::TfRecordSource;

/// Options of the TFRecord format: `compression` ('none' | 'gzip'), `image_format`
/// ('png' | 'jpeg' | 'raw'), `schema_infer_max_records`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TfRecordOptions {
    /// Gzip each shard as a whole (TensorFlow's `compression_type='GZIP'`).
    pub gzip: bool,
    /// How image struct columns are written.
    pub image_format: ImageEncoding,
    /// Records read to infer a schema.
    pub schema_infer_max_records: usize,
}

impl Default for TfRecordOptions {
    fn default() -> Self {
        Self {
            gzip: false,
            image_format: ImageEncoding::default(),
            schema_infer_max_records: 1000,
        }
    }
}

impl TfRecordOptions {
    /// These options as `OPTIONS (...)` keys, the inverse of [`Self::with_options`].
    pub fn to_options(&self) -> HashMap<String, String> {
        let image_format = match self.image_format {
            ImageEncoding::Png => "png",
            ImageEncoding::Jpeg => "jpeg",
            ImageEncoding::Raw => "raw",
        };
        HashMap::from([
            (
                "format.compression".to_string(),
                if self.gzip { "gzip" } else { "none" }.to_string(),
            ),
            ("format.image_format".to_string(), image_format.to_string()),
            (
                "format.schema_infer_max_records".to_string(),
                self.schema_infer_max_records.to_string(),
            ),
        ])
    }

    /// Applies `OPTIONS (...)` of a statement; keys may carry DataFusion's `format.` prefix.
    /// Keys of other namespaces (with a dot) are left to DataFusion.
    pub fn with_options(mut self, options: &HashMap<String, String>) -> Result<Self> {
        for (key, value) in options {
            let name = match key.strip_prefix("format.") {
                Some(name) => name,
                None if key.contains('.') => continue,
                None => key.as_str(),
            };
            match name {
                "compression" => {
                    self.gzip = match value.to_ascii_lowercase().as_str() {
                        "gzip" => true,
                        "none" | "uncompressed" | "" => false,
                        other => {
                            return plan_err!(
                                "TFRECORD option compression: expected 'gzip' or 'none', got '{other}'"
                            );
                        }
                    }
                }
                "image_format" => self.image_format = ImageEncoding::parse(value)?,
                "schema_infer_max_records" => {
                    self.schema_infer_max_records = value.parse().map_err(|_| {
                        DataFusionError::Plan(format!(
                            "TFRECORD option schema_infer_max_records: expected a count, got '{value}'"
                        ))
                    })?
                }
                other => {
                    return plan_err!(
                        "unknown TFRECORD option '{other}' (known: compression, image_format, schema_infer_max_records)"
                    );
                }
            }
        }
        Ok(self)
    }
}

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

/// Reads a whole TFRecord file from `store`, gunzipping it when it is gzip.
/// How messages name the file at `path` of the store at `store_url`: local files by their
/// absolute path, others by URL.
pub(super) fn file_name(store_url: Option<&str>, path: &object_store::path::Path) -> String {
    match store_url {
        Some(url) if !url.starts_with("file://") => format!("{url}{path}"),
        _ => format!("/{path}"),
    }
}

/// Reads (and gunzips) the file `meta`, named `name` in errors.
pub(super) async fn read_file(
    store: &Arc<dyn ObjectStore>,
    meta: &ObjectMeta,
    name: &str,
) -> Result<Vec<u8>> {
    let failed = |e: &dyn std::fmt::Display| {
        DataFusionError::Execution(format!("TFRecord file '{name}': {e}"))
    };
    let bytes = store
        .get(&meta.location)
        .await
        .map_err(|e| failed(&e))?
        .bytes()
        .await
        .map_err(|e| failed(&e))?;
    if is_gzip(&bytes) {
        gunzip(&bytes).map_err(|e| failed(&format!("bad gzip stream: {e}")))
    } else {
        Ok(bytes.to_vec())
    }
}

/// Parses every record of `data` as an Example; errors name `file`, the record and its offset.
pub(super) fn parse_examples(data: &[u8], file: &str, limit: usize) -> Result<Vec<Example>> {
    let mut examples = Vec::new();
    let mut offset = 0u64;
    for (index, record) in RecordReader::new(data).take(limit).enumerate() {
        let record = record
            .map_err(|e| DataFusionError::Execution(format!("TFRecord file '{file}': {e}")))?;
        let example = Example::decode(record).map_err(|e| {
            DataFusionError::Execution(format!(
                "TFRecord file '{file}': record {index} at byte offset {offset}: not a tf.train.Example: {e}"
            ))
        })?;
        offset += 16 + record.len() as u64;
        examples.push(example);
    }
    Ok(examples)
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
