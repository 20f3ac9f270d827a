//! `audience bench embed`: the hardware floor for embedding, and how close each session layout comes to it.
//!
//! The floor: all-MiniLM-L6-v2 costs about 21.7 MFLOP per token (2 x its 10.6M non-embedding parameters; attention
//! and padding are extra work, so the floor is optimistic). The peak rate is the better of two figures: an fp32
//! GEMM micro-benchmark (`matrixmultiply`, on all cores) and the published 32 fp32 FLOP per cycle per core
//! (two 256-bit FMA pipes) at the clock measured here with a chain of dependent adds.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use audience_tools::embed::{EmbedLayout, Embedder};
use audience_tools::paths;
use clap::Args;

use super::stats::{Samples, Table, thousands};
use super::{Bench, Dataset};

/// MiniLM-L6 forward FLOP per token: 2 x 10.6M non-embedding parameters.
const FLOP_PER_TOKEN: f64 = 21.7e6;
/// AVX2 + FMA: two 8-wide fused multiply-adds per cycle per core.
const FLOP_PER_CYCLE_PER_CORE: f64 = 32.0;

#[derive(Args, Debug)]
pub struct EmbedBenchArgs {
    /// Profile texts embedded per run, taken from this dataset (customers; ingested first if needed).
    #[arg(long, default_value_t = 10_000)]
    customers: u64,
    /// Mean events per customer of the dataset.
    #[arg(long, default_value_t = 50)]
    events_per_customer: u32,
    /// Texts per run.
    #[arg(long, default_value_t = 2_048)]
    texts: usize,
    /// Repetitions of every figure.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Batch sizes to compare, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [8usize, 16, 32, 64])]
    batch_sizes: Vec<usize>,
}

impl EmbedBenchArgs {
    pub fn smoke() -> Self {
        Self { customers: 300, events_per_customer: 20, texts: 64, runs: 1, batch_sizes: vec![16] }
    }
}

/// The measured peak fp32 rate and how it was found.
pub struct Floor {
    pub clock_ghz: f64,
    pub cores: usize,
    pub gemm_gflops: f64,
    pub peak_gflops: f64,
}

impl Floor {
    /// Tokens per second the hardware could embed at its peak rate.
    pub fn tokens_per_second(&self) -> f64 {
        self.peak_gflops * 1e9 / FLOP_PER_TOKEN
    }
}

pub async fn run(bench: &Bench, args: &EmbedBenchArgs) -> Result<()> {
    if args.runs == 0 || args.texts == 0 {
        bail!("--runs and --texts must be at least 1");
    }
    let floor = tokio::task::spawn_blocking(measure_floor).await?;
    let mut table = Table::new(["figure", "value"]);
    table.row(["cores".to_owned(), floor.cores.to_string()]);
    table.row(["clock (dependent-add chain)".to_owned(), format!("{:.2} GHz", floor.clock_ghz)]);
    table.row([
        "32 FLOP/cycle/core x clock x cores".to_owned(),
        format!("{:.1} GFLOP/s", FLOP_PER_CYCLE_PER_CORE * floor.clock_ghz * floor.cores as f64),
    ]);
    table.row(["fp32 GEMM micro-benchmark (best)".to_owned(), format!("{:.1} GFLOP/s", floor.gemm_gflops)]);
    table.row([
        "embedding floor at the higher peak".to_owned(),
        format!("{} tokens/s", thousands(floor.tokens_per_second())),
    ]);
    table.print("## Hardware floor")?;

    let dataset = bench.dataset(args.customers, args.events_per_customer)?;
    let texts = profile_texts(bench, &dataset, args.texts).await?;
    let cores = floor.cores;
    let mut layouts = Vec::new();
    for &batch_size in &args.batch_sizes {
        layouts.push(EmbedLayout { sessions: 1, threads_per_session: cores, batch_size });
        if cores > 1 {
            layouts.push(EmbedLayout { sessions: cores, threads_per_session: 1, batch_size });
        }
    }
    let default = EmbedLayout::for_this_machine();
    let mut table = Table::new(["sessions x threads", "batch", "profiles/s", "tokens/s", "% of floor"]);
    for layout in layouts {
        let texts = texts.clone();
        let runs = args.runs;
        let (profiles, tokens) = tokio::task::spawn_blocking(move || embed_rate(layout, &texts, runs)).await??;
        let marker = if layout == default { " (default)" } else { "" };
        table.row([
            format!("{} x {}{marker}", layout.sessions, layout.threads_per_session),
            layout.batch_size.to_string(),
            profiles.spread(1),
            tokens.spread(0),
            format!("{:.0}%", 100.0 * tokens.median() / floor.tokens_per_second()),
        ]);
    }
    table.print(&format!("## Embedding throughput, {} profile texts per run, {} runs", texts.len(), args.runs))?;
    Ok(())
}

/// Profile texts of an ingested dataset, the real input of ingest's embedding stage.
async fn profile_texts(bench: &Bench, dataset: &Dataset, limit: usize) -> Result<Vec<String>> {
    bench.ensure_ingested(dataset).await?;
    let db = bench.db(dataset).await?;
    let texts: Vec<String> = sqlx::query_scalar("SELECT profile_text FROM profiles ORDER BY customer_id LIMIT $1")
        .bind(limit as i64)
        .fetch_all(&db.pool)
        .await
        .context("cannot read profile texts")?;
    db.close().await;
    Ok(texts)
}

/// Profiles/s and tokens/s of `runs` embeddings of `texts` with `layout` (model load and a warm-up excluded).
fn embed_rate(layout: EmbedLayout, texts: &[String], runs: usize) -> Result<(Samples, Samples)> {
    let embedder = Embedder::load_with(&paths::models_dir(), layout)?;
    embedder.embed(&texts[..texts.len().min(layout.batch_size * layout.sessions)])?;
    let (mut profiles, mut tokens) = (Samples::default(), Samples::default());
    for _ in 0..runs {
        let start = Instant::now();
        let embedded = embedder.embed(texts)?;
        let seconds = start.elapsed().as_secs_f64();
        profiles.push(texts.len() as f64 / seconds);
        tokens.push(embedded.tokens as f64 / seconds);
    }
    Ok((profiles, tokens))
}

/// Measures the clock and the fp32 GEMM rate; the peak is the higher of GEMM and 32 FLOP/cycle/core.
pub fn measure_floor() -> Floor {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let clock_ghz = measure_clock_ghz();
    // Shapes of the model's own GEMMs (a batch of 32 x 64 tokens through the 384 -> 1536 feed-forward layer), and a
    // square one.
    let gemm_gflops =
        [(2048, 384, 1536), (1024, 1024, 1024)].into_iter().map(|(m, k, n)| gemm_gflops(m, k, n)).fold(0.0, f64::max);
    let published = FLOP_PER_CYCLE_PER_CORE * clock_ghz * cores as f64;
    Floor { clock_ghz, cores, gemm_gflops, peak_gflops: gemm_gflops.max(published) }
}

/// The best fp32 GEMM rate over about a second of repetitions of an `m x k` by `k x n` product.
fn gemm_gflops(m: usize, k: usize, n: usize) -> f64 {
    let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
    let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
    let mut c = vec![0f32; m * n];
    let flop = 2.0 * (m * k * n) as f64;
    let started = Instant::now();
    let mut best = 0f64;
    while started.elapsed().as_secs_f64() < 1.0 {
        let start = Instant::now();
        // SAFETY: a, b and c hold m*k, k*n and m*n elements, and the strides describe those row-major matrices.
        unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                n,
                1.0,
                a.as_ptr(),
                k as isize,
                1,
                b.as_ptr(),
                n as isize,
                1,
                0.0,
                c.as_mut_ptr(),
                n as isize,
                1,
            );
        }
        best = best.max(flop / start.elapsed().as_secs_f64() / 1e9);
    }
    std::hint::black_box(&c);
    best
}

/// The core clock in GHz: a chain of dependent integer adds retires one add per cycle.
#[cfg(target_arch = "x86_64")]
fn measure_clock_ghz() -> f64 {
    const ADDS_PER_ITERATION: u64 = 10;
    let iterations: u64 = 200_000_000;
    let mut best = 0f64;
    for _ in 0..5 {
        let mut x: u64 = 0;
        let mut n = iterations;
        let start = Instant::now();
        // SAFETY: only register arithmetic on the two operands; no memory is touched.
        unsafe {
            std::arch::asm!(
                "2:",
                "add {x}, 1", "add {x}, 1", "add {x}, 1", "add {x}, 1", "add {x}, 1",
                "add {x}, 1", "add {x}, 1", "add {x}, 1", "add {x}, 1", "add {x}, 1",
                "dec {n}",
                "jnz 2b",
                x = inout(reg) x,
                n = inout(reg) n,
                options(nomem, nostack),
            );
        }
        let seconds = start.elapsed().as_secs_f64();
        std::hint::black_box((x, n));
        best = best.max((iterations * ADDS_PER_ITERATION) as f64 / seconds / 1e9);
    }
    best
}

/// Without a known instruction latency to time, the clock is not measured; the GEMM figure stands alone.
#[cfg(not(target_arch = "x86_64"))]
fn measure_clock_ghz() -> f64 {
    0.0
}
