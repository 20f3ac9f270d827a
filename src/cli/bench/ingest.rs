//! `audience bench ingest`: a full ingest by stage (as the real `audience ingest` child process reports it, with
//! its peak memory), the loader alone (COPY against multi-row INSERT of the same validated rows, in one run), and
//! an incremental re-ingest after 1% of customers changed.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use audience_ingest::input::{Checked, CustomerReader, Event, EventReader};
use audience_ingest::keys::CustomerKeys;
use audience_ingest::load::encode_event;
use audience_tools::schema::EVENTS;
use clap::Args;
use serde_json::Value;
use sqlx::{Postgres, QueryBuilder};

use super::stats::{Samples, Table, thousands};
use super::{Bench, Dataset, output_of};
use audience::outln;

/// COPY data goes out in chunks of this size, as in the real loader.
const COPY_CHUNK: usize = 1 << 20;
/// Rows per multi-row INSERT: 8 columns x 1,000 rows = 8,000 bind parameters (PostgreSQL allows 65,535).
const INSERT_ROWS_PER_STATEMENT: usize = 1_000;

#[derive(Args, Debug)]
pub struct IngestBenchArgs {
    /// Dataset sizes (customers), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [10_000u64, 100_000])]
    customers: Vec<u64>,
    /// Mean events per customer.
    #[arg(long, default_value_t = 50)]
    events_per_customer: u32,
    /// Repetitions of every figure.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Rows inserted by the multi-row INSERT comparison (at most the dataset's events): INSERT is slow enough
    /// that a full 5M-row run per repetition would dominate the benchmark; its rate is compared with COPY's.
    #[arg(long, default_value_t = 1_000_000)]
    insert_rows: usize,
}

impl IngestBenchArgs {
    pub fn smoke(customers: u64) -> Self {
        Self { customers: vec![customers], events_per_customer: 20, runs: 1, insert_rows: 2_000 }
    }
}

pub async fn run(bench: &Bench, args: &IngestBenchArgs) -> Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    for &customers in &args.customers {
        let dataset = bench.dataset(customers, args.events_per_customer)?;
        outln!(
            "\n## Ingest: {} customers, {} events ({} runs)",
            thousands(customers as f64),
            thousands(dataset.events as f64),
            args.runs
        )?;
        loader(bench, &dataset, args).await?;
        full_ingest(bench, &dataset, args.runs).await?;
        incremental(bench, &dataset, args.runs).await?;
    }
    Ok(())
}

/// Reads and validates both files without a database; the accepted events, and the seconds it took.
fn parse_and_validate(dataset: &Dataset) -> Result<(Vec<Event>, u64, f64)> {
    let start = Instant::now();
    // The generated ids are numeric, their own keys: no stored keys are needed.
    let keys = CustomerKeys::default();
    let mut customers = CustomerReader::open(&dataset.customers_csv, &dataset.events_csv, None, keys)?;
    let mut rows = 0u64;
    while let Some(checked) = customers.next_row()? {
        rows += u64::from(matches!(checked, Checked::Row(_)));
    }
    let mut events_reader = EventReader::open(&dataset.events_csv, None, customers.into_known())?;
    let mut events = Vec::with_capacity(dataset.events as usize);
    while let Some(checked) = events_reader.next_row()? {
        if let Checked::Row(event) = checked {
            events.push(event);
        }
    }
    rows += events.len() as u64;
    Ok((events, rows, start.elapsed().as_secs_f64()))
}

/// Parse-and-validate rate, then COPY and multi-row INSERT of the same validated events into a fresh table
/// shaped like the ingest's staging table, each in a transaction that is rolled back.
async fn loader(bench: &Bench, dataset: &Dataset, args: &IngestBenchArgs) -> Result<()> {
    let db = bench.db(dataset).await?;
    audience_ingest::load::prepare_schema(&db.pool, &db.schema).await?;
    let mut parse = Samples::default();
    let mut copy = Samples::default();
    let mut insert = Samples::default();
    let mut events = Vec::new();
    let mut rows = 0;
    for _ in 0..args.runs {
        let (parsed, parsed_rows, seconds) = parse_and_validate(dataset)?;
        parse.push(parsed_rows as f64 / seconds);
        (events, rows) = (parsed, parsed_rows);
    }
    let insert_rows = args.insert_rows.min(events.len());
    for _ in 0..args.runs {
        copy.push(events.len() as f64 / copy_events(&db, &events).await?);
        insert.push(insert_rows as f64 / insert_events(&db, &events[..insert_rows]).await?);
    }
    db.close().await;

    let mut table = Table::new(["stage", "rows", "rows/s: median (min–max)"]);
    table.row(["CSV parse + validate (both files)".to_owned(), thousands(rows as f64), rate(&parse)]);
    table.row(["COPY events into a staging table".to_owned(), thousands(events.len() as f64), rate(&copy)]);
    table.row([
        format!("multi-row INSERT events ({INSERT_ROWS_PER_STATEMENT} rows/statement)"),
        thousands(insert_rows as f64),
        rate(&insert),
    ]);
    table.print(&format!(
        "### Loader alone: COPY is {:.1}x multi-row INSERT (median rates, same run)",
        copy.median() / insert.median().max(f64::MIN_POSITIVE)
    ))?;
    Ok(())
}

fn rate(samples: &Samples) -> String {
    if samples.len() <= 1 {
        return thousands(samples.median());
    }
    format!("{} ({}–{})", thousands(samples.median()), thousands(samples.min()), thousands(samples.max()))
}

/// Seconds to COPY `events` into a new staging-shaped table (rolled back).
async fn copy_events(db: &audience_tools::db::Db, events: &[Event]) -> Result<f64> {
    let mut tx = db.pool.begin().await?;
    sqlx::query(&format!("CREATE TABLE bench_events ({})", EVENTS.ddl())).execute(&mut *tx).await?;
    let start = Instant::now();
    let columns = EVENTS.columns().join(", ");
    let mut copy = tx.copy_in_raw(&format!("COPY bench_events ({columns}) FROM STDIN")).await?;
    let mut buf = Vec::with_capacity(COPY_CHUNK + 4096);
    for event in events {
        encode_event(event, &mut buf);
        if buf.len() >= COPY_CHUNK {
            copy.send(buf.as_slice()).await?;
            buf.clear();
        }
    }
    copy.send(buf.as_slice()).await?;
    copy.finish().await.context("COPY failed")?;
    let seconds = start.elapsed().as_secs_f64();
    tx.rollback().await?;
    Ok(seconds)
}

/// Seconds to insert `events` with multi-row INSERT statements into a new staging-shaped table (rolled back).
async fn insert_events(db: &audience_tools::db::Db, events: &[Event]) -> Result<f64> {
    let mut tx = db.pool.begin().await?;
    sqlx::query(&format!("CREATE TABLE bench_events ({})", EVENTS.ddl())).execute(&mut *tx).await?;
    let start = Instant::now();
    for chunk in events.chunks(INSERT_ROWS_PER_STATEMENT) {
        let mut insert: QueryBuilder<Postgres> = QueryBuilder::new(
            "INSERT INTO bench_events (event_id, customer_id, event_type, product, color, price, quantity, amount, ts) ",
        );
        insert.push_values(chunk, |mut row, e| {
            row.push_bind(e.event_id)
                .push_bind(e.customer_id)
                .push_bind(e.event_type)
                .push_bind(&e.product)
                .push_bind(&e.color)
                .push_bind(e.price_cents.map(|cents| cents as f64 / 100.0))
                .push_unseparated("::numeric")
                .push_bind(e.quantity)
                .push_bind(e.amount_cents.map(|cents| cents as f64 / 100.0))
                .push_unseparated("::numeric")
                .push_bind(e.ts);
        });
        insert.build().execute(&mut *tx).await.context("multi-row INSERT failed")?;
    }
    let seconds = start.elapsed().as_secs_f64();
    tx.rollback().await?;
    Ok(seconds)
}

/// Drops the dataset's schema and vector index, so the next ingest is a first, full one.
async fn reset(bench: &Bench, dataset: &Dataset) -> Result<()> {
    let db = bench.db(dataset).await?;
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {} CASCADE", dataset.schema)).execute(&db.pool).await?;
    db.close().await;
    let vectors = dataset.data_dir().join("vectors");
    if vectors.exists() {
        std::fs::remove_dir_all(&vectors).with_context(|| format!("cannot remove {}", vectors.display()))?;
    }
    Ok(())
}

/// Runs `audience ingest --json` on the dataset (with `customers_csv` as its customers file); its report.
pub async fn run_ingest(bench: &Bench, dataset: &Dataset, customers_csv: &Path) -> Result<Value> {
    let mut command = bench.command(dataset);
    command
        .arg("ingest")
        .arg("--customers")
        .arg(customers_csv)
        .arg("--events")
        .arg(&dataset.events_csv)
        .arg("--rejects")
        .arg(dataset.dir.join("rejects.csv"))
        .arg("--json");
    let stdout = tokio::task::spawn_blocking(move || output_of(command)).await??;
    serde_json::from_str(stdout.trim()).context("audience ingest --json printed no JSON report")
}

/// One line of an ingest report's stage times, with the predicted fields' share of the whole.
pub fn stage_summary(report: &Value) -> String {
    let total = number(report, "/times/total");
    format!(
        "ingested in {total:.1} s: load {:.1} s, profiles {:.1} s (of which the predicted fields {:.2} s, {:.2}% of the \
         total, and the derived tables {:.2} s), embedding {:.1} s",
        number(report, "/times/load"),
        number(report, "/times/profiles"),
        number(report, "/times/predict"),
        100.0 * number(report, "/times/predict") / total,
        number(report, "/times/derived"),
        number(report, "/times/embed"),
    )
}

fn number(report: &Value, pointer: &str) -> f64 {
    report.pointer(pointer).and_then(Value::as_f64).unwrap_or(0.0)
}

/// Full first ingests (schema and index dropped before each), timed by stage.
async fn full_ingest(bench: &Bench, dataset: &Dataset, runs: usize) -> Result<()> {
    let floor = tokio::task::spawn_blocking(super::embed::measure_floor).await?;
    let names = [
        "load: parse + validate + COPY, pipelined (rows/s)",
        "profile SQL (s)",
        "of which the predicted fields (s)",
        "the predicted fields' share of the total (%)",
        "of which the derived tables (s)",
        "swap + indexes + commit (s)",
        "vacuum (s)",
        "embedding (profiles/s)",
        "embedding (tokens/s)",
        "embedding (% of the hardware floor)",
        "vector upsert (points/s)",
        "total (s)",
        "peak RSS (MiB)",
    ];
    let mut figures: Vec<Samples> = vec![Samples::default(); names.len()];
    for run in 1..=runs {
        reset(bench, dataset).await?;
        eprintln!("bench: full ingest {run}/{runs} of {} customers", dataset.customers);
        let r = run_ingest(bench, dataset, &dataset.customers_csv).await?;
        let rows = number(&r, "/load/customers") + number(&r, "/load/events");
        let embedded = number(&r, "/sync/embedded");
        let values = [
            rows / number(&r, "/times/load"),
            number(&r, "/times/profiles"),
            number(&r, "/times/predict"),
            100.0 * number(&r, "/times/predict") / number(&r, "/times/total"),
            number(&r, "/times/derived"),
            number(&r, "/times/swap"),
            number(&r, "/times/vacuum"),
            embedded / number(&r, "/sync/embed_seconds"),
            number(&r, "/sync/tokens") / number(&r, "/sync/embed_seconds"),
            100.0 * number(&r, "/sync/tokens") / number(&r, "/sync/embed_seconds") / floor.tokens_per_second(),
            embedded / number(&r, "/sync/upsert_seconds"),
            number(&r, "/times/total"),
            number(&r, "/peak_rss_bytes") / f64::from(1 << 20),
        ];
        for (samples, value) in figures.iter_mut().zip(values) {
            samples.push(value);
        }
        if embedded as u64 != dataset.customers {
            bail!("a full ingest embedded {embedded} profiles, expected {}", dataset.customers);
        }
    }
    let mut table = Table::new(["figure", "median (min–max)"]);
    for (name, samples) in names.iter().zip(&figures) {
        let cell = if name.ends_with("(s)") {
            samples.spread(2)
        } else if name.contains('%') {
            samples.spread(1)
        } else {
            rate(samples)
        };
        table.row([name.to_string(), cell]);
    }
    table.print("### Full ingest (`audience ingest --json`, a fresh schema and index each run)")?;
    Ok(())
}

/// Writes a copy of the customers file with the favourite colour (a taste, so part of the profile text) of every
/// 100th customer (ids divisible by 100) changed, so exactly 1% of profile texts change; returns its path.
fn changed_customers(dataset: &Dataset) -> Result<std::path::PathBuf> {
    let path = dataset.dir.join("customers_1pct_changed.csv");
    let mut reader = csv::Reader::from_path(&dataset.customers_csv)?;
    let header = reader.headers()?.clone();
    let id_at = header.iter().position(|h| h == "customer_id").context("customers.csv has no customer_id")?;
    let color_at = header.iter().position(|h| h == "favorite_color").context("customers.csv has no favorite_color")?;
    let mut writer = csv::Writer::from_path(&path)?;
    writer.write_record(&header)?;
    for record in reader.records() {
        let record = record?;
        let id: u64 = record[id_at].parse().context("customer id")?;
        let mut fields: Vec<String> = record.iter().map(str::to_owned).collect();
        if id.is_multiple_of(100) {
            // No generated colour is called this, so the text changes whatever the colour was.
            fields[color_at] = "changed-ochre".to_owned();
        }
        writer.write_record(&fields)?;
    }
    writer.flush()?;
    Ok(path)
}

/// Alternates the 1%-changed customers file and the original, so every run changes exactly 1% of profiles.
async fn incremental(bench: &Bench, dataset: &Dataset, runs: usize) -> Result<()> {
    let changed = changed_customers(dataset)?;
    let expected = dataset.customers / 100;
    let mut seconds = Samples::default();
    let mut embed_seconds = Samples::default();
    for run in 0..runs {
        let file = if run % 2 == 0 { &changed } else { &dataset.customers_csv };
        let r = run_ingest(bench, dataset, file).await?;
        let embedded = number(&r, "/sync/embedded") as u64;
        if embedded != expected {
            bail!("the incremental re-ingest embedded {embedded} profiles; exactly {expected} (1%) changed");
        }
        seconds.push(number(&r, "/times/total"));
        embed_seconds.push(number(&r, "/sync/seconds"));
    }
    let mut table = Table::new(["figure", "median (min–max)"]);
    table.row(["profiles re-embedded".to_owned(), format!("{expected} of {} (1%), every run", dataset.customers)]);
    table.row(["re-ingest total (s)".to_owned(), seconds.spread(2)]);
    table.row(["of which vector sync (s)".to_owned(), embed_seconds.spread(2)]);
    table.print("### Incremental re-ingest after 1% of customers changed")?;
    Ok(())
}
