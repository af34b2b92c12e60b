//! Writing TFRecord shards: [`TfRecordSinkExec`] writes one shard per input partition, in
//! parallel, into a staging folder, and commits them all to `part-IIIII-of-NNNNN.tfrecord[.gz]`
//! only when every partition succeeded. A failed write leaves no shard visible.

use std::fmt;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use datafusion::arrow::array::{ArrayRef, RecordBatch, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{exec_err, internal_err, plan_err};
use datafusion::datasource::physical_plan::FileSinkConfig;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties, SendableRecordBatchStream,
};
use futures::{StreamExt, TryStreamExt};
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use quiver_engine::Progress;
use tokio::io::AsyncWriteExt;

use super::convert::batch_to_examples;
use super::format::TfRecordOptions;
use super::record::write_record;

/// Bytes buffered before they are handed to the store.
const FLUSH_BYTES: usize = 8 << 20;

/// Writes its input as TFRecord shards and returns one row: the number of rows written.
#[derive(Debug)]
pub struct TfRecordSinkExec {
    input: Arc<dyn ExecutionPlan>,
    config: FileSinkConfig,
    options: TfRecordOptions,
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
    /// A sink writing `input` to the location in `config`.
    pub fn new(
        input: Arc<dyn ExecutionPlan>,
        config: FileSinkConfig,
        options: TfRecordOptions,
    ) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(count_schema()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Self {
            input,
            config,
            options,
            properties: Arc::new(properties),
        }
    }

    fn extension(&self) -> &'static str {
        if self.options.gzip {
            "tfrecord.gz"
        } else {
            "tfrecord"
        }
    }
}

impl DisplayAs for TfRecordSinkExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "TfRecordSinkExec: url={}, gzip={}, image_format={:?}",
            self.config.original_url, self.options.gzip, self.options.image_format
        )
    }
}

/// A unique name for a staging folder.
fn staging_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "{nanos:x}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
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

/// Writes the batches of `stream` into `writer`; returns the rows written.
/// Stops with an error once `cancel` is set (another shard failed).
async fn write_stream(
    mut stream: SendableRecordBatchStream,
    writer: &mut ShardWriter,
    options: &TfRecordOptions,
    progress: Option<&Progress>,
    cancel: &AtomicBool,
) -> Result<u64> {
    let mut rows = 0;
    while let Some(batch) = stream.try_next().await? {
        if cancel.load(Ordering::Relaxed) {
            return exec_err!("TFRecord write cancelled because another shard failed");
        }
        let image_format = options.image_format;
        let records = tokio::task::spawn_blocking(move || batch_to_examples(&batch, image_format))
            .await
            .map_err(|e| {
                DataFusionError::Execution(format!("TFRecord encoder task failed: {e}"))
            })??;
        let before = writer.bytes + writer.buffer.len() as u64;
        writer.write_records(&records).await?;
        rows += records.len() as u64;
        if let Some(p) = progress {
            let after = writer.bytes + writer.buffer.len() as u64;
            p.add_written(records.len() as u64, after.saturating_sub(before));
        }
    }
    Ok(rows)
}

/// Removes the staging objects (and, on a local disk, the folders they leave).
async fn remove_staging(
    store: &Arc<dyn ObjectStore>,
    staging: &Path,
    local_root: Option<&std::path::Path>,
) {
    let staged: Vec<_> = store
        .list(Some(staging))
        .map_ok(|m| m.location)
        .collect()
        .await;
    for path in staged.into_iter().flatten() {
        let _ = store.delete(&path).await;
    }
    if let Some(root) = local_root {
        let dir = root.join(staging.as_ref());
        let _ = std::fs::remove_dir_all(&dir);
        if let Some(parent) = dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

impl ExecutionPlan for TfRecordSinkExec {
    fn name(&self) -> &'static str {
        "TfRecordSinkExec"
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
            [input] => Ok(Arc::new(Self::new(
                Arc::clone(input),
                self.config.clone(),
                self.options.clone(),
            ))),
            _ => internal_err!("TfRecordSinkExec takes one child"),
        }
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
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
            .object_store(&self.config.object_store_url)?;
        let Some(table_path) = self.config.table_paths.first() else {
            return plan_err!("COPY to TFRECORD needs a target location");
        };
        let base = table_path.prefix().clone();
        let single_file = self.config.file_output_mode.single_file_output(table_path);
        let shards = self.input.output_partitioning().partition_count().max(1);
        let input = Arc::clone(&self.input);
        let options = self.options.clone();
        let extension = self.extension();
        let url = self.config.original_url.clone();
        let local_root = (table_path.scheme() == "file").then(|| std::path::PathBuf::from("/"));
        let progress = context.session_config().get_extension::<Progress>();

        let work = async move {
            // Final names and their staging twins.
            let (dir, finals): (Path, Vec<Path>) = if single_file {
                let parent: Path = base
                    .parts()
                    .take(base.parts().count().saturating_sub(1))
                    .collect();
                (parent, vec![base.clone()])
            } else {
                let names = (0..shards)
                    .map(|i| {
                        base.clone()
                            .join(format!("part-{i:05}-of-{shards:05}.{extension}"))
                    })
                    .collect();
                (base.clone(), names)
            };
            if !single_file {
                let existing = store
                    .list_with_delimiter(Some(&dir))
                    .await
                    .map(|l| l.objects)
                    .unwrap_or_default();
                if let Some(shard) = existing.iter().find(|m| {
                    m.location
                        .filename()
                        .is_some_and(|f| f.starts_with("part-"))
                }) {
                    return plan_err!(
                        "'{url}' already holds TFRecord shards ({}); write to a new location so that no committed data is overwritten",
                        shard.location
                    );
                }
            }
            let staging = dir.clone().join("_temporary").join(staging_id());
            let staged: Vec<Path> = finals
                .iter()
                .map(|f| staging.clone().join(f.filename().unwrap_or("part")))
                .collect();

            let result: Result<u64> = if single_file {
                let mut writer =
                    ShardWriter::new(Arc::clone(&store), staged[0].clone(), options.gzip);
                let mut rows = 0;
                let mut outcome = Ok(());
                for p in 0..input.output_partitioning().partition_count() {
                    match input.execute(p, Arc::clone(&context)) {
                        Ok(stream) => {
                            match write_stream(
                                stream,
                                &mut writer,
                                &options,
                                progress.as_deref(),
                                &AtomicBool::new(false),
                            )
                            .await
                            {
                                Ok(n) => rows += n,
                                Err(e) => {
                                    outcome = Err(e);
                                    break;
                                }
                            }
                        }
                        Err(e) => {
                            outcome = Err(e);
                            break;
                        }
                    }
                }
                match outcome {
                    Ok(()) => writer.finish().await.map(|_| rows),
                    Err(e) => {
                        writer.abort().await;
                        Err(e)
                    }
                }
            } else {
                // Failed shards stop the others through `cancel` rather than by
                // aborting tasks: an aborted task could leave a blocking file write
                // running that recreates a staged file after the clean-up.
                let cancel = Arc::new(AtomicBool::new(false));
                let mut tasks = tokio::task::JoinSet::new();
                for (p, path) in staged.iter().enumerate() {
                    let stream = input.execute(p, Arc::clone(&context));
                    let mut writer =
                        ShardWriter::new(Arc::clone(&store), path.clone(), options.gzip);
                    let options = options.clone();
                    let progress = progress.clone();
                    let cancel = Arc::clone(&cancel);
                    tasks.spawn(async move {
                        let written = match stream {
                            Ok(stream) => {
                                write_stream(
                                    stream,
                                    &mut writer,
                                    &options,
                                    progress.as_deref(),
                                    &cancel,
                                )
                                .await
                            }
                            Err(e) => Err(e),
                        };
                        match written {
                            Ok(rows) => writer.finish().await.map(|_| rows),
                            Err(e) => {
                                writer.abort().await;
                                Err(e)
                            }
                        }
                    });
                }
                let mut rows = 0;
                let mut first_error = None;
                while let Some(joined) = tasks.join_next().await {
                    match joined {
                        Ok(Ok(n)) => rows += n,
                        Ok(Err(e)) => {
                            if first_error.is_none() {
                                first_error = Some(e);
                                cancel.store(true, Ordering::Relaxed);
                            }
                        }
                        Err(e) => {
                            cancel.store(true, Ordering::Relaxed);
                            first_error.get_or_insert(DataFusionError::Execution(format!(
                                "TFRecord writer task failed: {e}"
                            )));
                        }
                    }
                }
                first_error.map_or(Ok(rows), Err)
            };

            let rows = match result {
                Ok(rows) => rows,
                Err(e) => {
                    remove_staging(&store, &staging, local_root.as_deref()).await;
                    return Err(e);
                }
            };
            // Commit: every shard is complete, move them into place.
            for (from, to) in staged.iter().zip(&finals) {
                if let Err(e) = store.rename(from, to).await {
                    remove_staging(&store, &staging, local_root.as_deref()).await;
                    return Err(DataFusionError::Execution(format!(
                        "cannot commit TFRecord shard '{to}': {e}"
                    )));
                }
                if let Some(p) = &progress {
                    p.add_file_written();
                }
            }
            remove_staging(&store, &staging, local_root.as_deref()).await;
            let count: ArrayRef = Arc::new(UInt64Array::from(vec![rows]));
            Ok(RecordBatch::try_new(count_schema(), vec![count])?)
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            count_schema(),
            futures::stream::once(work),
        )))
    }
}
