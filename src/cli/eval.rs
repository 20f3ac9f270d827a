//! `audience eval`: runs the golden set through the real agent and prints scores per category, calibration,
//! tokens, cost and latency; `--record DIR` keeps the provider's replies, `--replay DIR` serves them instead of a
//! model (what CI runs). Exits non-zero when a category scores below its threshold in the case file.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use audience::agent::AgentConfig;
use audience::cassette::{Cassette, Mode};
use audience::eval::{self, CaseFile, CaseResult, Summary};
use audience::exit::{FailureExt, FailureKind};
use audience::local_llm;
use audience::outln;
use audience::provider::{ApiKey, ProviderConfig, ProviderKind, RetryPolicy};
use audience_tools::db::DEFAULT_SCHEMA;
use clap::Args;
use comfy_table::Table;
use comfy_table::presets::UTF8_FULL_CONDENSED;
use indicatif::{ProgressBar, ProgressStyle};

use crate::Global;
use audience::terminal;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The golden set.
    #[arg(long, default_value = "tests/golden/cases.toml")]
    cases: PathBuf,
    /// Only the cases whose id starts with one of these (e.g. `analytics-`, or `analytics-,refusal-delete`).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// The provider to evaluate (as AUDIENCE_PROVIDER; e.g. local).
    #[arg(long)]
    provider: Option<String>,
    /// The model (as AUDIENCE_MODEL; e.g. qwen2.5-coder-0.5b-instruct).
    #[arg(long)]
    model: Option<String>,
    /// Keep every reply of the provider in DIR (one file per case), for --replay.
    #[arg(long, value_name = "DIR", conflicts_with = "replay")]
    record: Option<PathBuf>,
    /// Serve the replies recorded in DIR instead of calling a provider.
    #[arg(long, value_name = "DIR")]
    replay: Option<PathBuf>,
    /// Print one JSON document: {summary, cases, recording}.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: EvalArgs, global: &Global) -> Result<()> {
    let file = CaseFile::load(&args.cases).kind(FailureKind::Usage)?;
    let cases: Vec<&eval::Case> = file
        .cases
        .iter()
        .filter(|case| args.only.is_empty() || args.only.iter().any(|only| case.id.starts_with(only)))
        .collect();
    if cases.is_empty() {
        bail!("no case matches --only {:?}", args.only.join(","));
    }
    let cassette = match (&args.record, &args.replay) {
        (Some(dir), _) => Some(Cassette::new(Mode::Record, dir)?),
        (_, Some(dir)) => Some(Cassette::new(Mode::Replay, dir).kind(FailureKind::Usage)?),
        _ => None,
    };
    let recording = match &cassette {
        Some(cassette) if cassette.mode() == Mode::Replay => Some(cassette.recording()?),
        _ => None,
    };
    let provider = match (&recording, &cassette) {
        (Some(recording), Some(cassette)) => ProviderConfig {
            // Nothing is sent anywhere: the cassette answers every request.
            kind: ProviderKind::OpenAiCompatible,
            model: recording.model.clone(),
            base_url: Some("http://replay.invalid/v1".to_owned()),
            api_key: Some(ApiKey::from("replay")),
            timeout: Duration::from_secs(60),
            retry: RetryPolicy::default(),
            cassette: Some(cassette.clone()),
        },
        _ => {
            let mut overrides = BTreeMap::new();
            if let Some(provider) = &args.provider {
                overrides.insert("AUDIENCE_PROVIDER".to_owned(), provider.clone());
            }
            if let Some(model) = &args.model {
                overrides.insert("AUDIENCE_MODEL".to_owned(), model.clone());
            }
            let mut provider = ProviderConfig::load_with(&global.data_dir, overrides)?;
            provider.cassette = cassette.clone();
            provider
        }
    };
    let config = AgentConfig::with_provider(&global.data_dir, provider.clone())?;
    // One local server for the whole run (each case's session would otherwise start and stop its own).
    let _server = match (&provider.kind, &provider.base_url) {
        (ProviderKind::Local, Some(url)) => {
            eprintln!("eval: loading the local model {} (first start takes a while)", provider.model);
            Some(local_llm::ensure(url, &provider.model, &global.data_dir).await.kind(FailureKind::Provider)?)
        }
        _ => None,
    };
    let url = std::env::var("DATABASE_URL")
        .map_err(|_| anyhow::anyhow!("DATABASE_URL is not set"))
        .kind(FailureKind::Config)?;
    let base = std::env::var("AUDIENCE_SCHEMA").unwrap_or_else(|_| DEFAULT_SCHEMA.to_owned());
    let schema = format!("{base}_eval");
    eprintln!("eval: preparing the sample in schema {schema}");
    let sample = eval::prepare_sample(&file.sample, &global.data_dir.join("eval"), &url, &schema)
        .await
        .kind(FailureKind::Store)?;

    let bar = ProgressBar::new(cases.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut results: Vec<CaseResult> = Vec::with_capacity(cases.len());
    // A replay scores the cases that were recorded; the others are listed, not guessed.
    let mut not_recorded: Vec<String> = Vec::new();
    for case in cases {
        bar.set_message(case.id.clone());
        if let Some(cassette) = &cassette {
            if !cassette.has_case(&case.id) {
                not_recorded.push(case.id.clone());
                bar.inc(1);
                continue;
            }
            cassette.start_case(&case.id)?;
        }
        let result = eval::run_case(&config, &sample, case).await?;
        if let Some(cassette) = &cassette {
            cassette.finish_case()?;
        }
        results.push(result);
        bar.inc(1);
    }
    bar.finish_and_clear();
    if let Some(cassette) = cassette.as_ref().filter(|c| c.mode() == Mode::Record) {
        cassette.write_recording(provider.kind.name(), &provider.model)?;
    }
    let summary = eval::summarize(&results, &file.thresholds);
    let prompts_changed = match (&recording, cassette.as_ref().and_then(Cassette::prompt_sha256)) {
        (Some(recording), Some(now)) => recording.prompt_sha256 != now,
        _ => false,
    };
    if args.json {
        let document = serde_json::json!({
            "summary": summary,
            "cases": results,
            "recording": recording,
            "not_recorded": not_recorded,
        });
        outln!("{}", terminal::safe_json(&document)?)?;
    } else {
        print_report(&summary, &results)?;
        if !not_recorded.is_empty() {
            outln!("not recorded, so not scored ({}): {}", not_recorded.len(), not_recorded.join(", "))?;
        }
        if let Some(recording) = &recording {
            outln!(
                "replayed: {} {} recorded on {}{}",
                recording.provider,
                recording.model,
                recording.recorded_at,
                if prompts_changed {
                    " (the prompts have changed since: these are the recorded prompts' scores)"
                } else {
                    ""
                }
            )?;
        }
    }
    if !summary.passed {
        let below: Vec<String> = summary
            .categories
            .iter()
            .filter(|c| !c.passed)
            .map(|c| format!("{} {:.3} < {:.3}", c.category.name(), c.mean_score, c.threshold))
            .collect();
        bail!("the golden set scored below its thresholds: {}", below.join(", "));
    }
    Ok(())
}

fn print_report(summary: &Summary, results: &[CaseResult]) -> Result<()> {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header([
        "category",
        "cases",
        "correct",
        "mean score",
        "threshold",
        "ok",
    ]);
    for category in &summary.categories {
        table.add_row([
            category.category.name().to_owned(),
            category.cases.to_string(),
            category.correct.to_string(),
            format!("{:.3}", category.mean_score),
            format!("{:.3}", category.threshold),
            if category.passed { "yes" } else { "NO" }.to_owned(),
        ]);
    }
    outln!("{table}")?;
    let mut calibration = Table::new();
    calibration.load_preset(UTF8_FULL_CONDENSED).set_header(["confidence", "answers", "correct", "accuracy"]);
    for level in &summary.calibration {
        calibration.add_row([
            level.level.name().to_owned(),
            level.answers.to_string(),
            level.correct.to_string(),
            format!("{:.3}", level.accuracy),
        ]);
    }
    outln!("{calibration}")?;
    outln!(
        "{} cases, {} LLM calls, {} prompt + {} completion tokens, ${:.4}, latency per case p50 {:.1} s / p95 {:.1} s",
        summary.cases,
        summary.llm_calls,
        summary.prompt_tokens,
        summary.completion_tokens,
        summary.cost_usd,
        summary.latency_p50_ms as f64 / 1000.0,
        summary.latency_p95_ms as f64 / 1000.0
    )?;
    let missed: Vec<&CaseResult> = results.iter().filter(|r| !r.correct).collect();
    if !missed.is_empty() {
        outln!("\nmissed:")?;
        for result in missed {
            let why = result.error.as_deref().unwrap_or(&result.detail);
            outln!("  {} ({:.2}): {}", result.id, result.score, terminal::safe(why))?;
        }
    }
    Ok(())
}
