//! The staging folders of TFRecord writes and their clean-up. Each write stages its shards in
//! `<destination>/_temporary/<write id>/`, where the id starts with the time the write was planned
//! and is chosen by the client that runs the statement (so that it can abort exactly its own
//! write); readers skip `_temporary`. A write that fails or is cancelled is aborted: its writers
//! (in this process, see [`abort_local`]; on a cluster, on every executor) stop at their next
//! batch, remove what they staged and are waited for; only then is its staging folder removed
//! ([`remove_staging`]), so the destination holds exactly what it held before. Another write's
//! folder is never touched while that write may run: a running writer refreshes a heartbeat
//! object in its folder every [`HEARTBEAT`], and a commit removes, besides its own folder, only
//! folders in which nothing changed for [`STALE_AFTER`] (those a killed process left behind).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use datafusion::common::{exec_datafusion_err, exec_err};
use datafusion::error::Result;
use datafusion::execution::object_store::ObjectStoreUrl;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use quiver_engine::time::now_nanos;
use tokio::sync::Notify;

/// The folder under a destination that holds staged shards.
pub const STAGING_DIR: &str = "_temporary";

/// How often a running writer rewrites its heartbeat object (`<shard>.alive`).
pub const HEARTBEAT: Duration = Duration::from_secs(60);

/// A staging folder in which no object changed for this long belongs to a write whose process
/// died; a commit to the same destination removes it.
pub const STALE_AFTER: Duration = Duration::from_secs(600);

/// How long an abort waits for its writers to stop; a writer still running after it may still
/// upload, so its folder is then left to it (it removes its own files when it stops).
pub const STOP_WAIT: Duration = Duration::from_secs(120);

/// Whether `path` lies in a staging folder, which readers skip.
pub fn is_staged(path: &str) -> bool {
    path.split('/').any(|part| part == STAGING_DIR)
}

/// A unique name for a staging folder or file: the time, the process and a counter.
pub fn staging_id() -> String {
    quiver_engine::time::unique_id()
}

/// Whether `name` has the shape [`staging_id`] gives: a hex time, a process and a counter.
pub fn is_staging_id(name: &str) -> bool {
    planned_at(name).is_some()
        && name.split('-').count() == 3
        && name.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

/// When the write that stages in the folder (or file) named `name` was planned.
pub fn planned_at(name: &str) -> Option<u128> {
    u128::from_str_radix(name.split('-').next()?, 16).ok()
}

/// The key of a destination folder in the registry of live writers.
pub fn destination_key(store: &ObjectStoreUrl, dir: &Path) -> String {
    format!("{}{dir}", store.as_str())
}

struct Live {
    id: u64,
    write: String,
    stop: Arc<Stop>,
}

#[derive(Default)]
struct Destination {
    /// The writes that were aborted: their writers are refused.
    aborted: HashSet<String>,
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
            if dest.live.is_empty() && dest.aborted.is_empty() {
                live.remove(&self.key);
            }
        }
        drop(live);
        ENDED.notify_waiters();
    }
}

/// Registers a writer of the write `write` (its staging folder's name) into `key`'s
/// destination; refused when that write was aborted already.
pub fn register(key: &str, write: &str) -> Result<Registration> {
    static IDS: AtomicU64 = AtomicU64::new(0);
    let mut live = LIVE.lock().expect("staging registry");
    let dest = live.entry(key.to_string()).or_default();
    if dest.aborted.contains(write) {
        return exec_err!("the TFRecord write to '{key}' was aborted");
    }
    let id = IDS.fetch_add(1, Ordering::Relaxed);
    let stop = Arc::new(Stop::default());
    dest.live.push(Live {
        id,
        write: write.to_string(),
        stop: Arc::clone(&stop),
    });
    Ok(Registration {
        key: key.to_string(),
        id,
        stop,
    })
}

/// Stops this process's writers of the write `write` to `key`, refuses its writers from now
/// on, and waits up to `wait` until they have ended; returns how many were stopped, or an error
/// when some still run (they may still upload, so nothing of theirs may be removed yet).
pub async fn abort_local(key: &str, write: &str, wait: Duration) -> Result<usize> {
    let stopping: Vec<u64> = {
        let mut live = LIVE.lock().expect("staging registry");
        let dest = live.entry(key.to_string()).or_default();
        // Aborted writes are remembered for a day: long enough to refuse their late writers.
        let day_ago = now_nanos().saturating_sub(86_400 * 1_000_000_000);
        dest.aborted
            .retain(|w| planned_at(w).is_none_or(|t| t >= day_ago));
        dest.aborted.insert(write.to_string());
        dest.live
            .iter()
            .filter(|l| l.write == write)
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
    let waited = tokio::time::timeout(wait, async {
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
        return exec_err!(
            "{} TFRecord writer(s) of '{key}' did not stop within {} s: their staging folder \
             {STAGING_DIR}/{write}/ is left to them (a writer removes its files when it stops)",
            stopping.len(),
            wait.as_secs()
        );
    }
    Ok(stopping.len())
}

/// Removes from `dir` (a destination) the staging folder of the write `write`, and, when
/// `stale_before` (ns since the epoch) is given, every staging folder in which nothing changed
/// since then; on a local disk also the emptied folders. Returns how many objects were removed.
pub async fn remove_staging(
    store: &Arc<dyn ObjectStore>,
    dir: &Path,
    write: &str,
    stale_before: Option<u128>,
    local_root: Option<&std::path::Path>,
) -> Result<usize> {
    let staging = dir.clone().join(STAGING_DIR);
    let staged: Vec<(Path, u128)> = store
        .list(Some(&staging))
        .map_ok(|m| {
            let modified = m.last_modified.timestamp_nanos_opt().unwrap_or(i64::MAX);
            (m.location, modified.max(0) as u128)
        })
        .try_collect()
        .await
        .map_err(|e| exec_datafusion_err!("cannot list '{staging}': {e}"))?;
    let prefix = staging.parts().count();
    let folder = |path: &Path| path.parts().nth(prefix).map(|p| p.as_ref().to_string());
    let mut newest: HashMap<String, u128> = HashMap::new();
    for (path, modified) in &staged {
        if let Some(f) = folder(path) {
            let t = newest.entry(f).or_default();
            *t = (*t).max(*modified);
        }
    }
    // Its own folder even when empty: on a local disk the folder itself is left otherwise.
    let doomed_folders: HashSet<String> = newest
        .into_iter()
        .filter(|(f, t)| f == write || stale_before.is_some_and(|before| *t < before))
        .map(|(f, _)| f)
        .chain([write.to_string()])
        .collect();
    let doomed: Vec<Path> = staged
        .into_iter()
        .map(|(path, _)| path)
        .filter(|path| folder(path).is_some_and(|f| doomed_folders.contains(&f)))
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
        remove_empty_local_folders(&root.join(staging.as_ref()), &doomed_folders);
    }
    Ok(removed)
}

/// On a local disk, removes the staging `folders` (emptied by [`remove_staging`]), and
/// `_temporary` itself once it is empty.
fn remove_empty_local_folders(staging: &std::path::Path, folders: &HashSet<String>) {
    for folder in folders {
        let _ = std::fs::remove_dir_all(staging.join(folder));
    }
    let _ = std::fs::remove_dir(staging);
}

/// Aborts the write `write` to `dir` in `store` in this process, then removes its staging
/// folder; the whole clean-up of a failed write on the embedded engine.
pub async fn abort(
    store: &Arc<dyn ObjectStore>,
    store_url: &ObjectStoreUrl,
    dir: &Path,
    write: &str,
) -> Result<usize> {
    abort_local(&destination_key(store_url, dir), write, STOP_WAIT).await?;
    remove_staging(store, dir, write, None, local_root(store_url)).await
}

/// The root that a `file://` store's paths hang from, for removing emptied folders.
pub fn local_root(store_url: &ObjectStoreUrl) -> Option<&'static std::path::Path> {
    store_url
        .as_str()
        .starts_with("file://")
        .then(|| std::path::Path::new("/"))
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
        assert!(is_staging_id(&a) && !is_staging_id("1-2") && !is_staging_id("1-2-../x"));
        assert!(is_staged("out/_temporary/1-2-3/00000.tfrecord"));
        assert!(!is_staged("out/my_temporary/part-00000.tfrecord"));
    }

    #[tokio::test]
    async fn an_abort_stops_its_own_writers_refuses_new_ones_and_waits() {
        let key = "memory:///abort-test/out";
        let mine = register(key, "a-1-0").unwrap();
        let other = register(key, "b-1-0").unwrap();
        let stop = Arc::clone(&mine.stop);
        let ended = Arc::new(AtomicBool::new(false));
        let writer_ended = Arc::clone(&ended);
        tokio::spawn(async move {
            stop.wait().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            writer_ended.store(true, Ordering::Release);
            drop(mine);
        });
        assert_eq!(abort_local(key, "a-1-0", STOP_WAIT).await.unwrap(), 1);
        // The stopped writer had ended before the abort returned; the other write runs on.
        assert!(ended.load(Ordering::Acquire));
        assert!(!other.stop.requested());
        assert!(register(key, "a-1-0").is_err());
        assert!(register(key, "c-1-0").is_ok());
    }

    #[tokio::test]
    async fn an_abort_whose_writer_does_not_stop_fails_and_names_the_folder() {
        let key = "memory:///abort-test/stuck";
        let stuck = register(key, "d-1-0").unwrap();
        let e = abort_local(key, "d-1-0", Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("_temporary/d-1-0/ is left"), "{e}");
        assert!(stuck.stop.requested());
    }

    async fn put_all(store: &Arc<dyn ObjectStore>, names: &[&str]) {
        for name in names {
            store
                .put(&Path::from(format!("out/{name}")), vec![1u8].into())
                .await
                .unwrap();
        }
    }

    async fn left(store: &Arc<dyn ObjectStore>) -> Vec<String> {
        let mut left: Vec<String> = store
            .list(Some(&Path::from("out")))
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap();
        left.sort();
        left
    }

    #[tokio::test]
    async fn remove_staging_removes_its_own_folder_and_stale_ones_only() {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let dir = Path::from("out");
        put_all(
            &store,
            &[
                "part-00000-of-00001.tfrecord",
                "_temporary/a-1-0/00000.tfrecord",
                "_temporary/a-1-0/00001.tfrecord",
                "_temporary/b-1-0/00000.tfrecord",
                "_temporary/c-1-0/00001.tfrecord.alive",
            ],
        )
        .await;
        // An abort, or a commit while the other writes are fresh: only its own folder goes.
        let old = now_nanos() - STALE_AFTER.as_nanos();
        assert_eq!(
            remove_staging(&store, &dir, "a-1-0", Some(old), None)
                .await
                .unwrap(),
            2
        );
        assert_eq!(
            left(&store).await,
            vec![
                "out/_temporary/b-1-0/00000.tfrecord",
                "out/_temporary/c-1-0/00001.tfrecord.alive",
                "out/part-00000-of-00001.tfrecord"
            ]
        );
        // b's objects are older than the cut-off: its process died; c's heartbeat is newer.
        let between = now_nanos();
        tokio::time::sleep(Duration::from_millis(5)).await;
        put_all(&store, &["_temporary/c-1-0/00001.tfrecord.alive"]).await;
        assert_eq!(
            remove_staging(&store, &dir, "e-1-0", Some(between), None)
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            left(&store).await,
            vec![
                "out/_temporary/c-1-0/00001.tfrecord.alive",
                "out/part-00000-of-00001.tfrecord"
            ]
        );
    }
}
