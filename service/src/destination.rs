//! Backup destinations: from what a user writes (`local`, `file:///srv/b`, `s3://bucket/p`,
//! `memory://name`) to an [`ArchiveStore`].
//!
//! Credentials never travel in commands or events. An `s3://` URL gets its endpoint, region and
//! keys from the configured destination with the same URL, or else from the standard `AWS_*`
//! environment variables. Events record only the URL, so a restore on another instance resolves
//! the same URL against its own configuration.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;

use crate::archive::ArchiveStore;
use crate::config::DestinationConfig;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DestinationError {
    #[error(
        "destination {given:?}: unknown scheme {scheme:?}; use file:///path, s3://bucket/prefix, memory://name or a configured name ({names})"
    )]
    UnknownScheme {
        given: String,
        scheme: String,
        names: String,
    },
    #[error("destination {given:?} is neither a URL nor a configured destination name ({names})")]
    UnknownName { given: String, names: String },
    #[error("destination {given:?}: {message}")]
    Invalid { given: String, message: String },
    #[error("no destination given and no default destination is configured")]
    NoDefault,
}

/// A destination as named by the user and the URL it stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// As given (a configured name or a URL).
    pub given: String,
    /// Normalized URL without credentials.
    pub url: String,
}

/// Configured destinations plus a cache of opened stores.
pub struct Destinations {
    named: BTreeMap<String, DestinationConfig>,
    default: Option<String>,
    opened: Mutex<HashMap<String, ArchiveStore>>,
}

/// Process-wide in-memory stores by name, so `memory://x` means the same store to every job of
/// this process (used for tests and demos; lost on exit).
fn memory_stores() -> &'static Mutex<HashMap<String, Arc<InMemory>>> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<InMemory>>>> = OnceLock::new();
    STORES.get_or_init(Default::default)
}

impl Destinations {
    pub fn new(named: BTreeMap<String, DestinationConfig>, default: Option<String>) -> Self {
        Destinations {
            named,
            default,
            opened: Mutex::new(HashMap::new()),
        }
    }

    fn names(&self) -> String {
        if self.named.is_empty() {
            "none configured".to_owned()
        } else {
            self.named.keys().cloned().collect::<Vec<_>>().join(", ")
        }
    }

    /// Resolves a user's destination (or the default) to a URL, validating its form.
    pub fn resolve(&self, given: Option<&str>) -> Result<Resolved, DestinationError> {
        let given = match given {
            Some(g) => g.to_owned(),
            None => self.default.clone().ok_or(DestinationError::NoDefault)?,
        };
        let url = match self.named.get(&given) {
            Some(config) => config.url.clone(),
            None if given.contains("://") => given.clone(),
            None => {
                return Err(DestinationError::UnknownName {
                    given,
                    names: self.names(),
                });
            }
        };
        let url = normalize(&given, &url, &self.names())?;
        Ok(Resolved { given, url })
    }

    /// Opens (or reuses) the store of a resolved URL.
    pub fn open(&self, url: &str) -> Result<ArchiveStore, DestinationError> {
        if let Some(store) = self.opened.lock().unwrap().get(url) {
            return Ok(store.clone());
        }
        let store = self.build(url)?;
        self.opened
            .lock()
            .unwrap()
            .insert(url.to_owned(), store.clone());
        Ok(store)
    }

    fn build(&self, url: &str) -> Result<ArchiveStore, DestinationError> {
        let invalid = |message: String| DestinationError::Invalid {
            given: url.to_owned(),
            message,
        };
        let parsed = url::Url::parse(url).map_err(|e| invalid(e.to_string()))?;
        let (store, prefix): (Arc<dyn ObjectStore>, Path) = match parsed.scheme() {
            "file" => {
                let dir = parsed
                    .to_file_path()
                    .map_err(|_| invalid("not an absolute local path".into()))?;
                std::fs::create_dir_all(&dir)
                    .map_err(|e| invalid(format!("cannot create {}: {e}", dir.display())))?;
                let fs =
                    LocalFileSystem::new_with_prefix(&dir).map_err(|e| invalid(e.to_string()))?;
                (Arc::new(fs), Path::default())
            }
            "memory" => {
                let name = parsed.host_str().unwrap_or_default().to_owned();
                let store = memory_stores()
                    .lock()
                    .unwrap()
                    .entry(name)
                    .or_insert_with(|| Arc::new(InMemory::new()))
                    .clone();
                (store, Path::default())
            }
            "s3" => {
                let bucket = parsed
                    .host_str()
                    .ok_or_else(|| invalid("no bucket".into()))?;
                let config = self
                    .named
                    .values()
                    .find(|c| c.url.trim_end_matches('/') == url);
                let mut builder = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(crate::config::retry_config(None))
                    .with_client_options(
                        object_store::ClientOptions::new()
                            .with_connect_timeout(std::time::Duration::from_secs(5))
                            .with_timeout(std::time::Duration::from_secs(60)),
                    );
                if let Some(c) = config {
                    builder = c.apply_s3(builder);
                }
                let s3 = builder.build().map_err(|e| invalid(e.to_string()))?;
                (Arc::new(s3), Path::from(parsed.path().trim_matches('/')))
            }
            other => return Err(invalid(format!("unsupported scheme {other:?}"))),
        };
        Ok(ArchiveStore::new(store, prefix, url.to_owned()))
    }
}

/// Checks a destination URL's form and returns it normalized (no trailing slash).
fn normalize(given: &str, url: &str, names: &str) -> Result<String, DestinationError> {
    let invalid = |message: &str| DestinationError::Invalid {
        given: given.to_owned(),
        message: message.to_owned(),
    };
    let parsed = url::Url::parse(url).map_err(|e| invalid(&e.to_string()))?;
    match parsed.scheme() {
        "file" => {
            if parsed.host_str().is_some_and(|h| !h.is_empty()) || !parsed.path().starts_with('/') {
                return Err(invalid(
                    "file URLs must be absolute, like file:///srv/backups",
                ));
            }
        }
        "s3" => {
            if parsed.host_str().is_none_or(str::is_empty) {
                return Err(invalid("s3 URLs need a bucket, like s3://bucket/prefix"));
            }
            if !parsed.username().is_empty() || parsed.password().is_some() {
                return Err(invalid(
                    "credentials do not belong in the URL; configure them for the destination",
                ));
            }
        }
        "memory" => {
            if parsed.host_str().is_none_or(str::is_empty) {
                return Err(invalid("memory URLs need a name, like memory://scratch"));
            }
        }
        scheme => {
            return Err(DestinationError::UnknownScheme {
                given: given.to_owned(),
                scheme: scheme.to_owned(),
                names: names.to_owned(),
            });
        }
    }
    Ok(url.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn destinations() -> Destinations {
        let mut named = BTreeMap::new();
        named.insert(
            "local".to_owned(),
            DestinationConfig::url("file:///tmp/cim-backup-test-dest"),
        );
        Destinations::new(named, Some("local".into()))
    }

    #[test]
    fn names_urls_and_default_resolve() {
        let d = destinations();
        assert_eq!(
            d.resolve(None).unwrap().url,
            "file:///tmp/cim-backup-test-dest"
        );
        assert_eq!(d.resolve(Some("local")).unwrap().given, "local");
        assert_eq!(
            d.resolve(Some("s3://bucket/events/")).unwrap().url,
            "s3://bucket/events"
        );
        assert_eq!(d.resolve(Some("memory://x")).unwrap().url, "memory://x");
    }

    #[test]
    fn bad_destinations_are_named_in_the_error() {
        let d = destinations();
        let err = d.resolve(Some("ftp://host/x")).unwrap_err();
        assert!(
            matches!(err, DestinationError::UnknownScheme { ref scheme, .. } if scheme == "ftp"),
            "{err}"
        );
        assert!(
            err.to_string().contains("local"),
            "lists configured names: {err}"
        );
        assert!(
            d.resolve(Some("offsite"))
                .unwrap_err()
                .to_string()
                .contains("\"offsite\"")
        );
        assert!(d.resolve(Some("file://relative/path")).is_err());
        assert!(d.resolve(Some("s3:///nobucket")).is_err());
        assert!(d.resolve(Some("s3://key:secret@bucket/p")).is_err());
        assert_eq!(
            Destinations::new(BTreeMap::new(), None).resolve(None),
            Err(DestinationError::NoDefault)
        );
    }
}
