//! `semantic_search`: ranks customer profiles by similarity to a described intent, with optional
//! structured filters on the profile payload. No SQL runs.

use std::time::Instant;

use rig_core::tool::{Tool, ToolContext, ToolExecutionError, ToolOutput};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::failure::ToolFailure;
use crate::observe;
use crate::stores::Stores;
use crate::trace::{ToolTrace, TracedTool};
use crate::vector::{Condition, Filter, MatchValue, ScoredPoint};

/// Customers returned when the model does not say.
pub const DEFAULT_LIMIT: usize = 10;
/// At most this many customers per call: the output goes into the model's context.
pub const MAX_LIMIT: usize = 50;

/// Structured filters on profile fields, applied inside the vector index.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileFilters {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<String>,
    /// Lower bound (inclusive) on total_spent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_spent: Option<f64>,
    /// Upper bound (inclusive) on total_spent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_spent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub likes_luxury: Option<bool>,
}

impl ProfileFilters {
    /// The filters as vector-index conditions (all must hold).
    pub fn conditions(&self) -> Vec<Condition> {
        let mut conditions = Vec::new();
        if let Some(country) = &self.country {
            conditions.push(Condition::Match { key: "country".into(), value: MatchValue::Keyword(country.clone()) });
        }
        if let Some(segment) = &self.segment {
            conditions.push(Condition::Match { key: "segment".into(), value: MatchValue::Keyword(segment.clone()) });
        }
        if self.min_spent.is_some() || self.max_spent.is_some() {
            conditions.push(Condition::Range {
                key: "total_spent".into(),
                gt: None,
                gte: self.min_spent,
                lt: None,
                lte: self.max_spent,
            });
        }
        if let Some(likes_luxury) = self.likes_luxury {
            conditions.push(Condition::Match { key: "likes_luxury".into(), value: MatchValue::Bool(likes_luxury) });
        }
        conditions
    }

    /// The same test as [`Self::conditions`], evaluated on a payload here (for exact scoring).
    pub fn matches(&self, payload: &Map<String, Value>) -> bool {
        let text = |key: &str| payload.get(key).and_then(Value::as_str);
        let spent = payload.get("total_spent").and_then(Value::as_f64);
        self.country.as_deref().is_none_or(|c| text("country") == Some(c))
            && self.segment.as_deref().is_none_or(|s| text("segment") == Some(s))
            && self.min_spent.is_none_or(|min| spent.is_some_and(|v| v >= min))
            && self.max_spent.is_none_or(|max| spent.is_some_and(|v| v <= max))
            && self.likes_luxury.is_none_or(|l| payload.get("likes_luxury").and_then(Value::as_bool) == Some(l))
    }

    pub(crate) fn validate(&self) -> Result<(), ToolFailure> {
        if let (Some(min), Some(max)) = (self.min_spent, self.max_spent)
            && min > max
        {
            return Err(ToolFailure::correctable(format!("min_spent ({min}) is greater than max_spent ({max})")));
        }
        Ok(())
    }
}

/// One ranked customer, with the few fields the model needs to describe it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CustomerHit {
    pub customer_id: u64,
    pub score: f32,
    pub name: String,
    pub country: String,
    pub total_spent: f64,
    pub interests: Vec<String>,
    pub segment: String,
}

impl CustomerHit {
    pub fn from_payload(customer_id: u64, score: f32, payload: &Map<String, Value>) -> Self {
        let text = |key: &str| payload.get(key).and_then(Value::as_str).unwrap_or_default().to_owned();
        let name = format!("{} {}", text("first_name"), text("last_name")).trim().to_owned();
        let interests = payload
            .get("calculated_interests")
            .and_then(Value::as_array)
            .map(|items| items.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default();
        Self {
            customer_id,
            // Four decimals are plenty to compare and keep the output short.
            score: (score * 10_000.0).round() / 10_000.0,
            name,
            country: text("country"),
            total_spent: payload.get("total_spent").and_then(Value::as_f64).unwrap_or_default(),
            interests,
            segment: text("segment"),
        }
    }

    pub(crate) fn from_scored(point: &ScoredPoint) -> Self {
        Self::from_payload(point.id, point.score, &point.payload)
    }
}

/// What the model is sent of ranked customers: `summary`, then a table in rank order (no scores: the order says
/// it) with what an answer cites: who, where, and the interests that make them fit. The host shows the user the
/// rest (spend, segment), and `sql_data_retriever` fetches it when the question asks.
pub(crate) fn observe_hits(summary: &str, hits: &[CustomerHit]) -> String {
    if hits.is_empty() {
        return summary.to_owned();
    }
    let rows = hits
        .iter()
        .map(|hit| [hit.customer_id.to_string(), hit.name.clone(), hit.country.clone(), hit.interests.join(",")]);
    format!(
        "{summary}; best matches first:\n{}",
        observe::table(&["customer_id", "name", "country", "interests"], rows)
    )
}

/// The requested limit, defaulted and capped.
pub(crate) fn effective_limit(limit: Option<usize>) -> usize {
    limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT)
}

/// Embeds the intent, recording tokens and time.
pub(crate) async fn embed_intent(
    stores: &Stores,
    intent: &str,
    trace: &mut ToolTrace,
) -> Result<Vec<f32>, ToolFailure> {
    if intent.trim().is_empty() {
        return Err(ToolFailure::correctable("`intent` must describe the customers to find"));
    }
    let start = Instant::now();
    let embedded = stores.embedder.embed_one(intent.trim().to_owned()).await;
    trace.time("embed", start);
    let (vector, tokens) = embedded.map_err(ToolFailure::Fatal)?;
    trace.embedding_tokens += tokens;
    Ok(vector)
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SemanticSearchArgs {
    pub intent: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<ProfileFilters>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SemanticSearchOutput {
    /// Customers passing the filters (all customers without filters): the audience size.
    pub count: u64,
    /// The best matches, best first.
    pub customers: Vec<CustomerHit>,
}

/// The `semantic_search` tool.
#[derive(Clone)]
pub struct SemanticSearch {
    stores: Stores,
}

impl SemanticSearch {
    pub fn new(stores: Stores) -> Self {
        Self { stores }
    }
}

impl TracedTool for SemanticSearch {
    type Report = SemanticSearchOutput;

    fn observe(report: &SemanticSearchOutput) -> String {
        observe_hits(&format!("{} customers pass the filters", report.count), &report.customers)
    }

    async fn execute(
        &self,
        args: SemanticSearchArgs,
        trace: &mut ToolTrace,
    ) -> Result<SemanticSearchOutput, ToolFailure> {
        let filters = args.filters.unwrap_or_default();
        filters.validate()?;
        let limit = effective_limit(args.limit);
        let vector = embed_intent(&self.stores, &args.intent, trace).await?;
        let filter = Filter::must(filters.conditions());
        let filter = (!filter.is_empty()).then_some(filter);
        trace.vector_filter = filter.clone();
        let start = Instant::now();
        let vectors = self.stores.vectors().await?;
        let points = vectors.search(vector, filter.clone(), limit).await.map_err(ToolFailure::Fatal)?;
        let count = vectors.count(filter).await.map_err(ToolFailure::Fatal)?;
        trace.time("vector", start);
        Ok(SemanticSearchOutput { count, customers: points.iter().map(CustomerHit::from_scored).collect() })
    }
}

impl Tool for SemanticSearch {
    const NAME: &'static str = "semantic_search";
    type Args = SemanticSearchArgs;
    type Output = ToolOutput;
    type Error = ToolFailure;

    fn description(&self) -> String {
        include_str!("../../prompts/tools/semantic_search.md").trim().to_owned()
    }

    fn parameters(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "intent": {"type": "string"},
                "filters": filters_schema(),
                "limit": {"type": "integer", "maximum": MAX_LIMIT}
            },
            "required": ["intent"]
        })
    }

    fn map_error(&self, error: ToolFailure) -> ToolExecutionError {
        error.into_execution_error()
    }

    async fn call(&self, context: &mut ToolContext, args: Self::Args) -> Result<Self::Output, Self::Error> {
        self.call_observed(context, args).await
    }
}

/// JSON schema of [`ProfileFilters`], shared by the tools that take it. Unknown keys need no
/// `additionalProperties` here: they fail argument parsing, and the model is told so.
pub(crate) fn filters_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "country": {"type": "string"},
            "segment": {"type": "string"},
            "min_spent": {"type": "number"},
            "max_spent": {"type": "number"},
            "likes_luxury": {"type": "boolean"}
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_their_conditions() {
        let filters = ProfileFilters {
            country: Some("DE".into()),
            min_spent: Some(100.0),
            likes_luxury: Some(true),
            ..ProfileFilters::default()
        };
        assert_eq!(filters.conditions().len(), 3);
        let payload = |country: &str, spent: f64, luxury: bool| {
            json!({"country": country, "total_spent": spent, "likes_luxury": luxury}).as_object().cloned().unwrap()
        };
        assert!(filters.matches(&payload("DE", 150.0, true)));
        assert!(!filters.matches(&payload("FR", 150.0, true)));
        assert!(!filters.matches(&payload("DE", 50.0, true)));
        assert!(!filters.matches(&payload("DE", 150.0, false)));
        assert!(ProfileFilters::default().matches(&payload("FR", 0.0, false)));
    }

    #[test]
    fn limit_is_defaulted_and_capped() {
        assert_eq!(effective_limit(None), DEFAULT_LIMIT);
        assert_eq!(effective_limit(Some(0)), 1);
        assert_eq!(effective_limit(Some(500)), MAX_LIMIT);
    }
}
