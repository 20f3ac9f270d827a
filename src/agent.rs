//! The agent: a rig loop over the tools (`registry::TOOLS`), built per question with schemas that carry the values
//! grounded for it, where every turn is a constrained tool call (see `agent_hook`); an explicit turn budget,
//! conversation history for follow-ups, the conversation's audience, a trace of every step and a usage record per
//! question. A found audience, a metrics report, the summary of drafts written, a reply or a clarifying question is
//! the answer, rendered by the program.
//!
//! [`Session`] is the API the `ask` command and the REPL use:
//! `Session::new(config, stores, verbose)`, then `ask(question)` any number of times (each question sees the
//! previous ones and edits the same audience, so follow-ups refine), `audience()`, `reset()` and `totals()`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, anyhow};
use audience_tools::audience::lookalike::Lookalike;
use audience_tools::audience::refine::{self, FollowUp};
use audience_tools::audience::saved::SavedAudiences;
use audience_tools::audience::{AudienceReport, AudienceSession, FindAudience};
use audience_tools::clarify::{AskClarification, Clarification};
use audience_tools::dataset::Dataset;
use audience_tools::failure::ToolFailure;
use audience_tools::grounding::Grounding;
use audience_tools::metrics::{Metrics, MetricsReport};
use audience_tools::question::{Current, Prepared, Vocabulary, prepare};
use audience_tools::registry;
use audience_tools::respond::Respond;
use audience_tools::segments;
use audience_tools::sql_analytics::SqlAnalytics;
use audience_tools::sql_data_retriever::SqlDataRetriever;
use audience_tools::stores::Stores;
use audience_tools::trace::TracedTool;
use audience_tools::triage::{Context as TriageContext, Triage, triage};
use audience_tools::vocabulary::Offered;
use rig_agent::completion::PromptError;
use rig_agent::{Agent, AgentBuilder};
use serde::Serialize;
use tokio::sync::OnceCell;

pub use crate::agent_hook::Step;
use crate::agent_hook::{Offerable, RunLog, SharedLog, TraceHook, lock};
use crate::confidence::{self, Confidence, Evidence};
use crate::drafts::batch::DraftSummary;
use crate::drafts::tool::{DraftEmails, DraftModel};
use crate::exit::{Failure, FailureExt, FailureKind};
use crate::ledger::{Ledger, UsageRecord, UsageTotals};
use crate::local_llm::{self, LocalServer};
use crate::provider::{ChatModel, ProviderConfig, ProviderKind, ReportedUsage, Settings};
use crate::render::one_line;

/// Model calls allowed per question, the first included (`AUDIENCE_MAX_TURNS`). A typical question takes one
/// (the call, whose result the program renders), two with a repair; an analytics question three (the call, its
/// text-to-SQL call, the answer in words). The budget is a backstop.
pub const DEFAULT_MAX_TURNS: usize = 6;
/// Times the model is told "no such tool" before the run fails.
pub const DEFAULT_UNKNOWN_TOOL_RETRIES: usize = 1;
/// Earlier questions kept in the conversation (older ones are dropped to bound the prompt size).
const HISTORY_QUESTIONS: usize = 4;
/// Characters of an earlier answer the prompt repeats: its gist, not its member table.
const EARLIER_ANSWER_CHARS: usize = 160;

const SYSTEM_PROMPT: &str = include_str!("../prompts/system.md");

/// Everything a session needs besides the stores.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub provider: ProviderConfig,
    /// Where the usage ledger and the optional price and config files live.
    pub data_dir: PathBuf,
    pub max_turns: usize,
    pub unknown_tool_retries: usize,
}

impl AgentConfig {
    /// Provider settings plus `AUDIENCE_MAX_TURNS`; errors are configuration errors (exit 2).
    pub fn load(data_dir: &Path) -> Result<Self> {
        Self::with_provider(data_dir, ProviderConfig::load(data_dir)?)
    }

    /// The configuration for `provider` (the turn budget still comes from the settings).
    pub fn with_provider(data_dir: &Path, provider: ProviderConfig) -> Result<Self> {
        let settings = Settings::load(data_dir).kind(FailureKind::Config)?;
        let max_turns = match settings.get("AUDIENCE_MAX_TURNS") {
            None => DEFAULT_MAX_TURNS,
            Some(value) => value
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|turns| *turns >= 1)
                .ok_or_else(|| anyhow!("AUDIENCE_MAX_TURNS={value:?} must be a whole number of at least 1"))
                .kind(FailureKind::Config)?,
        };
        Ok(Self {
            provider,
            data_dir: data_dir.to_owned(),
            max_turns,
            unknown_tool_retries: DEFAULT_UNKNOWN_TOOL_RETRIES,
        })
    }
}

/// What an answer is: an answer, or a clarifying question instead of one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AnswerKind {
    Answer,
    Clarification,
}

/// The answer to one question.
#[derive(Clone, Debug, Serialize)]
pub struct Answer {
    /// `answer`, or `clarification` when the request was ambiguous and the agent asks which meaning is wanted.
    pub kind: AnswerKind,
    /// The model's final text (for a clarification: the question and its numbered options).
    #[serde(rename = "answer")]
    pub text: String,
    /// The clarifying question and its options, when `kind` is `clarification`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clarification: Option<Clarification>,
    /// How far the answer can be trusted, judged from the tool results without the LLM.
    pub confidence: Confidence,
    /// The audience this question's last `find_audience` call evaluated: definition, size, breakdown, members.
    pub audience: Option<AudienceReport>,
    /// The report of this question's `metrics` call: each value or row, the definitions used, the SQL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsReport>,
    /// What this question's `draft_emails` call wrote: the counts and the file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drafts: Option<DraftSummary>,
    /// Thought / Action / Observation steps, in order.
    pub steps: Vec<Step>,
    pub usage: UsageRecord,
}

/// Names used in usage records.
#[derive(Clone, Debug)]
struct ModelLabel {
    provider: String,
    model: String,
}

/// A conversation with the agent. Not `Clone`: it owns the history and the ledger totals.
pub struct Session {
    /// The model every question's agent is built on: the agent is built per question, because the tool schemas
    /// carry the values grounded for it.
    model: ChatModel,
    /// What the provider reported for each agent call, read off the transport (none for a model built in-process).
    reported: ReportedUsage,
    /// The data's values, their embeddings and the example library, read on the first question.
    data: Arc<OnceCell<Arc<Vocabulary>>>,
    /// Whether the provider constrains tool calls to their schema (the local llama-server).
    constrained: bool,
    /// Fields every request of the provider carries besides the standard ones (see `ProviderKind::request_params`).
    request_params: Option<serde_json::Value>,
    label: ModelLabel,
    /// Requests `draft_emails` keeps in flight (one for the local model).
    draft_concurrency: usize,
    /// Where `draft_emails` writes and finds edited draft prompts, and the ledger is.
    data_dir: PathBuf,
    max_turns: usize,
    unknown_tool_retries: usize,
    verbose: bool,
    /// The messages of each earlier question's run (prompt, tool calls, results, answer).
    /// The earlier questions and the gist of their answers, told to the model inside the question's own message.
    /// Not as chat messages: after an assistant message in plain text, llama-server lets the 1.5B model answer in
    /// text although a tool call is required (it copied its earlier answer in every refinement chain).
    earlier: Vec<Exchange>,
    ledger: Ledger,
    /// The audience the conversation works on; the host keeps it, so it outlives the trimmed history.
    audience: AudienceSession,
    /// Where saved audiences are looked up: `lookalike` is offered only when there is something to grow.
    saved: Option<SavedAudiences>,
    last_usage: Option<UsageRecord>,
    /// The clarifying question the last answer asked, whose options a numbered reply picks.
    pending: Option<Clarification>,
    /// Redacts the API key from provider error messages.
    redact: Arc<dyn Fn(&str) -> String + Send + Sync>,
    /// The local model server this session started, stopped when the session ends.
    _local_server: Option<LocalServer>,
    /// For the confidence check of intents: the stores, and the words of the profile texts once read.
    stores: Stores,
    vocabulary: Option<HashSet<String>>,
    /// The segments of the last segments answer: k-means with the silhouette takes seconds at 100k customers, so a
    /// second question of the session reuses them while the data's version is the same.
    segments: Option<Arc<segments::SegmentReport>>,
}

impl Session {
    /// Builds the model from `config.provider` and the agent over `stores`. `verbose` prints each step to
    /// stderr as it happens.
    pub async fn new(config: AgentConfig, stores: Stores, verbose: bool) -> Result<Self> {
        let local_server = match (&config.provider.kind, &config.provider.base_url) {
            (ProviderKind::Local, Some(url)) => Some(
                local_llm::ensure(url, &config.provider.model, &config.data_dir).await.kind(FailureKind::Provider)?,
            ),
            _ => None,
        };
        let (model, reported) = config.provider.agent_model()?;
        let ledger = Ledger::open(&config.data_dir)?;
        let label =
            ModelLabel { provider: config.provider.kind.name().to_owned(), model: config.provider.model.clone() };
        let provider = config.provider.clone();
        let mut session = Self::with_model(model, label, &config, stores, ledger, verbose);
        session.reported = reported;
        session.constrained = config.provider.constrains_calls();
        session.request_params = config.provider.kind.request_params();
        session.redact = Arc::new(move |text: &str| provider.redact(text));
        session._local_server = local_server;
        Ok(session)
    }

    fn with_model(
        model: ChatModel,
        label: ModelLabel,
        config: &AgentConfig,
        stores: Stores,
        ledger: Ledger,
        verbose: bool,
    ) -> Self {
        let audience = AudienceSession::default();
        let saved = SavedAudiences::new(&stores.db).ok();
        Self {
            model,
            reported: ReportedUsage::default(),
            data: Arc::new(OnceCell::new()),
            constrained: false,
            request_params: None,
            label,
            draft_concurrency: config.provider.kind.concurrency(None),
            data_dir: config.data_dir.clone(),
            max_turns: config.max_turns,
            unknown_tool_retries: config.unknown_tool_retries,
            verbose,
            earlier: Vec::new(),
            ledger,
            audience,
            saved,
            last_usage: None,
            pending: None,
            redact: Arc::new(str::to_owned),
            _local_server: None,
            stores,
            vocabulary: None,
            segments: None,
        }
    }

    /// Runs the loop for `question` with the conversation so far. The usage is recorded in the ledger even
    /// when the run fails; a failed run leaves the history unchanged.
    ///
    /// Errors carry their exit kind: provider failures, an exhausted turn budget and repeated unknown tool
    /// names are `Provider` (exit 3); a fatal tool failure (database down) is `Store` (exit 4).
    pub async fn ask(&mut self, question: &str) -> Result<Answer> {
        self.ask_until(question, std::future::pending()).await?.ok_or_else(|| anyhow!("the question was cancelled"))
    }

    /// [`Self::ask`], abandoned when `cancel` completes first (the REPL's Ctrl-C): then `Ok(None)`. The tokens
    /// the cancelled run already spent are still recorded in the ledger, and the history is left unchanged.
    pub async fn ask_until(&mut self, question: &str, cancel: impl Future<Output = ()>) -> Result<Option<Answer>> {
        let log = SharedLog::default();
        let start = Instant::now();
        // A reply of "2" to a clarifying question means its second option.
        let chosen = self.pending.take().and_then(|asked| asked.chosen(question));
        let question = chosen.as_deref().unwrap_or(question);
        let earlier = conversation(&self.earlier);
        let data = self.data().await?;
        let asked = question.to_owned();
        let definition = self.audience.current();
        let text = current_audience(&self.audience);
        let current = definition.as_ref().zip(text.as_deref()).map(|(definition, text)| Current { definition, text });
        let prepared =
            prepare(&self.stores, &data, question, current, earlier.as_deref()).await.kind(FailureKind::Store)?;
        if let Some(answer) = self.answered_here(&asked, &prepared, &data, start).await {
            return Ok(Some(answer));
        }
        let prompt = prepared.prompt.clone();
        let grounding = Arc::new((prepared.grounding.clone(), prepared.offered.clone()));
        // A lookalike needs a seed: the conversation's audience or a saved one. Without either its schema would
        // only add tokens to every call. A lookup that fails offers it (the tool then says what is wrong).
        let can_grow = self.audience.current().is_some()
            || match &self.saved {
                Some(saved) => saved.any().await.unwrap_or(true),
                None => false,
            };
        // Drafts are of the conversation's audience: without one there is nothing to write to.
        let offerable =
            Offerable { lookalike: can_grow, drafts: self.audience.current().is_some(), number: prepared.number };
        let find_audience = FindAudience::new(self.stores.clone(), self.audience.clone()).for_question(
            &prepared.offered,
            Arc::new(data.values.clone()),
            definition.as_ref(),
        );
        let draft_model = DraftModel {
            model: self.model.clone(),
            provider: self.label.provider.clone(),
            model_name: self.label.model.clone(),
            concurrency: self.draft_concurrency,
        };
        let draft_emails = DraftEmails::new(self.stores.clone(), self.audience.clone(), draft_model, &self.data_dir);
        let agent = build_agent(
            self.model.clone(),
            self.stores.clone(),
            self.max_turns,
            self.audience.clone(),
            QuestionTools { find_audience, draft_emails },
            &prepared.offered,
            self.request_params.clone(),
        );
        let hook = TraceHook::new(log.clone(), self.verbose, offerable)
            .grounded(grounding)
            .editing(definition.clone())
            .constrained(self.constrained);
        // Counts left from an earlier question (or this question's model-free steps) are not this run's.
        self.reported.take();
        let run_future = agent
            .prompt(prompt)
            .max_turns(self.max_turns)
            .max_invalid_tool_call_retries(self.unknown_tool_retries)
            .add_hook(hook)
            .into_future();
        let result = tokio::select! {
            result = run_future => Some(result),
            () = cancel => None,
        };
        let mut run = std::mem::take(&mut *lock(&log));
        // The hook asks again after an empty turn, but a run can still end on one (a provider that closes a turn
        // without content): that is the provider failing, not an answer.
        let answered = run.clarification.is_some()
            || run.reply.is_some()
            || run.audience_found
            || run.metrics.is_some()
            || run.drafts.is_some()
            || run.records.is_some()
            || matches!(&result, Some(Ok(response)) if !response.output().trim().is_empty());
        match &result {
            Some(Ok(response)) => {
                let reported: Vec<_> = response.completion_calls.iter().map(|call| call.usage).collect();
                run.reconcile(&reported);
            }
            _ => {
                run.record_unanswered_call();
                // rig's error carries no usage: the transport's record of what the provider counted does.
                run.reconcile(&self.reported.take());
            }
        }
        let latency_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let usage = UsageRecord::new(
            &self.label.provider,
            &self.label.model,
            run.calls.clone(),
            run.embedding_tokens,
            self.ledger.prices(),
            latency_ms,
            answered,
        );
        self.ledger.record(&usage);
        self.last_usage = Some(usage.clone());
        let Some(result) = result else { return Ok(None) };
        if let Some(clarification) = run.clarification.take() {
            // The run stopped on the question: the user's reply is the next turn, so the history keeps both.
            let text = clarification.render();
            self.remember(asked, &text);
            self.pending = Some(clarification.clone());
            let confidence = Confidence {
                level: confidence::Level::Medium,
                reasons: vec!["the request can mean different audiences; the agent asks which".to_owned()],
            };
            return Ok(Some(Answer {
                kind: AnswerKind::Clarification,
                text,
                clarification: Some(clarification),
                confidence,
                audience: None,
                metrics: None,
                drafts: None,
                steps: run.steps,
                usage,
            }));
        }
        let audience = if run.audience_found { self.audience.last_report() } else { None };
        let metrics = run.metrics.take();
        let drafts = run.drafts.take();
        let records = run.records.take();
        if let Some(summary) = &drafts {
            self.absorb_usage(&summary.usage);
        }
        let text = match (&run.reply, &audience, &metrics, &drafts) {
            (Some(reply), _, _, _) => reply.text.clone(),
            (None, None, None, None) if let Some(records) = &records => crate::render::records_answer(records),
            (None, Some(report), _, _) => crate::render::audience_answer(report, &run.dropped, &run.settled),
            (None, None, Some(report), _) => {
                crate::render::with_host_notes(crate::render::metrics::answer(report), &run.dropped, &run.settled)
            }
            (None, None, None, Some(summary)) => {
                crate::render::with_host_notes(crate::render::drafts_answer(summary), &run.dropped, &run.settled)
            }
            (None, None, None, None) => {
                let response = result.map_err(|error| self.run_error(error, &run))?;
                if !answered {
                    return Err(tagged(FailureKind::Provider, "the model returned an empty answer".to_owned()));
                }
                response.output()
            }
        };
        // The history keeps the question and its answer: the current audience is the host's, told to the model
        // with every question, and the examples and hints of an earlier question would only cost tokens.
        self.remember(asked, &text);
        let run_audience = audience;
        let vocabulary = match run_audience.as_ref().and_then(|report| report.definition.intent.as_ref()) {
            Some(_) => self.vocabulary().await,
            None => None,
        };
        let calls: Vec<(String, bool)> = run.steps.iter().map(|step| (step.tool.clone(), step.ok)).collect();
        let confidence = confidence::assess(&Evidence {
            question,
            answer: &text,
            calls: &calls,
            outputs: &run.outputs,
            host_notes: &[run.dropped.as_slice(), run.settled.as_slice()].concat(),
            audience: run_audience.as_ref(),
            vocabulary,
        });
        Ok(Some(Answer {
            kind: AnswerKind::Answer,
            text,
            clarification: None,
            confidence,
            audience: run_audience,
            metrics,
            drafts,
            steps: run.steps,
            usage,
        }))
    }

    /// The data's vocabulary, read on the first question (a missing or unreadable dataset is a store error).
    async fn data(&self) -> Result<Arc<Vocabulary>> {
        self.data.get_or_try_init(|| Vocabulary::load(&self.stores)).await.cloned().kind(FailureKind::Store)
    }

    /// The answer the program gives without the model ([`triage`]): a refusal of a request to change data, a
    /// clarifying question for a request that names no criterion or refers to nothing named yet, or, for a question
    /// that names a product the data does not have ("bought kayaks"), that nothing matches (an audience without that
    /// condition would be the wrong answer). `None` leaves the question to the model.
    async fn answered_here(
        &mut self,
        asked: &str,
        prepared: &Prepared,
        data: &Vocabulary,
        start: Instant,
    ) -> Option<Answer> {
        let saved: Vec<String> = match (&self.saved, self.audience.current()) {
            (Some(saved), None) => saved.list().await.map(|list| list.into_iter().map(|s| s.name).collect()),
            _ => Ok(Vec::new()),
        }
        .unwrap_or_default();
        let context = TriageContext {
            values: &data.values,
            has_current: self.audience.current().is_some(),
            saved: &saved,
            high_spend: data.high_spend,
        };
        let unmatched = &prepared.grounding.unmatched;
        let (kind, text, clarification, reason) = match triage(&prepared.grounding, &context) {
            Triage::ChangesData(request) => (
                AnswerKind::Answer,
                "I can't do that: audience only reads your data (its database login is read-only), so it cannot \
                 change, add or delete customers, events or tables. I can find, count, explain or export an audience \
                 instead."
                    .to_owned(),
                None,
                format!("the question asks to change stored data ({request}); the tool only reads"),
            ),
            _ if !unmatched.is_empty() && !data.values.products.is_empty() => {
                let shown: Vec<&str> = data.values.products.iter().take(20).map(String::as_str).collect();
                let more = data.values.products.len().saturating_sub(shown.len());
                let more = if more > 0 { format!(" and {more} more") } else { String::new() };
                let words: Vec<String> = unmatched.iter().map(|word| format!("\"{word}\"")).collect();
                let text = format!(
                    "Nothing in the data matches {}, so no audience was built. The products are: {}{more}.",
                    words.join(" or "),
                    shown.join(", ")
                );
                (AnswerKind::Answer, text, None, format!("no product in the data is named {}", words.join(" or ")))
            }
            Triage::Unclear(question) => (
                AnswerKind::Clarification,
                question.render(),
                Some(question),
                "the request names no criterion, or refers to something not named yet; the agent asks which".to_owned(),
            ),
            Triage::Segments(products) => {
                let (text, reason) = self.segments_answer(&products).await;
                (AnswerKind::Answer, text, None, reason)
            }
            Triage::Model => return self.swapped_here(asked, data, start).await,
        };
        let usage = self.record_model_free(start);
        self.remember(asked.to_owned(), &text);
        self.pending = clarification.clone();
        let level = if clarification.is_some() { confidence::Level::Medium } else { confidence::Level::High };
        Some(Answer {
            kind,
            text,
            clarification,
            confidence: Confidence { level, reasons: vec![reason] },
            audience: None,
            metrics: None,
            drafts: None,
            steps: Vec::new(),
            usage,
        })
    }

    /// A follow-up that only swaps one value for another ("same but for France instead"), edited by the program
    /// ([`refine::swap`]) and answered as any found audience is. `None` leaves it to the model, as does an edit the
    /// tool refuses (the model then gets the question, and the tool's reason if it makes the same edit).
    async fn swapped_here(&mut self, asked: &str, data: &Vocabulary, start: Instant) -> Option<Answer> {
        let current = self.audience.current()?;
        let grounding = Grounding::of(asked, &data.values, data.as_of);
        let swap = refine::swap(&current, &grounding, FollowUp::of(grounding.sequence()))?;
        let report = FindAudience::new(self.stores.clone(), self.audience.clone()).run(swap.edit).await.ok()?;
        let text = crate::render::audience_answer(&report, &[], std::slice::from_ref(&swap.note));
        let usage = self.record_model_free(start);
        self.remember(asked.to_owned(), &text);
        let reason =
            format!("the follow-up only swaps one value for another ({}): an edit made without the model", swap.note);
        Some(Answer {
            kind: AnswerKind::Answer,
            text,
            clarification: None,
            confidence: Confidence { level: confidence::Level::High, reasons: vec![reason] },
            audience: Some(report),
            metrics: None,
            drafts: None,
            steps: Vec::new(),
            usage,
        })
    }

    /// Records an answer the program gave without a model call: its latency, and no tokens.
    fn record_model_free(&mut self, start: Instant) -> UsageRecord {
        let latency_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let usage = UsageRecord::new(
            &self.label.provider,
            &self.label.model,
            Vec::new(),
            0,
            self.ledger.prices(),
            latency_ms,
            true,
        );
        self.ledger.record(&usage);
        self.last_usage = Some(usage.clone());
        usage
    }

    /// The answer to "what kinds of customers do we have?" (and "which segment should get PRODUCTS?"): k-means
    /// segments of the profiles with the CLI's defaults, k chosen by silhouette. Its reason says how it was computed;
    /// a failure is said in the answer, as a triage answer has no error path.
    async fn segments_answer(&mut self, products: &[String]) -> (String, String) {
        let (report, reused) = match self.current_segments().await {
            Ok(current) => current,
            Err(failure) => {
                let reason = format!("the customers cannot be segmented: {failure}");
                return (format!("I could not find segments: {failure}"), reason);
            }
        };
        let mut text = crate::render::segments::report(&report);
        if !products.is_empty() {
            match segments::match_products(&report, products) {
                Ok(matched) => text = format!("{}\n\n{text}", crate::render::segments::product_match(&matched)),
                Err(failure) => text = format!("{failure}\n\n{text}"),
            }
        }
        let mut reason = format!(
            "computed by k-means over {} customers' profiles (k = {} by silhouette, seed {}), without the model",
            report.customers, report.chosen_k, report.seed
        );
        if reused {
            reason.push_str(", for an earlier answer: the data has not changed since");
        }
        (text, reason)
    }

    /// The segments of the data as it is now: those of an earlier answer while the data's version is unchanged,
    /// else computed anew with the CLI's defaults.
    /// Says whether they are an earlier answer's.
    async fn current_segments(&mut self) -> Result<(Arc<segments::SegmentReport>, bool), ToolFailure> {
        let version = Dataset::version(&self.stores.db).await.map_err(ToolFailure::Fatal)?;
        if let Some(report) = self.segments.as_ref().filter(|report| report.data_version == version) {
            return Ok((Arc::clone(report), true));
        }
        let report = Arc::new(segments::compute(&self.stores, &segments::SegmentOptions::default()).await?);
        self.segments = Some(Arc::clone(&report));
        Ok((report, false))
    }

    fn remember(&mut self, question: String, answer: &str) {
        let answer = answer.lines().find(|line| !line.trim().is_empty()).unwrap_or_default();
        self.earlier.push(Exchange { question, answer: one_line(answer, EARLIER_ANSWER_CHARS) });
        if self.earlier.len() > HISTORY_QUESTIONS {
            self.earlier.remove(0);
        }
    }

    /// The words of the customers' profile texts (a sample: the texts are built from a small vocabulary), read
    /// once per session; `None` when they cannot be read (the check is then skipped, not failed).
    async fn vocabulary(&mut self) -> Option<&HashSet<String>> {
        if self.vocabulary.is_none() {
            let texts: Vec<String> =
                sqlx::query_scalar("SELECT profile_text FROM profiles ORDER BY customer_id LIMIT 5000")
                    .fetch_all(&self.stores.db.pool)
                    .await
                    .ok()?;
            self.vocabulary = Some(texts.iter().flat_map(|text| confidence::words(text)).collect());
        }
        self.vocabulary.as_ref()
    }

    /// Forgets the conversation and the last audience (the session totals stay).
    pub fn reset(&mut self) {
        self.earlier.clear();
        self.audience.reset();
    }

    /// Usage totals of this session.
    pub fn totals(&self) -> &UsageTotals {
        self.ledger.totals()
    }

    /// Counts in the session's totals model work done for it outside its questions' runs (drafts written by a
    /// batch, which logged each draft itself).
    pub fn absorb_usage(&mut self, totals: &UsageTotals) {
        self.ledger.absorb(totals);
    }

    /// The conversation's audience: its current definition, its undo history and its last evaluation.
    pub fn audience(&self) -> &AudienceSession {
        &self.audience
    }

    /// The usage record of the latest question, including a failed one.
    pub fn last_usage(&self) -> Option<&UsageRecord> {
        self.last_usage.as_ref()
    }

    /// Turns the live step trace on stderr on or off for the next questions.
    pub fn set_verbose(&mut self, verbose: bool) {
        self.verbose = verbose;
    }

    /// The model id the session talks to.
    pub fn model(&self) -> &str {
        &self.label.model
    }

    /// A one-line error with its exit kind.
    fn run_error(&self, error: PromptError, run: &RunLog) -> anyhow::Error {
        if let Some(fatal) = &run.fatal {
            let kind = if run.fatal_in_provider { FailureKind::Provider } else { FailureKind::Store };
            return tagged(kind, error_line(&(self.redact)(fatal)));
        }
        let message = match &error {
            PromptError::MaxTurns { max_turns, .. } => format!(
                "the agent did not reach an answer within {max_turns} model calls (AUDIENCE_MAX_TURNS); \
                 ask a narrower question or raise the budget"
            ),
            PromptError::UnknownToolCall { tool_name, .. } if registry::find(tool_name).is_some() => format!(
                "the model kept calling `{tool_name}` at a step it cannot follow (the question's tool calls were \
                 used up, or another step had to come first)"
            ),
            PromptError::UnknownToolCall { tool_name, .. } => {
                let names: Vec<&str> = registry::TOOLS.iter().map(|tool| tool.name).collect();
                format!(
                    "the model kept calling a tool that does not exist (`{tool_name}`; the tools are {})",
                    names.join(", ")
                )
            }
            other => {
                let detail = error_line(&(self.redact)(&error_chain(other)));
                // A request that got no reply at all: say where we tried to go.
                let hint = if detail.contains("error sending request") {
                    "; is the provider reachable (AUDIENCE_BASE_URL, network, AUDIENCE_TIMEOUT_SECS)?"
                } else {
                    ""
                };
                format!("LLM provider request failed: {detail}{hint}")
            }
        };
        tagged(FailureKind::Provider, message)
    }
}

fn tagged(kind: FailureKind, message: String) -> anyhow::Error {
    anyhow::Error::msg(message).context(Failure(kind))
}

/// An error and its sources, without repeating a source its parent already printed.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Collapses whitespace (provider bodies are multi-line JSON) and caps the length.
fn error_line(text: &str) -> String {
    one_line(text, 400)
}

/// One earlier question and the gist of its answer.
struct Exchange {
    question: String,
    answer: String,
}

/// The earlier exchanges as the prompt tells them, or `None` at the start of a conversation.
fn conversation(earlier: &[Exchange]) -> Option<String> {
    if earlier.is_empty() {
        return None;
    }
    let lines: Vec<String> = earlier.iter().map(|e| format!("- \"{}\" -> {}", e.question, e.answer)).collect();
    Some(lines.join("\n"))
}

/// The current audience as the model is told it: each clause by id, and the intent.
fn current_audience(audience: &AudienceSession) -> Option<String> {
    let definition = audience.current()?;
    let clauses: Vec<String> = definition
        .clauses()
        .map(|(clause, exclude)| {
            format!("{} {} {}", clause.id, if exclude { "exclude" } else { "include" }, clause.rule.predicate())
        })
        .collect();
    let intent = definition.intent.as_deref().map(|i| format!("; intent: {i}")).unwrap_or_default();
    let clauses = if clauses.is_empty() { "no clauses".to_owned() } else { clauses.join("; ") };
    Some(format!("{clauses}{intent}"))
}

/// The system prompt: prompts/system.md. It carries no schema: every call resends it, so the columns a
/// tool's arguments refer to are described by that tool, and sent only while the tool is offered.
pub fn system_prompt() -> String {
    SYSTEM_PROMPT.trim().to_owned()
}

/// Output tokens one agent call may produce: an answer of a few sentences or one tool call (an audience edit of
/// several clauses takes under 150). It also bounds what a
/// runaway model can write into the conversation (a megabyte "condition"), which every later call would resend.
pub const MAX_OUTPUT_TOKENS: u64 = 300;

/// The tools built for each question besides the fixed ones.
struct QuestionTools {
    /// With the question's schema.
    find_audience: FindAudience,
    /// Over the conversation's audience, with the session's model.
    draft_emails: DraftEmails,
}

/// The agent of one question: the tools, with `find_audience` offered with the question's schema. Temperature 0:
/// the same question gets the same call, and the recorded golden set replays.
fn build_agent(
    model: ChatModel,
    stores: Stores,
    max_turns: usize,
    audience: AudienceSession,
    question_tools: QuestionTools,
    offered: &Offered,
    request_params: Option<serde_json::Value>,
) -> Agent {
    let builder = AgentBuilder::new(model.clone());
    let builder = match request_params {
        Some(params) => builder.additional_params(params),
        None => builder,
    };
    builder
        .preamble(system_prompt())
        .max_tokens(MAX_OUTPUT_TOKENS)
        .temperature(0.0)
        .default_max_turns(max_turns)
        // `find_audience` last: its schema changes with the audience (the clause ids `remove` names), and the prompt
        // caches of llama-server and the hosted providers keep the longest unchanged prefix.
        .tool(Lookalike::new(stores.clone(), audience).for_question(offered))
        .tool(Metrics::new(stores.clone(), offered))
        .tool(SqlAnalytics::new(stores.clone(), model))
        .tool(SqlDataRetriever::new(stores))
        .tool(question_tools.draft_emails)
        .tool(AskClarification)
        .tool(Respond)
        .tool(question_tools.find_audience)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::Failure;
    use crate::provider::{ProviderKind, RetryPolicy};
    use audience_tools::db::{Db, ReadLimits};
    use audience_tools::embed::LazyEmbedder;
    use audience_tools::paths;
    use audience_tools::schema::{READER_ROLE, TABLES};
    use audience_tools::vector::VectorSearch;
    use audience_tools::vector::edge::EdgeIndex;
    use rig_agent::test_utils::{MockCompletionModel, MockTurn};
    use rig_core::completion::Usage;
    use serde_json::json;

    /// A private schema with the tables and three customers, dropped with the fixture.
    struct Fixture {
        stores: Stores,
        dir: tempfile::TempDir,
    }

    impl Fixture {
        async fn new() -> Self {
            let url = database_url();
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
            let schema = format!("t_h5_{}_{nanos}", std::process::id());
            let db = Db::connect(&url, &schema).await.unwrap();
            let mut statements = vec![format!("CREATE SCHEMA {schema}")];
            for table in TABLES {
                statements.push(format!("CREATE TABLE {schema}.{} ({})", table.name, table.ddl()));
            }
            statements.push(format!("GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {READER_ROLE}"));
            statements.push(format!(
                "INSERT INTO {schema}.customers VALUES \
                 (1, '1', 'Anna', 'Berg', 'a@example.com', 'DE', 30, 'red', '2024-01-01'), \
                 (2, '2', 'Ben', 'Kurz', 'b@example.com', 'DE', 40, 'blue', '2024-02-01'), \
                 (3, '3', 'Cleo', 'Marin', 'c@example.com', 'FR', 50, 'green', '2024-03-01')"
            ));
            for (index, statement) in statements.into_iter().enumerate() {
                sqlx::query(&statement).execute(&db.pool).await.unwrap();
                if index == 0 {
                    audience_tools::db::prepare_reader(&db.pool, &schema).await.unwrap();
                }
            }
            let dir = tempfile::tempdir().unwrap();
            let vectors: Arc<dyn VectorSearch> = Arc::new(EdgeIndex::open(&dir.path().join("vectors")).await.unwrap());
            let vectors = audience_tools::vector::VectorReader::fixed(vectors);
            let embedder = LazyEmbedder::new(paths::models_dir());
            Self { stores: Stores::new(db, vectors, embedder, ReadLimits::default()), dir }
        }

        fn session(&self, model: &MockCompletionModel, max_turns: usize) -> Session {
            let config = AgentConfig {
                provider: ProviderConfig {
                    kind: ProviderKind::OpenAi,
                    model: "gpt-4o-mini".to_owned(),
                    base_url: None,
                    api_key: None,
                    timeout: std::time::Duration::from_secs(5),
                    retry: RetryPolicy::default(),
                    cassette: None,
                },
                data_dir: self.dir.path().to_owned(),
                max_turns,
                unknown_tool_retries: DEFAULT_UNKNOWN_TOOL_RETRIES,
            };
            let label = ModelLabel { provider: "openai".to_owned(), model: "gpt-4o-mini".to_owned() };
            let ledger = Ledger::open(self.dir.path()).unwrap();
            Session::with_model(model.clone().erase(), label, &config, self.stores.clone(), ledger, false)
        }
    }

    /// Drops the schema even when the test panicked, over a fresh connection (a test may close the pool).
    impl Drop for Fixture {
        fn drop(&mut self) {
            let schema = self.stores.db.schema.clone();
            let _ = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                runtime.block_on(async {
                    use sqlx::Connection;
                    let mut conn = sqlx::PgConnection::connect(&database_url()).await.unwrap();
                    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&mut conn).await.unwrap();
                });
            })
            .join();
        }
    }

    fn database_url() -> String {
        std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
    }

    fn usage(prompt: u64, completion: u64) -> Usage {
        Usage::new().input_tokens(prompt).output_tokens(completion)
    }

    fn kind_of(error: &anyhow::Error) -> Option<FailureKind> {
        error.downcast_ref::<Failure>().map(|f| f.0)
    }

    /// The text of every tool result the model was sent in `request`.
    fn tool_results(model: &MockCompletionModel, request: usize) -> String {
        let requests = model.requests();
        serde_json::to_string(&requests[request].chat_history).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn loop_runs_tools_and_sums_usage_over_every_call() {
        let fixture = Fixture::new().await;
        let model = MockCompletionModel::from_turns([
            MockTurn::tool_call("c1", "sql_analytics", json!({"question": "how many customers per country?"}))
                .with_usage(usage(1000, 20)),
            // The inner text-to-SQL call of sql_analytics.
            MockTurn::text(
                "```sql\nSELECT country, count(*) AS n FROM customers GROUP BY country ORDER BY country\n```",
            )
            .with_usage(usage(400, 30)),
            MockTurn::text("DE has 2 customers and FR has 1.").with_usage(usage(1200, 15)),
        ]);
        let mut session = fixture.session(&model, DEFAULT_MAX_TURNS);
        let answer = session.ask("How many customers per country?").await.unwrap();
        assert_eq!(answer.text, "DE has 2 customers and FR has 1.");
        assert_eq!(answer.steps.len(), 1);
        let step = &answer.steps[0];
        assert_eq!(step.tool, "sql_analytics");
        assert!(step.ok);
        assert_eq!(
            step.sql.as_deref(),
            Some("SELECT country, count(*) AS n FROM customers GROUP BY country ORDER BY country")
        );
        assert!(step.observation.starts_with("2 rows"), "{}", step.observation);
        let sent = tool_results(&model, 2);
        assert!(sent.contains(r"country|n\nDE|2\nFR|1"), "the rows reach the model as a table: {sent}");
        assert!(!sent.contains("GROUP BY"), "the SQL stays with the host: {sent}");
        // Two agent calls and the inner call, all counted.
        assert_eq!(answer.usage.llm_calls, 3);
        assert_eq!((answer.usage.prompt_tokens, answer.usage.completion_tokens), (2600, 65));
        assert!(!answer.usage.estimated);
        let expected = (2600.0 * 0.15 + 65.0 * 0.60) / 1_000_000.0;
        assert!((answer.usage.cost_usd.unwrap() - expected).abs() < 1e-12);
        assert_eq!(session.totals().llm_calls, 3);
        let ledger = std::fs::read_to_string(fixture.dir.path().join("usage.jsonl")).unwrap();
        assert_eq!(ledger.lines().count(), 1);
        assert!(answer.audience.is_none(), "analytics questions define no audience");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sql_errors_go_back_to_the_model_which_corrects_itself() {
        let fixture = Fixture::new().await;
        let model = MockCompletionModel::from_turns([
            MockTurn::tool_call("c1", "sql_analytics", json!({"sql": "SELECT nope FROM customers"})),
            MockTurn::tool_call("c2", "sql_analytics", json!({"sql": "SELECT count(*) AS n FROM customers"})),
            MockTurn::text("There are 3 customers."),
        ]);
        let mut session = fixture.session(&model, DEFAULT_MAX_TURNS);
        let answer = session.ask("How many customers?").await.unwrap();
        assert_eq!(answer.steps.len(), 2);
        assert!(!answer.steps[0].ok);
        assert!(answer.steps[0].observation.contains("nope"), "{}", answer.steps[0].observation);
        assert!(tool_results(&model, 1).contains("nope"), "the database error reaches the model");
        assert!(answer.steps[1].ok);
        // The mock reports no usage: counts are estimated, never silently zero.
        assert!(answer.usage.estimated);
        assert!(answer.usage.prompt_tokens > 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_turn_budget_stops_a_looping_model() {
        let fixture = Fixture::new().await;
        // A model that keeps sending SQL that fails: every call is offered every tool again.
        let call = || MockTurn::tool_call("c", "sql_analytics", json!({"sql": "SELECT nope FROM customers"}));
        let model = MockCompletionModel::from_turns([call(), call(), call(), MockTurn::text("never reached")]);
        let mut session = fixture.session(&model, 1);
        let error = session.ask("loop").await.unwrap_err();
        assert_eq!(kind_of(&error), Some(FailureKind::Provider));
        assert!(format!("{error:#}").contains("within 1 model calls"), "{error:#}");
        assert_eq!(model.request_count(), 1);
        let usage = session.last_usage().unwrap();
        assert!(!usage.ok);
        assert_eq!(usage.llm_calls, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_analytics_result_is_answered_in_words_and_every_call_before_it_is_required() {
        let fixture = Fixture::new().await;
        let count = || MockTurn::tool_call("c", "sql_analytics", json!({"sql": "SELECT count(*) AS n FROM customers"}));
        let model = MockCompletionModel::from_turns([
            count().with_usage(usage(1000, 20)),
            MockTurn::text("There are 3 customers.").with_usage(usage(1100, 10)),
        ]);
        let mut session = fixture.session(&model, DEFAULT_MAX_TURNS);
        let answer = session.ask("How many customers?").await.unwrap();
        assert_eq!(answer.text, "There are 3 customers.");
        let requests = model.requests();
        assert_eq!(requests[0].tool_choice, Some(rig_core::message::ToolChoice::Required));
        let offered: Vec<String> = requests[0].tools.iter().map(|tool| tool.name.to_string()).collect();
        assert_eq!(offered, ["metrics", "sql_analytics", "ask_clarification", "respond"], "a number question's tools");
        let offered: Vec<String> = requests[1].tools.iter().map(|tool| tool.name.to_string()).collect();
        assert_eq!(offered, ["sql_analytics"]);
        assert_eq!(requests[1].tool_choice, Some(rig_core::message::ToolChoice::None));
        let prompts: Vec<u64> = answer.usage.calls.iter().map(|call| call.prompt_tokens).collect();
        assert_eq!(prompts, [1000, 1100]);
    }

    /// The malformed shapes the recordings hold each get one repair turn with the exact reason, and a second
    /// unusable call ends the question with a clear error: never more than two calls.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn malformed_arguments_get_one_repair_turn_then_a_clear_error() {
        let fixture = Fixture::new().await;
        let shapes = [
            (
                json!({"include": [{"type": "event", "event_type": "purchase", "field": "country", "op": "=", "value": "DE"}]}),
                "belong in a separate clause",
            ),
            (
                json!({"include": [{"type": "profile", "field": "country", "op": "equals", "value": "DE"}]}),
                "(for equals write",
            ),
            (
                json!({"include": [{"type": "profile", "field": "total_spent", "op": "gt", "value": 500}]}),
                "(for greater than write",
            ),
            (
                json!({"include": [{"type": "profile", "field": "churned", "op": "=", "value": "true"}]}),
                "JSON booleans",
            ),
            // Cut off at the output limit (a small model repeating a clause until it runs out).
            (json!("{\"include\": [{\"type\": \"profile\", \"field\": \"total_spent\", \"op\""), "not complete JSON"),
            (
                json!({"include": [{"type": "event", "event_type": "purchase", "products": ["kayaks"]}]}),
                "no event names the product",
            ),
        ];
        for (shape, reason) in shapes {
            let model = MockCompletionModel::from_turns([
                MockTurn::tool_call("c1", "find_audience", shape.clone()),
                MockTurn::tool_call("c2", "find_audience", shape.clone()),
                MockTurn::text("never reached"),
            ]);
            let mut session = fixture.session(&model, DEFAULT_MAX_TURNS);
            let error = session.ask("customers who bought something").await.unwrap_err();
            assert_eq!(kind_of(&error), Some(FailureKind::Provider), "{shape}: {error:#}");
            assert!(format!("{error:#}").contains("after one repair"), "{error:#}");
            assert_eq!(model.request_count(), 2, "{shape}");
            let repair = tool_results(&model, 1);
            assert!(repair.contains(reason), "{shape}: the reason reaches the model: {repair}");
            assert_eq!(model.requests()[1].tool_choice, Some(rig_core::message::ToolChoice::Required));
        }
    }

    /// A placeholder intent ("tastes", copied from the tool's description) is left out of the call, not sent back,
    /// and the answer says so.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_placeholder_intent_is_left_out_and_said() {
        let fixture = Fixture::new().await;
        let bought = json!({"type": "event", "event_type": "purchase"});
        let model = MockCompletionModel::from_turns([
            MockTurn::tool_call("c1", "find_audience", json!({"include": [bought], "intent": "tastes"})),
            MockTurn::text("never reached"),
        ]);
        let mut session = fixture.session(&model, DEFAULT_MAX_TURNS);
        let answer = session.ask("customers who bought something").await.unwrap();
        assert_eq!(model.request_count(), 1);
        assert!(
            answer.text.contains("Left out, as no word of the question asks for it: the intent \"tastes\""),
            "{}",
            answer.text
        );
        assert_eq!(answer.audience.unwrap().definition.intent, None);
    }

    /// A found audience is the answer: one model call, rendered by the program from the typed report.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_found_audience_is_rendered_without_a_second_call() {
        let fixture = Fixture::new().await;
        let model = MockCompletionModel::from_turns([
            MockTurn::tool_call(
                "c1",
                "find_audience",
                json!({"include": [{"type": "profile", "field": "country", "op": "=", "value": "DE"},
                                   {"type": "profile", "field": "age", "op": "=", "value": 25}]}),
            ),
            MockTurn::text("never reached"),
        ]);
        let mut session = fixture.session(&model, DEFAULT_MAX_TURNS);
        let answer = session.ask("customers in Germany").await.unwrap();
        assert_eq!(model.request_count(), 1);
        let report = answer.audience.as_ref().unwrap();
        assert_eq!(report.definition.include.len(), 1, "the unasked `age = 25` was left out");
        // The fixture has customers but no profiles: the audience is empty, and the answer says so.
        assert!(answer.text.starts_with("0 of 0 customers: Customers from DE"), "{}", answer.text);
        assert!(answer.text.contains("No customer meets every condition"), "{}", answer.text);
        assert!(answer.text.contains("Left out, as no word of the question asks for it: aged 25"), "{}", answer.text);
        // Regression (seen in the demo): the 25 the program wrote in what it left out was taken for a number the
        // answer cites that no tool returned.
        assert!(!answer.confidence.reasons.iter().any(|r| r.contains("cites")), "{:?}", answer.confidence);
        assert_eq!(session.audience().current().unwrap().include.len(), 1);
    }

    /// A call that leaves out something the question names is sent back once with what it left out; the corrected
    /// call is the answer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_that_leaves_out_what_the_question_names_is_sent_back_once() {
        let fixture = Fixture::new().await;
        let germany = json!({"type": "profile", "field": "country", "op": "=", "value": "DE"});
        let bought = json!({"type": "event", "event_type": "purchase"});
        let model = MockCompletionModel::from_turns([
            MockTurn::tool_call("c1", "find_audience", json!({"include": [germany.clone()]})),
            MockTurn::tool_call("c2", "find_audience", json!({"include": [germany, bought]})),
            MockTurn::text("never reached"),
        ]);
        let mut session = fixture.session(&model, DEFAULT_MAX_TURNS);
        let answer = session.ask("customers in Germany who bought something").await.unwrap();
        assert_eq!(model.request_count(), 2);
        assert!(tool_results(&model, 1).contains("the question also names event_type purchase"));
        assert_eq!(answer.audience.as_ref().unwrap().definition.include.len(), 2);
    }

    /// A follow-up's call is read against the audience it edits: a `new` the question does not ask for is dropped,
    /// and a second country that could only hold nobody replaces the first.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn follow_ups_keep_the_audience_and_replace_a_contradicting_clause() {
        let fixture = Fixture::new().await;
        let country = |code: &str| json!({"type": "profile", "field": "country", "op": "=", "value": code});
        let churned = json!({"type": "profile", "field": "churned", "op": "=", "value": true});
        let model = MockCompletionModel::from_turns([
            MockTurn::tool_call("c1", "find_audience", json!({"include": [country("DE")]})),
            MockTurn::tool_call("c2", "find_audience", json!({"new": true, "exclude": [churned]})),
            MockTurn::tool_call("c3", "find_audience", json!({"include": [country("FR")]})),
            MockTurn::text("never reached"),
        ]);
        let mut session = fixture.session(&model, DEFAULT_MAX_TURNS);
        session.ask("customers in Germany").await.unwrap();
        let answer = session.ask("exclude churned customers").await.unwrap();
        let definition = session.audience().current().unwrap();
        assert_eq!((definition.include.len(), definition.exclude.len()), (1, 1), "{definition:?}");
        assert!(answer.text.contains("Kept the current audience"), "{}", answer.text);
        let answer = session.ask("same but for France instead").await.unwrap();
        let definition = session.audience().current().unwrap();
        assert_eq!(definition.include.len(), 1, "{definition:?}");
        assert!(answer.text.contains("From FR replaces from DE."), "{}", answer.text);
    }

    /// On a provider that constrains calls, a text reply to the repair turn is not the answer (the recorded 1.5B
    /// model echoed the tool's error to its output limit): the program says what was wrong with the call it sent
    /// back. A text reply to the first turn stays what it is, a grammar that was not applied: an error.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_repair_turn_answered_in_text_ends_with_what_was_wrong() {
        let fixture = Fixture::new().await;
        let recent = json!({"type": "profile", "field": "recency_days", "op": "<", "value": 10});
        let echo = "```tool_response\nError: none of these clauses matches the question's words\n```";
        let model = MockCompletionModel::from_turns([
            MockTurn::tool_call("c1", "find_audience", json!({"include": [recent], "limit": 10})),
            MockTurn::text(echo),
            MockTurn::text("never reached"),
        ]);
        let mut session = fixture.session(&model, DEFAULT_MAX_TURNS);
        session.constrained = true;
        let answer = session.ask("Who are our 10 newest sign-ups? Give names and emails.").await.unwrap();
        assert_eq!(model.request_count(), 2);
        assert!(tool_results(&model, 1).contains("none of these clauses matches"));
        assert_eq!(answer.kind, AnswerKind::Answer);
        assert!(
            answer.text.starts_with(
                "I could not answer this: none of its conditions is in your question (it tried: whose last purchase \
                 was under 10 days ago), and the model did not correct its call."
            ),
            "{}",
            answer.text
        );
        assert!(!answer.text.contains("tool_response"), "{}", answer.text);

        let model = MockCompletionModel::from_turns([MockTurn::text("Customers 1, 2 and 3."), MockTurn::text("")]);
        let mut session = fixture.session(&model, DEFAULT_MAX_TURNS);
        session.constrained = true;
        let error = session.ask("customers in Germany").await.unwrap_err();
        assert_eq!(kind_of(&error), Some(FailureKind::Provider), "{error:#}");
        assert!(format!("{error:#}").contains("grammar was not applied"), "{error:#}");
    }

    /// A repair turn after a call its tool refused, answered in text, ends the same way: with the tool's reason.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_repair_turn_after_a_refused_call_answered_in_text_ends_with_the_reason() {
        let fixture = Fixture::new().await;
        let kayaks = json!({"include": [{"type": "event", "event_type": "purchase", "products": ["kayaks"]}]});
        let model = MockCompletionModel::from_turns([
            MockTurn::tool_call("c1", "find_audience", kayaks),
            MockTurn::text("```tool_response\nError: no event names the product\n```"),
            MockTurn::text("never reached"),
        ]);
        let mut session = fixture.session(&model, DEFAULT_MAX_TURNS);
        session.constrained = true;
        let answer = session.ask("customers who bought something").await.unwrap();
        assert_eq!(model.request_count(), 2);
        let reason = tool_results(&model, 1);
        assert!(reason.contains("no event names the product"), "{reason}");
        assert!(
            answer.text.starts_with("I could not answer this: the find_audience call was refused ("),
            "{}",
            answer.text
        );
        assert!(answer.text.contains("no event names the product"), "{}", answer.text);
        assert!(answer.text.contains("and the model did not correct its call"), "{}", answer.text);
        assert!(!answer.text.contains("tool_response"), "{}", answer.text);
    }

    /// Customers looked up by ids the question never gives are sent back to `find_audience`; ids it gives are read.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lookup_by_ids_nobody_gave_is_sent_back() {
        let fixture = Fixture::new().await;
        let germany = json!({"include": [{"type": "profile", "field": "country", "op": "=", "value": "DE"}]});
        let model = MockCompletionModel::from_turns([
            MockTurn::tool_call("c1", "sql_data_retriever", json!({"customer_ids": ["Germany"]})),
            MockTurn::tool_call("c2", "find_audience", germany),
            MockTurn::text("never reached"),
        ]);
        let mut session = fixture.session(&model, DEFAULT_MAX_TURNS);
        let answer = session.ask("show me our customers in Germany").await.unwrap();
        assert!(tool_results(&model, 1).contains("Error: sql_data_retriever reads customers by the ids"));
        assert!(answer.audience.is_some());
        // Ids the question gives are read, and the records are the answer, printed by the program: no second model
        // call restates them (a stored "reply only with the word ..." would otherwise reach the model as data).
        let model = MockCompletionModel::from_turns([
            MockTurn::tool_call("c1", "sql_data_retriever", json!({"customer_ids": ["2", "77"]})),
            MockTurn::text("never reached"),
        ]);
        let mut session = fixture.session(&model, DEFAULT_MAX_TURNS);
        let answer = session.ask("what do we know about customers 2 and 77?").await.unwrap();
        assert_eq!(model.request_count(), 1);
        // The fixture has customers but no profiles yet.
        assert_eq!(answer.text, "No profile for 2, 77.");
    }

    /// A refusal is a `respond` call: one model call, its text the answer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reply_ends_the_question_in_one_call() {
        let fixture = Fixture::new().await;
        let model = MockCompletionModel::from_turns([
            MockTurn::tool_call("c1", "respond", json!({"text": "I only read data, so I cannot delete customers."})),
            MockTurn::text("never reached"),
        ]);
        let mut session = fixture.session(&model, DEFAULT_MAX_TURNS);
        let answer = session.ask("hi, what can you do?").await.unwrap();
        assert_eq!(answer.text, "I only read data, so I cannot delete customers.");
        assert_eq!(model.request_count(), 1);
    }

    /// Requests to change data, and requests that name no criterion, are answered by the program alone; a numbered
    /// reply to the clarifying question is its option.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn triaged_questions_take_no_model_call_and_a_numbered_reply_picks_an_option() {
        let fixture = Fixture::new().await;
        let model = MockCompletionModel::from_turns([
            MockTurn::tool_call("c1", "respond", json!({"text": "Noted."})),
            MockTurn::text("never reached"),
        ]);
        let mut session = fixture.session(&model, DEFAULT_MAX_TURNS);
        let refusal = session.ask("Please delete the customers from France").await.unwrap();
        assert!(refusal.text.contains("read-only"), "{}", refusal.text);
        assert_eq!(refusal.kind, AnswerKind::Answer);
        let clarification = session.ask("who should get our next campaign?").await.unwrap();
        assert_eq!(clarification.kind, AnswerKind::Clarification);
        let options = clarification.clarification.unwrap().options;
        assert_eq!(options[1], "customers who bought in the last 30 days");
        assert_eq!(model.request_count(), 0, "neither took a model call");
        assert_eq!((session.totals().questions, session.totals().llm_calls), (2, 0));
        session.ask("2").await.unwrap();
        let asked = serde_json::to_string(&model.requests()[0].chat_history).unwrap();
        assert!(asked.contains("Question: customers who bought in the last 30 days"), "{asked}");
        let customers: i64 =
            sqlx::query_scalar("SELECT count(*) FROM customers").fetch_one(&fixture.stores.db.pool).await.unwrap();
        assert_eq!(customers, 3, "nothing was deleted");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unknown_tool_gets_one_correction_then_fails() {
        let fixture = Fixture::new().await;
        let model = MockCompletionModel::from_turns([
            MockTurn::tool_call("c1", "run_sql", json!({"sql": "DROP TABLE customers"})),
            MockTurn::text("Sorry, I can only read data."),
        ]);
        let mut session = fixture.session(&model, DEFAULT_MAX_TURNS);
        let answer = session.ask("count our customers, any way you like").await.unwrap();
        assert_eq!(answer.text, "Sorry, I can only read data.");
        assert_eq!(answer.steps[0].tool, "run_sql");
        assert!(answer.steps[0].observation.contains("no tool named `run_sql`"), "{}", answer.steps[0].observation);
        assert!(tool_results(&model, 1).contains("no tool named `run_sql`"));
        let customers: i64 =
            sqlx::query_scalar("SELECT count(*) FROM customers").fetch_one(&fixture.stores.db.pool).await.unwrap();
        assert_eq!(customers, 3, "nothing ran the DROP");

        let model = MockCompletionModel::from_turns([
            MockTurn::tool_call("c1", "run_sql", json!({})),
            MockTurn::tool_call("c2", "run_sql", json!({})),
            MockTurn::text("never reached"),
        ]);
        let mut session = fixture.session(&model, DEFAULT_MAX_TURNS);
        let error = session.ask("again").await.unwrap_err();
        assert_eq!(kind_of(&error), Some(FailureKind::Provider));
        assert!(format!("{error:#}").contains("does not exist (`run_sql`"), "{error:#}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fatal_tool_failure_stops_the_run() {
        let fixture = Fixture::new().await;
        let model = MockCompletionModel::from_turns([
            MockTurn::tool_call("c1", "sql_analytics", json!({"sql": "SELECT count(*) FROM customers"})),
            MockTurn::text("must not be requested"),
        ]);
        let mut session = fixture.session(&model, DEFAULT_MAX_TURNS);
        // The data's vocabulary is read on the first question; then the database "goes down": every connection
        // attempt fails from now on.
        session.data().await.unwrap();
        fixture.stores.db.close().await;
        let error = session.ask("How many customers?").await.unwrap_err();
        assert_eq!(kind_of(&error), Some(FailureKind::Store), "{error:#}");
        assert!(format!("{error:#}").contains("sql_analytics failed"), "{error:#}");
        assert_eq!(model.request_count(), 1, "no model call after the fatal failure");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_text_to_sql_call_is_a_provider_error() {
        let fixture = Fixture::new().await;
        let model = MockCompletionModel::from_turns([
            MockTurn::tool_call("c1", "sql_analytics", json!({"question": "how many customers?"})),
            MockTurn::error("upstream unavailable"),
            MockTurn::text("must not be requested"),
        ]);
        let mut session = fixture.session(&model, DEFAULT_MAX_TURNS);
        let error = session.ask("How many customers?").await.unwrap_err();
        assert_eq!(kind_of(&error), Some(FailureKind::Provider), "{error:#}");
        assert!(format!("{error:#}").contains("upstream unavailable"), "{error:#}");
        assert_eq!(model.request_count(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn follow_ups_see_the_conversation_until_reset() {
        let fixture = Fixture::new().await;
        let model = MockCompletionModel::from_turns([
            MockTurn::text("First answer."),
            MockTurn::text("Second answer."),
            MockTurn::text("Third answer."),
        ]);
        let mut session = fixture.session(&model, DEFAULT_MAX_TURNS);
        session.ask("first question").await.unwrap();
        session.ask("and a follow-up").await.unwrap();
        let second = tool_results(&model, 1);
        assert!(second.contains("first question") && second.contains("First answer."), "{second}");
        session.reset();
        session.ask("fresh start").await.unwrap();
        assert!(!tool_results(&model, 2).contains("first question"));
        assert_eq!(session.totals().questions, 3);
    }

    #[test]
    fn system_prompt_is_short() {
        // Every model call of a question resends it; see tests/e2e_ask.rs prompt_budget_of_a_typical_question.
        // It is the fixed prefix providers cache; it may carry what correctness needs, within reason.
        let tokens = crate::ledger::estimate_tokens(&system_prompt());
        assert!(tokens < 400, "system prompt is {tokens} tokens");
    }

    #[test]
    fn provider_errors_become_one_short_line() {
        let text = error_line("HttpError:\n  {\n \"error\": \"down\"\n}");
        assert_eq!(text, "HttpError: { \"error\": \"down\" }");
        assert!(error_line(&"x ".repeat(1000)).chars().count() <= 401);
    }
}
