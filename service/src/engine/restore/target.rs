//! The restored stream's configuration: the original one, renamed, with the caller's replicas
//! and placement, its subjects unless another stream owns them, and this job's marker in the
//! metadata while the restore runs.

use cim_backup_contracts::JobId;
use cim_backup_contracts::events::RestoreOptions;
use serde_json::{Value, json};

use crate::engine::error::EngineError;
use crate::jsapi::JsApi;

/// Stream metadata key that marks a target as being written by a restore job.
pub const RESTORE_JOB_METADATA: &str = "cim-backup.restore-job";

/// Stream metadata key set, with the job marker, when the target has been checked and given its
/// final configuration: from then on it is the restored stream (live producers may write to it)
/// and no failure may delete it; a resumed job only records its completion.
pub const RESTORE_CHECKED_METADATA: &str = "cim-backup.restore-checked";

/// Whether `config` carries `job`'s marker.
pub fn owned_by(config: &Value, job: &JobId) -> bool {
    marked(config, RESTORE_JOB_METADATA, job)
}

/// Whether `job` checked this target and gave it its final configuration.
pub fn checked_by(config: &Value, job: &JobId) -> bool {
    marked(config, RESTORE_CHECKED_METADATA, job)
}

fn marked(config: &Value, key: &str, job: &JobId) -> bool {
    config
        .pointer(&format!("/metadata/{key}"))
        .and_then(Value::as_str)
        == Some(job.as_str())
}

/// The final configuration as it is applied once the target checked: with the checked marker.
pub fn checked(final_config: &Value, job: &JobId) -> Value {
    let mut c = final_config.clone();
    c["metadata"][RESTORE_CHECKED_METADATA] = json!(job.as_str());
    c
}

/// The original's subjects that other streams (not `target`) own now.
pub async fn subjects_owned_elsewhere(
    api: &JsApi,
    original: &Value,
    target: &str,
) -> Result<Vec<String>, EngineError> {
    let mut owned = Vec::new();
    for subject in original
        .get("subjects")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        for owner in api.streams_for_subject(subject).await? {
            if owner != target {
                owned.push(format!("{subject} (stream {owner})"));
            }
        }
    }
    Ok(owned)
}

/// The final configuration of the target, with this job's marker; and notes for the operator.
pub fn final_config(
    original: &Value,
    target: &str,
    options: &RestoreOptions,
    owned_elsewhere: &[String],
    job: &JobId,
) -> (Value, Vec<String>) {
    let mut notes = Vec::new();
    let mut c = original.clone();
    if let Some(map) = c.as_object_mut() {
        for (key, why) in [("mirror", "it was a mirror"), ("sources", "it had sources")] {
            if map.remove(key).is_some_and(|v| !v.is_null()) {
                notes.push(format!(
                    "restored as a plain stream: {why}, and a restore owns its messages"
                ));
            }
        }
        map.remove("created");
    }
    c["name"] = json!(target);
    if !owned_elsewhere.is_empty() {
        notes.push(format!(
            "restored without subjects (the stream answers only to its name): {}",
            owned_elsewhere.join(", ")
        ));
        c["subjects"] = json!([]);
    }
    if let Some(replicas) = options.replicas {
        c["num_replicas"] = json!(replicas);
    }
    if let Some(placement) = &options.placement {
        c["placement"] = json!({ "cluster": placement.cluster, "tags": placement.tags });
    }
    if c.get("metadata").is_none_or(Value::is_null) {
        c["metadata"] = json!({});
    }
    c["metadata"][RESTORE_JOB_METADATA] = json!(job.as_str());
    (c, notes)
}

/// The configuration a target is uploaded with by the server: the final one without subjects
/// (the server then answers only to the stream's name), so nobody can write to it before the
/// restore is checked; the subjects come with [`final_config`] afterwards.
pub fn quiet(config: &Value) -> Value {
    let mut c = config.clone();
    c["subjects"] = json!([]);
    if let Some(map) = c.as_object_mut() {
        map.remove("subject_transform");
    }
    c
}

/// `config` without this job's marker (the metadata as the original had it).
pub fn without_marker(config: &Value, original: &Value) -> Value {
    let mut c = config.clone();
    c["metadata"] = original
        .get("metadata")
        .cloned()
        .unwrap_or_else(|| json!({}));
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use cim_backup_contracts::events::Placement;

    #[test]
    fn the_target_config_is_the_original_renamed_and_placed() {
        let original = json!({ "name": "EVENTS", "subjects": ["events.>"], "num_replicas": 1, "mirror": null, "metadata": { "team": "graph" } });
        let job: JobId = "j1".parse().unwrap();
        let options = RestoreOptions {
            replicas: Some(3),
            placement: Some(Placement {
                cluster: Some("east".into()),
                tags: vec![],
            }),
            ..Default::default()
        };
        let (c, notes) = final_config(&original, "EVENTS_R", &options, &[], &job);
        assert_eq!(c["name"], "EVENTS_R");
        assert_eq!(c["subjects"], json!(["events.>"]));
        assert_eq!(c["num_replicas"], 3);
        assert_eq!(c["placement"]["cluster"], "east");
        assert!(owned_by(&c, &job));
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(
            without_marker(&c, &original)["metadata"],
            json!({ "team": "graph" })
        );

        let (c, notes) = final_config(
            &original,
            "EVENTS_R",
            &RestoreOptions::default(),
            &["events.> (stream EVENTS)".into()],
            &job,
        );
        assert_eq!(c["subjects"], json!([]));
        assert!(notes[0].contains("without subjects"));
    }
}
