//! JobsService: job statuses from `mesh_jobs`, kills through the same signed, audited path as
//! the MCP `job` tool, and tails of MESH_OUT as server streams that end with the job.
//!
//! An admin-scoped token does not make its holder an operator: a caller sees their own jobs, and
//! other users' only with operator rights in the policy (`operators`), audited per use; other
//! jobs are NOT_FOUND in the same words as ids no host knows.

use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use execmesh_proto::redact::Redactor;
use execmesh_proto::{Token, pb};

use super::{Admin, AdminStream, error};
use crate::core::auth::Identity;
use crate::core::jobs::access::{JobAccess, Via};
use crate::core::jobs::follow::{Followed, follow};
use crate::core::jobs::state;
use crate::core::paging::{self, Cursor, PageLimits};

/// Jobs a List returns when the request names no limit.
const DEFAULT_LIMIT: usize = 100;
/// Most jobs one List returns.
const MAX_LIMIT: usize = 10_000;

/// The JobsService implementation.
pub struct JobsApi {
    admin: Admin,
}

impl JobsApi {
    pub fn new(admin: Admin) -> Self {
        Self { admin }
    }
}

#[tonic::async_trait]
impl pb::jobs_service_server::JobsService for JobsApi {
    async fn list(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        self.admin
            .unary("JobsService.List", request, |caller, req| async move {
                let mesh = &self.admin.state.mesh;
                let access = self.access(&caller);
                if !req.user.is_empty() && req.user != caller.user.as_str() && !access.is_operator()
                {
                    return Err(error::tool(&crate::core::error::ToolError::NotOperator {
                        action: "list other users' jobs".into(),
                    }));
                }
                let state_filter = pb::JobState::try_from(req.state).map_err(|_| {
                    Status::invalid_argument(format!("unknown job state {}", req.state))
                })?;
                let mut jobs = if req.group.is_empty() {
                    mesh.jobs().await.map_err(error::mesh)?
                } else {
                    let group = Token::parse("job id", &req.group)
                        .map_err(|e| error::bad_id("group id", &req.group, e))?;
                    mesh.group_jobs(&group).await.map_err(error::mesh)?
                };
                jobs.retain(|j| {
                    access.sees(j)
                        && (req.host.is_empty() || j.host == req.host)
                        && (req.user.is_empty() || j.user == req.user)
                });
                // Settled before filtering by state, by the rule every reader applies.
                let audit = &self.admin.state.audit;
                let mut jobs = state::settle_all(mesh, audit, jobs)
                    .await
                    .map_err(error::mesh)?;
                if state_filter != pb::JobState::Unspecified {
                    jobs.retain(|j| j.state() == state_filter);
                }
                jobs.sort_by(|a, b| {
                    b.started_at_ms
                        .cmp(&a.started_at_ms)
                        .then_with(|| a.host.cmp(&b.host))
                });
                let limit = match req.limit {
                    0 => DEFAULT_LIMIT,
                    n => (n as usize).min(MAX_LIMIT),
                };
                let truncated = jobs.len() > limit;
                jobs.truncate(limit);
                let redactor = self.admin.state.audit.redactor();
                jobs.iter_mut().for_each(|job| redactor.job_status(job));
                self.audit_use(&access, "JobsService.List", "list", &jobs);
                Ok(pb::ListJobsResponse { jobs, truncated })
            })
            .await
    }

    async fn get(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::GetJobResponse>, Status> {
        self.admin
            .unary("JobsService.Get", request, |caller, req| async move {
                let access = self.access(&caller);
                let jobs = self.find(&access, &req.job_id, &req.host).await?;
                self.audit_use(&access, "JobsService.Get", "get", &jobs);
                Ok(pb::GetJobResponse { jobs })
            })
            .await
    }

    async fn kill(
        &self,
        request: Request<pb::KillJobRequest>,
    ) -> Result<Response<pb::KillJobResponse>, Status> {
        self.admin
            .unary("JobsService.Kill", request, |caller, req| async move {
                let access = self.access(&caller);
                let mut found = self.find(&access, &req.job_id, &req.host).await?;
                if found.len() == 1 {
                    // One job: its failure is the call's failure.
                    let status = self
                        .kill_one(&caller, &access, found.remove(0), req.grace_ms)
                        .await?;
                    return Ok(pb::KillJobResponse { jobs: vec![status] });
                }
                // A group: every host gets its status; one that could not be killed says why.
                let kills = found.into_iter().map(|status| {
                    let (caller, access) = (&caller, &access);
                    async move {
                        match self
                            .kill_one(caller, access, status.clone(), req.grace_ms)
                            .await
                        {
                            Ok(killed) => killed,
                            Err(failed) => pb::JobStatus {
                                reason: format!("kill failed: {}", failed.message()),
                                ..status
                            },
                        }
                    }
                });
                let jobs = futures::future::join_all(kills).await;
                Ok(pb::KillJobResponse { jobs })
            })
            .await
    }

    type TailStream = AdminStream<pb::TailJobResponse>;

    async fn tail(
        &self,
        request: Request<pb::TailJobRequest>,
    ) -> Result<Response<Self::TailStream>, Status> {
        self.admin
            .unary("JobsService.Tail", request, |caller, req| async move {
                let mesh = &self.admin.state.mesh;
                let access = self.access(&caller);
                let (cursor, status) = if req.cursor.is_empty() {
                    let mut found = self.find(&access, &req.job_id, &req.host).await?;
                    let status = match found.len() {
                        1 => found.remove(0),
                        n => {
                            return Err(Status::failed_precondition(format!(
                                "job `{}` is a fan-out group that ran on {n} hosts; set `host` \
                                 to tail one of them",
                                req.job_id
                            )));
                        }
                    };
                    let (host, job) = ids(&status)?;
                    let cursor = if req.tail_lines > 0 {
                        paging::tail(mesh, host, job, u64::from(req.tail_lines))
                            .await
                            .map_err(error::mesh)?
                    } else {
                        Cursor::start(host, job)
                    };
                    (cursor, status)
                } else {
                    // Sealed for this caller, like the MCP `job` tool's cursors.
                    let cursor = self
                        .admin
                        .state
                        .cursors
                        .open(&req.cursor, &caller.user)
                        .map_err(|e| {
                            Status::invalid_argument(format!(
                                "bad cursor: {e}. Pass the `cursor` of the last TailJobResponse \
                             unchanged, or omit it to start at the beginning"
                            ))
                        })?;
                    if !req.job_id.is_empty() && req.job_id != cursor.job.as_str() {
                        return Err(Status::invalid_argument(format!(
                            "the cursor belongs to job {}, not to job {}",
                            cursor.job, req.job_id
                        )));
                    }
                    let status = mesh
                        .job_status(&cursor.host, &cursor.job)
                        .await
                        .map_err(error::mesh)?
                        .filter(|s| access.sees(s))
                        .ok_or_else(|| unknown_job(cursor.job.as_str()))?;
                    (cursor, status)
                };
                self.audit_use(&access, "JobsService.Tail", "tail", [&status]);
                let tail = Tail {
                    admin: self.admin.clone(),
                    user: caller.user.clone(),
                    cursor,
                };
                Ok(self.admin.stream(move |tx| tail.run(tx)))
            })
            .await
    }
}

// === impl JobsApi ===

impl JobsApi {
    /// The caller's rights over jobs under the policy in force.
    fn access(&self, caller: &Identity) -> JobAccess {
        JobAccess::new(&self.admin.state.policy.current(), &caller.user)
    }

    /// Records a use of operator rights on `jobs` (nothing for the caller's own). Admin RPCs
    /// carry no trace.
    fn audit_use<'a>(
        &self,
        access: &JobAccess,
        rpc: &str,
        action: &str,
        jobs: impl IntoIterator<Item = &'a pb::JobStatus>,
    ) {
        access.audit_use(
            &self.admin.state.audit,
            "",
            rpc,
            Via::AdminApi,
            action,
            jobs,
        );
    }

    /// The job `job_id` on `host`, or on every host that ran it (a fan-out group), that the
    /// caller may see, sorted by host, with jobs of hosts that stopped heartbeating settled as
    /// lost. Jobs the caller may not see are not found, like ids no host knows.
    async fn find(
        &self,
        access: &JobAccess,
        job_id: &str,
        host: &str,
    ) -> Result<Vec<pb::JobStatus>, Status> {
        let mesh = &self.admin.state.mesh;
        if job_id.is_empty() {
            return Err(Status::invalid_argument("`job_id` is required"));
        }
        let job = Token::parse("job id", job_id).map_err(|e| error::bad_id("job id", job_id, e))?;
        let mut found = if host.is_empty() {
            let mut group = mesh.group_jobs(&job).await.map_err(error::mesh)?;
            group.retain(|s| access.sees(s));
            group
        } else {
            let host =
                Token::parse("host id", host).map_err(|e| error::bad_id("host id", host, e))?;
            let status = mesh.job_status(&host, &job).await.map_err(error::mesh)?;
            match status.filter(|s| access.sees(s)) {
                Some(status) => vec![status],
                None => {
                    return Err(Status::not_found(format!(
                        "host {host} has no job `{job}`; JobsService.List with `host` shows its jobs"
                    )));
                }
            }
        };
        if found.is_empty() {
            return Err(unknown_job(job_id));
        }
        found.sort_by(|a, b| a.host.cmp(&b.host));
        let audit = &self.admin.state.audit;
        let mut settled = state::settle_all(mesh, audit, found)
            .await
            .map_err(error::mesh)?;
        // Agents store the command redacted; a record from an older agent is redacted here.
        settled
            .iter_mut()
            .for_each(|status| audit.redactor().job_status(status));
        Ok(settled)
    }

    /// Kills one job if it still runs, with the caller's identity (signed by the gateway,
    /// tier-checked by the agent), audited like the `job` tool's kill.
    async fn kill_one(
        &self,
        caller: &Identity,
        access: &JobAccess,
        status: pb::JobStatus,
        grace_ms: u64,
    ) -> Result<pb::JobStatus, Status> {
        if status.state() != pb::JobState::Running {
            // Nothing to stop: the caller is shown how it ended.
            self.audit_use(access, "JobsService.Kill", "get", [&status]);
            return Ok(status);
        }
        let state = &self.admin.state;
        crate::core::jobs::kill_audited(
            &state.mesh,
            &state.audit,
            state.config.request_timeout,
            caller,
            access,
            Via::AdminApi,
            "JobsService.Kill",
            &status,
            grace_ms,
        )
        .await
        .map_err(|e| error::tool(&e))
    }
}

/// One tail: pages of output from `cursor` until the exit record.
struct Tail {
    admin: Admin,
    /// The caller, whom the cursors sent back are sealed for.
    user: Token,
    cursor: Cursor,
}

// === impl Tail ===

impl Tail {
    /// `cursor` as the caller gets it back.
    fn seal(&self, cursor: &Cursor) -> String {
        self.admin.state.cursors.seal(cursor, &self.user)
    }

    async fn run(self, tx: mpsc::Sender<Result<pb::TailJobResponse, Status>>) {
        let state = &self.admin.state;
        let limits = PageLimits {
            max_lines: state.config.page_max_lines,
            max_bytes: state.config.page_max_bytes,
            max_line_bytes: state.config.max_line_bytes,
        };
        let (pages_tx, mut pages) = mpsc::channel(2);
        let follow = follow(
            &state.mesh,
            &state.audit,
            self.cursor.clone(),
            limits,
            pages_tx,
        );
        let forward = async {
            let mut index = 0u64;
            while let Some(item) = pages.recv().await {
                let message = match item {
                    Ok(Followed::Page(page)) => {
                        let chunk = pb::OutputChunk {
                            index,
                            stream: pb::OutputStream::Unspecified as i32,
                            first_line: page.first_line,
                            line_count: page.lines as u32,
                            data: page.text.into_bytes(),
                        };
                        index += 1;
                        Ok(pb::TailJobResponse {
                            body: Some(pb::tail_job_response::Body::Chunk(chunk)),
                            cursor: self.seal(&page.next),
                        })
                    }
                    Ok(Followed::End { status, cursor }) => {
                        Ok(exit_message(status, self.seal(&cursor)))
                    }
                    Err(e) => Err(error::mesh(e)),
                };
                if tx.send(message).await.is_err() {
                    // The client went away: dropping the receiver ends the follow.
                    return;
                }
            }
        };
        tokio::join!(follow, forward);
    }
}

fn exit_message(mut status: pb::JobStatus, cursor: String) -> pb::TailJobResponse {
    Redactor::builtin().job_status(&mut status);
    pb::TailJobResponse {
        body: Some(pb::tail_job_response::Body::Exit(status)),
        cursor,
    }
}

fn ids(status: &pb::JobStatus) -> Result<(Token, Token), Status> {
    let host = Token::parse("host id", &status.host)
        .map_err(|e| Status::internal(format!("stored job has a bad host id: {e}")))?;
    let job = Token::parse("job id", &status.job_id)
        .map_err(|e| Status::internal(format!("stored job has a bad job id: {e}")))?;
    Ok((host, job))
}

fn unknown_job(job: &str) -> Status {
    Status::not_found(format!(
        "unknown job `{job}`: no host has a job with this id; JobsService.List shows the jobs"
    ))
}
