//! # client — the developer's agent and the `devinprod` command line
//!
//! * [`agent`]: `devinprod connect` — one QUIC connection to the relay; each stream the relay
//!   opens carries one HTTP request, which [`local`] replays against the developer's app;
//!   [`mysql`] turns the app's database connections into streams toward the dbproxy.
//! * [`cli`] and [`commands`]: every subcommand of `devinprod`; they call into the `relay`,
//!   `edge` and `certs` libraries, so one binary serves operators and developers alike.

#![forbid(unsafe_code)]

pub mod agent;
mod app_pool;
pub mod local;
pub mod mysql;

pub use agent::{Agent, AgentConfig, AgentEvent, AgentExit};
pub mod cli;
pub mod commands;
mod config_file;
