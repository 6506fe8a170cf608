//! Whether a file is still being written: a process has it open for writing (seen in
//! `/proc/<pid>/fdinfo`, for the processes this service may look at), or it was modified in
//! the last [`QUIET`]. A training job writing a checkpoint is the case in point: its file is
//! left out with a note rather than stored half-written.

use std::path::Path;
use std::time::{Duration, SystemTime};

/// A file modified more recently than this is taken as still being written.
pub const QUIET: Duration = Duration::from_secs(2);

/// Why `path` looks like it is still being written, or `None`.
pub fn still_being_written(path: &Path) -> Option<String> {
    if let Some(writer) = open_for_writing(path) {
        return Some(writer);
    }
    let modified = std::fs::metadata(path).ok()?.modified().ok()?;
    let age = SystemTime::now()
        .duration_since(modified)
        .unwrap_or_default();
    (age < QUIET).then(|| {
        format!(
            "modified {:.1} s ago (less than {} s): still being written",
            age.as_secs_f64(),
            QUIET.as_secs()
        )
    })
}

/// Why a restore target is in use by a running program: a held lock file, or open or mapped
/// files inside it.
pub fn target_in_use(target: &Path) -> Option<String> {
    if crate::prometheus::locked_by_a_running_program(target) {
        return Some("a running program holds its lock file".into());
    }
    in_use_by(target)
}

/// A process (not this one) that holds something inside `dir` open or mapped: a program
/// running on a data directory (Prometheus keeps its WAL open and its head chunks mapped).
pub fn in_use_by(dir: &Path) -> Option<String> {
    let dir = dir.canonicalize().ok()?;
    let me = std::process::id();
    let inside = |p: &Path| p.starts_with(&dir);
    for proc_entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = proc_entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let by_fd = std::fs::read_dir(proc_entry.path().join("fd"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .any(|target| inside(&target));
        let by_map = || {
            std::fs::read_to_string(proc_entry.path().join("maps"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.split_whitespace().nth(5))
                .any(|file| inside(Path::new(file)))
        };
        if by_fd || by_map() {
            let comm = std::fs::read_to_string(proc_entry.path().join("comm")).unwrap_or_default();
            return Some(format!(
                "process {pid} ({}) has files in it open",
                comm.trim()
            ));
        }
    }
    None
}

/// A process that holds `path` open for writing.
fn open_for_writing(path: &Path) -> Option<String> {
    let target = path.canonicalize().ok()?;
    for proc_entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = proc_entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(proc_entry.path().join("fd")) else {
            continue; // not ours to look at
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).ok().as_deref() != Some(target.as_path()) {
                continue;
            }
            let info =
                std::fs::read_to_string(proc_entry.path().join("fdinfo").join(fd.file_name()))
                    .unwrap_or_default();
            let flags = info
                .lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
                .unwrap_or(0);
            let mode = flags & libc::O_ACCMODE as u32;
            if mode == libc::O_WRONLY as u32 || mode == libc::O_RDWR as u32 {
                let comm =
                    std::fs::read_to_string(proc_entry.path().join("comm")).unwrap_or_default();
                return Some(format!(
                    "open for writing by process {pid} ({}): still being written",
                    comm.trim()
                ));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_open_for_writing_is_busy_and_a_closed_old_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("step-10.ckpt");
        let f = std::fs::File::create(&path).unwrap();
        let why = still_being_written(&path).unwrap();
        assert!(why.contains("open for writing by process"), "{why}");
        drop(f);
        let old = SystemTime::now() - Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert_eq!(still_being_written(&path), None);
        std::fs::write(&path, b"new").unwrap();
        assert!(still_being_written(&path).unwrap().contains("modified"));
    }
}
