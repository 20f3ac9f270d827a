//! `audience bench`: measures ingest, embedding, tool latency and cold start on this machine, against the
//! alternatives and the hardware floor, and prints Markdown tables ready for `BENCHMARKS.md`.
//!
//! Every figure runs against the real PostgreSQL, the real embedding model and the embedded vector engine. Each
//! dataset size gets its own directory (`<dir>/<customers>`: the generated CSV files and the vector index) and
//! its own schema (`<AUDIENCE_SCHEMA>_bench_<customers>`), so a benchmark never touches the user's data. Whole
//! commands (`ingest`, `chat`, `tool`) run as child processes of the same binary, so their peak memory and
//! start-up are real.

mod embed;
mod ingest;
mod query;
mod segments;
mod startup;
mod stats;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};
use audience_ingest::generate::{self, GenerateOptions};
use audience_tools::db::{DEFAULT_SCHEMA, Db, check_identifier};
use audience_tools::vector;
use chrono::NaiveDate;
use clap::{Args, Subcommand};

use crate::Global;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Where datasets and their vector indexes live (default: `bench` in the data directory).
    #[arg(long, global = true)]
    dir: Option<PathBuf>,
    #[command(subcommand)]
    which: Which,
}

#[derive(Subcommand, Debug)]
enum Which {
    /// Full ingest by stage, COPY against multi-row INSERT, peak memory, and a 1% incremental re-ingest.
    Ingest(ingest::IngestBenchArgs),
    /// The hardware floor (clock, fp32 GEMM) and embedding throughput for several session layouts.
    Embed(embed::EmbedBenchArgs),
    /// Tool latency (p50/p95): find_audience by audience size and for marketer definitions, sql_data_retriever.
    Query(query::QueryBenchArgs),
    /// Segments: k-means and the silhouette over a range of k, by stage (profiles loaded without embedding).
    Segments(segments::SegmentsBenchArgs),
    /// Cold start: time until the REPL prompt, and until a direct tool call answers (model load included).
    Startup(startup::StartupBenchArgs),
    /// A small run of every benchmark (what CI runs); checks the harness, measures nothing worth quoting.
    Smoke,
}

pub async fn run(args: BenchArgs, global: &Global) -> Result<()> {
    let dir = args.dir.unwrap_or_else(|| global.data_dir.join("bench"));
    let bench = Bench::new(dir)?;
    match args.which {
        Which::Ingest(args) => ingest::run(&bench, &args).await,
        Which::Embed(args) => embed::run(&bench, &args).await,
        Which::Query(args) => query::run(&bench, &args).await,
        Which::Segments(args) => segments::run(&bench, &args).await,
        Which::Startup(args) => startup::run(&bench, &args).await,
        Which::Smoke => smoke(&bench).await,
    }
}

/// The smoke run: tiny sizes, one run each, every section once.
async fn smoke(bench: &Bench) -> Result<()> {
    let customers = 300;
    ingest::run(bench, &ingest::IngestBenchArgs::smoke(customers)).await?;
    embed::run(bench, &embed::EmbedBenchArgs::smoke()).await?;
    query::run(bench, &query::QueryBenchArgs::smoke(customers)).await?;
    segments::run(bench, &segments::SegmentsBenchArgs::smoke(customers)).await?;
    startup::run(bench, &startup::StartupBenchArgs::smoke(customers)).await
}

/// The benchmark workspace: a directory of datasets, the running binary for child commands, and the prefix of
/// the datasets' schemas.
pub struct Bench {
    dir: PathBuf,
    exe: PathBuf,
    schema_prefix: String,
}

/// One generated dataset, its schema and its data directory (vector index).
pub struct Dataset {
    pub customers: u64,
    pub events: u64,
    pub dir: PathBuf,
    pub customers_csv: PathBuf,
    pub events_csv: PathBuf,
    pub schema: String,
}

impl Dataset {
    /// The data directory the child commands use (`vectors/` inside it).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }
}

/// Every dataset's events end on this day, so a dataset is the same files whenever it is generated.
const END_DATE: (i32, u32, u32) = (2026, 11, 1);

impl Bench {
    fn new(dir: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let exe = std::env::current_exe().context("cannot find the running audience binary")?;
        let base = std::env::var("AUDIENCE_SCHEMA").unwrap_or_else(|_| DEFAULT_SCHEMA.to_owned());
        let schema_prefix = format!("{base}_bench");
        check_identifier(&schema_prefix).context("AUDIENCE_SCHEMA")?;
        Ok(Self { dir, exe, schema_prefix })
    }

    /// The dataset of `customers` customers with a mean of `events_per_customer` events, generated on first use
    /// (seed 42; a marker file records the parameters, so a different request regenerates).
    pub fn dataset(&self, customers: u64, events_per_customer: u32) -> Result<Dataset> {
        let dir = self.dir.join(customers.to_string());
        let marker = dir.join("generated.json");
        let wanted = serde_json::json!({"customers": customers, "events_per_customer": events_per_customer});
        let existing: Option<serde_json::Value> =
            std::fs::read_to_string(&marker).ok().and_then(|text| serde_json::from_str(&text).ok());
        let events = match existing {
            Some(found)
                if found["customers"] == wanted["customers"]
                    && found["events_per_customer"] == wanted["events_per_customer"] =>
            {
                found["events"].as_u64().unwrap_or(0)
            }
            _ => {
                let (year, month, day) = END_DATE;
                let end_date = NaiveDate::from_ymd_opt(year, month, day).context("invalid benchmark end date")?;
                eprintln!(
                    "bench: generating {customers} customers x {events_per_customer} events in {}",
                    dir.display()
                );
                let report = generate::generate(&GenerateOptions {
                    customers,
                    events_per_customer,
                    seed: 42,
                    end_date,
                    out_dir: dir.clone(),
                    lift: None,
                })?;
                let mut record = wanted.clone();
                record["events"] = report.events.into();
                std::fs::write(&marker, record.to_string())
                    .with_context(|| format!("cannot write {}", marker.display()))?;
                report.events
            }
        };
        Ok(Dataset {
            customers,
            events,
            customers_csv: dir.join("customers.csv"),
            events_csv: dir.join("events.csv"),
            schema: format!("{}_{customers}", self.schema_prefix),
            dir,
        })
    }

    /// A child `audience` command working on `dataset` (its schema and data directory), logs off.
    pub fn command(&self, dataset: &Dataset) -> Command {
        let mut command = Command::new(&self.exe);
        command
            .env("AUDIENCE_SCHEMA", &dataset.schema)
            .env("AUDIENCE_DATA_DIR", dataset.data_dir())
            .env("AUDIENCE_LOG", "error");
        command
    }

    /// Connects to the dataset's schema.
    pub async fn db(&self, dataset: &Dataset) -> Result<Db> {
        let url = std::env::var("DATABASE_URL").context("DATABASE_URL is not set")?;
        Db::connect(&url, &dataset.schema).await
    }

    /// Makes sure `dataset` is ingested (profiles in PostgreSQL and every vector in the index): runs
    /// `audience ingest` once if not. Returns nothing; the caller opens what it needs.
    pub async fn ensure_ingested(&self, dataset: &Dataset) -> Result<()> {
        let db = self.db(dataset).await?;
        let profiles: Option<i64> = if db.is_ingested().await? {
            sqlx::query_scalar("SELECT count(*) FROM profiles").fetch_optional(&db.pool).await?
        } else {
            None
        };
        db.close().await;
        if profiles == Some(dataset.customers as i64) && self.vectors_in_index(dataset).await? == dataset.customers {
            return Ok(());
        }
        eprintln!("bench: ingesting {} customers into schema {}", dataset.customers, dataset.schema);
        let report = ingest::run_ingest(self, dataset, &dataset.customers_csv).await?;
        eprintln!("bench: {}", ingest::stage_summary(&report));
        Ok(())
    }
}

impl Bench {
    /// Points in the dataset's current vector index version (0 when it has none). An ingest that stopped before
    /// publishing leaves the older version, and such an index must not be benchmarked as complete.
    async fn vectors_in_index(&self, dataset: &Dataset) -> Result<u64> {
        let reader = vector::VectorStore::from_env(&dataset.data_dir(), &dataset.schema).reader();
        match reader.current().await? {
            Some(index) => index.search.count(None).await,
            None => Ok(0),
        }
    }
}

/// Runs `command` to completion and returns its stdout; a failure carries its stderr.
pub fn output_of(mut command: Command) -> Result<String> {
    let output = command.output().with_context(|| format!("cannot run {command:?}"))?;
    if !output.status.success() {
        bail!("{command:?} failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr).trim());
    }
    String::from_utf8(output.stdout).context("child output is not UTF-8")
}
