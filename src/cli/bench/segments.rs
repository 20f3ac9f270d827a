//! `audience bench segments`: `audience segments` over a range of k with the silhouette, in process, by stage
//! (target: k = 2..10 at 100k customers in under 30 s, release build).
//!
//! Segments read only the profiles, so the dataset is loaded with ingest's own stages (validation and COPY,
//! profiles, the derived tables, the swap) into a schema of its own, `<dataset schema>_segments`, and not embedded:
//! embedding is 96% of a 100k ingest, and segments never read the vector index.

use anyhow::{Result, bail};
use audience_ingest::load::{self, LoadOptions};
use audience_ingest::{audience_tables, profiles};
use audience_tools::db::{Db, ReadLimits};
use audience_tools::embed::LazyEmbedder;
use audience_tools::paths;
use audience_tools::segments::{self, KRange, SegmentOptions};
use audience_tools::stores::Stores;
use audience_tools::vector::VectorStore;
use clap::Args;

use super::stats::{Samples, Table, thousands};
use super::{Bench, Dataset};

#[derive(Args, Debug)]
pub struct SegmentsBenchArgs {
    /// Dataset size (customers); generated and loaded first if needed.
    #[arg(long, default_value_t = 100_000)]
    customers: u64,
    /// Mean events per customer of the dataset.
    #[arg(long, default_value_t = 50)]
    events_per_customer: u32,
    /// The k to try, as `audience segments --k` takes it.
    #[arg(long, default_value_t = KRange::default())]
    k: KRange,
    /// Repetitions.
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

impl SegmentsBenchArgs {
    pub fn smoke(customers: u64) -> Self {
        Self { customers, events_per_customer: 20, k: KRange { min: 2, max: 4 }, runs: 1 }
    }
}

pub async fn run(bench: &Bench, args: &SegmentsBenchArgs) -> Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let dataset = bench.dataset(args.customers, args.events_per_customer)?;
    let dataset = Dataset { schema: format!("{}_segments", dataset.schema), ..dataset };
    let db = bench.db(&dataset).await?;
    load_profiles(&db, &dataset).await?;
    let vectors = VectorStore::from_env(&dataset.data_dir(), &dataset.schema).reader();
    let stores = Stores::new(db, vectors, LazyEmbedder::new(paths::models_dir()), ReadLimits::default());
    let options = SegmentOptions { k: args.k, ..SegmentOptions::default() };
    let (mut read, mut kmeans, mut silhouette, mut total) =
        (Samples::default(), Samples::default(), Samples::default(), Samples::default());
    let mut last = None;
    for _ in 0..args.runs {
        let report = segments::compute(&stores, &options).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        read.push(report.seconds.read);
        kmeans.push(report.seconds.kmeans);
        silhouette.push(report.seconds.silhouette);
        total.push(report.seconds.total);
        last = Some(report);
    }
    stores.db.close().await;
    let Some(report) = last else { bail!("no run finished") };
    let basis = &report.silhouette_on;
    let on = if basis.sampled {
        format!("a seeded sample of {}", thousands(basis.customers as f64))
    } else {
        "every customer".to_owned()
    };
    let mut table = Table::new(["stage", "seconds: median (min–max)"]);
    table.row(["read the profiles".to_owned(), read.spread(2)]);
    table.row([format!("k-means, k = {} ({} k-means++ starts each)", args.k, report.restarts), kmeans.spread(2)]);
    table.row([format!("mean silhouette of every k, on {on}"), silhouette.spread(2)]);
    table.row(["total".to_owned(), total.spread(2)]);
    let columns = report.columns.len();
    table.print(&format!(
        "## Segments, {} customers, {columns} feature columns ({} runs, in process): k = {} chosen",
        thousands(dataset.customers as f64),
        args.runs,
        report.chosen_k
    ))?;
    let mut candidates = Table::new(["k", "inertia", "mean silhouette"]);
    for candidate in &report.candidates {
        candidates.row([
            candidate.k.to_string(),
            format!("{:.1}", candidate.inertia),
            format!("{:.4}", candidate.silhouette),
        ]);
    }
    candidates.print("### The k tried (last run)")
}

/// Loads the dataset's profiles into its schema, unless they are there already.
async fn load_profiles(db: &Db, dataset: &Dataset) -> Result<()> {
    if db.is_ingested().await? {
        let profiles: i64 = sqlx::query_scalar("SELECT count(*) FROM profiles").fetch_one(&db.pool).await?;
        if u64::try_from(profiles).ok() == Some(dataset.customers) {
            return Ok(());
        }
    }
    eprintln!(
        "bench: loading the profiles of {} customers into schema {} (not embedded)",
        dataset.customers, dataset.schema
    );
    load::prepare_schema(&db.pool, &db.schema).await?;
    let mut tx = db.pool.begin().await?;
    let options = LoadOptions { rejects_path: dataset.dir.join("rejects.csv"), ..LoadOptions::default() };
    load::load_staging(&mut tx, &dataset.customers_csv, &dataset.events_csv, &options).await?;
    let stats = profiles::compute(&mut tx, None, Default::default()).await?;
    audience_tables::build(&mut tx, stats.as_of).await?;
    load::swap_in(&mut tx).await?;
    tx.commit().await?;
    Ok(())
}
