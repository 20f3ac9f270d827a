//! `audience bench query`: latency of the tools as the agent calls them, on an ingested dataset.
//!
//! `find_audience` runs for audiences of about 100, 1k, 10k and 100k customers ranked by an intent (each query has
//! its own id window, so the SQL is cheap and the ranking's cost shows), then for definitions as a marketer says
//! them, whose membership reads events or profiles, with size, funnel and breakdown included. The split comes from
//! the tool's own trace (size, funnel and breakdown SQL; embedding of the intent; vector ranking; member details).
//! Then every measure of the metrics catalogue, and the shapes of a `metrics` call (a breakdown, a series, a
//! comparison, a filter), each one compiled query.

use anyhow::{Result, bail};
use audience::campaign::{self, ExportOptions, Format, Holdout};
use audience::lift::{Economics, Metric, Observation, compare};
use audience::outln;
use audience_tools::audience::actions::ActionTable;
use audience_tools::audience::export::{Members, export_fields};
use audience_tools::audience::lookalike::{LookalikeArgs, find_lookalikes};
use audience_tools::audience::outcomes::outcomes;
use audience_tools::audience::{AudienceDefinition, AudienceSession, Edit, FindAudience};
use audience_tools::db::ReadLimits;
use audience_tools::embed::LazyEmbedder;
use audience_tools::metrics::{Measure, Metrics, MetricsArgs};
use audience_tools::sql_data_retriever::{SqlDataRetriever, SqlDataRetrieverArgs};
use audience_tools::stores::Stores;
use audience_tools::trace::{ToolTrace, TracedTool};
use audience_tools::vocabulary::Offered;
use audience_tools::{paths, vector};
use clap::Args;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

use super::stats::{Samples, Table, thousands};
use super::{Bench, Dataset};

/// What the benchmark queries ask for, in turn.
const INTENTS: [&str; 10] = [
    "luxury watches and jewelry",
    "likes running and yoga",
    "bargain hunter buying cheap socks",
    "elegant dresses and scarves",
    "outdoor jackets for winter",
    "designer bags and perfume",
    "sporty shoes in bright colors",
    "black and gold accessories",
    "casual jeans and t-shirts",
    "sunglasses and hats for summer",
];

#[derive(Args, Debug)]
pub struct QueryBenchArgs {
    /// Dataset size (customers); ingested first if needed.
    #[arg(long, default_value_t = 100_000)]
    customers: u64,
    /// Mean events per customer of the dataset.
    #[arg(long, default_value_t = 50)]
    events_per_customer: u32,
    /// Queries per figure (p50/p95 are over these).
    #[arg(long, default_value_t = 100)]
    queries: usize,
    /// Audience sizes for the ranking sweep, comma-separated (capped at the dataset size).
    #[arg(long, value_delimiter = ',', default_values_t = [100usize, 1_000, 10_000, 100_000])]
    gates: Vec<usize>,
}

impl QueryBenchArgs {
    pub fn smoke(customers: u64) -> Self {
        Self { customers, events_per_customer: 20, queries: 3, gates: vec![10, 100, 300] }
    }
}

/// Latencies of one figure, per phase, in milliseconds.
#[derive(Default)]
struct Phases {
    sql: Samples,
    embed: Samples,
    vector: Samples,
    members: Samples,
    total: Samples,
    size: Samples,
}

impl Phases {
    fn record(&mut self, trace: &ToolTrace) {
        let phase = |name: &str| trace.timings_ms.get(name).copied().unwrap_or(0.0);
        self.sql.push(phase("sql"));
        self.embed.push(phase("embed"));
        self.vector.push(phase("vector"));
        self.members.push(phase("members"));
        self.total.push(phase("total"));
        self.size.push(trace.audience_size.unwrap_or(0) as f64);
    }
}

fn p50_p95(samples: &Samples) -> String {
    format!("{:.2} / {:.2}", samples.percentile(50.0), samples.percentile(95.0))
}

pub async fn run(bench: &Bench, args: &QueryBenchArgs) -> Result<()> {
    if args.queries == 0 {
        bail!("--queries must be at least 1");
    }
    let dataset = bench.dataset(args.customers, args.events_per_customer)?;
    bench.ensure_ingested(&dataset).await?;
    let stores = open(bench, &dataset).await?;
    // Model load is start-up cost (see `bench startup`), not query latency.
    stores.embedder.get().await?;
    outln!(
        "\n## Tool latency at {} customers ({} queries per figure, milliseconds)",
        thousands(dataset.customers as f64),
        args.queries
    )?;
    ranking(&stores, &dataset, args).await?;
    membership(&stores, args).await?;
    retriever(&stores, &dataset, args).await?;
    metrics(&stores, args).await?;
    campaign(&stores, &dataset, args).await
}

async fn open(bench: &Bench, dataset: &Dataset) -> Result<Stores> {
    let db = bench.db(dataset).await?;
    let vectors = vector::VectorStore::from_env(&dataset.data_dir(), &dataset.schema).reader();
    Ok(Stores::new(db, vectors, LazyEmbedder::new(paths::models_dir()), ReadLimits::default()))
}

/// Runs one `find_audience` call from scratch, as a first question does.
async fn find(stores: &Stores, edit: Value) -> Result<ToolTrace> {
    let edit: Edit = serde_json::from_value(edit)?;
    let tool = FindAudience::new(stores.clone(), AudienceSession::default());
    let mut trace = ToolTrace::new("find_audience");
    tool.run_traced(edit, &mut trace).await.map_err(|e| anyhow::anyhow!("find_audience: {e}"))?;
    Ok(trace)
}

async fn ranking(stores: &Stores, dataset: &Dataset, args: &QueryBenchArgs) -> Result<()> {
    let customers = dataset.customers as usize;
    let mut sizes: Vec<usize> = args.gates.iter().map(|&gate| gate.min(customers)).collect();
    sizes.dedup();
    let mut table = Table::new([
        "audience",
        "size, funnel, breakdown p50 / p95",
        "embed p50 / p95",
        "vector p50 / p95",
        "members p50 / p95",
        "total p50 / p95",
    ]);
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for &size in &sizes {
        let mut phases = Phases::default();
        for query in 0..args.queries {
            // Customer ids are 1..=N: a window of `size` ids is an audience of that many customers.
            let low = rng.random_range(1..=(customers - size + 1)) as u64;
            let condition = format!("customer_id BETWEEN {low} AND {}", low + size as u64 - 1);
            let edit = json!({"include": [{"type": "sql", "condition": condition}],
                              "intent": INTENTS[query % INTENTS.len()], "limit": 10});
            phases.record(&find(stores, edit).await?);
        }
        table.row([
            thousands(phases.size.median()),
            p50_p95(&phases.sql),
            p50_p95(&phases.embed),
            p50_p95(&phases.vector),
            p50_p95(&phases.members),
            p50_p95(&phases.total),
        ]);
    }
    let mut phases = Phases::default();
    for query in 0..args.queries {
        phases.record(&find(stores, json!({"intent": INTENTS[query % INTENTS.len()], "limit": 10})).await?);
    }
    table.row([
        format!("everyone ({})", thousands(phases.size.median())),
        p50_p95(&phases.sql),
        p50_p95(&phases.embed),
        p50_p95(&phases.vector),
        p50_p95(&phases.members),
        p50_p95(&phases.total),
    ]);
    table.print("### find_audience ranked by an intent, by audience size")?;
    Ok(())
}

/// Definitions as a marketer says them: clauses over events, profiles, or both.
fn marketer_definitions() -> [(&'static str, Value); 7] {
    let profile =
        |field: &str, op: &str, value: Value| json!({"type": "profile", "field": field, "op": op, "value": value});
    [
        (
            "bought socks in the last 60 days",
            json!({"include": [{"type": "event", "event_type": "purchase", "products": ["socks"], "within_days": 60}]}),
        ),
        (
            "bought anything priced 500 or more",
            json!({"include": [{"type": "event", "event_type": "purchase", "min_price": 500}]}),
        ),
        (
            "viewed watches, from PL",
            json!({"include": [{"type": "event", "event_type": "view", "products": ["watches"]}, profile("country", "=", json!("PL"))]}),
        ),
        ("churned", json!({"include": [profile("churned", "=", json!(true))]})),
        ("spent over 500", json!({"include": [profile("total_spent", ">", json!(500))]})),
        ("last purchase 90+ days ago", json!({"include": [profile("recency_days", ">=", json!(90))]})),
        (
            "big spenders who stopped buying, not from DE",
            json!({"include": [profile("total_spent", ">", json!(1000)), profile("churned", "=", json!(true))],
                   "exclude": [profile("country", "=", json!("DE"))]}),
        ),
    ]
}

async fn membership(stores: &Stores, args: &QueryBenchArgs) -> Result<()> {
    let mut table =
        Table::new(["definition", "size", "size, funnel, breakdown p50 / p95", "members p50 / p95", "total p50 / p95"]);
    for (name, edit) in marketer_definitions() {
        let mut phases = Phases::default();
        for _ in 0..args.queries {
            phases.record(&find(stores, edit.clone()).await?);
        }
        table.row([
            name.to_owned(),
            thousands(phases.size.median()),
            p50_p95(&phases.sql),
            p50_p95(&phases.members),
            p50_p95(&phases.total),
        ]);
    }
    table.print("### find_audience membership queries (no intent: listed by total spent)")?;
    Ok(())
}

async fn retriever(stores: &Stores, dataset: &Dataset, args: &QueryBenchArgs) -> Result<()> {
    let tool = SqlDataRetriever::new(stores.clone());
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut table = Table::new(["ids per call", "SQL p50 / p95", "total p50 / p95"]);
    for ids in [10usize, 50, 200] {
        let mut phases = Phases::default();
        for _ in 0..args.queries {
            let customer_ids = (0..ids).map(|_| (rng.random_range(1..=dataset.customers) as i64).into()).collect();
            let mut trace = ToolTrace::new("sql_data_retriever");
            let output = tool
                .run_traced(SqlDataRetrieverArgs { customer_ids, fields: None }, &mut trace)
                .await
                .map_err(|e| anyhow::anyhow!("sql_data_retriever: {e}"))?;
            if output.records.is_empty() {
                bail!("sql_data_retriever found none of {ids} existing ids");
            }
            phases.record(&trace);
        }
        table.row([ids.to_string(), p50_p95(&phases.sql), p50_p95(&phases.total)]);
    }
    table.print("### sql_data_retriever (campaign fields of random customers)")?;
    Ok(())
}

/// The `metrics` calls timed: each measure over every event, then one call of each shape.
fn metrics_calls() -> Vec<(String, Value)> {
    let mut calls: Vec<(String, Value)> =
        Measure::ALL.iter().map(|measure| (measure.name().to_owned(), json!({"measures": [measure.name()]}))).collect();
    let from_pl = json!([{"type": "profile", "field": "country", "op": "=", "value": "PL"}]);
    calls.extend([
        (
            "net_revenue by country, top 10".to_owned(),
            json!({"measures": ["net_revenue"], "dimensions": ["country"], "limit": 10}),
        ),
        ("orders by month".to_owned(), json!({"measures": ["orders"], "dimensions": ["month"]})),
        (
            "buyers, last 30 days vs the 30 before".to_owned(),
            json!({"measures": ["buyers"], "within_days": 30, "compare": true}),
        ),
        ("churn_rate by segment".to_owned(), json!({"measures": ["churn_rate"], "dimensions": ["segment"]})),
        (
            "average_order_value of customers from PL".to_owned(),
            json!({"measures": ["average_order_value"], "filters": from_pl}),
        ),
        (
            "view_to_cart by product and quarter".to_owned(),
            json!({"measures": ["view_to_cart"], "dimensions": ["product", "quarter"]}),
        ),
    ]);
    calls
}

async fn metrics(stores: &Stores, args: &QueryBenchArgs) -> Result<()> {
    let tool = Metrics::new(stores.clone(), &Offered::default());
    let mut table = Table::new(["call", "rows", "read from", "SQL p50 / p95"]);
    for (name, call) in metrics_calls() {
        let call: MetricsArgs = serde_json::from_value(call)?;
        let mut sql = Samples::default();
        let (mut rows, mut read_from) = (0, String::new());
        for _ in 0..args.queries {
            let mut trace = ToolTrace::new("metrics");
            let report =
                tool.run_traced(call.clone(), &mut trace).await.map_err(|e| anyhow::anyhow!("metrics {name}: {e}"))?;
            (rows, read_from) = (report.rows.len(), report.read_from);
            sql.push(trace.timings_ms.get("sql").copied().unwrap_or(0.0));
        }
        table.row([name, rows.to_string(), read_from, p50_p95(&sql)]);
    }
    table.print("### metrics: every measure of the catalogue, and each shape of a call")?;
    Ok(())
}

/// Acting on audiences: a whole-membership export with a holdout (every customer), a campaign's measured lift, and
/// lookalikes of random seeds.
async fn campaign(stores: &Stores, dataset: &Dataset, args: &QueryBenchArgs) -> Result<()> {
    let everyone = AudienceDefinition::default();
    let out = dataset.dir.join("bench-export.csv");
    let options = ExportOptions {
        path: out.clone(),
        format: Format::Csv,
        fields: export_fields(),
        holdout: Some(Holdout::new(10.0, 1)?),
        mask_pii: true,
        actions: ActionTable::defaults()?,
    };
    let mut export = Samples::default();
    let mut rows = 0;
    // An export writes the whole customer base: a few runs give a stable figure.
    for _ in 0..args.queries.min(5) {
        let start = std::time::Instant::now();
        rows = campaign::export(stores, Members::Definition(&everyone), &options).await?.members;
        export.push(start.elapsed().as_secs_f64() * 1e3);
    }
    std::fs::remove_file(&out).ok();
    let mut table = Table::new(["what", "rows", "p50 / p95 (ms)"]);
    table.row([
        "export, CSV, every field, actions, 10% holdout, masked".to_owned(),
        thousands(rows as f64),
        p50_p95(&export),
    ]);
    // `measure`: every customer's purchases in the data's last 30 days, split by a 10% holdout and compared; the
    // revenue metric with an ROI adds the bootstrap.
    let as_of = audience_tools::dataset::Dataset::as_of(&stores.db).await?.unwrap_or(chrono::NaiveDate::MIN);
    let since = as_of - chrono::Days::new(29);
    let split = Holdout::new(10.0, 1)?;
    for (metric, economics, what) in [
        (Metric::Conversion, None, "measure, conversion, last 30 days, 10% holdout"),
        (Metric::Revenue, Some(Economics::new(0.05, 0.3)?), "measure, revenue (bootstrap) and ROI, last 30 days"),
    ] {
        let mut samples = Samples::default();
        let mut members = 0;
        for _ in 0..args.queries.min(5) {
            let start = std::time::Instant::now();
            let found = outcomes(stores, Members::Definition(&everyone), since, None)
                .await
                .map_err(|e| anyhow::anyhow!("measure: {e}"))?;
            let observations = Observation::of_members(&found.members, &split);
            compare(&observations, metric, 1, economics)?;
            samples.push(start.elapsed().as_secs_f64() * 1e3);
            members = observations.len();
        }
        table.row([what.to_owned(), thousands(members as f64), p50_p95(&samples)]);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    for seed_size in [100usize, 1_000] {
        let mut phases = Phases::default();
        for _ in 0..args.queries {
            let ids: Vec<String> =
                (0..seed_size).map(|_| rng.random_range(1..=dataset.customers).to_string()).collect();
            let request = LookalikeArgs { ids, k: Some(50), ..LookalikeArgs::default() };
            let mut trace = ToolTrace::new("lookalike");
            let start = std::time::Instant::now();
            find_lookalikes(stores, &AudienceSession::default(), &request, &mut trace)
                .await
                .map_err(|e| anyhow::anyhow!("lookalike: {e}"))?;
            trace.time("total", start);
            phases.record(&trace);
        }
        table.row([format!("lookalike, seed of {seed_size}, top 50"), "50".to_owned(), p50_p95(&phases.total)]);
    }
    table.print("### Campaign: export, measure and lookalikes")?;
    Ok(())
}
