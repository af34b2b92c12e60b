//! Reading whole TFRecord files from a store into Examples, for schema inference and scans;
//! errors name the file, the record and its byte offset.

use std::sync::Arc;

use datafusion::error::Result;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use prost::Message;

use super::example::Example;
use super::record::{RecordReader, gunzip, is_gzip};
use datafusion::common::exec_datafusion_err;

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
    let failed = |e: &dyn std::fmt::Display| exec_datafusion_err!("TFRecord file '{name}': {e}");
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
        let record = record.map_err(|e| exec_datafusion_err!("TFRecord file '{file}': {e}"))?;
        let example = Example::decode(record).map_err(|e| {
            exec_datafusion_err!("TFRecord file '{file}': record {index} at byte offset {offset}: not a tf.train.Example: {e}")
        })?;
        offset += 16 + record.len() as u64;
        examples.push(example);
    }
    Ok(examples)
}
