//! The agent tools against a small real dataset: PostgreSQL in a private schema, real embeddings
//! of the profiles in an embedded index, and rig's scripted model for the inner text-to-SQL call.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly; that is its job

mod tool_support;

use std::collections::BTreeSet;

use audience_tools::audience::{AudienceReport, AudienceSession, Edit, FindAudience};
use audience_tools::db::ReadLimits;
use audience_tools::failure::{ToolFailure, is_fatal};
use audience_tools::sql_analytics::{SqlAnalytics, SqlAnalyticsArgs};
use audience_tools::sql_data_retriever::{SqlDataRetriever, SqlDataRetrieverArgs};
use audience_tools::trace::{FullOutput, ToolTrace, TracedTool};
use rig_agent::agent::{AgentBuilder, AgentHook, HookContext, OutcomeAction, OutcomeEvent};
use rig_agent::test_utils::{MockCompletionModel, MockTurn};
use rig_core::completion::Usage;
use rig_core::tool::{Tool, ToolContext};
use serde_json::json;
use tool_support::TestDb;

fn edit(value: serde_json::Value) -> Edit {
    serde_json::from_value(value).unwrap()
}

fn member_ids(report: &AudienceReport) -> BTreeSet<i64> {
    report.members.iter().map(|m| m.customer_id).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn find_audience_defines_refines_and_ranks_within_the_membership() {
    let test = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let stores = test.stores(dir.path(), true, ReadLimits::default()).await;
    let session = AudienceSession::default();
    let tool = FindAudience::new(stores, session.clone());

    // As in the agent loop, so the trace lands in the context.
    let mut context = ToolContext::new();
    let first = edit(json!({
        "include": [{"type": "event", "event_type": "purchase", "products": ["watch"]}],
        "intent": "collector of expensive luxury watches"
    }));
    let report = tool.call_traced(&mut context, first).await.unwrap();
    let trace: ToolTrace = context.result::<ToolTrace>().unwrap().expect("trace published");
    assert_eq!((report.size, report.total_customers), (3, 8));
    assert_eq!(member_ids(&report), BTreeSet::from([1, 5, 8]));
    assert_eq!(report.ranked_by, "intent");
    assert!(report.members.windows(2).all(|w| w[0].score >= w[1].score), "best first");
    assert!(
        report.members.iter().all(|m| m.why.iter().any(|why| why.starts_with("bought watch "))),
        "{:?}",
        report.members
    );
    assert_eq!(report.funnel.iter().map(|s| s.size).collect::<Vec<_>>(), [3]);
    let countries: u64 = report.breakdown.country.iter().map(|s| s.count).sum();
    assert_eq!(countries, 3, "the breakdown adds up to the size");
    assert_eq!(trace.audience_size, Some(3));
    assert!(trace.sql.as_deref().unwrap().starts_with("SELECT p.customer_id FROM profiles p WHERE EXISTS"));
    assert!(trace.embedding_tokens > 0);

    // A follow-up sends only the change; the session holds the rest.
    let report = tool
        .run(edit(json!({"include": [{"type": "profile", "field": "likes_luxury", "op": "=", "value": true}]})))
        .await
        .unwrap();
    assert_eq!(member_ids(&report), BTreeSet::from([1, 8]));
    assert_eq!(report.funnel.iter().map(|s| s.size).collect::<Vec<_>>(), [3, 2]);
    let report = tool
        .run(edit(json!({"exclude": [{"type": "profile", "field": "country", "op": "=", "value": "de"}]})))
        .await
        .unwrap();
    assert_eq!(member_ids(&report), BTreeSet::from([8]));
    assert_eq!(
        report.explanation,
        "Customers who bought watch, who like luxury, excluding customers from DE; ranked by: collector of expensive luxury watches"
    );
    let report = tool.run(edit(json!({"remove": ["c2"], "intent": ""}))).await.unwrap();
    assert_eq!((report.size, report.ranked_by.as_str()), (2, "total_spent"));
    assert_eq!(report.members.iter().map(|m| m.customer_id).collect::<Vec<_>>(), [8, 5], "by total spent");
    assert_eq!(session.current().unwrap().include.len(), 1);

    // Through rig's interface the model is sent the definition with clause ids and sizes, the breakdown and the
    // members (no SQL); the full report stays with the host.
    let mut context = ToolContext::new();
    let observed = Tool::call(&tool, &mut context, edit(json!({"limit": 5}))).await.unwrap();
    let text = observed.as_text().unwrap();
    assert!(text.starts_with("audience: 2 of 8 customers. Customers who bought watch"), "{text}");
    assert!(text.contains("c1 include who bought watch -> 3; c3 exclude customers from DE -> 2"), "{text}");
    assert!(text.contains("|bought watch 8 days ago\n"), "why, one line per member: {text}");
    // Extra fields are listed when asked for, and unknown ones are refused.
    let report = tool.run(edit(json!({"fields": ["email", "age"]}))).await.unwrap();
    assert_eq!(report.members[0].fields.get("email"), Some(&json!("hugo@example.com")), "{:?}", report.members[0]);
    assert!(matches!(tool.run(edit(json!({"fields": ["profile_text"]}))).await, Err(ToolFailure::Correctable(_))));
    assert!(text.contains("customer_id|name|country|why"), "{text}");
    assert!(!text.contains("SELECT"), "{text}");
    let full = context.result::<FullOutput>().unwrap().expect("the full output is kept");
    assert_eq!(full.0["size"], json!(2));

    // Mistakes the model can correct leave the audience as it was.
    let before = session.current();
    // A number written as a string is refused when the arguments are read, with the reason.
    let lots = json!({"include": [{"type": "profile", "field": "total_spent", "op": ">", "value": "lots"}]});
    let refused = serde_json::from_value::<Edit>(lots).unwrap_err().to_string();
    assert!(refused.contains("total_spent takes a number, not the string \"lots\""), "{refused}");
    for bad in [
        json!({"include": [{"type": "sql", "condition": "price > 10"}]}),
        json!({"include": [{"type": "sql", "condition": "total_spent > 'abc'"}]}),
        json!({"remove": ["c9"]}),
    ] {
        let result = tool.run(edit(bad.clone())).await;
        assert!(matches!(&result, Err(ToolFailure::Correctable(_))), "{bad}: {result:?}");
    }
    assert_eq!(session.current(), before);
    // Unknown keys are argument errors, before the tool runs.
    assert!(serde_json::from_value::<Edit>(json!({"include": [], "city": "Paris"})).is_err());

    // Regression: the gate query had no row cap. The ids handed to the vector index are capped, with a clear refusal.
    let other = tempfile::tempdir().unwrap();
    let capped = test.stores(other.path(), false, ReadLimits { member_cap: 2, ..ReadLimits::default() }).await;
    let tool = FindAudience::new(capped, AudienceSession::default());
    let watch_buyers = json!({"include": [{"type": "event", "event_type": "purchase", "products": ["watch"]}]});
    let mut ranked = watch_buyers.clone();
    ranked["intent"] = json!("watches");
    let refused = tool.run(edit(ranked)).await;
    assert!(matches!(&refused, Err(ToolFailure::Correctable(m)) if m.contains("more than 2 members")), "{refused:?}");
    // Counting and listing by spend need no ids, so they work at any size.
    assert_eq!(tool.run(edit(watch_buyers)).await.unwrap().size, 3);
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
    assert!(prompt.contains("customers(customer_id int, external_id, first_name, "), "{prompt}");
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

    // A writer that copies back SQL the agent wrote into the question (without ever seeing the schema) has written
    // nothing: the copy is not run, and the reason points at metrics.
    let asked = "SELECT count(*) FROM customers WHERE country = 'DE'";
    let model = MockCompletionModel::from_turns([MockTurn::text(format!("```sql\n{}; \n```", asked.to_lowercase()))]);
    let copying = SqlAnalytics::new(stores.clone(), model);
    let mut context = ToolContext::new();
    let copied = copying.call_traced(&mut context, SqlAnalyticsArgs { question: Some(asked.into()), sql: None }).await;
    assert!(
        matches!(&copied, Err(ToolFailure::Correctable(m)) if m.contains("unchanged") && m.contains("metrics")),
        "{copied:?}"
    );
    assert_eq!(context.result::<ToolTrace>().unwrap().unwrap().sql, None, "nothing ran");

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
    let failure = Tool::call(&tool, &mut context, SqlDataRetrieverArgs { customer_ids: vec![1.into()], fields: None })
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
