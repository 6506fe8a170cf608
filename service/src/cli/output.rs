//! How the CLI shows things: JSON for machines (`--json`, one document per invocation),
//! tables, progress and a closing summary for humans.
//!
//! Rules: times are RFC 3339; kinds, methods and states are shown by their wire names
//! (`cid_mismatch`, `server-archive`), never as Rust names; sizes are binary units with one
//! decimal, rates at most three significant digits.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use cim_backup_contracts::events::format_time;
use cim_backup_contracts::integrity::IntegrityReport;
use cim_backup_contracts::views::{CatalogEntry, JobKind, JobState, JobView};
use indicatif::{ProgressBar, ProgressStyle};
use time::OffsetDateTime;

/// Whether this invocation has printed its JSON document.
static PRINTED: AtomicBool = AtomicBool::new(false);

/// Prints the invocation's JSON document.
pub fn json(value: &impl serde::Serialize) {
    PRINTED.store(true, Ordering::SeqCst);
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("values serialize")
    );
}

/// Whether a JSON document was printed already (an error is then not printed as a second one:
/// the document and the exit code say it).
pub fn printed() -> bool {
    PRINTED.load(Ordering::SeqCst)
}

/// A value by its wire name (`"cid_mismatch"`, `"server-archive"`).
pub fn name(value: &impl serde::Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

pub fn time(t: OffsetDateTime) -> String {
    format_time(t)
}

/// KV buckets and object stores are streams named `KV_<bucket>` and `OBJ_<bucket>`; listings show
/// them as the buckets users know.
pub fn bucket_name(stream: &str) -> String {
    match cim_backup_contracts::views::BucketRef::of(stream) {
        Some(b) if b.kind == "kv" => format!("{stream} (KV bucket {})", b.name),
        Some(b) => format!("{stream} (object store {})", b.name),
        None => stream.to_owned(),
    }
}

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `n` things per second with at most three significant digits: `950`, `12.3k`, `1.25M`.
pub fn rate(per_second: f64) -> String {
    let (value, suffix) = match per_second {
        v if v >= 1e6 => (v / 1e6, "M"),
        v if v >= 1e3 => (v / 1e3, "k"),
        v => (v, ""),
    };
    let digits = if value >= 100.0 || suffix.is_empty() {
        0
    } else if value >= 10.0 {
        1
    } else {
        2
    };
    format!("{value:.digits$}{suffix}")
}

/// Bytes per second in MB/s (decimal, as disks and networks are quoted), one decimal.
pub fn mb_per_s(bytes: u64, seconds: f64) -> String {
    format!("{:.1} MB/s", bytes as f64 / 1e6 / seconds.max(1e-9))
}

/// What a job kind counts as its objects.
fn objects_word(kind: JobKind) -> &'static str {
    match kind {
        JobKind::Backup | JobKind::Restore => "segments",
        JobKind::Verify => "objects",
        JobKind::Check => "streams",
        JobKind::Repair => "steps",
        JobKind::TreeRestore => "trees",
        JobKind::ProjectionSnapshot | JobKind::ProjectionRestore | JobKind::ProjectionClear => {
            "snapshots"
        }
        JobKind::ProjectionReplay | JobKind::ProjectionRebuild => "projectors caught up",
        JobKind::ConfigImport => "resources",
        JobKind::KeyRestore => "keys",
    }
}

/// `3/10 messages, 1/4 segments`; a backup of file trees only: `2/2 objects` (its trees and
/// its manifest), since it has no messages to count.
fn counts(view: &JobView) -> String {
    let p = &view.progress;
    if view.kind == JobKind::Backup && p.messages_total == 0 && p.messages_done == 0 {
        return format!("{}/{} objects", p.objects_done, p.objects_total);
    }
    if matches!(
        view.kind,
        JobKind::ProjectionSnapshot | JobKind::ProjectionRestore | JobKind::ProjectionClear
    ) {
        return format!(
            "{}/{} keys, {} snapshots",
            p.messages_done, p.messages_total, p.objects_done
        );
    }
    if matches!(view.kind, JobKind::ConfigImport | JobKind::KeyRestore) {
        return format!(
            "{}/{} {}",
            p.objects_done,
            p.objects_total,
            objects_word(view.kind)
        );
    }
    if matches!(
        view.kind,
        JobKind::ProjectionReplay | JobKind::ProjectionRebuild
    ) {
        return format!(
            "{}/{} events, {}/{} projectors caught up",
            p.messages_done, p.messages_total, p.objects_done, p.objects_total
        );
    }
    format!(
        "{}/{} messages, {}/{} {}",
        p.messages_done,
        p.messages_total,
        p.objects_done,
        p.objects_total,
        objects_word(view.kind)
    )
}

pub fn job(view: &JobView) {
    println!("job       {} ({})", view.job_id, view.kind);
    println!("state     {}", view.state);
    println!("subject   {}", view.subject);
    if !view.location.is_empty() {
        println!("location  {}", view.location);
    }
    let p = &view.progress;
    let mut progress = counts(view);
    if p.bytes_total > 0 || p.bytes_done > 0 {
        progress.push_str(&format!(
            ", {}/{}",
            bytes(p.bytes_done),
            bytes(p.bytes_total)
        ));
    }
    println!("progress  {progress}");
    if view.stored_bytes > 0 {
        println!("stored    {}", bytes(view.stored_bytes));
    }
    if let Some(id) = &view.backup_id {
        println!("backup    {id}");
    }
    if let Some(e) = &view.error {
        let at = e
            .object
            .as_deref()
            .map(|o| format!(" at {o}"))
            .unwrap_or_default();
        let rec = e.record.map(|r| format!(" record {r}")).unwrap_or_default();
        println!("error     {}{at}{rec} ({})", e.message, name(&e.code));
    }
    for note in &view.notes {
        println!("note      {note}");
    }
    println!("accepted  {}", time(view.accepted_at));
    if let Some(t) = view.started_at {
        println!("started   {}", time(t));
    }
    if let Some(t) = view.finished_at {
        println!("finished  {}", time(t));
    }
}

/// The closing line of a job followed to its end, like natscli's and restic's: how long it
/// took and what it moved.
pub fn summary(view: &JobView) -> Option<String> {
    let finished = view.finished_at?;
    let seconds =
        ((finished - view.started_at.unwrap_or(view.accepted_at)).as_seconds_f64()).max(0.001);
    let p = &view.progress;
    let per_second = format!("{} msg/s", rate(p.messages_done as f64 / seconds));
    let line = match (view.state, view.kind) {
        (JobState::Completed, JobKind::Backup) => {
            let ratio = match view.stored_bytes {
                0 => String::new(),
                stored => format!(" ({:.1}x)", p.bytes_done as f64 / stored as f64),
            };
            // A backup of file trees only counts bytes (its messages are none).
            let what = if p.messages_done == 0 && p.bytes_done > 0 {
                let trees = p.objects_done.saturating_sub(1);
                format!("{trees} tree{}", if trees == 1 { "" } else { "s" })
            } else {
                format!("{} messages", p.messages_done)
            };
            let per_second = if p.messages_done == 0 {
                String::new()
            } else {
                format!("{per_second}, ")
            };
            format!(
                "backed up {what} in {seconds:.1} s: {} read, {} stored{ratio}, {per_second}{}",
                bytes(p.bytes_done),
                bytes(view.stored_bytes),
                mb_per_s(p.bytes_done, seconds)
            )
        }
        (JobState::Completed, JobKind::Restore) => format!(
            "restored {} messages ({}) in {seconds:.1} s: {} segments read, {per_second}, {}",
            p.messages_done,
            view.subject,
            p.objects_done,
            mb_per_s(p.bytes_done, seconds)
        ),
        (JobState::Completed, JobKind::Verify) => format!(
            "verified {} objects, {} records, {} in {seconds:.1} s, {}",
            p.objects_done,
            p.messages_done,
            bytes(p.bytes_done),
            mb_per_s(p.bytes_done, seconds)
        ),
        (JobState::Completed, JobKind::TreeRestore) => format!(
            "restored {} trees, {} files, {} in {seconds:.1} s, every file checked against its sha256: {}",
            p.objects_done,
            p.messages_done,
            bytes(p.bytes_done),
            mb_per_s(p.bytes_done, seconds)
        ),
        (JobState::Completed, JobKind::ProjectionSnapshot) => format!(
            "snapshot of {} keys ({}) in {seconds:.1} s: {}",
            view.snapshots.iter().map(|s| s.keys()).sum::<u64>(),
            bytes(view.snapshots.iter().map(|s| s.bytes()).sum()),
            view.snapshots
                .iter()
                .map(|s| format!("{} = {}", s.domain, s.id))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        (JobState::Completed, JobKind::ProjectionRestore) => {
            let sum = |f: fn(&cim_backup_contracts::projections::ModelRestored) -> u64| {
                view.restored.iter().map(f).sum::<u64>()
            };
            format!(
                "restored {} keys, {} unchanged, {} removed in {seconds:.1} s{}; safety snapshot {}",
                sum(|m| m.restored),
                sum(|m| m.unchanged),
                sum(|m| m.removed),
                if view.verified == Some(true) {
                    ", verified against the snapshot's digests"
                } else {
                    ""
                },
                view.snapshots
                    .first()
                    .map(|s| s.id.to_string())
                    .unwrap_or_default()
            )
        }
        (JobState::Completed, JobKind::ProjectionClear) => format!(
            "cleared {} keys of {} read models in {seconds:.1} s; {}",
            view.restored.iter().map(|m| m.removed).sum::<u64>(),
            view.restored.len(),
            match view.snapshots.first() {
                Some(s) => format!("safety snapshot {}", s.id),
                None => "no safety snapshot (as asked)".to_owned(),
            }
        ),
        (JobState::Completed, JobKind::ProjectionReplay | JobKind::ProjectionRebuild) => {
            let cleared: u64 = view.restored.iter().map(|m| m.removed).sum();
            format!(
                "{}{} projector{} caught up after {} events in {seconds:.1} s ({:.0} events/s){}",
                if view.kind == JobKind::ProjectionRebuild {
                    format!("cleared {cleared} keys, then ")
                } else {
                    String::new()
                },
                p.objects_done,
                if p.objects_done == 1 { "" } else { "s" },
                p.messages_done,
                p.messages_done as f64 / seconds.max(1e-9),
                match view.snapshots.first() {
                    Some(_) => format!(
                        "; safety snapshots {}",
                        view.snapshots
                            .iter()
                            .map(|s| s.id.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    None if view.kind == JobKind::ProjectionRebuild => {
                        "; no safety snapshot (as asked)".to_owned()
                    }
                    None => String::new(),
                }
            )
        }
        (JobState::Completed, JobKind::ConfigImport) => {
            format!("applied {} resources in {seconds:.1} s", p.objects_done)
        }
        (JobState::Completed, JobKind::KeyRestore) => format!(
            "restored 1 key in {seconds:.1} s; {}",
            view.notes.last().cloned().unwrap_or_default()
        ),
        (JobState::Completed, _) => format!(
            "{} completed in {seconds:.1} s: {} messages, {per_second}",
            view.kind, p.messages_done
        ),
        (state, kind) => format!("{kind} {state} after {seconds:.1} s: {}", counts(view)),
    };
    Some(line)
}

pub fn jobs(views: &[JobView]) {
    println!(
        "{:<42} {:<19} {:<10} {:>12}  SUBJECT",
        "JOB", "KIND", "STATE", "MESSAGES"
    );
    for v in views {
        println!(
            "{:<42} {:<19} {:<10} {:>12}  {}",
            v.job_id, v.kind, v.state, v.progress.messages_done, v.subject
        );
    }
}

pub fn backups(entries: &[CatalogEntry]) {
    if entries.is_empty() {
        println!("no backups");
        return;
    }
    for e in entries {
        println!("{}  {}  {}", e.backup_id, time(e.created_at), e.destination);
        for s in &e.streams {
            let kind = match &s.parent {
                Some(parent) => format!("incremental on {parent}"),
                None => "full".to_owned(),
            };
            println!(
                "    {:<24} {:>10} msgs  seq {}..={}  {} raw -> {} stored  ({} segments, {kind})",
                bucket_name(&s.stream),
                s.messages,
                s.first_seq,
                s.last_seq,
                bytes(s.raw_bytes),
                bytes(s.stored_bytes),
                s.segments
            );
        }
        for t in &e.trees {
            println!(
                "    {:<24} {:>6} files  {} -> {} new stored  ({} of {} chunks new){}",
                t.name,
                t.files,
                bytes(t.bytes),
                bytes(t.stored_bytes),
                t.new_chunks,
                t.chunks,
                match t.skipped.len() {
                    0 => String::new(),
                    n => format!("  {n} file(s) left out"),
                }
            );
        }
        println!(
            "    {}, {}",
            e.compression,
            if e.encrypted {
                "encrypted"
            } else {
                "not encrypted"
            }
        );
    }
}

/// `list-gpu-models`: one line per model, then the files whose format was recognised.
pub fn models(instance: &str, models: &[cim_backup_contracts::files::ModelInfo]) {
    if models.is_empty() {
        println!("no models (instance {instance})");
        return;
    }
    println!(
        "{:<28} {:>10} {:>6}  {:<20}  {:<20}  changed",
        "MODEL", "SIZE", "FILES", "MODIFIED", "LAST BACKUP"
    );
    for m in models {
        let last = m.last_backup.as_ref().map_or("never".to_owned(), |b| {
            time(b.created_at.replace_nanosecond(0).unwrap_or(b.created_at))
        });
        let changed = match m.changed_since_backup {
            Some(true) => "yes",
            Some(false) => "no",
            None => "-",
        };
        println!(
            "{:<28} {:>10} {:>6}  {:<20}  {:<20}  {changed}",
            m.id,
            bytes(m.bytes),
            m.files,
            time(m.modified.replace_nanosecond(0).unwrap_or(m.modified)),
            last
        );
        for f in &m.formats {
            println!("    {}: {}", f.path, f.format);
        }
    }
}

pub fn plan(plan: &cim_backup_contracts::replies::RestorePlan) {
    println!("dry run: nothing was written");
    println!(
        "restore   {} of backup {} -> {} (method {})",
        plan.stream,
        plan.backup,
        plan.target,
        name(&plan.method)
    );
    println!(
        "chain     {} backup(s), {} segment(s) to fetch",
        plan.chain.len(),
        plan.segments
    );
    println!("messages  {} ({})", plan.messages, bytes(plan.bytes));
    if let (Some(a), Some(b)) = (plan.first_seq, plan.last_seq) {
        println!("sequences {a}..={b}");
    }
    if let (Some(a), Some(b)) = (plan.first_time, plan.last_time) {
        println!("times     {} .. {}", time(a), time(b));
    }
    for c in &plan.consumers {
        println!(
            "consumer  {} starts at seq {} ({} redeliveries)",
            c.name, c.start_seq, c.redeliveries
        );
    }
    for note in &plan.notes {
        println!("note      {note}");
    }
}

/// What a restore-from-point would do (its dry run).
pub fn repair_plan(preview: &cim_backup_contracts::replies::RepairPreview) {
    let p = &preview.plan;
    println!("dry run: nothing was changed");
    println!(
        "repair    {} from seq {} with backup {} ({} backup(s) in its chain)",
        p.stream,
        p.from_seq,
        preview.backup,
        preview.chain.len()
    );
    println!(
        "live      {} messages, seq {}..={}",
        p.live_messages, p.live_first_seq, p.live_last_seq
    );
    println!(
        "keeps     {} live messages before seq {}",
        p.kept_live, p.from_seq
    );
    match p.from_backup {
        0 => println!("takes     no backup records"),
        n => println!(
            "takes     {n} backup records, seq {}..={}",
            p.backup_first_seq, p.backup_last_seq
        ),
    }
    println!(
        "replaces  {} live messages from seq {} on",
        p.replaced, p.from_seq
    );
    if p.kept_newer > 0 {
        println!(
            "keeps     {} live messages newer than the backup",
            p.kept_newer
        );
    }
    println!(
        "result    {} messages, last seq {}",
        p.messages(),
        p.target_last_seq
    );
    println!(
        "streams   safety copy {}, staging {}",
        p.safety_copy, p.staging
    );
    println!(
        "checked   {}",
        if p.chain_checked {
            "counts and CID chains"
        } else {
            "counts only (no chain profile)"
        }
    );
    for note in &p.notes {
        println!("note      {note}");
    }
}

/// Shows a job's progress while it is followed: a bar on a terminal (messages, bytes and
/// rates in its message), a line per change otherwise.
pub struct Progress {
    bar: Option<ProgressBar>,
    last_line: String,
    started: Instant,
}

impl Progress {
    pub fn new(quiet: bool) -> Progress {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} {prefix} [{bar:30}] {pos}/{len} msgs {msg} eta {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar
        });
        Progress {
            bar,
            last_line: String::new(),
            started: Instant::now(),
        }
    }

    pub fn update(&mut self, view: &JobView) {
        let p = &view.progress;
        let seconds = self.started.elapsed().as_secs_f64().max(0.001);
        let moved = if p.bytes_total > 0 || p.bytes_done > 0 {
            format!(
                " {}/{} {}",
                bytes(p.bytes_done),
                bytes(p.bytes_total),
                mb_per_s(p.bytes_done, seconds)
            )
        } else {
            String::new()
        };
        match &self.bar {
            Some(bar) => {
                bar.set_length(p.messages_total.max(p.messages_done));
                bar.set_position(p.messages_done);
                bar.set_prefix(format!("{} {}", view.kind, view.state));
                bar.set_message(format!(
                    "{} msg/s{moved}",
                    rate(p.messages_done as f64 / seconds)
                ));
            }
            None => {
                let line = format!("{} {}: {}{moved}", view.job_id, view.state, counts(view));
                if line != self.last_line {
                    eprintln!("{line}");
                    self.last_line = line;
                }
            }
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// The findings of a report, one line each.
pub fn findings(report: &IntegrityReport) {
    for f in &report.findings {
        let chain = f
            .aggregate
            .as_deref()
            .map(|a| format!(" [{a}]"))
            .unwrap_or_default();
        let good = f
            .last_good_seq
            .map(|s| format!(" (last good seq {s})"))
            .unwrap_or_default();
        println!(
            "  seq {:>10} {}{chain} {}: {}{good}",
            f.stream_seq,
            name(&f.kind),
            f.subject,
            f.detail
        );
    }
    if report.findings_total > report.findings.len() as u64 {
        println!(
            "  … and {} more",
            report.findings_total - report.findings.len() as u64
        );
    }
    if let Some(p) = &report.projections {
        for bucket in &p.missing_buckets {
            println!("  projection bucket {bucket} does not exist");
        }
        for f in &p.findings {
            println!(
                "  projection {}/{} [{}]: {}",
                f.bucket, f.key, f.aggregate, f.detail
            );
        }
    }
}

/// What `find-corruption-point` prints: the point, or that the stated range is clean (and how
/// far that goes when the walk was anchored).
pub fn corruption_point(report: &IntegrityReport) {
    match report.findings.first() {
        None => println!(
            "{}: no corruption in {} ({} messages in {} chains checked)",
            report.stream,
            report.range_text(),
            report.messages_checked,
            report.chains
        ),
        Some(f) => {
            println!(
                "{}: corruption point seq {} ({}) on {}",
                report.stream,
                f.stream_seq,
                name(&f.kind),
                f.subject
            );
            if let Some(chain) = &f.aggregate {
                println!("chain      {chain}");
            }
            match (f.last_good_seq, f.last_good_time) {
                (Some(seq), Some(t)) => println!("last good  seq {seq} at {}", time(t)),
                (Some(seq), None) => println!("last good  seq {seq}"),
                _ => println!("last good  none in the checked range (start earlier)"),
            }
            println!("detail     {}", f.detail);
            println!("checked    {}", report.range_text());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_have_three_significant_digits_at_most() {
        assert_eq!(rate(950.4), "950");
        assert_eq!(rate(12_345.678), "12.3k");
        assert_eq!(rate(130_482.1), "130k");
        assert_eq!(rate(1_254_000.0), "1.25M");
        assert_eq!(mb_per_s(86_500_000, 1.0), "86.5 MB/s");
    }

    #[test]
    fn wire_names_not_rust_names() {
        use cim_backup_contracts::events::RestoreMethod;
        use cim_backup_contracts::integrity::FindingKind;
        assert_eq!(name(&RestoreMethod::ServerArchive), "server-archive");
        assert_eq!(name(&FindingKind::OutOfOrder), "out_of_order");
    }
}
