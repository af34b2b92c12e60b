//! `read_images(location [, sample_ratio [, seed]])`: the image files under a location, listed
//! recursively in any store, as rows of `path`, `label` (the parent folder's name) and `content`
//! (the encoded bytes), split into parallel partitions.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use datafusion::arrow::array::{Array, ArrayRef, BinaryArray, RecordBatch, StringArray};
use datafusion::arrow::buffer::{Buffer, OffsetBuffer};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{
    Session as CatalogSession, TableFunctionArgs, TableFunctionImpl, TableProvider,
};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{ScalarValue, plan_err};
use datafusion::common::{exec_datafusion_err, plan_datafusion_err};
use datafusion::datasource::TableType;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{
    FileGroup, FileOpenFuture, FileOpener, FileScanConfig, FileScanConfigBuilder, FileSource,
};
use datafusion::datasource::projection::{ProjectionOpener, SplitProjection};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::projection::ProjectionExprs;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use futures::{StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use quiver_engine::url::Url;
use quiver_engine::{Progress, resolve_location, store_url};

/// File extensions read as images (compared case-insensitively).
const IMAGE_EXTENSIONS: [&str; 8] = ["jpg", "jpeg", "png", "bmp", "gif", "webp", "tiff", "tif"];

/// The schema of `read_images`.
pub fn read_images_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("label", DataType::Utf8, false),
        Field::new("content", DataType::Binary, false),
    ]))
}

/// Whether `path` has an image extension.
fn is_image_path(path: &str) -> bool {
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
                plan_datafusion_err!("read_images: bad file location '{location}'")
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

    /// The folder read, with a trailing slash.
    pub fn location(&self) -> &Url {
        &self.location
    }

    /// The fraction of files kept.
    pub fn sample_ratio(&self) -> f64 {
        self.sample_ratio
    }

    /// The seed of the sample.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    fn prefix(&self) -> Result<Path> {
        Ok(quiver_engine::store::object_path(&self.location)?)
    }

    /// Lists the image files, sorted by path and sampled.
    pub async fn list(&self, store: &Arc<dyn ObjectStore>) -> Result<Vec<ObjectMeta>> {
        let prefix = self.prefix()?;
        let all: Vec<ObjectMeta> = store.list(Some(&prefix)).try_collect().await.map_err(|e| {
            exec_datafusion_err!("read_images: cannot list '{}': {e}", self.location)
        })?;
        let total = all.len();
        let prefix_len = prefix.as_ref().len();
        let mut files: Vec<ObjectMeta> = all
            .into_iter()
            .filter(|m| is_image_path(m.location.as_ref()))
            .filter(|m| {
                let relative = m.location.as_ref().get(prefix_len..).unwrap_or_default();
                // Files a write is staging (or a crashed write left) are not data.
                !crate::tfrecord::staging::is_staged(relative)
                    && in_sample(relative, self.sample_ratio, self.seed)
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
        let progress = state.config().get_extension::<Progress>();
        if let Some(progress) = &progress {
            progress.add_files_listed(files.len() as u64);
        }
        let groups = split_by_size(files, state.config().target_partitions())
            .into_iter()
            .map(|files| FileGroup::new(files.into_iter().map(PartitionedFile::from).collect()))
            .collect();
        let source = Arc::new(ReadImagesSource::new(progress));
        let config = FileScanConfigBuilder::new(store_url(&self.location), source)
            .with_file_groups(groups)
            .with_projection_indices(projection.cloned())?
            .with_limit(limit)
            // Every file is read by the partition it was grouped under, in order (no work
            // stealing between partitions), so that a query sees the rows in the same order on
            // every run: training and sampling are reproducible.
            .with_preserve_order(true)
            .build();
        Ok(DataSourceExec::from_data_source(config))
    }
}

/// Reads image files whole, one row per file: the scan of `read_images`. As a file source, its
/// file groups are the partitions that a cluster's tasks split between them.
#[derive(Clone)]
pub struct ReadImagesSource {
    table_schema: TableSchema,
    metrics: ExecutionPlanMetricsSet,
    projection: SplitProjection,
    progress: Option<Arc<Progress>>,
}

impl ReadImagesSource {
    /// A source counting its reads in `progress`.
    pub fn new(progress: Option<Arc<Progress>>) -> Self {
        let table_schema = TableSchema::from(read_images_schema());
        Self {
            projection: SplitProjection::unprojected(&table_schema),
            table_schema,
            metrics: ExecutionPlanMetricsSet::new(),
            progress,
        }
    }
}

/// At most this many files are read together into one record batch, ...
const CHUNK_FILES: usize = 256;
/// ... and at most this many bytes (a larger file is a chunk of its own).
const CHUNK_BYTES: u64 = 16 << 20;
/// Reads of one chunk in flight at once, on stores other than the local file system.
const CHUNK_CONCURRENCY: usize = 16;

/// What opening a file of a partition does: the first file of each chunk of consecutive files
/// reads the whole chunk as one batch, and the chunk's other files open as nothing. One batch
/// per file would cost a task hand-over and a pass through every operator above for each row.
enum ChunkRole {
    Leads(Vec<ObjectMeta>),
    Follows,
}

/// Cuts a partition's files, in order, into chunks of [`CHUNK_FILES`] and [`CHUNK_BYTES`].
fn chunk_roles(files: &[ObjectMeta]) -> HashMap<Path, ChunkRole> {
    let mut roles = HashMap::with_capacity(files.len());
    let mut start = 0;
    while start < files.len() {
        let (mut end, mut bytes) = (start + 1, files[start].size);
        while end < files.len()
            && end - start < CHUNK_FILES
            && bytes + files[end].size <= CHUNK_BYTES
        {
            bytes += files[end].size;
            end += 1;
        }
        for file in &files[start + 1..end] {
            roles.insert(file.location.clone(), ChunkRole::Follows);
        }
        roles.insert(
            files[start].location.clone(),
            ChunkRole::Leads(files[start..end].to_vec()),
        );
        start = end;
    }
    roles
}

/// Where a chunk's bytes come from: local files are read in one blocking task, other stores
/// with several requests in flight.
#[derive(Clone)]
enum ChunkReader {
    Local(Arc<LocalFileSystem>),
    Store(Arc<dyn ObjectStore>),
}

impl ChunkReader {
    /// The files' bytes as one `content` column, read into a single buffer sized from the
    /// listing (no growing buffer, no second copy).
    async fn read(&self, base: &str, files: Vec<ObjectMeta>) -> Result<BinaryArray> {
        let capacity = files.iter().map(|m| m.size as usize).sum();
        match self {
            ChunkReader::Local(fs) => {
                let fs = Arc::clone(fs);
                let base = base.to_string();
                tokio::task::spawn_blocking(move || {
                    let mut contents = Contents::with_capacity(files.len(), capacity);
                    for meta in &files {
                        fs.path_to_filesystem(&meta.location)
                            .map_err(|e| e.to_string())
                            .and_then(|path| {
                                std::fs::File::open(path)
                                    .and_then(|mut file| file.read_to_end(&mut contents.values))
                                    .map_err(|e| e.to_string())
                            })
                            .map_err(|e| read_error(&base, &meta.location, &e))?;
                        contents.end_file(&base, &meta.location)?;
                    }
                    Ok(contents.finish())
                })
                .await
                .map_err(|e| exec_datafusion_err!("read_images: {e}"))?
            }
            ChunkReader::Store(store) => {
                let parts: Vec<(Path, Bytes)> = futures::stream::iter(files)
                    .map(|meta| async move {
                        let got = store.get(&meta.location).await;
                        match got {
                            Ok(result) => result.bytes().await,
                            Err(e) => Err(e),
                        }
                        .map(|bytes| (meta.location.clone(), bytes))
                        .map_err(|e| read_error(base, &meta.location, &e))
                    })
                    .buffered(CHUNK_CONCURRENCY)
                    .try_collect()
                    .await?;
                let mut contents = Contents::with_capacity(parts.len(), capacity);
                for (location, bytes) in &parts {
                    contents.values.extend_from_slice(bytes);
                    contents.end_file(base, location)?;
                }
                Ok(contents.finish())
            }
        }
    }
}

/// A `content` column being filled one file after another.
struct Contents {
    values: Vec<u8>,
    offsets: Vec<i32>,
}

impl Contents {
    fn with_capacity(files: usize, bytes: usize) -> Self {
        let mut offsets = Vec::with_capacity(files + 1);
        offsets.push(0);
        Self {
            values: Vec::with_capacity(bytes),
            offsets,
        }
    }

    /// Ends the file whose bytes were just appended to `values`.
    fn end_file(&mut self, base: &str, location: &Path) -> Result<()> {
        let end = i32::try_from(self.values.len()).map_err(|_| {
            read_error(
                base,
                location,
                &"a chunk of files over 2 GiB cannot be one column",
            )
        })?;
        self.offsets.push(end);
        Ok(())
    }

    fn finish(self) -> BinaryArray {
        BinaryArray::new(
            OffsetBuffer::new(self.offsets.into()),
            self.values.into(),
            None,
        )
    }
}

/// The error of a file that cannot be read, naming it.
fn read_error(base: &str, location: &Path, e: &dyn std::fmt::Display) -> DataFusionError {
    exec_datafusion_err!("read_images: cannot read '{base}{location}': {e}")
}

struct ImageFileOpener {
    reader: ChunkReader,
    base: String,
    projection: Vec<usize>,
    schema: SchemaRef,
    progress: Option<Arc<Progress>>,
    chunks: Arc<HashMap<Path, ChunkRole>>,
}

impl FileOpener for ImageFileOpener {
    fn open(&self, file: PartitionedFile) -> Result<FileOpenFuture> {
        let files = match self.chunks.get(&file.object_meta.location) {
            Some(ChunkRole::Follows) => {
                return Ok(Box::pin(async { Ok(futures::stream::empty().boxed()) }));
            }
            Some(ChunkRole::Leads(files)) => files.clone(),
            // Not in this partition's file group as planned: read on its own.
            None => vec![file.object_meta],
        };
        let reader = self.reader.clone();
        let base = self.base.clone();
        let projection = self.projection.clone();
        let schema = Arc::clone(&self.schema);
        let progress = self.progress.clone();
        Ok(Box::pin(async move {
            let urls: Vec<String> = files
                .iter()
                .map(|m| format!("{base}{}", m.location))
                .collect();
            let labels: Vec<String> = files.iter().map(|m| parent_name(&m.location)).collect();
            let contents = if projection.contains(&2) {
                quiver_engine::fault::point_async("read_images", &urls[0]).await?;
                let contents = reader.read(&base, files).await?;
                if let Some(p) = &progress {
                    for i in 0..contents.len() {
                        p.add_file_read(contents.value_length(i) as u64);
                    }
                }
                contents
            } else {
                BinaryArray::new(
                    OffsetBuffer::new_zeroed(urls.len()),
                    Buffer::default(),
                    None,
                )
            };
            let rows = urls.len();
            let all: [ArrayRef; 3] = [
                Arc::new(StringArray::from(urls)),
                Arc::new(StringArray::from(labels)),
                Arc::new(contents),
            ];
            let columns = projection.iter().map(|&i| Arc::clone(&all[i])).collect();
            let batch = RecordBatch::try_new_with_options(
                schema,
                columns,
                &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(rows)),
            )?;
            Ok(futures::stream::once(async { Ok(batch) }).boxed())
        }))
    }
}

impl FileSource for ReadImagesSource {
    projected_file_source!();

    fn create_file_opener(
        &self,
        store: Arc<dyn ObjectStore>,
        base_config: &FileScanConfig,
        partition: usize,
    ) -> Result<Arc<dyn FileOpener>> {
        let file_schema = self.table_schema.file_schema();
        let projection = self.projection.file_indices.clone();
        // Chunks are cut from the partition's own file group, which its stream opens in order
        // only when it preserves order: with work stealing, a chunk's files could be opened by
        // another partition's stream, so each file is then read on its own.
        let files: Vec<ObjectMeta> = match base_config.file_groups.get(partition) {
            Some(group) if base_config.preserve_order => group
                .files()
                .iter()
                .map(|f| f.object_meta.clone())
                .collect(),
            _ => Vec::new(),
        };
        let base = base_config.object_store_url.as_str().to_string();
        // Quiver's file:// store is the local file system from its root (quiver_engine::store).
        let reader = if base.starts_with("file://") {
            ChunkReader::Local(Arc::new(LocalFileSystem::new()))
        } else {
            ChunkReader::Store(store)
        };
        let opener = Arc::new(ImageFileOpener {
            reader,
            chunks: Arc::new(chunk_roles(&files)),
            base,
            schema: Arc::new(file_schema.project(&projection)?),
            projection,
            progress: self.progress.clone(),
        });
        ProjectionOpener::try_new(self.projection.clone(), opener, file_schema)
    }

    fn with_batch_size(&self, _batch_size: usize) -> Arc<dyn FileSource> {
        Arc::new(self.clone())
    }

    fn file_type(&self) -> &str {
        "images"
    }

    fn supports_repartitioning(&self) -> bool {
        // One row per file: the groups are split by size when planned.
        false
    }
}

fn parent_name(path: &Path) -> String {
    let parts: Vec<_> = path.parts().collect();
    parts
        .len()
        .checked_sub(2)
        .map(|i| parts[i].as_ref().to_string())
        .unwrap_or_default()
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

    fn metas(sizes: &[u64]) -> Vec<ObjectMeta> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| ObjectMeta {
                location: Path::from(format!("f{i}")),
                last_modified: Default::default(),
                size,
                e_tag: None,
                version: None,
            })
            .collect()
    }

    #[test]
    fn chunks_cover_each_file_once_in_order() {
        // 600 small files, then one over the byte limit, then two that fit together.
        let mut sizes = vec![100; 600];
        sizes.extend([CHUNK_BYTES + 1, CHUNK_BYTES / 2, CHUNK_BYTES / 2]);
        let files = metas(&sizes);
        let roles = chunk_roles(&files);
        assert_eq!(roles.len(), files.len());
        let mut chunks = Vec::new();
        let mut covered = Vec::new();
        for file in &files {
            match &roles[&file.location] {
                ChunkRole::Leads(chunk) => {
                    assert_eq!(chunk[0].location, file.location);
                    chunks.push(chunk.len());
                    covered.extend(chunk.iter().map(|m| m.location.clone()));
                }
                ChunkRole::Follows => {}
            }
        }
        assert_eq!(
            chunks,
            [CHUNK_FILES, CHUNK_FILES, 600 - 2 * CHUNK_FILES, 1, 2]
        );
        let order: Vec<_> = files.iter().map(|m| m.location.clone()).collect();
        assert_eq!(covered, order);
        assert!(chunk_roles(&[]).is_empty());
    }

    /// Both readers return a chunk's bytes in order, and name the file that cannot be read.
    #[tokio::test]
    async fn chunk_readers_keep_order_and_name_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let local = Arc::new(LocalFileSystem::new());
        let memory: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let mut metas = Vec::new();
        for i in 0..40u8 {
            let file = dir.path().join(format!("{i:02}.png"));
            std::fs::write(&file, vec![i; i as usize + 1]).unwrap();
            let location = Path::from_filesystem_path(&file).unwrap();
            memory
                .put(&location, vec![i; i as usize + 1].into())
                .await
                .unwrap();
            metas.push(local.head(&location).await.unwrap());
        }
        let missing = dir.path().join("gone.png");
        std::fs::write(&missing, b"x").unwrap();
        let gone = local
            .head(&Path::from_filesystem_path(&missing).unwrap())
            .await
            .unwrap();
        std::fs::remove_file(&missing).unwrap();
        for (reader, base) in [
            (ChunkReader::Local(local), "file:///"),
            (ChunkReader::Store(memory), "memory:///"),
        ] {
            let read = reader.read(base, metas.clone()).await.unwrap();
            let expected: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; i as usize + 1]).collect();
            assert_eq!(read, BinaryArray::from_iter_values(&expected));
            let mut with_gone = metas.clone();
            with_gone.insert(7, gone.clone());
            let err = reader.read(base, with_gone).await.unwrap_err().to_string();
            assert!(
                err.contains(&format!("cannot read '{base}{}'", gone.location)),
                "{err}"
            );
        }
    }

    #[test]
    fn splits_evenly_and_keeps_order() {
        let files = metas(&[100; 10]);
        let groups = split_by_size(files, 3);
        assert_eq!(groups.len(), 3);
        assert_eq!(groups.iter().map(Vec::len).sum::<usize>(), 10);
        assert_eq!(groups[0][0].location.as_ref(), "f0");
        assert_eq!(split_by_size(vec![], 4).len(), 0);
    }
}
