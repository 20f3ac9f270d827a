//! `audience tool NAME --args JSON`: runs one agent tool directly (no LLM loop) and prints its JSON output;
//! `audience tool --list` lists the tools with their descriptions.

use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use audience_tools::failure::ToolFailure;
use audience_tools::hybrid_discovery::HybridDiscovery;
use audience_tools::semantic_search::SemanticSearch;
use audience_tools::sql_analytics::{SqlAnalytics, SqlAnalyticsArgs};
use audience_tools::sql_data_retriever::SqlDataRetriever;
use audience_tools::stores::Stores;
use audience_tools::trace::{ToolTrace, TracedTool};
use clap::Args;
use rig_core::tool::ToolContext;
use serde_json::Value;

use crate::Global;
use crate::agent::open_stores;
use crate::exit::{FailureExt, FailureKind};
use crate::ledger::{Ledger, UsageRecord};
use crate::trace::inner_call_usage;
use crate::provider::{ChatModel, ProviderConfig};

/// The tools and their model-facing descriptions (the same files the tools send to the model).
const TOOLS: [(&str, &str); 4] = [
    ("hybrid_discovery", include_str!("../prompts/tools/hybrid_discovery.md")),
    ("semantic_search", include_str!("../prompts/tools/semantic_search.md")),
    ("sql_analytics", include_str!("../prompts/tools/sql_analytics.md")),
    ("sql_data_retriever", include_str!("../prompts/tools/sql_data_retriever.md")),
];

const EXAMPLES: &str = "\
Examples:
  audience tool --list
  audience tool sql_analytics --args '{\"sql\": \"SELECT country, count(*) FROM customers GROUP BY 1\"}'
  audience tool sql_analytics --args '{\"question\": \"revenue by month\"}'   (needs a provider)
  audience tool hybrid_discovery --args '{\"condition\": \"event_type = '\\''purchase'\\''\", \"intent\": \"hiking\"}'
  audience tool semantic_search --args '{\"intent\": \"luxury watches\", \"limit\": 5}'
  audience tool sql_data_retriever --args '{\"customer_ids\": [1, 2], \"fields\": [\"email\", \"segment\"]}'

Exit codes: 0 ok, 1 failure, 2 usage or configuration, 3 provider, 4 tool or store error.";

#[derive(Args, Debug)]
#[command(after_help = EXAMPLES)]
pub struct ToolArgs {
    /// The tool to run.
    #[arg(required_unless_present = "list")]
    name: Option<String>,
    /// The tool's arguments as a JSON object.
    #[arg(long, default_value = "{}")]
    args: String,
    /// List the tools and their descriptions.
    #[arg(long, conflicts_with = "name")]
    list: bool,
}

pub async fn run(args: ToolArgs, global: &Global) -> Result<()> {
    if args.list {
        for (name, description) in TOOLS {
            println!("{name}\n  {}\n", description.trim().replace('\n', "\n  "));
        }
        return Ok(());
    }
    let name = args.name.ok_or_else(|| anyhow!("name a tool, or pass --list")).kind(FailureKind::Usage)?;
    if !TOOLS.iter().any(|(tool, _)| *tool == name) {
        let names: Vec<&str> = TOOLS.iter().map(|(tool, _)| *tool).collect();
        return Err(anyhow!("unknown tool {name:?}; the tools are {}", names.join(", "))).kind(FailureKind::Usage);
    }
    let json: Value = serde_json::from_str(&args.args).context("--args is not valid JSON").kind(FailureKind::Usage)?;
    // Arguments are checked before any store opens: a typo is a usage error whatever the state of the database.
    match name.as_str() {
        "hybrid_discovery" => parse_args::<HybridDiscovery>(&json).map(drop)?,
        "semantic_search" => parse_args::<SemanticSearch>(&json).map(drop)?,
        "sql_data_retriever" => parse_args::<SqlDataRetriever>(&json).map(drop)?,
        _ => parse_args::<SqlAnalytics<ChatModel>>(&json).map(drop)?,
    }
    let stores = open_stores(&global.data_dir).await?;
    let start = Instant::now();
    let (output, trace) = match name.as_str() {
        "hybrid_discovery" => call(HybridDiscovery::new(stores), json).await?,
        "semantic_search" => call(SemanticSearch::new(stores), json).await?,
        "sql_data_retriever" => call(SqlDataRetriever::new(stores), json).await?,
        _ => return run_sql_analytics(stores, json, global, start).await,
    };
    print(&output, trace.as_ref(), global.verbose)
}

/// `sql_analytics` runs `{"sql"}` without a provider; `{"question"}` needs one for the text-to-SQL call,
/// whose usage is recorded in the ledger like an agent question.
async fn run_sql_analytics(stores: Stores, json: Value, global: &Global, start: Instant) -> Result<()> {
    let parsed: SqlAnalyticsArgs = parse_args::<SqlAnalytics<ChatModel>>(&json)?;
    let needs_model = parsed.sql.as_deref().is_none_or(|sql| sql.trim().is_empty());
    if !needs_model {
        let (output, trace) = call(SqlAnalytics::<ChatModel>::sql_only(stores), json).await?;
        return print(&output, trace.as_ref(), global.verbose);
    }
    let provider = ProviderConfig::load(&global.data_dir)?;
    let tool = SqlAnalytics::new(stores, provider.chat_model()?);
    let mut ledger = Ledger::open(&global.data_dir)?;
    let result = call(tool, json).await;
    if let Some((_, Some(trace))) = result.as_ref().ok()
        && let Some(inner) = &trace.inner_llm
    {
        let usage = inner_call_usage(inner, trace.sql.as_deref());
        let elapsed = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let record =
            UsageRecord::new(provider.kind.name(), &provider.model, vec![usage], 0, ledger.prices(), elapsed, true);
        ledger.record(&record);
        eprintln!("{}", record.summary_line());
    }
    let (output, trace) = result?;
    print(&output, trace.as_ref(), global.verbose)
}

/// Runs a tool the way rig's `Tool::call` does in the agent loop (so it publishes the same trace), keeping the
/// full output rather than the compact observation the model is sent.
async fn call<T: TracedTool>(tool: T, json: Value) -> Result<(Value, Option<ToolTrace>)> {
    let args = parse_args::<T>(&json)?;
    let mut context = ToolContext::new();
    let result = tool.call_traced(&mut context, args).await;
    let trace = context.result::<ToolTrace>().ok().flatten();
    match result {
        Ok(output) => Ok((serde_json::to_value(output)?, trace)),
        Err(ToolFailure::Correctable(message)) => Err(anyhow!("{}: {message}", T::NAME)).kind(FailureKind::Store),
        Err(ToolFailure::Fatal(error)) => Err(error.context(format!("{} failed", T::NAME))).kind(FailureKind::Store),
    }
}

/// The tool's arguments from `--args`; a mismatch is a usage error.
fn parse_args<T: rig_core::tool::Tool>(json: &Value) -> Result<T::Args> {
    serde_json::from_value(json.clone()).with_context(|| format!("invalid --args for {}", T::NAME)).kind(FailureKind::Usage)
}

/// The output on stdout; with --verbose the trace (exact SQL, filter, strategy, timings) on stderr.
fn print(output: &Value, trace: Option<&ToolTrace>, verbose: bool) -> Result<()> {
    println!("{}", crate::terminal::safe_json(output)?);
    if verbose && let Some(trace) = trace {
        eprintln!("trace: {}", serde_json::to_string(trace)?);
    }
    Ok(())
}
