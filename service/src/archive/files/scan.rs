//! Reading a tree's shape from disk, and the rule that keeps every request inside a declared
//! root: a path is relative, has no `..`, and no symlink on the way to it (a link inside the
//! tree is stored as a link, never followed).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::error::FilesError;
use super::tree::{TopKind, check_relative};

/// A root an instance declares (`[files.roots] models = "/var/lib/cim/models"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    pub name: String,
    /// Canonical (symlinks resolved when the root was declared).
    pub dir: PathBuf,
}

impl Root {
    pub fn new(name: &str, dir: &Path) -> Result<Root, FilesError> {
        let dir = dir
            .canonicalize()
            .map_err(|e| FilesError::io(dir.display(), e))?;
        if !dir.is_dir() {
            return Err(FilesError::refused(
                dir.display(),
                "a root must be a directory",
            ));
        }
        Ok(Root {
            name: name.to_owned(),
            dir,
        })
    }

    /// The host path of `rel` inside this root ("" is the root itself), refusing anything
    /// that leaves it: `..`, absolute paths, and any symlink among the components (checked on
    /// disk, so a link planted inside the root cannot point a request outside it).
    pub fn resolve(&self, rel: &str) -> Result<PathBuf, FilesError> {
        let shown = format!("{}/{rel}", self.name);
        if rel.is_empty() {
            return Ok(self.dir.clone());
        }
        check_relative(rel).map_err(|m| FilesError::refused(&shown, m))?;
        let mut at = self.dir.clone();
        for part in rel.split('/') {
            at.push(part);
            match std::fs::symlink_metadata(&at) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(FilesError::refused(
                        &shown,
                        format!("{} is a symlink; requests never follow links", at.display()),
                    ));
                }
                Ok(_) => {}
                // A path still to be created (a restore target) may end in missing parts.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(FilesError::io(at.display(), e)),
            }
        }
        Ok(at)
    }
}

/// What the walk found at one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Dir,
    Symlink(String),
    File { size: u64 },
}

#[derive(Debug, Clone)]
pub struct ScannedEntry {
    /// Relative to the top, `/`-separated; empty for a file top.
    pub path: String,
    pub abs: PathBuf,
    pub mode: u32,
    pub mtime_ns: i64,
    pub found: Found,
}

#[derive(Debug, Clone)]
pub struct Scanned {
    pub top: TopKind,
    /// Sorted by path.
    pub entries: Vec<ScannedEntry>,
    /// Paths left out, and why (special files, names that are not UTF-8, unreadable dirs).
    pub skipped: Vec<(String, String)>,
}

pub fn mtime_ns(m: &std::fs::Metadata) -> i64 {
    m.mtime().saturating_mul(1_000_000_000) + m.mtime_nsec()
}

fn entry(path: String, abs: PathBuf, m: &std::fs::Metadata) -> Result<ScannedEntry, String> {
    let ft = m.file_type();
    let found = if ft.is_symlink() {
        let target = std::fs::read_link(&abs).map_err(|e| e.to_string())?;
        Found::Symlink(
            target
                .to_str()
                .ok_or("the link's target is not UTF-8")?
                .to_owned(),
        )
    } else if ft.is_dir() {
        Found::Dir
    } else if ft.is_file() {
        Found::File { size: m.len() }
    } else {
        return Err("not a regular file, directory or symlink".into());
    };
    Ok(ScannedEntry {
        path,
        abs,
        mode: m.permissions().mode() & 0o7777,
        mtime_ns: mtime_ns(m),
        found,
    })
}

/// Whether `path` (relative, `/`-separated) matches `pattern`: `*` and `?` within one name,
/// `**` for any number of names (`secrets/**`, `**/*.age`, `**/ssh_host_*_key`).
pub fn matches_glob(pattern: &str, path: &str) -> bool {
    fn names(p: &[&str], n: &[&str]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(&"**"), _) => names(&p[1..], n) || (!n.is_empty() && names(p, &n[1..])),
            (Some(pat), Some(name)) => {
                name_matches(pat.as_bytes(), name.as_bytes()) && names(&p[1..], &n[1..])
            }
            _ => false,
        }
    }
    fn name_matches(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => {
                name_matches(&p[1..], n) || (!n.is_empty() && name_matches(p, &n[1..]))
            }
            (Some(b'?'), Some(_)) => name_matches(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => name_matches(&p[1..], &n[1..]),
            _ => false,
        }
    }
    let p: Vec<&str> = pattern.split('/').collect();
    let n: Vec<&str> = path.split('/').collect();
    names(&p, &n)
}

/// Walks `top` (a directory or one file) without following any symlink.
pub fn scan(top: &Path) -> Result<Scanned, FilesError> {
    scan_excluding(top, &[])
}

/// As [`scan`], leaving out (with a note) every entry whose path matches one of `exclude`,
/// and what is under it.
pub fn scan_excluding(top: &Path, exclude: &[String]) -> Result<Scanned, FilesError> {
    let meta = std::fs::symlink_metadata(top).map_err(|e| FilesError::io(top.display(), e))?;
    if meta.file_type().is_symlink() {
        return Err(FilesError::refused(
            top.display(),
            "is a symlink; requests never follow links",
        ));
    }
    if meta.is_file() {
        let e = entry(String::new(), top.to_owned(), &meta)
            .map_err(|m| FilesError::refused(top.display(), m))?;
        return Ok(Scanned {
            top: TopKind::File,
            entries: vec![e],
            skipped: vec![],
        });
    }
    let mut entries = Vec::new();
    let mut skipped = Vec::new();
    let excluded = |rel: &str| exclude.iter().find(|p| matches_glob(p, rel));
    let mut left_out = Vec::new();
    let walk = walkdir::WalkDir::new(top)
        .follow_links(false)
        .min_depth(1)
        .into_iter()
        .filter_entry(|e| {
            let rel = e
                .path()
                .strip_prefix(top)
                .ok()
                .and_then(|p| p.to_str())
                .unwrap_or_default();
            match excluded(rel) {
                Some(pattern) => {
                    left_out.push((rel.to_owned(), format!("a secret (matches {pattern})")));
                    false
                }
                None => true,
            }
        });
    for item in walk {
        let item = match item {
            Ok(item) => item,
            Err(e) => {
                let at = e
                    .path()
                    .and_then(|p| p.strip_prefix(top).ok())
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                skipped.push((at, e.to_string()));
                continue;
            }
        };
        let rel = item
            .path()
            .strip_prefix(top)
            .expect("walkdir stays under its top");
        let Some(rel) = rel.to_str() else {
            skipped.push((rel.display().to_string(), "the name is not UTF-8".into()));
            continue;
        };
        let rel = rel.to_owned();
        match item
            .metadata()
            .map_err(|e| e.to_string())
            .and_then(|m| entry(rel.clone(), item.path().to_owned(), &m))
        {
            Ok(e) => entries.push(e),
            Err(why) => skipped.push((rel, why)),
        }
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    skipped.extend(left_out);
    Ok(Scanned {
        top: TopKind::Dir,
        entries,
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_within_and_across_names() {
        assert!(matches_glob("secrets/**", "secrets/a/b.yaml"));
        assert!(matches_glob("secrets/**", "secrets"));
        assert!(matches_glob("**/*.age", "hosts/web/wifi.age"));
        assert!(matches_glob("**/*.age", "x.age"));
        assert!(matches_glob(
            "**/ssh_host_*_key",
            "keys/ssh_host_ed25519_key"
        ));
        assert!(!matches_glob(
            "**/ssh_host_*_key",
            "keys/ssh_host_ed25519_key.pub"
        ));
        assert!(!matches_glob("*.age", "hosts/x.age"));
        assert!(!matches_glob("secrets/**", "configuration.nix"));
    }

    #[test]
    fn requests_cannot_leave_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("m")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("escape")).unwrap();
        let root = Root::new("models", dir.path()).unwrap();
        assert!(root.resolve("m").is_ok());
        assert!(
            root.resolve("new/model").is_ok(),
            "a target still to be made"
        );
        for bad in ["../x", "/etc", "m/../../x", "escape", "escape/inner"] {
            let err = root.resolve(bad).unwrap_err();
            assert_eq!(
                err.code(),
                cim_backup_contracts::ErrorCode::Forbidden,
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn a_walk_records_links_without_following_them() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"x").unwrap();
        std::fs::create_dir_all(dir.path().join("a/empty")).unwrap();
        std::fs::write(dir.path().join("a/w.bin"), b"12345").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("a/out")).unwrap();
        let s = scan(dir.path()).unwrap();
        let paths: Vec<_> = s.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["a", "a/empty", "a/out", "a/w.bin"]);
        assert!(
            matches!(&s.entries[2].found, Found::Symlink(t) if t == outside.path().to_str().unwrap())
        );
        assert_eq!(s.entries[3].found, Found::File { size: 5 });
    }
}
