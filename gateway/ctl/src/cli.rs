//! The command line of `execmeshctl`: every command, its flags and its help with an example.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Command line of `execmeshctl`.
#[derive(Debug, Parser)]
#[command(
    name = "execmeshctl",
    version,
    about = "Operate an execmesh mesh through the gateway's gRPC admin API: hosts, jobs, \
             approvals, the audit trail and tokens.",
    long_about = "Operate an execmesh mesh through the gateway's gRPC admin API (admin_addr, \
                  default 127.0.0.1:8421): see the fleet, follow and stop jobs, decide \
                  approvals, search the audit trail, mint and revoke tokens.\n\n\
                  Output is a table for people; --json prints one JSON document per command \
                  (one JSON object per line for streams) for scripts.\n\n\
                  Connection settings come from flags, then EXECMESH_ADMIN_* variables, then \
                  the config file (--config, default ~/.config/execmesh/ctl.toml), then \
                  .execmesh/quickstart.json (its admin_addr and admin_token) in this directory \
                  or a parent, then the default http://127.0.0.1:8421.\n\n\
                  Exit codes: 0 done, 1 the gateway said no (or the audit chain is broken), \
                  2 usage, 3 cannot connect.",
    after_help = "Examples:\n  execmeshctl hosts 'role=web'\n  execmeshctl jobs --state running\n  \
                  execmeshctl job tail echo-ab12cd34\n  execmeshctl approvals\n  \
                  execmeshctl approve apr-1f2e3d4c5b6a7980\n  execmeshctl audit --since 1h --user alice"
)]
pub struct Cli {
    /// How to reach the admin API.
    #[command(flatten)]
    pub connection: Connection,
    /// Print JSON instead of tables: one document per command, one object per line for
    /// streams (watch, tail, export).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: TopCommand,
}

/// Every command: those of the admin API, and `nats-config`, which needs no connection.
// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum TopCommand {
    /// A command of the admin API.
    #[command(flatten)]
    Admin(Command),
    /// Write the nats-server configuration of a secured mesh, its identities file and one
    /// seed per identity, from an inventory (no connection to the admin API).
    #[command(
        long_about = "Writes OUT/nats.conf (one NATS user per identity, allowed only what that \
                      identity does), OUT/identities.toml (every identity's public key, the \
                      gateway's and the audit-sink's identities_file) and OUT/seeds/<identity>.nk \
                      (mode 0600) from an inventory. Seeds already in OUT are kept, so adding a \
                      host changes no other key; --rotate replaces chosen ones. The same as \
                      `execmesh-gateway nats-config`.\n\n\
                      Exit codes: 0 written, 64 the inventory or --rotate is wrong (nothing \
                      written), 1 writing failed.",
        after_help = "Examples:\n  execmeshctl nats-config --inventory inventory.toml --out /etc/nats/execmesh\n  \
                      execmeshctl nats-config --inventory inventory.toml --out /etc/nats/execmesh \
                      --rotate agent-web-1"
    )]
    NatsConfig(NatsConfigArgs),
}

/// `nats-config`: the inventory to read, where to write, which seeds to replace.
#[derive(Debug, Clone, Args)]
pub struct NatsConfigArgs {
    /// The inventory (TOML: `tenant`, `hosts`, optional `[[relays]]`, `audit_consumer`,
    /// `[server]`); see deploy/nats/inventory.example.toml.
    #[arg(long)]
    pub inventory: PathBuf,
    /// Directory to write `nats.conf` and `seeds/<identity>.nk` into (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Make a new key for this identity (`agent-web-1`, `gateway`, …), e.g. after a host's
    /// seed leaked; repeat for several. Other seeds in the directory are kept.
    #[arg(long = "rotate")]
    pub rotate: Vec<String>,
}

/// Where the admin API is and how to authenticate to it. Flags win over the environment, which
/// wins over the config file, which wins over `.execmesh/quickstart.json`.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Connection")]
pub struct Connection {
    /// The admin API: `https://host:port`, `http://host:port` (plaintext, loopback only), or
    /// `host:port` (https when --ca or --cert is given, else http) [default: 127.0.0.1:8421].
    #[arg(long, env = "EXECMESH_ADMIN_ADDR", global = true, value_name = "URL")]
    pub addr: Option<String>,
    /// PEM CA certificate(s) to verify the gateway's certificate with (instead of the
    /// system's roots).
    #[arg(long, env = "EXECMESH_ADMIN_CA", global = true, value_name = "PEM")]
    pub ca: Option<PathBuf>,
    /// PEM client certificate for a gateway that requires one (mTLS); needs --key.
    #[arg(long, env = "EXECMESH_ADMIN_CERT", global = true, value_name = "PEM")]
    pub cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, env = "EXECMESH_ADMIN_KEY", global = true, value_name = "PEM")]
    pub key: Option<PathBuf>,
    /// Bearer token with the `admin` scope (execmesh-gateway token mint --user NAME --scope
    /// admin). Prefer --token-file: a flag is visible to other users in `ps`.
    #[arg(
        long,
        env = "EXECMESH_ADMIN_TOKEN",
        global = true,
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// File holding the bearer token (surrounding whitespace ignored).
    #[arg(long, global = true, value_name = "FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// Config file (TOML: addr, ca, cert, key, token, token_file) [default:
    /// ~/.config/execmesh/ctl.toml, used when it exists].
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Seconds a single request may take (streams are not limited).
    #[arg(long, global = true, default_value_t = 60, value_name = "SECS")]
    pub timeout: u64,
}

/// The commands of the admin API.
// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The hosts a selector matches, with their state, labels, heartbeat and facts.
    #[command(
        args_conflicts_with_subcommands = true,
        long_about = "The hosts a selector matches (default: every host), sorted by id: state \
                      (online, stale: heartbeat late, offline: no heartbeat), labels, last \
                      heartbeat, running jobs, OS, CPUs, memory and load.",
        after_help = "Examples:\n  execmeshctl hosts\n  execmeshctl hosts 'role=db and state=online'\n  \
                      execmeshctl hosts watch 'web-*'"
    )]
    Hosts {
        /// A selector: `web-*`, `role=db`, `@prod`, `cpus>=8`, combined with and/or/not.
        selector: Option<String>,
        /// Hosts asked for per request (1 to 5,000): a large fleet is listed in pages, each
        /// answer well under the 4 MiB a gRPC client accepts.
        #[arg(long, default_value_t = 1000, value_name = "N",
              value_parser = clap::value_parser!(u32).range(1..=5000))]
        page_size: u32,
        #[command(subcommand)]
        watch: Option<HostsCommand>,
    },
    /// Jobs on every host, newest first.
    #[command(
        long_about = "Jobs on every host, newest first, with their state, exit code, start and \
                      duration. A job still running on a host whose agent went away is \
                      reported lost.",
        after_help = "Examples:\n  execmeshctl jobs\n  execmeshctl jobs --host web-1 --state running\n  \
                      execmeshctl jobs --user alice --limit 20 --json"
    )]
    Jobs(JobFilters),
    /// One job: get its status, follow its output, or stop it.
    #[command(subcommand)]
    Job(JobCommand),
    /// Approvals: calls the policy holds until a teammate decides.
    #[command(
        args_conflicts_with_subcommands = true,
        long_about = "Approvals the policy's [[approvals]] rules asked for: pending ones by \
                      default, every one with --all. Decide them with `execmeshctl approve ID` \
                      or `execmeshctl deny ID --reason ...`.",
        after_help = "Examples:\n  execmeshctl approvals\n  execmeshctl approvals --all --limit 20\n  \
                      execmeshctl approvals watch"
    )]
    Approvals {
        #[command(flatten)]
        filters: ApprovalFilters,
        #[command(subcommand)]
        watch: Option<ApprovalsCommand>,
    },
    /// One approval.
    #[command(subcommand)]
    Approval(ApprovalCommand),
    /// Approve a pending request (as the user of your token); the requester then repeats the
    /// call with its approval_id.
    #[command(
        long_about = "Approves a pending request as the user of your token, who must be named \
                      in the policy's [approvers], must hold the tier the held call needs and \
                      reach every host it targets, and may never approve their own request. \
                      The requester repeats the same call with `approval_id` set, once, before \
                      the approval expires.",
        after_help = "Example:\n  execmeshctl approve apr-1f2e3d4c5b6a7980"
    )]
    Approve {
        /// The approval id (`apr-…`), as `execmeshctl approvals` lists it.
        id: String,
    },
    /// Deny a pending request with a reason the requester sees (who may deny is decided like
    /// `approve`).
    #[command(
        after_help = "Example:\n  execmeshctl deny apr-1f2e3d4c5b6a7980 --reason 'not during the freeze'"
    )]
    Deny {
        /// The approval id (`apr-…`).
        id: String,
        /// Why, in words for the requester (required).
        #[arg(long)]
        reason: String,
    },
    /// The audit trail: search it, export it, verify its hash chain.
    #[command(
        args_conflicts_with_subcommands = true,
        long_about = "Stored audit events matching every filter given, newest first: calls, \
                      denials, dispatches, jobs, file changes and approvals. Answered by the \
                      audit-sink through the gateway.",
        after_help = "Examples:\n  execmeshctl audit --since 1h --user alice\n  \
                      execmeshctl audit --job echo-ab12cd34\n  \
                      execmeshctl audit --kind call-denied --since 2026-05-01T00:00:00Z\n  \
                      execmeshctl audit export --since 24h > audit.jsonl\n  execmeshctl audit verify"
    )]
    Audit {
        #[command(flatten)]
        filters: AuditFilters,
        #[command(flatten)]
        page: AuditPage,
        #[command(subcommand)]
        command: Option<AuditCommand>,
    },
    /// Bearer tokens: mint, revoke, list revocations.
    #[command(subcommand)]
    Token(TokenCommand),
    /// The runbooks you may run (operators: all), with tier, hosts, hash and parameters.
    #[command(
        long_about = "The runbooks the gateway's policy defines (in the policy file and the \
                      runbooks/ directory next to it) that your tier may run; operators see \
                      every one. HASH is what a host pins in `runbook_pins` to run a runbook \
                      only as reviewed. --json adds each runbook's parameter schema.",
        after_help = "Examples:\n  execmeshctl runbooks\n  execmeshctl runbooks --json"
    )]
    Runbooks,
}

#[derive(Debug, Subcommand)]
pub enum HostsCommand {
    /// Follow presence changes: hosts coming online, going stale or offline. Runs until Ctrl-C.
    #[command(
        after_help = "Examples:\n  execmeshctl hosts watch\n  execmeshctl hosts watch 'role=db' --json"
    )]
    Watch {
        /// Only hosts this selector matches (default: every host).
        selector: Option<String>,
        /// Print only changes, not each host's state when the watch starts.
        #[arg(long)]
        changes_only: bool,
    },
}

/// Filters of `execmeshctl jobs`.
#[derive(Debug, Clone, Args)]
pub struct JobFilters {
    /// Only jobs on this host.
    #[arg(long)]
    pub host: Option<String>,
    /// Only jobs of this MCP user.
    #[arg(long)]
    pub user: Option<String>,
    /// Only jobs in this state: running, exited, timed_out, killed, lost, failed.
    #[arg(long)]
    pub state: Option<String>,
    /// Only the jobs of this fan-out group id (one per host).
    #[arg(long)]
    pub group: Option<String>,
    /// Most jobs shown.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
}

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// A job's status (a fan-out group id: each host's job).
    #[command(
        after_help = "Examples:\n  execmeshctl job get echo-ab12cd34\n  execmeshctl job get grp-1a2b3c4d --host web-2"
    )]
    Get {
        /// The job id, or a fan-out group id.
        id: String,
        /// The host, to pick one job of a group.
        #[arg(long)]
        host: Option<String>,
    },
    /// Print a job's output as it is written, until the job ends.
    #[command(
        long_about = "Prints a job's output as it is written (its last --lines lines first, or \
                      everything with --from-start) and returns when the job ends, saying how \
                      it ended on stderr. With --exit-code, execmeshctl exits with the job's \
                      own exit code (125 when it ended without one: killed, timed out, lost). \
                      Ctrl-C stops following; the job keeps running.",
        after_help = "Examples:\n  execmeshctl job tail build-5f6e7d8c\n  \
                      execmeshctl job tail build-5f6e7d8c --from-start --exit-code && echo built\n  \
                      execmeshctl job tail grp-1a2b3c4d --host web-2 --json"
    )]
    Tail {
        /// The job id (a group id needs --host).
        id: String,
        /// The host the job runs on.
        #[arg(long)]
        host: Option<String>,
        /// Print the output from its first line.
        #[arg(long, conflicts_with_all = ["lines", "cursor"])]
        from_start: bool,
        /// Start this many lines before the end of the output written so far.
        #[arg(short = 'n', long, default_value_t = 10)]
        lines: u32,
        /// Resume from a cursor a previous tail printed (--json) or the MCP `job` poll gave.
        #[arg(long)]
        cursor: Option<String>,
        /// Exit with the job's exit code (125 when it has none).
        #[arg(long)]
        exit_code: bool,
    },
    /// Stop a job: SIGTERM to its process group, SIGKILL after the grace period.
    #[command(after_help = "Examples:\n  execmeshctl job kill sleep-0a1b2c3d\n  \
                            execmeshctl job kill grp-1a2b3c4d --host web-2 --grace 10s")]
    Kill {
        /// The job id, or a fan-out group id (every host's job unless --host).
        id: String,
        /// The host, to kill one job of a group.
        #[arg(long)]
        host: Option<String>,
        /// Time between SIGTERM and SIGKILL (e.g. 10s) [default: the agent's].
        #[arg(long)]
        grace: Option<String>,
    },
}

/// Filters of `execmeshctl approvals`.
#[derive(Debug, Clone, Args)]
pub struct ApprovalFilters {
    /// Every approval, not only pending ones.
    #[arg(long, conflicts_with = "state")]
    pub all: bool,
    /// Only approvals in this state: pending, approved, denied, used, expired.
    #[arg(long)]
    pub state: Option<String>,
    /// Most approvals shown.
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
}

#[derive(Debug, Subcommand)]
pub enum ApprovalsCommand {
    /// Follow approvals as they are requested and decided. Runs until Ctrl-C.
    #[command(
        after_help = "Examples:\n  execmeshctl approvals watch\n  execmeshctl approvals watch --state pending --json"
    )]
    Watch {
        /// Only approvals in this state after the change.
        #[arg(long)]
        state: Option<String>,
        /// Print only changes, not every current approval first.
        #[arg(long)]
        changes_only: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ApprovalCommand {
    /// One approval with the call it is bound to.
    #[command(after_help = "Example:\n  execmeshctl approval get apr-1f2e3d4c5b6a7980")]
    Get {
        /// The approval id (`apr-…`).
        id: String,
    },
}

/// Filters shared by `audit` and `audit export`; each one set must match.
#[derive(Debug, Clone, Default, Args)]
pub struct AuditFilters {
    /// From this time: a duration back from now (30m, 1h, 7d) or RFC 3339
    /// (2026-05-01T12:00:00Z).
    #[arg(long)]
    pub since: Option<String>,
    /// Until this time (exclusive), in the same forms as --since.
    #[arg(long)]
    pub until: Option<String>,
    /// Only events of this MCP user (for approval decisions: the approver).
    #[arg(long)]
    pub user: Option<String>,
    /// Only events about this host.
    #[arg(long)]
    pub host: Option<String>,
    /// Only events of this job or request id.
    #[arg(long)]
    pub job: Option<String>,
    /// Only events of this call (W3C trace id, 32 hex digits).
    #[arg(long)]
    pub trace: Option<String>,
    /// Only events of this MCP tool (bash, file, job, …).
    #[arg(long)]
    pub tool: Option<String>,
    /// Only events of this kind: call-received, call-denied, call-dispatched, call-completed,
    /// job-started, job-finished, file-changed, orphan-killed, approval-requested,
    /// approval-decided.
    #[arg(long)]
    pub kind: Option<String>,
    /// Only events with this outcome (ok, error, denied, exit_nonzero, killed, …).
    #[arg(long)]
    pub outcome: Option<String>,
}

/// Paging of `execmeshctl audit`.
#[derive(Debug, Clone, Args)]
pub struct AuditPage {
    /// Most events shown.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Oldest first instead of newest first.
    #[arg(long)]
    pub oldest_first: bool,
    /// Continue after a previous page (the cursor it printed).
    #[arg(long)]
    pub cursor: Option<String>,
}

#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Every stored event matching the filters, oldest first, as JSON lines on stdout.
    #[command(after_help = "Examples:\n  execmeshctl audit export > audit.jsonl\n  \
                            execmeshctl audit export --since 24h --host db-1 | jq .kind")]
    Export {
        #[command(flatten)]
        filters: AuditFilters,
    },
    /// Recompute the audit store's hash chain: exit 0 when intact, 1 naming the first bad
    /// record.
    #[command(after_help = "Example:\n  execmeshctl audit verify")]
    Verify,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Mint a bearer token (for yourself, or for another user as a token admin); prints the
    /// token (details on stderr).
    #[command(
        long_about = "Mints a bearer token. Without --user it is for the user of your token, \
                      never above the tier you act with and only with scopes your token has. \
                      For another user of the policy you must be named in the policy's \
                      [token_admins]; the token then has at most that user's tier. A tier above \
                      the ceiling is refused, not lowered. The token is printed once on stdout; \
                      its id (to revoke it), scopes and expiry go to stderr (all of it with \
                      --json). Every mint is audited (`token-minted`).",
        after_help = "Examples:\n  execmeshctl token mint --scope admin --ttl 1h\n  \
                      execmeshctl token mint --user ci-bot --ttl 12h --tier readonly   # token admins"
    )]
    Mint {
        /// The user the token speaks for [default: the user of your token].
        #[arg(long, default_value = "")]
        user: String,
        /// Lifetime: 30m, 12h, 30d (at most the gateway's max_token_lifetime_secs, 90d by
        /// default) [default: 12h].
        #[arg(long)]
        ttl: Option<String>,
        /// What the token may be used for: mcp, admin (repeat or separate with commas)
        /// [default: mcp].
        #[arg(long = "scope", value_delimiter = ',')]
        scopes: Vec<String>,
        /// A tier at or below the ceiling: readonly, standard, dangerous [default: the
        /// ceiling].
        #[arg(long)]
        tier: Option<String>,
    },
    /// Revoke a token by its id or by the token itself; every replica refuses it within about
    /// a second.
    #[command(
        after_help = "Examples:\n  execmeshctl token revoke 3f2a9c0d1e4b5a6f\n  \
                            execmeshctl token revoke \"$TOKEN\""
    )]
    Revoke {
        /// A token id (`jti`, as `token mint` printed it) or a whole token.
        // Ids are base64url: one in 64 starts with `-`, which must not read as a flag.
        #[arg(allow_hyphen_values = true)]
        target: String,
    },
    /// The revoked token ids in force (until the tokens would have expired).
    #[command(after_help = "Example:\n  execmeshctl token revocations")]
    Revocations,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_id_that_starts_with_a_hyphen_is_revoked_not_read_as_a_flag() {
        let cli = Cli::try_parse_from(["execmeshctl", "token", "revoke", "-h3xQ9aZ"])
            .expect("a hyphen-leading token id parses");
        let TopCommand::Admin(Command::Token(TokenCommand::Revoke { target })) = cli.command else {
            panic!("parsed as {:?}", cli.command);
        };
        assert_eq!(target, "-h3xQ9aZ");
    }
}
