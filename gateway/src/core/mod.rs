//! The gateway's domain beneath its faces: mesh access and checked records, hosts, jobs, paging,
//! dispatch, fan-out, selectors, policy, tiers, approvals, audit, tokens and identities.
//!
//! Nothing here imports a face (`mcp`, `oauth`, `admin`) or the composition that serves them.

pub mod approvals;
pub mod audit;
pub mod auth;
pub mod auth_failures;
pub mod bearer;
pub mod dispatch;
pub mod error;
pub mod fanout;
pub mod hosts;
pub mod instances;
pub mod jobs;
pub mod key_file;
pub mod mesh;
pub mod paging;
pub mod policy;
pub mod records;
pub mod revocation;
pub mod selector;
pub mod signer;
pub mod tier;
pub mod token_store;
pub mod trace;
pub mod unstored;
pub mod verified_tokens;
