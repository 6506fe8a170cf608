//! How the CLI shows things: JSON for machines (`--json`), tables and progress bars for humans.
//! Progress is drawn from the job view's counters; on a non-TTY it becomes log lines.

use std::io::IsTerminal;

use cim_backup_contracts::views::{CatalogEntry, JobView};
use indicatif::{ProgressBar, ProgressStyle};

/// KV buckets and object stores are streams named `KV_<bucket>` and `OBJ_<bucket>`; listings show
/// them as the buckets users know.
pub fn bucket_name(stream: &str) -> String {
    match cim_backup_contracts::views::BucketRef::of(stream) {
        Some(b) if b.kind == "kv" => format!("{stream} (KV bucket {})", b.name),
        Some(b) => format!("{stream} (object store {})", b.name),
        None => stream.to_owned(),
    }
}

pub fn json(value: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("values serialize")
    );
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

pub fn job(view: &JobView) {
    println!("job       {} ({})", view.job_id, view.kind);
    println!("state     {}", view.state);
    println!("subject   {}", view.subject);
    println!("location  {}", view.location);
    let p = &view.progress;
    println!(
        "progress  {}/{} messages, {}/{} objects, {}",
        p.messages_done,
        p.messages_total,
        p.objects_done,
        p.objects_total,
        bytes(p.bytes_done)
    );
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
        println!("error     {}{at}{rec}", e.message);
    }
    for note in &view.notes {
        println!("note      {note}");
    }
    println!("accepted  {}", view.accepted_at);
    if let Some(t) = view.finished_at {
        println!("finished  {t}");
    }
}

pub fn jobs(views: &[JobView]) {
    println!(
        "{:<40} {:<8} {:<10} {:>12}  SUBJECT",
        "JOB", "KIND", "STATE", "MESSAGES"
    );
    for v in views {
        println!(
            "{:<40} {:<8} {:<10} {:>12}  {}",
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
        println!("{}  {}  {}", e.backup_id, e.created_at, e.destination);
        for s in &e.streams {
            let kind = match &s.parent {
                Some(parent) => format!("incremental on {parent}"),
                None => "full".to_owned(),
            };
            let shown = bucket_name(&s.stream);
            println!(
                "    {:<24} {:>10} msgs  seq {}..={}  {} raw -> {} stored  ({} segments, {kind})",
                shown,
                s.messages,
                s.first_seq,
                s.last_seq,
                bytes(s.raw_bytes),
                bytes(s.stored_bytes),
                s.segments
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

pub fn plan(plan: &cim_backup_contracts::replies::RestorePlan) {
    println!("dry run: nothing was written");
    println!(
        "restore   {} of backup {} -> {} ({:?})",
        plan.stream, plan.backup, plan.target, plan.method
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
        println!("times     {a} .. {b}");
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

/// Shows a job's progress: a bar on a terminal, a line per change otherwise.
pub struct Progress {
    bar: Option<ProgressBar>,
    last_line: String,
}

impl Progress {
    pub fn new(quiet: bool) -> Progress {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} {msg:<24} [{bar:40}] {pos}/{len} msgs {per_sec} eta {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar
        });
        Progress {
            bar,
            last_line: String::new(),
        }
    }

    pub fn update(&mut self, view: &JobView) {
        let p = &view.progress;
        match &self.bar {
            Some(bar) => {
                bar.set_length(p.messages_total.max(p.messages_done));
                bar.set_position(p.messages_done);
                bar.set_message(format!("{} {}", view.kind, view.state));
            }
            None => {
                let line = format!(
                    "{} {}: {}/{} messages, {} objects",
                    view.job_id, view.state, p.messages_done, p.messages_total, p.objects_done
                );
                if line != self.last_line {
                    eprintln!("{line}");
                    self.last_line = line;
                }
            }
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

/// The findings of a report, one line each.
pub fn findings(report: &cim_backup_contracts::integrity::IntegrityReport) {
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
            "  seq {:>10} {:?}{chain} {}: {}{good}",
            f.stream_seq, f.kind, f.subject, f.detail
        );
    }
    if report.findings_total > report.findings.len() as u64 {
        println!(
            "  … and {} more",
            report.findings_total - report.findings.len() as u64
        );
    }
    if let Some(p) = &report.projections {
        for f in &p.findings {
            println!(
                "  projection {}/{} [{}]: {}",
                f.bucket, f.key, f.aggregate, f.detail
            );
        }
    }
}

/// What `find-corruption-point` prints.
pub fn corruption_point(report: &cim_backup_contracts::integrity::IntegrityReport, from: u64) {
    match report.findings.first() {
        None => println!(
            "{}: no corruption from seq {from} on ({} messages checked)",
            report.stream, report.messages_checked
        ),
        Some(f) => {
            println!(
                "{}: corruption point seq {} ({:?}) on {}",
                report.stream, f.stream_seq, f.kind, f.subject
            );
            if let Some(chain) = &f.aggregate {
                println!("chain      {chain}");
            }
            match (f.last_good_seq, f.last_good_time) {
                (Some(seq), Some(t)) => println!("last good  seq {seq} at {t}"),
                (Some(seq), None) => println!("last good  seq {seq}"),
                _ => println!("last good  none in the checked range (start earlier)"),
            }
            println!("detail     {}", f.detail);
        }
    }
}
