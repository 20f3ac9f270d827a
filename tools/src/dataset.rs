//! What PostgreSQL holds now: the data version each ingest commits and a fingerprint of the profile texts, which
//! the vector index must match before a tool may rank with it.
//!
//! The `dataset` table has one row, written by ingest in the same transaction that swaps the data in. A vector
//! index version records the fingerprint it was built from (`vector::Manifest`), so a reader can tell a current
//! index from a missing, partial or foreign one (another data directory, another database, an interrupted sync)
//! instead of silently answering from it.

use anyhow::{Context, Result};
use chrono::NaiveDate;

use crate::db::Db;

/// The one-row table: `version` counts ingests; `profiles` and `fingerprint` describe the profiles it left;
/// `prediction_fit` is the fit of the predicted profile fields (`ingest::predict::FitReport` as JSON).
pub const DATASET_DDL: &str = "
    id          SMALLINT PRIMARY KEY CHECK (id = 1),
    version     BIGINT NOT NULL,
    profiles    BIGINT NOT NULL,
    fingerprint TEXT NOT NULL,
    ingested_at TIMESTAMPTZ NOT NULL,
    as_of       DATE,
    derived_version BIGINT,
    prediction_fit JSONB,
    rollups_version BIGINT";

/// The profile count and fingerprint of `table` (`profiles` or `profiles_staging`): the md5 of every text hash in
/// customer order, so any added, removed or changed profile changes it.
pub fn fingerprint_sql(table: &str) -> String {
    format!("SELECT count(*)::bigint, md5(coalesce(string_agg(text_hash, ',' ORDER BY customer_id), '')) FROM {table}")
}

/// version, profiles, fingerprint, as_of, derived_version, rollups_version.
type DatasetRow = (i64, i64, String, Option<NaiveDate>, Option<i64>, Option<i64>);

/// The dataset row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dataset {
    pub version: i64,
    pub profiles: u64,
    pub fingerprint: String,
    /// The day the profiles were computed for: relative days in audience clauses count back from it.
    pub as_of: Option<NaiveDate>,
    /// Whether the derived audience tables (`schema::DERIVED_TABLES`) were built by the ingest that wrote this
    /// version: an ingest by an older release bumps the version but leaves the tables of an earlier one behind.
    pub derived_tables_current: bool,
}

impl Dataset {
    /// The day the data was computed for (relative days count back from it): the row's, or, for schemas ingested
    /// before it recorded one, the day of the newest event; `None` when there are no events.
    pub async fn as_of(db: &Db) -> Result<Option<NaiveDate>> {
        if let Some(day) = Self::read(db).await?.and_then(|dataset| dataset.as_of) {
            return Ok(Some(day));
        }
        sqlx::query_scalar("SELECT (max(ts) AT TIME ZONE 'UTC')::date FROM events")
            .fetch_one(&db.pool)
            .await
            .context("cannot read the day of the newest event")
    }

    /// The row, or `None` when the schema has none yet (never ingested, or ingested by an older release).
    pub async fn read(db: &Db) -> Result<Option<Self>> {
        if !Self::table_exists(db).await? {
            return Ok(None);
        }
        // A schema last prepared by an older release has no derived_version or rollups_version column; read
        // through the row's JSON, it is then NULL, without a second query to ask which columns the table has.
        let row: Option<DatasetRow> = sqlx::query_as(
            "SELECT version, profiles, fingerprint, as_of, (to_jsonb(d) ->> 'derived_version')::bigint, \
             (to_jsonb(d) ->> 'rollups_version')::bigint FROM dataset d WHERE id = 1",
        )
        .fetch_optional(&db.pool)
        .await
        .context("cannot read the dataset version")?;
        Ok(row.map(|(version, profiles, fingerprint, as_of, derived_version, rollups_version)| Self {
            version,
            profiles: u64::try_from(profiles).unwrap_or(0),
            fingerprint,
            as_of,
            // An older release's ingest moves derived_version on and leaves the rollups, which it does not know,
            // as they were: rollups_version then tells they describe older data.
            derived_tables_current: derived_version == Some(version) && rollups_version == Some(version),
        }))
    }

    /// The version alone, in one statement (`None` for a schema without the row): what a read compares before and
    /// after it to know that it saw one version (`stores::OneVersion`).
    pub async fn version(db: &Db) -> Result<Option<i64>> {
        if !Self::table_exists(db).await? {
            return Ok(None);
        }
        sqlx::query_scalar("SELECT version FROM dataset WHERE id = 1")
            .fetch_optional(&db.pool)
            .await
            .context("cannot read the dataset version")
    }

    async fn table_exists(db: &Db) -> Result<bool> {
        let table: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
            .bind(format!("{}.dataset", db.schema))
            .fetch_one(&db.pool)
            .await
            .context("cannot look up the dataset table")?;
        Ok(table.is_some())
    }

    /// The profile count of the live `profiles` table, for schemas without a dataset row.
    pub async fn count_profiles(db: &Db) -> Result<u64> {
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM profiles")
            .fetch_one(&db.pool)
            .await
            .context("cannot count the profiles")?;
        Ok(u64::try_from(count).unwrap_or(0))
    }
}
