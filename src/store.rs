//! From a location string (URL or local path) to an [`ObjectStore`] and a path inside it.
//!
//! This is the one place where stores are built. Everything else takes `Arc<dyn ObjectStore>`,
//! so tests can wrap a store (fault injection, request counting) without the code knowing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use object_store::ObjectStore;
use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::prefix::PrefixStore;

use crate::conf::StorageOptions;

/// Errors building a store from a location.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("unsupported location `{location}`: {reason}")]
    Unsupported { location: String, reason: String },
    #[error("invalid location `{location}`: {reason}")]
    Invalid { location: String, reason: String },
    #[error("invalid location `{location}`: {source}")]
    Build {
        location: String,
        source: object_store::Error,
    },
}

/// A location resolved to a store.
#[derive(Debug, Clone)]
pub struct Location {
    /// The store holding the location, rooted at the store's root (bucket, filesystem root).
    pub store: Arc<dyn ObjectStore>,
    /// The path inside `store`, as written (not percent-encoded), without leading `/`.
    pub path: String,
    /// The location as the user wrote it, for messages.
    pub display: String,
    /// False for the local filesystem, which has no compare-and-swap (publish overwrites the
    /// pointer there instead of trying a conditional update first).
    pub compare_and_swap: bool,
}

impl Location {
    /// Resolves a URL (`file://`, `memory://`, `s3://`, `gs://`, `az://`) or an absolute local
    /// path. Cloud credentials come from the environment only.
    pub fn parse(location: &str, options: &StorageOptions) -> Result<Self, StoreError> {
        let invalid = |reason: &str| StoreError::Invalid {
            location: location.to_string(),
            reason: reason.to_string(),
        };
        let (store, path): (Arc<dyn ObjectStore>, &str) = if let Some(rest) =
            location.strip_prefix("file://")
        {
            if !rest.starts_with('/') {
                return Err(invalid("file:// URLs need an absolute path (file:///…)"));
            }
            (local(), rest)
        } else if let Some(rest) = location.strip_prefix("memory://") {
            let (name, path) = rest.split_once('/').unwrap_or((rest, ""));
            (memory(name), path)
        } else if let Some((scheme, rest)) = location.split_once("://")
            && matches!(scheme, "s3" | "s3a" | "gs" | "az" | "abfs" | "abfss")
        {
            let (bucket, path) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(invalid("expected a bucket after the scheme"));
            }
            (cloud(scheme, bucket, options, location)?, path)
        } else if crate::conf::is_url(location) {
            let scheme = location.split("://").next().unwrap_or_default();
            return Err(StoreError::Unsupported {
                location: location.to_string(),
                reason: format!(
                    "scheme `{scheme}://` is not supported; use s3://, gs://, az://, file://, memory:// or a path"
                ),
            });
        } else if location.starts_with('/') {
            (local(), location)
        } else {
            return Err(invalid("expected a URL or an absolute path"));
        };
        let path = path.trim_matches('/').to_string();
        if path.split('/').any(|seg| seg == "..") {
            return Err(invalid("`..` is not allowed in a store path"));
        }
        let compare_and_swap = !(location.starts_with("file://") || location.starts_with('/'));
        Ok(Location {
            store,
            path,
            display: location.to_string(),
            compare_and_swap,
        })
    }

    /// A store whose root is this location (for a table).
    pub fn scoped(&self) -> Result<Arc<dyn ObjectStore>, StoreError> {
        if self.path.is_empty() {
            return Ok(Arc::clone(&self.store));
        }
        let prefix = object_path(&self.path).map_err(|reason| StoreError::Invalid {
            location: self.display.clone(),
            reason,
        })?;
        Ok(Arc::new(PrefixStore::new(Arc::clone(&self.store), prefix)))
    }
}

/// An object path from a raw `/`-separated string, without percent-encoding its parts (so that
/// `order_date=a%2Fb` names exactly that object). Refuses `.`, `..` and control characters.
pub fn object_path(raw: &str) -> Result<Path, String> {
    let raw = raw.trim_matches('/');
    if raw.is_empty() {
        return Ok(Path::default());
    }
    Path::parse(raw).map_err(|e| e.to_string())
}

/// Builds an S3, GCS or Azure store for one bucket. S3 publishes with conditional writes:
/// `If-None-Match: *` for new manifests and `If-Match` on the pointer (conditional put `etag`).
fn cloud(
    scheme: &str,
    bucket: &str,
    options: &StorageOptions,
    location: &str,
) -> Result<Arc<dyn ObjectStore>, StoreError> {
    let root = format!("{scheme}://{bucket}");
    // object_store's build errors name missing settings, never credential values.
    let failed = |source: object_store::Error| StoreError::Build {
        location: location.to_string(),
        source,
    };
    let store: Arc<dyn ObjectStore> = match scheme {
        "s3" | "s3a" => {
            let mut b = AmazonS3Builder::from_env()
                .with_url(root)
                .with_conditional_put(S3ConditionalPut::ETagMatch);
            if let Some(e) = &options.endpoint {
                b = b.with_endpoint(e);
            }
            if let Some(r) = &options.region {
                b = b.with_region(r);
            }
            if let Some(h) = options.allow_http {
                b = b.with_allow_http(h);
            }
            if let Some(p) = options.path_style {
                b = b.with_virtual_hosted_style_request(!p);
            }
            Arc::new(b.build().map_err(failed)?)
        }
        "gs" => Arc::new(
            GoogleCloudStorageBuilder::from_env()
                .with_url(root)
                .build()
                .map_err(failed)?,
        ),
        _ => Arc::new(
            MicrosoftAzureBuilder::from_env()
                .with_url(root)
                .build()
                .map_err(failed)?,
        ),
    };
    Ok(store)
}

fn local() -> Arc<dyn ObjectStore> {
    static LOCAL: OnceLock<Arc<dyn ObjectStore>> = OnceLock::new();
    Arc::clone(LOCAL.get_or_init(|| Arc::new(LocalFileSystem::new())))
}

/// In-memory stores live as long as the process, one per name, so that `memory://t` means the
/// same table to every job in a process (tests, embedded use).
fn memory(name: &str) -> Arc<dyn ObjectStore> {
    static MEMORY: OnceLock<Mutex<HashMap<String, Arc<dyn ObjectStore>>>> = OnceLock::new();
    let mut stores = MEMORY
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    Arc::clone(
        stores
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(InMemory::new())),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::{ObjectStoreExt, PutPayload};

    #[tokio::test]
    async fn memory_stores_are_shared_by_name() {
        let a = Location::parse("memory://store-test/t1", &Default::default()).unwrap();
        a.scoped()
            .unwrap()
            .put(&Path::from("x"), PutPayload::from_static(b"1"))
            .await
            .unwrap();
        let b = Location::parse("memory://store-test", &Default::default()).unwrap();
        let got = b
            .store
            .get(&Path::from("t1/x"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(&got[..], b"1");
    }

    #[test]
    fn refuses_what_it_cannot_serve() {
        assert!(matches!(
            Location::parse("gopher://x/y", &Default::default()),
            Err(StoreError::Unsupported { .. })
        ));
        assert!(Location::parse("relative/path", &Default::default()).is_err());
        assert!(Location::parse("/a/../b", &Default::default()).is_err());
        assert_eq!(
            Location::parse("/a/b/", &Default::default()).unwrap().path,
            "a/b"
        );
        let s3 = Location::parse("s3://bucket/warehouse/orders", &Default::default()).unwrap();
        assert_eq!(s3.path, "warehouse/orders");
        assert!(s3.store.to_string().contains("bucket"));
    }

    #[test]
    fn object_paths_are_not_reencoded() {
        let p = object_path("t/order_date=a%2Fb/part.parquet").unwrap();
        assert_eq!(p.as_ref(), "t/order_date=a%2Fb/part.parquet");
        assert!(object_path("a/../b").is_err());
    }
}
