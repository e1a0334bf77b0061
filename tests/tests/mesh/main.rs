//! The end-to-end scenarios of execmesh, one module per area, in one test binary: the gateway, the
//! agents and the harness are linked once, and the scenarios of every area share the test threads.
//!
//! Each scenario starts its own nats-server, agents, gateways and sinks on free ports and temp
//! dirs (the harness in `execmesh_tests`), so scenarios of different modules run side by side.

mod admin;
mod approvals;
mod audit;
mod chaos;
mod console;
mod consumers;
mod ctl;
mod exec;
mod fanout;
mod fast_reply;
mod file;
mod harness;
mod held;
mod https;
mod limits;
mod nats_security;
mod nats_tls;
mod nats_versions;
mod oauth;
mod outage;
mod outcomes;
mod packages;
mod perf_guard;
mod protocol;
mod relay;
mod relay_files;
mod runbooks;
mod security_node;
mod states;
mod task_approvals;
mod tasks;
mod telemetry;
mod telemetry_gauges;
mod tiers;
