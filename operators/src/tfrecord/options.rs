//! The options of `STORED AS TFRECORD`, shared by the format, its sink and its source.

use std::collections::HashMap;

use datafusion::common::plan_err;
use datafusion::error::Result;

use super::convert::ImageEncoding;
use datafusion::common::plan_datafusion_err;

/// Options of the TFRecord format: `compression` ('none' | 'gzip'), `image_format`
/// ('png' | 'jpeg' | 'raw'), `schema_infer_max_records`, and `write_id`, which the client that
/// runs a `COPY` sets so that it can abort exactly its own write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TfRecordOptions {
    /// Gzip each shard as a whole (TensorFlow's `compression_type='GZIP'`).
    pub gzip: bool,
    /// How image struct columns are written.
    pub image_format: ImageEncoding,
    /// Records read to infer a schema.
    pub schema_infer_max_records: usize,
    /// The name of a write's staging folder (see [`super::staging::staging_id`]); a new one
    /// when the write is planned if not given.
    pub write_id: Option<String>,
}

impl Default for TfRecordOptions {
    fn default() -> Self {
        Self {
            gzip: false,
            image_format: ImageEncoding::default(),
            schema_infer_max_records: 1000,
            write_id: None,
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
        let mut options = HashMap::from([
            (
                "format.compression".to_string(),
                if self.gzip { "gzip" } else { "none" }.to_string(),
            ),
            ("format.image_format".to_string(), image_format.to_string()),
            (
                "format.schema_infer_max_records".to_string(),
                self.schema_infer_max_records.to_string(),
            ),
        ]);
        if let Some(id) = &self.write_id {
            options.insert("format.write_id".to_string(), id.clone());
        }
        options
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
                        plan_datafusion_err!("TFRECORD option schema_infer_max_records: expected a count, got '{value}'")
                    })?
                }
                "write_id" => {
                    if !super::staging::is_staging_id(value) {
                        return plan_err!(
                            "TFRECORD option write_id: expected TIME-PROCESS-COUNTER (hex time), got '{value}'"
                        );
                    }
                    self.write_id = Some(value.clone());
                }
                other => {
                    return plan_err!(
                        "unknown TFRECORD option '{other}' (known: compression, image_format, schema_infer_max_records, write_id)"
                    );
                }
            }
        }
        Ok(self)
    }
}
