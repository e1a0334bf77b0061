//! The gateway's domain beneath its faces: mesh access and checked records, hosts, jobs, paging,
//! dispatch, fan-out, selectors, policy, tiers, approvals, runbooks, MCP tasks, audit, tokens and
//! identities, and the metrics they count.
//!
//! Nothing here imports a face (`mcp`, `oauth`, `admin`) or the composition that serves them.

pub mod approvals;
pub mod audit;
pub mod audit_query;
pub mod auth;
pub mod auth_failures;
pub mod bearer;
pub mod consumers;
pub mod directory;
pub mod directory_watch;
pub mod dispatch;
pub mod error;
pub mod fanout;
pub mod held;
pub mod hosts;
pub mod instances;
pub mod jobs;
pub mod key_file;
pub mod mesh;
pub mod metrics;
pub mod minting;
pub mod paging;
pub mod policy;
pub mod ratelimit;
pub mod records;
pub mod revocation;
pub mod runbooks;
pub mod selector;
pub mod sign_in;
pub mod signer;
pub mod tasks;
pub mod tier;
pub mod token_store;
pub mod trace;
pub mod unstored;
pub mod verified_tokens;
pub mod webhook;
