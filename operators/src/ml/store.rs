//! Small object-store helpers for run folders and the model registry.

use std::sync::Arc;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutPayload};

use super::MlError;

/// Seconds since the Unix epoch.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A folder (`models/`, `experiments/`) of the session's default store: its store, its path
/// in that store and its URL.
pub fn default_store_folder(
    session: &quiver_engine::Session,
    folder: &str,
) -> Result<(Arc<dyn ObjectStore>, Path, url::Url), MlError> {
    let url = session.default_store().join(folder).map_err(|e| {
        MlError::Option(format!(
            "bad default store {}: {e}",
            session.default_store()
        ))
    })?;
    let store = session.store_for(&url)?;
    let path = quiver_engine::store::object_path(&url)?;
    Ok((store, path, url))
}

fn store_error(path: &Path, e: object_store::Error) -> MlError {
    MlError::Store(format!("{path}: {e}"))
}

/// Writes (or replaces) one object.
pub async fn put_bytes(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
    bytes: Vec<u8>,
) -> Result<(), MlError> {
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
) -> Result<bool, MlError> {
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
pub async fn exists(store: &Arc<dyn ObjectStore>, path: &Path) -> Result<bool, MlError> {
    match store.head(path).await {
        Ok(_) => Ok(true),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(store_error(path, e)),
    }
}

/// Reads one object; `None` when it does not exist.
pub async fn get_bytes(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
) -> Result<Option<Vec<u8>>, MlError> {
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

/// What is directly under `prefix`: its objects and its sub-folders.
async fn list(
    store: &Arc<dyn ObjectStore>,
    prefix: &Path,
) -> Result<object_store::ListResult, MlError> {
    store
        .list_with_delimiter(Some(prefix))
        .await
        .map_err(|e| store_error(prefix, e))
}

/// Names of the folders directly under `prefix`.
pub async fn list_dirs(
    store: &Arc<dyn ObjectStore>,
    prefix: &Path,
) -> Result<Vec<String>, MlError> {
    Ok(list(store, prefix)
        .await?
        .common_prefixes
        .iter()
        .filter_map(|p| p.filename().map(str::to_string))
        .collect())
}

/// Names of the objects directly under `prefix` (not in its sub-folders).
pub async fn list_files(
    store: &Arc<dyn ObjectStore>,
    prefix: &Path,
) -> Result<Vec<String>, MlError> {
    Ok(list(store, prefix)
        .await?
        .objects
        .iter()
        .filter_map(|o| o.location.filename().map(str::to_string))
        .collect())
}
