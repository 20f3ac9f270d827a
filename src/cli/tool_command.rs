//! `audience tool NAME --args JSON`: runs one agent tool directly (no LLM loop) and prints its JSON output;
//! `audience tool --list` lists the tools with their descriptions.

use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use audience_tools::audience::{AudienceDefinition, AudienceSession, FindAudience};
use audience_tools::metrics::Metrics;
use audience_tools::registry::{self, FIND_AUDIENCE, METRICS, SQL_ANALYTICS, SQL_DATA_RETRIEVER};
use audience_tools::sql_analytics::{SqlAnalytics, SqlAnalyticsArgs};
use audience_tools::sql_data_retriever::SqlDataRetriever;
use audience_tools::stores::Stores;
use audience_tools::trace::{ToolTrace, TracedTool};
use audience_tools::vocabulary::Offered;
use clap::Args;
use rig_core::tool::ToolContext;
use serde_json::Value;

use crate::Global;
use audience::agent_hook::inner_call_usage;
use audience::exit::{self, FailureExt, FailureKind};
use audience::ledger::{Ledger, UsageRecord};
use audience::open_stores::open_stores;
use audience::outln;
use audience::provider::{ChatModel, ProviderConfig};

const EXAMPLES: &str = "\
Examples:
  audience tool --list
  audience tool sql_analytics --args '{\"sql\": \"SELECT country, count(*) FROM customers GROUP BY 1\"}'
  audience tool sql_analytics --args '{\"question\": \"revenue by month\"}'   (needs a provider)
  audience tool find_audience --args '{\"include\": [{\"type\": \"event\", \"event_type\": \"purchase\",
    \"products\": [\"socks\"], \"within_days\": 60}], \"intent\": \"likes luxury\"}'
  audience tool find_audience --from vip.json --args '{\"exclude\": [{\"type\": \"profile\",
    \"field\": \"churned\", \"op\": \"=\", \"value\": true}]}'
  audience tool sql_data_retriever --args '{\"customer_ids\": [1, 2], \"fields\": [\"email\", \"segment\"]}'
  audience tool metrics --args '{\"measures\": [\"net_revenue\"], \"dimensions\": [\"country\"], \"limit\": 3}'

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
    /// For find_audience: an audience definition (JSON, as `ask --json` prints it) that the arguments refine.
    #[arg(long, value_name = "FILE")]
    from: Option<std::path::PathBuf>,
}

pub async fn run(args: ToolArgs, global: &Global) -> Result<()> {
    if args.list {
        for tool in registry::TOOLS {
            outln!("{}\n  {}\n", tool.name, tool.text().replace('\n', "\n  "))?;
        }
        return Ok(());
    }
    let name = args.name.ok_or_else(|| anyhow!("name a tool, or pass --list")).kind(FailureKind::Usage)?;
    let Some(tool) = registry::find(&name) else {
        let names: Vec<&str> = registry::TOOLS.iter().map(|tool| tool.name).collect();
        return Err(anyhow!("unknown tool {name:?}; the tools are {}", names.join(", "))).kind(FailureKind::Usage);
    };
    let json: Value = serde_json::from_str(&args.args).context("--args is not valid JSON").kind(FailureKind::Usage)?;
    // Arguments are checked before any store opens: a typo is a usage error whatever the state of the database.
    if args.from.is_some() && tool != FIND_AUDIENCE {
        return Err(anyhow!("--from applies to find_audience only")).kind(FailureKind::Usage);
    }
    let session = match &args.from {
        Some(path) => AudienceSession::starting_from(read_definition(path)?),
        None => AudienceSession::default(),
    };
    match tool.name {
        name if name == FIND_AUDIENCE.name => parse_args::<FindAudience>(&json).map(drop)?,
        name if name == SQL_DATA_RETRIEVER.name => parse_args::<SqlDataRetriever>(&json).map(drop)?,
        name if name == METRICS.name => parse_args::<Metrics>(&json).map(drop)?,
        _ => parse_args::<SqlAnalytics<ChatModel>>(&json).map(drop)?,
    }
    let stores = open_stores(&global.data_dir).await?;
    let start = Instant::now();
    let (output, trace) = match tool.name {
        name if name == FIND_AUDIENCE.name => call(FindAudience::new(stores, session), json).await?,
        name if name == SQL_DATA_RETRIEVER.name => call(SqlDataRetriever::new(stores), json).await?,
        // The schema only guides a model; the arguments are checked in Rust either way.
        name if name == METRICS.name => call(Metrics::new(stores, &Offered::default()), json).await?,
        name if name == SQL_ANALYTICS.name => return run_sql_analytics(stores, json, global, start).await,
        name => return Err(anyhow!("the tool command cannot run {name}")).kind(FailureKind::Usage),
    };
    print(&output, trace.as_ref(), global.verbose)
}

/// An audience definition from a file in its canonical JSON form (or an `ask --json` answer's `audience`).
pub fn read_definition(path: &std::path::Path) -> Result<AudienceDefinition> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the audience definition {}", path.display()))?;
    // A whole report (from `ask --json` or `tool find_audience`) carries the definition under `definition`.
    let value: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not JSON", path.display()))
        .kind(FailureKind::Usage)?;
    let definition = value.get("definition").or_else(|| value.get("audience")?.get("definition")).unwrap_or(&value);
    AudienceDefinition::from_json(&definition.to_string())
        .with_context(|| format!("invalid audience definition in {}", path.display()))
        .kind(FailureKind::Usage)
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
pub async fn call<T: TracedTool>(tool: T, json: Value) -> Result<(Value, Option<ToolTrace>)> {
    let args = parse_args::<T>(&json)?;
    let mut context = ToolContext::new();
    let result = tool.call_traced(&mut context, args).await;
    let trace = context.result::<ToolTrace>().ok().flatten();
    match result {
        Ok(output) => Ok((serde_json::to_value(output)?, trace)),
        Err(failure) => {
            let what = if failure.is_fatal() { format!("{} failed", T::NAME) } else { T::NAME.to_owned() };
            Err(exit::tool_failure(failure).context(what))
        }
    }
}

/// The tool's arguments from `--args`; a mismatch is a usage error.
fn parse_args<T: rig_core::tool::Tool>(json: &Value) -> Result<T::Args> {
    serde_json::from_value(json.clone())
        .with_context(|| format!("invalid --args for {}", T::NAME))
        .kind(FailureKind::Usage)
}

/// The output on stdout; with --verbose the trace (exact SQL, filter, strategy, timings) on stderr.
fn print(output: &Value, trace: Option<&ToolTrace>, verbose: bool) -> Result<()> {
    outln!("{}", audience::terminal::safe_json(output)?)?;
    if verbose && let Some(trace) = trace {
        eprintln!("trace: {}", serde_json::to_string(trace)?);
    }
    Ok(())
}
