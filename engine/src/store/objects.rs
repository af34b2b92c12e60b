//! Whole-object reads, writes and listings of run folders, registries and logs; every error
//! names the path it happened at.

use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutPayload};

use crate::error::{QuiverError, Result};

fn store_error(path: &Path, e: object_store::Error) -> QuiverError {
    QuiverError::store(path.to_string(), e)
}

/// Writes (or replaces) one object.
pub async fn put_bytes(store: &Arc<dyn ObjectStore>, path: &Path, bytes: Vec<u8>) -> Result<()> {
    store
        .put(path, PutPayload::from(bytes))
        .await
        .map(|_| ())
        .map_err(|e| store_error(path, e))
}

/// Writes one object only if it does not exist yet; `false` when it does.
pub async fn create_bytes(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
    bytes: Vec<u8>,
) -> Result<bool> {
    match store
        .put_opts(path, PutPayload::from(bytes), PutMode::Create.into())
        .await
    {
        Ok(_) => Ok(true),
        Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
        Err(e) => Err(store_error(path, e)),
    }
}

/// Whether one object exists, without reading it.
pub async fn exists(store: &Arc<dyn ObjectStore>, path: &Path) -> Result<bool> {
    match store.head(path).await {
        Ok(_) => Ok(true),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(store_error(path, e)),
    }
}

/// Reads one object; `None` when it does not exist.
pub async fn get_bytes(store: &Arc<dyn ObjectStore>, path: &Path) -> Result<Option<Vec<u8>>> {
    match store.get(path).await {
        Ok(result) => Ok(Some(
            result
                .bytes()
                .await
                .map_err(|e| store_error(path, e))?
                .to_vec(),
        )),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(store_error(path, e)),
    }
}

/// What is directly under a folder, by name.
#[derive(Debug, Default)]
pub struct Listing {
    /// The sub-folders.
    pub dirs: Vec<String>,
    /// The objects (not those in sub-folders).
    pub files: Vec<String>,
}

/// Lists what is directly under `prefix`: its sub-folders and its objects.
pub async fn list(store: &Arc<dyn ObjectStore>, prefix: &Path) -> Result<Listing> {
    let result = store
        .list_with_delimiter(Some(prefix))
        .await
        .map_err(|e| store_error(prefix, e))?;
    Ok(Listing {
        dirs: result
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect(),
        files: result
            .objects
            .iter()
            .filter_map(|o| o.location.filename().map(str::to_string))
            .collect(),
    })
}

/// Every object under `prefix`, in its sub-folders too.
pub async fn list_all(store: &Arc<dyn ObjectStore>, prefix: &Path) -> Result<Vec<ObjectMeta>> {
    store
        .list(Some(prefix))
        .try_collect()
        .await
        .map_err(|e| store_error(prefix, e))
}

#[cfg(test)]
mod tests {
    use object_store::memory::InMemory;

    use super::*;

    #[tokio::test]
    async fn writes_reads_creates_once_and_lists_folders_apart_from_files() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let root = Path::from("runs");
        put_bytes(&store, &root.clone().join("a.json"), b"{}".to_vec())
            .await
            .unwrap();
        assert!(
            create_bytes(&store, &Path::from("runs/one/x"), b"1".to_vec())
                .await
                .unwrap()
        );
        assert!(
            !create_bytes(&store, &Path::from("runs/one/x"), b"2".to_vec())
                .await
                .unwrap()
        );
        let x = get_bytes(&store, &Path::from("runs/one/x")).await.unwrap();
        assert_eq!(x.as_deref(), Some(&b"1"[..]));
        assert_eq!(
            get_bytes(&store, &Path::from("runs/none")).await.unwrap(),
            None
        );
        assert!(exists(&store, &root.clone().join("a.json")).await.unwrap());
        assert!(!exists(&store, &root.clone().join("b.json")).await.unwrap());
        let listing = list(&store, &root).await.unwrap();
        assert_eq!(listing.dirs, vec!["one".to_string()]);
        assert_eq!(listing.files, vec!["a.json".to_string()]);
    }
}
