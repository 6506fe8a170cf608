pub mod archive;
pub mod config;
pub mod destination;
pub mod event_store;
pub mod jobs;
