//! Backup destinations: from what a user writes (`local`, `file:///srv/b`, `s3://bucket/p`,
//! `memory://name`) to an [`ArchiveStore`].
//!
//! Credentials never travel in commands or events. An `s3://` URL gets its endpoint, region and
//! keys from the configured destination with the same URL, or else from the standard `AWS_*`
//! environment variables. Events record only the URL, so a restore on another instance resolves
//! the same URL against its own configuration.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use cim_backup_contracts::ErrorCode;
use cim_backup_contracts::text::echo;
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
        "destination {}: unknown scheme {scheme:?}; use file:///path, s3://bucket/prefix, memory://name or a configured name ({names})",
        echo(given)
    )]
    UnknownScheme {
        given: String,
        scheme: String,
        names: String,
    },
    #[error(
        "destination {} is neither a URL nor a configured destination name ({names})",
        echo(given)
    )]
    UnknownName { given: String, names: String },
    #[error("destination {}: {message}", echo(given))]
    Invalid { given: String, message: String },
    #[error("no destination given and no default destination is configured")]
    NoDefault,
    /// A read names a place that holds nothing (reads never create it).
    #[error("{url} does not exist")]
    Missing { url: String },
    /// A `file://` location outside the directories this instance may use.
    #[error(
        "{url} is outside the directories this instance may use ({roots}); add it to [service] file_roots or serve --file-root"
    )]
    OutsideRoots { url: String, roots: String },
    /// An S3 destination without credentials: the client would ask the instance metadata
    /// service, which on most hosts answers nothing useful.
    #[error(
        "no credentials for {url}: set access_key_id and secret_access_key in its [destinations.<name>] entry, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (instance credentials: instance_credentials = true)"
    )]
    NoCredentials { url: String },
}

impl DestinationError {
    /// The wire code: a missing place is 404, a forbidden one 403, the rest the caller's request.
    pub fn code(&self) -> ErrorCode {
        match self {
            DestinationError::Missing { .. } => ErrorCode::NotFound,
            DestinationError::OutsideRoots { .. } => ErrorCode::Forbidden,
            _ => ErrorCode::BadRequest,
        }
    }
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
    /// Directories `file://` locations must be inside: the declared roots and every configured
    /// `file://` destination.
    roots: Vec<PathBuf>,
    opened: Mutex<HashMap<String, ArchiveStore>>,
}

/// Process-wide in-memory stores by name, so `memory://x` means the same store to every job of
/// this process (used for tests and demos; lost on exit).
fn memory_stores() -> &'static Mutex<HashMap<String, Arc<InMemory>>> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<InMemory>>>> = OnceLock::new();
    STORES.get_or_init(Default::default)
}

/// Whether a store is opened to read what is there, or to write (a backup may create its
/// directory; nothing else may).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
}

impl Destinations {
    pub fn new(
        mut named: BTreeMap<String, DestinationConfig>,
        default: Option<String>,
        file_roots: &[PathBuf],
    ) -> Self {
        // Configured URLs in the form requests resolve to, so that a destination's settings
        // (keys, `encrypt`) are found for it whichever way it was spelt.
        for (name, config) in named.iter_mut() {
            if let Ok(url) = normalize(name, &config.url, "") {
                config.url = url;
            }
        }
        let mut roots: Vec<PathBuf> = file_roots.iter().map(|r| lexical(r)).collect();
        roots.extend(
            named
                .values()
                .filter_map(|c| url::Url::parse(&c.url).ok())
                .filter(|u| u.scheme() == "file")
                .filter_map(|u| u.to_file_path().ok()),
        );
        // The default destination given as a URL (`serve --destination file:///dir`) is
        // declared as much as a named one.
        roots.extend(
            default
                .as_deref()
                .filter(|d| d.starts_with("file://"))
                .and_then(|d| url::Url::parse(d).ok())
                .and_then(|u| u.to_file_path().ok())
                .map(|p| lexical(&p)),
        );
        Destinations {
            named,
            default,
            roots,
            opened: Mutex::new(HashMap::new()),
        }
    }

    /// The `encrypt` setting of the configured destination with this URL.
    pub fn encrypt_setting(&self, url: &str) -> Option<bool> {
        self.named
            .values()
            .find(|c| c.url == url)
            .and_then(|c| c.encrypt)
    }

    fn names(&self) -> String {
        if self.named.is_empty() {
            "none configured".to_owned()
        } else {
            self.named.keys().cloned().collect::<Vec<_>>().join(", ")
        }
    }

    /// Resolves a user's destination (or the default) to its normalized URL, validating its form
    /// and, for a local directory, that it lies inside this instance's roots.
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
        self.check_root(&url)?;
        Ok(Resolved { given, url })
    }

    /// A `file://` URL must name a place inside a root, also after following symlinks.
    fn check_root(&self, url: &str) -> Result<(), DestinationError> {
        let Some(path) = url::Url::parse(url)
            .ok()
            .filter(|u| u.scheme() == "file")
            .and_then(|u| u.to_file_path().ok())
        else {
            return Ok(());
        };
        let real = resolved_path(&path);
        let inside = self
            .roots
            .iter()
            .any(|root| path.starts_with(root) && real.starts_with(resolved_path(root)));
        if inside {
            Ok(())
        } else {
            Err(DestinationError::OutsideRoots {
                url: url.to_owned(),
                roots: if self.roots.is_empty() {
                    "none declared".to_owned()
                } else {
                    self.roots
                        .iter()
                        .map(|r| r.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            })
        }
    }

    /// Opens (or reuses) the store of a resolved URL to read what it holds. A local directory
    /// that does not exist is [`DestinationError::Missing`]: reading never creates anything.
    pub fn open(&self, url: &str) -> Result<ArchiveStore, DestinationError> {
        self.open_with(url, Access::Read)
    }

    /// Opens the store of a resolved URL to write backups into, creating a local directory.
    pub fn create(&self, url: &str) -> Result<ArchiveStore, DestinationError> {
        self.open_with(url, Access::Write)
    }

    fn open_with(&self, url: &str, access: Access) -> Result<ArchiveStore, DestinationError> {
        // Checked on every open, not only the first: a symlink may have appeared since.
        self.check_root(url)?;
        if let Some(store) = self.opened.lock().unwrap().get(url) {
            return Ok(store.clone());
        }
        let store = self.build(url, access)?;
        self.opened
            .lock()
            .unwrap()
            .insert(url.to_owned(), store.clone());
        Ok(store)
    }

    fn build(&self, url: &str, access: Access) -> Result<ArchiveStore, DestinationError> {
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
                match access {
                    Access::Write => {
                        std::fs::create_dir_all(&dir).map_err(|e| {
                            invalid(format!("cannot create {}: {e}", dir.display()))
                        })?;
                        // Where it really is, now that it exists.
                        self.check_root(url)?;
                    }
                    Access::Read if !dir.is_dir() => {
                        return Err(DestinationError::Missing {
                            url: url.to_owned(),
                        });
                    }
                    Access::Read => {}
                }
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
                let config = self.named.values().find(|c| c.url == url);
                if !has_s3_credentials(config) {
                    return Err(DestinationError::NoCredentials {
                        url: url.to_owned(),
                    });
                }
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

/// Whether an S3 client would have credentials other than the instance metadata service's:
/// keys in the destination's config or the environment, a web identity, or a container role;
/// or the destination says instance credentials are meant.
fn has_s3_credentials(config: Option<&DestinationConfig>) -> bool {
    let env = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    config.is_some_and(|c| c.access_key_id.is_some() || c.instance_credentials)
        || env("AWS_ACCESS_KEY_ID")
        || env("AWS_WEB_IDENTITY_TOKEN_FILE")
        || env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        || env("AWS_CONTAINER_CREDENTIALS_FULL_URI")
}

/// `path` with `.` and `..` resolved by text alone (the path need not exist).
fn lexical(path: &std::path::Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// `path` with every symlink of its longest existing ancestor followed: where a write to it
/// would really land. Never less resolved than [`lexical`]: a path it cannot follow to the end
/// is taken as written without its `.`/`..` (so it fails closed against the roots).
fn resolved_path(path: &std::path::Path) -> PathBuf {
    let path = lexical(path);
    let mut existing = path.clone();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(&existing) {
            return rest.into_iter().rev().fold(real, |p, part| p.join(part));
        }
        match (
            existing.file_name().map(|n| n.to_owned()),
            existing.parent(),
        ) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => return path,
        }
    }
}

/// Checks a destination URL's form and returns it normalized: `.` and `..` resolved, no
/// trailing slash. A query or fragment is refused: the stores ignore them, so two spellings
/// would name one place (and split incremental chains).
fn normalize(given: &str, url: &str, names: &str) -> Result<String, DestinationError> {
    let invalid = |message: &str| DestinationError::Invalid {
        given: given.to_owned(),
        message: message.to_owned(),
    };
    let parsed = url::Url::parse(url).map_err(|e| invalid(&e.to_string()))?;
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(invalid(
            "a destination URL takes no ?query or #fragment; name the place only",
        ));
    }
    match parsed.scheme() {
        "file" => {
            if parsed.host_str().is_some_and(|h| !h.is_empty()) || !parsed.path().starts_with('/') {
                return Err(invalid(
                    "file URLs must be absolute, like file:///srv/backups",
                ));
            }
            // The parser resolves `..` segments, but an encoded slash (`%2F`) hides them until
            // the path is decoded: refuse those, and any `.`/`..` left after decoding.
            let raw = parsed.path().to_ascii_lowercase();
            if raw.contains("%2f") || raw.contains("%5c") || raw.contains("%00") {
                return Err(invalid(
                    "the path has an encoded slash, backslash or NUL; write it plainly",
                ));
            }
            let path = parsed
                .to_file_path()
                .map_err(|_| invalid("not a local path"))?;
            if path.components().any(|c| {
                matches!(
                    c,
                    std::path::Component::ParentDir | std::path::Component::CurDir
                )
            }) {
                return Err(invalid("the path climbs with `..` after decoding"));
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
    Ok(parsed.as_str().trim_end_matches('/').to_owned())
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
        Destinations::new(
            named,
            Some("local".into()),
            &[PathBuf::from("/srv/backups")],
        )
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
    fn local_paths_are_normalized_and_kept_inside_the_roots() {
        let d = destinations();
        assert_eq!(
            d.resolve(Some("file:///srv/backups/a/../b/")).unwrap().url,
            "file:///srv/backups/b"
        );
        let err = d.resolve(Some("file:///../../etc/passwd")).unwrap_err();
        assert!(
            matches!(err, DestinationError::OutsideRoots { ref url, .. } if url == "file:///etc/passwd"),
            "{err}"
        );
        assert_eq!(err.code(), ErrorCode::Forbidden);
        assert!(d.resolve(Some("file:///srv/backups/../secrets")).is_err());
        assert!(
            d.resolve(Some("file:///tmp/cim-backup-test-dest/x"))
                .is_ok(),
            "a configured destination is a root"
        );
    }

    #[test]
    fn reading_never_creates_a_directory() {
        let root = tempfile::tempdir().unwrap();
        let d = Destinations::new(BTreeMap::new(), None, &[root.path().to_path_buf()]);
        let url = format!("file://{}/not-yet", root.path().display());
        let err = d.open(&url).unwrap_err();
        assert_eq!(err, DestinationError::Missing { url: url.clone() });
        assert!(!root.path().join("not-yet").exists());
        d.create(&url).unwrap();
        assert!(root.path().join("not-yet").is_dir());
    }

    #[test]
    fn an_encoded_slash_cannot_climb_out_of_a_root() {
        let root = tempfile::tempdir().unwrap();
        let d = Destinations::new(BTreeMap::new(), None, &[root.path().to_path_buf()]);
        for sneaky in [
            format!(
                "file://{}/nx%2F..%2F..%2F..%2Ftmp%2Fpwn",
                root.path().display()
            ),
            format!("file://{}/nx%2f..%2fx", root.path().display()),
            format!("file://{}/a%00b", root.path().display()),
        ] {
            let err = d.resolve(Some(&sneaky)).unwrap_err();
            assert!(
                matches!(err, DestinationError::Invalid { .. }),
                "{sneaky}: {err}"
            );
        }
        assert!(!root.path().join("nx").exists(), "nothing was created");
        // %2e%2e is resolved by the URL parser before anything else.
        let err = d
            .resolve(Some(&format!(
                "file://{}/%2e%2e/%2e%2e/etc",
                root.path().display()
            )))
            .unwrap_err();
        assert!(
            matches!(err, DestinationError::OutsideRoots { .. }),
            "{err}"
        );
    }

    #[test]
    fn a_symlink_out_of_a_root_is_outside_it() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("link")).unwrap();
        let d = Destinations::new(BTreeMap::new(), None, &[root.path().to_path_buf()]);
        let url = format!("file://{}/link/backups", root.path().display());
        assert!(matches!(
            d.resolve(Some(&url)),
            Err(DestinationError::OutsideRoots { .. })
        ));
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
        assert!(
            d.resolve(Some("file:///srv/backups/x?y=1"))
                .unwrap_err()
                .to_string()
                .contains("no ?query")
        );
        assert!(d.resolve(Some("file:///srv/backups/x#f")).is_err());
        assert_eq!(
            Destinations::new(BTreeMap::new(), None, &[]).resolve(None),
            Err(DestinationError::NoDefault)
        );
    }
}
