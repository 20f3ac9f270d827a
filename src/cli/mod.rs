//! The command line: one module per command family, over the engine in the `audience` library.

pub mod ask;
pub mod audiences;
pub mod bench;
pub mod campaign_commands;
pub mod data_commands;
pub mod eval;
pub mod metrics;
pub mod repl;
pub mod segments;
pub mod tool_command;
