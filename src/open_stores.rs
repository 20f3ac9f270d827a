//! Opening the stores from the environment, the way every command does: PostgreSQL (`DATABASE_URL`,
//! `AUDIENCE_SCHEMA`), the vector index (`QDRANT_URL`, else the embedded index under the data directory) and the
//! embedding model. The errors carry their exit kind: a missing or malformed setting is configuration (2), a
//! database that does not answer is a store error (4).

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use audience_tools::db::{self, DEFAULT_SCHEMA, Db, ReadLimits};
use audience_tools::embed::LazyEmbedder;
use audience_tools::paths;
use audience_tools::stores::Stores;
use audience_tools::vector::VectorStore;

use crate::exit::{FailureExt, FailureKind};

/// Connects to `DATABASE_URL`: a missing or malformed setting is a configuration error, an unreachable server a
/// store error, so scripts can tell them apart by exit code. Every command connects through here.
pub async fn connect_db() -> Result<Db> {
    let url = std::env::var("DATABASE_URL")
        .map_err(|_| {
            anyhow!("DATABASE_URL is not set; set it to a PostgreSQL URL, e.g. postgres://postgres@127.0.0.1:5432/test")
        })
        .kind(FailureKind::Config)?;
    let schema = std::env::var("AUDIENCE_SCHEMA").unwrap_or_else(|_| DEFAULT_SCHEMA.to_owned());
    db::check_identifier(&schema).context("AUDIENCE_SCHEMA").kind(FailureKind::Config)?;
    url.parse::<sqlx::postgres::PgConnectOptions>()
        .with_context(|| format!("DATABASE_URL is not a valid PostgreSQL URL: {}", db::redact(&url)))
        .kind(FailureKind::Config)?;
    Db::connect(&url, &schema).await.kind(FailureKind::Store)
}

/// Opens PostgreSQL (`DATABASE_URL`, `AUDIENCE_SCHEMA`), the vector index (`QDRANT_URL`, else the embedded
/// index under `data_dir`) and the lazily loaded embedder. Failures are store errors (exit 4).
pub async fn open_stores(data_dir: &Path) -> Result<Stores> {
    let db = connect_db().await?;
    if !db.is_ingested().await.kind(FailureKind::Store)? {
        return Err(anyhow!(
            "schema {:?} has no data yet; run `audience ingest` (or `audience demo`) first",
            db.schema
        ))
        .kind(FailureKind::Store);
    }
    // Opening the reader touches nothing: the index is copied and opened on the first vector search.
    let vectors = VectorStore::from_env(data_dir, &db.schema).reader();
    let embedder = LazyEmbedder::new(paths::models_dir());
    Ok(Stores::new(db, vectors, embedder, ReadLimits::default()))
}
