//! Writing TFRecord shards in two steps, as Spark does: [`TfRecordWriterExec`] writes one shard
//! per input partition into a staging folder (on a cluster, every task writes its own), and
//! [`TfRecordSinkExec`] commits them all to `part-IIIII-of-NNNNN.tfrecord[.gz]` only when every
//! writer succeeded. A failed write leaves no shard visible: staged files live in a
//! `_temporary/` subfolder, which readers skip, and are removed when the commit sees the error.

use std::fmt;
use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{internal_err, plan_err};
use datafusion::datasource::physical_plan::FileSinkConfig;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{Distribution, EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties, SendableRecordBatchStream,
};
use futures::TryStreamExt;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use quiver_engine::Progress;
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;

use super::convert::batch_to_examples;
use super::options::TfRecordOptions;
use super::record::write_record;
use super::staging::{
    self, HEARTBEAT, STAGING_DIR, STALE_AFTER, Stop, destination_key, staging_id,
};
use datafusion::common::{exec_datafusion_err, exec_err, internal_datafusion_err};

/// Bytes buffered before they are handed to the store.
const FLUSH_BYTES: usize = 8 << 20;

/// Plans writing `input` to the location in `config`: a writer per input partition (or one writer
/// of a single file) and the commit. Fails early when the location already holds shards.
pub async fn plan_write(
    input: Arc<dyn ExecutionPlan>,
    store: Arc<dyn ObjectStore>,
    config: FileSinkConfig,
    options: TfRecordOptions,
) -> Result<Arc<dyn ExecutionPlan>> {
    let Some(table_path) = config.table_paths.first() else {
        return plan_err!("COPY to TFRECORD needs a target location");
    };
    let base = table_path.prefix().clone();
    let single_file = config.file_output_mode.single_file_output(table_path);
    let dir = if single_file {
        base.parts()
            .take(base.parts().count().saturating_sub(1))
            .collect()
    } else {
        check_no_shards(&store, &base, &config.original_url).await?;
        base
    };
    let id = options.write_id.clone().unwrap_or_else(staging_id);
    let write = TfRecordWrite {
        config,
        options,
        staging: dir.join(STAGING_DIR).join(id),
    };
    let writer = Arc::new(TfRecordWriterExec::new(input, write.clone()));
    Ok(Arc::new(TfRecordSinkExec::new(writer, write)))
}

/// What a TFRecord write's writers and its commit share: the target, the format options and the
/// staging folder (chosen when the write is planned, so every writer of a cluster uses it).
#[derive(Debug, Clone)]
pub struct TfRecordWrite {
    /// Where the shards go.
    pub config: FileSinkConfig,
    /// How records are written.
    pub options: TfRecordOptions,
    /// The folder the writers stage their shards in.
    pub staging: Path,
}

impl TfRecordWrite {
    /// The destination folder: where the shards go, and `_temporary/` in it.
    pub fn dir(&self) -> Path {
        let mut parts: Vec<_> = self.staging.parts().collect();
        parts.truncate(parts.len().saturating_sub(2));
        parts.into_iter().collect()
    }

    /// The write's id: its staging folder's name.
    pub fn id(&self) -> Result<&str> {
        self.staging
            .filename()
            .ok_or_else(|| internal_datafusion_err!("bad TFRecord staging folder {}", self.staging))
    }

    /// The destination's key among live writers.
    fn key(&self) -> String {
        destination_key(&self.config.object_store_url, &self.dir())
    }
}

/// Fails when `dir` already holds committed shards.
async fn check_no_shards(store: &Arc<dyn ObjectStore>, dir: &Path, url: &str) -> Result<()> {
    let existing = store
        .list_with_delimiter(Some(dir))
        .await
        .map(|l| l.objects)
        .unwrap_or_default();
    match existing.iter().find(|m| {
        m.location
            .filename()
            .is_some_and(|f| f.starts_with("part-"))
    }) {
        Some(shard) => plan_err!(
            "'{url}' already holds TFRecord shards ({}); write to a new location so that no committed data is overwritten",
            shard.location
        ),
        None => Ok(()),
    }
}

fn extension(options: &TfRecordOptions) -> &'static str {
    if options.gzip {
        "tfrecord.gz"
    } else {
        "tfrecord"
    }
}

/// The rows a writer returns: the staged shard, its rows and the input partition.
fn staged_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("staged", DataType::Utf8, false),
        Field::new("rows", DataType::UInt64, false),
        Field::new("partition", DataType::UInt64, false),
    ]))
}

/// The properties of a node that emits `schema` in `partitions` partitions once its input ends.
fn final_properties(schema: SchemaRef, partitions: usize) -> Arc<PlanProperties> {
    Arc::new(PlanProperties::new(
        EquivalenceProperties::new(schema),
        Partitioning::UnknownPartitioning(partitions),
        EmissionType::Final,
        Boundedness::Bounded,
    ))
}

/// Writes each input partition as one shard in the staging folder and returns a row naming it.
#[derive(Debug)]
pub struct TfRecordWriterExec {
    input: Arc<dyn ExecutionPlan>,
    write: TfRecordWrite,
    properties: Arc<PlanProperties>,
}

impl TfRecordWriterExec {
    /// A writer of `input`'s partitions into the write's staging folder.
    pub fn new(input: Arc<dyn ExecutionPlan>, write: TfRecordWrite) -> Self {
        let partitions = input.output_partitioning().partition_count();
        Self {
            input,
            write,
            properties: final_properties(staged_schema(), partitions),
        }
    }

    /// The write this writer is part of.
    pub fn write(&self) -> &TfRecordWrite {
        &self.write
    }
}

impl DisplayAs for TfRecordWriterExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "TfRecordWriterExec: staging={}, gzip={}, image_format={:?}",
            self.write.staging, self.write.options.gzip, self.write.options.image_format
        )
    }
}

/// Writes its input (the staged shards the writers made) into place and returns one row: the
/// number of rows written.
#[derive(Debug)]
pub struct TfRecordSinkExec {
    input: Arc<dyn ExecutionPlan>,
    write: TfRecordWrite,
    properties: Arc<PlanProperties>,
}

fn count_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(
        "count",
        DataType::UInt64,
        false,
    )]))
}

impl TfRecordSinkExec {
    /// The commit of the shards that `input` (the writers) staged.
    pub fn new(input: Arc<dyn ExecutionPlan>, write: TfRecordWrite) -> Self {
        Self {
            input,
            write,
            properties: final_properties(count_schema(), 1),
        }
    }

    /// The write this commit ends.
    pub fn write(&self) -> &TfRecordWrite {
        &self.write
    }
}

impl DisplayAs for TfRecordSinkExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "TfRecordSinkExec: url={}, gzip={}, image_format={:?}",
            self.write.config.original_url,
            self.write.options.gzip,
            self.write.options.image_format
        )
    }
}

/// Streams records into one object, gzipped or not.
struct ShardWriter {
    upload: BufWriter,
    gzip: Option<flate2::write::GzEncoder<Vec<u8>>>,
    buffer: Vec<u8>,
    bytes: u64,
}

impl ShardWriter {
    fn new(store: Arc<dyn ObjectStore>, path: Path, gzip: bool) -> Self {
        Self {
            upload: BufWriter::with_capacity(store, path, FLUSH_BYTES),
            gzip: gzip
                .then(|| flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default())),
            buffer: Vec::with_capacity(FLUSH_BYTES + (1 << 20)),
            bytes: 0,
        }
    }

    async fn write_records(&mut self, records: &[Vec<u8>]) -> Result<()> {
        for record in records {
            write_record(&mut self.buffer, record);
        }
        if self.buffer.len() >= FLUSH_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        let out = match &mut self.gzip {
            Some(gz) => {
                gz.write_all(&self.buffer)?;
                self.buffer.clear();
                std::mem::take(gz.get_mut())
            }
            None => std::mem::replace(
                &mut self.buffer,
                Vec::with_capacity(FLUSH_BYTES + (1 << 20)),
            ),
        };
        self.bytes += out.len() as u64;
        if !out.is_empty() {
            self.upload.put(Bytes::from(out)).await?;
        }
        Ok(())
    }

    async fn finish(mut self) -> Result<u64> {
        self.flush().await?;
        if let Some(gz) = self.gzip.take() {
            let tail = gz.finish()?;
            self.bytes += tail.len() as u64;
            self.upload.put(Bytes::from(tail)).await?;
        }
        self.upload.shutdown().await?;
        Ok(self.bytes)
    }

    async fn abort(mut self) {
        let _ = self.upload.abort().await;
    }
}

/// Writes the batches of `stream` into `writer` until it ends or `stop` is asked for; returns
/// the rows written.
async fn write_stream(
    mut stream: SendableRecordBatchStream,
    writer: &mut ShardWriter,
    options: &TfRecordOptions,
    progress: Option<&Progress>,
    stop: &Stop,
) -> Result<u64> {
    let mut rows = 0;
    loop {
        let batch = tokio::select! {
            biased;
            () = stop.wait() => return Err(stopped()),
            batch = stream.try_next() => batch?,
        };
        let Some(batch) = batch else {
            return Ok(rows);
        };
        let image_format = options.image_format;
        let records = tokio::task::spawn_blocking(move || batch_to_examples(&batch, image_format))
            .await
            .map_err(|e| exec_datafusion_err!("TFRecord encoder task failed: {e}"))??;
        let before = writer.bytes + writer.buffer.len() as u64;
        writer.write_records(&records).await?;
        rows += records.len() as u64;
        if let Some(p) = progress {
            let after = writer.bytes + writer.buffer.len() as u64;
            p.add_written(records.len() as u64, after.saturating_sub(before));
        }
    }
}

fn stopped() -> DataFusionError {
    DataFusionError::Execution(
        "the TFRecord write was stopped (the query failed or was cancelled)".into(),
    )
}

/// The children, properties and expressions every sink node has alike.
macro_rules! one_input_plan {
    ($name:literal) => {
        fn name(&self) -> &'static str {
            $name
        }

        fn properties(&self) -> &Arc<PlanProperties> {
            &self.properties
        }

        fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
            vec![&self.input]
        }

        fn with_new_children(
            self: Arc<Self>,
            children: Vec<Arc<dyn ExecutionPlan>>,
        ) -> Result<Arc<dyn ExecutionPlan>> {
            match children.as_slice() {
                [input] => Ok(Arc::new(Self::new(Arc::clone(input), self.write.clone()))),
                _ => internal_err!("{} takes one child", $name),
            }
        }

        fn apply_expressions(
            &self,
            _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
        ) -> Result<TreeNodeRecursion> {
            Ok(TreeNodeRecursion::Continue)
        }
    };
}

impl ExecutionPlan for TfRecordWriterExec {
    one_input_plan!("TfRecordWriterExec");

    fn required_input_distribution(&self) -> Vec<Distribution> {
        let single_file = self
            .write
            .config
            .table_paths
            .first()
            .is_some_and(|path| self.write.config.file_output_mode.single_file_output(path));
        vec![if single_file {
            Distribution::SinglePartition
        } else {
            Distribution::UnspecifiedDistribution
        }]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let store = context
            .runtime_env()
            .object_store(&self.write.config.object_store_url)?;
        let path = self.write.staging.clone().join(format!(
            "{partition:05}-{}.{}",
            staging_id(),
            extension(&self.write.options)
        ));
        let registration = staging::register(&self.write.key(), self.write.id()?)?;
        let stream = self.input.execute(partition, Arc::clone(&context))?;
        let options = self.write.options.clone();
        let progress = context.session_config().get_extension::<Progress>();
        let fault_key = format!(
            "{}/{partition:05}",
            self.write.config.original_url.trim_end_matches('/')
        );
        // The writing runs in a task of its own, which a dropped consumer does not cancel in
        // the middle of an upload (an upload cut short could land after the clean-up): it
        // stops at its next batch, removes what it staged, and only then leaves the registry.
        let stop = Arc::clone(&registration.stop);
        let work = tokio::spawn(async move {
            let stop = &registration.stop;
            let alive = Path::from(format!("{path}.alive"));
            let ended = Notify::new();
            let write = async {
                let staged =
                    stage_shard(Arc::clone(&store), &path, stream, &options, progress, stop).await;
                ended.notify_one();
                staged
            };
            let (staged, ()) = tokio::join!(write, heartbeat(&store, &alive, &ended));
            let _ = store.delete(&alive).await;
            let rows = staged?;
            // The shard is staged; a test may stop or crash the write here.
            let reached = tokio::select! {
                biased;
                () = stop.wait() => Err(stopped()),
                reached = quiver_engine::fault::point_async("tfrecord_write", &fault_key) => {
                    reached.map_err(DataFusionError::from)
                }
            };
            if let Err(e) = reached {
                let _ = store.delete(&path).await;
                return Err(e);
            }
            let columns: Vec<ArrayRef> = vec![
                Arc::new(StringArray::from(vec![path.to_string()])),
                Arc::new(UInt64Array::from(vec![rows])),
                Arc::new(UInt64Array::from(vec![partition as u64])),
            ];
            Ok(RecordBatch::try_new(staged_schema(), columns)?)
        });
        let stop_on_drop = StopOnDrop(stop);
        let result = async move {
            let _stop_on_drop = stop_on_drop;
            work.await
                .map_err(|e| exec_datafusion_err!("TFRecord writer task failed: {e}"))?
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            staged_schema(),
            futures::stream::once(result),
        )))
    }
}

/// Writes `stream` as the shard `path`; returns its rows. A failed or stopped write removes what
/// it uploaded.
async fn stage_shard(
    store: Arc<dyn ObjectStore>,
    path: &Path,
    stream: SendableRecordBatchStream,
    options: &TfRecordOptions,
    progress: Option<Arc<Progress>>,
    stop: &Stop,
) -> Result<u64> {
    let mut writer = ShardWriter::new(store, path.clone(), options.gzip);
    match write_stream(stream, &mut writer, options, progress.as_deref(), stop).await {
        Ok(rows) => {
            writer.finish().await?;
            Ok(rows)
        }
        Err(e) => {
            writer.abort().await;
            Err(e)
        }
    }
}

/// Rewrites the heartbeat object `alive` every [`HEARTBEAT`] until `ended` is notified, so that
/// other writes' commits see this write's staging folder as live.
async fn heartbeat(store: &Arc<dyn ObjectStore>, alive: &Path, ended: &Notify) {
    loop {
        // A store that refuses the heartbeat refuses the shard too, which fails the write.
        let _ = store.put(alive, Default::default()).await;
        tokio::select! {
            () = tokio::time::sleep(HEARTBEAT) => {}
            () = ended.notified() => return,
        }
    }
}

/// Asks a writer to stop when its consumer goes away before it ends.
struct StopOnDrop(Arc<Stop>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.request();
    }
}

/// The staged shards in `batch`: (input partition, staged path, rows).
fn staged_rows(batch: &RecordBatch) -> Result<Vec<(u64, String, u64)>> {
    let column = |i: usize| batch.column(i).as_any();
    let (Some(paths), Some(rows), Some(parts)) = (
        column(0).downcast_ref::<StringArray>(),
        column(1).downcast_ref::<UInt64Array>(),
        column(2).downcast_ref::<UInt64Array>(),
    ) else {
        return internal_err!(
            "TfRecordSinkExec: unexpected writer output {:?}",
            batch.schema()
        );
    };
    Ok((0..batch.num_rows())
        .map(|i| (parts.value(i), paths.value(i).to_string(), rows.value(i)))
        .collect())
}

/// The commit of a write's staged shards.
struct Commit {
    store: Arc<dyn ObjectStore>,
    base: Path,
    single_file: bool,
    write: TfRecordWrite,
    progress: Option<Arc<Progress>>,
}

impl Commit {
    /// Runs the writers (`input`), then moves their shards into place; returns the rows
    /// written. Shards moved before a failure are removed again.
    async fn run(&self, input: Arc<dyn ExecutionPlan>, context: Arc<TaskContext>) -> Result<u64> {
        let mut staged = Vec::new();
        for p in 0..input.output_partitioning().partition_count() {
            let batches: Vec<RecordBatch> = input
                .execute(p, Arc::clone(&context))?
                .try_collect()
                .await?;
            for batch in &batches {
                staged.extend(staged_rows(batch)?);
            }
        }
        staged.sort();
        let shards = staged.len();
        let extension = extension(&self.write.options);
        let finals: Vec<Path> = if self.single_file {
            vec![self.base.clone()]
        } else {
            check_no_shards(&self.store, &self.base, &self.write.config.original_url).await?;
            (0..shards)
                .map(|i| {
                    self.base
                        .clone()
                        .join(format!("part-{i:05}-of-{shards:05}.{extension}"))
                })
                .collect()
        };
        if finals.len() != shards {
            return internal_err!(
                "TfRecordSinkExec: {shards} staged shards for {} files",
                finals.len()
            );
        }
        // Commit: every shard is complete, move them into place.
        let mut rows = 0;
        for (i, ((_, from, n), to)) in staged.iter().zip(&finals).enumerate() {
            let from = Path::from(from.as_str());
            if let Err(e) = self.store.rename(&from, to).await {
                for moved in &finals[..i] {
                    let _ = self.store.delete(moved).await;
                }
                return exec_err!("cannot commit TFRecord shard '{to}': {e}");
            }
            rows += n;
            if let Some(p) = &self.progress {
                p.add_file_written();
            }
        }
        Ok(rows)
    }
}

impl ExecutionPlan for TfRecordSinkExec {
    one_input_plan!("TfRecordSinkExec");

    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![Distribution::SinglePartition]
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return internal_err!(
                "TfRecordSinkExec has one output partition, asked for {partition}"
            );
        }
        let store = context
            .runtime_env()
            .object_store(&self.write.config.object_store_url)?;
        let Some(table_path) = self.write.config.table_paths.first() else {
            return plan_err!("COPY to TFRECORD needs a target location");
        };
        let single_file = self
            .write
            .config
            .file_output_mode
            .single_file_output(table_path);
        let commit = Commit {
            store,
            base: table_path.prefix().clone(),
            single_file,
            write: self.write.clone(),
            progress: context.session_config().get_extension::<Progress>(),
        };
        let input = Arc::clone(&self.input);
        let work = async move {
            let written = commit.run(input, context).await;
            let (store, write) = (&commit.store, &commit.write);
            let id = write.id()?;
            match written {
                Ok(rows) => {
                    // This write's staging folder, and any that writes of processes that died
                    // left behind (nothing in them changed for STALE_AFTER).
                    let url = &write.config.object_store_url;
                    let stale_before =
                        quiver_engine::time::now_nanos().saturating_sub(STALE_AFTER.as_nanos());
                    staging::remove_staging(
                        store,
                        &write.dir(),
                        id,
                        Some(stale_before),
                        staging::local_root(url),
                    )
                    .await?;
                    let count: ArrayRef = Arc::new(UInt64Array::from(vec![rows]));
                    Ok(RecordBatch::try_new(count_schema(), vec![count])?)
                }
                Err(e) => {
                    let url = &write.config.object_store_url;
                    if let Err(cleanup) = staging::abort(store, url, &write.dir(), id).await {
                        return exec_err!(
                            "{e} (and cleaning up its staged files failed: {cleanup})"
                        );
                    }
                    Err(e)
                }
            }
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            count_schema(),
            futures::stream::once(work),
        )))
    }
}
