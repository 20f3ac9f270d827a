//! Exit codes for scripts, and the error kinds that choose them.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | any other failure (bad arguments, I/O, bad input files) |
//! | 2 | configuration error (missing or invalid variable, no provider configured) |
//! | 3 | LLM provider error (unreachable, rejected, rate limited after retries) |
//! | 4 | tool or database error (database down, vector index busy, unsafe SQL the agent could not fix) |

use std::fmt;
use std::process::ExitCode;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    Config,
    Provider,
    Store,
}

impl FailureKind {
    pub fn code(self) -> u8 {
        match self {
            FailureKind::Config => 2,
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

/// The exit code for an error: the first [`Failure`] tag in its chain, else 1.
pub fn code_for(error: &anyhow::Error) -> ExitCode {
    let code = error.chain().find_map(|e| e.downcast_ref::<Failure>()).map_or(1, |f| f.0.code());
    ExitCode::from(code)
}

/// Prints an error as one line: the message chain without our kind tags.
pub fn one_line(error: &anyhow::Error) -> String {
    error
        .chain()
        .filter(|e| e.downcast_ref::<Failure>().is_none())
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}
