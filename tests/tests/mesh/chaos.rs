//! The fault scenarios of `execmesh_tests::chaos` at the size of the test suite: parts of the mesh killed with SIGKILL mid-work or flooded past their limits, and the promises that must hold afterwards.
//!
//! `execmesh-bench chaos` runs the same scenarios at full size and prints their figures. A new
//! fault scenario gets a line here once it is in `chaos::Scenario`.

use execmesh_tests::chaos::{Scenario, Size};

/// Runs `scenario` at the test suite's size and prints its figures; panics naming every broken
/// promise, with the figures.
async fn holds(scenario: Scenario) {
    match scenario.run(&Size::CI).await {
        // The figures go to the test's captured output (shown with `--nocapture`).
        Ok(figures) => println!("{scenario}: {figures}"),
        Err(broken) => panic!("{broken}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_kill_mid_job_loses_no_line() {
    holds(Scenario::NatsKillMidJob).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_kill_reports_its_jobs_lost_and_its_restart_leaves_no_orphan() {
    holds(Scenario::AgentKill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_job_pages_to_the_end_on_another_replica() {
    holds(Scenario::ReplicaKill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_kills_during_calls_leave_every_audit_row_once_and_the_chain_intact() {
    holds(Scenario::SinkKillCycles).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_recovers_from_a_nats_outage_while_idle_without_restarts() {
    holds(Scenario::NatsOutageIdle).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_past_the_quota_and_the_stream_is_dropped_counted_and_harmless() {
    holds(Scenario::DiskQuota).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_while_nats_is_away_fail_fast_and_answer_again_after() {
    holds(Scenario::NatsAwayDuringCalls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_cluster_leaders_lose_no_paged_line_and_pages_resume() {
    holds(Scenario::ClusterLeaderKill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_node_dies_fails_over_to_another_by_itself() {
    holds(Scenario::ClusterAgentFailover).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_silent_past_its_heartbeat_keeps_its_job_and_pages_reach_the_real_end() {
    holds(Scenario::AgentStall).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_the_cluster_leaves_every_call_answered_or_refused_retryably() {
    holds(Scenario::ClusterRollingRestart).await;
}
