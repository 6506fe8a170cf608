//! The `tree-restore` aggregate: file trees of a backup put back on one instance's host.
//!
//! Its invariants: trees are restored in the planned order, each once and as planned (the
//! counts the backup recorded), and the job completes only when every planned tree is in place.

use cim_backup_contracts::events::{
    CancelRequested, JobCancelled, JobEvent, JobFailed, TreeRestoreEvent,
};
use cim_backup_contracts::files::{
    TreeRestoreAccepted, TreeRestoreCompleted, TreeRestoreProgressed, TreeRestoreStarted,
    TreeRestored,
};
use cim_backup_contracts::views::{JobKind, JobState};

use crate::aggregate::Aggregate;
use crate::error::DomainError;
use crate::lifecycle::Lifecycle;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeRestoreCommand {
    Accept(TreeRestoreAccepted),
    Start(TreeRestoreStarted),
    Progress(TreeRestoreProgressed),
    RecordTree(TreeRestored),
    Complete(TreeRestoreCompleted),
    Fail(JobFailed),
    RequestCancel(CancelRequested),
    ConfirmCancel(JobCancelled),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TreeRestoreJob {
    pub lifecycle: Lifecycle,
    pub spec: Option<TreeRestoreAccepted>,
    pub started: Option<TreeRestoreStarted>,
    pub bytes_done: u64,
    pub restored: Vec<TreeRestored>,
    pub completed: Option<TreeRestoreCompleted>,
    pub failure: Option<JobFailed>,
}

impl TreeRestoreJob {
    /// The next planned tree not in place yet.
    pub fn next_tree(&self) -> Option<&cim_backup_contracts::files::PlannedTree> {
        self.spec.as_ref()?.trees.get(self.restored.len())
    }

    fn validate_spec(spec: &TreeRestoreAccepted) -> Result<(), DomainError> {
        if spec.trees.is_empty() {
            return Err(DomainError::invalid("trees: nothing to restore"));
        }
        let mut targets = std::collections::HashSet::new();
        for t in &spec.trees {
            if !targets.insert((t.root.as_str(), t.path.as_str())) {
                return Err(DomainError::invalid(format!(
                    "trees: two trees would be restored to {}/{}",
                    t.root, t.path
                )));
            }
        }
        Ok(())
    }

    fn validate_tree(&self, done: &TreeRestored) -> Result<(), DomainError> {
        let next = self.next_tree().ok_or_else(|| {
            DomainError::invalid(format!(
                "tree: {} is not planned (or already restored)",
                done.name
            ))
        })?;
        if next.name != done.name || next.files != done.files || next.bytes != done.bytes {
            return Err(DomainError::invalid(format!(
                "tree: {} with {} files / {} bytes recorded where {} with {} / {} comes next",
                done.name, done.files, done.bytes, next.name, next.files, next.bytes
            )));
        }
        Ok(())
    }

    fn validate_completion(&self, done: &TreeRestoreCompleted) -> Result<(), DomainError> {
        if let Some(missing) = self.next_tree() {
            return Err(DomainError::invalid(format!(
                "completion: {} is not restored",
                missing.name
            )));
        }
        if done.trees != self.restored {
            return Err(DomainError::invalid(
                "completion: its trees differ from the restored ones",
            ));
        }
        Ok(())
    }
}

impl Aggregate for TreeRestoreJob {
    const KIND: JobKind = JobKind::TreeRestore;
    type Command = TreeRestoreCommand;
    type Event = TreeRestoreEvent;

    fn handle(&self, command: TreeRestoreCommand) -> Result<Vec<TreeRestoreEvent>, DomainError> {
        let lc = &self.lifecycle;
        let event = match command {
            TreeRestoreCommand::Accept(spec) => {
                lc.require_new()?;
                Self::validate_spec(&spec)?;
                TreeRestoreEvent::TreeRestoreAccepted(spec)
            }
            TreeRestoreCommand::Start(started) => {
                lc.require(JobState::Accepted, "start")?;
                TreeRestoreEvent::TreeRestoreStarted(started)
            }
            TreeRestoreCommand::Progress(p) => {
                lc.require(JobState::Running, "record progress of")?;
                if p.bytes_done < self.bytes_done {
                    return Err(DomainError::invalid("progress: must not go backwards"));
                }
                TreeRestoreEvent::TreeRestoreProgressed(p)
            }
            TreeRestoreCommand::RecordTree(done) => {
                lc.require(JobState::Running, "record a tree of")?;
                self.validate_tree(&done)?;
                TreeRestoreEvent::TreeRestored(done)
            }
            TreeRestoreCommand::Complete(done) => {
                lc.require(JobState::Running, "complete")?;
                self.validate_completion(&done)?;
                TreeRestoreEvent::TreeRestoreCompleted(done)
            }
            TreeRestoreCommand::Fail(failure) => {
                lc.require_live("fail")?;
                TreeRestoreEvent::TreeRestoreFailed(failure)
            }
            TreeRestoreCommand::RequestCancel(request) => {
                if !lc.cancel_request_is_new()? {
                    return Ok(vec![]);
                }
                TreeRestoreEvent::TreeRestoreCancelRequested(request)
            }
            TreeRestoreCommand::ConfirmCancel(cancelled) => {
                lc.require_cancel_pending()?;
                TreeRestoreEvent::TreeRestoreCancelled(cancelled)
            }
        };
        Ok(vec![event])
    }

    fn apply(mut self, event: &TreeRestoreEvent) -> Self {
        match event {
            TreeRestoreEvent::TreeRestoreAccepted(spec) => {
                self.lifecycle.accepted();
                self.spec = Some(spec.clone());
            }
            TreeRestoreEvent::TreeRestoreStarted(s) => {
                self.lifecycle.started();
                self.started = Some(s.clone());
            }
            TreeRestoreEvent::TreeRestoreProgressed(p) => self.bytes_done = p.bytes_done,
            TreeRestoreEvent::TreeRestored(t) => self.restored.push(t.clone()),
            TreeRestoreEvent::TreeRestoreCompleted(done) => {
                self.lifecycle.finished(JobState::Completed);
                self.completed = Some(done.clone());
            }
            TreeRestoreEvent::TreeRestoreFailed(failure) => {
                self.lifecycle.finished(JobState::Failed);
                self.failure = Some(failure.clone());
            }
            TreeRestoreEvent::TreeRestoreCancelRequested(_) => {
                self.lifecycle.cancel_requested = true
            }
            TreeRestoreEvent::TreeRestoreCancelled(_) => {
                self.lifecycle.finished(JobState::Cancelled)
            }
        }
        self
    }

    fn wrap(event: TreeRestoreEvent) -> JobEvent {
        JobEvent::TreeRestore(event)
    }

    fn unwrap(event: &JobEvent) -> Option<&TreeRestoreEvent> {
        match event {
            JobEvent::TreeRestore(e) => Some(e),
            _ => None,
        }
    }
}

crate::impl_job_lifecycle!(TreeRestoreJob, TreeRestoreCommand);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::given;
    use crate::test_support::*;
    use cim_backup_contracts::files::PlannedTree;

    fn planned(name: &str, path: &str) -> PlannedTree {
        PlannedTree {
            name: name.into(),
            tree: manifest_cid(),
            files: 2,
            bytes: 10,
            root: "models".into(),
            path: path.into(),
        }
    }

    fn accepted(trees: Vec<PlannedTree>) -> TreeRestoreAccepted {
        TreeRestoreAccepted {
            backup: manifest_cid(),
            source: "local".into(),
            source_url: "file:///b".into(),
            trees,
            overwrite: false,
            encrypted: false,
            admission: admission(),
        }
    }

    fn restored(name: &str) -> TreeRestored {
        TreeRestored {
            name: name.into(),
            host_path: format!("/m/{name}"),
            files: 2,
            bytes: 10,
            replaced: false,
            already: false,
        }
    }

    /// A restore completes only with every planned tree in place, in order, as planned.
    #[test]
    fn trees_are_restored_in_order_and_all_of_them() {
        given::<TreeRestoreJob>(vec![])
            .when(TreeRestoreCommand::Accept(accepted(vec![
                planned("a", "x"),
                planned("b", "x"),
            ])))
            .then_reject_containing("two trees");
        let history = vec![
            TreeRestoreEvent::TreeRestoreAccepted(accepted(vec![
                planned("a", "a"),
                planned("b", "b"),
            ])),
            TreeRestoreEvent::TreeRestoreStarted(TreeRestoreStarted {
                files: 4,
                bytes: 20,
            }),
        ];
        given::<TreeRestoreJob>(history.clone())
            .when(TreeRestoreCommand::RecordTree(restored("b")))
            .then_reject_containing("comes next");
        let mut one = history.clone();
        one.push(TreeRestoreEvent::TreeRestored(restored("a")));
        given::<TreeRestoreJob>(one.clone())
            .when(TreeRestoreCommand::Complete(TreeRestoreCompleted {
                trees: vec![restored("a")],
            }))
            .then_reject_containing("b is not restored");
        let mut bad = restored("b");
        bad.bytes = 9;
        given::<TreeRestoreJob>(one.clone())
            .when(TreeRestoreCommand::RecordTree(bad))
            .then_reject_containing("comes next");
        let mut both = one;
        both.push(TreeRestoreEvent::TreeRestored(restored("b")));
        let done = TreeRestoreCompleted {
            trees: vec![restored("a"), restored("b")],
        };
        given::<TreeRestoreJob>(both)
            .when(TreeRestoreCommand::Complete(done.clone()))
            .then_expect(vec![TreeRestoreEvent::TreeRestoreCompleted(done)]);
    }
}
