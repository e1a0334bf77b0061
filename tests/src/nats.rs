//! The test mesh's nats-server: a [`NatsServer`] (JetStream, temp store, TLS if asked) with the mesh's exec signing key and identities beside it.

use std::ops::Deref;
use std::path::PathBuf;

use async_nats::jetstream::message::StreamMessage;
use execmesh_gateway::core::signer::Signer;
use execmesh_nats_server::{NatsServer, NatsServerBuilder};

use crate::identities::MeshIdentities;
use crate::{NodeAgent, RunningAgent};

pub use execmesh_nats_server::{NatsTls, connect, nats_server_binary};

/// File name of the test mesh's exec signing key in the server's temp dir.
const MESH_SIGNING_KEY: &str = "mesh-signing.key";

/// A nats-server with JetStream, private to one test, and the keys of the mesh that uses it.
/// Everything a [`NatsServer`] offers (URL, clients, restart, stop, kill, TLS files) is there
/// through `Deref`.
///
/// ```no_run
/// # async fn scenario() {
/// # use execmesh_tests::Nats;
/// let nats = Nats::start().await;
/// let js = nats.jetstream().await;
/// nats.restart().await; // same port, same store: clients reconnect, file-stored data survives
/// # }
/// ```
pub struct Nats {
    /// The server; its temp dir also holds the mesh's signing key and identities.
    server: NatsServer,
    /// The public half of [`Nats::mesh_signing_key`], as agents' `gateway_keys` take it.
    mesh_public_key: String,
    /// The test mesh's identities: the seeds its services sign records with and the file its
    /// gateways and sinks check records against.
    identities: MeshIdentities,
}

/// Options for a [`Nats`] server beyond the defaults (see [`NatsServerBuilder`]).
#[derive(Default)]
pub struct NatsBuilder(NatsServerBuilder);

// === impl NatsBuilder ===

impl NatsBuilder {
    /// Runs the server with this configuration file text (`-c`); see [`NatsServerBuilder::config`].
    pub fn config(self, text: impl Into<String>) -> Self {
        Self(self.0.config(text))
    }

    /// Adds a command-line argument.
    pub fn arg(self, arg: impl Into<String>) -> Self {
        Self(self.0.arg(arg))
    }

    /// Accepts only TLS connections ([`NatsServerBuilder::tls`]). The harness's own connections
    /// and the agents, gateways and sinks started on this server use it by themselves.
    pub fn tls(self) -> Self {
        Self(self.0.tls())
    }

    /// TLS mode in which the server also requires a client certificate signed by its CA; the
    /// harness gives its services one ([`NatsTls::client`]).
    pub fn tls_verify_clients(self) -> Self {
        Self(self.0.tls_verify_clients())
    }

    /// Serves the monitoring endpoint ([`NatsServer::monitor_url`]).
    pub fn monitor(self) -> Self {
        Self(self.0.monitor())
    }

    /// Starts the server and waits until it is ready.
    pub async fn start(self) -> Nats {
        crate::init_tracing();
        let server = self.0.start().await;
        // One command key per test mesh, made before anything starts: agents must trust it
        // before the first gateway signs with it.
        let signer = Signer::load_or_create(&server.dir().join(MESH_SIGNING_KEY))
            .expect("create the mesh's exec signing key");
        let identities = MeshIdentities::create(&server.dir().join("identities"));
        Nats {
            server,
            mesh_public_key: signer.public_key_base64(),
            identities,
        }
    }
}

// === impl Nats ===

impl Nats {
    /// Starts a nats-server with JetStream on a free loopback port with a fresh store.
    pub async fn start() -> Nats {
        Self::builder().start().await
    }

    /// A server with extra configuration.
    pub fn builder() -> NatsBuilder {
        NatsBuilder::default()
    }

    /// The key file with which gateways of this test sign requests to agents (by default:
    /// [`crate::Gateway::new`] uses it and [`crate::NodeAgent::new`] trusts it).
    pub fn mesh_signing_key(&self) -> PathBuf {
        self.server.dir().join(MESH_SIGNING_KEY)
    }

    /// The public half of [`Nats::mesh_signing_key`] (base64), as an agent's `--gateway-key`.
    pub fn mesh_public_key(&self) -> &str {
        &self.mesh_public_key
    }

    /// The test mesh's identities (seeds and the identities file): the harness's agents,
    /// gateways and sinks use them unless a test gives them others.
    pub fn identities(&self) -> &MeshIdentities {
        &self.identities
    }

    /// Every message `stream` holds, first to last: what reached the server, for scenarios
    /// that check nothing secret did.
    pub async fn stored_messages(&self, stream: &str) -> Vec<StreamMessage> {
        let js = self.jetstream().await;
        let mut handle = js
            .get_stream(stream)
            .await
            .unwrap_or_else(|e| panic!("{stream} exists: {e}"));
        let info = handle.info().await.expect("stream info");
        let mut messages = Vec::new();
        for seq in 1..=info.state.last_sequence {
            let message = handle.get_raw_message(seq).await;
            messages.push(message.unwrap_or_else(|e| panic!("{stream} holds {seq}: {e}")));
        }
        messages
    }

    /// Starts a node-agent for `host` on this server with `labels` (key, value), as a
    /// deployment would; returns once its presence is written. [`NodeAgent`] builds any other.
    pub async fn agent(&self, host: &str, labels: &[(&str, &str)]) -> RunningAgent {
        let agent = labels
            .iter()
            .fold(NodeAgent::new(self, host), |agent, (key, value)| {
                agent.label(key, value)
            });
        agent.start().await
    }
}

impl Deref for Nats {
    type Target = NatsServer;

    fn deref(&self) -> &NatsServer {
        &self.server
    }
}
