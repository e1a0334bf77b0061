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
        let routes = free_route_ports(size);
        let mut nodes = Vec::with_capacity(size);
        for (i, port) in routes.iter().enumerate() {
            let mut builder = node.clone().monitor();
            builder.cluster = Some(ClusterNode {
                name: format!("n{}", i + 1),
                cluster: CLUSTER_NAME.to_string(),
                port: *port,
                routes: routes.clone(),
            });
            nodes.push(builder.start().await);
        }
        let cluster = Self { nodes };
        cluster.wait_for_meta_leader(None).await;
        cluster
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
    /// to 30 s) until they agree on one that is not `not`: after a leader is killed, pass its
    /// name to wait for the next election.
    pub async fn wait_for_meta_leader(&self, not: Option<&str>) -> String {
        eventually(FORMATION_TIMEOUT, || async {
            let mut leaders = Vec::new();
            for node in &self.nodes {
                if !node.is_running().await {
                    continue;
                }
                leaders.push(meta_leader_seen_by(node).await?);
            }
            let first = leaders.first()?.clone();
            let agreed = leaders.iter().all(|leader| *leader == first);
            (agreed && Some(first.as_str()) != not && !first.is_empty()).then_some(first)
        })
        .await
    }
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

/// `count` route ports free right now. Routes name their peers' ports before the peers start,
/// so they cannot be chosen by the server (`-1`) as client ports are; the listeners are closed
/// just before the nodes bind them.
fn free_route_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port"))
        .collect();
    listeners
        .iter()
        .map(|l| {
            l.local_addr()
                .expect("local address of a bound port")
                .port()
        })
        .collect()
}
