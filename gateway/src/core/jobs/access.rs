//! Who may see and act on a job: the user who started it, and the users the policy names
//! `operators`. Everyone else is told the job does not exist, in the same words as for an id no
//! host knows, so a job id is no oracle; every use of operator rights on another user's job is
//! audited (who, whose job, which action, through which face).

use execmesh_proto::{Token, pb};

use crate::core::audit::Audit;
use crate::core::policy::Policy;

/// One caller's rights over jobs, from the policy in force when their request arrived.
#[derive(Debug, Clone)]
pub struct JobAccess {
    /// The caller.
    user: Token,
    /// The policy names the caller an operator (or runs in development mode).
    operator: bool,
}

/// Where a use of operator rights came from, as the audit trail names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The MCP `job` tool.
    Mcp,
    /// The admin API's JobsService (and so `execmeshctl jobs`).
    AdminApi,
    /// The web console's Jobs page.
    Console,
}

// === impl JobAccess ===

impl JobAccess {
    /// The rights of `user` under `policy`.
    pub fn new(policy: &Policy, user: &Token) -> Self {
        Self {
            user: user.clone(),
            operator: policy.is_operator(user.as_str()),
        }
    }

    /// The caller.
    pub fn user(&self) -> &Token {
        &self.user
    }

    /// Whether the caller has operator rights over other users' jobs.
    pub fn is_operator(&self) -> bool {
        self.operator
    }

    /// Whether the caller may see `job` at all: theirs, or anyone's for an operator.
    pub fn sees(&self, job: &pb::JobStatus) -> bool {
        self.operator || self.owns(job)
    }

    /// Whether `job` is the caller's own.
    pub fn owns(&self, job: &pb::JobStatus) -> bool {
        job.user == self.user.as_str()
    }

    /// Records in the audit trail that the caller used operator rights to `action` the jobs of
    /// others among `jobs` (nothing when all are the caller's own). One event per use: for a
    /// single job it names the host and job, for a listing the owners and how many jobs.
    pub fn audit_use<'a>(
        &self,
        audit: &Audit,
        trace_id: &str,
        tool: &str,
        via: Via,
        action: &str,
        jobs: impl IntoIterator<Item = &'a pb::JobStatus>,
    ) {
        let others: Vec<&pb::JobStatus> = jobs.into_iter().filter(|j| !self.owns(j)).collect();
        if others.is_empty() {
            return;
        }
        let mut owners: Vec<String> = others.iter().map(|j| j.user.clone()).collect();
        owners.sort();
        owners.dedup();
        let (host, job) = match others.as_slice() {
            [one] => (one.host.as_str(), one.job_id.as_str()),
            _ => ("", ""),
        };
        audit.job_accessed(crate::core::audit::JobAccessed {
            operator: self.user.as_str(),
            trace_id,
            tool,
            host,
            job,
            owners,
            action,
            via: via.as_str(),
            jobs: others.len(),
        });
    }
}

// === impl Via ===

impl Via {
    /// The name the audit trail uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Mcp => "mcp",
            Via::AdminApi => "admin-api",
            Via::Console => "console",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(user: &str) -> pb::JobStatus {
        pb::JobStatus {
            user: user.into(),
            ..Default::default()
        }
    }

    #[test]
    fn only_owners_and_operators_see_a_job() {
        let policy = Policy::parse(
            "operators = [\"@ops\"]\n[groups.ops]\n[users.olive]\ngroups = [\"ops\"]\n\
             [users.alice]\n[users.bob]\n",
            std::path::Path::new("test.toml"),
        )
        .expect("a valid policy");
        let user = |name: &str| Token::parse("user", name).expect("a token");
        let alice = JobAccess::new(&policy, &user("alice"));
        assert!(alice.sees(&job("alice")) && !alice.sees(&job("bob")));
        assert!(!alice.is_operator());
        let olive = JobAccess::new(&policy, &user("olive"));
        assert!(olive.sees(&job("bob")) && olive.is_operator());
        assert!(!olive.owns(&job("bob")));
    }
}
