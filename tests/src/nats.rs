//! The test mesh's nats-server: a [`NatsServer`] (JetStream, temp store, TLS if asked) with the mesh's exec signing key and identities beside it.

use std::ops::Deref;
use std::path::PathBuf;

use async_nats::jetstream;
use async_nats::jetstream::message::StreamMessage;
use execmesh_gateway::core::signer::Signer;
use execmesh_nats_server::{NatsCluster, NatsServer, NatsServerBuilder};

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
    /// The server, or the cluster's nodes; the (first) server's temp dir also holds the mesh's
    /// signing key and identities.
    servers: Servers,
    /// The public half of [`Nats::mesh_signing_key`], as agents' `gateway_keys` take it.
    mesh_public_key: String,
    /// The test mesh's identities: the seeds its services sign records with and the file its
    /// gateways and sinks check records against.
    identities: MeshIdentities,
}

/// One server, or the nodes of a cluster.
enum Servers {
    // Boxed: a server is many times the size of a cluster's list of them.
    One(Box<NatsServer>),
    Cluster(NatsCluster),
}

/// Options for a [`Nats`] server beyond the defaults (see [`NatsServerBuilder`]).
#[derive(Default)]
pub struct NatsBuilder(NatsServerBuilder, Option<usize>);

// === impl NatsBuilder ===

impl NatsBuilder {
    /// Runs the server with this configuration file text (`-c`); see [`NatsServerBuilder::config`].
    pub fn config(self, text: impl Into<String>) -> Self {
        Self(self.0.config(text), self.1)
    }

    /// Adds a command-line argument.
    pub fn arg(self, arg: impl Into<String>) -> Self {
        Self(self.0.arg(arg), self.1)
    }

    /// Accepts only TLS connections ([`NatsServerBuilder::tls`]). The harness's own connections
    /// and the agents, gateways and sinks started on this server use it by themselves.
    pub fn tls(self) -> Self {
        Self(self.0.tls(), self.1)
    }

    /// TLS mode in which the server also requires a client certificate signed by its CA; the
    /// harness gives its services one ([`NatsTls::client`]).
    pub fn tls_verify_clients(self) -> Self {
        Self(self.0.tls_verify_clients(), self.1)
    }

    /// Serves the monitoring endpoint ([`NatsServer::monitor_url`]).
    pub fn monitor(self) -> Self {
        Self(self.0.monitor(), self.1)
    }

    /// Runs the minimum supported nats-server release instead of the current one
    /// ([`NatsServerBuilder::minimum_version`]).
    pub fn minimum_version(self) -> Self {
        Self(self.0.minimum_version(), self.1)
    }

    /// Runs a JetStream cluster of `nodes` servers on loopback instead of one server
    /// ([`NatsCluster`]): every service the harness starts gets every node's URL, and
    /// [`Nats::cluster`] kills and restarts nodes. Each node gets the same configuration.
    pub fn cluster(self, nodes: usize) -> Self {
        Self(self.0, Some(nodes))
    }

    /// Starts the server (or the cluster) and waits until it is ready.
    pub async fn start(self) -> Nats {
        crate::init_tracing();
        let servers = match self.1 {
            None => Servers::One(Box::new(self.0.start().await)),
            Some(nodes) => Servers::Cluster(NatsCluster::start(self.0, nodes).await),
        };
        let server = servers.first();
        // One command key per test mesh, made before anything starts: agents must trust it
        // before the first gateway signs with it.
        let signer = Signer::load_or_create(&server.dir().join(MESH_SIGNING_KEY))
            .expect("create the mesh's exec signing key");
        let identities = MeshIdentities::create(&server.dir().join("identities"));
        Nats {
            servers,
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

    /// The server's URL; of a cluster, every node's, comma separated (as services take them).
    pub fn url(&self) -> String {
        match &self.servers {
            Servers::One(server) => server.url(),
            Servers::Cluster(cluster) => cluster.urls(),
        }
    }

    /// A new client connection to [`Nats::url`] (over TLS in TLS mode).
    pub async fn client(&self) -> async_nats::Client {
        connect(&self.url(), self.tls()).await
    }

    /// A JetStream context over a new client connection.
    pub async fn jetstream(&self) -> jetstream::Context {
        jetstream::new(self.client().await)
    }

    /// The JetStream replicas the mesh's streams and buckets get on this server: 1, or 3 on a
    /// cluster, as an operator sets `replicas` / `kv_replicas` for a clustered mesh. The
    /// harness's gateways, agents and sinks are configured with it.
    pub fn replicas(&self) -> usize {
        match &self.servers {
            Servers::One(_) => 1,
            Servers::Cluster(cluster) => cluster.nodes().len().min(3),
        }
    }

    /// The cluster's nodes, when started with [`NatsBuilder::cluster`].
    pub fn cluster(&self) -> Option<&NatsCluster> {
        match &self.servers {
            Servers::One(_) => None,
            Servers::Cluster(cluster) => Some(cluster),
        }
    }

    /// The key file with which gateways of this test sign requests to agents (by default:
    /// [`crate::Gateway::new`] uses it and [`crate::NodeAgent::new`] trusts it).
    pub fn mesh_signing_key(&self) -> PathBuf {
        self.servers.first().dir().join(MESH_SIGNING_KEY)
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

// === impl Servers ===

impl Servers {
    /// The server, or the cluster's first node.
    fn first(&self) -> &NatsServer {
        match self {
            Servers::One(server) => server,
            Servers::Cluster(cluster) => &cluster.nodes()[0],
        }
    }
}

/// A single server's methods; of a cluster, those of its first node (`n1`), except
/// [`Nats::url`], [`Nats::client`] and [`Nats::jetstream`], which reach every node.
impl Deref for Nats {
    type Target = NatsServer;

    fn deref(&self) -> &NatsServer {
        self.servers.first()
    }
}
