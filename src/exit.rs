//! Exit codes for scripts, and the error kinds that choose them. The same table holds for every command; the README
//! copies it and `tests/e2e_exit_codes.rs` checks it command by command.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | failure: unreadable or malformed input files, rejected data, I/O (an export that cannot be written) |
//! | 2 | usage or configuration error: bad arguments or flags, arguments or a definition a tool refuses, a missing or invalid variable, no provider |
//! | 3 | LLM provider error: unreachable, rejected, rate limited after retries, empty answers, turn budget |
//! | 4 | tool or store error: database down, vector index missing or outdated, SQL the agent could not fix |
//! | 5 | `ask` only: the agent asks a clarifying question instead of answering (`cli::ask::CLARIFICATION_EXIT`) |
//!
//! Each kind has one code ([`FailureKind::code`]), and a tool's failure has one kind whichever command ran the tool
//! ([`tool_failure`]).

use std::fmt;
use std::process::ExitCode;

use audience_tools::failure::ToolFailure;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// A file that cannot be read or written, or data the input rules reject.
    Input,
    /// Bad arguments: clap's errors, a `--args` or definition a tool refuses, an empty or oversized question.
    Usage,
    Config,
    Provider,
    Store,
}

impl FailureKind {
    pub const ALL: [FailureKind; 5] =
        [FailureKind::Input, FailureKind::Usage, FailureKind::Config, FailureKind::Provider, FailureKind::Store];

    pub fn code(self) -> u8 {
        match self {
            FailureKind::Input => 1,
            FailureKind::Usage | FailureKind::Config => 2,
            FailureKind::Provider => 3,
            FailureKind::Store => 4,
        }
    }
}

/// Marks an error chain with its kind; `main` reads it back to choose the exit code.
#[derive(Debug)]
pub struct Failure(pub FailureKind);

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self.0 {
            FailureKind::Input => "input or output error",
            FailureKind::Usage => "usage error",
            FailureKind::Config => "configuration error",
            FailureKind::Provider => "LLM provider error",
            FailureKind::Store => "tool or database error",
        };
        f.write_str(text)
    }
}

impl std::error::Error for Failure {}

/// Extension to tag any error with a [`FailureKind`] while keeping its message chain.
pub trait FailureExt<T> {
    fn kind(self, kind: FailureKind) -> anyhow::Result<T>;
}

impl<T, E: Into<anyhow::Error>> FailureExt<T> for Result<T, E> {
    fn kind(self, kind: FailureKind) -> anyhow::Result<T> {
        self.map_err(|e| e.into().context(Failure(kind)))
    }
}

/// A tool's failure as a command's error: what the tool refuses (arguments, a definition, SQL) is the user's to fix
/// (exit 2), a broken store is a store error (exit 4). A fatal error that already carries its kind keeps it: an
/// export's file that cannot be written stays an I/O failure (exit 1).
pub fn tool_failure(failure: ToolFailure) -> anyhow::Error {
    match failure {
        ToolFailure::Correctable(reason) => anyhow::Error::msg(reason).context(Failure(FailureKind::Usage)),
        ToolFailure::Fatal(error) if error.downcast_ref::<Failure>().is_some() => error,
        ToolFailure::Fatal(error) => error.context(Failure(FailureKind::Store)),
    }
}

/// Tags an error as a store error (exit 4) when PostgreSQL or the vector server caused it, leaving input errors
/// (exit 1) as they are: an ingest fails on a malformed file or on a store, and scripts must tell the two apart.
pub fn store_is_store(error: anyhow::Error) -> anyhow::Error {
    let from_store = error.chain().any(|cause| cause.downcast_ref::<sqlx::Error>().is_some())
        || audience_tools::vector::server::is_server_failure(&error);
    if from_store { error.context(Failure(FailureKind::Store)) } else { error }
}

/// The exit code for an error: the outermost [`Failure`] tag in its chain, else 1.
///
/// `anyhow::Error::downcast_ref` is used because it sees context values at any depth; the `&dyn Error`
/// items of `chain()` are anyhow's private wrapper types, so downcasting those never finds a tag.
pub fn code_for(error: &anyhow::Error) -> ExitCode {
    let code = error.downcast_ref::<Failure>().map_or(1, |f| f.0.code());
    ExitCode::from(code)
}

/// Prints an error as one line: the message chain without our kind tags.
pub fn one_line(error: &anyhow::Error) -> String {
    let tags = FailureKind::ALL.map(|kind| Failure(kind).to_string());
    error.chain().map(|e| e.to_string()).filter(|text| !tags.contains(text)).collect::<Vec<_>>().join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn finds_the_tag_under_later_context_and_hides_it() {
        let error: anyhow::Result<()> = Err(anyhow::anyhow!("connection refused")).kind(FailureKind::Store);
        let error = error.context("cannot open the stores").unwrap_err();
        assert_eq!(code_for(&error), ExitCode::from(4));
        assert_eq!(one_line(&error), "cannot open the stores: connection refused");
        assert_eq!(code_for(&anyhow::anyhow!("plain")), ExitCode::from(1));
    }

    #[test]
    fn a_tool_failure_has_one_code_whoever_ran_the_tool() {
        assert_eq!(
            code_for(&tool_failure(ToolFailure::correctable("limit must be between 1 and 50"))),
            ExitCode::from(2)
        );
        assert_eq!(code_for(&tool_failure(ToolFailure::Fatal(anyhow::anyhow!("database down")))), ExitCode::from(4));
        let unwritable: anyhow::Result<()> = Err(anyhow::anyhow!("disk full")).kind(FailureKind::Input);
        let failure = ToolFailure::Fatal(unwritable.unwrap_err());
        assert_eq!(code_for(&tool_failure(failure)), ExitCode::from(1));
    }
}
