//! Wire compatibility with the previous release: messages encoded with its `exec.proto` (checked in under `tests/fixtures/previous/`) decode with today's types, today's decode with its schema, and no field number changed meaning.
//!
//! A gateway and agents one release apart exchange exactly these messages (requests, replies,
//! output records, job statuses, heartbeats, facts), so this is what lets an operator upgrade
//! the gateway first and the fleet over days. Requests stay verifiable across the skew because
//! the signature covers the bytes as sent, unknown fields included (exec.proto, SIGNATURE).
//!
//! When a release ships, copy its `exec.proto` over the fixture: the test then guards the next
//! step.

use std::path::Path;

use execmesh_proto::pb;
use prost::Message as _;
use protox::prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, Value,
};

/// The package both schemas declare.
const PACKAGE: &str = "execmesh.v1";

/// The previous release's `exec.proto`, compiled as its binaries were.
fn previous() -> DescriptorPool {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/previous");
    let mut compiler = protox::Compiler::new([fixtures]).expect("the fixtures dir exists");
    compiler
        .open_file("execmesh/v1/exec.proto")
        .expect("the previous exec.proto compiles");
    compiler.descriptor_pool()
}

/// Today's schema, from the descriptor set the build embeds.
fn current() -> DescriptorPool {
    DescriptorPool::decode(execmesh_proto::FILE_DESCRIPTOR_SET).expect("the embedded descriptors")
}

fn message(pool: &DescriptorPool, name: &str) -> MessageDescriptor {
    pool.get_message_by_name(&format!("{PACKAGE}.{name}"))
        .unwrap_or_else(|| panic!("{name} is in the schema"))
}

/// A field's type as a wire-compatible name: messages and enums by their full name.
fn kind_name(field: &FieldDescriptor) -> String {
    let kind = match field.kind() {
        Kind::Message(m) => m.full_name().to_string(),
        Kind::Enum(e) => e.full_name().to_string(),
        scalar => format!("{scalar:?}"),
    };
    let shape = match (field.is_map(), field.is_list()) {
        (true, _) => "map",
        (false, true) => "repeated",
        (false, false) => "single",
    };
    format!("{shape} {kind}")
}

#[test]
fn no_field_number_of_the_previous_release_changed_meaning() {
    let (previous, current) = (previous(), current());
    let mut problems = Vec::new();
    for old in previous.all_messages() {
        let Some(new) = current.get_message_by_name(old.full_name()) else {
            // A message no longer sent by anyone may go; its fields live nowhere else.
            continue;
        };
        for field in old.fields() {
            let number = field.number();
            match new.get_field(number) {
                Some(now) if kind_name(&now) != kind_name(&field) => problems.push(format!(
                    "{}.{} (#{number}) was {} and is now {} {}",
                    old.full_name(),
                    field.name(),
                    kind_name(&field),
                    now.name(),
                    kind_name(&now)
                )),
                Some(_) => {}
                None if new.reserved_ranges().any(|r| r.contains(&number)) => {}
                None => problems.push(format!(
                    "{}.{} (#{number}) was removed without reserving its number",
                    old.full_name(),
                    field.name()
                )),
            }
        }
    }
    for old in previous.all_enums() {
        let Some(new) = current.get_enum_by_name(old.full_name()) else {
            continue;
        };
        for value in old.values() {
            match new.get_value(value.number()) {
                Some(now) if now.name() != value.name() => problems.push(format!(
                    "{} value {} was {} and is now {}",
                    old.full_name(),
                    value.number(),
                    value.name(),
                    now.name()
                )),
                Some(_) => {}
                None => problems.push(format!(
                    "{} value {} ({}) was removed",
                    old.full_name(),
                    value.number(),
                    value.name()
                )),
            }
        }
    }
    assert!(
        problems.is_empty(),
        "wire changes:\n{}",
        problems.join("\n")
    );
}

#[test]
fn a_request_from_a_previous_gateway_decodes_with_every_field() {
    let previous = previous();
    let mut run = DynamicMessage::new(message(&previous, "RunRequest"));
    run.set_field_by_name("cmd", Value::String("uptime".into()));
    run.set_field_by_name("cwd", Value::String("/srv".into()));
    run.set_field_by_name("timeout_ms", Value::U64(5_000));
    let mut request = DynamicMessage::new(message(&previous, "ExecRequest"));
    request.set_field_by_name("job_id", Value::String("uptime-abc123".into()));
    request.set_field_by_name("user", Value::String("alice".into()));
    request.set_field_by_name("key_id", Value::String("k1".into()));
    request.set_field_by_name("signature", Value::Bytes(vec![7u8; 64].into()));
    request.set_field_by_name("run", Value::Message(run));

    let decoded = pb::ExecRequest::decode(request.encode_to_vec().as_slice())
        .expect("today's agent decodes a previous gateway's request");
    assert_eq!(decoded.job_id, "uptime-abc123");
    assert_eq!(decoded.user, "alice");
    assert_eq!(decoded.key_id, "k1");
    assert_eq!(decoded.signature, vec![7u8; 64]);
    // Fields the previous gateway did not know come out empty, which today's agent reads as
    // "not asked for" (no agent instance named: the status is stored before the job starts).
    assert_eq!(decoded.agent_instance, "");
    match decoded.body {
        Some(pb::exec_request::Body::Run(run)) => {
            assert_eq!((run.cmd.as_str(), run.cwd.as_str()), ("uptime", "/srv"));
            assert_eq!(run.timeout_ms, 5_000);
            assert!(run.argv.is_empty(), "no argv: the command runs in a shell");
            assert!(run.runbook.is_none());
        }
        other => panic!("a run request, not {other:?}"),
    }
}

#[test]
fn what_todays_agent_writes_decodes_with_the_previous_schema() {
    let previous = previous();
    let status = pb::JobStatus {
        job_id: "build-x1".into(),
        host: "web-1".into(),
        user: "alice".into(),
        bytes: 2048,
        lines: 40,
        dropped_bytes: 10,
        // New since the previous release: an older gateway skips them.
        dropped_by: pb::OutputLimit::UserQuota as i32,
        last_output_at_ms: 1_700_000_000_000,
        ..Default::default()
    };
    let old = DynamicMessage::decode(
        message(&previous, "JobStatus"),
        status.encode_to_vec().as_slice(),
    )
    .expect("a previous gateway decodes today's job status");
    let field = |name: &str| old.get_field_by_name(name).map(|v| v.into_owned());
    assert_eq!(field("job_id"), Some(Value::String("build-x1".into())));
    assert_eq!(field("user"), Some(Value::String("alice".into())));
    assert_eq!(field("bytes"), Some(Value::U64(2048)));
    assert_eq!(field("lines"), Some(Value::U64(40)));
    assert_eq!(field("dropped_bytes"), Some(Value::U64(10)));

    let presence = pb::Presence {
        host: "web-1".into(),
        running_jobs: 3,
        max_jobs: 64,
        version: "0.2.0".into(),
        output: Some(pb::OutputUsage {
            host_bytes: 1,
            ..Default::default()
        }),
        ..Default::default()
    };
    let old = DynamicMessage::decode(
        message(&previous, "Presence"),
        presence.encode_to_vec().as_slice(),
    )
    .expect("a previous gateway decodes today's heartbeat");
    assert_eq!(
        old.get_field_by_name("running_jobs")
            .map(|v| v.into_owned()),
        Some(Value::U32(3))
    );
    assert_eq!(
        old.get_field_by_name("version").map(|v| v.into_owned()),
        Some(Value::String("0.2.0".into()))
    );
}

#[test]
fn a_file_grep_from_a_previous_gateway_is_an_empty_request_not_another_operation() {
    // The previous `file` grep (FileRequest field 4) became a GrepRequest; its number is
    // reserved, so a previous gateway's file grep reaches today's agent as a file request with
    // no operation, which the agent refuses as malformed, rather than as some other operation.
    let previous = previous();
    let mut grep = DynamicMessage::new(message(&previous, "FileGrep"));
    grep.set_field_by_name("path", Value::String("/var/log".into()));
    grep.set_field_by_name("pattern", Value::String("error".into()));
    let mut file = DynamicMessage::new(message(&previous, "FileRequest"));
    file.set_field_by_name("grep", Value::Message(grep));
    let decoded =
        pb::FileRequest::decode(file.encode_to_vec().as_slice()).expect("today's agent decodes it");
    assert!(decoded.op.is_none(), "no operation: {:?}", decoded.op);
}
