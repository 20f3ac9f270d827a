//! `audience bench query`: latency of the tools as the agent calls them, on an ingested dataset.
//!
//! `hybrid_discovery` runs for gates of about 100, 1k, 10k and 100k customers with each ranking strategy forced,
//! side by side in one run, and then with the automatic pick; every query has its own gate window (a customer id
//! range, so the SQL is cheap and the strategies' cost shows) and intent. Then behavioural gates as a marketer
//! writes them, whose SQL reads the events table. The split comes from the tool's own trace (SQL gate, embedding
//! of the intent, vector ranking).


use anyhow::{Result, bail};
use audience_tools::db::ReadLimits;
use audience_tools::embed::LazyEmbedder;
use audience_tools::hybrid_discovery::{AUTO_STRATEGY, HybridDiscovery, HybridDiscoveryArgs};
use audience_tools::semantic_search::{ProfileFilters, SemanticSearch, SemanticSearchArgs};
use audience_tools::sql_data_retriever::{SqlDataRetriever, SqlDataRetrieverArgs};
use audience_tools::stores::Stores;
use audience_tools::trace::{Strategy, ToolTrace, TracedTool};
use audience_tools::{paths, vector};
use clap::Args;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

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
    /// Gate sizes for hybrid_discovery, comma-separated (capped at the dataset size).
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
    total: Samples,
    gate: Samples,
}

impl Phases {
    fn record(&mut self, trace: &ToolTrace) {
        let phase = |name: &str| trace.timings_ms.get(name).copied().unwrap_or(0.0);
        self.sql.push(phase("sql"));
        self.embed.push(phase("embed"));
        self.vector.push(phase("vector"));
        self.total.push(phase("total"));
        self.gate.push(trace.gate_size.unwrap_or(0) as f64);
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
    println!(
        "\n## Tool latency at {} customers ({} queries per figure, milliseconds)",
        thousands(dataset.customers as f64),
        args.queries
    );
    hybrid(&stores, &dataset, args).await?;
    behavioural(&stores, args).await?;
    semantic(&stores, args).await?;
    retriever(&stores, &dataset, args).await
}

async fn open(bench: &Bench, dataset: &Dataset) -> Result<Stores> {
    let db = bench.db(dataset).await?;
    let vectors = vector::VectorStore::from_env(&dataset.data_dir(), &dataset.schema).reader();
    Ok(Stores::new(db, vectors, LazyEmbedder::new(paths::models_dir()), ReadLimits::default()))
}

async fn hybrid(stores: &Stores, dataset: &Dataset, args: &QueryBenchArgs) -> Result<()> {
    let tool = HybridDiscovery::new(stores.clone());
    let customers = dataset.customers as usize;
    let mut gates: Vec<usize> = args.gates.iter().map(|&gate| gate.min(customers)).collect();
    gates.dedup();
    let mut table = Table::new([
        "gate (ids)",
        "strategy",
        "SQL gate p50 / p95",
        "embed p50 / p95",
        "vector p50 / p95",
        "total p50 / p95",
    ]);
    let mut fastest = Vec::new();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for &gate in &gates {
        let mut best: Option<(Strategy, f64)> = None;
        let choices = Strategy::ALL.map(Some).into_iter().chain([None]);
        for strategy in choices {
            let mut phases = Phases::default();
            for query in 0..args.queries {
                // Customer ids are 1..=N: a window of `gate` ids gates about that many customers.
                let low = rng.random_range(1..=(customers - gate + 1)) as u64;
                let args = HybridDiscoveryArgs {
                    condition: format!("customer_id BETWEEN {low} AND {}", low + gate as u64 - 1),
                    intent: INTENTS[query % INTENTS.len()].to_owned(),
                    filters: None,
                    limit: Some(10),
                    strategy,
                };
                let mut trace = ToolTrace::new("hybrid_discovery");
                tool.run_traced(args, &mut trace).await.map_err(|e| anyhow::anyhow!("hybrid_discovery: {e}"))?;
                phases.record(&trace);
            }
            let name = match strategy {
                Some(strategy) => strategy.as_str().to_owned(),
                None => format!("auto ({})", AUTO_STRATEGY.as_str()),
            };
            if let Some(strategy) = strategy {
                let p95 = phases.total.percentile(95.0);
                if best.is_none_or(|(_, fastest)| p95 < fastest) {
                    best = Some((strategy, p95));
                }
            }
            table.row([
                thousands(phases.gate.median()),
                name,
                p50_p95(&phases.sql),
                p50_p95(&phases.embed),
                p50_p95(&phases.vector),
                p50_p95(&phases.total),
            ]);
        }
        if let Some((strategy, _)) = best {
            fastest.push(format!("{} ids: {}", thousands(gate as f64), strategy.as_str()));
        }
    }
    table.print(&format!("### hybrid_discovery by gate size and strategy (fastest p95: {})", fastest.join(", ")));
    Ok(())
}

/// Gates over events as the agent writes them, relative to the datasets' last day (2026-11-01).
const BEHAVIOURAL_GATES: [(&str, &str); 4] = [
    (
        "bought socks in the last 60 days",
        "event_type = 'purchase' AND product = 'socks' AND ts > TIMESTAMPTZ '2026-11-01' - interval '60 days'",
    ),
    ("bought anything over 500", "event_type = 'purchase' AND price > 500"),
    ("viewed watches, from PL (both tables)", "product = 'watches' AND country = 'PL'"),
    ("any activity in the last 7 days", "ts > TIMESTAMPTZ '2026-11-01' - interval '7 days'"),
];

async fn behavioural(stores: &Stores, args: &QueryBenchArgs) -> Result<()> {
    let tool = HybridDiscovery::new(stores.clone());
    let mut table = Table::new([
        "gate",
        "ids",
        "strategy",
        "SQL gate p50 / p95",
        "embed p50 / p95",
        "vector p50 / p95",
        "total p50 / p95",
    ]);
    for (name, condition) in BEHAVIOURAL_GATES {
        let mut phases = Phases::default();
        let mut strategy = None;
        for query in 0..args.queries {
            let args = HybridDiscoveryArgs {
                condition: condition.to_owned(),
                intent: INTENTS[query % INTENTS.len()].to_owned(),
                limit: Some(10),
                ..HybridDiscoveryArgs::default()
            };
            let mut trace = ToolTrace::new("hybrid_discovery");
            tool.run_traced(args, &mut trace).await.map_err(|e| anyhow::anyhow!("hybrid_discovery: {e}"))?;
            strategy = trace.strategy;
            phases.record(&trace);
        }
        table.row([
            name.to_owned(),
            thousands(phases.gate.median()),
            strategy.map_or("-", Strategy::as_str).to_owned(),
            p50_p95(&phases.sql),
            p50_p95(&phases.embed),
            p50_p95(&phases.vector),
            p50_p95(&phases.total),
        ]);
    }
    table.print("### hybrid_discovery with behavioural gates over events (automatic strategy)");
    Ok(())
}

async fn semantic(stores: &Stores, args: &QueryBenchArgs) -> Result<()> {
    let tool = SemanticSearch::new(stores.clone());
    let mut table = Table::new(["query", "count p50", "embed p50 / p95", "vector p50 / p95", "total p50 / p95"]);
    let filtered = ProfileFilters { country: Some("PL".into()), min_spent: Some(100.0), ..ProfileFilters::default() };
    for (name, filters) in [("intent only, top 10", None), ("intent + country PL + spent >= 100", Some(filtered))] {
        let mut phases = Phases::default();
        let mut counts = Samples::default();
        for query in 0..args.queries {
            let args = SemanticSearchArgs {
                intent: INTENTS[query % INTENTS.len()].to_owned(),
                filters: filters.clone(),
                limit: Some(10),
            };
            let mut trace = ToolTrace::new("semantic_search");
            let output =
                tool.run_traced(args, &mut trace).await.map_err(|e| anyhow::anyhow!("semantic_search: {e}"))?;
            counts.push(output.count as f64);
            phases.record(&trace);
        }
        table.row([
            name.to_owned(),
            thousands(counts.median()),
            p50_p95(&phases.embed),
            p50_p95(&phases.vector),
            p50_p95(&phases.total),
        ]);
    }
    table.print("### semantic_search");
    Ok(())
}

async fn retriever(stores: &Stores, dataset: &Dataset, args: &QueryBenchArgs) -> Result<()> {
    let tool = SqlDataRetriever::new(stores.clone());
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut table = Table::new(["ids per call", "SQL p50 / p95", "total p50 / p95"]);
    for ids in [10usize, 50, 200] {
        let mut phases = Phases::default();
        for _ in 0..args.queries {
            let customer_ids: Vec<i64> = (0..ids).map(|_| rng.random_range(1..=dataset.customers) as i64).collect();
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
    table.print("### sql_data_retriever (campaign fields of random customers)");
    Ok(())
}
