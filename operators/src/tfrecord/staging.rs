//! The staging folders of TFRecord writes and their clean-up. Each write stages its shards in
//! `<destination>/_temporary/<id>/`, where the id starts with the time the write was planned;
//! readers skip `_temporary`. A write that fails or is cancelled is aborted: its writers (in
//! this process, see [`abort_local`]; on a cluster, on every executor) stop at their next batch,
//! remove what they staged and are waited for, then the staging folders of every write to the
//! destination planned up to then are removed ([`remove_staging`]), so the destination holds
//! exactly what it held before. A commit also removes the staging folders that older writes
//! left behind when their process was killed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use datafusion::common::{exec_datafusion_err, exec_err};
use datafusion::error::Result;
use datafusion::execution::object_store::ObjectStoreUrl;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::sync::Notify;

/// The folder under a destination that holds staged shards.
pub const STAGING_DIR: &str = "_temporary";

/// Whether `path` lies in a staging folder, which readers skip.
pub fn is_staged(path: &str) -> bool {
    path.split('/').any(|part| part == STAGING_DIR)
}

/// Nanoseconds since the Unix epoch, now.
pub fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// A unique name for a staging folder or file: the time, the process and a counter.
pub fn staging_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{:x}-{}-{}",
        now_nanos(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// When the write that stages in the folder (or file) named `name` was planned.
pub fn planned_at(name: &str) -> Option<u128> {
    u128::from_str_radix(name.split('-').next()?, 16).ok()
}

/// The key of a destination folder in the registry of live writers.
pub fn destination_key(store: &ObjectStoreUrl, dir: &Path) -> String {
    format!("{}{dir}", store.as_str())
}

/// How long an abort waits for writers to stop before it removes the staging folders anyway.
const STOP_WAIT: Duration = Duration::from_secs(120);

struct Live {
    id: u64,
    planned: u128,
    stop: Arc<Stop>,
}

#[derive(Default)]
struct Destination {
    /// Writes planned at or before this time are aborted.
    aborted_up_to: u128,
    live: Vec<Live>,
}

/// The writers running in this process, by destination.
static LIVE: LazyLock<Mutex<HashMap<String, Destination>>> = LazyLock::new(Default::default);
/// Notified whenever a writer ends.
static ENDED: Notify = Notify::const_new();

/// A request to stop, seen by a writer between batches.
#[derive(Default)]
pub struct Stop {
    requested: AtomicBool,
    notify: Notify,
}

impl Stop {
    /// Asks the writer to stop.
    pub fn request(&self) {
        self.requested.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// Whether a stop was asked for.
    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    /// Resolves once a stop is asked for.
    pub async fn wait(&self) {
        loop {
            // Created before the check: notify_waiters reaches it from here on.
            let notified = self.notify.notified();
            if self.requested() {
                return;
            }
            notified.await;
        }
    }
}

/// A writer in the registry, from its start to its end (when this is dropped).
pub struct Registration {
    key: String,
    id: u64,
    /// Set when the write is aborted or the writer's consumer went away.
    pub stop: Arc<Stop>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut live = LIVE.lock().expect("staging registry");
        if let Some(dest) = live.get_mut(&self.key) {
            dest.live.retain(|l| l.id != self.id);
            if dest.live.is_empty() && dest.aborted_up_to == 0 {
                live.remove(&self.key);
            }
        }
        drop(live);
        ENDED.notify_waiters();
    }
}

/// Registers a writer of the write planned at `planned` into `key`'s destination; refused when
/// that write was aborted already.
pub fn register(key: &str, planned: u128) -> Result<Registration> {
    static IDS: AtomicU64 = AtomicU64::new(0);
    let mut live = LIVE.lock().expect("staging registry");
    let dest = live.entry(key.to_string()).or_default();
    if planned <= dest.aborted_up_to {
        return exec_err!("the TFRecord write to '{key}' was aborted");
    }
    let id = IDS.fetch_add(1, Ordering::Relaxed);
    let stop = Arc::new(Stop::default());
    dest.live.push(Live {
        id,
        planned,
        stop: Arc::clone(&stop),
    });
    Ok(Registration {
        key: key.to_string(),
        id,
        stop,
    })
}

/// Stops this process's writers of writes to `key` planned up to `up_to`, refuses such writers
/// from now on, and waits until they have ended; returns how many were stopped.
pub async fn abort_local(key: &str, up_to: u128) -> usize {
    let stopping: Vec<u64> = {
        let mut live = LIVE.lock().expect("staging registry");
        let dest = live.entry(key.to_string()).or_default();
        dest.aborted_up_to = dest.aborted_up_to.max(up_to);
        dest.live
            .iter()
            .filter(|l| l.planned <= up_to)
            .map(|l| {
                l.stop.request();
                l.id
            })
            .collect()
    };
    let running = || {
        let live = LIVE.lock().expect("staging registry");
        live.get(key)
            .is_some_and(|d| d.live.iter().any(|l| stopping.contains(&l.id)))
    };
    let waited = tokio::time::timeout(STOP_WAIT, async {
        loop {
            let ended = ENDED.notified();
            if !running() {
                return;
            }
            ended.await;
        }
    })
    .await;
    if waited.is_err() {
        eprintln!(
            "warning: {} TFRecord writer(s) of '{key}' did not stop within {}s",
            stopping.len(),
            STOP_WAIT.as_secs()
        );
    }
    stopping.len()
}

/// Removes the staging folders under `dir` (a destination) of writes planned up to `up_to`,
/// and on a local disk the folders they leave; returns how many objects were removed.
pub async fn remove_staging(
    store: &Arc<dyn ObjectStore>,
    dir: &Path,
    up_to: u128,
    local_root: Option<&std::path::Path>,
) -> Result<usize> {
    let staging = dir.clone().join(STAGING_DIR);
    let staged: Vec<Path> = store
        .list(Some(&staging))
        .map_ok(|m| m.location)
        .try_collect()
        .await
        .map_err(|e| exec_datafusion_err!("cannot list '{staging}': {e}"))?;
    let prefix = staging.parts().count();
    let doomed: Vec<Path> = staged
        .into_iter()
        .filter(|path| {
            path.parts()
                .nth(prefix)
                .and_then(|folder| planned_at(folder.as_ref()))
                .is_some_and(|t| t <= up_to)
        })
        .collect();
    let removed = doomed.len();
    let mut deletes = futures::stream::iter(doomed)
        .map(|path| async move {
            match store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(exec_datafusion_err!(
                    "cannot remove the staged file '{path}': {e}"
                )),
            }
        })
        .buffer_unordered(16);
    while let Some(done) = deletes.next().await {
        done?;
    }
    if let Some(root) = local_root {
        remove_empty_local_folders(&root.join(staging.as_ref()), up_to);
    }
    Ok(removed)
}

/// On a local disk, removes the staging folders (emptied by [`remove_staging`]) of writes
/// planned up to `up_to`, and `_temporary` itself once it is empty.
fn remove_empty_local_folders(staging: &std::path::Path, up_to: u128) {
    if let Ok(entries) = std::fs::read_dir(staging) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            if planned_at(&name.to_string_lossy()).is_some_and(|t| t <= up_to) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(staging);
}

/// Aborts the writes to `dir` in `store` planned up to `up_to` that run in this process, then
/// removes their staging folders; the whole clean-up of a failed write on the embedded engine.
pub async fn abort(
    store: &Arc<dyn ObjectStore>,
    store_url: &ObjectStoreUrl,
    dir: &Path,
    up_to: u128,
) -> Result<usize> {
    abort_local(&destination_key(store_url, dir), up_to).await;
    let local_root = store_url
        .as_str()
        .starts_with("file://")
        .then(|| std::path::PathBuf::from("/"));
    remove_staging(store, dir, up_to, local_root.as_deref()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_ids_carry_their_time_and_are_unique() {
        let before = now_nanos();
        let (a, b) = (staging_id(), staging_id());
        assert_ne!(a, b);
        let t = planned_at(&a).unwrap();
        assert!(before <= t && t <= now_nanos());
        assert_eq!(planned_at("x-1-2"), None);
        assert!(is_staged("out/_temporary/1-2-3/00000.tfrecord"));
        assert!(!is_staged("out/my_temporary/part-00000.tfrecord"));
    }

    #[tokio::test]
    async fn an_abort_stops_older_writers_refuses_new_ones_and_waits() {
        let key = "memory:///abort-test/out";
        let old = register(key, 10).unwrap();
        let newer = register(key, 30).unwrap();
        let stop = Arc::clone(&old.stop);
        let ended = Arc::new(AtomicBool::new(false));
        let writer_ended = Arc::clone(&ended);
        tokio::spawn(async move {
            stop.wait().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            writer_ended.store(true, Ordering::Release);
            drop(old);
        });
        assert_eq!(abort_local(key, 20).await, 1);
        // The stopped writer had ended before the abort returned.
        assert!(ended.load(Ordering::Acquire));
        assert!(!newer.stop.requested());
        assert!(register(key, 15).is_err());
        assert!(register(key, 40).is_ok());
    }

    #[tokio::test]
    async fn remove_staging_keeps_newer_writes_and_the_shards() {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let dir = Path::from("out");
        for name in [
            "part-00000-of-00001.tfrecord",
            "_temporary/a-1-0/00000.tfrecord",
            "_temporary/b-1-0/00000.tfrecord",
            "_temporary/c-1-0/00001.tfrecord",
        ] {
            object_store::ObjectStoreExt::put(
                store.as_ref(),
                &Path::from(format!("out/{name}")),
                vec![1u8].into(),
            )
            .await
            .unwrap();
        }
        assert_eq!(remove_staging(&store, &dir, 0xb, None).await.unwrap(), 2);
        let left: Vec<String> = store
            .list(Some(&dir))
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap();
        let mut left = left;
        left.sort();
        assert_eq!(
            left,
            vec![
                "out/_temporary/c-1-0/00001.tfrecord",
                "out/part-00000-of-00001.tfrecord"
            ]
        );
    }
}
