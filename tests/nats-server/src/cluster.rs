//! A JetStream cluster of nats-servers on loopback: every node a [`NatsServer`] with its own store, routes between all of them, each node killed and restarted on its own, the meta leader read from the servers' monitoring endpoint.

use std::net::TcpListener;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::eventually::eventually;
use crate::server::{ClusterNode, NatsServer, NatsServerBuilder};

/// The cluster's name, as `cluster_name` of every node.
const CLUSTER_NAME: &str = "execmesh-test";
/// How long a cluster may take to elect its first meta leader.
const FORMATION_TIMEOUT: Duration = Duration::from_secs(30);
/// The stream [`NatsCluster::start`] creates and deletes to learn that streams can be placed.
const PLACEMENT_PROBE: &str = "HARNESS_PLACEMENT_PROBE";
/// How long one monitoring request may take.
const MONITOR_TIMEOUT: Duration = Duration::from_secs(5);

/// The nodes of a JetStream cluster, `n1` … `nN`, all running once [`NatsCluster::start`] returns.
pub struct NatsCluster {
    nodes: Vec<NatsServer>,
}

// === impl NatsCluster ===

impl NatsCluster {
    /// Starts `size` nodes, each from `node` (its configuration, minimum release, …) with the
    /// monitoring endpoint on, and returns once the cluster has a JetStream meta leader that
    /// every node knows.
    ///
    /// TLS mode is refused: each node would make its own CA, which clients of the others would
    /// not trust (the cluster configuration under `deploy/nats/cluster` is checked for TLS).
    pub async fn start(node: NatsServerBuilder, size: usize) -> Self {
        assert!(
            size >= 3,
            "a JetStream cluster needs at least 3 nodes to survive one"
        );
        assert!(
            node.tls_mode().is_none(),
            "the test cluster runs without TLS (one CA per node would not do)"
        );
        // Each route port stays held until its node starts: the nodes started before it take
        // their client and monitoring ports from the system, which could hand out a route port
        // released early (the node that needs it then fails with "address already in use").
        let held = free_route_ports(size);
        let routes: Vec<u16> = held.iter().map(|(port, _)| *port).collect();
        let mut nodes = Vec::with_capacity(size);
        for (i, (port, listener)) in held.into_iter().enumerate() {
            let mut builder = node.clone().monitor();
            builder.cluster = Some(ClusterNode {
                name: format!("n{}", i + 1),
                cluster: CLUSTER_NAME.to_string(),
                port,
                routes: routes.clone(),
            });
            drop(listener);
            nodes.push(builder.start().await);
        }
        let cluster = Self { nodes };
        cluster.wait_for_meta_leader(None).await;
        cluster.wait_for_placement().await;
        cluster
    }

    /// Waits until the meta leader places a stream on every node: it does so only once it has
    /// heard from each node's JetStream (until then creating a stream with a replica per node
    /// fails with "no suitable peers for placement"), some time after the meta group formed.
    async fn wait_for_placement(&self) {
        let client = async_nats::connect(self.nodes[0].url())
            .await
            .expect("a client connects to the cluster");
        let js = async_nats::jetstream::new(client);
        let probe = async_nats::jetstream::stream::Config {
            name: PLACEMENT_PROBE.to_string(),
            subjects: vec![format!("{PLACEMENT_PROBE}.>")],
            num_replicas: self.nodes.len(),
            ..Default::default()
        };
        eventually(FORMATION_TIMEOUT, || async {
            js.get_or_create_stream(probe.clone())
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        let _ = js.delete_stream(PLACEMENT_PROBE).await;
    }

    /// Every node, `n1` first.
    pub fn nodes(&self) -> &[NatsServer] {
        &self.nodes
    }

    /// The node named `name` (`n1` …).
    pub fn node(&self, name: &str) -> &NatsServer {
        self.nodes
            .iter()
            .find(|node| node.name() == Some(name))
            .unwrap_or_else(|| panic!("no node {name} in the cluster"))
    }

    /// Every node's client URL, comma separated, as the services take them.
    pub fn urls(&self) -> String {
        let urls: Vec<String> = self.nodes.iter().map(NatsServer::url).collect();
        urls.join(",")
    }

    /// The name of the node the running nodes agree is the JetStream meta leader, waiting (up
    /// to 30 s) until they agree on one that is not `not` and the leader counts every other
    /// running node a current peer: after a leader is killed, pass its name to wait for the next
    /// election. (Before every node is current, creating an R3 stream fails with "no suitable
    /// peers for placement".)
    pub async fn wait_for_meta_leader(&self, not: Option<&str>) -> String {
        eventually(FORMATION_TIMEOUT, || async {
            let mut leaders = Vec::new();
            let mut running = Vec::new();
            for node in &self.nodes {
                if !node.is_running().await {
                    continue;
                }
                leaders.push(meta_leader_seen_by(node).await?);
                running.push(node);
            }
            let first = leaders.first()?.clone();
            let agreed = leaders.iter().all(|leader| *leader == first);
            if !agreed || Some(first.as_str()) == not || first.is_empty() {
                return None;
            }
            let leader = running.iter().find(|n| n.name() == Some(first.as_str()))?;
            let peers: Vec<&str> = running
                .iter()
                .filter_map(|n| n.name())
                .filter(|name| *name != first)
                .collect();
            current_peers(leader, &peers).await.then_some(first)
        })
        .await
    }
}

/// Whether the meta leader `leader` counts each of `peers` a current member of the meta group.
async fn current_peers(leader: &NatsServer, peers: &[&str]) -> bool {
    let Some(url) = leader.monitor_url() else {
        return false;
    };
    let Some(jsz) = http_get_json(url.strip_prefix("http://").unwrap_or(&url), "/jsz").await else {
        return false;
    };
    let replicas = jsz["meta_cluster"]["replicas"].as_array();
    peers.iter().all(|peer| {
        replicas.is_some_and(|replicas| {
            replicas
                .iter()
                .any(|r| r["name"] == *peer && r["current"] == true && r["offline"] != true)
        })
    })
}

/// The meta leader `node` knows of (`/jsz`'s `meta_cluster.leader`), `None` while it knows none
/// or does not answer.
async fn meta_leader_seen_by(node: &NatsServer) -> Option<String> {
    let url = node.monitor_url()?;
    let jsz = http_get_json(url.strip_prefix("http://")?, "/jsz").await?;
    let leader = jsz["meta_cluster"]["leader"].as_str()?;
    (!leader.is_empty()).then(|| leader.to_string())
}

/// A GET of `path` on the monitoring endpoint at `addr` (`127.0.0.1:<port>`), its body as JSON.
/// A plain HTTP/1.0 exchange: the endpoint is loopback, and this crate stays free of an HTTP
/// client for one request.
async fn http_get_json(addr: &str, path: &str) -> Option<serde_json::Value> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8(response).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        let status = head.lines().next()?;
        status
            .split(' ')
            .nth(1)
            .is_some_and(|code| code == "200")
            .then(|| serde_json::from_str(body).ok())
            .flatten()
    };
    tokio::time::timeout(MONITOR_TIMEOUT, exchange)
        .await
        .ok()
        .flatten()
}

/// `count` route ports free right now, each with the listener that holds it. Routes name their
/// peers' ports before the peers start, so they cannot be chosen by the server (`-1`) as client
/// ports are; each listener is closed just before its node binds the port.
fn free_route_ports(count: usize) -> Vec<(u16, TcpListener)> {
    (0..count)
        .map(|_| {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port");
            let port = listener
                .local_addr()
                .expect("local address of a bound port")
                .port();
            (port, listener)
        })
        .collect()
}
