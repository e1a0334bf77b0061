//! The execmesh test harness: a real nats-server, real node-agents, in-process gateways and MCP clients, started like a deployment.
//!
//! ```no_run
//! # use execmesh_tests::{Gateway, Nats, NodeAgent};
//! # use serde_json::json;
//! # async fn scenario() {
//! let nats = Nats::start().await;
//! let agent = NodeAgent::new(&nats, "web-1").label("role", "web").start().await;
//! let gw = Gateway::new(&nats).start().await;
//! let client = gw.client("alice").await;
//! let out = client.call("bash", json!({"host": "web-1", "cmd": "echo hi"})).await;
//! assert_eq!(out.text(), "hi\n");
//! # }
//! ```
//!
//! Everything a test starts is stopped and cleaned up when its handle is dropped, also when the
//! test panics. Set `EXECMESH_TEST_LOG` (an `EnvFilter`, e.g. `execmesh=debug`) for more logs from
//! the in-process services; it is passed on to spawned agents as `EXECMESH_LOG`.

pub mod admin;
pub mod agent;
pub mod audit_sink;
pub mod browser;
pub mod chaos;
pub mod client;
pub mod fleet;
pub mod gateway;
pub mod gateway_process;
pub mod identities;
pub mod nats;
pub mod nats_accounts;
pub mod oauth;
pub mod otlp;
pub mod packages;
pub mod policy;
pub mod postgres;
pub mod presence;
pub mod process;
pub mod quickstart;
pub mod relay;
pub mod roundtrip;
pub mod scrape;
pub mod service_unit;
pub mod sshd;
pub mod tasks;

use std::path::{Path, PathBuf};
use std::sync::Once;

pub use admin::{AdminClient, AdminMode, AdminPki};
pub use agent::{NodeAgent, RunningAgent, StartingAgent};
pub use audit_sink::{AuditSink, RunningAudit};
pub use browser::Browser;
pub use client::{McpClient, ToolOutput, post_raw, read_answer, rejection_of, with_approval};
pub use execmesh_nats_server::{certificates, eventually};
pub use fleet::{Fleet, RunningFleet};
pub use gateway::{Gateway, RunningGateway};
pub use gateway_process::GatewayProcess;
pub use nats::{Nats, NatsTls};
pub use otlp::OtlpReceiver;
pub use policy::Policy;
pub use postgres::Postgres;
pub use tasks::TaskHandle;

/// The workspace root (the directory holding the root `Cargo.toml`).
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives inside the workspace")
}

/// A path under the workspace root.
pub fn workspace_path(relative: &str) -> PathBuf {
    workspace_root().join(relative)
}

/// Installs a tracing subscriber for the test process once: `EXECMESH_TEST_LOG` as the filter
/// (default `warn`), written through the test harness's captured output. The harness calls it
/// when it starts anything; tests may call it too.
pub fn init_tracing() {
    install_tracing(|filter| {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init()
    });
}

/// Like [`init_tracing`], but the logs go to stderr: for programs whose stdout is their report
/// (the benchmark program). Call it before anything else logs.
pub fn init_tracing_to_stderr() {
    install_tracing(|filter| {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init()
    });
}

/// Installs the subscriber `install` builds around the `EXECMESH_TEST_LOG` filter, once per
/// process.
fn install_tracing<E>(install: impl FnOnce(tracing_subscriber::EnvFilter) -> Result<(), E>) {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_env("EXECMESH_TEST_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        // Another subscriber may already be installed (a test's own); keep that one.
        let _ = install(filter);
    });
}
