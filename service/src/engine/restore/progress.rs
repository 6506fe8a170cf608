//! Progress events of a restore: cumulative, only forward, at most every 250 ms (and for the
//! last segment). A restore resumed after a crash restarts its writing, so progress it already
//! recorded is not recorded again until passed.

use cim_backup_contracts::events::RestoreProgressed;
use cim_backup_domain::restore::{RestoreCommand, RestoreJob};
use tokio::time::Instant;

use super::plan::Tally;
use crate::engine::context::Context;
use crate::engine::error::EngineError;
use crate::jobs::{Job, execute};

const EVERY: std::time::Duration = std::time::Duration::from_millis(250);

pub struct Progress<'j> {
    job: &'j mut Job<RestoreJob>,
    every: std::time::Duration,
    segments_total: u64,
    segments_done: u64,
    bytes_done: u64,
    last: Instant,
    notes: Vec<String>,
}

impl<'j> Progress<'j> {
    pub fn new(job: &'j mut Job<RestoreJob>, segments_total: u64) -> Self {
        Progress {
            job,
            every: EVERY,
            segments_total,
            segments_done: 0,
            bytes_done: 0,
            last: Instant::now(),
            notes: Vec::new(),
        }
    }

    /// Records every segment (an append resumes after the last recorded one, so the checkpoint
    /// must be exact).
    pub fn every_segment(mut self) -> Self {
        self.every = std::time::Duration::ZERO;
        self
    }

    /// Segments a previous run of the job recorded as written.
    pub fn recorded_segments(&self) -> u64 {
        self.job
            .state
            .progress
            .as_ref()
            .map_or(0, |p| p.segments_done)
    }

    /// Something the operator should read in the completion.
    pub fn note(&mut self, note: String) {
        self.notes.push(note);
    }

    pub fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }

    pub fn job(&mut self) -> &mut Job<RestoreJob> {
        self.job
    }

    pub fn segments_done(&self) -> u64 {
        self.segments_done
    }

    /// A segment has been written.
    pub async fn segment_done(
        &mut self,
        ctx: &Context,
        tally: &Tally,
        raw_bytes: u64,
        last_seq: u64,
    ) -> Result<(), EngineError> {
        self.segments_done += 1;
        self.bytes_done += raw_bytes;
        let recorded = self
            .job
            .state
            .progress
            .as_ref()
            .map_or(0, |p| p.segments_done);
        let due = self.last.elapsed() >= self.every || self.segments_done == self.segments_total;
        if due && self.segments_done > recorded {
            let progress = RestoreProgressed {
                segments_done: self.segments_done,
                messages_done: tally.messages,
                bytes_done: self.bytes_done,
                last_seq,
            };
            execute(
                &ctx.events,
                self.job,
                RestoreCommand::Progress(progress),
                None,
            )
            .await?;
            self.last = Instant::now();
        }
        Ok(())
    }
}
