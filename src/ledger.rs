//! The token and cost ledger: one usage record per question (LLM calls, prompt/completion tokens, embedding
//! tokens, cost from a price table), appended as JSON lines to `<data_dir>/usage.jsonl`, and session totals.
//!
//! Costs come from our own per-million-token price table (prompts/prices.toml, overridable), so a model
//! without a price gets `cost_usd: null` and a warning instead of a silent 0.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::exit::{FailureExt, FailureKind};

/// The price table shipped with the binary.
const BUILTIN_PRICES: &str = include_str!("../prompts/prices.toml");
const LEDGER_FILE: &str = "usage.jsonl";

/// USD per million tokens.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    pub output: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceFile {
    #[serde(default)]
    models: BTreeMap<String, Price>,
}

/// Prices by model id.
#[derive(Clone, Debug, Default)]
pub struct PriceTable {
    models: BTreeMap<String, Price>,
}

impl PriceTable {
    /// The built-in table, overlaid by `<data_dir>/prices.toml` when present, then by the file named in
    /// `AUDIENCE_PRICES_FILE` (which must exist). A bad file is a configuration error.
    pub fn load(data_dir: &Path) -> Result<Self> {
        let mut table = Self::default();
        table.overlay(BUILTIN_PRICES).context("the built-in price table is invalid")?;
        let local = data_dir.join("prices.toml");
        if local.is_file() {
            table.overlay_file(&local)?;
        }
        if let Some(path) = std::env::var_os("AUDIENCE_PRICES_FILE").filter(|v| !v.is_empty()) {
            let path = PathBuf::from(path);
            if !path.is_file() {
                bail!("AUDIENCE_PRICES_FILE names {}, which does not exist", path.display());
            }
            table.overlay_file(&path)?;
        }
        Ok(table)
    }

    fn overlay_file(&mut self, path: &Path) -> Result<()> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the price table {}", path.display()))
            .kind(FailureKind::Config)?;
        self.overlay(&text).with_context(|| format!("invalid price table {}", path.display())).kind(FailureKind::Config)
    }

    fn overlay(&mut self, text: &str) -> Result<()> {
        let file: PriceFile = toml::from_str(text)?;
        self.models.extend(file.models);
        Ok(())
    }

    pub fn get(&self, model: &str) -> Option<Price> {
        self.models.get(model).copied()
    }
}

/// Which part of the agent made an LLM call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallPurpose {
    /// A turn of the agent loop.
    Agent,
    /// The inner text-to-SQL call of `sql_analytics`.
    SqlWriter,
    /// A campaign e-mail draft (`audience draft`), a retry included.
    Draft,
    /// The names of the segments of `audience segments`, all in one call.
    SegmentNames,
}

/// Token usage and latency of one LLM call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CallUsage {
    pub purpose: CallPurpose,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// True when the provider did not report usage and the counts are a tiktoken estimate.
    pub estimated: bool,
    pub ms: u64,
    /// False for a call that got no reply (the provider failed or the question was cancelled).
    #[serde(default = "answered_default")]
    pub answered: bool,
}

fn answered_default() -> bool {
    true
}

/// The usage of one question (all its LLM calls and embeddings).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UsageRecord {
    /// RFC 3339 time the answer (or failure) was recorded.
    pub timestamp: String,
    pub provider: String,
    pub model: String,
    pub llm_calls: u32,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// True when any call's counts are estimates.
    pub estimated: bool,
    pub embedding_tokens: u64,
    pub embedding_model: String,
    /// `None` when a model has no price in the table.
    pub cost_usd: Option<f64>,
    /// Wall time of the whole question.
    pub latency_ms: u64,
    /// False when the run failed (its calls still cost tokens).
    pub ok: bool,
    pub calls: Vec<CallUsage>,
}

impl UsageRecord {
    /// Sums `calls`, and prices them (and the embedding tokens) with `prices`.
    pub fn new(
        provider: &str,
        model: &str,
        calls: Vec<CallUsage>,
        embedding_tokens: u64,
        prices: &PriceTable,
        latency_ms: u64,
        ok: bool,
    ) -> Self {
        let prompt_tokens = calls.iter().fold(0u64, |sum, c| sum.saturating_add(c.prompt_tokens));
        let completion_tokens = calls.iter().fold(0u64, |sum, c| sum.saturating_add(c.completion_tokens));
        let embedding_model = audience_tools::embed::MODEL_NAME;
        // A model that was called, even without reported tokens, needs its price: unknown is never 0.
        let llm_cost =
            if calls.is_empty() { Some(0.0) } else { price_of(prices, model, prompt_tokens, completion_tokens) };
        let embedding_cost =
            if embedding_tokens == 0 { Some(0.0) } else { price_of(prices, embedding_model, embedding_tokens, 0) };
        let cost_usd = llm_cost.zip(embedding_cost).map(|(llm, embedding)| llm + embedding);
        if cost_usd.is_none() {
            let missing = if prices.get(model).is_none() { model } else { embedding_model };
            tracing::warn!(
                "no price for model {missing:?}: cost is unknown; add it to <data_dir>/prices.toml \
                 or AUDIENCE_PRICES_FILE ([models.\"{missing}\"] input = .. output = .., USD per million tokens)"
            );
        }
        Self {
            timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            provider: provider.to_owned(),
            model: model.to_owned(),
            llm_calls: u32::try_from(calls.len()).unwrap_or(u32::MAX),
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
            estimated: calls.iter().any(|c| c.estimated),
            embedding_tokens,
            embedding_model: embedding_model.to_owned(),
            cost_usd,
            latency_ms,
            ok,
            calls,
        }
    }

    /// The one line printed after each answer.
    pub fn summary_line(&self) -> String {
        let estimated = if self.estimated { " (estimated)" } else { "" };
        format!(
            "usage: {} LLM call{} to {}, {} prompt + {} completion tokens{estimated}, {} embedding tokens, cost {}, {:.1} s",
            self.llm_calls,
            if self.llm_calls == 1 { "" } else { "s" },
            self.model,
            self.prompt_tokens,
            self.completion_tokens,
            self.embedding_tokens,
            format_cost(self.cost_usd),
            self.latency_ms as f64 / 1000.0
        )
    }
}

fn price_of(prices: &PriceTable, model: &str, input: u64, output: u64) -> Option<f64> {
    let price = prices.get(model)?;
    Some((input as f64 * price.input + output as f64 * price.output) / 1_000_000.0)
}

fn format_cost(cost: Option<f64>) -> String {
    match cost {
        Some(cost) => format!("${cost:.6}"),
        None => "unknown (no price for this model)".to_owned(),
    }
}

/// Session totals, for the REPL's `/cost`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct UsageTotals {
    pub questions: u32,
    pub llm_calls: u32,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub embedding_tokens: u64,
    /// Sum of the priced questions.
    pub cost_usd: f64,
    /// Questions whose cost is unknown (not included in `cost_usd`).
    pub unpriced_questions: u32,
    pub estimated: bool,
}

impl UsageTotals {
    pub fn add(&mut self, record: &UsageRecord) {
        self.questions += 1;
        self.llm_calls = self.llm_calls.saturating_add(record.llm_calls);
        self.prompt_tokens = self.prompt_tokens.saturating_add(record.prompt_tokens);
        self.completion_tokens = self.completion_tokens.saturating_add(record.completion_tokens);
        self.embedding_tokens = self.embedding_tokens.saturating_add(record.embedding_tokens);
        match record.cost_usd {
            Some(cost) => self.cost_usd += cost,
            None => self.unpriced_questions += 1,
        }
        self.estimated |= record.estimated;
    }

    /// Adds the calls, tokens and cost of `other`, work done for questions already counted (the drafts a question
    /// asked for, written and logged by their batch).
    pub fn absorb(&mut self, other: &UsageTotals) {
        self.llm_calls = self.llm_calls.saturating_add(other.llm_calls);
        self.prompt_tokens = self.prompt_tokens.saturating_add(other.prompt_tokens);
        self.completion_tokens = self.completion_tokens.saturating_add(other.completion_tokens);
        self.embedding_tokens = self.embedding_tokens.saturating_add(other.embedding_tokens);
        self.cost_usd += other.cost_usd;
        self.unpriced_questions = self.unpriced_questions.saturating_add(other.unpriced_questions);
        self.estimated |= other.estimated;
    }

    pub fn summary_line(&self) -> String {
        let unpriced = match self.unpriced_questions {
            0 => String::new(),
            n => format!(" (+{n} question(s) with unknown cost)"),
        };
        format!(
            "session: {} question(s), {} LLM calls, {} prompt + {} completion tokens{}, {} embedding tokens, cost ${:.6}{unpriced}",
            self.questions,
            self.llm_calls,
            self.prompt_tokens,
            self.completion_tokens,
            if self.estimated { " (partly estimated)" } else { "" },
            self.embedding_tokens,
            self.cost_usd
        )
    }
}

/// The usage log on disk plus the running session totals.
#[derive(Clone, Debug)]
pub struct Ledger {
    path: PathBuf,
    prices: PriceTable,
    totals: UsageTotals,
}

impl Ledger {
    /// Loads the price table; the log file is created on the first record.
    pub fn open(data_dir: &Path) -> Result<Self> {
        let prices = PriceTable::load(data_dir).kind(FailureKind::Config)?;
        Ok(Self { path: data_dir.join(LEDGER_FILE), prices, totals: UsageTotals::default() })
    }

    pub fn prices(&self) -> &PriceTable {
        &self.prices
    }

    pub fn totals(&self) -> &UsageTotals {
        &self.totals
    }

    /// Adds to the session's totals work another ledger already logged (see [`UsageTotals::absorb`]).
    pub fn absorb(&mut self, totals: &UsageTotals) {
        self.totals.absorb(totals);
    }

    /// Adds the record to the totals and appends it to the log. A log that cannot be written costs a
    /// warning, not the answer.
    pub fn record(&mut self, record: &UsageRecord) {
        self.totals.add(record);
        if let Err(error) = self.append(record) {
            tracing::warn!("cannot append to the usage ledger {}: {error:#}", self.path.display());
        }
    }

    fn append(&self, record: &UsageRecord) -> Result<()> {
        if let Some(parent) = self.path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut line = serde_json::to_string(record)?;
        line.push('\n');
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&self.path)?;
        // One write per line keeps concurrent appenders (two shells) from interleaving within a record.
        file.write_all(line.as_bytes())?;
        Ok(())
    }
}

/// A tiktoken (o200k_base) count, used when the provider reports no usage. It is an estimate for
/// non-OpenAI models, which is why records carry the `estimated` flag.
pub fn estimate_tokens(text: &str) -> u64 {
    tiktoken_rs::o200k_base_singleton().encode_with_special_tokens(text).len() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(prompt: u64, completion: u64, estimated: bool) -> CallUsage {
        CallUsage {
            purpose: CallPurpose::Agent,
            prompt_tokens: prompt,
            completion_tokens: completion,
            estimated,
            ms: 5,
            answered: true,
        }
    }

    fn table() -> PriceTable {
        let mut table = PriceTable::default();
        table.overlay(BUILTIN_PRICES).unwrap();
        table
    }

    #[test]
    fn sums_calls_and_prices_them() {
        let record = UsageRecord::new(
            "openai",
            "gpt-4o-mini",
            vec![call(1_000_000, 0, false), call(0, 1_000_000, true)],
            500,
            &table(),
            1234,
            true,
        );
        assert_eq!(record.llm_calls, 2);
        assert_eq!(record.prompt_tokens, 1_000_000);
        assert_eq!(record.completion_tokens, 1_000_000);
        assert_eq!(record.total_tokens, 2_000_000);
        assert!(record.estimated);
        let cost = record.cost_usd.unwrap();
        assert!((cost - 0.75).abs() < 1e-9, "{cost}");
        assert!(record.summary_line().contains("cost $0.750000"), "{}", record.summary_line());
    }

    #[test]
    fn unknown_model_has_no_cost() {
        let record = UsageRecord::new("openai", "mystery-model", vec![call(10, 10, false)], 0, &table(), 1, true);
        assert_eq!(record.cost_usd, None);
        assert!(record.summary_line().contains("unknown"));
        let mut totals = UsageTotals::default();
        totals.add(&record);
        assert_eq!(totals.unpriced_questions, 1);
        assert_eq!(totals.cost_usd, 0.0);
    }

    #[test]
    fn every_default_model_is_priced() {
        use crate::provider::ProviderKind;
        let table = table();
        for kind in ProviderKind::ALL {
            assert!(table.get(kind.default_model()).is_some(), "{} has no price", kind.default_model());
        }
        assert!(table.get(audience_tools::embed::MODEL_NAME).is_some());
    }

    #[test]
    fn overrides_replace_builtin_prices() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("prices.toml"), "[models.\"gpt-4o-mini\"]\ninput = 1.0\noutput = 2.0\n")
            .unwrap();
        let table = PriceTable::load(dir.path()).unwrap();
        assert_eq!(table.get("gpt-4o-mini"), Some(Price { input: 1.0, output: 2.0 }));
        std::fs::write(dir.path().join("prices.toml"), "[models.x]\ninput = \"free\"\n").unwrap();
        assert!(PriceTable::load(dir.path()).is_err());
    }

    #[test]
    fn ledger_appends_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(dir.path()).unwrap();
        let record =
            UsageRecord::new("openai", "gpt-4o-mini", vec![call(100, 20, false)], 7, ledger.prices(), 10, true);
        ledger.record(&record);
        ledger.record(&record);
        let text = std::fs::read_to_string(dir.path().join(LEDGER_FILE)).unwrap();
        let lines: Vec<UsageRecord> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines, vec![record.clone(), record]);
        assert_eq!(ledger.totals().questions, 2);
        assert_eq!(ledger.totals().prompt_tokens, 200);
    }

    #[test]
    fn estimates_tokens() {
        assert!(estimate_tokens("hello world, this is a test") >= 5);
        assert_eq!(estimate_tokens(""), 0);
    }
}
