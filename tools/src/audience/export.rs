//! The whole membership of an audience, member by member, with the retrievable profile fields: what an export
//! writes (the REPL's `/export`). It runs the compiled membership query, so an export holds exactly the audience.

use futures::TryStreamExt;
use serde_json::{Map, Value};

use super::compile::compile;
use super::definition::{AudienceDefinition, Invalid};
use super::report::as_of_day;
use crate::failure::ToolFailure;
use crate::schema::profile_fields;
use crate::stores::Stores;

/// The columns an export writes: the retrievable profile fields, led by the id users know (`external_id`); the
/// internal key stays out, since a campaign tool matches on the file's id.
pub fn export_fields() -> Vec<&'static str> {
    profile_fields().into_iter().filter(|field| *field != "customer_id").collect()
}

/// Streams every member of `definition` (the [`export_fields`]), in customer order, to `write`; returns how many
/// there were.
pub async fn for_each_member(
    stores: &Stores,
    definition: &AudienceDefinition,
    mut write: impl FnMut(Map<String, Value>) -> anyhow::Result<()>,
) -> Result<u64, ToolFailure> {
    let as_of = as_of_day(stores).await?;
    let compiled = compile(definition, as_of).map_err(|Invalid(reason)| ToolFailure::Correctable(reason))?;
    let fields: Vec<String> = export_fields().into_iter().map(|field| format!("p.{field}")).collect();
    let sql = format!(
        "SELECT row_to_json(r)::text FROM (SELECT {} FROM ({}) m JOIN profiles p ON p.customer_id = m.customer_id \
         ORDER BY p.customer_id) r",
        fields.join(", "),
        compiled.membership
    );
    let mut tx = stores.db.begin_read_only(stores.limits).await.map_err(ToolFailure::Fatal)?;
    let mut rows = sqlx::query_scalar::<_, String>(&sql).fetch(&mut *tx);
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
