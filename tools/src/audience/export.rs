//! The whole membership of an audience, member by member, with the retrievable profile fields: what an export
//! writes. A live audience runs its compiled membership query, a frozen one looks up the ids kept when it was
//! saved, so an export holds exactly the audience either way.

use futures::TryStreamExt;
use serde_json::{Map, Value};

use super::compile::compile;
use super::definition::{AudienceDefinition, Invalid};
use super::report::data_for_compile;
use crate::failure::ToolFailure;
use crate::schema::profile_fields;
use crate::stores::Stores;

/// Who is in an audience.
#[derive(Clone, Copy, Debug)]
pub enum Members<'a> {
    /// The customers the definition selects in the data as it is now.
    Definition(&'a AudienceDefinition),
    /// The file ids (`external_id`) kept when the audience was saved frozen; ids no longer in the data drop out.
    Frozen(&'a [String]),
}

/// The columns an export writes: the retrievable profile fields, led by the id users know (`external_id`); the
/// internal key stays out, since a campaign tool matches on the file's id.
pub fn export_fields() -> Vec<&'static str> {
    profile_fields().into_iter().filter(|field| *field != "customer_id").collect()
}

/// The export fields named in `wanted` (all of them when it is empty), always led by `external_id`; an unknown
/// name is an error that lists the allowed ones.
pub fn checked_export_fields(wanted: &[String]) -> Result<Vec<&'static str>, Invalid> {
    let allowed = export_fields();
    if wanted.is_empty() {
        return Ok(allowed);
    }
    let mut fields = vec!["external_id"];
    for name in wanted {
        let name = name.trim();
        let Some(field) = allowed.iter().find(|field| **field == name) else {
            return Err(Invalid(format!("unknown field {name:?}; the fields are {}", allowed.join(", "))));
        };
        if !fields.contains(field) {
            fields.push(field);
        }
    }
    Ok(fields)
}

/// The membership as a query of `p.customer_id` (over `profiles p` or its narrow copy), and the text array it binds as `$1` (a frozen
/// list).
pub(crate) async fn membership_query(
    stores: &Stores,
    members: Members<'_>,
) -> Result<(String, Vec<String>), ToolFailure> {
    match members {
        Members::Definition(definition) => {
            let data = data_for_compile(stores).await?;
            let compiled = compile(definition, data).map_err(|Invalid(reason)| ToolFailure::Correctable(reason))?;
            Ok((compiled.membership, Vec::new()))
        }
        Members::Frozen(ids) => {
            Ok(("SELECT p.customer_id FROM profiles p WHERE p.external_id = ANY($1)".to_owned(), ids.to_vec()))
        }
    }
}

/// The internal ids of every member, ascending.
pub async fn member_ids(stores: &Stores, members: Members<'_>) -> Result<Vec<i64>, ToolFailure> {
    member_column(stores, members, "customer_id").await
}

/// How many members there are, counted in PostgreSQL.
pub async fn count_members(stores: &Stores, members: Members<'_>) -> Result<u64, ToolFailure> {
    let (membership, bound) = membership_query(stores, members).await?;
    let sql = format!("SELECT count(*) FROM ({membership}) m");
    let mut tx = stores.db.begin_read_only(stores.limits).await.map_err(ToolFailure::Fatal)?;
    let mut query = sqlx::query_scalar::<_, i64>(&sql);
    if matches!(members, Members::Frozen(_)) {
        query = query.bind(bound);
    }
    let count = query.fetch_one(&mut *tx).await?;
    tx.rollback().await?;
    Ok(u64::try_from(count).unwrap_or(0))
}

/// The file ids (`external_id`) of every member, in customer order: what a frozen audience keeps.
pub async fn member_external_ids(stores: &Stores, members: Members<'_>) -> Result<Vec<String>, ToolFailure> {
    member_column(stores, members, "external_id").await
}

async fn member_column<T>(stores: &Stores, members: Members<'_>, column: &str) -> Result<Vec<T>, ToolFailure>
where
    T: Send + Unpin + for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    let (membership, bound) = membership_query(stores, members).await?;
    let sql = format!(
        "SELECT p.{column} FROM ({membership}) m JOIN profiles p ON p.customer_id = m.customer_id \
         ORDER BY p.customer_id"
    );
    let mut tx = stores.db.begin_read_only(stores.limits).await.map_err(ToolFailure::Fatal)?;
    let mut query = sqlx::query_scalar::<_, T>(&sql);
    if matches!(members, Members::Frozen(_)) {
        query = query.bind(bound);
    }
    let values = query.fetch_all(&mut *tx).await?;
    tx.rollback().await?;
    Ok(values)
}

/// A column computed per member, beside the profile fields: its name in the record, and its SQL over the profile
/// `p`, which the program writes (the action table's compiled `CASE`), never the user or the model.
#[derive(Clone, Debug)]
pub struct Computed {
    pub name: &'static str,
    pub sql: String,
}

/// Streams every member (the profile `fields`, by name, and the `computed` columns) in customer order to `write`;
/// returns how many there were.
pub async fn for_each_member(
    stores: &Stores,
    members: Members<'_>,
    fields: &[&str],
    computed: &[Computed],
    mut write: impl FnMut(Map<String, Value>) -> anyhow::Result<()>,
) -> Result<u64, ToolFailure> {
    let allowed = export_fields();
    if let Some(unknown) = fields.iter().find(|field| !allowed.contains(field)) {
        return Err(ToolFailure::Correctable(format!("{unknown} is not an exportable field")));
    }
    let (membership, bound) = membership_query(stores, members).await?;
    let mut columns: Vec<String> = fields.iter().map(|field| format!("p.{field}")).collect();
    columns.extend(computed.iter().map(|column| format!("{} AS {}", column.sql, column.name)));
    let sql = format!(
        "SELECT row_to_json(r)::text FROM (SELECT {} FROM ({membership}) m JOIN profiles p ON p.customer_id = \
         m.customer_id ORDER BY p.customer_id) r",
        columns.join(", "),
    );
    let mut tx = stores.db.begin_read_only(stores.limits).await.map_err(ToolFailure::Fatal)?;
    let mut query = sqlx::query_scalar::<_, String>(&sql);
    if matches!(members, Members::Frozen(_)) {
        query = query.bind(bound);
    }
    let mut rows = query.fetch(&mut *tx);
    let mut count = 0u64;
    while let Some(text) = rows.try_next().await? {
        let record: Map<String, Value> = serde_json::from_str(&text)
            .map_err(|e| ToolFailure::Fatal(anyhow::anyhow!("PostgreSQL returned a row that is not JSON: {e}")))?;
        write(record).map_err(ToolFailure::Fatal)?;
        count += 1;
    }
    drop(rows);
    tx.rollback().await?;
    Ok(count)
}
