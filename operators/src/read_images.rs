//! `read_images(location [, sample_ratio [, seed]])`: the image files under a location, listed
//! recursively in any store, as rows of `path`, `label` (the parent folder's name) and `content`
//! (the encoded bytes), split into parallel partitions.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, BinaryBuilder, RecordBatch, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{
    Session as CatalogSession, TableFunctionArgs, TableFunctionImpl, TableProvider,
};
use datafusion::common::{ScalarValue, plan_err};
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use quiver_engine::url::Url;
use quiver_engine::{Progress, resolve_location, store_base, store_url};

/// File extensions read as images (compared case-insensitively).
pub const IMAGE_EXTENSIONS: [&str; 8] = ["jpg", "jpeg", "png", "bmp", "gif", "webp", "tiff", "tif"];

/// Files fetched concurrently per partition.
const FETCH_CONCURRENCY: usize = 8;
/// Rows per output batch.
const ROWS_PER_BATCH: usize = 64;

/// The schema of `read_images`.
pub fn read_images_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("label", DataType::Utf8, false),
        Field::new("content", DataType::Binary, false),
    ]))
}

/// Whether `path` has an image extension.
pub fn is_image_path(path: &str) -> bool {
    path.rsplit_once('.')
        .is_some_and(|(_, ext)| IMAGE_EXTENSIONS.iter().any(|e| e.eq_ignore_ascii_case(ext)))
}

/// A stable 64-bit FNV-1a hash, so that a sample is the same on every machine and store.
fn fnv1a(seed: u64, data: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for &b in data {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Whether the file at `relative` (its path under the location) is in a sample of `ratio`.
fn in_sample(relative: &str, ratio: f64, seed: u64) -> bool {
    ratio >= 1.0 || (fnv1a(seed, relative.as_bytes()) as f64 / u64::MAX as f64) < ratio
}

/// The table provider behind `read_images`.
#[derive(Debug, Clone)]
pub struct ReadImagesTable {
    location: Url,
    sample_ratio: f64,
    seed: u64,
}

impl ReadImagesTable {
    /// Images under `location` (a URL or local path), keeping a `sample_ratio` fraction chosen
    /// reproducibly by `seed`.
    pub fn try_new(location: &str, sample_ratio: f64, seed: u64) -> Result<Self> {
        if !(sample_ratio > 0.0 && sample_ratio <= 1.0) {
            return plan_err!("read_images: sample_ratio must be in (0, 1], got {sample_ratio}");
        }
        let mut location = resolve_location(location).map_err(DataFusionError::from)?;
        if location.scheme() == "file" {
            let path = location.to_file_path().map_err(|()| {
                DataFusionError::Plan(format!("read_images: bad file location '{location}'"))
            })?;
            if !path.exists() {
                return plan_err!("read_images: location '{}' does not exist", path.display());
            }
        }
        if !location.path().ends_with('/') {
            let path = format!("{}/", location.path());
            location.set_path(&path);
        }
        Ok(Self {
            location,
            sample_ratio,
            seed,
        })
    }

    fn prefix(&self) -> Result<Path> {
        Ok(quiver_engine::store::object_path(&self.location)?)
    }

    /// Lists the image files, sorted by path and sampled.
    pub async fn list(&self, store: &Arc<dyn ObjectStore>) -> Result<Vec<ObjectMeta>> {
        let prefix = self.prefix()?;
        let all: Vec<ObjectMeta> = store.list(Some(&prefix)).try_collect().await.map_err(|e| {
            DataFusionError::Execution(format!("read_images: cannot list '{}': {e}", self.location))
        })?;
        let total = all.len();
        let prefix_len = prefix.as_ref().len();
        let mut files: Vec<ObjectMeta> = all
            .into_iter()
            .filter(|m| is_image_path(m.location.as_ref()))
            .filter(|m| {
                let relative = m.location.as_ref().get(prefix_len..).unwrap_or_default();
                in_sample(relative, self.sample_ratio, self.seed)
            })
            .collect();
        if files.is_empty() && self.sample_ratio >= 1.0 {
            return plan_err!(
                "read_images: no image files ({}) under '{}' ({total} other files found)",
                IMAGE_EXTENSIONS.join(", "),
                self.location
            );
        }
        files.sort_by(|a, b| a.location.cmp(&b.location));
        Ok(files)
    }

    fn file_url(&self, path: &Path) -> String {
        match self.location.scheme() {
            "file" => format!("file:///{path}"),
            _ => format!("{}/{path}", store_base(&self.location)),
        }
    }
}

/// Splits `files` (in order) into at most `n` contiguous groups of about equal bytes.
fn split_by_size(files: Vec<ObjectMeta>, n: usize) -> Vec<Vec<ObjectMeta>> {
    let n = n.clamp(1, files.len().max(1));
    let total: u64 = files.iter().map(|f| f.size.max(1)).sum();
    let mut groups = vec![Vec::new(); n];
    let mut acc = 0u64;
    for file in files {
        let group = ((acc as u128 * n as u128) / total.max(1) as u128) as usize;
        acc += file.size.max(1);
        groups[group.min(n - 1)].push(file);
    }
    groups.retain(|g| !g.is_empty());
    groups
}

#[async_trait]
impl TableProvider for ReadImagesTable {
    fn schema(&self) -> SchemaRef {
        read_images_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        state: &dyn CatalogSession,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let store = state
            .runtime_env()
            .object_store(store_url(&self.location))?;
        let files = self.list(&store).await?;
        if let Some(progress) = state.config().get_extension::<Progress>() {
            progress.add_files_listed(files.len() as u64);
        }
        let schema = read_images_schema();
        let projection: Vec<usize> = projection.cloned().unwrap_or_else(|| (0..3).collect());
        let projected = Arc::new(schema.project(&projection)?);
        let partitions = split_by_size(files, state.config().target_partitions())
            .into_iter()
            .map(|files| {
                Arc::new(ImageFilesPartition {
                    table: self.clone(),
                    store: Arc::clone(&store),
                    files,
                    projection: projection.clone(),
                    schema: Arc::clone(&projected),
                }) as Arc<dyn PartitionStream>
            })
            .collect();
        Ok(Arc::new(StreamingTableExec::try_new(
            projected,
            partitions,
            None,
            vec![],
            false,
            limit,
        )?))
    }
}

/// One partition of `read_images`: a list of files fetched concurrently.
#[derive(Debug)]
struct ImageFilesPartition {
    table: ReadImagesTable,
    store: Arc<dyn ObjectStore>,
    files: Vec<ObjectMeta>,
    projection: Vec<usize>,
    schema: SchemaRef,
}

fn parent_name(path: &Path) -> String {
    let parts: Vec<_> = path.parts().collect();
    parts
        .len()
        .checked_sub(2)
        .map(|i| parts[i].as_ref().to_string())
        .unwrap_or_default()
}

impl PartitionStream for ImageFilesPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let progress = ctx.session_config().get_extension::<Progress>();
        let needs_content = self.projection.contains(&2);
        let store = Arc::clone(&self.store);
        let table = self.table.clone();
        let projection = self.projection.clone();
        let schema = Arc::clone(&self.schema);
        let fetches = futures::stream::iter(self.files.clone()).map(move |meta| {
            let store = Arc::clone(&store);
            let progress = progress.clone();
            let url = table.file_url(&meta.location);
            async move {
                let content = if needs_content {
                    let bytes = store.get(&meta.location).await.map_err(|e| {
                        DataFusionError::Execution(format!("read_images: cannot read '{url}': {e}"))
                    })?;
                    let bytes = bytes.bytes().await.map_err(|e| {
                        DataFusionError::Execution(format!("read_images: cannot read '{url}': {e}"))
                    })?;
                    if let Some(p) = &progress {
                        p.add_file_read(bytes.len() as u64);
                    }
                    Some(bytes)
                } else {
                    None
                };
                Ok::<_, DataFusionError>((url, parent_name(&meta.location), content))
            }
        });
        let batch_schema = Arc::clone(&schema);
        let batches = fetches
            .buffered(FETCH_CONCURRENCY)
            .try_chunks(ROWS_PER_BATCH)
            .map(move |chunk| {
                let rows = chunk.map_err(|e| e.1)?;
                let mut paths = StringBuilder::new();
                let mut labels = StringBuilder::new();
                let mut contents = BinaryBuilder::new();
                for (path, label, content) in &rows {
                    paths.append_value(path);
                    labels.append_value(label);
                    contents.append_value(content.as_deref().unwrap_or_default());
                }
                let all: [ArrayRef; 3] = [
                    Arc::new(paths.finish()),
                    Arc::new(labels.finish()),
                    Arc::new(contents.finish()),
                ];
                let columns = projection.iter().map(|&i| Arc::clone(&all[i])).collect();
                Ok(RecordBatch::try_new_with_options(
                    Arc::clone(&batch_schema),
                    columns,
                    &datafusion::arrow::array::RecordBatchOptions::new()
                        .with_row_count(Some(rows.len())),
                )?)
            });
        Box::pin(RecordBatchStreamAdapter::new(schema, batches))
    }
}

/// The table function `read_images(location [, sample_ratio [, seed]])`.
#[derive(Debug, Default)]
pub struct ReadImagesFunc;

fn literal(expr: &Expr) -> Option<&ScalarValue> {
    match expr {
        Expr::Literal(v, _) => Some(v),
        _ => None,
    }
}

impl TableFunctionImpl for ReadImagesFunc {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        const USAGE: &str = "usage: read_images('location' [, sample_ratio [, seed]])";
        let exprs = args.exprs();
        if exprs.is_empty() || exprs.len() > 3 {
            return plan_err!(
                "read_images: expected 1 to 3 arguments, got {}; {USAGE}",
                exprs.len()
            );
        }
        let location = match literal(&exprs[0]) {
            Some(
                ScalarValue::Utf8(Some(s))
                | ScalarValue::LargeUtf8(Some(s))
                | ScalarValue::Utf8View(Some(s)),
            ) => s.clone(),
            _ => {
                return plan_err!(
                    "read_images: argument 1 (location) must be a string literal, got {}; {USAGE}",
                    exprs[0]
                );
            }
        };
        let ratio = match exprs.get(1).map(literal) {
            None => 1.0,
            Some(Some(v)) if v.data_type().is_numeric() => match v.cast_to(&DataType::Float64)? {
                ScalarValue::Float64(Some(r)) => r,
                _ => return plan_err!("read_images: sample_ratio must not be NULL; {USAGE}"),
            },
            Some(_) => {
                return plan_err!(
                    "read_images: argument 2 (sample_ratio) must be a number, got {}; {USAGE}",
                    exprs[1]
                );
            }
        };
        let seed = match exprs.get(2).map(literal) {
            None => 0,
            Some(Some(v)) if v.data_type().is_integer() => match v.cast_to(&DataType::UInt64) {
                Ok(ScalarValue::UInt64(Some(s))) => s,
                _ => return plan_err!("read_images: seed must be a non-negative integer; {USAGE}"),
            },
            Some(_) => {
                return plan_err!(
                    "read_images: argument 3 (seed) must be an integer, got {}; {USAGE}",
                    exprs[2]
                );
            }
        };
        Ok(Arc::new(ReadImagesTable::try_new(&location, ratio, seed)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_and_sampling() {
        assert!(is_image_path("a/b/C.JPG"));
        assert!(is_image_path("x.webp"));
        assert!(!is_image_path("notes.txt"));
        assert!(!is_image_path("jpg"));
        let names: Vec<String> = (0..2000).map(|i| format!("cls/{i}.jpg")).collect();
        let kept = names.iter().filter(|n| in_sample(n, 0.25, 7)).count();
        assert!((400..600).contains(&kept), "kept {kept} of 2000 at 0.25");
        let again = names.iter().filter(|n| in_sample(n, 0.25, 7)).count();
        assert_eq!(kept, again);
        let other_seed = names.iter().filter(|n| in_sample(n, 0.25, 8)).count();
        assert_ne!(
            names
                .iter()
                .filter(|n| in_sample(n, 0.25, 7))
                .collect::<Vec<_>>(),
            names
                .iter()
                .filter(|n| in_sample(n, 0.25, 8))
                .collect::<Vec<_>>(),
            "{other_seed}"
        );
    }

    #[test]
    fn splits_evenly_and_keeps_order() {
        let files: Vec<ObjectMeta> = (0..10)
            .map(|i| ObjectMeta {
                location: Path::from(format!("f{i}")),
                last_modified: Default::default(),
                size: 100,
                e_tag: None,
                version: None,
            })
            .collect();
        let groups = split_by_size(files, 3);
        assert_eq!(groups.len(), 3);
        assert_eq!(groups.iter().map(Vec::len).sum::<usize>(), 10);
        assert_eq!(groups[0][0].location.as_ref(), "f0");
        assert_eq!(split_by_size(vec![], 4).len(), 0);
    }
}
