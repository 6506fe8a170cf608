//! The NATS contract as a foreign client sees it: micro-service discovery, error replies for bad
//! input (headers + JSON body naming the problem, nothing persisted, service keeps serving),
//! idempotency keys, and cancel of a finished job.

use std::time::Duration;

use cim_backup_contracts::subjects::*;
use cim_backup_contracts::views::JobState;
use cim_backup_tests::service::{Caller, TestService, test_config};
use cim_backup_tests::streams::{create_stream, publish_events, state};
use cim_backup_tests::{NatsServer, init_tracing};
use futures::StreamExt;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

struct Setup {
    nats: NatsServer,
    _archive: tempfile::TempDir,
    service: TestService,
    caller: Caller,
}

async fn setup() -> Setup {
    init_tracing();
    let nats = NatsServer::start().await;
    let archive = tempfile::tempdir().unwrap();
    let client = nats.client().await;
    create_stream(&client, "EVENTS", &["events.>"]).await;
    publish_events(&client, "events.node", 0, 300, 7).await;
    let service = TestService::start(test_config(&nats.url(), archive.path(), "node-a")).await;
    let caller = Caller::connect(&nats.url()).await;
    Setup {
        nats,
        _archive: archive,
        service,
        caller,
    }
}

async fn event_count(s: &Setup) -> u64 {
    state(&s.caller.client, EVENTS_STREAM).await.messages
}

/// Rejected requests recorded no event, and the service still answers.
async fn nothing_recorded_and_still_serving(s: &Setup, events_before: u64) {
    assert_eq!(
        event_count(s).await,
        events_before,
        "rejected commands recorded events"
    );
    assert_eq!(s.caller.ok(QRY_JOBS, json!({})).await, json!([]));
}

#[tokio::test]
async fn the_service_answers_micro_service_discovery() {
    let s = setup().await;
    let client = &s.caller.client;
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.unwrap();
    client
        .publish_with_reply("$SRV.PING", inbox, "".into())
        .await
        .unwrap();
    let ping: Value = serde_json::from_slice(&replies.next().await.unwrap().payload).unwrap();
    assert_eq!(ping["name"], SERVICE_NAME);
    assert_eq!(ping["type"], "io.nats.micro.v1.ping_response");

    let info = client
        .request(format!("$SRV.INFO.{SERVICE_NAME}"), "".into())
        .await
        .unwrap();
    let info: Value = serde_json::from_slice(&info.payload).unwrap();
    let subjects: Vec<&str> = info["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["subject"].as_str().unwrap())
        .collect();
    for subject in [
        CMD_START,
        CMD_RESTORE,
        CMD_VERIFY,
        CMD_CHECK,
        CMD_CANCEL,
        QRY_JOB,
        QRY_JOBS,
        QRY_BACKUPS,
    ] {
        assert!(
            subjects.contains(&subject),
            "INFO lacks {subject}: {subjects:?}"
        );
    }

    s.caller.err(CMD_START, json!({ "streams": [] })).await;
    let stats = client
        .request(format!("$SRV.STATS.{SERVICE_NAME}"), "".into())
        .await
        .unwrap();
    let stats: Value = serde_json::from_slice(&stats.payload).unwrap();
    let start = stats["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["subject"] == CMD_START)
        .unwrap();
    assert_eq!(start["num_requests"], 1);
    assert_eq!(start["data"]["error_replies"], 1);
    s.service.stop().await;
}

#[tokio::test]
async fn bad_requests_get_named_errors_and_persist_nothing() {
    let s = setup().await;
    let before = event_count(&s).await;
    let c = &s.caller;

    let garbage = c
        .request_bytes(CMD_START, b"{not json".to_vec())
        .await
        .unwrap();
    assert_eq!(garbage.status, Some(400));
    assert!(
        garbage.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid JSON"),
        "{}",
        garbage.body
    );
    let headers = garbage.headers.unwrap();
    assert!(
        headers.get("Nats-Service-Error").is_some(),
        "micro-service error header"
    );

    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            CMD_START,
            json!({ "streams": ["EVENTS"], "destinaton": "local" }),
            400,
            "destinaton",
        ),
        (CMD_START, json!({ "streams": ["MISSING"] }), 404, "MISSING"),
        (
            CMD_START,
            json!({ "streams": ["EVENTS"], "destination": "ftp://host/x" }),
            400,
            "ftp",
        ),
        (
            CMD_START,
            json!({ "streams": ["EVENTS"], "destination": "nowhere" }),
            400,
            "nowhere",
        ),
        (
            CMD_START,
            json!({ "streams": ["EVENTS", "EVENTS"] }),
            400,
            "listed twice",
        ),
        (
            CMD_START,
            json!({ "streams": ["EVENTS"], "zstd_level": 99 }),
            400,
            "zstd_level",
        ),
        (
            CMD_START,
            json!({ "streams": "EVENTS" }),
            400,
            "streams: invalid type",
        ),
        (
            QRY_JOB,
            json!({ "job_id": "0193f1c2-0000-7000-8000-000000000000" }),
            404,
            "no job",
        ),
        (QRY_JOB, json!({ "job_id": "bad.id" }), 400, "bad.id"),
        (CMD_CANCEL, json!({ "job_id": "nope" }), 404, "nope"),
        (
            CMD_VERIFY,
            json!({ "backup": "bafyreigbtj4x7ip5legnfznufuopl4sg4knzc2cof6duas4b3q2fy6swua" }),
            404,
            "not in the catalog",
        ),
        (
            CMD_VERIFY,
            json!({ "backup": "not-a-cid" }),
            400,
            "not-a-cid",
        ),
        (CMD_VERIFY, json!({ "backup": "latest" }), 400, "stream"),
        (
            CMD_RESTORE,
            json!({ "backup": "latest", "stream": "EVENTS" }),
            404,
            "no backup of stream EVENTS",
        ),
        (
            CMD_RESTORE,
            json!({ "backup": "latest", "stream": "EVENTS", "as": "A.B" }),
            400,
            "A.B",
        ),
        (CMD_CHECK, json!({ "stream": "EVENTS" }), 400, "stream"),
        (
            CMD_CHECK,
            json!({ "streams": ["EVENTS"] }),
            400,
            "no chain profile for stream EVENTS",
        ),
        (
            CMD_CHECK,
            json!({ "streams": ["NOPE"], "profile": { "profile": "link-only" } }),
            404,
            "NOPE",
        ),
        (
            CMD_CHECK,
            json!({ "streams": ["EVENTS"], "profile": { "profile": "sha1-chain" } }),
            400,
            "sha1-chain",
        ),
        (QRY_JOBS, json!({ "limit": 0 }), 400, "limit"),
        (
            QRY_BACKUPS,
            json!({ "destination": "s3:///" }),
            400,
            "bucket",
        ),
    ];
    for (subject, body, code, needle) in cases {
        let (status, message) = c.err(subject, body.clone()).await;
        assert_eq!(status, code, "{subject} {body}: {message}");
        assert!(
            message.contains(needle),
            "{subject} {body}: {message:?} does not name {needle:?}"
        );
    }
    nothing_recorded_and_still_serving(&s, before).await;
    s.service.stop().await;
}

/// What a fuzzer sends: positional arrays, huge and multi-line values, paths that climb out of
/// the service's directories, URLs with a query, backups that are not where the request says.
/// Each gets a named 4xx, nothing is recorded or created, and the service keeps serving.
#[tokio::test]
async fn hostile_requests_are_refused_by_name_and_leave_nothing_behind() {
    let s = setup().await;
    let before = event_count(&s).await;
    let c = &s.caller;
    let archive = s._archive.path().display().to_string();
    let missing_dir = format!("{archive}/not-there");
    let some_cid = "bafyreigbtj4x7ip5legnfznufuopl4sg4knzc2cof6duas4b3q2fy6swua";
    let huge = "c".repeat(70_000);
    let long_field = format!("f{}", "x".repeat(5_000));
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            CMD_START,
            json!([["EVENTS"], format!("file://{archive}")]),
            400,
            "must be a JSON object",
        ),
        (QRY_JOBS, json!([]), 400, "array"),
        (
            CMD_RESTORE,
            json!({ "backup": "latest", "stream": "EVENTS", "start": "yesterday" }),
            400,
            "start: \"yesterday\" is not an RFC 3339 time",
        ),
        (
            CMD_START,
            json!({ "streams": ["EVENTS"], "correlation_id": "a\r\nb" }),
            400,
            "correlation_id: contains",
        ),
        (
            CMD_START,
            json!({ "streams": ["EVENTS"], "correlation_id": huge }),
            400,
            "at most",
        ),
        (
            CMD_START,
            json!({ "streams": ["EVENTS"], "a\r\nb": 1 }),
            400,
            "unknown field",
        ),
        (
            CMD_START,
            json!({ "streams": ["EVENTS"], long_field: 1 }),
            400,
            "unknown field",
        ),
        (
            CMD_CANCEL,
            json!({ "job_id": "0193f1c2-0000-7000-8000-000000000000", "reason": "x\ny" }),
            400,
            "reason",
        ),
        (
            CMD_VERIFY,
            json!({ "backup": some_cid, "source": "local" }),
            404,
            "is not in",
        ),
        (
            CMD_CHECK,
            json!({ "streams": ["EVENTS"], "backup": some_cid, "source": "local", "profile": { "profile": "link-only" } }),
            404,
            "is not in",
        ),
        (
            CMD_VERIFY,
            json!({ "backup": some_cid, "source": "file:///../../etc/passwd" }),
            403,
            "file:///etc/passwd is outside",
        ),
        (
            CMD_START,
            json!({ "streams": ["EVENTS"], "destination": "file:///etc" }),
            403,
            "outside",
        ),
        (
            CMD_START,
            json!({ "streams": ["EVENTS"], "destination": format!("file://{archive}?x=1#y") }),
            400,
            "no ?query",
        ),
        (
            QRY_BACKUPS,
            json!({ "destination": format!("file://{missing_dir}") }),
            404,
            "does not exist",
        ),
        (
            CMD_CHECK,
            json!({ "streams": ["EVENTS"], "start_seq": 5000, "profile": { "profile": "link-only" } }),
            400,
            "nothing to check: start_seq 5000 is after the last sequence 300",
        ),
    ];
    for (subject, body, code, needle) in cases {
        let reply = c
            .request(subject, &body)
            .await
            .expect("a reply, not a timeout");
        let message = reply.body["error"]["message"].as_str().unwrap_or_default();
        assert_eq!(reply.status, Some(code), "{subject}: {message}");
        assert!(
            message.contains(needle),
            "{subject}: {message:?} does not name {needle:?}"
        );
        assert!(
            message.len() < 5_000,
            "a bounded message: {} bytes",
            message.len()
        );
        let header = reply
            .headers
            .as_ref()
            .unwrap()
            .get("Nats-Service-Error")
            .unwrap();
        assert!(!header.as_str().contains(['\r', '\n']) && header.as_str().len() <= 256);
    }
    assert!(
        !std::path::Path::new(&missing_dir).exists(),
        "a query created a directory"
    );
    nothing_recorded_and_still_serving(&s, before).await;
    s.service.stop().await;
}

#[tokio::test]
async fn finished_jobs_and_non_empty_targets_are_conflicts() {
    let s = setup().await;
    let c = &s.caller;
    let job = c.ok(CMD_START, json!({ "streams": ["EVENTS"] })).await;
    let job_id = job["job_id"].as_str().unwrap();
    let view = c.wait_job(job_id, WAIT).await;
    assert_eq!(view.state, JobState::Completed);
    let before = event_count(&s).await;

    let (status, message) = c.err(CMD_CANCEL, json!({ "job_id": job_id })).await;
    assert_eq!(status, 409);
    assert!(message.contains("already completed"), "{message}");

    let backup = view.backup_id.unwrap().to_string();
    let (status, message) = c
        .err(CMD_RESTORE, json!({ "backup": backup, "stream": "EVENTS" }))
        .await;
    assert_eq!(status, 409);
    assert!(
        message.contains("EVENTS is not empty (300 messages)"),
        "{message}"
    );
    let (status, message) = c
        .err(CMD_RESTORE, json!({ "backup": backup, "stream": "OTHER" }))
        .await;
    assert_eq!(status, 404);
    assert!(message.contains("no stream OTHER"), "{message}");
    assert_eq!(event_count(&s).await, before);
    s.service.stop().await;
}

#[tokio::test]
async fn the_same_idempotency_key_starts_one_job() {
    let s = setup().await;
    let c = &s.caller;
    let request = json!({ "streams": ["EVENTS"], "idempotency_key": "nightly-2026-11-25" });
    let first = c.ok(CMD_START, request.clone()).await;
    let second = c.ok(CMD_START, request.clone()).await;
    assert_eq!(first["job_id"], second["job_id"]);
    assert_eq!(first["duplicate"], false);
    assert_eq!(second["duplicate"], true);
    c.wait_job(first["job_id"].as_str().unwrap(), WAIT).await;
    let third = c.ok(CMD_START, request).await;
    assert_eq!(third["job_id"], first["job_id"]);
    assert_eq!(third["state"], "completed");

    let (status, message) =
        c.err(CMD_START, json!({ "streams": ["EVENTS"], "compress": "none", "idempotency_key": "nightly-2026-11-25" })).await;
    assert_eq!(status, 409);
    assert!(message.contains("different request"), "{message}");

    // The key also works as a header, and concurrent duplicates still make one job.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Cim-Idempotency-Key", "from-header");
    let body: bytes::Bytes = serde_json::to_vec(&json!({ "streams": ["EVENTS"] }))
        .unwrap()
        .into();
    let sends = (0..4).map(|_| {
        c.client
            .request_with_headers(CMD_START, headers.clone(), body.clone())
    });
    let replies = futures::future::join_all(sends).await;
    let ids: std::collections::HashSet<String> = replies
        .into_iter()
        .map(|r| {
            serde_json::from_slice::<Value>(&r.unwrap().payload).unwrap()["job_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let backups: Vec<Value> =
        serde_json::from_value(c.ok(QRY_JOBS, json!({ "kind": "backup" })).await).unwrap();
    assert_eq!(backups.len(), 2, "one job per key");
    let _ = &s.nats;
    s.service.stop().await;
}

#[tokio::test]
async fn events_live_in_an_existing_stream_that_captures_them() {
    init_tracing();
    let nats = NatsServer::start().await;
    let archive = tempfile::tempdir().unwrap();
    let client = nats.client().await;
    // A CIM-style shared stream that also captures our event subjects (but not our requests).
    create_stream(&client, "CIM_ALL", &["cim.*.evt.>"]).await;
    publish_events(&client, "cim.graph.evt.node", 0, 100, 3).await;
    let service = TestService::start(test_config(&nats.url(), archive.path(), "node-a")).await;
    let c = Caller::connect(&nats.url()).await;
    let job = c.ok(CMD_START, json!({ "streams": ["CIM_ALL"] })).await;
    let view = c.wait_job(job["job_id"].as_str().unwrap(), WAIT).await;
    assert_eq!(view.state, JobState::Completed, "{view:?}");
    // The cut is taken after the job's first event, which lands in the very stream backed up.
    assert_eq!(view.progress.messages_done, 101);
    let js = async_nats::jetstream::new(client.clone());
    assert!(
        js.get_stream(EVENTS_STREAM).await.is_err(),
        "no second stream was created"
    );
    let shared = state(&client, "CIM_ALL").await;
    assert!(
        shared.messages > 100,
        "our events are in CIM_ALL: {shared:?}"
    );
    service.stop().await;
}

/// A fuzz run found each lookup of an unknown job leaving five consumers on the event stream
/// (and each listing one on its bucket); 250 at once hit the consumer limit and broke other
/// clients. Lookups are requests only now: a burst is answered correctly and leaves nothing.
#[tokio::test]
async fn a_burst_of_lookups_is_answered_and_leaves_no_consumers() {
    let s = setup().await;
    let c = &s.caller;
    let api = cim_backup::jsapi::JsApi::new(c.client.clone());
    let consumers = |stream: &'static str| {
        let api = api.clone();
        async move {
            api.stream_info(stream)
                .await
                .unwrap()
                .unwrap()
                .state
                .consumer_count
        }
    };
    let streams = [EVENTS_STREAM, "KV_CIM_BACKUP_JOBS", "KV_CIM_BACKUP_CATALOG"];
    let mut before = Vec::new();
    for stream in streams {
        before.push(consumers(stream).await);
    }
    let lookups = (0..250).map(|i| {
        let c = c.clone();
        async move {
            let id = format!("0193f1c2-0000-7000-8000-{i:012}");
            let (subject, body, expected) = match i % 4 {
                0 => (QRY_JOB, json!({ "job_id": id }), Some(404)),
                1 => (CMD_CANCEL, json!({ "job_id": id }), Some(404)),
                2 => (QRY_JOBS, json!({}), None),
                _ => (QRY_BACKUPS, json!({}), None),
            };
            let reply = c.request(subject, &body).await.expect("answered");
            assert_eq!(reply.status, expected, "{subject}: {}", reply.body);
        }
    });
    futures::future::join_all(lookups).await;
    for (stream, before) in streams.into_iter().zip(before) {
        assert_eq!(
            consumers(stream).await,
            before,
            "lookups left consumers on {stream}"
        );
    }
    // Still serving, and other work is unaffected.
    let job = c.ok(CMD_START, json!({ "streams": ["EVENTS"] })).await;
    let view = c.wait_job(job["job_id"].as_str().unwrap(), WAIT).await;
    assert_eq!(view.state, JobState::Completed);
    s.service.stop().await;
}

/// A header line without a colon, a name with a space or a control byte, invalid UTF-8, a lone
/// CR: the NATS client used to drop the service's connection on any of them (losing the
/// requests behind it) or panic. Each malformed request gets a 400, the well-formed request
/// sent right behind it in the same write is answered, and the service keeps its connection.
#[tokio::test]
async fn a_malformed_header_block_is_refused_and_the_connection_stays() {
    use cim_backup_tests::raw::{RawClient, monitor};
    init_tracing();
    let monitor_port = cim_backup_tests::nats::free_port();
    let nats = NatsServer::start_with(vec!["-m".into(), monitor_port.to_string()]).await;
    let archive = tempfile::tempdir().unwrap();
    let service = TestService::start(test_config(&nats.url(), archive.path(), "node-a")).await;
    let service_connections = || async {
        let connz = monitor(monitor_port, "/connz").await;
        let mut cids: Vec<u64> = connz["connections"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["name"] == SERVICE_NAME)
            .map(|c| c["cid"].as_u64().unwrap())
            .collect();
        cids.sort();
        cids
    };
    let before = service_connections().await;
    assert!(!before.is_empty(), "the service is connected");

    let blocks: [&[u8]; 6] = [
        b"NATS/1.0\r\nno colon here\r\n\r\n",
        b"NATS/1.0\r\nBad Name: x\r\n\r\n",
        b"NATS/1.0\r\nX-Bin: \xff\xfe\r\n\r\n",
        b"NATS/1.0\r\nCtl\x01: x\r\n\r\n",
        b"NATS/1.0\r\nX-CR: a\rb\r\n\r\n",
        b"HTTP/1.1 200\r\nA: b\r\n\r\n",
    ];
    let mut raw = RawClient::connect(nats.port()).await;
    let mut frames = Vec::new();
    for (i, block) in blocks.iter().enumerate() {
        frames.extend(RawClient::hpub(
            QRY_JOBS,
            &format!("_RAW.bad.{i}"),
            block,
            b"{}",
        ));
        frames.extend(RawClient::publish(
            QRY_JOBS,
            &format!("_RAW.good.{i}"),
            b"{}",
        ));
    }
    raw.send(&frames).await;
    let replies = raw.replies(Duration::from_secs(5)).await;
    for i in 0..blocks.len() {
        let good = replies
            .iter()
            .find(|r| r.subject == format!("_RAW.good.{i}"))
            .unwrap_or_else(|| {
                panic!("request {i} behind a malformed one got no reply: {replies:?}")
            });
        assert_eq!(good.payload, b"[]", "{good:?}");
        let bad = replies
            .iter()
            .find(|r| r.subject == format!("_RAW.bad.{i}"))
            .unwrap_or_else(|| panic!("malformed request {i} got no reply"));
        assert!(
            bad.headers
                .as_deref()
                .is_some_and(|h| h.contains("Nats-Service-Error-Code: 400")),
            "{bad:?}"
        );
        let body: Value = serde_json::from_slice(&bad.payload).unwrap();
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("header block is malformed"),
            "{body}"
        );
    }
    assert_eq!(
        service_connections().await,
        before,
        "the service kept its connection"
    );

    // Such a message stored in a stream cannot be archived as it is: the backup says so,
    // naming it, instead of storing an altered header block.
    let client = nats.client().await;
    create_stream(&client, "ODD", &["odd.>"]).await;
    raw.send(&RawClient::hpub(
        "odd.x",
        "_RAW.ack",
        b"NATS/1.0\r\nno colon\r\n\r\n",
        b"{}",
    ))
    .await;
    assert_eq!(raw.replies(Duration::from_secs(1)).await.len(), 1, "stored");
    let c = Caller::connect(&nats.url()).await;
    let job = c.ok(CMD_START, json!({ "streams": ["ODD"] })).await;
    let view = c.wait_job(job["job_id"].as_str().unwrap(), WAIT).await;
    assert_eq!(view.state, JobState::Failed, "{view:?}");
    let message = view.error.unwrap().message;
    assert!(
        message.contains("message 1 of ODD has a malformed header block"),
        "{message}"
    );

    // The signal cannot be forged: a well-formed header of any name is just a header.
    create_stream(&client, "FORGED", &["forged.>"]).await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Malformed-Header-Lines", "3");
    headers.insert("X-Note", "cim-backup: malformed header lines: 3");
    async_nats::jetstream::new(client.clone())
        .publish_with_headers("forged.x", headers.clone(), "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let job = c.ok(CMD_START, json!({ "streams": ["FORGED"] })).await;
    let view = c.wait_job(job["job_id"].as_str().unwrap(), WAIT).await;
    assert_eq!(view.state, JobState::Completed, "{view:?}");
    let reply = c
        .client
        .request_with_headers(QRY_JOBS, headers, "{}".into())
        .await
        .unwrap();
    assert!(
        reply
            .headers
            .is_none_or(|h| h.get("Nats-Service-Error-Code").is_none()),
        "a well-formed request is answered"
    );
    service.stop().await;
}

/// Two processes with one instance name would both run that instance's jobs; the second one
/// does not start, and says why.
#[tokio::test]
async fn a_second_instance_with_the_same_name_does_not_start() {
    let s = setup().await;
    let config = test_config(&s.nats.url(), s._archive.path(), "node-a");
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        cim_backup::api::serve(config, std::future::pending()),
    )
    .await
    .expect("serve returns at once");
    let err = result.expect_err("a second node-a is refused");
    assert!(
        err.to_string()
            .contains("another cim-backup named instance \"node-a\" is running"),
        "{err}"
    );
    nothing_recorded_and_still_serving(&s, event_count(&s).await).await;
    s.service.stop().await;
}
