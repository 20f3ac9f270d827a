//! The four agent tools against a small real dataset: PostgreSQL in a private schema, real embeddings
//! of the profiles in an embedded index, and rig's scripted model for the inner text-to-SQL call.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly; that is its job

mod tool_support;

use std::collections::BTreeSet;

use audience_tools::db::ReadLimits;
use audience_tools::failure::{ToolFailure, is_fatal};
use audience_tools::hybrid_discovery::{AUTO_STRATEGY, HybridDiscovery, HybridDiscoveryArgs};
use audience_tools::semantic_search::{ProfileFilters, SemanticSearch, SemanticSearchArgs};
use audience_tools::sql_analytics::{SqlAnalytics, SqlAnalyticsArgs};
use audience_tools::sql_data_retriever::{SqlDataRetriever, SqlDataRetrieverArgs};
use audience_tools::trace::{FullOutput, Strategy, ToolTrace, TracedTool};
use rig_agent::agent::{AgentBuilder, AgentHook, HookContext, OutcomeAction, OutcomeEvent};
use rig_agent::test_utils::{MockCompletionModel, MockTurn};
use rig_core::completion::Usage;
use rig_core::tool::{Tool, ToolContext};
use serde_json::json;
use tool_support::TestDb;

fn ids<T>(items: &[T], id: impl Fn(&T) -> u64) -> Vec<u64> {
    items.iter().map(id).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn hybrid_discovery_gates_then_ranks_the_same_with_every_strategy() {
    let test = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let stores = test.stores(dir.path(), true, ReadLimits::default()).await;
    let tool = HybridDiscovery::new(stores);
    let args = |strategy| HybridDiscoveryArgs {
        condition: "event_type = 'purchase' AND product = 'watch'".into(),
        intent: "collector of expensive luxury watches".into(),
        strategy,
        ..Default::default()
    };

    // As in the agent loop, so the trace lands in the context.
    let mut context = ToolContext::new();
    let auto = tool.call_traced(&mut context, args(None)).await.unwrap();
    let trace: ToolTrace = context.result::<ToolTrace>().unwrap().expect("trace published");
    assert_eq!(auto.gate_size, 3);
    assert_eq!(auto.strategy, AUTO_STRATEGY, "the measured fastest strategy, whatever the gate size");
    assert_eq!(ids(&auto.customers, |c| c.customer_id).into_iter().collect::<BTreeSet<_>>(), BTreeSet::from([1, 5, 8]));
    assert!(auto.customers.windows(2).all(|w| w[0].score >= w[1].score), "best first");
    assert_eq!(trace.tool, "hybrid_discovery");
    assert_eq!(trace.gate_size, Some(3));
    assert_eq!(trace.strategy, Some(AUTO_STRATEGY));
    assert!(trace.sql.as_deref().unwrap().contains("WHERE event_type = 'purchase' AND product = 'watch'"));
    assert!(trace.embedding_tokens > 0);
    assert!(trace.error.is_none() && trace.fatal.is_none());

    // Through rig's interface the model is sent the audience size and the ranked customers (no SQL, no scores);
    // the full output stays with the host.
    let mut context = ToolContext::new();
    let observed = Tool::call(&tool, &mut context, args(None)).await.unwrap();
    let text = observed.as_text().unwrap();
    let header = "3 customers pass the condition; best matches first:\ncustomer_id|name|country|interests\n";
    assert!(text.starts_with(header), "{text}");
    assert_eq!(text.lines().count(), 5, "{text}");
    assert!(!text.contains("SELECT") && !text.contains("exact"), "{text}");
    let full = context.result::<FullOutput>().unwrap().expect("the full output is kept");
    assert_eq!(full.0, serde_json::to_value(&auto).unwrap());

    for strategy in Strategy::ALL {
        let out = tool.run(args(Some(strategy))).await.unwrap();
        assert_eq!(out.strategy, strategy);
        assert_eq!(ids(&out.customers, |c| c.customer_id), ids(&auto.customers, |c| c.customer_id), "{strategy:?}");
        for (a, b) in out.customers.iter().zip(&auto.customers) {
            assert!((a.score - b.score).abs() < 1e-3, "{strategy:?}: {} vs {}", a.score, b.score);
        }
    }

    // Profile filters narrow the ranked set, identically for every strategy; the gate size stays the SQL count.
    for strategy in Strategy::ALL {
        let filters = ProfileFilters { likes_luxury: Some(true), ..Default::default() };
        let out = tool.run(HybridDiscoveryArgs { filters: Some(filters), ..args(Some(strategy)) }).await.unwrap();
        assert_eq!(out.gate_size, 3);
        let found: BTreeSet<u64> = ids(&out.customers, |c| c.customer_id).into_iter().collect();
        assert_eq!(found, BTreeSet::from([1, 8]), "{strategy:?}");
    }

    // A customers column in the gate, and a gate nobody passes.
    let out = tool
        .run(HybridDiscoveryArgs { condition: "country = 'DE'".into(), limit: Some(1), ..args(None) })
        .await
        .unwrap();
    assert_eq!((out.gate_size, out.customers.len()), (2, 1));
    let empty = tool.run(HybridDiscoveryArgs { condition: "price > 100000".into(), ..args(None) }).await.unwrap();
    assert_eq!((empty.gate_size, empty.customers.len()), (0, 0));
    assert_eq!(HybridDiscovery::observe(&empty), "0 customers pass the condition");

    // Mistakes the model can correct.
    let refused = tool.run(HybridDiscoveryArgs { condition: "total_spent > 10".into(), ..args(None) }).await;
    assert!(matches!(refused, Err(ToolFailure::Correctable(m)) if m.contains("total_spent")));
    let pg_error = tool.run(HybridDiscoveryArgs { condition: "price > 'abc'".into(), ..args(None) }).await;
    assert!(matches!(&pg_error, Err(ToolFailure::Correctable(m)) if m.contains("PostgreSQL")), "{pg_error:?}");
    test.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn semantic_search_ranks_by_intent_with_filters() {
    let test = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let stores = test.stores(dir.path(), true, ReadLimits::default()).await;
    let tool = SemanticSearch::new(stores);

    let out = tool
        .run(SemanticSearchArgs { intent: "hiking, camping and outdoor trekking".into(), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(out.count, 8);
    assert_eq!(out.customers[0].customer_id, 2, "{:?}", out.customers);
    assert_eq!(out.customers[0].name, "Ben Weber");
    assert_eq!(out.customers[0].interests, ["hiking", "camping"]);
    assert_eq!(out.customers.len(), 8);

    let filters = ProfileFilters { country: Some("DE".into()), min_spent: Some(1000.0), ..Default::default() };
    let mut context = ToolContext::new();
    let args = SemanticSearchArgs { intent: "watches".into(), filters: Some(filters), limit: Some(5) };
    let out = tool.call_traced(&mut context, args).await.unwrap();
    assert_eq!(out.count, 1);
    assert_eq!(ids(&out.customers, |c| c.customer_id), [1]);
    let trace = context.result::<ToolTrace>().unwrap().unwrap();
    assert_eq!(
        serde_json::to_value(trace.vector_filter.unwrap()).unwrap(),
        json!({"must": [
            {"match": {"key": "country", "value": "DE"}},
            {"range": {"key": "total_spent", "gte": 1000.0}}
        ]})
    );
    assert!(trace.sql.is_none());

    let bad = tool
        .run(SemanticSearchArgs {
            intent: "x".into(),
            filters: Some(ProfileFilters { min_spent: Some(10.0), max_spent: Some(1.0), ..Default::default() }),
            limit: None,
        })
        .await;
    assert!(matches!(bad, Err(ToolFailure::Correctable(_))));
    // Unknown filter keys are argument errors, before the tool runs.
    assert!(
        serde_json::from_value::<SemanticSearchArgs>(json!({"intent": "x", "filters": {"city": "Paris"}})).is_err()
    );
    test.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sql_data_retriever_returns_allowed_fields_in_order() {
    let test = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let stores = test.stores(dir.path(), false, ReadLimits::default()).await;
    let tool = SqlDataRetriever::new(stores);

    let fields = Some(vec!["email".to_owned(), "total_spent".to_owned(), "interests".to_owned()]);
    let out = tool.run(SqlDataRetrieverArgs { customer_ids: vec![3, 1, 999, 3], fields }).await.unwrap();
    assert_eq!(out.missing_ids, [999]);
    assert_eq!(
        serde_json::to_value(&out.records).unwrap(),
        json!([
            {"customer_id": 3, "email": "chloe@example.com", "total_spent": 1800.00, "interests": ["handbags", "fashion"]},
            {"customer_id": 1, "email": "anna@example.com", "total_spent": 2500.00, "interests": ["watches", "jewelry"]}
        ])
    );

    assert_eq!(
        SqlDataRetriever::observe(&out),
        "customer_id|email|total_spent|interests\n3|chloe@example.com|1800|handbags,fashion\n\
         1|anna@example.com|2500|watches,jewelry\nno profile for ids: 999"
    );

    let default = tool.run(SqlDataRetrieverArgs { customer_ids: vec![7], fields: None }).await.unwrap();
    assert_eq!(default.records[0]["first_name"], "Greta");
    assert!(default.records[0].get("profile_text").is_none());

    let unknown = tool.run(SqlDataRetrieverArgs { customer_ids: vec![1], fields: Some(vec!["password".into()]) }).await;
    assert!(matches!(unknown, Err(ToolFailure::Correctable(m)) if m.contains("unknown field `password`")));
    let too_many = tool.run(SqlDataRetrieverArgs { customer_ids: (1..=201).collect(), fields: None }).await;
    assert!(matches!(too_many, Err(ToolFailure::Correctable(m)) if m.contains("at most 200")));
    test.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sql_analytics_writes_sql_with_one_grounded_model_call() {
    let test = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let limits = ReadLimits { row_cap: 3, ..ReadLimits::default() };
    let stores = test.stores(dir.path(), false, limits).await;

    let usage = Usage::new().input_tokens(420).output_tokens(25).total_tokens(445);
    let model = MockCompletionModel::from_turns([MockTurn::text(
        "```sql\nSELECT country, count(*) AS n FROM customers GROUP BY country ORDER BY n DESC, country;\n```",
    )
    .with_usage(usage)]);
    let tool = SqlAnalytics::new(stores.clone(), model.clone());
    let mut context = ToolContext::new();
    let args = SqlAnalyticsArgs { question: Some("How many customers per country?".into()), sql: None };
    let out = tool.call_traced(&mut context, args).await.unwrap();
    assert_eq!(out.columns, ["country", "n"]);
    assert_eq!(serde_json::to_value(&out.rows).unwrap(), json!([["DE", 2], ["FR", 1], ["GB", 1]]));
    assert_eq!((out.row_count, out.truncated), (3, true), "7 countries, capped at 3 rows");
    assert_eq!(
        SqlAnalytics::<MockCompletionModel>::observe(&out),
        "country|n\nDE|2\nFR|1\nGB|1\n(only the first 3 rows; there are more)",
        "the model is sent the rows, not the SQL"
    );
    assert_eq!(model.request_count(), 1);

    // The inner call is grounded with the live schema and sample values.
    let request = &model.requests()[0];
    let system = request.system_instructions().unwrap_or_default();
    assert!(system.contains("ONE read-only PostgreSQL SELECT"), "{system}");
    let prompt = format!("{:?}", request.chat_history.last().unwrap());
    assert!(prompt.contains("customers(customer_id int, first_name, "), "{prompt}");
    assert!(prompt.contains("events.event_type: add_to_cart, purchase, view"), "{prompt}");
    assert!(!prompt.contains("profile_text") && !prompt.contains("text_hash"), "{prompt}");
    assert!(prompt.contains("profiles.interests: "), "{prompt}");
    assert!(prompt.contains("How many customers per country?"), "{prompt}");

    let trace = context.result::<ToolTrace>().unwrap().unwrap();
    assert_eq!(trace.sql.as_deref(), Some(out.sql.as_str()));
    let inner = trace.inner_llm.expect("inner call recorded");
    assert_eq!(inner.usage, usage);
    assert!(trace.timings_ms.contains_key("llm") && trace.timings_ms.contains_key("sql"));

    // Repeated calls reuse the cached grounding; duplicate column names and types survive.
    let direct = SqlAnalytics::new(stores.clone(), MockCompletionModel::from_turns([]));
    let out = direct
        .run(SqlAnalyticsArgs {
            question: None,
            sql: Some("SELECT count(*), count(*), max(signup_date), avg(price) > 1 AS b FROM customers JOIN events USING (customer_id)".into()),
        })
        .await
        .unwrap();
    assert_eq!(out.columns, ["count", "count", "max", "b"]);
    assert_eq!(out.rows, [vec![json!(11), json!(11), json!("2024-01-08"), json!(true)]]);
    assert!(!out.truncated);

    // Refused SQL and PostgreSQL errors go back to the model; no extra model call happens.
    let model = MockCompletionModel::from_turns([
        MockTurn::text("DELETE FROM customers"),
        MockTurn::text("SELECT no_such_column FROM profiles"),
        MockTurn::text("SELECT total_spent / 0 FROM profiles"),
    ]);
    let tool = SqlAnalytics::new(stores.clone(), model.clone());
    let question = || SqlAnalyticsArgs { question: Some("delete everyone".into()), sql: None };
    let refused = tool.run(question()).await;
    assert!(
        matches!(&refused, Err(ToolFailure::Correctable(m)) if m.contains("refused") && m.contains("DELETE FROM customers"))
    );
    let unknown = tool.run(question()).await;
    assert!(matches!(&unknown, Err(ToolFailure::Correctable(m)) if m.contains("no_such_column")), "{unknown:?}");
    let division = tool.run(question()).await;
    assert!(matches!(&division, Err(ToolFailure::Correctable(m)) if m.contains("division by zero")), "{division:?}");
    assert_eq!(model.request_count(), 3);

    // A provider failure is fatal, and marked so for the agent's hook.
    let failing =
        SqlAnalytics::new(stores.clone(), MockCompletionModel::from_turns([MockTurn::error("upstream down")]));
    let mut context = ToolContext::new();
    let failure = Tool::call(&failing, &mut context, question()).await.unwrap_err();
    assert!(failure.is_fatal());
    assert!(is_fatal(&failing.map_error(failure)));
    assert!(context.result::<ToolTrace>().unwrap().unwrap().fatal.unwrap().contains("upstream down"));

    // Without a model only direct SQL runs.
    let sql_only = SqlAnalytics::<MockCompletionModel>::sql_only(stores);
    assert!(matches!(sql_only.run(question()).await, Err(ToolFailure::Correctable(m)) if m.contains("`sql`")));
    test.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_database_is_fatal() {
    let test = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let stores = test.stores(dir.path(), false, ReadLimits::default()).await;
    let schema = test.schema.clone();
    test.drop().await; // drops the schema and closes the pool the stores share

    let tool = SqlDataRetriever::new(stores.clone());
    let mut context = ToolContext::new();
    let failure = Tool::call(&tool, &mut context, SqlDataRetrieverArgs { customer_ids: vec![1], fields: None })
        .await
        .unwrap_err();
    assert!(failure.is_fatal(), "{failure:?}");
    let error = tool.map_error(failure);
    assert!(is_fatal(&error));
    let trace = context.result::<ToolTrace>().unwrap().unwrap();
    assert!(trace.fatal.is_some() && trace.error.is_some(), "schema {schema}: {trace:?}");
}

/// Stops the run when a tool reports a fatal failure, the way the agent's hook is meant to.
struct StopOnFatal {
    traces: std::sync::Arc<std::sync::Mutex<Vec<ToolTrace>>>,
}

impl AgentHook for StopOnFatal {
    async fn on_outcome(&self, _ctx: &HookContext, event: OutcomeEvent<'_>) -> OutcomeAction {
        if let Some(trace) = event.tool_context().and_then(|c| c.result::<ToolTrace>().ok().flatten()) {
            self.traces.lock().unwrap().push(trace);
        }
        match event.tool_result().and_then(|r| r.error()) {
            Some(error) if is_fatal(error) => OutcomeAction::stop(error.message().to_owned()),
            _ => OutcomeAction::proceed(),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fatal_failure_reaches_the_agent_hook_and_stops_the_run() {
    let test = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let stores = test.stores(dir.path(), false, ReadLimits::default()).await;
    test.drop().await;

    let model = MockCompletionModel::from_turns([
        MockTurn::tool_call("c1", "sql_data_retriever", json!({"customer_ids": [1]})),
        MockTurn::text("this turn must not be reached"),
    ]);
    let traces = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let agent = AgentBuilder::new(model.clone())
        .tool(SqlDataRetriever::new(stores))
        .default_max_turns(4)
        .add_hook(StopOnFatal { traces: traces.clone() })
        .build();
    let result = agent.prompt("details of customer 1").await;
    assert!(result.is_err(), "the run must stop: {result:?}");
    assert_eq!(model.request_count(), 1, "no model call after the fatal tool failure");
    let traces = traces.lock().unwrap();
    assert_eq!(traces.len(), 1);
    assert_eq!(traces[0].tool, "sql_data_retriever");
    assert!(traces[0].fatal.is_some(), "{:?}", traces[0]);
}
