//! The `backup` aggregate: one job that archives one or more streams to one destination.
//!
//! Its invariants are what make "completed" trustworthy: segments of a stream are recorded in
//! sequence order without overlap and inside the cut, and a completion is accepted only if its
//! per-stream totals equal what the recorded segments add up to — a manifest that claims more
//! (or less) than was durably stored is rejected.

use std::collections::HashSet;

use cim_backup_contracts::events::{
    BackupAccepted, BackupCompleted, BackupEvent, BackupMode, BackupStarted, CancelRequested,
    ENCRYPTION_AGE, JobCancelled, JobEvent, JobFailed, PartInfo, SegmentInfo, SegmentStored,
    SnapshotPartStored, SnapshotTaken, StreamStart, StreamSummary,
};
use cim_backup_contracts::files::{TreeProgressed, TreeStored, TreeSummary};
use cim_backup_contracts::subjects::is_stream_name;
use cim_backup_contracts::views::{JobKind, JobState};

use crate::aggregate::Aggregate;
use crate::error::DomainError;
use crate::lifecycle::Lifecycle;

/// Highest zstd level we accept (levels above 19 need huge windows; not worth it for events).
pub const MAX_ZSTD_LEVEL: i32 = 19;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupCommand {
    Accept(BackupAccepted),
    Start(BackupStarted),
    RecordSegment(SegmentStored),
    RecordSnapshot(SnapshotTaken),
    RecordPart(SnapshotPartStored),
    RecordTree(TreeStored),
    RecordTreeProgress(TreeProgressed),
    Complete(BackupCompleted),
    Fail(JobFailed),
    RequestCancel(CancelRequested),
    ConfirmCancel(JobCancelled),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackupJob {
    pub lifecycle: Lifecycle,
    pub spec: Option<BackupAccepted>,
    pub started: Option<BackupStarted>,
    pub segments: Vec<SegmentStored>,
    /// Snapshot mode: the snapshots taken and their stored parts.
    pub snapshots: Vec<SnapshotTaken>,
    pub parts: Vec<SnapshotPartStored>,
    /// File trees stored so far, in request order.
    pub trees: Vec<TreeSummary>,
    pub completed: Option<BackupCompleted>,
    pub failure: Option<JobFailed>,
}

impl BackupJob {
    /// Segments already stored for `stream`, in order.
    pub fn segments_of<'a>(&'a self, stream: &'a str) -> impl Iterator<Item = &'a SegmentInfo> {
        self.segments
            .iter()
            .filter(move |s| s.stream == stream)
            .map(|s| &s.segment)
    }

    /// Last sequence already stored for `stream`: a resumed job continues after it.
    pub fn stored_up_to(&self, stream: &str) -> Option<u64> {
        self.segments_of(stream).last().map(|s| s.last_seq)
    }

    /// The start of `stream` in this backup (cut, config, parent, consumers).
    pub fn stream_start(&self, stream: &str) -> Option<&StreamStart> {
        self.started
            .as_ref()?
            .streams
            .iter()
            .find(|s| s.cut.stream == stream)
    }

    /// The next sequence to read for `stream`: after the last stored segment, else from the
    /// start of this backup's range (after the parent's cut for an incremental backup).
    pub fn resume_from(&self, stream: &str) -> Option<u64> {
        let start = self.stream_start(stream)?;
        Some(
            self.stored_up_to(stream)
                .map_or(start.from_seq(), |s| s + 1),
        )
    }

    fn mode(&self) -> BackupMode {
        self.spec.as_ref().map(|s| s.mode).unwrap_or_default()
    }

    /// The snapshot taken of `stream` (snapshot mode).
    pub fn snapshot_of(&self, stream: &str) -> Option<&SnapshotTaken> {
        self.snapshots.iter().find(|s| s.stream == stream)
    }

    /// The stored parts of `stream`'s snapshot, in order (snapshot mode).
    pub fn parts_of<'a>(&'a self, stream: &'a str) -> impl Iterator<Item = &'a PartInfo> {
        self.parts
            .iter()
            .filter(move |p| p.stream == stream)
            .map(|p| &p.part)
    }

    /// Per-stream totals of what is stored, in cut order. A stream with no segments (empty,
    /// or nothing new since its parent) has `last_seq < first_seq`. In snapshot mode the
    /// totals are the snapshot's and the "segments" its parts.
    pub fn summaries(&self) -> Vec<StreamSummary> {
        let Some(started) = &self.started else {
            return Vec::new();
        };
        if self.mode() == BackupMode::Snapshot {
            return started
                .streams
                .iter()
                .map(|start| {
                    let stream = &start.cut.stream;
                    let taken = self.snapshot_of(stream);
                    let parts: Vec<&PartInfo> = self.parts_of(stream).collect();
                    StreamSummary {
                        stream: stream.clone(),
                        first_seq: taken.map_or(start.cut.first_seq, |t| t.first_seq),
                        last_seq: taken.map_or(start.cut.last_seq, |t| t.last_seq),
                        messages: taken.map_or(0, |t| t.messages),
                        raw_bytes: parts.iter().map(|p| p.raw_bytes).sum(),
                        stored_bytes: parts.iter().map(|p| p.stored_bytes).sum(),
                        segments: parts.len() as u64,
                        parent: None,
                    }
                })
                .collect();
        }
        started
            .streams
            .iter()
            .map(|start| {
                let stream = &start.cut.stream;
                let segments: Vec<&SegmentInfo> = self.segments_of(stream).collect();
                let from = start.from_seq();
                StreamSummary {
                    stream: stream.clone(),
                    first_seq: segments.first().map_or(from, |s| s.first_seq),
                    last_seq: segments.last().map_or(from - 1, |s| s.last_seq),
                    messages: segments.iter().map(|s| s.records).sum(),
                    raw_bytes: segments.iter().map(|s| s.raw_bytes).sum(),
                    stored_bytes: segments.iter().map(|s| s.stored_bytes).sum(),
                    segments: segments.len() as u64,
                    parent: start.parent.as_ref().map(|p| p.backup),
                }
            })
            .collect()
    }

    /// The next tree to store: the first requested one not recorded yet.
    pub fn next_tree(&self) -> Option<&cim_backup_contracts::files::TreeRequest> {
        self.spec.as_ref()?.trees.get(self.trees.len())
    }

    fn validate_spec(spec: &BackupAccepted) -> Result<(), DomainError> {
        if spec.streams.is_empty() && spec.trees.is_empty() {
            return Err(DomainError::invalid(
                "streams: at least one stream (or tree) is required",
            ));
        }
        let mut names = HashSet::new();
        for tree in &spec.trees {
            if !names.insert(tree.name()) {
                return Err(DomainError::invalid(format!(
                    "trees: {} is listed twice",
                    cim_backup_contracts::text::echo(&tree.name())
                )));
            }
        }
        if !spec.trees.is_empty() && spec.mode == BackupMode::Snapshot {
            return Err(DomainError::invalid(
                "mode: snapshot applies to streams; a backup of trees stores messages mode",
            ));
        }
        let mut seen = HashSet::new();
        for stream in &spec.streams {
            if !is_stream_name(stream) {
                return Err(DomainError::invalid(format!(
                    "streams: {} is not a valid stream name",
                    cim_backup_contracts::text::echo(stream)
                )));
            }
            if !seen.insert(stream) {
                return Err(DomainError::invalid(format!(
                    "streams: {} is listed twice",
                    cim_backup_contracts::text::echo(stream)
                )));
            }
        }
        let level = spec.compression.level;
        if spec.compression.algorithm == cim_backup_contracts::commands::CompressionAlgorithm::Zstd
            && !(1..=MAX_ZSTD_LEVEL).contains(&level)
        {
            return Err(DomainError::invalid(format!(
                "zstd_level: {level} is outside 1..={MAX_ZSTD_LEVEL}"
            )));
        }
        if spec.segment_bytes == 0 {
            return Err(DomainError::invalid("segment_bytes: must be positive"));
        }
        if let Some(encryption) = &spec.encryption
            && (encryption.scheme != ENCRYPTION_AGE || encryption.recipients.is_empty())
        {
            return Err(DomainError::invalid(format!(
                "encrypt: needs scheme {ENCRYPTION_AGE:?} and at least one recipient"
            )));
        }
        Ok(())
    }

    fn validate_cut(&self, started: &BackupStarted) -> Result<(), DomainError> {
        let spec = self.spec.as_ref().ok_or(DomainError::NotCreated)?;
        let names: Vec<&String> = started.streams.iter().map(|s| &s.cut.stream).collect();
        if names != spec.streams.iter().collect::<Vec<_>>() {
            return Err(DomainError::invalid(format!(
                "cut: covers {names:?}, the job backs up {:?}",
                spec.streams
            )));
        }
        if (!spec.incremental || spec.mode == BackupMode::Snapshot)
            && let Some(s) = started.streams.iter().find(|s| s.parent.is_some())
        {
            return Err(DomainError::invalid(format!(
                "cut: {} has a parent in a full backup",
                s.cut.stream
            )));
        }
        Ok(())
    }

    fn validate_snapshot(&self, taken: &SnapshotTaken) -> Result<(), DomainError> {
        if self.mode() != BackupMode::Snapshot {
            return Err(DomainError::invalid(
                "snapshot: this backup stores messages, not snapshots",
            ));
        }
        if self.stream_start(&taken.stream).is_none() {
            return Err(DomainError::invalid(format!(
                "snapshot: stream {:?} is not part of this backup",
                taken.stream
            )));
        }
        if self.snapshot_of(&taken.stream).is_some() {
            return Err(DomainError::invalid(format!(
                "snapshot: {} was already taken",
                taken.stream
            )));
        }
        Ok(())
    }

    fn validate_part(&self, stored: &SnapshotPartStored) -> Result<(), DomainError> {
        if self.snapshot_of(&stored.stream).is_none() {
            return Err(DomainError::invalid(format!(
                "part: no snapshot of {:?} was taken",
                stored.stream
            )));
        }
        if stored.part.raw_bytes == 0 {
            return Err(DomainError::invalid("part: must hold bytes"));
        }
        Ok(())
    }

    fn validate_segment(&self, stored: &SegmentStored) -> Result<(), DomainError> {
        if self.mode() != BackupMode::Messages {
            return Err(DomainError::invalid(
                "segment: a snapshot backup stores parts, not segments",
            ));
        }
        let seg = &stored.segment;
        let Some(start) = self.stream_start(&stored.stream) else {
            return Err(DomainError::invalid(format!(
                "segment: stream {:?} is not part of this backup",
                stored.stream
            )));
        };
        let cut = &start.cut;
        if seg.first_seq < start.from_seq() {
            return Err(DomainError::invalid(format!(
                "segment: starts at {} before this backup's range, which begins at {}",
                seg.first_seq,
                start.from_seq()
            )));
        }
        if seg.records == 0 || seg.first_seq > seg.last_seq {
            return Err(DomainError::invalid(
                "segment: must hold at least one record",
            ));
        }
        if seg.records > seg.last_seq - seg.first_seq + 1 {
            return Err(DomainError::invalid(format!(
                "segment: {} records cannot fit sequences {}..={}",
                seg.records, seg.first_seq, seg.last_seq
            )));
        }
        if seg.last_seq > cut.last_seq {
            return Err(DomainError::invalid(format!(
                "segment: ends at {} beyond the cut at {} of {}",
                seg.last_seq, cut.last_seq, stored.stream
            )));
        }
        if let Some(prev) = self.stored_up_to(&stored.stream)
            && seg.first_seq <= prev
        {
            return Err(DomainError::invalid(format!(
                "segment: starts at {} but {} is stored up to {prev}",
                seg.first_seq, stored.stream
            )));
        }
        Ok(())
    }

    fn validate_tree(&self, stored: &TreeStored) -> Result<(), DomainError> {
        let Some(next) = self.next_tree() else {
            return Err(DomainError::invalid(format!(
                "tree: {} is not a tree this backup still has to store",
                cim_backup_contracts::text::echo(&stored.tree.name)
            )));
        };
        if next.name() != stored.tree.name {
            return Err(DomainError::invalid(format!(
                "tree: {} recorded where {} comes next",
                cim_backup_contracts::text::echo(&stored.tree.name),
                cim_backup_contracts::text::echo(&next.name())
            )));
        }
        Ok(())
    }

    fn validate_completion(&self, completed: &BackupCompleted) -> Result<(), DomainError> {
        if completed.trees != self.trees {
            return Err(DomainError::invalid(format!(
                "completion: trees {:?} differ from the stored trees {:?}",
                completed.trees.iter().map(|t| &t.name).collect::<Vec<_>>(),
                self.trees.iter().map(|t| &t.name).collect::<Vec<_>>()
            )));
        }
        if let Some(missing) = self.next_tree() {
            return Err(DomainError::invalid(format!(
                "completion: tree {} was not stored",
                cim_backup_contracts::text::echo(&missing.name())
            )));
        }
        if self.mode() == BackupMode::Snapshot
            && let Some(start) = self
                .started
                .iter()
                .flat_map(|s| &s.streams)
                .find(|s| self.snapshot_of(&s.cut.stream).is_none())
        {
            return Err(DomainError::invalid(format!(
                "completion: no snapshot of {} was taken",
                start.cut.stream
            )));
        }
        let expected = self.summaries();
        if completed.streams != expected {
            return Err(DomainError::invalid(format!(
                "completion: manifest totals {:?} differ from the stored segments {:?}",
                completed.streams, expected
            )));
        }
        Ok(())
    }
}

impl Aggregate for BackupJob {
    const KIND: JobKind = JobKind::Backup;
    type Command = BackupCommand;
    type Event = BackupEvent;

    fn handle(&self, command: BackupCommand) -> Result<Vec<BackupEvent>, DomainError> {
        let lc = &self.lifecycle;
        let event = match command {
            BackupCommand::Accept(spec) => {
                lc.require_new()?;
                Self::validate_spec(&spec)?;
                BackupEvent::BackupAccepted(spec)
            }
            BackupCommand::Start(started) => {
                lc.require(JobState::Accepted, "start")?;
                self.validate_cut(&started)?;
                BackupEvent::BackupStarted(started)
            }
            BackupCommand::RecordSegment(stored) => {
                lc.require(JobState::Running, "record a segment of")?;
                self.validate_segment(&stored)?;
                BackupEvent::SegmentStored(stored)
            }
            BackupCommand::RecordSnapshot(taken) => {
                lc.require(JobState::Running, "record a snapshot of")?;
                self.validate_snapshot(&taken)?;
                BackupEvent::SnapshotTaken(taken)
            }
            BackupCommand::RecordPart(stored) => {
                lc.require(JobState::Running, "record a snapshot part of")?;
                self.validate_part(&stored)?;
                BackupEvent::SnapshotPartStored(stored)
            }
            BackupCommand::RecordTree(stored) => {
                lc.require(JobState::Running, "record a tree of")?;
                self.validate_tree(&stored)?;
                BackupEvent::TreeStored(stored)
            }
            BackupCommand::RecordTreeProgress(progress) => {
                lc.require(JobState::Running, "record progress of")?;
                if self.next_tree().map(|t| t.name()) != Some(progress.name.clone()) {
                    return Err(DomainError::invalid(format!(
                        "tree progress: {} is not the tree being stored",
                        cim_backup_contracts::text::echo(&progress.name)
                    )));
                }
                BackupEvent::TreeProgressed(progress)
            }
            BackupCommand::Complete(completed) => {
                lc.require(JobState::Running, "complete")?;
                self.validate_completion(&completed)?;
                BackupEvent::BackupCompleted(completed)
            }
            BackupCommand::Fail(failure) => {
                lc.require_live("fail")?;
                BackupEvent::BackupFailed(failure)
            }
            BackupCommand::RequestCancel(request) => {
                if !lc.cancel_request_is_new()? {
                    return Ok(vec![]);
                }
                BackupEvent::BackupCancelRequested(request)
            }
            BackupCommand::ConfirmCancel(cancelled) => {
                lc.require_cancel_pending()?;
                BackupEvent::BackupCancelled(cancelled)
            }
        };
        Ok(vec![event])
    }

    fn apply(mut self, event: &BackupEvent) -> Self {
        match event {
            BackupEvent::BackupAccepted(spec) => {
                self.lifecycle.accepted();
                self.spec = Some(spec.clone());
            }
            BackupEvent::BackupStarted(started) => {
                self.lifecycle.started();
                self.started = Some(started.clone());
            }
            BackupEvent::SegmentStored(stored) => self.segments.push(stored.clone()),
            BackupEvent::SnapshotTaken(taken) => self.snapshots.push(taken.clone()),
            BackupEvent::SnapshotPartStored(part) => self.parts.push(part.clone()),
            BackupEvent::TreeStored(stored) => self.trees.push(stored.tree.clone()),
            BackupEvent::TreeProgressed(_) => {}
            BackupEvent::BackupCompleted(completed) => {
                self.lifecycle.finished(JobState::Completed);
                self.completed = Some(completed.clone());
            }
            BackupEvent::BackupFailed(failure) => {
                self.lifecycle.finished(JobState::Failed);
                self.failure = Some(failure.clone());
            }
            BackupEvent::BackupCancelRequested(_) => self.lifecycle.cancel_requested = true,
            BackupEvent::BackupCancelled(_) => self.lifecycle.finished(JobState::Cancelled),
        }
        self
    }

    fn wrap(event: BackupEvent) -> JobEvent {
        JobEvent::Backup(event)
    }

    fn unwrap(event: &JobEvent) -> Option<&BackupEvent> {
        match event {
            JobEvent::Backup(e) => Some(e),
            _ => None,
        }
    }
}

crate::impl_job_lifecycle!(BackupJob, BackupCommand);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::given;
    use crate::test_support::*;
    use cim_backup_contracts::events::{
        ParentLink, PartInfo, SnapshotPartStored, SnapshotTaken, StreamCut,
    };

    fn cut(stream: &str, first: u64, last: u64) -> StreamCut {
        StreamCut {
            stream: stream.into(),
            first_seq: first,
            last_seq: last,
            messages: last - first + 1,
            bytes: 0,
            taken_at: time::OffsetDateTime::UNIX_EPOCH,
            created: None,
        }
    }

    fn start(cut: StreamCut, parent: Option<u64>) -> StreamStart {
        StreamStart {
            config: format!(r#"{{"name":"{}"}}"#, cut.stream),
            cut,
            parent: parent.map(|p| ParentLink {
                backup: manifest_cid(),
                cut_last_seq: p,
            }),
            consumers: vec![],
        }
    }

    fn started(cut: Vec<StreamCut>) -> BackupStarted {
        let streams = cut.into_iter().map(|c| start(c, None)).collect();
        BackupStarted {
            taken_at: time::OffsetDateTime::UNIX_EPOCH,
            streams,
            tool: "test".into(),
            notes: vec![],
            estimate: None,
        }
    }

    fn stored(stream: &str, first: u64, last: u64) -> SegmentStored {
        SegmentStored {
            stream: stream.into(),
            segment: segment(first, last),
        }
    }

    fn completed(streams: Vec<StreamSummary>) -> BackupCompleted {
        BackupCompleted {
            trees: Vec::new(),
            manifest: manifest_cid(),
            manifest_bytes: 10,
            streams,
            compression: backup_spec(&[]).compression,
            encrypted: false,
            created: time::OffsetDateTime::UNIX_EPOCH,
        }
    }

    fn running() -> Vec<BackupEvent> {
        vec![
            BackupEvent::BackupAccepted(backup_spec(&["A", "B"])),
            BackupEvent::BackupStarted(started(vec![cut("A", 1, 100), cut("B", 5, 9)])),
        ]
    }

    fn tree(name: &str) -> TreeSummary {
        let (root, path) = name.split_once('/').unwrap_or((name, ""));
        TreeSummary {
            name: name.into(),
            root: root.into(),
            path: path.into(),
            instance: "a".into(),
            host_path: format!("/srv/{name}"),
            tree: manifest_cid(),
            tree_bytes: 100,
            top: "dir".into(),
            files: 1,
            dirs: 0,
            symlinks: 0,
            bytes: 10,
            stored_bytes: 10,
            chunks: 1,
            new_chunks: 1,
            skipped: vec![],
        }
    }

    fn with_trees(names: &[&str]) -> Vec<BackupEvent> {
        let mut spec = backup_spec(&[]);
        spec.trees = names
            .iter()
            .map(|n| {
                let (root, path) = n.split_once('/').unwrap_or((n, ""));
                cim_backup_contracts::files::TreeRequest {
                    complete_only: false,
                    remove_after: false,
                    exclude: Vec::new(),
                    export: None,
                    stage: None,
                    root: root.into(),
                    path: path.into(),
                }
            })
            .collect();
        vec![
            BackupEvent::BackupAccepted(spec),
            BackupEvent::BackupStarted(started(vec![])),
        ]
    }

    /// Trees are recorded in request order, once each, and a completion must list exactly the
    /// trees recorded: a manifest cannot claim a model that was never stored.
    #[test]
    fn trees_are_recorded_in_order_and_completions_name_exactly_them() {
        let history = with_trees(&["models/a", "models/b"]);
        given::<BackupJob>(history.clone())
            .when(BackupCommand::RecordTree(TreeStored {
                tree: tree("models/b"),
            }))
            .then_reject_containing("models/a");
        let mut one = history.clone();
        one.push(BackupEvent::TreeStored(TreeStored {
            tree: tree("models/a"),
        }));
        let mut done = completed(vec![]);
        done.trees = vec![tree("models/a")];
        given::<BackupJob>(one.clone())
            .when(BackupCommand::Complete(done.clone()))
            .then_reject_containing("\"models/b\" was not stored");
        let mut both = one.clone();
        both.push(BackupEvent::TreeStored(TreeStored {
            tree: tree("models/b"),
        }));
        given::<BackupJob>(both.clone())
            .when(BackupCommand::RecordTree(TreeStored {
                tree: tree("models/b"),
            }))
            .then_reject_containing("still has to store");
        given::<BackupJob>(both.clone())
            .when(BackupCommand::Complete(done))
            .then_reject_containing("differ");
        let mut all = completed(vec![]);
        all.trees = vec![tree("models/a"), tree("models/b")];
        given::<BackupJob>(both)
            .when(BackupCommand::Complete(all.clone()))
            .then_expect(vec![BackupEvent::BackupCompleted(all)]);
        let mut twice = backup_spec(&[]);
        twice.trees = vec![
            cim_backup_contracts::files::TreeRequest {
                root: "m".into(),
                path: "x".into(),
                complete_only: false,
                remove_after: false,
                exclude: Vec::new(),
                export: None,
                stage: None,
            };
            2
        ];
        given::<BackupJob>(vec![])
            .when(BackupCommand::Accept(twice))
            .then_reject_containing("listed twice");
    }

    #[test]
    fn accept_creates_the_job() {
        given::<BackupJob>(vec![])
            .when(BackupCommand::Accept(backup_spec(&["A"])))
            .then_expect(vec![BackupEvent::BackupAccepted(backup_spec(&["A"]))]);
    }

    #[test]
    fn the_same_job_cannot_be_accepted_twice() {
        given::<BackupJob>(vec![BackupEvent::BackupAccepted(backup_spec(&["A"]))])
            .when(BackupCommand::Accept(backup_spec(&["A"])))
            .then_reject(DomainError::AlreadyExists);
    }

    #[test]
    fn bad_specs_are_rejected_naming_the_field() {
        given::<BackupJob>(vec![])
            .when(BackupCommand::Accept(backup_spec(&[])))
            .then_reject_containing("streams");
        given::<BackupJob>(vec![])
            .when(BackupCommand::Accept(backup_spec(&["A", "A"])))
            .then_reject_containing("listed twice");
        given::<BackupJob>(vec![])
            .when(BackupCommand::Accept(backup_spec(&["A.B"])))
            .then_reject_containing("not a valid stream name");
        let mut spec = backup_spec(&["A"]);
        spec.compression.level = 40;
        given::<BackupJob>(vec![])
            .when(BackupCommand::Accept(spec))
            .then_reject_containing("zstd_level");
    }

    #[test]
    fn start_needs_a_cut_of_exactly_the_requested_streams() {
        given::<BackupJob>(vec![BackupEvent::BackupAccepted(backup_spec(&["A", "B"]))])
            .when(BackupCommand::Start(started(vec![cut("A", 1, 2)])))
            .then_reject_containing("cut");
    }

    #[test]
    fn segments_must_advance_and_stay_inside_the_cut() {
        let mut history = running();
        history.push(BackupEvent::SegmentStored(stored("A", 1, 50)));
        given::<BackupJob>(history.clone())
            .when(BackupCommand::RecordSegment(stored("A", 40, 60)))
            .then_reject_containing("stored up to 50");
        given::<BackupJob>(history.clone())
            .when(BackupCommand::RecordSegment(stored("A", 51, 101)))
            .then_reject_containing("beyond the cut");
        given::<BackupJob>(history.clone())
            .when(BackupCommand::RecordSegment(stored("C", 1, 1)))
            .then_reject_containing("not part of this backup");
        given::<BackupJob>(history)
            .when(BackupCommand::RecordSegment(stored("A", 51, 100)))
            .then_expect(vec![BackupEvent::SegmentStored(stored("A", 51, 100))]);
    }

    #[test]
    fn completion_must_match_the_stored_segments() {
        let mut history = running();
        history.push(BackupEvent::SegmentStored(stored("A", 1, 100)));
        history.push(BackupEvent::SegmentStored(stored("B", 5, 9)));
        let state = BackupJob::from_history(&history);
        let honest = completed(state.summaries());
        given::<BackupJob>(history.clone())
            .when(BackupCommand::Complete(honest.clone()))
            .then_expect(vec![BackupEvent::BackupCompleted(honest.clone())]);

        let mut inflated = honest;
        inflated.streams[0].messages += 1;
        given::<BackupJob>(history)
            .when(BackupCommand::Complete(inflated))
            .then_reject_containing("differ");
    }

    #[test]
    fn a_completed_backup_cannot_fail_or_be_cancelled() {
        let mut history = running();
        let state = BackupJob::from_history(&history);
        history.push(BackupEvent::BackupCompleted(completed(state.summaries())));
        given::<BackupJob>(history.clone())
            .when(BackupCommand::RequestCancel(CancelRequested {
                reason: None,
            }))
            .then_reject(DomainError::WrongState {
                action: "cancel",
                state: JobState::Completed,
            });
        given::<BackupJob>(history)
            .when(BackupCommand::Fail(failure()))
            .then_reject_containing("completed");
    }

    #[test]
    fn cancel_is_requested_once_then_confirmed() {
        let mut history = running();
        given::<BackupJob>(history.clone())
            .when(BackupCommand::ConfirmCancel(JobCancelled { reason: None }))
            .then_reject_containing("no cancellation was requested");
        history.push(BackupEvent::BackupCancelRequested(CancelRequested {
            reason: None,
        }));
        given::<BackupJob>(history.clone())
            .when(BackupCommand::RequestCancel(CancelRequested {
                reason: None,
            }))
            .then_expect(vec![]);
        given::<BackupJob>(history)
            .when(BackupCommand::ConfirmCancel(JobCancelled { reason: None }))
            .then_expect(vec![BackupEvent::BackupCancelled(JobCancelled {
                reason: None,
            })]);
    }

    #[test]
    fn commands_on_a_missing_job_are_rejected() {
        given::<BackupJob>(vec![])
            .when(BackupCommand::RequestCancel(CancelRequested {
                reason: None,
            }))
            .then_reject(DomainError::NotCreated);
    }

    #[test]
    fn an_incremental_backup_stores_only_what_follows_its_parent() {
        let mut spec = backup_spec(&["A"]);
        spec.incremental = true;
        let started = BackupStarted {
            taken_at: time::OffsetDateTime::UNIX_EPOCH,
            streams: vec![start(cut("A", 1, 150), Some(100))],
            tool: "t".into(),
            notes: vec![],
            estimate: None,
        };
        let history = vec![
            BackupEvent::BackupAccepted(spec.clone()),
            BackupEvent::BackupStarted(started.clone()),
        ];
        let state = BackupJob::from_history(&history);
        assert_eq!(state.resume_from("A"), Some(101));
        given::<BackupJob>(history.clone())
            .when(BackupCommand::RecordSegment(stored("A", 90, 120)))
            .then_reject_containing("before this backup's range, which begins at 101");
        given::<BackupJob>(history.clone())
            .when(BackupCommand::RecordSegment(stored("A", 101, 150)))
            .then_expect(vec![BackupEvent::SegmentStored(stored("A", 101, 150))]);
        let summaries = state.summaries();
        assert_eq!(summaries[0].parent, Some(manifest_cid()));
        assert!(
            summaries[0].last_seq < summaries[0].first_seq,
            "nothing stored yet"
        );

        spec.incremental = false;
        given::<BackupJob>(vec![BackupEvent::BackupAccepted(spec)])
            .when(BackupCommand::Start(started))
            .then_reject_containing("has a parent in a full backup");
    }

    #[test]
    fn a_snapshot_backup_records_parts_not_segments_and_completes_only_with_every_snapshot() {
        let mut spec = backup_spec(&["A", "B"]);
        spec.mode = BackupMode::Snapshot;
        let mut history = vec![
            BackupEvent::BackupAccepted(spec),
            BackupEvent::BackupStarted(started(vec![cut("A", 1, 10), cut("B", 1, 5)])),
        ];
        given::<BackupJob>(history.clone())
            .when(BackupCommand::RecordSegment(stored("A", 1, 10)))
            .then_reject_containing("parts, not segments");
        let part = |stream: &str| SnapshotPartStored {
            stream: stream.into(),
            part: PartInfo {
                cid: manifest_cid(),
                raw_bytes: 100,
                stored_bytes: 100,
            },
        };
        given::<BackupJob>(history.clone())
            .when(BackupCommand::RecordPart(part("A")))
            .then_reject_containing("no snapshot");
        let taken = |stream: &str, last: u64| SnapshotTaken {
            stream: stream.into(),
            first_seq: 1,
            last_seq: last,
            messages: last,
            bytes: 1,
        };
        history.push(BackupEvent::SnapshotTaken(taken("A", 11)));
        history.push(BackupEvent::SnapshotPartStored(part("A")));
        let state = BackupJob::from_history(&history);
        given::<BackupJob>(history.clone())
            .when(BackupCommand::Complete(completed(state.summaries())))
            .then_reject_containing("no snapshot of B");
        history.push(BackupEvent::SnapshotTaken(taken("B", 5)));
        let state = BackupJob::from_history(&history);
        let summaries = state.summaries();
        assert_eq!(
            (
                summaries[0].messages,
                summaries[0].last_seq,
                summaries[0].segments
            ),
            (11, 11, 1),
            "the snapshot's own state"
        );
        given::<BackupJob>(history)
            .when(BackupCommand::Complete(completed(summaries.clone())))
            .then_expect(vec![BackupEvent::BackupCompleted(completed(summaries))]);
    }

    #[test]
    fn resume_point_is_the_last_stored_sequence() {
        let mut history = running();
        history.push(BackupEvent::SegmentStored(stored("A", 1, 40)));
        history.push(BackupEvent::SegmentStored(stored("A", 41, 70)));
        let state = BackupJob::from_history(&history);
        assert_eq!(state.stored_up_to("A"), Some(70));
        assert_eq!(state.stored_up_to("B"), None);
        let summaries = state.summaries();
        assert_eq!(summaries[0].messages, 70);
        assert_eq!(summaries[1].messages, 0);
        assert!(summaries[1].last_seq < summaries[1].first_seq);
    }
}
