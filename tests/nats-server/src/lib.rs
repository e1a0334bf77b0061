//! A real nats-server for the tests of every execmesh package: JetStream in a temp store, TLS and accounts on request, the minimum release or a 3-node cluster on request, killed and cleaned up on drop; with the helpers its users share (child processes, test certificates, `eventually`).
//!
//! Dev-only: the gateway, node-agent and scenario tests start their servers through it, so there
//! is one way to find, start, restart and stop a server.

mod binary;
pub mod certificates;
mod cluster;
pub mod eventually;
pub mod process;
mod server;
mod tls;

pub use binary::{
    MINIMUM_RELEASE, minimum_nats_server_binary, nats_server_binary, nats_server_version,
};
pub use cluster::NatsCluster;
pub use eventually::eventually;
pub use server::{NatsServer, NatsServerBuilder};
pub use tls::{NatsTls, connect};
