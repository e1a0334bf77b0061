//! The node-agent against a real nats-server, in one test binary: agents run in this process
//! (`support`), one module per area of the agent.

// First, with its macros (`expect!`) for the modules below.
#[macro_use]
mod support;

mod agent;
mod facts;
mod files;
mod grep;
mod limits;
