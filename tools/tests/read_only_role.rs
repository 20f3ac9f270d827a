//! Model-written SQL runs on connections that log in as the SELECT-only reader role, so PostgreSQL alone refuses
//! writes, file access and privilege changes, whatever SQL reaches it. These tests skip the SQL guard on purpose.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly; that is its job

mod tool_support;

use audience_tools::db::ReadLimits;
use audience_tools::schema::READER_ROLE;
use sqlx::Connection;
use tool_support::{TestDb, database_url};

fn code_of(error: &sqlx::Error) -> Option<String> {
    error.as_database_error().and_then(|e| e.code()).map(|c| c.into_owned())
}

/// Regression: with a superuser DATABASE_URL, model SQL ran under `SET LOCAL ROLE`, which `RESET ROLE` undoes;
/// only the guard stood between model SQL and `pg_read_file`. Now the session itself is the reader role.
#[tokio::test(flavor = "multi_thread")]
async fn model_sql_cannot_take_back_the_owner_role() {
    let test = TestDb::new().await;
    let before = test.checksums().await;
    let mut tx = test.db.begin_read_only(ReadLimits::default()).await.unwrap();
    let users: (String, String) =
        sqlx::query_as("SELECT current_user::text, session_user::text").fetch_one(&mut *tx).await.unwrap();
    assert_eq!(users, (READER_ROLE.to_owned(), READER_ROLE.to_owned()));
    sqlx::query("RESET ROLE").execute(&mut *tx).await.unwrap();
    let user: String = sqlx::query_scalar("SELECT current_user::text").fetch_one(&mut *tx).await.unwrap();
    assert_eq!(user, READER_ROLE, "RESET ROLE leaves the login role");
    tx.rollback().await.unwrap();

    for sql in ["SET ROLE postgres", "SELECT pg_read_file('/etc/hostname')", "SELECT pg_ls_dir('.')"] {
        let mut tx = test.db.begin_read_only(ReadLimits::default()).await.unwrap();
        let error = sqlx::query(sql).execute(&mut *tx).await.expect_err(sql);
        assert_eq!(code_of(&error).as_deref(), Some("42501"), "{sql}: {error}");
        tx.rollback().await.unwrap();
    }
    assert_eq!(before, test.checksums().await);
    test.drop().await;
}

/// The role's own defaults hold even for a session that never went through `begin_read_only`: read-only
/// transactions and a statement timeout.
#[tokio::test(flavor = "multi_thread")]
async fn the_reader_role_is_read_only_and_time_limited_by_default() {
    let test = TestDb::new().await;
    let mut options: sqlx::postgres::PgConnectOptions = database_url().parse().unwrap();
    options = options.username(READER_ROLE).options([("search_path", test.schema.as_str())]);
    let mut conn = sqlx::PgConnection::connect_with(&options).await.expect("the reader role can log in");
    let read_only: String =
        sqlx::query_scalar("SHOW default_transaction_read_only").fetch_one(&mut conn).await.unwrap();
    assert_eq!(read_only, "on");
    let timeout: String = sqlx::query_scalar("SHOW statement_timeout").fetch_one(&mut conn).await.unwrap();
    assert_eq!(timeout, "10s");
    let error = sqlx::query("DELETE FROM events").execute(&mut conn).await.expect_err("no writes");
    assert!(matches!(code_of(&error).as_deref(), Some("25006") | Some("42501")), "{error}");
    let error = sqlx::query("CREATE TABLE stolen (x int)").execute(&mut conn).await.expect_err("no DDL");
    assert!(matches!(code_of(&error).as_deref(), Some("25006") | Some("42501")), "{error}");
    conn.close().await.unwrap();
    test.drop().await;
}
