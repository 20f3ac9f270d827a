//! `find_audience`: defines or refines the conversation's audience and evaluates it: the exact size after every
//! clause, a breakdown, and the top members ranked by the intent. Its arguments are an edit of the current
//! definition (see [`Edit`]), so a follow-up sends only what changes.

use rig_core::tool::{Tool, ToolContext, ToolExecutionError, ToolOutput};
use serde_json::{Value, json};

use super::definition::{Invalid, MAX_LIMIT};
use super::report::{AudienceReport, Share, evaluate};
use super::session::{AudienceSession, Edit};
use crate::failure::ToolFailure;
use crate::observe;
use crate::registry;
use crate::stores::Stores;
use crate::trace::{ToolTrace, TracedTool};

/// Members the model is shown: enough to name the best ones and say why they fit; the user sees every listed one,
/// and every later call resends what the model was shown.
const OBSERVED_MEMBERS: usize = 5;

/// The `find_audience` tool, working on one conversation's [`AudienceSession`].
#[derive(Clone)]
pub struct FindAudience {
    stores: Stores,
    session: AudienceSession,
}

impl FindAudience {
    pub fn new(stores: Stores, session: AudienceSession) -> Self {
        Self { stores, session }
    }
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

impl Tool for FindAudience {
    const NAME: &'static str = registry::FIND_AUDIENCE.name;
    type Args = Edit;
    type Output = ToolOutput;
    type Error = ToolFailure;

    fn description(&self) -> String {
        registry::FIND_AUDIENCE.text().to_owned()
    }

    fn parameters(&self) -> Value {
        // The clause forms are in the description, once: every offered call resends this schema.
        let clause = json!({"type": "object"});
        json!({
            "type": "object",
            "properties": {
                "new": {"type": "boolean"},
                "include": {"type": "array", "items": clause},
                "exclude": {"type": "array", "items": clause},
                "remove": {"type": "array", "items": {"type": "string"}},
                "intent": {"type": "string"},
                "limit": {"type": "integer", "maximum": MAX_LIMIT},
                "fields": {"type": "array", "items": {"type": "string"}}
            }
        })
    }

    fn map_error(&self, error: ToolFailure) -> ToolExecutionError {
        error.into_execution_error()
    }

    async fn call(&self, context: &mut ToolContext, args: Self::Args) -> Result<Self::Output, Self::Error> {
        self.call_observed(context, args).await
    }
}
