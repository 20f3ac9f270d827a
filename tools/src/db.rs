//! PostgreSQL access: connecting, the per-deployment schema, and read-only execution of untrusted SQL.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool, Postgres, Transaction};

use crate::schema::READER_ROLE;

/// Default schema holding the `customers`, `events` and `profiles` tables.
pub const DEFAULT_SCHEMA: &str = "audience";

/// Connection pools bound to one schema. Every connection's `search_path` is that schema, so SQL (including
/// model-written SQL) names tables without a schema prefix.
///
/// `pool` logs in as the `DATABASE_URL` user, which owns the data (ingest) and reads the catalog. Model-written SQL
/// never runs there: it runs on `reader`, whose connections log in as the SELECT-only [`READER_ROLE`], so that
/// PostgreSQL itself refuses writes, file access and role changes even if the SQL guard had a hole (a superuser
/// connection could `RESET ROLE` its way out of a `SET ROLE`).
#[derive(Clone, Debug)]
pub struct Db {
    pub pool: PgPool,
    pub schema: String,
    reader: PgPool,
}

/// Limits applied to every model-written statement, enforced by PostgreSQL itself.
#[derive(Clone, Copy, Debug)]
pub struct ReadLimits {
    pub statement_timeout: Duration,
    /// Rows an analytics query may return to the model.
    pub row_cap: usize,
    /// Customer ids a membership query may hand to the vector index for ranking: far above any real customer
    /// base here (benchmarks run 100k), low enough that a runaway query cannot exhaust memory.
    pub member_cap: usize,
}

impl Default for ReadLimits {
    fn default() -> Self {
        Self { statement_timeout: Duration::from_secs(10), row_cap: 200, member_cap: 2_000_000 }
    }
}

/// Memory one sort or hash of a read may use before it spills to disk.
const READ_WORK_MEM: &str = "64MB";

impl Db {
    /// Connects to `url` and binds connections to `schema` (from `AUDIENCE_SCHEMA`, default `audience`).
    ///
    /// The reader logs in as [`READER_ROLE`] with the same host and database; `AUDIENCE_READER_PASSWORD` gives its
    /// password where the server asks for one (ingest sets it on the role), and `AUDIENCE_READER_URL` replaces the
    /// whole reader URL. Its pool connects on first use, so commands that never run model SQL never log in.
    pub async fn connect(url: &str, schema: &str) -> Result<Self> {
        check_identifier(schema)?;
        let options = quiet_slow_statements(parse_url(url, "DATABASE_URL")?.options([("search_path", schema)]));
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.clone())
            .await
            .with_context(|| format!("cannot connect to PostgreSQL at {}", redact(url)))?;
        let reader_options = match std::env::var("AUDIENCE_READER_URL").ok().filter(|v| !v.trim().is_empty()) {
            Some(reader_url) => {
                quiet_slow_statements(parse_url(&reader_url, "AUDIENCE_READER_URL")?.options([("search_path", schema)]))
            }
            None => {
                let options = options.username(READER_ROLE);
                match std::env::var("AUDIENCE_READER_PASSWORD").ok().filter(|v| !v.is_empty()) {
                    Some(password) => options.password(&password),
                    None => options,
                }
            }
        };
        let reader = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(reader_options);
        Ok(Self { pool, schema: schema.to_owned(), reader })
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

    /// Opens a transaction that cannot write: on a connection logged in as the SELECT-only reader role, `READ
    /// ONLY`, with a statement timeout. Model-written SQL runs only inside one of these.
    pub async fn begin_read_only(&self, limits: ReadLimits) -> Result<Transaction<'static, Postgres>> {
        let mut tx = self.reader.begin().await.with_context(|| {
            format!(
                "cannot log in to PostgreSQL as the read-only role {READER_ROLE} (`audience ingest` creates it; \
                 where the server asks for a password, set AUDIENCE_READER_PASSWORD before ingesting)"
            )
        })?;
        sqlx::query("SET TRANSACTION READ ONLY").execute(&mut *tx).await?;
        // JIT compiles every plan estimated above 100,000, such as model SQL over all events, and at these sizes
        // costs more than it saves: a revenue-by-product query over 5M events took 906 ms with it, 507 ms without.
        // The default 4 MB of work_mem is just above what a membership's hash over 120k event rows needs (3.6 MB);
        // a larger one would spill to disk in batches.
        // This SELECT is also the transaction's first query: after it, PostgreSQL refuses `SET TRANSACTION READ
        // WRITE` for the rest of the transaction (until a query runs, it would still be accepted).
        sqlx::query(
            "SELECT set_config('statement_timeout', $1, true), set_config('jit', 'off', true), \
             set_config('work_mem', $2, true)",
        )
        .bind(limits.statement_timeout.as_millis().to_string())
        .bind(READ_WORK_MEM)
        .execute(&mut *tx)
        .await?;
        Ok(tx)
    }

    /// Closes both pools: every later query fails as with a database that went away.
    pub async fn close(&self) {
        self.reader.close().await;
        self.pool.close().await;
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

/// Makes the read-only role able to read `schema` (idempotent, safe when run concurrently): creates
/// [`READER_ROLE`] if needed, as a login role with no other attribute, sets its own defaults (read-only
/// transactions, a statement timeout) so that even a session that skips `begin_read_only` cannot write or run long,
/// sets its password from `AUDIENCE_READER_PASSWORD` when given, and grants it USAGE on the schema. Ingest calls this;
/// the SELECT grants follow each table swap. It needs a user with CREATEROLE, such as the default `postgres`.
pub async fn prepare_reader(pool: &PgPool, schema: &str) -> Result<()> {
    check_identifier(schema)?;
    let attributes = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS";
    let role: Option<(bool, Option<Vec<String>>)> =
        sqlx::query_as("SELECT rolcanlogin, rolconfig FROM pg_roles WHERE rolname = $1")
            .bind(READER_ROLE)
            .fetch_optional(pool)
            .await
            .context("cannot look up the reader role")?;
    let timeout = ReadLimits::default().statement_timeout.as_millis();
    let defaults = [
        ("default_transaction_read_only".to_owned(), "on".to_owned()),
        ("statement_timeout".to_owned(), format!("{timeout}")),
    ];
    let mut statements = Vec::new();
    match &role {
        None => statements.push(format!("CREATE ROLE {READER_ROLE} {attributes}")),
        // Releases before this one created the role NOLOGIN, for `SET ROLE` from the owner's connection.
        Some((false, _)) => statements.push(format!("ALTER ROLE {READER_ROLE} {attributes}")),
        Some((true, _)) => {}
    }
    let config = role.as_ref().and_then(|(_, config)| config.clone()).unwrap_or_default();
    for (name, value) in &defaults {
        if !config.contains(&format!("{name}={value}")) {
            statements.push(format!("ALTER ROLE {READER_ROLE} SET {name} = '{value}'"));
        }
    }
    statements.push(format!("GRANT USAGE ON SCHEMA {schema} TO {READER_ROLE}"));
    for statement in statements {
        retry_concurrent_update(pool, &statement).await.with_context(|| {
            format!(
                "cannot prepare the read-only role {READER_ROLE} (`{statement}`); the database user needs CREATEROLE"
            )
        })?;
    }
    if let Some(password) = std::env::var("AUDIENCE_READER_PASSWORD").ok().filter(|v| !v.is_empty()) {
        // A parameter cannot carry a password in ALTER ROLE; the literal is quoted here.
        let quoted = password.replace('\'', "''");
        retry_concurrent_update(pool, &format!("ALTER ROLE {READER_ROLE} PASSWORD '{quoted}'"))
            .await
            .context("cannot set the password of the read-only role")?;
    }
    Ok(())
}

/// Treats "already exists" races between concurrent callers as success: PostgreSQL reports them as
/// duplicate_object / duplicate_schema / duplicate_table, or as a unique_violation on the catalog when both insert
/// at once.
pub fn tolerate_existing<T>(result: Result<T, sqlx::Error>) -> Result<(), sqlx::Error> {
    match result {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(error))
            if matches!(error.code().as_deref(), Some("42710" | "42P06" | "42P07" | "23505")) =>
        {
            Ok(())
        }
        Err(error) => Err(error),
    }
}

/// Concurrent changes of one catalog row (a role, a schema's grants) can fail with "tuple concurrently updated",
/// and concurrent CREATE ROLE with a duplicate; a retry then succeeds or finds the work done.
async fn retry_concurrent_update(pool: &PgPool, statement: &str) -> Result<(), sqlx::Error> {
    let mut attempt = 0;
    loop {
        match tolerate_existing(sqlx::query(statement).execute(pool).await) {
            Err(sqlx::Error::Database(error))
                if attempt < 8 && error.message().contains("tuple concurrently updated") =>
            {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(20 * attempt)).await;
            }
            result => return result,
        }
    }
}

/// Statements slower than this are logged as slow.
const SLOW_STATEMENT: Duration = Duration::from_secs(1);

/// Logs slow statements at debug instead of sqlx's default warning: an ingest's profile SQL is expected to take
/// seconds, and a warning would print the whole statement (several KB) at the default log level, where users
/// should see the progress and the summary. `AUDIENCE_LOG=debug` shows them.
fn quiet_slow_statements(options: PgConnectOptions) -> PgConnectOptions {
    options.log_slow_statements(log::LevelFilter::Debug, SLOW_STATEMENT)
}

fn parse_url(url: &str, variable: &str) -> Result<PgConnectOptions> {
    url.parse().with_context(|| format!("{variable} is not a valid PostgreSQL URL: {}", redact(url)))
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

    /// What the log lines of a test say.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Regression (issue 22, item 11): an ingest of 100k customers printed sqlx's "slow statement" warnings, each
    /// with the whole profile SQL, at the default log level. A slow statement is a debug line now, on the owner's
    /// connections and the reader's.
    #[tokio::test(flavor = "current_thread")]
    async fn slow_statements_are_debug_lines_not_warnings() {
        let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let db = Db::connect(&url, "public").await.unwrap();
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);
        let slow = format!("SELECT pg_sleep({})", SLOW_STATEMENT.as_secs_f64() + 0.2);
        sqlx::query(&slow).execute(&db.pool).await.unwrap();
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let slow_lines: Vec<&str> = text.lines().filter(|line| line.contains("slow statement")).collect();
        assert_eq!(slow_lines.len(), 1, "the slow statement is logged once: {text}");
        assert!(slow_lines[0].contains("DEBUG"), "{}", slow_lines[0]);
        assert!(!text.contains("WARN"), "{text}");
    }
}
