//! `sql_data_retriever`: profile records for given customer ids. It builds its own SELECT from the
//! allow-listed retrievable profile columns (`schema::profile_fields`) and binds the ids; no model-written SQL is involved.
//!
//! Ids are the customers' ids as their files give them (`external_id`): numbers or strings (`user_0203`), as users
//! and the other tools show them. A plain number is also the internal key, so both spellings of such an id agree.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use anyhow::Context;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::failure::ToolFailure;
use crate::observe;
use crate::schema::profile_fields;
use crate::stores::Stores;
use crate::trace::{ToolTrace, TracedTool};

/// Most ids one call may ask for: the records go into the model's context.
pub const MAX_IDS: usize = 200;
/// Fields returned when the model does not name any.
pub const DEFAULT_FIELDS: &[&str] = &[
    "customer_id",
    "external_id",
    "first_name",
    "last_name",
    "email",
    "country",
    "total_spent",
    "order_count",
    "segment",
    "interests",
];

#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct SqlDataRetrieverArgs {
    pub customer_ids: Vec<CustomerRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<Vec<String>>,
}

/// A customer id as the model or a script writes it: `17` or `"user_0203"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum CustomerRef {
    Number(i64),
    Text(String),
}

impl CustomerRef {
    /// The id as its file has it (`external_id`): a number's canonical digits, a string as given.
    pub fn external_id(&self) -> String {
        match self {
            CustomerRef::Number(id) => id.to_string(),
            CustomerRef::Text(id) => id.trim().to_owned(),
        }
    }
}

impl From<i64> for CustomerRef {
    fn from(id: i64) -> Self {
        CustomerRef::Number(id)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SqlDataRetrieverOutput {
    /// One object per found customer, in the order asked.
    pub records: Vec<Map<String, Value>>,
    /// Asked-for ids with no profile, as asked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_ids: Vec<CustomerRef>,
}

/// The `sql_data_retriever` tool.
#[derive(Clone)]
pub struct SqlDataRetriever {
    stores: Stores,
}

impl SqlDataRetriever {
    pub fn new(stores: Stores) -> Self {
        Self { stores }
    }

    async fn fetch(&self, sql: &str, ids: &[String]) -> Result<Vec<String>, ToolFailure> {
        let mut tx = self.stores.db.begin_read_only(self.stores.limits).await.map_err(ToolFailure::Fatal)?;
        let texts: Vec<String> = sqlx::query_scalar(sql).bind(ids).fetch_all(&mut *tx).await?;
        tx.rollback().await?;
        Ok(texts)
    }
}

/// The SELECT for the requested fields; only names from `schema::profile_fields` reach the SQL text.
fn select_sql(fields: Option<&[String]>) -> Result<String, ToolFailure> {
    let mut columns: Vec<&str> = vec!["customer_id", "external_id"];
    match fields {
        None => columns.extend(DEFAULT_FIELDS.iter().filter(|f| !matches!(**f, "customer_id" | "external_id"))),
        Some(fields) => {
            for field in fields {
                let allowed = profile_fields();
                let Some(known) = allowed.iter().find(|known| **known == field.trim()) else {
                    return Err(ToolFailure::Correctable(format!(
                        "unknown field `{field}`; choose from: {}",
                        allowed.join(", ")
                    )));
                };
                if !columns.contains(known) {
                    columns.push(known);
                }
            }
        }
    }
    Ok(format!(
        "SELECT row_to_json(p)::text FROM (SELECT {} FROM profiles WHERE external_id = ANY($1)) p",
        columns.join(", ")
    ))
}

impl TracedTool for SqlDataRetriever {
    type Report = SqlDataRetrieverOutput;

    /// The records as one table (the field names once, not per record), then the ids without a profile.
    fn observe(report: &SqlDataRetrieverOutput) -> String {
        let mut parts = Vec::new();
        if let Some(first) = report.records.first() {
            let columns: Vec<&str> = first.keys().map(String::as_str).collect();
            let rows = report
                .records
                .iter()
                .map(|record| columns.iter().map(|column| record.get(*column).map(observe::cell).unwrap_or_default()));
            parts.push(observe::table(&columns, rows));
        }
        if !report.missing_ids.is_empty() {
            let ids: Vec<String> = report.missing_ids.iter().map(CustomerRef::external_id).collect();
            parts.push(format!("no profile for ids: {}", ids.join(", ")));
        }
        parts.join("\n")
    }

    async fn execute(
        &self,
        args: SqlDataRetrieverArgs,
        trace: &mut ToolTrace,
    ) -> Result<SqlDataRetrieverOutput, ToolFailure> {
        let mut seen = HashSet::new();
        let asked: Vec<CustomerRef> =
            args.customer_ids.into_iter().filter(|id| seen.insert(id.external_id())).collect();
        let ids: Vec<String> = asked.iter().map(CustomerRef::external_id).collect();
        if ids.is_empty() {
            return Err(ToolFailure::correctable("`customer_ids` is empty"));
        }
        if ids.len() > MAX_IDS {
            return Err(ToolFailure::correctable(format!(
                "at most {MAX_IDS} customer ids per call (got {}); ask for fewer",
                ids.len()
            )));
        }
        let sql = select_sql(args.fields.as_deref())?;
        trace.sql = Some(sql.clone());
        let start = Instant::now();
        let texts = self.fetch(&sql, &ids).await;
        trace.time("sql", start);
        let mut by_id: HashMap<String, Map<String, Value>> = HashMap::new();
        for text in texts? {
            let record: Map<String, Value> = serde_json::from_str(&text)
                .context("PostgreSQL returned a row that is not a JSON object")
                .map_err(ToolFailure::Fatal)?;
            if let Some(id) = record.get("external_id").and_then(Value::as_str) {
                by_id.insert(id.to_owned(), record);
            }
        }
        let mut records = Vec::with_capacity(by_id.len());
        let mut missing_ids = Vec::new();
        for (id, asked) in ids.iter().zip(asked) {
            match by_id.remove(id) {
                Some(record) => records.push(record),
                None => missing_ids.push(asked),
            }
        }
        Ok(SqlDataRetrieverOutput { records, missing_ids })
    }
}

crate::traced_tool!(SqlDataRetriever, crate::registry::SQL_DATA_RETRIEVER, SqlDataRetrieverArgs, |_| arguments_schema(
));

/// The argument schema, generated from [`SqlDataRetrieverArgs`], with the retrievable fields as the enum of
/// `fields` (the ids come with every record; the limit on ids is in the description).
fn arguments_schema() -> Value {
    let fields: Vec<&str> =
        profile_fields().into_iter().filter(|field| !matches!(*field, "customer_id" | "external_id")).collect();
    let mut schema = crate::vocabulary::schema_of::<SqlDataRetrieverArgs>();
    if let Some(fields_schema) = schema.pointer_mut("/properties/fields") {
        *fields_schema = json!({"type": "array", "items": {"type": "string", "enum": fields}});
    }
    schema
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_select_from_allowed_fields_only() {
        let sql = select_sql(Some(&["email".to_owned(), "segment".to_owned()])).unwrap();
        assert!(sql.contains("SELECT customer_id, external_id, email, segment FROM profiles"), "{sql}");
        let err = select_sql(Some(&["email; DROP TABLE profiles".to_owned()])).unwrap_err();
        assert!(matches!(err, ToolFailure::Correctable(m) if m.contains("unknown field")));
        assert!(select_sql(None).unwrap().contains("first_name"));
    }
}
