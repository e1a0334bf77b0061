//! A short guard on the cost of a call: `bash true` through the mesh against a local MCP shell server, failing only on a gross regression, so a change that doubles the latency is seen where it is made.
//!
//! The figures themselves are the benchmark's (`execmesh-bench roundtrip`, docs/benchmarks.md);
//! this only bounds the ratio of the medians, with the calls alternating so that both sides see
//! the same load from the scenarios running beside it.

use execmesh_tests::roundtrip::interleaved_p50;

/// The bound: the mesh's median over the peer's. The release benchmark measured about 2× before
/// the agent answered ahead of its stores, and less after.
const MAX_RATIO: f64 = 3.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_through_the_mesh_is_not_grossly_slower_than_a_local_shell_server() {
    let (mesh, peer) = interleaved_p50(30, 300)
        .await
        .expect("both sides answer every call");
    let ratio = mesh.as_secs_f64() / peer.as_secs_f64();
    assert!(
        ratio <= MAX_RATIO,
        "p50 through the mesh {mesh:?} is {ratio:.2}x the local shell server's {peer:?} (at most {MAX_RATIO}x)"
    );
}
