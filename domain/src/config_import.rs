//! The `config-import` aggregate: a planned import of domain configuration carried out.
//!
//! Invariants: the plan holds only changes (create, update, delete), none a conflict, each with
//! its payload when it writes; resources are applied in the planned order (dependency order:
//! streams and buckets, then consumers, then entries), each once and as planned; the job
//! completes only when every planned resource is applied.

use cim_backup_contracts::domain_configs::{
    Action, ConfigImportAccepted, ConfigImportCompleted, ConfigImportStarted, PlannedResource,
    ResourceApplied, payload_key,
};
use cim_backup_contracts::events::{
    CancelRequested, ConfigImportEvent, JobCancelled, JobEvent, JobFailed,
};
use cim_backup_contracts::views::{JobKind, JobState};

use crate::aggregate::{Aggregate, JobLifecycle};
use crate::error::DomainError;
use crate::lifecycle::Lifecycle;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigImportCommand {
    Accept(ConfigImportAccepted),
    Start(ConfigImportStarted),
    RecordApplied(ResourceApplied),
    Complete(ConfigImportCompleted),
    Fail(JobFailed),
    RequestCancel(CancelRequested),
    ConfirmCancel(JobCancelled),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigImportJob {
    pub lifecycle: Lifecycle,
    pub spec: Option<ConfigImportAccepted>,
    pub applied: Vec<ResourceApplied>,
    pub completed: Option<ConfigImportCompleted>,
    pub failure: Option<JobFailed>,
}

impl ConfigImportJob {
    /// The next planned resource not applied yet.
    pub fn next_resource(&self) -> Option<&PlannedResource> {
        self.spec.as_ref()?.resources.get(self.applied.len())
    }

    fn validate_spec(spec: &ConfigImportAccepted) -> Result<(), DomainError> {
        if spec.resources.is_empty() {
            return Err(DomainError::invalid("resources: nothing to change"));
        }
        for r in &spec.resources {
            match r.action {
                Action::Create | Action::Update => {
                    if !spec.payloads.contains_key(&payload_key(r.kind, &r.name)) {
                        return Err(DomainError::invalid(format!(
                            "resources: {} has nothing to write",
                            r.name
                        )));
                    }
                }
                Action::Delete => {}
                other => {
                    return Err(DomainError::invalid(format!(
                        "resources: {} is {other:?}, which an import does not apply",
                        r.name
                    )));
                }
            }
        }
        Ok(())
    }
}

impl Aggregate for ConfigImportJob {
    const KIND: JobKind = JobKind::ConfigImport;
    type Command = ConfigImportCommand;
    type Event = ConfigImportEvent;

    fn handle(&self, command: ConfigImportCommand) -> Result<Vec<ConfigImportEvent>, DomainError> {
        let lc = &self.lifecycle;
        let event = match command {
            ConfigImportCommand::Accept(spec) => {
                lc.require_new()?;
                Self::validate_spec(&spec)?;
                ConfigImportEvent::ConfigImportAccepted(spec)
            }
            ConfigImportCommand::Start(s) => {
                lc.require(JobState::Accepted, "start")?;
                ConfigImportEvent::ConfigImportStarted(s)
            }
            ConfigImportCommand::RecordApplied(a) => {
                lc.require(JobState::Running, "record a resource of")?;
                let next = self
                    .next_resource()
                    .ok_or_else(|| DomainError::invalid("applied: every resource is applied"))?;
                if (next.kind, next.name.as_str(), next.action)
                    != (a.kind, a.name.as_str(), a.action)
                {
                    return Err(DomainError::invalid(format!(
                        "applied: {} where {} comes next",
                        a.name, next.name
                    )));
                }
                ConfigImportEvent::ConfigResourceApplied(a)
            }
            ConfigImportCommand::Complete(done) => {
                lc.require(JobState::Running, "complete")?;
                if let Some(next) = self.next_resource() {
                    return Err(DomainError::invalid(format!(
                        "completion: {} is not applied",
                        next.name
                    )));
                }
                if done.applied != self.applied {
                    return Err(DomainError::invalid(
                        "completion: its resources differ from the applied ones",
                    ));
                }
                ConfigImportEvent::ConfigImportCompleted(done)
            }
            ConfigImportCommand::Fail(failure) => {
                lc.require_live("fail")?;
                ConfigImportEvent::ConfigImportFailed(failure)
            }
            ConfigImportCommand::RequestCancel(request) => {
                if !lc.cancel_request_is_new()? {
                    return Ok(vec![]);
                }
                ConfigImportEvent::ConfigImportCancelRequested(request)
            }
            ConfigImportCommand::ConfirmCancel(cancelled) => {
                lc.require_cancel_pending()?;
                ConfigImportEvent::ConfigImportCancelled(cancelled)
            }
        };
        Ok(vec![event])
    }

    fn apply(mut self, event: &ConfigImportEvent) -> Self {
        match event {
            ConfigImportEvent::ConfigImportAccepted(spec) => {
                self.lifecycle.accepted();
                self.spec = Some(spec.clone());
            }
            ConfigImportEvent::ConfigImportStarted(_) => self.lifecycle.started(),
            ConfigImportEvent::ConfigResourceApplied(a) => self.applied.push(a.clone()),
            ConfigImportEvent::ConfigImportCompleted(done) => {
                self.lifecycle.finished(JobState::Completed);
                self.completed = Some(done.clone());
            }
            ConfigImportEvent::ConfigImportFailed(f) => {
                self.lifecycle.finished(JobState::Failed);
                self.failure = Some(f.clone());
            }
            ConfigImportEvent::ConfigImportCancelRequested(_) => {
                self.lifecycle.cancel_requested = true
            }
            ConfigImportEvent::ConfigImportCancelled(_) => {
                self.lifecycle.finished(JobState::Cancelled)
            }
        }
        self
    }

    fn wrap(event: ConfigImportEvent) -> JobEvent {
        JobEvent::ConfigImport(event)
    }

    fn unwrap(event: &JobEvent) -> Option<&ConfigImportEvent> {
        match event {
            JobEvent::ConfigImport(e) => Some(e),
            _ => None,
        }
    }
}

impl JobLifecycle for ConfigImportJob {
    fn fail(failure: JobFailed) -> ConfigImportCommand {
        ConfigImportCommand::Fail(failure)
    }
    fn request_cancel(request: CancelRequested) -> ConfigImportCommand {
        ConfigImportCommand::RequestCancel(request)
    }
    fn confirm_cancel(cancelled: JobCancelled) -> ConfigImportCommand {
        ConfigImportCommand::ConfirmCancel(cancelled)
    }
    fn lifecycle(&self) -> &Lifecycle {
        &self.lifecycle
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::given;
    use crate::test_support::admission;
    use cim_backup_contracts::domain_configs::ResourceKind;

    fn resource(kind: ResourceKind, name: &str, action: Action) -> PlannedResource {
        PlannedResource {
            kind,
            name: name.into(),
            domain: "g".into(),
            action,
            changes: vec![],
            notes: vec![],
        }
    }

    fn spec(resources: Vec<PlannedResource>) -> ConfigImportAccepted {
        let payloads = resources
            .iter()
            .filter(|r| r.action != Action::Delete)
            .map(|r| (payload_key(r.kind, &r.name), "{}".to_owned()))
            .collect();
        ConfigImportAccepted {
            source: "f.yaml".into(),
            resources,
            payloads,
            admission: admission(),
        }
    }

    fn applied(r: &PlannedResource) -> ResourceApplied {
        ResourceApplied {
            kind: r.kind,
            name: r.name.clone(),
            action: r.action,
        }
    }

    /// A plan with a conflict or with nothing to change is never accepted.
    #[test]
    fn only_a_plan_of_changes_is_accepted() {
        given::<ConfigImportJob>(vec![])
            .when(ConfigImportCommand::Accept(spec(vec![resource(
                ResourceKind::Stream,
                "S",
                Action::Conflict,
            )])))
            .then_reject_containing("does not apply");
        given::<ConfigImportJob>(vec![])
            .when(ConfigImportCommand::Accept(spec(vec![])))
            .then_reject_containing("nothing to change");
    }

    /// Resources are applied in the planned order, each once, and the job completes only when
    /// all are.
    #[test]
    fn resources_are_applied_in_order_and_all_before_completion() {
        let stream = resource(ResourceKind::Stream, "S", Action::Create);
        let consumer = resource(ResourceKind::Consumer, "S/c", Action::Create);
        let history = vec![
            ConfigImportEvent::ConfigImportAccepted(spec(vec![stream.clone(), consumer.clone()])),
            ConfigImportEvent::ConfigImportStarted(ConfigImportStarted::default()),
        ];
        given::<ConfigImportJob>(history.clone())
            .when(ConfigImportCommand::RecordApplied(applied(&consumer)))
            .then_reject_containing("S comes next");
        let mut one = history;
        one.push(ConfigImportEvent::ConfigResourceApplied(applied(&stream)));
        given::<ConfigImportJob>(one.clone())
            .when(ConfigImportCommand::Complete(ConfigImportCompleted {
                applied: vec![applied(&stream)],
            }))
            .then_reject_containing("S/c is not applied");
        one.push(ConfigImportEvent::ConfigResourceApplied(applied(&consumer)));
        let done = ConfigImportCompleted {
            applied: vec![applied(&stream), applied(&consumer)],
        };
        given::<ConfigImportJob>(one)
            .when(ConfigImportCommand::Complete(done.clone()))
            .then_expect(vec![ConfigImportEvent::ConfigImportCompleted(done)]);
    }
}
