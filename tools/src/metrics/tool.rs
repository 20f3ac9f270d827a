//! The `metrics` tool: a call naming measures, dimensions, filters, time and shape is checked, compiled to one
//! query, run read-only as the reader role, and reported with the definitions used, so the answer says how each
//! number was computed. Its argument schema is generated from the catalogue and the data's values.

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::catalogue::{Dimension, Measure, Unit};
use super::query::{
    CompiledMetrics, MAX_DIMENSIONS, MAX_LIMIT, MAX_MEASURES, MetricsArgs, MetricsQuery, Period, compile, filter_words,
};
use crate::audience::definition::Invalid;
use crate::audience::report::{data_for_compile, unknown_values};
use crate::failure::ToolFailure;
use crate::observe;
use crate::sql_analytics::run_select;
use crate::stores::Stores;
use crate::trace::{ToolTrace, TracedTool};
use crate::vocabulary::{MAX_WINDOW_DAYS, Offered, clause_list_schema, date_schema};

/// A measure as the report names it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeasureUsed {
    pub name: String,
    /// As a person says it ("net revenue").
    pub label: String,
    /// How it was computed, in words ("purchases minus returns").
    pub definition: String,
    pub unit: Unit,
}

/// A dimension as the report names it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DimensionUsed {
    pub name: String,
    pub definition: String,
}

/// One group: its dimension values, and each measure's value (`None`: no value, such as a rate without a
/// denominator).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricsRow {
    pub dimensions: Vec<String>,
    pub values: Vec<Option<f64>>,
    /// The previous period's values, with `compare`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Vec<Option<f64>>>,
}

/// What a `metrics` call found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricsReport {
    /// The whole call in words: "net revenue by country, of customers from PL, 2025-06-01 to 2025-06-30".
    pub explanation: String,
    pub measures: Vec<MeasureUsed>,
    pub dimensions: Vec<DimensionUsed>,
    /// The filters in words, when there are any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<String>,
    /// The days counted (event measures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<Period>,
    /// The days compared with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Period>,
    /// The data's last day.
    pub as_of: NaiveDate,
    /// Without dimensions, the first measure's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    pub rows: Vec<MetricsRow>,
    /// True when there were more rows than the reader's row cap.
    pub truncated: bool,
    /// The exact SQL that ran.
    pub sql: String,
    /// The table the values were computed from: the customers, one of the rollups ingest builds, or the events.
    #[serde(default)]
    pub read_from: String,
}

/// The `metrics` tool.
#[derive(Clone)]
pub struct Metrics {
    stores: Stores,
    schema: Value,
}

impl Metrics {
    /// The tool, its filters offering `offered`'s values (the agent narrows them per question).
    pub fn new(stores: Stores, offered: &Offered) -> Self {
        Self { stores, schema: metrics_schema(offered) }
    }
}

/// The argument schema: measures and dimensions as enums of the catalogue, filters as the audience clauses over the
/// offered values, every subschema inline (no `$ref`). Generated, never written by hand.
pub fn metrics_schema(offered: &Offered) -> Value {
    let measures: Vec<&str> = Measure::ALL.iter().map(|measure| measure.name()).collect();
    let dimensions: Vec<&str> = Dimension::ALL.iter().map(|dimension| dimension.name()).collect();
    let order_by: Vec<&str> = measures.iter().chain(&dimensions).copied().collect();
    let clauses = clause_list_schema(offered);
    let mut properties = Map::new();
    properties.insert(
        "measures".into(),
        json!({"type": "array", "items": {"type": "string", "enum": measures}, "minItems": 1, "maxItems": MAX_MEASURES}),
    );
    properties.insert(
        "dimensions".into(),
        json!({"type": "array", "items": {"type": "string", "enum": dimensions}, "maxItems": MAX_DIMENSIONS}),
    );
    properties.insert("filters".into(), clauses.clone());
    properties.insert("exclude".into(), clauses);
    properties.insert("within_days".into(), json!({"type": "integer", "minimum": 1, "maximum": MAX_WINDOW_DAYS}));
    properties.insert("since".into(), date_schema());
    properties.insert("until".into(), date_schema());
    properties.insert("compare".into(), json!({"type": "boolean"}));
    properties.insert("order_by".into(), json!({"type": "string", "enum": order_by}));
    properties.insert("order".into(), json!({"type": "string", "enum": ["asc", "desc"]}));
    properties.insert("limit".into(), json!({"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}));
    json!({"type": "object", "properties": properties, "required": ["measures"]})
}

/// The call in words: what is measured, by what, of whom and when.
fn explanation(query: &MetricsQuery, compiled: &CompiledMetrics) -> String {
    let labels: Vec<&str> = query.measures.iter().map(|measure| measure.label()).collect();
    let mut text = labels.join(" and ");
    if !query.dimensions.is_empty() {
        let names: Vec<&str> = query.dimensions.iter().map(|dimension| dimension.name()).collect();
        text.push_str(&format!(" by {}", names.join(" and ")));
    }
    if let Some(filters) = filter_words(&query.filters) {
        text.push_str(&format!(", of {filters}"));
    }
    if let Some(period) = &compiled.period {
        text.push_str(&format!(", {}", period.words()));
    }
    if let Some(previous) = &compiled.previous {
        text.push_str(&format!(", compared with {}", previous.words()));
    }
    text
}

/// A measure value as the model reads it.
fn number(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".to_owned(), observe::round)
}

impl TracedTool for Metrics {
    type Report = MetricsReport;

    /// The definitions, then the value or a table of the rows; no SQL.
    fn observe(report: &MetricsReport) -> String {
        let mut lines: Vec<String> =
            report.measures.iter().map(|m| format!("{} = {}", m.label, m.definition)).collect();
        lines.push(report.explanation.clone());
        if report.dimensions.is_empty()
            && let Some(row) = report.rows.first()
        {
            for (at, measure) in report.measures.iter().enumerate() {
                let value = number(row.values.get(at).copied().flatten());
                let previous = row.previous.as_ref().map(|previous| number(previous.get(at).copied().flatten()));
                lines.push(match previous {
                    Some(previous) => format!("{}: {value} (previous period: {previous})", measure.name),
                    None => format!("{}: {value}", measure.name),
                });
            }
            return lines.join("\n");
        }
        let mut columns: Vec<String> = report.dimensions.iter().map(|d| d.name.clone()).collect();
        for measure in &report.measures {
            columns.push(measure.name.clone());
            if report.previous.is_some() {
                columns.push(format!("{}_previous", measure.name));
            }
        }
        let columns: Vec<&str> = columns.iter().map(String::as_str).collect();
        let rows = report.rows.iter().map(|row| {
            let mut cells: Vec<String> =
                row.dimensions.iter().map(|d| observe::cell(&Value::String(d.clone()))).collect();
            for (at, value) in row.values.iter().enumerate() {
                cells.push(number(*value));
                if let Some(previous) = &row.previous {
                    cells.push(number(previous.get(at).copied().flatten()));
                }
            }
            cells
        });
        lines.push(if report.rows.is_empty() { "no rows".to_owned() } else { observe::table(&columns, rows) });
        if report.truncated {
            lines.push(format!("(only the first {} rows; there are more)", report.rows.len()));
        }
        lines.join("\n")
    }

    async fn execute(&self, args: MetricsArgs, trace: &mut ToolTrace) -> Result<MetricsReport, ToolFailure> {
        let correctable = |Invalid(reason): Invalid| ToolFailure::Correctable(reason);
        let query = args.check().map_err(correctable)?;
        let data = data_for_compile(&self.stores).await?;
        let compiled = compile(&query, data).map_err(correctable)?;
        if query.filters.clauses().next().is_some() {
            // A filter on a value the data does not have (`UK` for `GB`) counts nobody: the caller gets the values
            // there are, to correct it with, rather than a confident 0.
            let customers = crate::audience::compile::compile(&query.filters, data).map_err(correctable)?.customers;
            let mut tx = self.stores.db.begin_read_only(self.stores.limits).await.map_err(ToolFailure::Fatal)?;
            let unknown = unknown_values(&mut tx, &query.filters, customers).await?;
            if !unknown.is_empty() {
                return Err(ToolFailure::Correctable(format!("filters: {}", unknown.join("; "))));
            }
        }
        trace.sql = Some(compiled.sql.clone());
        let start = std::time::Instant::now();
        let table = run_select(&self.stores.db, self.stores.limits, &compiled.sql).await;
        trace.time("sql", start);
        let table = table?;
        let dimensions = query.dimensions.len();
        let compared = compiled.previous.is_some();
        let rows: Vec<MetricsRow> = table
            .rows
            .iter()
            .map(|cells| {
                let labels = cells.iter().take(dimensions).map(|cell| match cell {
                    Value::String(text) => text.clone(),
                    Value::Null => "unknown".to_owned(),
                    other => other.to_string(),
                });
                let numbers: Vec<Option<f64>> = cells.iter().skip(dimensions).map(Value::as_f64).collect();
                // With `compare`, each measure's value is followed by the previous period's.
                let (values, previous) = if compared {
                    let current: Vec<Option<f64>> = numbers.iter().step_by(2).copied().collect();
                    let before: Vec<Option<f64>> = numbers.iter().skip(1).step_by(2).copied().collect();
                    (current, Some(before))
                } else {
                    (numbers, None)
                };
                MetricsRow { dimensions: labels.collect(), values, previous }
            })
            .collect();
        let value = match (dimensions, rows.first()) {
            (0, Some(row)) => row.values.first().copied().flatten(),
            _ => None,
        };
        Ok(MetricsReport {
            explanation: explanation(&query, &compiled),
            measures: query
                .measures
                .iter()
                .map(|measure| MeasureUsed {
                    name: measure.name().to_owned(),
                    label: measure.label().to_owned(),
                    definition: measure.definition(),
                    unit: measure.unit(),
                })
                .collect(),
            dimensions: query
                .dimensions
                .iter()
                .map(|dimension| DimensionUsed {
                    name: dimension.name().to_owned(),
                    definition: dimension.definition(),
                })
                .collect(),
            filters: filter_words(&query.filters),
            period: compiled.period,
            previous: compiled.previous,
            as_of: data.as_of,
            value,
            rows,
            truncated: table.truncated,
            sql: compiled.sql,
            read_from: compiled.read_from.to_owned(),
        })
    }
}

crate::traced_tool!(Metrics, crate::registry::METRICS, MetricsArgs, |tool| tool.schema.clone());

#[cfg(test)]
mod tests {
    use super::*;

    fn offered() -> Offered {
        Offered {
            products: vec!["socks".into(), "t_shirts".into()],
            colors: vec!["red".into()],
            countries: vec!["PL".into(), "GB".into()],
            segments: vec!["VIP Loyalty".into()],
        }
    }

    fn strings(value: &Value) -> Vec<String> {
        value.as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect()
    }

    /// Schema drift: the enums are the catalogue, every argument is a property, the filters are the audience
    /// clauses over the data's values, and nothing is behind a `$ref`.
    #[test]
    fn the_schema_is_generated_from_the_catalogue_and_the_data() {
        let schema = metrics_schema(&offered());
        let properties = &schema["properties"];
        let names = |all: Vec<&str>| all.into_iter().map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(strings(&properties["measures"]["items"]["enum"]), names(Measure::ALL.map(|m| m.name()).to_vec()));
        assert_eq!(
            strings(&properties["dimensions"]["items"]["enum"]),
            names(Dimension::ALL.map(|d| d.name()).to_vec())
        );
        assert_eq!(properties["filters"], clause_list_schema(&offered()));
        let countries = properties["filters"].to_string();
        assert!(countries.contains(r#"["PL","GB"]"#), "{countries}");
        let event: crate::audience::definition::Clause =
            serde_json::from_value(json!({"type": "event", "event_type": "purchase"})).unwrap();
        let every_argument = serde_json::to_value(MetricsArgs {
            measures: vec!["orders".into()],
            dimensions: vec!["country".into()],
            filters: vec![event.clone()],
            exclude: vec![event],
            within_days: Some(1),
            since: NaiveDate::from_ymd_opt(2025, 1, 1),
            until: NaiveDate::from_ymd_opt(2025, 1, 2),
            compare: true,
            order_by: Some("orders".into()),
            order: Some(super::super::query::Direction::Asc),
            limit: Some(1),
        })
        .unwrap();
        let keys = |value: &Value| value.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&every_argument), keys(properties), "every argument and only they are in the schema");
        let text = schema.to_string();
        assert!(!text.contains("$ref") && !text.contains("$defs"), "{text}");
    }
}
