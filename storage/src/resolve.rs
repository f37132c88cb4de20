//! From a URI to the object store holding it: one client per bucket (or
//! container, or filesystem), built once with the node's options and shared.

use std::collections::HashMap;
use std::path::Path as LocalPath;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, ObjectStoreScheme, RetryConfig};
use sluice_config::ObjectStoreConfig;
use tokio::io::AsyncWriteExt;
use url::Url;

use crate::error::StorageError;
use crate::store::DeepStore;

/// The URI schemes of deep stores: one list, the one pipeline files are
/// validated against.
pub use sluice_config::pipeline::DEEP_STORE_SCHEMES as SCHEMES;

/// Resolves URIs to object stores with one node's options; clones share
/// the clients.
#[derive(Clone, Debug)]
pub struct Resolver {
    options: Arc<ObjectStoreConfig>,
    stores: Arc<Mutex<HashMap<String, Arc<dyn ObjectStore>>>>,
}

/// A parsed deep-store URI: its store's key, its kind and the path in it.
struct Location {
    url: Url,
    scheme: ObjectStoreScheme,
    path: Path,
}

fn parse(uri: &str) -> Result<Location, StorageError> {
    let bad = |reason: String| StorageError::Uri { uri: uri.to_string(), reason };
    let url = Url::parse(uri).map_err(|e| bad(e.to_string()))?;
    let name = url.scheme().to_ascii_lowercase();
    if !SCHEMES.contains(&name.as_str()) {
        return Err(bad(format!("the scheme `{name}` is not one of {}", SCHEMES.join(", "))));
    }
    if name != "file" && url.host_str().is_none_or(str::is_empty) {
        return Err(bad("no bucket or container (write `s3://bucket/prefix`)".into()));
    }
    if name == "file" && url.host_str().is_some_and(|h| !h.is_empty()) {
        return Err(bad("a file URI with a host (write `file:///absolute/path`)".into()));
    }
    if name == "memory" {
        // `memory://<name>/<path>`: a named store of this process.
        let path = Path::from_url_path(url.path()).map_err(|e| bad(e.to_string()))?;
        return Ok(Location { url, scheme: ObjectStoreScheme::Memory, path });
    }
    let (scheme, path) = ObjectStoreScheme::parse(&url).map_err(|e| bad(e.to_string()))?;
    Ok(Location { url, scheme, path })
}

/// Checks a deep-store URI and builds (offline) the client the node's
/// options would give it: unknown options, bad endpoints and malformed
/// URIs are reported before anything runs.
pub fn check_uri(uri: &str, options: &ObjectStoreConfig) -> Result<(), StorageError> {
    let location = parse(uri)?;
    build(&location, options).map(|_| ())
}

/// The process's `memory://` stores by name, so every node of a
/// single-process cluster (tests, the quickstart) sees the same objects.
fn memory(name: &str) -> Arc<dyn ObjectStore> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<InMemory>>>> = OnceLock::new();
    let mut stores = STORES.get_or_init(Mutex::default).lock().unwrap_or_else(|e| e.into_inner());
    stores.entry(name.to_string()).or_insert_with(|| Arc::new(InMemory::new())).clone()
}

fn build(location: &Location, options: &ObjectStoreConfig) -> Result<Arc<dyn ObjectStore>, StorageError> {
    let uri = location.url.as_str();
    let backend =
        |source| StorageError::Backend { operation: "configure the client for", uri: uri.to_string(), source };
    let option_error = |key: &str, reason: String| StorageError::Option { option: key.to_string(), reason };
    // Backoff from 200 ms growing threefold to 15 s: a partition of a few
    // seconds or a restarting server is ridden out within the retries.
    let backoff =
        BackoffConfig { init_backoff: Duration::from_millis(200), max_backoff: Duration::from_secs(15), base: 3.0 };
    let retry = RetryConfig { backoff, max_retries: options.max_retries, retry_timeout: options.retry_timeout };
    let client = ClientOptions::new().with_allow_http(options.allow_http).with_timeout(options.request_timeout);
    let bucket_url = format!("{}://{}", location.url.scheme(), location.url.authority());
    Ok(match location.scheme {
        ObjectStoreScheme::Local => Arc::new(LocalFileSystem::new()),
        ObjectStoreScheme::Memory => memory(location.url.authority()),
        ObjectStoreScheme::AmazonS3 => {
            let mut builder = AmazonS3Builder::from_env()
                .with_url(bucket_url)
                .with_retry(retry)
                .with_client_options(client)
                .with_allow_http(options.allow_http);
            if let Some(endpoint) = &options.endpoint {
                builder = builder.with_endpoint(endpoint);
            }
            if let Some(region) = &options.region {
                builder = builder.with_region(region);
            }
            for (key, value) in &options.options {
                let parsed: AmazonS3ConfigKey = key.parse().map_err(|e| option_error(key, format!("{e}")))?;
                builder = builder.with_config(parsed, value);
            }
            Arc::new(builder.build().map_err(backend)?)
        }
        ObjectStoreScheme::GoogleCloudStorage => {
            let mut builder = GoogleCloudStorageBuilder::from_env()
                .with_url(bucket_url)
                .with_retry(retry)
                .with_client_options(client);
            for (key, value) in &options.options {
                let parsed: GoogleConfigKey = key.parse().map_err(|e| option_error(key, format!("{e}")))?;
                builder = builder.with_config(parsed, value);
            }
            Arc::new(builder.build().map_err(backend)?)
        }
        ObjectStoreScheme::MicrosoftAzure => {
            let mut builder =
                MicrosoftAzureBuilder::from_env().with_url(uri).with_retry(retry).with_client_options(client);
            if let Some(endpoint) = &options.endpoint {
                builder = builder.with_endpoint(endpoint.clone());
            }
            for (key, value) in &options.options {
                let parsed: AzureConfigKey = key.parse().map_err(|e| option_error(key, format!("{e}")))?;
                builder = builder.with_config(parsed, value);
            }
            Arc::new(builder.build().map_err(backend)?)
        }
        _ => {
            return Err(StorageError::Uri { uri: uri.to_string(), reason: "not a deep-store scheme".into() });
        }
    })
}

impl Resolver {
    pub fn new(options: ObjectStoreConfig) -> Self {
        Resolver { options: Arc::new(options), stores: Arc::default() }
    }

    /// The store holding `uri` and the object's path in it.
    pub(crate) fn locate(&self, uri: &str) -> Result<(Arc<dyn ObjectStore>, Path), StorageError> {
        let location = parse(uri)?;
        let key = format!("{}://{}", location.url.scheme().to_ascii_lowercase(), location.url.authority());
        let mut stores = self.stores.lock().unwrap_or_else(|e| e.into_inner());
        let store = match stores.get(&key) {
            Some(store) => store.clone(),
            None => {
                let store = build(&location, &self.options)?;
                stores.insert(key, store.clone());
                store
            }
        };
        Ok((store, location.path))
    }

    /// The deep store rooted at `root_uri` (a directory or a bucket prefix).
    pub fn deep_store(&self, root_uri: &str) -> Result<DeepStore, StorageError> {
        let (store, prefix) = self.locate(root_uri)?;
        Ok(DeepStore::new(root_uri, store, prefix))
    }

    /// Copies the object at `uri` to the local file `dest`: written under a
    /// temporary name, synced, then renamed into place. Returns its size.
    pub async fn download(&self, uri: &str, dest: &LocalPath) -> Result<u64, StorageError> {
        let (store, path) = self.locate(uri)?;
        let io = |operation, source| StorageError::Io { operation, path: dest.to_path_buf(), source };
        let backend = |source| StorageError::Backend { operation: "download", uri: uri.to_string(), source };
        if let Some(dir) = dest.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(|e| io("create the directory of", e))?;
        }
        let tmp = dest.with_extension(format!("download-{}", std::process::id()));
        let result = async {
            let mut stream = store.get(&path).await.map_err(backend)?.into_stream();
            let mut file = tokio::fs::File::create(&tmp).await.map_err(|e| io("create", e))?;
            let mut size = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(backend)?;
                size += chunk.len() as u64;
                file.write_all(&chunk).await.map_err(|e| io("write", e))?;
            }
            file.sync_all().await.map_err(|e| io("sync", e))?;
            tokio::fs::rename(&tmp, dest).await.map_err(|e| io("rename into place", e))?;
            Ok(size)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }

    /// Deletes the object at `uri`; one already gone is not an error.
    pub async fn delete(&self, uri: &str) -> Result<(), StorageError> {
        let (store, path) = self.locate(uri)?;
        crate::store::delete(store.as_ref(), &path, || uri.to_string()).await
    }
}
