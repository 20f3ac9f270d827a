//! The engine of `audience`: the conversation with the agent ([`agent::Session`]), its providers, its usage
//! ledger and the trace of each step, and opening the stores from the environment. The `audience` binary is a
//! thin command line over it; tests and later features (evaluation, saved audiences) call it directly.

pub mod agent;
pub mod agent_hook;
pub mod campaign;
pub mod cassette;
pub mod confidence;
pub mod constrained;
pub mod drafts;
pub mod eval;
pub mod exit;
pub mod ledger;
pub mod lift;
pub mod local_llm;
pub mod open_stores;
pub mod provider;
pub mod render;
pub mod segment_names;
mod settle;
pub mod terminal;
