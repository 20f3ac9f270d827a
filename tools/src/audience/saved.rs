//! Saved audiences: a name, the definition (so it re-evaluates on new data), its size and breakdown when it was
//! saved, the data version it was saved from, and optionally the frozen member list.
//!
//! They live in PostgreSQL in their own app-state schema, `<schema>_app`, which ingest never drops or swaps, so a
//! re-ingest keeps them. Only the CLI's save, remove and `segments --save` commands write there, on the owner's connection, with fixed
//! SQL and bound values; tools only read. The read-only role is granted nothing there.

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use sqlx::Row;

use super::definition::{AudienceDefinition, shorten};
use super::export::{Members, member_external_ids};
use super::report::{AudienceReport, Breakdown};
use crate::dataset::Dataset;
use crate::db::{Db, check_identifier, tolerate_existing};
use crate::failure::ToolFailure;
use crate::stores::Stores;

/// The longest audience name.
pub const MAX_NAME_CHARS: usize = 64;

/// What can go wrong with a saved audience, by whose fault: the name and `--replace` are the user's to fix.
#[derive(Debug, thiserror::Error)]
pub enum SavedError {
    #[error(
        "invalid audience name {}: use 1 to {MAX_NAME_CHARS} letters, digits, '-' or '_', starting with a \
         letter or digit",
        shorten(.0)
    )]
    BadName(String),
    #[error("an audience named {} is already saved: pass --replace to save over it", shorten(.0))]
    Exists(String),
    #[error("no saved audience is named {}; `audience list` shows the saved ones", shorten(.0))]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] anyhow::Error),
}

impl From<sqlx::Error> for SavedError {
    fn from(error: sqlx::Error) -> Self {
        Self::Store(anyhow::Error::new(error).context("cannot read or write the saved audiences"))
    }
}

impl From<ToolFailure> for SavedError {
    fn from(failure: ToolFailure) -> Self {
        match failure {
            ToolFailure::Fatal(error) => Self::Store(error),
            ToolFailure::Correctable(reason) => Self::Store(anyhow::anyhow!("{reason}")),
        }
    }
}

/// A saved audience as stored, without its frozen members.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SavedAudience {
    pub name: String,
    pub definition: AudienceDefinition,
    /// The definition in plain words, when it was saved.
    pub explanation: String,
    /// Members when it was saved.
    pub size: u64,
    pub breakdown: Breakdown,
    pub saved_at: DateTime<Utc>,
    /// The ingest (the dataset version) it was saved from, and that data's day.
    pub data_version: i64,
    pub as_of: NaiveDate,
    /// With `--freeze`: the member list was kept (`size` is its length).
    pub frozen: bool,
}

/// An audience to save with the members its caller chose, such as one segment of `audience segments`.
#[derive(Clone, Debug, PartialEq)]
pub struct FrozenAudience {
    pub name: String,
    pub definition: AudienceDefinition,
    pub explanation: String,
    /// The members' breakdown.
    pub breakdown: Breakdown,
    pub as_of: NaiveDate,
    /// The members' file ids (`external_id`).
    pub members: Vec<String>,
}

/// The saved audiences of one data schema.
#[derive(Clone, Debug)]
pub struct SavedAudiences {
    db: Db,
    /// The app-state schema, `<schema>_app`.
    schema: String,
}

/// Checks a name: it is typed on command lines and shown in tables, so plain characters only.
pub fn check_name(name: &str) -> Result<(), SavedError> {
    let valid = !name.is_empty()
        && name.chars().count() <= MAX_NAME_CHARS
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if valid { Ok(()) } else { Err(SavedError::BadName(name.to_owned())) }
}

const SELECT_SAVED: &str =
    "SELECT name, definition::text, explanation, size, breakdown::text, saved_at, data_version, as_of, frozen";

impl SavedAudiences {
    pub fn new(db: &Db) -> Result<Self, SavedError> {
        let schema = format!("{}_app", db.schema);
        check_identifier(&schema)?;
        Ok(Self { db: db.clone(), schema })
    }

    /// Where the saved audiences live, for messages and the README.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// True when anything was ever saved here (the tables exist): reads never create them.
    async fn exists(&self) -> Result<bool, SavedError> {
        let table: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
            .bind(format!("{}.saved_audiences", self.schema))
            .fetch_one(&self.db.pool)
            .await?;
        Ok(table.is_some())
    }

    /// Creates the schema and tables on first save (idempotent, safe when two saves race).
    async fn create(&self) -> Result<(), SavedError> {
        let schema = &self.schema;
        let statements = [
            format!("CREATE SCHEMA IF NOT EXISTS {schema}"),
            format!(
                "CREATE TABLE IF NOT EXISTS {schema}.saved_audiences (
                    name         TEXT PRIMARY KEY,
                    definition   JSONB NOT NULL,
                    explanation  TEXT NOT NULL,
                    size         BIGINT NOT NULL,
                    breakdown    JSONB NOT NULL,
                    saved_at     TIMESTAMPTZ NOT NULL,
                    data_version BIGINT NOT NULL,
                    as_of        DATE NOT NULL,
                    frozen       BOOLEAN NOT NULL)"
            ),
            // The file's id, not the internal key: it is what stays the same customer across re-ingests.
            format!(
                "CREATE TABLE IF NOT EXISTS {schema}.saved_members (
                    name        TEXT NOT NULL REFERENCES {schema}.saved_audiences (name) ON DELETE CASCADE,
                    external_id TEXT NOT NULL,
                    PRIMARY KEY (name, external_id))"
            ),
        ];
        for statement in statements {
            tolerate_existing(sqlx::query(&statement).execute(&self.db.pool).await)?;
        }
        Ok(())
    }

    /// Saves `report`'s audience as `name` (its size and breakdown as evaluated); with `freeze`, also its whole
    /// member list as it is now. Saving over an existing name needs `replace`. One transaction: a failed save
    /// leaves the previous audience of that name as it was.
    pub async fn save(
        &self,
        stores: &Stores,
        name: &str,
        report: &AudienceReport,
        freeze: bool,
        replace: bool,
    ) -> Result<SavedAudience, SavedError> {
        check_name(name)?;
        let dataset = Dataset::read(&stores.db).await?;
        // The members are read as the reader (the definition carries guard-checked SQL), before the write opens.
        let members = if freeze {
            Some(member_external_ids(stores, Members::Definition(&report.definition)).await?)
        } else {
            None
        };
        let saved = SavedAudience {
            name: name.to_owned(),
            definition: report.definition.clone(),
            explanation: report.explanation.clone(),
            size: members.as_ref().map_or(report.size, |members| members.len() as u64),
            breakdown: report.breakdown.clone(),
            saved_at: Utc::now(),
            data_version: dataset.map_or(0, |dataset| dataset.version),
            as_of: report.as_of,
            frozen: freeze,
        };
        self.create().await?;
        let mut tx = self.db.pool.begin().await?;
        self.insert(&mut tx, &saved, members.as_deref(), replace).await?;
        tx.commit().await?;
        Ok(saved)
    }

    /// Saves audiences whose members the caller fixed (the segments of `audience segments --save`), all or none in
    /// one transaction. Each is frozen: its members are exactly the ones given.
    pub async fn save_frozen(
        &self,
        stores: &Stores,
        audiences: &[FrozenAudience],
        replace: bool,
    ) -> Result<Vec<SavedAudience>, SavedError> {
        for audience in audiences {
            check_name(&audience.name)?;
        }
        let data_version = Dataset::read(&stores.db).await?.map_or(0, |dataset| dataset.version);
        self.create().await?;
        let mut tx = self.db.pool.begin().await?;
        let mut saved = Vec::with_capacity(audiences.len());
        for audience in audiences {
            let record = SavedAudience {
                name: audience.name.clone(),
                definition: audience.definition.clone(),
                explanation: audience.explanation.clone(),
                size: audience.members.len() as u64,
                breakdown: audience.breakdown.clone(),
                saved_at: Utc::now(),
                data_version,
                as_of: audience.as_of,
                frozen: true,
            };
            self.insert(&mut tx, &record, Some(&audience.members), replace).await?;
            saved.push(record);
        }
        tx.commit().await?;
        Ok(saved)
    }

    /// Writes one saved audience (and its frozen members) in `tx`, over an existing one of that name only with
    /// `replace`.
    async fn insert(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        saved: &SavedAudience,
        members: Option<&[String]>,
        replace: bool,
    ) -> Result<(), SavedError> {
        let schema = &self.schema;
        let taken: Option<bool> =
            sqlx::query_scalar(&format!("SELECT true FROM {schema}.saved_audiences WHERE name = $1 FOR UPDATE"))
                .bind(&saved.name)
                .fetch_optional(&mut **tx)
                .await?;
        if taken.is_some() {
            if !replace {
                return Err(SavedError::Exists(saved.name.clone()));
            }
            sqlx::query(&format!("DELETE FROM {schema}.saved_audiences WHERE name = $1"))
                .bind(&saved.name)
                .execute(&mut **tx)
                .await?;
        }
        let json = |value: serde_json::Result<String>| value.map_err(|e| SavedError::Store(e.into()));
        sqlx::query(&format!(
            "INSERT INTO {schema}.saved_audiences (name, definition, explanation, size, breakdown, saved_at, \
             data_version, as_of, frozen) VALUES ($1, $2::jsonb, $3, $4, $5::jsonb, $6, $7, $8, $9)"
        ))
        .bind(&saved.name)
        .bind(json(serde_json::to_string(&saved.definition))?)
        .bind(&saved.explanation)
        .bind(i64::try_from(saved.size).unwrap_or(i64::MAX))
        .bind(json(serde_json::to_string(&saved.breakdown))?)
        .bind(saved.saved_at)
        .bind(saved.data_version)
        .bind(saved.as_of)
        .bind(saved.frozen)
        .execute(&mut **tx)
        .await?;
        if let Some(members) = members {
            sqlx::query(&format!(
                "INSERT INTO {schema}.saved_members (name, external_id) SELECT $1, unnest($2::text[])"
            ))
            .bind(&saved.name)
            .bind(members)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }

    /// True when at least one audience is saved.
    pub async fn any(&self) -> Result<bool, SavedError> {
        if !self.exists().await? {
            return Ok(false);
        }
        Ok(sqlx::query_scalar(&format!("SELECT EXISTS (SELECT 1 FROM {}.saved_audiences)", self.schema))
            .fetch_one(&self.db.pool)
            .await?)
    }

    /// Every saved audience, by name.
    pub async fn list(&self) -> Result<Vec<SavedAudience>, SavedError> {
        if !self.exists().await? {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(&format!("{SELECT_SAVED} FROM {}.saved_audiences ORDER BY name", self.schema))
            .fetch_all(&self.db.pool)
            .await?;
        rows.iter().map(saved_from_row).collect()
    }

    /// The audience saved as `name`.
    pub async fn get(&self, name: &str) -> Result<SavedAudience, SavedError> {
        check_name(name)?;
        let not_found = || SavedError::NotFound(name.to_owned());
        if !self.exists().await? {
            return Err(not_found());
        }
        let row = sqlx::query(&format!("{SELECT_SAVED} FROM {}.saved_audiences WHERE name = $1", self.schema))
            .bind(name)
            .fetch_optional(&self.db.pool)
            .await?
            .ok_or_else(not_found)?;
        saved_from_row(&row)
    }

    /// The frozen member list of `name` (file ids, sorted); empty when it was not saved frozen.
    pub async fn frozen_members(&self, name: &str) -> Result<Vec<String>, SavedError> {
        if !self.exists().await? {
            return Err(SavedError::NotFound(name.to_owned()));
        }
        Ok(sqlx::query_scalar(&format!(
            "SELECT external_id FROM {}.saved_members WHERE name = $1 ORDER BY external_id",
            self.schema
        ))
        .bind(name)
        .fetch_all(&self.db.pool)
        .await?)
    }

    /// Removes `name` and its frozen members.
    pub async fn remove(&self, name: &str) -> Result<(), SavedError> {
        check_name(name)?;
        if !self.exists().await? {
            return Err(SavedError::NotFound(name.to_owned()));
        }
        let deleted = sqlx::query(&format!("DELETE FROM {}.saved_audiences WHERE name = $1", self.schema))
            .bind(name)
            .execute(&self.db.pool)
            .await?;
        if deleted.rows_affected() == 0 {
            return Err(SavedError::NotFound(name.to_owned()));
        }
        Ok(())
    }
}

fn saved_from_row(row: &sqlx::postgres::PgRow) -> Result<SavedAudience, SavedError> {
    let parse = |text: String| -> Result<serde_json::Value, SavedError> {
        serde_json::from_str(&text).map_err(|e| SavedError::Store(e.into()))
    };
    let definition_text: String = row.try_get(1)?;
    let definition = AudienceDefinition::from_json(&definition_text)
        .map_err(|invalid| SavedError::Store(anyhow::anyhow!("a saved definition no longer reads: {invalid}")))?;
    let breakdown = serde_json::from_value(parse(row.try_get(4)?)?).map_err(|e| SavedError::Store(e.into()))?;
    Ok(SavedAudience {
        name: row.try_get(0)?,
        definition,
        explanation: row.try_get(2)?,
        size: u64::try_from(row.try_get::<i64, _>(3)?).unwrap_or(0),
        breakdown,
        saved_at: row.try_get(5)?,
        data_version: row.try_get(6)?,
        as_of: row.try_get(7)?,
        frozen: row.try_get(8)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain() {
        for good in ["vips", "VIP-2026_q1", "7day"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-x", "a b", "a;drop", "ünï", "a/b", &"x".repeat(65)] {
            assert!(matches!(check_name(bad), Err(SavedError::BadName(_))), "{bad}");
        }
    }
}
