//! The two ways an agent tool can fail: a mistake the model can correct, or a broken store that ends the run.
//!
//! rig 0.44 has no "abort the run" result for a tool, so a fatal failure is surfaced twice:
//! the returned `ToolExecutionError` carries the code [`FATAL_CODE`] (check it with [`is_fatal`]),
//! and the tool's [`crate::trace::ToolTrace`] (host-only, in the tool context) has `fatal` set.
//! The agent's hook reads either in `on_outcome` and answers `OutcomeAction::stop(reason)`,
//! which ends the run instead of letting the model retry against a dead database.

use rig_core::tool::ToolExecutionError;

/// `ToolExecutionError::code` of a fatal failure.
pub const FATAL_CODE: &str = "audience_fatal";

/// A tool failure.
#[derive(Debug, thiserror::Error)]
pub enum ToolFailure {
    /// The model can fix this (SQL refused by the guard, an SQL error from PostgreSQL, an unknown field,
    /// bad arguments). The message is shown to the model as-is.
    #[error("{0}")]
    Correctable(String),
    /// A store is unusable (database down, vector index broken, model files missing): the run must stop.
    #[error("{0:#}")]
    Fatal(anyhow::Error),
}

impl ToolFailure {
    pub fn correctable(message: impl Into<String>) -> Self {
        Self::Correctable(message.into())
    }

    pub fn is_fatal(&self) -> bool {
        matches!(self, Self::Fatal(_))
    }

    /// The rig error the model sees: the correction hint, or for a fatal failure an error tagged [`FATAL_CODE`].
    pub fn into_execution_error(self) -> ToolExecutionError {
        match self {
            // Marked as an error in words: a bare "at most 10 fields" reads to a small model like a result, and it
            // then wrote a made-up tool response where it had to send the corrected call.
            Self::Correctable(message) => ToolExecutionError::other(model_visible(&message)).with_retryable(true),
            Self::Fatal(error) => {
                ToolExecutionError::other(format!("{error:#}")).with_code(FATAL_CODE).with_retryable(false)
            }
        }
    }
}

/// A correctable error as the model reads it: `Error: ` and the reason.
pub fn model_visible(reason: &str) -> String {
    format!("Error: {reason}")
}

/// True when a tool's error is fatal and the run must stop.
pub fn is_fatal(error: &ToolExecutionError) -> bool {
    error.code() == Some(FATAL_CODE)
}

impl From<sqlx::Error> for ToolFailure {
    /// Errors PostgreSQL reports about the statement (syntax, unknown column, permission, timeout) are the
    /// model's to fix; everything else (connection lost, pool exhausted, protocol) means the database is unusable.
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::Database(db) => {
                let message = match db.code().as_deref() {
                    Some("57014") => {
                        "the query was cancelled by the statement timeout; make it simpler or more selective".to_owned()
                    }
                    Some("25006") | Some("42501") => format!("refused by the database: {}", db.message()),
                    _ => format!("PostgreSQL error: {}", db.message()),
                };
                Self::Correctable(message)
            }
            sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) | sqlx::Error::ColumnNotFound(_) => {
                Self::Correctable(format!("cannot read the query result: {error}"))
            }
            _ => Self::Fatal(anyhow::Error::new(error).context("database error")),
        }
    }
}
