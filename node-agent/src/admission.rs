//! Decides whether a request may act on this host: gateway signature and replay, tier, run-as account, CommandGuard.
//!
//! The order matters. The signature is checked first, on the bytes as received, so nothing an
//! unauthenticated sender wrote is acted on. Then the request is validated (host, tenant, user,
//! expiry); only a valid, unexpired request spends a place in the replay cache. Then the tier,
//! the account and — for commands — the guard.

use std::collections::BTreeMap;

use async_nats::HeaderMap;
use execmesh_proto::Token;
use execmesh_proto::pb::{self, ErrorCode};
use tracing::info;

use crate::config::Config;
use crate::files::Roots;
use crate::guard::{Guard, Job};
use crate::refusal::Refusal;
use crate::request::{self, ControlOrder, ControlSpec, Order, RunSpec};
use crate::runas::{Account, RunAs};
use crate::signature::Verifier;
use crate::tier::{self, Tier};

/// The command of `spec` as its job will run it: the request's environment, the variables the
/// job's shell starts with (the account's login variables, which win, or the agent's own
/// `HOME` and `SHELL`), and its working directory (the agent's own when the request names
/// none and no account is mapped).
fn guard_job(spec: &RunSpec) -> Job<'_> {
    let mut env: Vec<(String, String)> = spec
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.sort();
    let known = match &spec.account {
        Some(account) => account
            .login_env()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        None => ["HOME", "SHELL"]
            .into_iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
            .collect(),
    };
    let cwd = spec
        .cwd
        .clone()
        .or_else(|| std::env::current_dir().ok())
        .map(|p| p.display().to_string());
    Job {
        command: &spec.cmd,
        env,
        known,
        cwd,
    }
}

/// The host's admission rules, built once at start from the configuration.
pub struct Admission {
    host: Token,
    verifier: Verifier,
    /// The host owner's cap on the tier any request acts with.
    max_tier: Tier,
    run_as: RunAs,
    guard: Guard,
    /// Runbook name → the hash this host runs it at; empty: any runbook the gateway signs.
    runbook_pins: BTreeMap<String, String>,
    /// The file roots: a runbook's `path` parameters must resolve inside them.
    roots: Roots,
}

// === impl Admission ===

impl Admission {
    pub fn new(config: &Config, roots: Roots) -> Self {
        let admission = Self {
            host: config.host_id.clone(),
            verifier: Verifier::new(&config.gateway_keys),
            max_tier: config.max_tier,
            run_as: RunAs::new(&config.run_as),
            guard: Guard::new(&config.guard),
            runbook_pins: config.runbook_pins.clone(),
            roots,
        };
        info!(
            gateway_keys = ?admission.verifier.key_ids(),
            max_tier = %admission.max_tier,
            run_as = if admission.run_as.is_configured() { "mapped" } else { "the agent's own account" },
            guard = admission.guard.enabled(),
            runbook_pins = admission.runbook_pins.len(),
            "admission rules"
        );
        admission
    }

    /// The account warm shells run as, when not the agent's own (see
    /// [`RunAs::default_account`]).
    pub fn warm_account(&self) -> Option<Account> {
        self.run_as.default_account()
    }

    /// Admits an ExecRequest received on `…exec.<subject_user>` as `payload` (decoded into
    /// `req`): the validated order, with the account it runs as.
    pub fn exec(
        &self,
        payload: &[u8],
        req: pb::ExecRequest,
        subject_user: &str,
        headers: Option<&HeaderMap>,
        config: &Config,
        now_ms: u64,
    ) -> Result<Order, Refusal> {
        let host = &self.host;
        self.verifier.verify(host, payload, &req)?;
        let (nonce, tier, run_as) = (req.nonce.clone(), req.tier, req.run_as.clone());
        let needed = tier::needed(req.body.as_ref());
        let expires_at_ms = req.expires_at_ms;
        let mut order = request::order(req, subject_user, headers, config, now_ms)?;
        self.verifier
            .remember(host, &nonce, expires_at_ms, now_ms)?;
        tier::admit(host, tier, self.max_tier, needed)?;
        match &mut order {
            Order::Run(spec) => {
                if let Some(runbook) = &spec.runbook {
                    self.check_runbook(runbook)?;
                }
                spec.account = self.run_as.resolve(host, &spec.user, &run_as)?;
                if spec.cwd.is_none() {
                    spec.cwd = spec.account.as_ref().map(Account::default_cwd);
                }
                self.guard
                    .check_job(&guard_job(spec))
                    .map_err(|e| Guard::refusal(host, &e))?;
            }
            Order::File(spec) => {
                spec.account = self.run_as.resolve(host, &spec.user, &run_as)?;
            }
            Order::Grep(spec) => {
                spec.account = self.run_as.resolve(host, &spec.user, &run_as)?;
            }
            // Facts act as the agent, but a user without an account on this host is refused
            // for them too.
            Order::Facts(spec) => {
                self.run_as.resolve(host, &spec.user, &run_as)?;
            }
        }
        Ok(order)
    }

    /// Refuses a runbook this host does not run: not pinned, or pinned at another hash, when
    /// the host pins runbooks; or one whose `path` parameters resolve outside the file roots.
    fn check_runbook(&self, runbook: &pb::RunbookRef) -> Result<(), Refusal> {
        let host = &self.host;
        let name = runbook.name.escape_debug();
        if !self.runbook_pins.is_empty() {
            match self.runbook_pins.get(&runbook.name) {
                Some(pinned) if *pinned == runbook.hash => {}
                Some(pinned) => {
                    return Err(Refusal::new(
                        ErrorCode::RunbookNotPinned,
                        format!(
                            "host {host}: runbook `{name}` is pinned at {pinned}, and the request \
                             is for {}: the runbook changed since it was pinned; pin the new hash \
                             to run it",
                            runbook.hash.escape_debug()
                        ),
                    ));
                }
                None => {
                    return Err(Refusal::new(
                        ErrorCode::RunbookNotPinned,
                        format!(
                            "host {host}: runbook `{name}` is not pinned here; this host runs \
                             only the runbooks its `runbook_pins` name"
                        ),
                    ));
                }
            }
        }
        for path in &runbook.paths {
            self.roots.resolve(path).map_err(|e| {
                Refusal::new(e.code(), format!("host {host}: runbook `{name}`: {e}"))
            })?;
        }
        Ok(())
    }

    /// Admits a ControlRequest received as `payload` (decoded into `req`).
    pub fn control(
        &self,
        payload: &[u8],
        req: pb::ControlRequest,
        config: &Config,
        now_ms: u64,
    ) -> Result<ControlSpec, Refusal> {
        let host = &self.host;
        self.verifier.verify(host, payload, &req)?;
        let (nonce, tier, expires_at_ms) = (req.nonce.clone(), req.tier, req.expires_at_ms);
        request::check_expiry(config, expires_at_ms, &req.job_id, now_ms)?;
        let spec = request::control_spec(req, config)?;
        self.verifier
            .remember(host, &nonce, expires_at_ms, now_ms)?;
        let needed = match spec.order {
            ControlOrder::Kill { .. } => tier::KILL,
            ControlOrder::Query => tier::QUERY,
        };
        tier::admit(host, tier, self.max_tier, needed)?;
        Ok(spec)
    }
}
