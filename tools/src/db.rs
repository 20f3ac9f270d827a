//! PostgreSQL access: connecting, the per-deployment schema, and read-only execution of untrusted SQL.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Transaction};

use crate::schema::READER_ROLE;

/// Default schema holding the `customers`, `events` and `profiles` tables.
pub const DEFAULT_SCHEMA: &str = "audience";

/// A connection pool bound to one schema. Every connection's `search_path` is that schema,
/// so SQL (including model-written SQL) names tables without a schema prefix.
#[derive(Clone, Debug)]
pub struct Db {
    pub pool: PgPool,
    pub schema: String,
}

/// Limits applied to every model-written statement, enforced by PostgreSQL itself.
#[derive(Clone, Copy, Debug)]
pub struct ReadLimits {
    pub statement_timeout: Duration,
    pub row_cap: usize,
}

impl Default for ReadLimits {
    fn default() -> Self {
        Self { statement_timeout: Duration::from_secs(10), row_cap: 200 }
    }
}

impl Db {
    /// Connects to `url` and binds connections to `schema` (from `AUDIENCE_SCHEMA`, default `audience`).
    pub async fn connect(url: &str, schema: &str) -> Result<Self> {
        check_identifier(schema)?;
        let options: PgConnectOptions =
            url.parse().with_context(|| format!("DATABASE_URL is not a valid PostgreSQL URL: {}", redact(url)))?;
        let options = options.options([("search_path", schema)]);
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .with_context(|| format!("cannot connect to PostgreSQL at {}", redact(url)))?;
        Ok(Self { pool, schema: schema.to_owned() })
    }

    /// Connects using `DATABASE_URL` and `AUDIENCE_SCHEMA` from the environment.
    pub async fn from_env() -> Result<Self> {
        let url = std::env::var("DATABASE_URL").map_err(|_| {
            anyhow::anyhow!(
                "DATABASE_URL is not set; set it to a PostgreSQL URL, e.g. postgres://postgres@127.0.0.1:5432/test"
            )
        })?;
        let schema = std::env::var("AUDIENCE_SCHEMA").unwrap_or_else(|_| DEFAULT_SCHEMA.to_owned());
        Self::connect(&url, &schema).await
    }

    /// Opens a transaction that cannot write: `READ ONLY`, running as the SELECT-only reader role,
    /// with a statement timeout. Model-written SQL runs only inside one of these.
    pub async fn begin_read_only(&self, limits: ReadLimits) -> Result<Transaction<'static, Postgres>> {
        let mut tx = self.pool.begin().await.context("cannot start a database transaction")?;
        sqlx::query("SET TRANSACTION READ ONLY").execute(&mut *tx).await?;
        sqlx::query(&format!("SET LOCAL ROLE {READER_ROLE}"))
            .execute(&mut *tx)
            .await
            .context("cannot switch to the read-only role; run `audience ingest` once to create it")?;
        let timeout_ms = limits.statement_timeout.as_millis();
        sqlx::query(&format!("SET LOCAL statement_timeout = {timeout_ms}")).execute(&mut *tx).await?;
        // `SET` commands do not count as queries, so until one runs `SET TRANSACTION READ WRITE` would still be
        // accepted. After this SELECT, PostgreSQL refuses to leave read-only mode for the rest of the transaction.
        sqlx::query("SELECT 1").execute(&mut *tx).await?;
        Ok(tx)
    }

    /// True when the profiles table exists in this schema, i.e. ingest has run.
    pub async fn is_ingested(&self) -> Result<bool> {
        let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
            .bind(format!("{}.profiles", self.schema))
            .fetch_one(&self.pool)
            .await?;
        Ok(exists.is_some())
    }
}

/// Schema names are interpolated into SQL, so they must be plain lower-case identifiers.
pub fn check_identifier(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !valid {
        bail!("invalid schema name {name:?}: use lower-case letters, digits and underscores");
    }
    Ok(())
}

/// Hides a password in a connection URL before it is printed.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..scheme_end + 3], user, &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_password_only() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }

    #[test]
    fn rejects_unsafe_schema_names() {
        assert!(check_identifier("audience_test_1").is_ok());
        assert!(check_identifier("a; drop table x").is_err());
        assert!(check_identifier("Upper").is_err());
    }
}
