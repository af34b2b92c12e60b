//! Object stores by URL: `file://`, `memory://<name>` and `s3://<bucket>` are created on first
//! use, so any location works in SQL without registering anything. S3 settings come from the
//! usual `AWS_*` environment variables, overridden by [`S3Options`]; addressing is path-style so
//! that S3-compatible servers (SeaweedFS, MinIO) work. [`objects`] reads, writes and lists whole
//! objects (run folders, registries, logs).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::object_store::{ObjectStoreRegistry, ObjectStoreUrl};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::{ClientOptions, ObjectStore, RetryConfig};
use url::Url;

use crate::error::{QuiverError, Result};

pub mod objects;

/// Explicit S3 settings; every `None` falls back to the `AWS_*` environment variables.
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    /// Endpoint of an S3-compatible server, e.g. `http://127.0.0.1:8333` (`AWS_ENDPOINT_URL`).
    pub endpoint: Option<String>,
    /// Region (`AWS_REGION`, `AWS_DEFAULT_REGION`); `us-east-1` when unset.
    pub region: Option<String>,
    /// Access key id (`AWS_ACCESS_KEY_ID`).
    pub access_key_id: Option<String>,
    /// Secret access key (`AWS_SECRET_ACCESS_KEY`).
    pub secret_access_key: Option<String>,
    /// Retries of a failed request before giving up.
    pub max_retries: Option<usize>,
}

/// The object-store registry of a session: stores are created lazily per `scheme://host`.
#[derive(Debug)]
pub struct StoreRegistry {
    s3: S3Options,
    stores: RwLock<HashMap<String, Arc<dyn ObjectStore>>>,
}

impl StoreRegistry {
    /// A registry creating S3 stores with `s3`.
    pub fn new(s3: S3Options) -> Self {
        Self {
            s3,
            stores: RwLock::new(HashMap::new()),
        }
    }

    fn key(url: &Url) -> String {
        store_base(url)
    }

    fn create(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        let location = url.as_str();
        match url.scheme() {
            "file" => Ok(Arc::new(LocalFileSystem::new())),
            "memory" => Ok(Arc::new(InMemory::new())),
            "s3" => {
                let bucket = url.host_str().filter(|b| !b.is_empty()).ok_or_else(|| {
                    QuiverError::Location {
                        location: location.to_string(),
                        reason: "an s3:// location needs a bucket: s3://bucket/prefix".into(),
                    }
                })?;
                let mut builder = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_virtual_hosted_style_request(false);
                let endpoint = self
                    .s3
                    .endpoint
                    .clone()
                    .or_else(|| std::env::var("AWS_ENDPOINT_URL_S3").ok())
                    .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
                // Client options replace the builder's, so plain HTTP is allowed here.
                let mut client = ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(300));
                if let Some(endpoint) = endpoint {
                    client = client.with_allow_http(endpoint.starts_with("http://"));
                    builder = builder.with_endpoint(endpoint);
                }
                let region = self
                    .s3
                    .region
                    .clone()
                    .or_else(|| std::env::var("AWS_REGION").ok())
                    .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
                    .unwrap_or_else(|| "us-east-1".into());
                builder = builder.with_region(region);
                if let Some(key) = &self.s3.access_key_id {
                    builder = builder.with_access_key_id(key);
                }
                if let Some(secret) = &self.s3.secret_access_key {
                    builder = builder.with_secret_access_key(secret);
                }
                // Finite, short retries: an unreachable store must fail in seconds, not minutes.
                let retry = RetryConfig {
                    max_retries: self.s3.max_retries.unwrap_or(3),
                    retry_timeout: Duration::from_secs(20),
                    ..Default::default()
                };
                let store = builder
                    .with_retry(retry)
                    .with_client_options(client)
                    .build()
                    .map_err(|e| QuiverError::store(location, e))?;
                Ok(Arc::new(store))
            }
            other => Err(QuiverError::Location {
                location: location.to_string(),
                reason: format!(
                    "unsupported scheme '{other}' (supported: file://, memory://, s3://)"
                ),
            }),
        }
    }
}

impl ObjectStoreRegistry for StoreRegistry {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        self.stores
            .write()
            .expect("store registry lock")
            .insert(Self::key(url), store)
    }

    fn get_store(&self, url: &Url) -> DfResult<Arc<dyn ObjectStore>> {
        let key = Self::key(url);
        if let Some(store) = self.stores.read().expect("store registry lock").get(&key) {
            return Ok(Arc::clone(store));
        }
        let mut stores = self.stores.write().expect("store registry lock");
        if let Some(store) = stores.get(&key) {
            return Ok(Arc::clone(store));
        }
        let store = self.create(url).map_err(DataFusionError::from)?;
        stores.insert(key, Arc::clone(&store));
        Ok(store)
    }
}

/// `scheme://host[:port]` of `url`: the part that selects an object store.
pub fn store_base(url: &Url) -> String {
    format!(
        "{}://{}",
        url.scheme(),
        &url[url::Position::BeforeHost..url::Position::AfterPort]
    )
}

/// The DataFusion object-store URL (`scheme://host/`) that serves `url`.
pub fn store_url(url: &Url) -> ObjectStoreUrl {
    ObjectStoreUrl::parse(store_base(url)).expect("scheme://host is a valid URL")
}

/// The object-store path of `url` inside its store (`file://` URLs are absolute paths).
pub fn object_path(url: &Url) -> Result<object_store::path::Path> {
    let bad = |reason: String| QuiverError::Location {
        location: url.to_string(),
        reason,
    };
    if url.scheme() == "file" {
        let path = url
            .to_file_path()
            .map_err(|()| bad("not a valid local path".into()))?;
        object_store::path::Path::from_absolute_path(path).map_err(|e| bad(e.to_string()))
    } else {
        object_store::path::Path::from_url_path(url.path()).map_err(|e| bad(e.to_string()))
    }
}

/// Turns a user's location into a URL: URLs (`s3://b/p`, `memory://m/p`, `file:///p`) are kept,
/// plain paths are made absolute against the current directory. A location naming an existing
/// directory, or ending in `/`, gets a trailing slash.
pub fn resolve_location(location: &str) -> Result<Url> {
    let bad = |reason: String| QuiverError::Location {
        location: location.to_string(),
        reason,
    };
    if location.trim().is_empty() {
        return Err(bad("the location is empty".into()));
    }
    if location.contains("://") {
        return Url::parse(location).map_err(|e| bad(e.to_string()));
    }
    let absolute = std::path::absolute(Path::new(location)).map_err(|e| bad(e.to_string()))?;
    // `a/../b` becomes `b`: object-store paths cannot hold `..` segments.
    let mut path = std::path::PathBuf::new();
    for part in absolute.components() {
        match part {
            std::path::Component::ParentDir => {
                path.pop();
            }
            std::path::Component::CurDir => {}
            other => path.push(other),
        }
    }
    let url = if location.ends_with('/') || path.is_dir() {
        Url::from_directory_path(&path)
    } else {
        Url::from_file_path(&path)
    };
    url.map_err(|()| bad("not a valid local path".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_urls_and_paths() {
        assert_eq!(
            resolve_location("s3://bucket/a/b").unwrap().as_str(),
            "s3://bucket/a/b"
        );
        let cwd = std::env::current_dir().unwrap();
        let url = resolve_location("some/dir/").unwrap();
        assert_eq!(url.to_file_path().unwrap(), cwd.join("some/dir"));
        let url = resolve_location("some/./x/../dir/").unwrap();
        assert_eq!(url.to_file_path().unwrap(), cwd.join("some/dir"));
        assert!(url.as_str().ends_with('/'));
        assert!(resolve_location("").is_err());
        assert!(resolve_location("http://[bad").is_err());
    }

    #[test]
    fn creates_stores_lazily_and_rejects_unknown_schemes() {
        let registry = StoreRegistry::new(S3Options::default());
        let a = registry
            .get_store(&Url::parse("memory://m/x").unwrap())
            .unwrap();
        let b = registry
            .get_store(&Url::parse("memory://m/y").unwrap())
            .unwrap();
        assert!(Arc::ptr_eq(&a, &b), "one store per scheme and host");
        let err = registry
            .get_store(&Url::parse("gopher://h/x").unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("unsupported scheme 'gopher'"), "{err}");
    }
}
