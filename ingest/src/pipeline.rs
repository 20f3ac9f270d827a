//! The ingest pipeline: load and validate CSV files, compute profiles, embed them into a new vector index
//! version, swap the new tables in, commit, and publish the index version.
//!
//! Everything that touches PostgreSQL runs in ONE transaction holding a per-schema advisory lock, so two
//! ingests (or an ingest and a reindex) never interleave, a failure leaves the old data untouched, and readers
//! see old or new data, never a mix. The embedding runs inside that transaction, from the staging profiles into a
//! staging index version that readers cannot see (see [`crate::sync`] and `vector::versions`); the version is
//! published right after the commit. Until then readers keep the old data and the old index; a failed embedding
//! rolls everything back. The `dataset` row written in the same transaction lets readers tell whether the index
//! they have matches the data (`Stores::vectors`). [`check`] runs the PostgreSQL part alone and rolls it back.
//!
//! [`refit`] (`audience fit`) fits the purchase and spend models again on the live purchase log and writes the
//! predicted fields as a new data version, under the same lock, in one transaction with the version bump.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use audience_tools::dataset::fingerprint_sql;
use audience_tools::db::Db;
use audience_tools::embed::LazyEmbedder;
use audience_tools::schema::{CUSTOMER_FACTS, PREDICTED_COLUMNS, PROFILES, swapped_tables};
use audience_tools::vector::{Manifest, StagingStart, VectorStore};
use chrono::NaiveDate;
use sqlx::PgConnection;

use crate::audience_tables;
use crate::load::{self, LoadOptions, LoadReport};
use crate::predict::{self, FitReport, PREDICTIONS_TABLE};
use crate::profiles::{self, Distribution, ProfileStats};
use crate::sync::{self, ProfilesTable, SyncMode, SyncReport};

/// What to ingest.
#[derive(Clone, Debug)]
pub struct IngestRequest {
    pub customers: PathBuf,
    pub events: PathBuf,
    pub load: LoadOptions,
    /// The day profiles are computed for; `None` = the day of the newest event.
    pub as_of: Option<NaiveDate>,
    /// The horizon and discount rate of the predicted profile fields.
    pub predict: predict::Options,
}

/// Seconds spent in each stage.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct StageTimes {
    /// Reading, validating and COPYing the CSV files.
    pub load: f64,
    pub profiles: f64,
    /// The part of `profiles` spent on the predicted fields (purchase histories, both fits, the predictions).
    pub predict: f64,
    /// The part of `profiles` spent deriving the tables the compilers read (`audience_tables`: the customer facts,
    /// the event totals and the metrics' rollups).
    pub derived: f64,
    /// Swapping the staging tables in, building indexes, and committing.
    pub swap: f64,
    /// VACUUM of the new tables after the commit (see [`ingest`]).
    pub vacuum: f64,
    /// Bringing the vector index in line: embedding plus upserts (split in [`SyncReport`]).
    pub embed: f64,
    pub total: f64,
}

/// What an ingest did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct IngestReport {
    pub load: LoadReport,
    pub profiles: ProfileStats,
    pub sync: SyncReport,
    pub times: StageTimes,
}

/// Memory one index build of the ingest may use.
const INGEST_MAINTENANCE_WORK_MEM: &str = "512MB";
/// Memory each sort or hash of the profile SQL may use.
const INGEST_WORK_MEM: &str = "256MB";

/// Loads `req`'s files into `db`'s schema, recomputes all profiles, and embeds the new or changed ones into a new
/// version of `vectors`, published once the data is committed.
pub async fn ingest(
    db: &Db,
    vectors: &VectorStore,
    embedder: &LazyEmbedder,
    req: IngestRequest,
) -> Result<IngestReport> {
    let started = Instant::now();
    let mut times = StageTimes::default();
    load::prepare_schema(&db.pool, &db.schema).await?;

    let mut tx = db.pool.begin().await.context("cannot start the ingest transaction")?;
    lock_schema(&mut tx, &db.schema).await?;
    // PostgreSQL's defaults (64 MB to build an index, 4 MB per sort or hash) make the index builds and the
    // per-customer aggregations of a large ingest sort on disk; for this transaction only, let them use memory.
    sqlx::query("SELECT set_config('maintenance_work_mem', $1, true), set_config('work_mem', $2, true)")
        .bind(INGEST_MAINTENANCE_WORK_MEM)
        .bind(INGEST_WORK_MEM)
        .execute(&mut *tx)
        .await
        .context("cannot set the ingest's memory limits")?;

    let stage = Instant::now();
    let load_report = load::load_staging(&mut tx, &req.customers, &req.events, &req.load).await?;
    times.load = stage.elapsed().as_secs_f64();

    let stage = Instant::now();
    let profile_stats = profiles::compute(&mut tx, req.as_of, req.predict).await?;
    let derived = Instant::now();
    audience_tables::build(&mut tx, profile_stats.as_of).await?;
    times.derived = derived.elapsed().as_secs_f64();
    times.profiles = stage.elapsed().as_secs_f64();
    times.predict = profile_stats.prediction_seconds;

    let writer = vectors.begin(StagingStart::CopyCurrent).await.context("cannot start a new vector index version")?;
    let sync_report =
        sync::sync(&mut tx, ProfilesTable::Staging, writer.index()?, embedder, SyncMode::Incremental).await?;
    times.embed = sync_report.seconds;

    let stage = Instant::now();
    let (profiles, fingerprint) = fingerprint(&mut tx, ProfilesTable::Staging).await?;
    load::swap_in(&mut tx).await?;
    let version =
        record_dataset(&mut tx, profiles, &fingerprint, profile_stats.as_of, &profile_stats.prediction).await?;
    tx.commit().await.context("cannot commit the ingest")?;
    writer.publish(&Manifest { profiles, fingerprint, data_version: Some(version) }).await.context(
        "the data is committed, but its vector index version could not be published; run `audience reindex`",
    )?;
    times.swap = stage.elapsed().as_secs_f64();

    // Freshly loaded pages are not yet marked all-visible, so every index-only scan (the hybrid gate's DISTINCT
    // over events.customer_id, its EXISTS probes) would still read the heap: 22 ms against 5 ms for a 1k-customer
    // gate over 0.5M events. VACUUM sets the visibility map once, here, instead of leaving it to autovacuum.
    let stage = Instant::now();
    sqlx::raw_sql(&format!("VACUUM {}", swapped_tables().join(", ")))
        .execute(&db.pool)
        .await
        .context("cannot vacuum the new tables")?;
    times.vacuum = stage.elapsed().as_secs_f64();

    times.total = started.elapsed().as_secs_f64();
    Ok(IngestReport { load: load_report, profiles: profile_stats, sync: sync_report, times })
}

/// What `ingest --check` found: what the files would load, how spend and purchases spread over the customers, and a
/// few of the profiles they would make.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CheckReport {
    pub load: LoadReport,
    pub profiles: ProfileStats,
    pub distribution: Distribution,
    pub samples: Vec<SampleProfile>,
}

/// One profile as the embedding model would read it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SampleProfile {
    pub external_id: String,
    pub profile_text: String,
}

/// How many rendered profiles a check shows.
const CHECK_SAMPLES: i64 = 3;

/// A dry run of [`ingest`] (`audience ingest --check`): validates and loads `req`'s files and computes their
/// profiles exactly as an ingest would, in one transaction that is then rolled back, so nothing changes: no table,
/// no customer key, no vector index, no rejects file (rejects are counted by reason in the report instead).
pub async fn check(db: &Db, req: IngestRequest) -> Result<CheckReport> {
    let mut tx = db.pool.begin().await.context("cannot start the check transaction")?;
    // Under the ingest lock, so the staging tables of a running ingest are not touched.
    lock_schema(&mut tx, &db.schema).await?;
    load::prepare_schema_in(&mut tx, &db.schema).await?;
    let options = LoadOptions { dry_run: true, ..req.load };
    let load_report = load::load_staging(&mut tx, &req.customers, &req.events, &options).await?;
    let profile_stats = profiles::compute(&mut tx, req.as_of, req.predict).await?;
    let distribution = profiles::distribution(&mut tx).await?;
    let samples: Vec<(String, String)> = sqlx::query_as(
        "SELECT external_id, profile_text FROM profiles_staging ORDER BY total_spent DESC, customer_id LIMIT $1",
    )
    .bind(CHECK_SAMPLES)
    .fetch_all(&mut *tx)
    .await
    .context("cannot read the rendered profiles")?;
    tx.rollback().await.context("cannot end the check transaction")?;
    Ok(CheckReport {
        load: load_report,
        profiles: profile_stats,
        distribution,
        samples: samples
            .into_iter()
            .map(|(external_id, profile_text)| SampleProfile { external_id, profile_text })
            .collect(),
    })
}

/// Re-embeds every live profile into a fresh vector index version and publishes it (`audience reindex`). It holds
/// the ingest lock, so it never publishes an index of data that an ingest is replacing.
pub async fn reindex(db: &Db, vectors: &VectorStore, embedder: &LazyEmbedder) -> Result<SyncReport> {
    let mut tx = db.pool.begin().await.context("cannot start the reindex transaction")?;
    lock_schema(&mut tx, &db.schema).await?;
    let writer = vectors.begin(StagingStart::Empty).await.context("cannot start a new vector index version")?;
    let report = sync::sync(&mut tx, ProfilesTable::Live, writer.index()?, embedder, SyncMode::Full).await?;
    let (profiles, fingerprint) = fingerprint(&mut tx, ProfilesTable::Live).await?;
    let version: Option<i64> = sqlx::query_scalar("SELECT version FROM dataset WHERE id = 1")
        .fetch_optional(&mut *tx)
        .await
        .context("cannot read the dataset version")?;
    writer.publish(&Manifest { profiles, fingerprint, data_version: version }).await?;
    tx.rollback().await.context("cannot end the reindex transaction")?;
    Ok(report)
}

/// What a refit (`audience fit`) did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RefitReport {
    /// The day the predictions are for: the profiles' own day (`dataset.as_of`).
    pub as_of: NaiveDate,
    /// The data version the fit read, and the one it committed.
    pub previous_version: i64,
    pub version: i64,
    /// Profiles whose predicted fields were written (every profile: a customer without a prediction gets NULLs).
    pub profiles: u64,
    pub fit: FitReport,
    pub seconds: f64,
}

/// Fits the purchase and spend models again on the purchases already ingested (the live `events`, up to the
/// profiles' day) and writes every profile's predicted fields, in `profiles` and in the derived `customer_facts`
/// that audience clauses read, as a new data version (`audience fit`).
///
/// Nothing else changes: not the other profile fields, not the profile texts, so not the fingerprint or the vector
/// index. It runs under the ingest lock, so it never interleaves with an ingest or a reindex, and in one
/// transaction with the version bump, so readers see every profile with the old predictions and the old version,
/// or every profile with the new ones and the new version; an answer read across the commit sees the version
/// change and reads again (`Stores::one_version`). The update takes only row locks, which readers never wait for.
/// A model that cannot be fitted or does not converge leaves its fields NULL, and the report's notes say why.
pub async fn refit(db: &Db, options: predict::Options) -> Result<RefitReport> {
    let started = Instant::now();
    let mut tx = db.pool.begin().await.context("cannot start the fit transaction")?;
    lock_schema(&mut tx, &db.schema).await?;
    let dataset: Option<(i64, Option<NaiveDate>)> = sqlx::query_as("SELECT version, as_of FROM dataset WHERE id = 1")
        .fetch_optional(&mut *tx)
        .await
        .context("cannot read the dataset version")?;
    let Some((previous_version, as_of)) = dataset else {
        bail!("schema {:?} has no data version (ingested by an older release?); run `audience ingest`", db.schema);
    };
    // A schema ingested before the row recorded its day: the day profiles were computed for, the newest event's.
    let as_of = match as_of {
        Some(day) => day,
        None => sqlx::query_scalar::<_, Option<NaiveDate>>("SELECT (max(ts) AT TIME ZONE 'UTC')::date FROM events")
            .fetch_one(&mut *tx)
            .await
            .context("cannot read the newest event time")?
            .context("there are no events to fit the models on")?,
    };

    let fit = predict::fit_profiles(&mut tx, "events", as_of, options).await?;
    let columns = PREDICTED_COLUMNS.join(", ");
    // A customer without a row of predictions (a prospect, or everyone when no model was fitted) gets NULLs.
    let update = |table: &str| {
        format!(
            "UPDATE {table} t SET ({columns}) = \
             (SELECT {columns} FROM {PREDICTIONS_TABLE} p WHERE p.customer_id = t.customer_id)"
        )
    };
    let profiles = sqlx::query(&update(PROFILES.name))
        .execute(&mut *tx)
        .await
        .context("cannot write the predicted fields")?
        .rows_affected();
    // The derived table is absent from a schema ingested before it existed; the compiler then reads `profiles`.
    let derived: Option<String> =
        sqlx::query_scalar("SELECT to_regclass($1)::text").bind(CUSTOMER_FACTS).fetch_one(&mut *tx).await?;
    if derived.is_some() {
        sqlx::query(&update(CUSTOMER_FACTS))
            .execute(&mut *tx)
            .await
            .context("cannot write the predicted fields of the customer facts")?;
    }
    sqlx::query(&format!("DROP TABLE {PREDICTIONS_TABLE}")).execute(&mut *tx).await?;
    // The derived tables stay as current as they were: rebuilt by the ingest of the old version, they are updated
    // here with the profiles.
    let version: i64 = sqlx::query_scalar(
        "UPDATE dataset SET version = version + 1, prediction_fit = $1, \
         derived_version = CASE WHEN derived_version = version THEN version + 1 ELSE derived_version END, \
         rollups_version = CASE WHEN rollups_version = version THEN version + 1 ELSE rollups_version END \
         WHERE id = 1 RETURNING version",
    )
    .bind(sqlx::types::Json(&fit))
    .fetch_one(&mut *tx)
    .await
    .context("cannot record the dataset version")?;
    tx.commit().await.context("cannot commit the fit")?;

    // As after an ingest: the updated rows are new tuples, not yet all-visible to index-only scans, and the planner's
    // statistics of the predicted columns changed.
    let mut tables = vec![PROFILES.name];
    if derived.is_some() {
        tables.push(CUSTOMER_FACTS);
    }
    sqlx::raw_sql(&format!("VACUUM ANALYZE {}", tables.join(", ")))
        .execute(&db.pool)
        .await
        .context("cannot vacuum the updated tables")?;
    Ok(RefitReport { as_of, previous_version, version, profiles, fit, seconds: started.elapsed().as_secs_f64() })
}

/// Waits for an ingest or reindex already running on this schema instead of failing: the second one then works on
/// the first one's result.
async fn lock_schema(conn: &mut PgConnection, schema: &str) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(format!("audience.ingest.{schema}"))
        .execute(&mut *conn)
        .await
        .context("cannot take the ingest lock")?;
    Ok(())
}

async fn fingerprint(conn: &mut PgConnection, table: ProfilesTable) -> Result<(u64, String)> {
    let (count, fingerprint): (i64, String) = sqlx::query_as(&fingerprint_sql(table.name()))
        .fetch_one(&mut *conn)
        .await
        .context("cannot fingerprint the profiles")?;
    Ok((u64::try_from(count).unwrap_or(0), fingerprint))
}

/// Records the new data in the `dataset` row, with the fit of its predicted fields, and returns its version number.
async fn record_dataset(
    conn: &mut PgConnection,
    profiles: u64,
    fingerprint: &str,
    as_of: NaiveDate,
    prediction: &FitReport,
) -> Result<i64> {
    sqlx::query_scalar(
        "INSERT INTO dataset (id, version, profiles, fingerprint, ingested_at, as_of, derived_version, prediction_fit, \
         rollups_version) VALUES (1, 1, $1, $2, now(), $3, 1, $4, 1) \
         ON CONFLICT (id) DO UPDATE SET version = dataset.version + 1, profiles = EXCLUDED.profiles, \
         fingerprint = EXCLUDED.fingerprint, ingested_at = EXCLUDED.ingested_at, as_of = EXCLUDED.as_of, \
         derived_version = dataset.version + 1, prediction_fit = EXCLUDED.prediction_fit, \
         rollups_version = dataset.version + 1 \
         RETURNING version",
    )
    .bind(i64::try_from(profiles).unwrap_or(i64::MAX))
    .bind(fingerprint)
    .bind(as_of)
    .bind(sqlx::types::Json(prediction))
    .fetch_one(&mut *conn)
    .await
    .context("cannot record the dataset version")
}
