//! The `check` aggregate: one integrity check of one or more streams (or a stored backup).
//!
//! A check completes only with one report per target, each inside the range it announced; a
//! check that could not walk a stream fails (that is "could not check", not "corrupted": a
//! corrupted stream is a *completed* check whose report has findings).

use cim_backup_contracts::events::{
    CancelRequested, CheckAccepted, CheckCompleted, CheckEvent, CheckProgressed, CheckStarted,
    JobCancelled, JobEvent, JobFailed,
};
use cim_backup_contracts::views::{JobKind, JobState};

use crate::aggregate::Aggregate;
use crate::error::DomainError;
use crate::lifecycle::Lifecycle;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckCommand {
    Accept(CheckAccepted),
    Start(CheckStarted),
    Progress(CheckProgressed),
    Complete(CheckCompleted),
    Fail(JobFailed),
    RequestCancel(CancelRequested),
    ConfirmCancel(JobCancelled),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckJob {
    pub lifecycle: Lifecycle,
    pub spec: Option<CheckAccepted>,
    pub plan: Option<CheckStarted>,
    pub progress: Option<CheckProgressed>,
    pub completed: Option<CheckCompleted>,
    pub failure: Option<JobFailed>,
}

impl CheckJob {
    fn validate_spec(spec: &CheckAccepted) -> Result<(), DomainError> {
        if spec.targets.is_empty() {
            return Err(DomainError::invalid("streams: nothing to check"));
        }
        if spec.backup.is_some() && spec.targets.len() != 1 {
            return Err(DomainError::invalid(
                "backup: a backup is checked one stream at a time",
            ));
        }
        if spec.max_findings == 0 || spec.max_findings > 10_000 {
            return Err(DomainError::invalid("max_findings: must be 1..=10000"));
        }
        if let (Some(a), Some(b)) = (spec.start_seq, spec.end_seq)
            && a > b
        {
            return Err(DomainError::invalid(format!(
                "start_seq {a} is after end_seq {b}"
            )));
        }
        if spec.replay.is_some()
            && (spec.start_seq.is_none() || spec.targets.len() != 1 || spec.backup.is_some())
        {
            return Err(DomainError::invalid(
                "replay: needs one live stream and the sequence to replay from",
            ));
        }
        Ok(())
    }

    fn validate_plan(&self, plan: &CheckStarted) -> Result<(), DomainError> {
        let spec = self.spec.as_ref().ok_or(DomainError::NotCreated)?;
        if plan.ranges.len() != spec.targets.len() {
            return Err(DomainError::invalid(format!(
                "start: {} ranges for {} streams",
                plan.ranges.len(),
                spec.targets.len()
            )));
        }
        Ok(())
    }

    fn validate_completion(&self, done: &CheckCompleted) -> Result<(), DomainError> {
        let spec = self.spec.as_ref().ok_or(DomainError::NotCreated)?;
        let plan = self.plan.as_ref().ok_or(DomainError::NotCreated)?;
        if done.reports.len() != spec.targets.len() {
            return Err(DomainError::invalid(format!(
                "completion: {} reports for {} streams",
                done.reports.len(),
                spec.targets.len()
            )));
        }
        for ((report, target), (first, last)) in
            done.reports.iter().zip(&spec.targets).zip(&plan.ranges)
        {
            if report.stream != target.stream {
                return Err(DomainError::invalid(format!(
                    "completion: report of {} where {} was checked",
                    report.stream, target.stream
                )));
            }
            if (report.range_first, report.range_last) != (*first, *last) {
                return Err(DomainError::invalid(format!(
                    "completion: {} reports the range {}..={}, the check announced {first}..={last}",
                    report.stream, report.range_first, report.range_last
                )));
            }
            if report.messages_checked > 0 && (report.first_seq < *first || report.last_seq > *last)
            {
                return Err(DomainError::invalid(format!(
                    "completion: {} checked {}..={} outside its range {first}..={last}",
                    report.stream, report.first_seq, report.last_seq
                )));
            }
            if report.findings.len() as u64 > spec.max_findings
                || report.findings.len() as u64 > report.findings_total
            {
                return Err(DomainError::invalid(format!(
                    "completion: {} lists more findings than allowed or counted",
                    report.stream
                )));
            }
        }
        if !done.replayed.is_empty() && (spec.replay.is_none() || !done.is_clean()) {
            return Err(DomainError::invalid(
                "completion: consumers may be reset only by a replay whose events are all valid",
            ));
        }
        Ok(())
    }
}

impl Aggregate for CheckJob {
    const KIND: JobKind = JobKind::Check;
    type Command = CheckCommand;
    type Event = CheckEvent;

    fn handle(&self, command: CheckCommand) -> Result<Vec<CheckEvent>, DomainError> {
        let lc = &self.lifecycle;
        let event = match command {
            CheckCommand::Accept(spec) => {
                lc.require_new()?;
                Self::validate_spec(&spec)?;
                CheckEvent::CheckAccepted(spec)
            }
            CheckCommand::Start(plan) => {
                lc.require(JobState::Accepted, "start")?;
                self.validate_plan(&plan)?;
                CheckEvent::CheckStarted(plan)
            }
            CheckCommand::Progress(progress) => {
                lc.require(JobState::Running, "record progress of")?;
                if let Some(prev) = &self.progress
                    && progress.messages_done <= prev.messages_done
                {
                    return Err(DomainError::invalid(format!(
                        "progress: must move forward from {}",
                        prev.messages_done
                    )));
                }
                CheckEvent::CheckProgressed(progress)
            }
            CheckCommand::Complete(done) => {
                lc.require(JobState::Running, "complete")?;
                self.validate_completion(&done)?;
                CheckEvent::CheckCompleted(done)
            }
            CheckCommand::Fail(failure) => {
                lc.require_live("fail")?;
                CheckEvent::CheckFailed(failure)
            }
            CheckCommand::RequestCancel(request) => {
                if !lc.cancel_request_is_new()? {
                    return Ok(vec![]);
                }
                CheckEvent::CheckCancelRequested(request)
            }
            CheckCommand::ConfirmCancel(cancelled) => {
                lc.require_cancel_pending()?;
                CheckEvent::CheckCancelled(cancelled)
            }
        };
        Ok(vec![event])
    }

    fn apply(mut self, event: &CheckEvent) -> Self {
        match event {
            CheckEvent::CheckAccepted(spec) => {
                self.lifecycle.accepted();
                self.spec = Some(spec.clone());
            }
            CheckEvent::CheckStarted(plan) => {
                self.lifecycle.started();
                self.plan = Some(plan.clone());
            }
            CheckEvent::CheckProgressed(p) => self.progress = Some(p.clone()),
            CheckEvent::CheckCompleted(done) => {
                self.lifecycle.finished(JobState::Completed);
                self.completed = Some(done.clone());
            }
            CheckEvent::CheckFailed(failure) => {
                self.lifecycle.finished(JobState::Failed);
                self.failure = Some(failure.clone());
            }
            CheckEvent::CheckCancelRequested(_) => self.lifecycle.cancel_requested = true,
            CheckEvent::CheckCancelled(_) => self.lifecycle.finished(JobState::Cancelled),
        }
        self
    }

    fn wrap(event: CheckEvent) -> JobEvent {
        JobEvent::Check(event)
    }

    fn unwrap(event: &JobEvent) -> Option<&CheckEvent> {
        match event {
            JobEvent::Check(e) => Some(e),
            _ => None,
        }
    }
}

crate::impl_job_lifecycle!(CheckJob, CheckCommand);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::given;
    use crate::test_support::*;
    use cim_backup_contracts::events::CheckTarget;
    use cim_backup_contracts::integrity::{ChainProfile, IntegrityReport};

    fn spec(streams: &[&str]) -> CheckAccepted {
        CheckAccepted {
            targets: streams
                .iter()
                .map(|s| CheckTarget {
                    stream: s.to_string(),
                    profile: ChainProfile::native(),
                    projections: vec![],
                })
                .collect(),
            backup: None,
            source_url: None,
            start_seq: None,
            end_seq: None,
            deep: false,
            max_findings: 100,
            replay: None,
            admission: admission(),
        }
    }

    fn report(stream: &str, first: u64, last: u64) -> IntegrityReport {
        IntegrityReport {
            stream: stream.into(),
            profile: cim_backup_contracts::integrity::ProfileKind::Native,
            range_first: first,
            range_last: last,
            anchored: false,
            first_seq: first,
            last_seq: last,
            messages_checked: last - first + 1,
            chains: 1,
            chains_broken: 0,
            findings_total: 0,
            findings_by_kind: Default::default(),
            findings: vec![],
            projections: None,
        }
    }

    #[test]
    fn a_check_completes_with_one_report_per_stream_inside_its_range() {
        let history = vec![
            CheckEvent::CheckAccepted(spec(&["A", "B"])),
            CheckEvent::CheckStarted(CheckStarted {
                ranges: vec![(1, 10), (5, 9)],
                messages: 15,
            }),
        ];
        given::<CheckJob>(history.clone())
            .when(CheckCommand::Complete(CheckCompleted {
                reports: vec![report("A", 1, 10)],
                replayed: vec![],
            }))
            .then_reject_containing("1 reports for 2 streams");
        let beyond = IntegrityReport {
            range_last: 10,
            ..report("A", 1, 11)
        };
        given::<CheckJob>(history.clone())
            .when(CheckCommand::Complete(CheckCompleted {
                reports: vec![beyond, report("B", 5, 9)],
                replayed: vec![],
            }))
            .then_reject_containing("outside its range");
        // A report must say the range it covers is the one announced: "clean" is about it.
        given::<CheckJob>(history.clone())
            .when(CheckCommand::Complete(CheckCompleted {
                reports: vec![report("A", 2, 10), report("B", 5, 9)],
                replayed: vec![],
            }))
            .then_reject_containing("reports the range 2..=10");
        let done = CheckCompleted {
            reports: vec![report("A", 1, 10), report("B", 5, 9)],
            replayed: vec![],
        };
        given::<CheckJob>(history)
            .when(CheckCommand::Complete(done.clone()))
            .then_expect(vec![CheckEvent::CheckCompleted(done)]);
    }

    #[test]
    fn a_replay_resets_consumers_only_when_every_event_is_valid() {
        let mut s = spec(&["A"]);
        s.replay = Some(vec!["projector".into()]);
        given::<CheckJob>(vec![])
            .when(CheckCommand::Accept(s.clone()))
            .then_reject_containing("replay");
        s.start_seq = Some(5);
        let history = vec![
            CheckEvent::CheckAccepted(s),
            CheckEvent::CheckStarted(CheckStarted {
                ranges: vec![(5, 10)],
                messages: 6,
            }),
        ];
        // A replay stops at the first invalid event: its range is the one announced.
        let mut broken = IntegrityReport {
            range_last: 10,
            ..report("A", 5, 7)
        };
        broken.findings_total = 1;
        given::<CheckJob>(history.clone())
            .when(CheckCommand::Complete(CheckCompleted {
                reports: vec![broken],
                replayed: vec!["projector".into()],
            }))
            .then_reject_containing("all valid");
        let done = CheckCompleted {
            reports: vec![report("A", 5, 10)],
            replayed: vec!["projector".into()],
        };
        given::<CheckJob>(history)
            .when(CheckCommand::Complete(done.clone()))
            .then_expect(vec![CheckEvent::CheckCompleted(done)]);
    }

    #[test]
    fn bad_checks_are_refused() {
        given::<CheckJob>(vec![])
            .when(CheckCommand::Accept(spec(&[])))
            .then_reject_containing("nothing to check");
        let mut s = spec(&["A"]);
        s.max_findings = 0;
        given::<CheckJob>(vec![])
            .when(CheckCommand::Accept(s))
            .then_reject_containing("max_findings");
    }
}
