//! Deciding a repair before anything is written: which backup records replace which live
//! messages, exactly counted, with the backup's own records verified first (hashes, records,
//! and — with a profile — their chains), so a repair never replaces corrupt events with other
//! corrupt events. The same plan answers a dry run.

use std::time::Duration;

use cim_backup_contracts::ErrorCode;
use cim_backup_contracts::JobId;
use cim_backup_contracts::cid::Cid;
use cim_backup_contracts::events::{RepairPlan, Selection};
use cim_backup_contracts::integrity::ChainProfile;
use cim_backup_domain::chain::{ChainWalker, profile};
use serde_json::{Value, json};

use super::streams;
use crate::archive::record::Record;
use crate::archive::{ArchiveStore, segment};
use crate::engine::check::check_record;
use crate::engine::context::Context;
use crate::engine::error::EngineError;
use crate::engine::restore::plan::{
    Chain, Plan, Tally, kept_records, open_planned, subject_matches,
};
use crate::jsapi::StreamInfo;

/// The backup's records from the repair point on.
pub struct Source {
    pub archive: ArchiveStore,
    pub chain: Chain,
    pub plan: Plan,
}

impl Source {
    /// Opens the backup (and its chain) for `stream` from `from_seq` on.
    pub async fn open(
        ctx: &Context,
        url: &str,
        backup: Cid,
        stream: &str,
        from_seq: u64,
    ) -> Result<Source, EngineError> {
        let archive = ctx.destinations.open(url)?;
        let chain = Chain::resolve(&archive, backup, stream).await?;
        chain.check_links()?;
        let latest = chain.latest();
        if latest.snapshot.is_some() {
            return Err(EngineError::precondition(
                ErrorCode::BadRequest,
                format!(
                    "backup {backup} holds a server snapshot of {stream}, which restores only whole; restore-from-point needs a backup in stream mode"
                ),
            ));
        }
        let (first, last) = (chain.floor().max(1), latest.cut.last_seq);
        if from_seq < first || from_seq > last {
            return Err(EngineError::precondition(
                ErrorCode::BadRequest,
                format!(
                    "sequence {from_seq} is outside what backup {backup} holds of {stream} (seq {first}..={last})"
                ),
            ));
        }
        let plan = Plan::new(
            &chain,
            &Selection {
                start_seq: Some(from_seq),
                ..Selection::default()
            },
        );
        Ok(Source {
            archive,
            chain,
            plan,
        })
    }

    /// The backup is of the live stream, not of an earlier one that had its name: both
    /// continue the stream created at the same time (a repaired stream keeps its origin).
    pub fn same_stream(
        &self,
        stream: &str,
        live: &StreamInfo,
        backup: Cid,
    ) -> Result<(), EngineError> {
        let latest = self.chain.latest();
        let backup_config: Value = serde_json::from_str(&latest.config).unwrap_or(Value::Null);
        let ours = streams::origin(&live.config, live.created);
        let theirs = streams::origin(&backup_config, latest.cut.created);
        match (ours, theirs) {
            (Some(ours), Some(theirs)) if ours != theirs => Err(EngineError::precondition(
                ErrorCode::BadRequest,
                format!(
                    "backup {backup} is of another stream named {stream} (created {}); the live one was created {}, so their sequence numbers do not match",
                    cim_backup_contracts::events::format_time(theirs),
                    cim_backup_contracts::events::format_time(ours)
                ),
            )),
            _ => Ok(()),
        }
    }

    /// The backup's last sequence (its cut): live messages after it are newer than the backup.
    pub fn cut_last_seq(&self) -> u64 {
        self.chain.latest().cut.last_seq
    }

    /// The `i`th planned segment, fetched, authenticated and decompressed.
    pub async fn segment(&self, ctx: &Context, i: usize) -> Result<Vec<u8>, EngineError> {
        let planned = &self.plan.segments[i];
        let stored = self.archive.get(&segment::key(&planned.info)).await?;
        open_planned(&self.chain, planned, &stored, &ctx.keys)
    }

    /// The records of a fetched segment that the repair takes.
    pub fn records<'a>(
        &'a self,
        i: usize,
        plain: &'a [u8],
    ) -> impl Iterator<Item = Result<Record<'a>, EngineError>> + 'a {
        kept_records(&self.plan, &self.plan.segments[i], plain)
    }

    /// Reads every record the repair takes: counts them, and walks their chains with `profile`
    /// (anchored at the repair point). A break in the backup itself fails the repair.
    pub async fn verify(
        &self,
        ctx: &Context,
        profile_spec: Option<&ChainProfile>,
        backup: Cid,
    ) -> Result<Tally, EngineError> {
        let mut tally = Tally::default();
        let mut walker = profile_spec.map(|p| ChainWalker::anchored(profile(p)));
        for i in 0..self.plan.segments.len() {
            let plain = self.segment(ctx, i).await?;
            for record in self.records(i, &plain) {
                let record = record?;
                tally.add(&record);
                let Some(walker) = walker.as_mut() else {
                    continue;
                };
                if let Some(finding) = check_record(walker, &record).into_iter().next() {
                    return Err(EngineError::precondition(
                        ErrorCode::Corrupt,
                        format!(
                            "backup {backup} is itself broken at seq {} ({}: {}); choose an older backup",
                            finding.stream_seq, finding.kind, finding.detail
                        ),
                    ));
                }
            }
        }
        Ok(tally)
    }
}

/// What the caller asked for, as the plan needs it.
pub struct Request<'a> {
    pub stream: &'a str,
    pub from_seq: u64,
    pub backup: Cid,
    pub profile: Option<&'a ChainProfile>,
    pub keep_newer: bool,
    pub keep_safety_copy: bool,
}

/// Why a live stream cannot be repaired in place, if it cannot.
pub fn refuse(stream: &str, config: &Value) -> Option<String> {
    let set = |key: &str| {
        config
            .get(key)
            .is_some_and(|v| !v.is_null() && v != &json!(false) && v != &json!([]))
    };
    if set("mirror") || set("sources") {
        return Some(format!(
            "stream {stream} is a mirror or has sources: repair the stream it copies, and let it follow"
        ));
    }
    if set("sealed") || set("deny_delete") {
        return Some(format!(
            "stream {stream} is sealed or denies deletes; a repair must replace it"
        ));
    }
    // A stream with no subjects answers to its own name, so taking its subjects away would not
    // stop writes: the repair could not freeze it. (A stream this service froze is judged by
    // the configuration it had.)
    let frozen = config
        .pointer(&format!("/metadata/{}", streams::FROZEN_BY))
        .is_some();
    let subjects: Vec<&str> = config
        .get("subjects")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if !frozen && (subjects.is_empty() || subjects.iter().any(|s| subject_matches(s, stream))) {
        return Some(format!(
            "stream {stream} takes messages on its own name, so writes cannot be stopped while it is rebuilt; restore it under a new name instead (restore-events --as)"
        ));
    }
    None
}

/// Computes the plan from the live stream as it is now (for a job: frozen).
pub async fn make(
    ctx: &Context,
    source: &Source,
    live: &StreamInfo,
    r: &Request<'_>,
    job: &JobId,
) -> Result<RepairPlan, EngineError> {
    let stream = r.stream;
    if let Some(why) = refuse(stream, &live.config) {
        return Err(EngineError::precondition(ErrorCode::BadRequest, why));
    }
    source.same_stream(stream, live, r.backup)?;
    let state = &live.state;
    if r.from_seq > state.last_seq {
        return Err(EngineError::precondition(
            ErrorCode::BadRequest,
            format!(
                "sequence {} is after the last message of {stream} (seq {}): nothing to repair",
                r.from_seq, state.last_seq
            ),
        ));
    }
    let cut_last = source.cut_last_seq();
    // Counted before the (long) read of the backup, next to the state they refer to. A frozen
    // stream does not change; a live one (a dry run) may have grown: never count past the state.
    let in_range = |from: u64| (state.last_seq + 1).saturating_sub(from);
    let live_from_point = count_from(ctx, stream, r.from_seq, state.last_seq)
        .await?
        .min(in_range(r.from_seq));
    let newer = count_from(ctx, stream, cut_last + 1, state.last_seq)
        .await?
        .min(in_range(cut_last + 1));
    let backup = source.verify(ctx, r.profile, r.backup).await?;
    let kept_newer = if r.keep_newer { newer } else { 0 };
    let replaced = live_from_point.saturating_sub(kept_newer);
    let (safety_copy, staging) = streams::names(stream, job);
    let consumers: Vec<String> = ctx
        .api
        .durable_consumers(stream)
        .await?
        .into_iter()
        .map(|c| c.name)
        .collect();
    let mut notes = vec![format!(
        "{replaced} live messages from seq {} on are replaced by the backup's {}; {}",
        r.from_seq,
        backup.messages,
        if r.keep_safety_copy {
            format!("they stay in the safety copy {safety_copy}")
        } else {
            format!(
                "the safety copy {safety_copy} is deleted once the repaired stream checks clean"
            )
        },
    )];
    if newer > 0 && !r.keep_newer {
        notes.push(format!("{newer} live messages are newer than the backup (after seq {cut_last}) and are dropped; pass keep_newer to keep them"));
    }
    notes.push(format!("while the repair runs, {stream} answers to no subject: publishers get \"no responders\" and should retry"));
    if !consumers.is_empty() {
        notes.push(format!(
            "durable consumers keep their positions ({}); any that processed seq {} or later applied replaced events: replay them with replay-corrupted-events --stream {stream} --from-seq {}",
            consumers.join(", "),
            r.from_seq,
            r.from_seq
        ));
    }
    if r.from_seq < state.first_seq {
        notes.push(format!(
            "the live stream's first message is seq {}: the backup's records from {} to {} come back (they were deleted, purged or expired; the stream's limits may remove them again)",
            state.first_seq,
            r.from_seq,
            state.first_seq - 1
        ));
    }
    if *job == JobId::dry_run() {
        notes.push(format!("{stream} takes writes until the repair freezes it; the job plans again from the frozen stream"));
    }
    if r.profile.is_none() {
        notes.push(format!(
            "no chain profile for {stream}: the repaired stream is checked by counts only"
        ));
    }
    Ok(RepairPlan {
        stream: stream.to_owned(),
        from_seq: r.from_seq,
        live_first_seq: state.first_seq,
        live_last_seq: state.last_seq,
        live_messages: state.messages,
        kept_live: state.messages.saturating_sub(live_from_point),
        from_backup: backup.messages,
        backup_first_seq: backup.first_seq().unwrap_or(0),
        backup_last_seq: backup.last_seq().unwrap_or(0),
        replaced,
        kept_newer,
        target_last_seq: state.last_seq.max(cut_last),
        safety_copy,
        staging,
        consumers,
        chain_checked: r.profile.is_some(),
        notes,
    })
}

/// Messages of `stream` at or after `seq` (exact, interior deletes excluded): the pending count
/// of a short-lived consumer starting there.
async fn count_from(
    ctx: &Context,
    stream: &str,
    seq: u64,
    last_seq: u64,
) -> Result<u64, EngineError> {
    if seq > last_seq {
        return Ok(0);
    }
    let config = json!({
        "deliver_policy": "by_start_sequence",
        "opt_start_seq": seq,
        "ack_policy": "none",
        "mem_storage": true,
        "num_replicas": 1,
        "inactive_threshold": Duration::from_secs(30).as_nanos() as u64,
        "description": "cim-backup: counting messages for a repair plan",
    });
    let reply = ctx
        .api
        .raw(
            format!("$JS.API.CONSUMER.CREATE.{stream}"),
            json!({ "stream_name": stream, "config": config }),
        )
        .await?;
    let pending = reply
        .get("num_pending")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    if let Some(name) = reply.get("name").and_then(Value::as_str)
        && let Err(e) = ctx
            .api
            .raw(
                format!("$JS.API.CONSUMER.DELETE.{stream}.{name}"),
                json!({}),
            )
            .await
    {
        tracing::debug!(stream, consumer = name, error = %e, "counting consumer left to expire");
    }
    Ok(pending)
}
