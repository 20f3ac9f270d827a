//! `sql_analytics`: answers a counting/aggregating question with one guarded, read-only SQL query.
//!
//! One inner LLM call writes the SQL, grounded with the live schema (from `information_schema`, read by
//! the host) and the values of low-cardinality columns. The SQL passes the guard, runs read-only with a
//! row cap, and the rows go back to the agent as they are (no second LLM call to phrase them).

use std::future::Future;
use std::time::Instant;

use anyhow::{Context, anyhow};
use rig_core::DynModel;
use rig_core::completion::{CompletionRequest, CompletionResponse};
use rig_core::driver::{Model, Transport};
use rig_core::error::ProviderError;
use rig_core::operation::Completion;
use rig_core::tool::{Tool, ToolContext, ToolExecutionError, ToolOutput};
use rig_core::wire::Wire;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{Executor, Statement};

use crate::db::{Db, ReadLimits};
use crate::failure::ToolFailure;
use crate::observe;
use crate::schema::{PREDICTED_COLUMNS, TABLES, profile_fields};
use crate::sql_guard;
use crate::stores::Stores;
use crate::trace::{InnerLlmCall, ToolTrace, TracedTool};

/// System prompt of the inner text-to-SQL call.
pub const SQL_WRITER_PROMPT: &str = include_str!("../../prompts/sql_writer.md");

/// A model that answers one completion request: any rig 0.44 completion model, concrete or erased.
///
/// rig 0.44 has no `CompletionModel` trait (models are `Model<Wire, Transport>`, erased as
/// `DynModel<Completion>`), so this is the bound `SqlAnalytics` needs for its one inner call.
pub trait CompletionModel: Clone + Send + Sync + 'static {
    fn complete(
        &self,
        request: CompletionRequest,
    ) -> impl Future<Output = Result<CompletionResponse, ProviderError>> + Send + 'static;

    /// The model id the requests go to, when the model names one.
    fn model_id(&self) -> Option<String>;
}

impl CompletionModel for DynModel<Completion> {
    fn complete(
        &self,
        request: CompletionRequest,
    ) -> impl Future<Output = Result<CompletionResponse, ProviderError>> + Send + 'static {
        self.call(request)
    }

    fn model_id(&self) -> Option<String> {
        self.id().map(str::to_owned)
    }
}

impl<W, T> CompletionModel for Model<W, T>
where
    W: Wire<Op = Completion> + Send + Sync,
    T: Transport<W> + Send + Sync,
{
    fn complete(
        &self,
        request: CompletionRequest,
    ) -> impl Future<Output = Result<CompletionResponse, ProviderError>> + Send + 'static {
        self.call(request)
    }

    fn model_id(&self) -> Option<String> {
        self.id().map(str::to_owned)
    }
}

/// Arguments: a question (the inner model writes the SQL), or SQL to run directly (still guarded).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SqlAnalyticsArgs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub question: Option<String>,
    /// SQL to run as-is instead of asking the inner model (used by `audience tool` and tests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql: Option<String>,
}

/// What the model sends: the question in words (`sql` is for `audience tool` users, not offered to the model).
#[derive(schemars::JsonSchema)]
#[allow(dead_code)] // Only its schema is used: the model's call is read as `SqlAnalyticsArgs`.
struct AnalyticsQuestion {
    /// The analytic question restated in plain words (not SQL).
    #[schemars(length(min = 1, max = 300))]
    question: String,
}

/// Query result, capped at `ReadLimits::row_cap` rows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SqlAnalyticsOutput {
    pub sql: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
    /// Rows returned here (at most the cap).
    pub row_count: usize,
    /// True when the query had more rows than the cap.
    pub truncated: bool,
}

/// The `sql_analytics` tool. `M` is the model of the inner text-to-SQL call; without one, only `{"sql"}` runs.
#[derive(Clone)]
pub struct SqlAnalytics<M = DynModel<Completion>> {
    stores: Stores,
    model: Option<M>,
}

impl<M: CompletionModel> SqlAnalytics<M> {
    pub fn new(stores: Stores, model: M) -> Self {
        Self { stores, model: Some(model) }
    }

    /// A tool that runs only `{"sql": ...}` arguments (no LLM configured).
    pub fn sql_only(stores: Stores) -> Self {
        Self { stores, model: None }
    }

    /// The inner LLM call: question + live schema -> one SQL query.
    async fn write_sql(&self, question: &str, trace: &mut ToolTrace) -> Result<String, ToolFailure> {
        let Some(model) = &self.model else {
            return Err(ToolFailure::correctable(
                "no LLM provider is configured for the text-to-SQL step; pass `sql` instead of `question`",
            ));
        };
        let grounding = self.stores.grounding().await.map_err(ToolFailure::Fatal)?;
        let prompt = format!("{}\nQuestion: {}", grounding.prompt, question.trim());
        let request = CompletionRequest::new(prompt).preamble(SQL_WRITER_PROMPT).max_tokens(800);
        let start = Instant::now();
        let response = model.complete(request).await;
        trace.time("llm", start);
        let response = response.map_err(|e| ToolFailure::Fatal(anyhow!("the text-to-SQL model call failed: {e}")))?;
        trace.inner_llm = Some(InnerLlmCall {
            model: response.model().map(str::to_owned).or_else(|| model.model_id()),
            usage: response.usage,
            ms: trace.timings_ms.get("llm").map_or(0, |ms| ms.round() as u64),
        });
        let sql = extract_sql(&response.text());
        if sql.is_empty() {
            return Err(ToolFailure::correctable("the SQL writer returned no query; rephrase the question"));
        }
        Ok(sql)
    }
}

impl<M: CompletionModel> TracedTool for SqlAnalytics<M> {
    type Report = SqlAnalyticsOutput;

    /// The rows as a table; the SQL stays with the host (the answer must not show it anyway).
    fn observe(report: &SqlAnalyticsOutput) -> String {
        if report.rows.is_empty() {
            return "no rows".to_owned();
        }
        let columns: Vec<&str> = report.columns.iter().map(String::as_str).collect();
        let table = observe::table(&columns, report.rows.iter().map(|row| row.iter().map(observe::cell)));
        if report.truncated {
            return format!("{table}\n(only the first {} rows; there are more)", report.row_count);
        }
        table
    }

    async fn execute(&self, args: SqlAnalyticsArgs, trace: &mut ToolTrace) -> Result<SqlAnalyticsOutput, ToolFailure> {
        let (sql, question) = match (args.sql, args.question) {
            (Some(sql), _) if !sql.trim().is_empty() => (sql, None),
            (_, Some(question)) if !question.trim().is_empty() => {
                (self.write_sql(&question, trace).await?, Some(question))
            }
            _ => return Err(ToolFailure::correctable("pass a non-empty `question`")),
        };
        let checked = sql_guard::check_analytics(&sql).map_err(|refusal| {
            ToolFailure::Correctable(format!("{refusal}. The SQL was: {}", sql_guard::excerpt(&sql)))
        })?;
        // A copy that does not even parse was refused above, with the guard's reason.
        if question.as_deref().is_some_and(|question| copied(question, &sql)) {
            return Err(ToolFailure::correctable(COPIED));
        }
        trace.sql = Some(checked.clone());
        let start = Instant::now();
        let table = run_select(&self.stores.db, self.stores.limits, &checked).await;
        trace.time("sql", start);
        let table = table?;
        Ok(SqlAnalyticsOutput {
            sql: checked,
            columns: table.columns,
            row_count: table.rows.len(),
            rows: table.rows,
            truncated: table.truncated,
        })
    }
}

impl<M: CompletionModel> Tool for SqlAnalytics<M> {
    const NAME: &'static str = crate::registry::SQL_ANALYTICS.name;
    type Args = SqlAnalyticsArgs;
    type Output = ToolOutput;
    type Error = ToolFailure;

    fn description(&self) -> String {
        crate::registry::SQL_ANALYTICS.text().to_owned()
    }

    fn parameters(&self) -> Value {
        crate::vocabulary::schema_of::<AnalyticsQuestion>()
    }

    fn map_error(&self, error: ToolFailure) -> ToolExecutionError {
        error.into_execution_error()
    }

    async fn call(&self, context: &mut ToolContext, args: Self::Args) -> Result<Self::Output, Self::Error> {
        self.call_observed(context, args).await
    }
}

/// The model's answer without Markdown fences or a trailing `;`.
fn extract_sql(text: &str) -> String {
    let text = text.trim();
    let body = match text.find("```") {
        Some(open) => {
            let after = &text[open + 3..];
            let after = after.strip_prefix("sql").or_else(|| after.strip_prefix("SQL")).unwrap_or(after);
            after.split("```").next().unwrap_or(after)
        }
        None => text,
    };
    body.trim().trim_end_matches(';').trim().to_owned()
}

/// Why a query the SQL writer copied from the question is not run.
pub const COPIED: &str = "the SQL writer returned the question unchanged instead of writing a query, so it was not \
     run (the question was SQL written without the schema); for counts, revenue, averages and rates call metrics, \
     else ask sql_analytics the question in plain words";

/// Whether the writer's `sql` is the `question` it was given, give or take code fences, a semicolon, case and
/// spacing: then the model that wrote the question wrote the SQL, without ever seeing the schema, and the writer
/// added nothing.
fn copied(question: &str, sql: &str) -> bool {
    let plain = |text: &str| extract_sql(text).split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase();
    plain(question) == plain(sql)
}

/// Rows of a guarded query, as JSON values in column order.
pub(crate) struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
    pub truncated: bool,
}

/// Runs a guarded SELECT read-only, fetching at most `row_cap + 1` rows to detect truncation.
///
/// Column names come from preparing the statement (so an empty result still has them); the rows come as
/// `row_to_json` over the query with its columns renamed `c0..cN`, so duplicate names and any type
/// PostgreSQL can render as JSON survive without per-type decoding.
pub(crate) async fn run_select(db: &Db, limits: ReadLimits, sql: &str) -> Result<Table, ToolFailure> {
    let mut tx = db.begin_read_only(limits).await.map_err(ToolFailure::Fatal)?;
    let statement = (&mut *tx).prepare(sql).await?;
    let columns: Vec<String> = statement.columns().iter().map(|c| sqlx::Column::name(c).to_owned()).collect();
    if columns.is_empty() {
        return Err(ToolFailure::correctable("the query selects no columns"));
    }
    let aliases: Vec<String> = (0..columns.len()).map(|i| format!("c{i}")).collect();
    let wrapped =
        format!("SELECT row_to_json(q)::text FROM ({sql}) AS q({}) LIMIT {}", aliases.join(", "), limits.row_cap + 1);
    let texts: Vec<String> = sqlx::query_scalar(&wrapped).fetch_all(&mut *tx).await?;
    tx.rollback().await.context("cannot end the read-only transaction").map_err(ToolFailure::Fatal)?;
    let truncated = texts.len() > limits.row_cap;
    let mut rows = Vec::with_capacity(texts.len().min(limits.row_cap));
    for text in texts.into_iter().take(limits.row_cap) {
        let mut object: serde_json::Map<String, Value> = serde_json::from_str(&text)
            .context("PostgreSQL returned a row that is not a JSON object")
            .map_err(ToolFailure::Fatal)?;
        rows.push(aliases.iter().map(|alias| object.remove(alias).unwrap_or(Value::Null)).collect());
    }
    Ok(Table { columns, rows, truncated })
}

/// What the inner model is told about the data: live columns and types, and the values of
/// low-cardinality columns, so it writes `country = 'DE'` rather than guessing `'Germany'`.
#[derive(Clone, Debug)]
pub struct Grounding {
    /// The schema block of the prompt.
    pub prompt: String,
}

/// Columns whose distinct values are listed in the prompt (when there are at most `MAX_SAMPLE_VALUES`).
const SAMPLED_COLUMNS: &[(&str, &str)] = &[
    ("customers", "country"),
    ("customers", "favorite_color"),
    ("events", "event_type"),
    ("events", "product"),
    ("events", "color"),
    ("profiles", "segment"),
    ("profiles", "interests"),
];
const MAX_SAMPLE_VALUES: usize = 60;

impl Grounding {
    /// Reads the schema of our tables from `information_schema` and samples low-cardinality columns.
    pub async fn load(db: &Db) -> anyhow::Result<Self> {
        if !db.is_ingested().await? {
            return Err(anyhow!("schema `{}` has no profiles table; run `audience ingest` first", db.schema));
        }
        let tables: Vec<String> = TABLES.iter().map(|t| t.name.to_owned()).collect();
        let columns: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT table_name::text, column_name::text, udt_name::text FROM information_schema.columns \
             WHERE table_schema = $1 AND table_name = ANY($2) ORDER BY table_name, ordinal_position",
        )
        .bind(&db.schema)
        .bind(&tables)
        .fetch_all(&db.pool)
        .await
        .context("cannot read the table columns from information_schema")?;
        // Text is the common type, so only the other types are written. Profile columns that are not profile
        // fields (the rendered text and its hash) are ingest's bookkeeping, not data to count. The predicted
        // columns are not offered to text-to-SQL yet: the golden set's analytics recordings were made with this
        // prompt (a replay refuses another one), and the metrics catalogue's `average_p_alive` and
        // `predicted_value`, typed clauses, the retriever and exports offer them meanwhile.
        let fields: Vec<&str> =
            profile_fields().into_iter().filter(|field| !PREDICTED_COLUMNS.contains(field)).collect();
        let mut prompt = String::from("Tables (PostgreSQL; columns are text unless typed):\n");
        for table in &tables {
            let list: Vec<String> = columns
                .iter()
                .filter(|(t, column, _)| t == table && (t != "profiles" || fields.contains(&column.as_str())))
                .map(|(_, column, data_type)| match short_type(data_type) {
                    text if text == "text" => column.clone(),
                    other => format!("{column} {other}"),
                })
                .collect();
            prompt.push_str(&format!("{table}({})\n", list.join(", ")));
        }
        // Columns with the same values (a product is also an interest) share one line.
        let mut sampled: Vec<(Vec<String>, String)> = Vec::new();
        for (table, column) in SAMPLED_COLUMNS {
            // The column names are constants above, not input.
            let element = if *column == "interests" { format!("unnest({column})") } else { column.to_string() };
            let sql = format!(
                "SELECT v FROM (SELECT DISTINCT {element} AS v FROM {table}) s WHERE v IS NOT NULL ORDER BY v LIMIT {}",
                MAX_SAMPLE_VALUES + 1
            );
            let values: Vec<String> = sqlx::query_scalar(&sql)
                .fetch_all(&db.pool)
                .await
                .with_context(|| format!("cannot sample {table}.{column}"))?;
            if values.is_empty() || values.len() > MAX_SAMPLE_VALUES {
                continue;
            }
            let list = values.iter().map(|value| sample_value(value)).collect::<Vec<_>>().join(", ");
            match sampled.iter_mut().find(|(_, values)| *values == list) {
                Some((names, _)) => names.push(format!("{table}.{column}")),
                None => sampled.push((vec![format!("{table}.{column}")], list)),
            }
        }
        prompt.push_str("Values:\n");
        for (names, list) in sampled {
            prompt.push_str(&format!("{}: {list}\n", names.join(", ")));
        }
        // The data ends on its own day, not today: "the last 30 days" counts back from it, as audiences do.
        if let Some(day) = crate::dataset::Dataset::as_of(db).await? {
            prompt.push_str(&format!(
                "The data ends on {day}: for \"the last N days\" use ts >= DATE '{day}' - (N - 1) AND ts < DATE '{day}' + 1, \
                 never now() or current_date.\n"
            ));
        }
        Ok(Self { prompt })
    }
}

/// PostgreSQL's internal type names are the short ones (`int8`, `timestamptz`); arrays are `_elem`. The
/// width of an integer or float changes no query, so it is left out.
fn short_type(udt_name: &str) -> String {
    let (element, array) = match udt_name.strip_prefix('_') {
        Some(element) => (element, "[]"),
        None => (udt_name, ""),
    };
    let element = match element {
        "int2" | "int4" | "int8" => "int",
        "float4" | "float8" => "float",
        other => other,
    };
    format!("{element}{array}")
}

/// A sampled value as listed in the prompt: bare, since quotes cost a token or two per value and the prompt
/// says to use the values exactly; as a SQL literal when it could not be read back from the list.
fn sample_value(value: &str) -> String {
    if value.is_empty() || value.contains([',', '\'', '\n']) || value.trim() != value {
        format!("'{}'", value.replace('\'', "''"))
    } else {
        value.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_and_values_are_listed_short() {
        assert_eq!(short_type("int8"), "int");
        assert_eq!(short_type("_text"), "text[]");
        assert_eq!(short_type("timestamptz"), "timestamptz");
        assert_eq!(sample_value("Churn Recovery"), "Churn Recovery");
        assert_eq!(sample_value("bags, small"), "'bags, small'");
        assert_eq!(sample_value("O'Neil"), "'O''Neil'");
        assert_eq!(sample_value(" padded"), "' padded'");
    }

    #[test]
    fn extracts_sql_from_fenced_answers() {
        assert_eq!(extract_sql("```sql\nSELECT 1;\n```"), "SELECT 1");
        assert_eq!(extract_sql("SELECT count(*) FROM customers;"), "SELECT count(*) FROM customers");
        assert_eq!(extract_sql("Here:\n```\nSELECT 2\n```\nDone"), "SELECT 2");
    }
}
