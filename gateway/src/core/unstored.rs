//! Jobs whose end this gateway learned from an agent's reply, which may arrive before the agent has stored the job's status and exit record: readers wait for the store.
//!
//! An agent answers a short job as soon as it exits, with the whole output in the reply, and
//! stores status, output and exit record right after (acked, retried, in order). A caller that
//! reads the job through this gateway right after the reply waits until the final status is
//! stored, bounded by [`STORE_WAIT`], so it sees all of it. Entries are forgotten once waited
//! for or after [`REMEMBERED`]; the set is bounded ([`CAPACITY`]).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use execmesh_proto::Token;

/// How long a reader waits for an agent to store a job that ended.
pub const STORE_WAIT: Duration = Duration::from_secs(5);
/// How long after the reply a job is waited for: an agent stores within milliseconds unless
/// NATS fails, and then a reader gets what is stored.
const REMEMBERED: Duration = Duration::from_secs(30);
/// Most jobs remembered at once.
const CAPACITY: usize = 65_536;

/// Job ids (with their hosts) answered as ended whose store may not have landed yet.
#[derive(Debug, Default)]
pub struct UnstoredEnds {
    jobs: Mutex<HashMap<Token, Noted>>,
}

/// When a job's end was first answered, and by which hosts (a fan-out has several).
#[derive(Debug)]
struct Noted {
    at: Instant,
    hosts: Vec<Token>,
}

// === impl UnstoredEnds ===

impl UnstoredEnds {
    /// Remembers that `host` answered that `job` ended.
    pub fn note(&self, host: &Token, job: &Token) {
        let mut jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        if jobs.len() >= CAPACITY && !jobs.contains_key(job) {
            jobs.retain(|_, noted| noted.at.elapsed() < REMEMBERED);
            if jobs.len() >= CAPACITY {
                return;
            }
        }
        jobs.entry(job.clone())
            .or_insert_with(|| Noted {
                at: Instant::now(),
                hosts: Vec::new(),
            })
            .hosts
            .push(host.clone());
    }

    /// The hosts of `job` (only `host`, when given) whose store a reader should wait for;
    /// they are forgotten, so only the first reader waits.
    pub fn take(&self, job: &Token, host: Option<&Token>) -> Vec<Token> {
        let mut jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(noted) = jobs.get_mut(job) else {
            return Vec::new();
        };
        if noted.at.elapsed() >= REMEMBERED {
            jobs.remove(job);
            return Vec::new();
        }
        let taken = match host {
            Some(host) => {
                let before = noted.hosts.len();
                noted.hosts.retain(|h| h != host);
                if noted.hosts.len() < before {
                    vec![host.clone()]
                } else {
                    Vec::new()
                }
            }
            None => std::mem::take(&mut noted.hosts),
        };
        if noted.hosts.is_empty() {
            jobs.remove(job);
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(s: &str) -> Token {
        Token::parse("token", s).expect("token")
    }

    #[test]
    fn a_noted_job_is_waited_for_once_per_host() {
        let unstored = UnstoredEnds::default();
        let (job, a, b) = (token("job-1"), token("web-1"), token("web-2"));
        unstored.note(&a, &job);
        unstored.note(&b, &job);
        assert_eq!(unstored.take(&job, Some(&a)), std::slice::from_ref(&a));
        assert!(unstored.take(&job, Some(&a)).is_empty());
        assert_eq!(unstored.take(&job, None), [b]);
        assert!(unstored.take(&job, None).is_empty());
        assert!(unstored.take(&token("other-1"), None).is_empty());
    }
}
