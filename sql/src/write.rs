//! Running a statement's plan to its end. A `COPY ... STORED AS TFRECORD` that fails or is
//! cancelled is aborted before its error returns: its writers stop (in this process on the
//! embedded engine, on every executor of a cluster) and everything it staged is removed, so the
//! destination holds what it held before.

use std::future::Future;

use datafusion::arrow::array::RecordBatch;
use datafusion::common::exec_datafusion_err;
use datafusion::dataframe::DataFrame;
use datafusion::datasource::file_format::file_type_to_format;
use datafusion::execution::SessionState;
use datafusion::logical_expr::LogicalPlan;
use quiver_engine::{QuiverError, Result, resolve_location};
use quiver_operators::TfRecordFormatFactory;
use quiver_operators::tfrecord::staging;

/// The destination URL and write id of a `COPY ... STORED AS TFRECORD` plan, whose write id
/// (its staging folder's name) is chosen here, so that an abort removes that write only.
fn tfrecord_write(plan: &mut LogicalPlan) -> Option<(String, String)> {
    let LogicalPlan::Copy(copy) = plan else {
        return None;
    };
    let format = file_type_to_format(&copy.file_type).ok()?;
    format.downcast_ref::<TfRecordFormatFactory>()?;
    let id = copy
        .options
        .entry("format.write_id".to_string())
        .or_insert_with(staging::staging_id)
        .clone();
    Some((copy.output_url.clone(), id))
}

/// Runs `frame` to the end, or until `cancel` resolves (then the statement fails as
/// cancelled). A TFRECORD write that fails or is cancelled is aborted first.
pub async fn collect_until(
    frame: DataFrame,
    cancel: impl Future<Output = ()>,
) -> Result<Vec<RecordBatch>> {
    let (state, mut plan) = frame.into_parts();
    let write = tfrecord_write(&mut plan);
    let frame = DataFrame::new(state.clone(), plan);
    let result = tokio::select! {
        batches = frame.collect() => batches.map_err(QuiverError::from),
        () = cancel => Err(QuiverError::Cancelled("the statement was cancelled".into())),
    };
    match (result, write) {
        (Err(e), Some((destination, id))) => match abort_write(&state, &destination, &id).await {
            Ok(()) => Err(e),
            Err(cleanup) => Err(QuiverError::DataFusion(exec_datafusion_err!(
                "{e}\n  and removing what the write to '{destination}' staged failed: \
                     {cleanup}"
            ))),
        },
        (result, _) => result,
    }
}

/// Runs `frame` to the end (see [`collect_until`]).
pub async fn collect(frame: DataFrame) -> Result<Vec<RecordBatch>> {
    collect_until(frame, std::future::pending()).await
}

/// The folder a TFRecord write to `url` stages in: the URL itself, or for a single file (a
/// name with an extension) its parent.
fn destination_folder(
    url: &quiver_engine::url::Url,
) -> Result<quiver_engine::object_store::path::Path> {
    let path = quiver_engine::store::object_path(url)?;
    let single_file = !url.path().ends_with('/')
        && path
            .filename()
            .is_some_and(|name| name.contains('.') && !name.starts_with('.'));
    Ok(if single_file {
        let parts: Vec<_> = path.parts().collect();
        parts[..parts.len().saturating_sub(1)]
            .iter()
            .cloned()
            .collect()
    } else {
        path
    })
}

/// Aborts the TFRecord write `id` to `destination`: on a cluster through the driver, which has
/// every executor stop its writers first; here by stopping this process's writers and removing
/// the write's staging folder.
pub async fn abort_write(state: &SessionState, destination: &str, id: &str) -> Result<()> {
    if let Some(client) = state
        .config()
        .get_extension::<crate::cluster::ClusterClient>()
    {
        return client.abort_writes(destination, id).await.map(|_| ());
    }
    let (store_url, dir) = write_target(destination)?;
    let store = state.runtime_env().object_store(&store_url)?;
    staging::abort(&store, &store_url, &dir, id).await?;
    Ok(())
}

/// Removes the staging folder of the write `id` to `destination` once its writers have stopped
/// everywhere (the driver's part of aborting a cluster's write); returns the objects removed.
pub async fn remove_staged(state: &SessionState, destination: &str, id: &str) -> Result<usize> {
    let (store_url, dir) = write_target(destination)?;
    let store = state.runtime_env().object_store(&store_url)?;
    Ok(staging::remove_staging(&store, &dir, id, None, staging::local_root(&store_url)).await?)
}

/// Stops this process's writers of the write `id` to `destination`, waiting for them (an
/// executor's part of aborting a cluster's write); returns how many it stopped, or an error
/// when some did not stop in time.
pub async fn stop_writers(destination: &str, id: &str) -> Result<usize> {
    let (store_url, dir) = write_target(destination)?;
    let key = staging::destination_key(&store_url, &dir);
    Ok(staging::abort_local(&key, id, staging::STOP_WAIT).await?)
}

/// The store and the folder a write to `destination` stages under.
fn write_target(
    destination: &str,
) -> Result<(
    datafusion::execution::object_store::ObjectStoreUrl,
    quiver_engine::object_store::path::Path,
)> {
    let url = resolve_location(destination)?;
    Ok((
        quiver_engine::store::store_url(&url),
        destination_folder(&url)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;
    use quiver_engine::object_store::ObjectStore;

    async fn listing(store: &dyn ObjectStore) -> Vec<String> {
        let mut all: Vec<String> = store
            .list(None)
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap();
        all.sort();
        all
    }

    /// memory:// lives in one process: 20 failed COPYs (a bad image among good ones, four
    /// writers) leave the store as it was, then a good COPY leaves only its shards.
    #[tokio::test]
    async fn failed_copies_leave_a_memory_store_as_it_was() {
        let session = crate::session(quiver_engine::SessionOptions {
            target_partitions: Some(4),
            ..Default::default()
        })
        .unwrap();
        let data = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/");
        let url = quiver_engine::url::Url::parse("memory://m/out/").unwrap();
        let store = session.store_for(&url).unwrap();
        quiver_engine::object_store::ObjectStoreExt::put(
            store.as_ref(),
            &"notes.txt".into(),
            b"not ours".to_vec().into(),
        )
        .await
        .unwrap();
        let before = listing(store.as_ref()).await;
        let copy = |folder: &str| {
            format!(
                "COPY (SELECT label, image_decode(content) AS image FROM read_images('{data}{folder}')) \
                 TO 'memory://m/out/' STORED AS TFRECORD"
            )
        };
        for _ in 0..20 {
            let frame = session.sql(&copy("")).await.unwrap();
            let e = collect(frame).await.unwrap_err().to_string();
            assert!(e.contains("image_decode failed on 'file://"), "{e}");
            assert_eq!(listing(store.as_ref()).await, before);
        }
        let frame = session.sql(&copy("photos/")).await.unwrap();
        collect(frame).await.unwrap();
        let after = listing(store.as_ref()).await;
        assert!(
            after
                .iter()
                .all(|f| f == "notes.txt" || f.starts_with("out/part-")),
            "{after:?}"
        );
        assert_eq!(after.len(), 1 + 4, "{after:?}");
    }

    #[test]
    fn single_files_stage_in_their_folder() {
        let folder = |s: &str| {
            destination_folder(&quiver_engine::url::Url::parse(s).unwrap())
                .unwrap()
                .to_string()
        };
        assert_eq!(folder("file:///tmp/out/"), "tmp/out");
        assert_eq!(folder("file:///tmp/out"), "tmp/out");
        assert_eq!(folder("file:///tmp/out/data.tfrecord"), "tmp/out");
        assert_eq!(folder("s3://bucket/a/b.tfrecord.gz"), "a");
        assert_eq!(folder("memory://m/x/"), "x");
    }
}
