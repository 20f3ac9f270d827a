//! The data engineer's commands: `generate`, `ingest`, `fit`, `reindex` and `demo`.

use std::collections::HashSet;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use chrono::{NaiveDate, Utc};
use clap::Args;

use audience_ingest::generate::{self, GenerateOptions, Lift};
use audience_ingest::input::Mapping;
use audience_ingest::load::LoadOptions;
use audience_ingest::pipeline::{self, CheckReport, IngestReport, IngestRequest};
use audience_ingest::predict::{self, FitReport};
use audience_ingest::profiles::ProfileStats;
use audience_ingest::sync::SyncReport;
use audience_tools::audience::definition::AudienceDefinition;
use audience_tools::audience::report::evaluate;
use audience_tools::db::{Db, ReadLimits};
use audience_tools::embed::LazyEmbedder;
use audience_tools::paths;
use audience_tools::trace::ToolTrace;
use audience_tools::vector::VectorStore;

use crate::Global;
use audience::exit::{self, FailureExt, FailureKind};
use audience::outln;
use audience::render::member_table;
use audience::terminal;

/// The taste the demo ranks by without an LLM.
const DEMO_QUERY: &str = "luxury watches and jewelry";
/// The question the demo asks the agent: the product's origin question.
const DEMO_QUESTION: &str = "find customers who bought socks and like luxury";

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Number of customers.
    #[arg(long, default_value_t = 500)]
    customers: u64,
    /// Mean number of events per customer.
    #[arg(long, default_value_t = 20)]
    events_per_customer: u32,
    /// Random seed; the same seed writes the same files.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Events span the 365 days before this date (YYYY-MM-DD, default today in UTC).
    #[arg(long)]
    end_date: Option<NaiveDate>,
    /// Output directory.
    #[arg(long, default_value = "sample")]
    out: PathBuf,
    /// Simulate a campaign that worked: the customers of this CSV (an export: its `external_id` column, and only
    /// the `treatment` rows when it has a `group` column) buy once more, a --lift-share of them, after --lift-since.
    #[arg(long, value_name = "FILE", requires_all = ["lift_share", "lift_since"])]
    lift_ids: Option<PathBuf>,
    /// The share of the --lift-ids customers who buy once more (0 to 1).
    #[arg(long, value_name = "SHARE", requires = "lift_ids")]
    lift_share: Option<f64>,
    /// The campaign date: the extra purchases fall between it and the end date.
    #[arg(long, value_name = "DATE", requires = "lift_ids")]
    lift_since: Option<NaiveDate>,
}

/// The customers a simulated campaign reached: the `external_id`s of an export's treatment rows (every row when the
/// file has no `group` column). The generator's ids are numbers, so any other id is an error.
fn lift_customers(path: &std::path::Path) -> Result<HashSet<u64>> {
    let mut reader = csv::Reader::from_path(path)
        .with_context(|| format!("cannot read {}", path.display()))
        .kind(FailureKind::Usage)?;
    let headers = reader.headers()?.clone();
    let Some(id) = headers.iter().position(|h| h == "external_id") else {
        return Err(anyhow!("{} has no external_id column: pass an export", path.display())).kind(FailureKind::Usage);
    };
    let group = headers.iter().position(|h| h == "group");
    let mut customers = HashSet::new();
    for record in reader.records() {
        let record = record.with_context(|| format!("cannot read {}", path.display())).kind(FailureKind::Usage)?;
        if group.is_some_and(|group| &record[group] != "treatment") {
            continue;
        }
        let value = &record[id];
        let parsed = value
            .parse::<u64>()
            .map_err(|_| anyhow!("{}: {value:?} is not an id of a generated sample (a number)", path.display()));
        customers.insert(parsed.kind(FailureKind::Usage)?);
    }
    Ok(customers)
}

#[derive(Args, Debug)]
pub struct IngestArgs {
    /// Customers CSV (may be left out when the mapping derives customers from the events file).
    #[arg(long)]
    customers: Option<PathBuf>,
    /// Events CSV.
    #[arg(long)]
    events: PathBuf,
    /// TOML file mapping a foreign export's columns and values onto ours (see examples/mappings/).
    #[arg(long)]
    mapping: Option<PathBuf>,
    /// Stop at the first bad row instead of rejecting it.
    #[arg(long)]
    strict: bool,
    /// Fail, changing nothing, when more rows of one file are rejected than this: a number of rows (100) or a share
    /// of the file's rows (5%, 0.5%); 100% turns the limit off. A load that leaves no valid customer always fails.
    #[arg(long, value_name = "ROWS|PERCENT", default_value_t = audience_ingest::load::RejectLimit::default())]
    max_rejects: audience_ingest::load::RejectLimit,
    /// Where rejected rows are written (default: rejects.csv in the data directory). Kept also when the ingest
    /// fails because of its rejects.
    #[arg(long)]
    rejects: Option<PathBuf>,
    /// Compute profiles as of this day (YYYY-MM-DD); default: the day of the newest event.
    #[arg(long)]
    as_of: Option<NaiveDate>,
    #[command(flatten)]
    predict: PredictArgs,
    /// Print the report as one JSON document (counts, stage times, peak memory) instead of text.
    #[arg(long)]
    json: bool,
    /// Dry run: validate the files and the mapping, and print what would be loaded (counts, rejects by reason, spend
    /// and purchases per customer, a few rendered profiles), changing nothing: no table, no vector index, no rejects
    /// file.
    #[arg(long)]
    check: bool,
}

/// The settings of the predicted profile fields, shared by `ingest` and `fit`.
#[derive(Args, Debug)]
pub struct PredictArgs {
    /// The horizon of the predicted `expected_purchases`, in days.
    #[arg(long, value_name = "DAYS", default_value_t = predict::DEFAULT_HORIZON_DAYS,
          value_parser = clap::value_parser!(u32).range(1..=3650))]
    horizon_days: u32,
    /// The monthly discount rate of the predicted `clv_12m` (0.01 = 1% a month).
    #[arg(long, value_name = "RATE", default_value_t = predict::Options::default().monthly_discount,
          value_parser = discount_rate)]
    monthly_discount: f64,
}

impl PredictArgs {
    fn options(&self) -> predict::Options {
        predict::Options { horizon_days: self.horizon_days, monthly_discount: self.monthly_discount }
    }
}

#[derive(Args, Debug)]
pub struct FitArgs {
    #[command(flatten)]
    predict: PredictArgs,
    /// Print the report (the fit, the data versions) as one JSON document instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Number of sample customers.
    #[arg(long, default_value_t = 500)]
    customers: u64,
    /// The question the agent answers once the sample is in.
    #[arg(long, default_value = DEMO_QUESTION)]
    question: String,
    /// Skip the agent (for machines without the local model): print a ranking by taste instead, with no LLM.
    #[arg(long)]
    no_llm: bool,
}

pub fn generate(args: GenerateArgs) -> Result<()> {
    let opts = GenerateOptions {
        customers: args.customers,
        events_per_customer: args.events_per_customer,
        seed: args.seed,
        end_date: args.end_date.unwrap_or_else(|| Utc::now().date_naive()),
        out_dir: args.out,
        lift: match (&args.lift_ids, args.lift_share, args.lift_since) {
            (Some(path), Some(share), Some(since)) => Some(Lift { customers: lift_customers(path)?, share, since }),
            _ => None,
        },
    };
    let report = generate::generate(&opts)?;
    outln!(
        "wrote {} customers and {} events to {} (seed {}, personas in labels.csv)",
        report.customers,
        report.events,
        opts.out_dir.display(),
        opts.seed
    )?;
    if let Some((lifted, path)) = &report.lifted {
        outln!(
            "added one purchase each for {lifted} customers after the campaign date (listed in {})",
            path.display()
        )?;
    }
    Ok(())
}

pub async fn ingest(args: IngestArgs, global: &Global) -> Result<()> {
    let mapping = args.mapping.as_deref().map(Mapping::from_file).transpose()?;
    // A mapping may build customers from the events file, in which case the customers path is never read.
    let customers = match (args.customers, &mapping) {
        (Some(path), _) => path,
        (None, Some(mapping)) if mapping.customers_from_events() => args.events.clone(),
        (None, _) => bail!("--customers is required unless --mapping derives customers from the events file"),
    };
    let request = IngestRequest {
        customers,
        events: args.events,
        load: LoadOptions {
            strict: args.strict,
            rejects_path: args.rejects.unwrap_or_else(|| global.data_dir.join("rejects.csv")),
            max_rejects: args.max_rejects,
            mapping,
            dry_run: false,
        },
        as_of: args.as_of,
        predict: args.predict.options(),
    };
    if args.check {
        let db = audience::open_stores::connect_db().await?;
        let report = pipeline::check(&db, request).await.map_err(exit::store_is_store)?;
        if args.json {
            outln!("{}", serde_json::to_string(&report)?)?;
        } else {
            print_check(&report)?;
        }
        return Ok(());
    }
    let stores = Stores::open(global).await?;
    let report =
        pipeline::ingest(&stores.db, &stores.vectors, &stores.embedder, request).await.map_err(exit::store_is_store)?;
    if args.json {
        let mut json = serde_json::to_value(&report)?;
        json["peak_rss_bytes"] = serde_json::json!(peak_rss_bytes());
        outln!("{json}")?;
    } else {
        print_ingest(&report)?;
    }
    Ok(())
}

/// The most memory this process has held (VmHWM), for the ingest report; `None` where /proc is missing.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: u64 = line.trim_start_matches("VmHWM:").trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

/// `audience fit`: the purchase and spend models fitted again on the data already ingested, their predictions
/// written into the profiles as a new data version.
pub async fn fit(args: FitArgs) -> Result<()> {
    let db = audience::open_stores::connect_db().await?;
    if !db.is_ingested().await.kind(FailureKind::Store)? {
        return Err(anyhow!("no profiles in schema {:?} yet; run `audience ingest` first", db.schema))
            .kind(FailureKind::Store);
    }
    let report = pipeline::refit(&db, args.predict.options()).await.map_err(exit::store_is_store)?;
    if args.json {
        return outln!("{}", serde_json::to_string(&report)?);
    }
    let options = &report.fit.options;
    outln!(
        "fitted on the purchases up to {} and wrote the predicted fields of {} profiles as data version {} (was {}) \
         in {:.2} s; expected_purchases over the next {} days, clv_12m at a monthly discount rate of {}",
        report.as_of,
        report.profiles,
        report.version,
        report.previous_version,
        report.seconds,
        options.horizon_days,
        options.monthly_discount
    )?;
    print_fit(&report.fit)
}

pub async fn reindex(global: &Global) -> Result<()> {
    let stores = Stores::open(global).await?;
    if !stores.db.is_ingested().await.kind(FailureKind::Store)? {
        bail!("no profiles in schema {:?} yet; run `audience ingest` first", stores.db.schema);
    }
    let report =
        pipeline::reindex(&stores.db, &stores.vectors, &stores.embedder).await.map_err(exit::store_is_store)?;
    outln!("reindexed {}", stores.vectors.describe())?;
    print_sync(&report)
}

pub async fn demo(args: DemoArgs, global: &Global) -> Result<()> {
    let sample = global.data_dir.join("sample");
    let opts = GenerateOptions {
        customers: args.customers,
        events_per_customer: 20,
        seed: 42,
        end_date: Utc::now().date_naive(),
        out_dir: sample.clone(),
        lift: None,
    };
    let generated = generate::generate(&opts)?;
    outln!("generated {} customers and {} events in {}", generated.customers, generated.events, sample.display())?;

    let stores = Stores::open(global).await?;
    let request = IngestRequest {
        customers: generated.customers_path,
        events: generated.events_path,
        load: LoadOptions {
            strict: false,
            rejects_path: sample.join("rejects.csv"),
            max_rejects: Default::default(),
            mapping: None,
            dry_run: false,
        },
        as_of: None,
        predict: Default::default(),
    };
    let report =
        pipeline::ingest(&stores.db, &stores.vectors, &stores.embedder, request).await.map_err(exit::store_is_store)?;
    print_ingest(&report)?;

    if !args.no_llm {
        // The main job: a marketer's question answered by the agent (the local model unless another is configured).
        let config = audience::agent::AgentConfig::load(&global.data_dir)?;
        let stores = audience::open_stores::open_stores(&global.data_dir).await?;
        let mut session = audience::agent::Session::new(config, stores, global.verbose).await?;
        outln!("\nQuestion: {}", args.question)?;
        let answer = session.ask(&args.question).await?;
        crate::cli::ask::print_answer(&answer)?;
        eprintln!("{}", answer.usage.summary_line());
        return Ok(());
    }
    // Without the LLM: the audience ranked by a taste, through the same report `ask` prints.
    let Stores { db, vectors, embedder } = stores;
    let stores = audience_tools::stores::Stores::new(db, vectors.reader(), embedder, ReadLimits::default());
    let definition = AudienceDefinition { intent: Some(DEMO_QUERY.to_owned()), limit: 10, ..Default::default() };
    let report = evaluate(&stores, &definition, &[], &mut ToolTrace::new("demo")).await.map_err(exit::tool_failure)?;
    outln!("\nTop 10 customers for {DEMO_QUERY:?} (vector ranking, no LLM):")?;
    outln!("{}", member_table(&report.members))?;
    Ok(())
}

/// The three stores every data command needs.
struct Stores {
    db: Db,
    vectors: VectorStore,
    embedder: LazyEmbedder,
}

impl Stores {
    async fn open(global: &Global) -> Result<Self> {
        let db = audience::open_stores::connect_db().await?;
        let vectors = VectorStore::from_env(&global.data_dir, &db.schema);
        let embedder = LazyEmbedder::new(paths::models_dir());
        // The model loads while PostgreSQL does its part of the ingest.
        embedder.prefetch();
        Ok(Self { db, vectors, embedder })
    }
}

fn print_ingest(report: &IngestReport) -> Result<()> {
    let load = &report.load;
    let count = |n: u64, noun: &str| if n == 1 { format!("1 {noun}") } else { format!("{n} {noun}s") };
    let mut loaded = format!("loaded {} and {}", count(load.customers, "customer"), count(load.events, "event"));
    match &load.rejects_path {
        Some(path) if load.rejected > 0 => {
            loaded.push_str(&format!("; {} rejected, see {}", count(load.rejected, "row"), path.display()));
        }
        _ => loaded.push_str("; no rows rejected"),
    }
    outln!("{loaded}")?;
    print_profiles(&report.profiles)?;
    print_sync(&report.sync)?;
    let t = &report.times;
    let peak = peak_rss_bytes().map(|bytes| format!(", peak memory {} MiB", bytes >> 20)).unwrap_or_default();
    outln!(
        "times: load {:.2} s, profiles {:.2} s (predicted fields {:.2} s, derived tables {:.2} s), swap {:.2} s, \
         vacuum {:.2} s, embed {:.2} s, total {:.2} s{peak}",
        t.load,
        t.profiles,
        t.predict,
        t.derived,
        t.swap,
        t.vacuum,
        t.embed,
        t.total
    )?;
    Ok(())
}

fn print_profiles(p: &ProfileStats) -> Result<()> {
    outln!(
        "profiles: {} as of {} (VIP Loyalty {}, Churn Recovery {}, Standard Promo {}; {} like luxury)",
        p.profiles,
        p.as_of,
        p.vip,
        p.churn_recovery,
        p.standard,
        p.likes_luxury
    )?;
    for note in &p.notes {
        outln!("note: {note}")?;
    }
    print_fit(&p.prediction)
}

/// The fitted parameters and log-likelihood of each model, and why a model was not fitted.
fn print_fit(fit: &FitReport) -> Result<()> {
    for line in fit.lines() {
        outln!("{line}")?;
    }
    Ok(())
}

/// A monthly discount rate: a number from 0 to 1.
fn discount_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
        _ => Err(format!("{text:?} is not a monthly rate from 0 to 1 (0.01 = 1% a month)")),
    }
}

fn print_check(report: &CheckReport) -> Result<()> {
    let load = &report.load;
    outln!(
        "check: would load {} customers and {} events; {} rows rejected (nothing was changed)",
        load.customers,
        load.events,
        load.rejected
    )?;
    for reason in &load.rejects_by_reason {
        outln!(
            "  {} rows of {}: {} (first at line {}: {})",
            reason.rows,
            reason.file,
            reason.reason,
            reason.first_line,
            terminal::safe(&reason.first_reason)
        )?;
    }
    print_profiles(&report.profiles)?;
    let (spend, orders) = (&report.distribution.spend, &report.distribution.orders);
    outln!(
        "spend per customer: min {:.2}, median {:.2}, max {:.2}; purchases per customer: min {}, median {}, max {}; \
         {:.1}% of customers bought something",
        spend.min,
        spend.median,
        spend.max,
        orders.min,
        orders.median,
        orders.max,
        report.distribution.buyers_share * 100.0
    )?;
    for sample in &report.samples {
        outln!("\ncustomer {}:\n{}", terminal::safe(&sample.external_id), terminal::safe(&sample.profile_text))?;
    }
    Ok(())
}

fn print_sync(report: &SyncReport) -> Result<()> {
    outln!(
        "vectors: {} embedded from {} distinct texts ({} tokens), {} unchanged, {} deleted in {:.2} s (model {:.2} s, \
         index writes {:.2} s)",
        report.embedded,
        report.texts_embedded,
        report.tokens,
        report.unchanged,
        report.deleted,
        report.seconds,
        report.embed_seconds,
        report.upsert_seconds
    )?;
    Ok(())
}
