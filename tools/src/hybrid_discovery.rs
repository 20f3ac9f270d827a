//! `hybrid_discovery`: a SQL gate over behaviour (events, customers) picks who qualifies, then the
//! intent's embedding ranks only those customers.
//!
//! The gate is one guarded boolean expression; the tool builds the query around it. The ranking uses
//! one of three strategies ([`Strategy`]) that return the same order: [`AUTO_STRATEGY`] unless the caller
//! forces another (benchmarks, tests); the trace records which one ran.

use std::cmp::Ordering;
use std::time::Instant;

use rig_core::tool::{Tool, ToolContext, ToolExecutionError, ToolOutput};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::failure::ToolFailure;
use crate::semantic_search::{
    CustomerHit, ProfileFilters, effective_limit, embed_intent, filters_schema, observe_hits,
};
use crate::sql_guard;
use crate::stores::Stores;
use crate::trace::{Strategy, ToolTrace, TracedTool};
use crate::vector::{Condition, Filter, MatchValue};

/// The strategy used when none is forced, at every gate size. `audience bench query` ran the three side by
/// side at 100k customers (BENCHMARKS.md): `has_id` had the lowest p95 total at 100, 1k, 10k and 100k gated
/// ids, e.g. 6.3 ms against 10.9 ms for exact scoring at 100 ids, 23 ms against 28 ms for match-any at 10k, and
/// 155 ms against 181 ms (match-any) and 1.5 s (exact) at 100k. The earlier size thresholds (exact up to 500
/// ids, match-any above 20k) picked a slower strategy at both ends.
pub const AUTO_STRATEGY: Strategy = Strategy::HasId;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HybridDiscoveryArgs {
    /// Boolean SQL expression over events and customers columns, e.g. `event_type = 'purchase' AND price > 100`.
    pub condition: String,
    /// Who to rank first, in plain words.
    pub intent: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<ProfileFilters>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Forces a ranking strategy (benchmarks and tests); normally picked from the gate size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HybridDiscoveryOutput {
    /// Customers that passed the SQL gate (before the profile filters): the audience size.
    pub gate_size: u64,
    /// The gate query that ran.
    pub sql: String,
    pub strategy: Strategy,
    /// The best matches among the gated customers, best first.
    pub customers: Vec<CustomerHit>,
}

/// The `hybrid_discovery` tool.
#[derive(Clone)]
pub struct HybridDiscovery {
    stores: Stores,
}

impl HybridDiscovery {
    pub fn new(stores: Stores) -> Self {
        Self { stores }
    }

    /// Runs the gate read-only and returns the distinct customer ids.
    async fn gate(&self, sql: &str) -> Result<Vec<u64>, ToolFailure> {
        let mut tx = self.stores.db.begin_read_only(self.stores.limits).await.map_err(ToolFailure::Fatal)?;
        let cap = self.stores.limits.member_cap;
        let capped = format!("{sql} LIMIT {}", cap + 1);
        let ids: Vec<i64> = sqlx::query_scalar(&capped).fetch_all(&mut *tx).await?;
        tx.rollback().await?;
        if ids.len() > cap {
            return Err(ToolFailure::correctable(format!(
                "more than {cap} customers pass the condition; make it more selective"
            )));
        }
        // Customer ids are positive by construction; a negative one could not be a vector point id anyway.
        Ok(ids.into_iter().filter_map(|id| u64::try_from(id).ok()).collect())
    }

    /// Ranks the gated ids by similarity to `vector`, keeping those that pass `filters`.
    async fn rank(
        &self,
        strategy: Strategy,
        vector: Vec<f32>,
        ids: Vec<u64>,
        filters: &ProfileFilters,
        limit: usize,
    ) -> Result<Vec<CustomerHit>, ToolFailure> {
        let vectors = self.stores.vectors().await?;
        let id_condition = match strategy {
            Strategy::Exact => {
                let points = vectors.retrieve(ids, true).await.map_err(ToolFailure::Fatal)?;
                let mut hits: Vec<CustomerHit> = points
                    .iter()
                    .filter(|point| filters.matches(&point.payload))
                    .filter_map(|point| {
                        let stored = point.vector.as_ref()?;
                        let score: f32 = stored.iter().zip(&vector).map(|(a, b)| a * b).sum();
                        Some(CustomerHit::from_payload(point.id, score, &point.payload))
                    })
                    .collect();
                hits.sort_by(|a, b| {
                    b.score.partial_cmp(&a.score).unwrap_or(Ordering::Equal).then(a.customer_id.cmp(&b.customer_id))
                });
                hits.truncate(limit);
                return Ok(hits);
            }
            Strategy::HasId => Condition::HasId { ids },
            Strategy::MatchAny => Condition::MatchAny {
                key: "customer_id".into(),
                values: ids.into_iter().filter_map(|id| i64::try_from(id).ok()).map(MatchValue::Integer).collect(),
            },
        };
        let mut conditions = filters.conditions();
        conditions.push(id_condition);
        let points = vectors.search(vector, Some(Filter::must(conditions)), limit).await.map_err(ToolFailure::Fatal)?;
        Ok(points.iter().map(CustomerHit::from_scored).collect())
    }
}

impl TracedTool for HybridDiscovery {
    type Report = HybridDiscoveryOutput;

    /// The audience size and the ranked customers; the gate SQL and the strategy stay with the host.
    fn observe(report: &HybridDiscoveryOutput) -> String {
        let summary = format!("{} customers pass the condition", report.gate_size);
        if report.gate_size > 0 && report.customers.is_empty() {
            return format!("{summary}; none of them passes the filters");
        }
        observe_hits(&summary, &report.customers)
    }

    /// The trace's `vector_filter` holds the profile filters only; the gate-id restriction (per `strategy`, over
    /// `gate_size` ids) is implied, because thousands of ids would bloat every trace.
    async fn execute(
        &self,
        args: HybridDiscoveryArgs,
        trace: &mut ToolTrace,
    ) -> Result<HybridDiscoveryOutput, ToolFailure> {
        let filters = args.filters.unwrap_or_default();
        filters.validate()?;
        let limit = effective_limit(args.limit);
        let sql =
            sql_guard::gate_query(&args.condition).map_err(|refusal| ToolFailure::Correctable(refusal.to_string()))?;
        trace.sql = Some(sql.clone());
        let start = Instant::now();
        let ids = self.gate(&sql).await;
        trace.time("sql", start);
        let ids = ids?;
        let gate_size = ids.len();
        let strategy = args.strategy.unwrap_or(AUTO_STRATEGY);
        trace.gate_size = Some(gate_size as u64);
        trace.strategy = Some(strategy);
        let profile_filter = Filter::must(filters.conditions());
        trace.vector_filter = (!profile_filter.is_empty()).then(|| profile_filter.clone());
        let customers = if ids.is_empty() {
            Vec::new()
        } else {
            let vector = embed_intent(&self.stores, &args.intent, trace).await?;
            let start = Instant::now();
            let ranked = self.rank(strategy, vector, ids, &filters, limit).await;
            trace.time("vector", start);
            ranked?
        };
        Ok(HybridDiscoveryOutput { gate_size: gate_size as u64, sql, strategy, customers })
    }
}

impl Tool for HybridDiscovery {
    const NAME: &'static str = "hybrid_discovery";
    type Args = HybridDiscoveryArgs;
    type Output = ToolOutput;
    type Error = ToolFailure;

    fn description(&self) -> String {
        include_str!("../../prompts/tools/hybrid_discovery.md").trim().to_owned()
    }

    fn parameters(&self) -> Value {
        json!({
            "type": "object",
            // The description says what the condition may read: every offered call resends this schema.
            "properties": {
                "condition": {"type": "string"},
                "intent": {"type": "string", "description": "who to rank first"},
                "filters": filters_schema(),
                "limit": {"type": "integer", "maximum": crate::semantic_search::MAX_LIMIT}
            },
            "required": ["condition", "intent"]
        })
    }

    fn map_error(&self, error: ToolFailure) -> ToolExecutionError {
        error.into_execution_error()
    }

    async fn call(&self, context: &mut ToolContext, args: Self::Args) -> Result<Self::Output, Self::Error> {
        self.call_observed(context, args).await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_description_names_the_gate_columns() {
        use crate::schema::TABLES;
        // Names, e-mails and ids are gate columns too, but no behaviour condition needs them.
        let described = ["event_type", "product", "color", "price", "quantity", "ts"].into_iter().chain([
            "country",
            "age",
            "favorite_color",
            "signup_date",
        ]);
        let description = include_str!("../../prompts/tools/hybrid_discovery.md");
        let gate_columns: Vec<&str> = TABLES
            .iter()
            .filter(|table| matches!(table.name, "events" | "customers"))
            .flat_map(|table| table.columns())
            .filter(|column| !column.ends_with("_id") && !matches!(*column, "first_name" | "last_name" | "email"))
            .collect();
        let described: Vec<&str> = described.collect();
        for column in &gate_columns {
            assert!(described.contains(column), "describe {column} in prompts/tools/hybrid_discovery.md");
        }
        for column in described {
            assert!(gate_columns.contains(&column), "{column} is not a gate column");
            assert!(description.contains(column), "{column} is missing from the description");
        }
    }
}
