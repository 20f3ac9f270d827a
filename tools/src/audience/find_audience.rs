//! `find_audience`: defines or refines the conversation's audience and evaluates it: the exact size after every
//! clause, a breakdown, and the top members ranked by the intent. Its arguments are an edit of the current
//! definition (see [`Edit`]), so a follow-up sends only what changes.

use serde_json::{Value, json};

use std::sync::Arc;

use super::definition::{Invalid, Rule, shorten};
use super::report::{AudienceReport, Share, evaluate};
use super::session::{AudienceSession, Edit};
use crate::failure::ToolFailure;
use crate::observe;
use crate::stores::Stores;
use crate::trace::{ToolTrace, TracedTool};
use crate::vocabulary::{DataValues, MAX_VALUES, Offered, find_audience_schema};

/// Members the model is shown: enough to name the best ones and say why they fit; the user sees every listed one,
/// and every later call resends what the model was shown.
const OBSERVED_MEMBERS: usize = 5;

/// The `find_audience` tool, working on one conversation's [`AudienceSession`].
#[derive(Clone)]
pub struct FindAudience {
    stores: Stores,
    session: AudienceSession,
    /// The argument schema the model is offered: generated per question from the data's values.
    schema: Value,
    /// The data's values, when the model's clauses must name only values that exist (the agent's calls).
    values: Option<Arc<DataValues>>,
}

impl FindAudience {
    pub fn new(stores: Stores, session: AudienceSession) -> Self {
        Self { stores, session, schema: find_audience_schema(&Offered::default(), Some(&[])), values: None }
    }

    /// The tool as the agent offers it for one question: its schema enumerates `offered` and the clause ids of
    /// the `current` audience, and a clause naming a value the data lacks is sent back to the model with the values
    /// there are.
    pub fn for_question(
        mut self,
        offered: &Offered,
        values: Arc<DataValues>,
        current: Option<&super::AudienceDefinition>,
    ) -> Self {
        let ids: Option<Vec<String>> = current.map(|d| d.clauses().map(|(clause, _)| clause.id.clone()).collect());
        self.schema = find_audience_schema(offered, ids.as_deref());
        self.values = Some(values);
        self
    }
}

/// Most values listed in an error that names the values there are.
const LISTED_VALUES: usize = 30;

/// Why `edit` names a value the data lacks, with the values there are.
fn unknown_value(edit: &Edit, values: &DataValues) -> Option<String> {
    let list = |all: &[String]| {
        let shown: Vec<&str> = all.iter().take(LISTED_VALUES).map(String::as_str).collect();
        let more = all.len().saturating_sub(LISTED_VALUES);
        if more > 0 { format!("{} (+{more} more)", shown.join(", ")) } else { shown.join(", ") }
    };
    let missing = |all: &[String], value: &str| all.len() < MAX_VALUES && !all.iter().any(|v| v == value);
    for clause in edit.include.iter().chain(&edit.exclude) {
        match &clause.rule {
            Rule::Event { products, colors, .. } => {
                if let Some(p) = products.iter().find(|p| missing(&values.products, p)) {
                    return Some(format!(
                        "no event names the product {}; the products are {}",
                        shorten(p),
                        list(&values.products)
                    ));
                }
                if let Some(c) = colors.iter().find(|c| missing(&values.colors, c)) {
                    return Some(format!(
                        "no event has the colour {}; the colours are {}",
                        shorten(c),
                        list(&values.colors)
                    ));
                }
            }
            Rule::Profile { field, value, .. } => {
                let Some(all) = values.of_field(*field) else { continue };
                let texts: Vec<&str> = match value {
                    Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
                    other => other.as_str().into_iter().collect(),
                };
                if let Some(v) = texts.iter().find(|v| missing(all, v)) {
                    return Some(format!(
                        "no customer has {} {}; the values are {}",
                        field.column(),
                        shorten(v),
                        list(all)
                    ));
                }
            }
            Rule::Sql { .. } => {}
        }
    }
    None
}

impl TracedTool for FindAudience {
    type Report = AudienceReport;

    /// The definition with its clause ids and the size after each, the breakdown in a line, and the members in a
    /// table: what the model answers from and refers to when it refines. No SQL.
    fn observe(report: &AudienceReport) -> String {
        let mut lines =
            vec![format!("audience: {} of {} customers. {}", report.size, report.total_customers, report.explanation)];
        if !report.funnel.is_empty() {
            let steps: Vec<String> = report
                .funnel
                .iter()
                .map(|step| {
                    let verb = if step.exclude { "exclude" } else { "include" };
                    format!("{} {verb} {} -> {}", step.clause, step.text, step.size)
                })
                .collect();
            lines.push(format!("clauses: {}", steps.join("; ")));
        }
        lines.extend(report.warnings.iter().map(|warning| format!("warning: {warning}")));
        if report.size > 0 {
            let dims = [
                ("country", &report.breakdown.country),
                ("segment", &report.breakdown.segment),
                ("status", &report.breakdown.status),
            ];
            let parts: Vec<String> =
                dims.iter().map(|(name, shares)| format!("{name} {}", top_shares(shares))).collect();
            lines.push(format!("breakdown: {}", parts.join("; ")));
        }
        if !report.members.is_empty() {
            let order = if report.ranked_by == "intent" { "best match first" } else { "by total spent" };
            let shown = report.members.len().min(OBSERVED_MEMBERS);
            let more = match report.members.len() - shown {
                0 => String::new(),
                hidden => format!(" ({hidden} more listed to the user)"),
            };
            lines.push(format!("top {shown} members, {order}{more}:"));
            let extra: Vec<&str> = report.members[0].fields.keys().map(String::as_str).collect();
            let mut columns = vec!["customer_id", "name", "country", "why"];
            columns.extend(&extra);
            let rows = report.members[..shown].iter().map(|m| {
                let mut row = vec![
                    observe::cell(&Value::String(m.external_id.clone())),
                    observe::cell(&Value::String(m.name.clone())),
                    observe::cell(&json!(m.country)),
                    observe::cell(&Value::String(m.why.join("; "))),
                ];
                row.extend(extra.iter().map(|field| m.fields.get(*field).map(observe::cell).unwrap_or_default()));
                row
            });
            lines.push(observe::table(&columns, rows));
        }
        lines.join("\n")
    }

    async fn execute(&self, edit: Edit, trace: &mut ToolTrace) -> Result<AudienceReport, ToolFailure> {
        if let Some(values) = &self.values
            && let Some(reason) = unknown_value(&edit, values)
        {
            return Err(ToolFailure::Correctable(reason));
        }
        let current = self.session.current();
        let definition = edit.apply(current.as_ref()).map_err(|Invalid(reason)| ToolFailure::Correctable(reason))?;
        let report = evaluate(&self.stores, &definition, &edit.fields, trace).await?;
        self.session.commit(report.clone());
        Ok(report)
    }
}

/// The largest shares of a breakdown dimension, e.g. `PL 60%, DE 40%`.
fn top_shares(shares: &[Share]) -> String {
    const SHOWN: usize = 4;
    let mut parts: Vec<String> = shares
        .iter()
        .take(SHOWN)
        .map(|s| format!("{} {}%", observe::cell(&Value::String(s.value.clone())), (s.share * 100.0).round()))
        .collect();
    if shares.len() > SHOWN {
        parts.push(format!("+{} more", shares.len() - SHOWN));
    }
    parts.join(", ")
}

crate::traced_tool!(FindAudience, crate::registry::FIND_AUDIENCE, Edit, |tool| tool.schema.clone());
