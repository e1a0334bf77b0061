//! The jobs running on this agent, by id, with a way to stop each and to await its end.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use execmesh_proto::{Token, pb};
use tokio::sync::{mpsc, watch};

/// An order to stop a job.
#[derive(Debug, Clone)]
pub struct KillOrder {
    /// Between SIGTERM and SIGKILL.
    pub grace: Duration,
    /// Goes into the final status (`killed on request of alice`).
    pub reason: String,
}

/// How a job ended, as the reply and the ctl answer report it.
#[derive(Debug, Clone)]
pub struct Finished {
    pub status: pb::JobStatus,
    /// The whole output when it was small enough to keep (and was asked for).
    pub inline: Option<Vec<u8>>,
}

/// Waits until the job behind `done` has ended; `None` if its task is gone without saying.
pub async fn wait_finished(
    done: &mut watch::Receiver<Option<Arc<Finished>>>,
) -> Option<Arc<Finished>> {
    done.wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|finished| finished.clone())
}

/// What others hold of a running job.
#[derive(Debug, Clone)]
pub struct JobHandle {
    pub kill: mpsc::Sender<KillOrder>,
    /// `None` while running; the final record once the job ended and (unless the reply carries
    /// the whole output, see `job::start`) its status and exit record are stored.
    pub done: watch::Receiver<Option<Arc<Finished>>>,
}

/// The running jobs of this agent.
#[derive(Debug, Default)]
pub struct Registry {
    jobs: Mutex<HashMap<Token, JobHandle>>,
}

/// Keeps a job in the registry until dropped.
#[derive(Debug)]
pub struct Registered {
    registry: Arc<Registry>,
    job: Token,
}

impl Drop for Registered {
    fn drop(&mut self) {
        crate::metrics::running(-1);
        self.registry.lock().remove(&self.job);
    }
}

// === impl Registry ===

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Token, JobHandle>> {
        self.jobs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a job; `None` if one with this id runs already.
    pub fn insert(self: &Arc<Self>, job: Token, handle: JobHandle) -> Option<Registered> {
        let mut jobs = self.lock();
        if jobs.contains_key(&job) {
            return None;
        }
        jobs.insert(job.clone(), handle);
        crate::metrics::running(1);
        Some(Registered {
            registry: Arc::clone(self),
            job,
        })
    }

    pub fn get(&self, job: &Token) -> Option<JobHandle> {
        self.lock().get(job).cloned()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle() -> JobHandle {
        let (kill, _) = mpsc::channel(1);
        let (_, done) = watch::channel(None);
        JobHandle { kill, done }
    }

    #[test]
    fn a_job_id_is_registered_once_and_leaves_on_drop() {
        let registry = Arc::new(Registry::default());
        let job = Token::parse("job id", "j-1").expect("token");
        let guard = registry.insert(job.clone(), handle()).expect("first");
        assert!(registry.insert(job.clone(), handle()).is_none());
        assert_eq!(registry.len(), 1);
        drop(guard);
        assert!(registry.get(&job).is_none());
        assert_eq!(registry.len(), 0);
    }
}
