//! The agent: a rig loop over the tools (`find_audience`, `sql_analytics`, `sql_data_retriever`) with a short
//! system prompt, an explicit turn budget, conversation history for follow-ups, the conversation's audience, a trace
//! of every step and a usage record per question.
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
use audience_tools::audience::saved::SavedAudiences;
use audience_tools::audience::{AudienceReport, AudienceSession, FindAudience};
use audience_tools::clarify::{AskClarification, Clarification};
use audience_tools::registry;
use audience_tools::sql_analytics::SqlAnalytics;
use audience_tools::sql_data_retriever::SqlDataRetriever;
use audience_tools::stores::Stores;
use rig_agent::completion::PromptError;
use rig_agent::{Agent, AgentBuilder};
use rig_core::message::Message;
use serde::Serialize;

use crate::confidence::{self, Confidence, Evidence};
use crate::exit::{Failure, FailureExt, FailureKind};
use crate::ledger::{Ledger, UsageRecord, UsageTotals};
use crate::local_llm::{self, LocalServer};
use crate::provider::{ChatModel, ProviderConfig, ProviderKind, Settings};
pub use crate::trace::Step;
use crate::trace::{RunLog, SharedLog, TraceHook, lock};

/// Model calls allowed per question, the first included (`AUDIENCE_MAX_TURNS`). A typical question takes
/// two (tool call, answer); a follow-up with a correction takes three or four.
pub const DEFAULT_MAX_TURNS: usize = 6;
/// Times the model is told "no such tool" before the run fails.
pub const DEFAULT_UNKNOWN_TOOL_RETRIES: usize = 1;
/// Earlier questions kept in the conversation (older ones are dropped to bound the prompt size).
const HISTORY_QUESTIONS: usize = 4;

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
    agent: Agent,
    label: ModelLabel,
    max_turns: usize,
    unknown_tool_retries: usize,
    verbose: bool,
    /// The messages of each earlier question's run (prompt, tool calls, results, answer).
    history: Vec<Vec<Message>>,
    ledger: Ledger,
    /// The audience the conversation works on; the host keeps it, so it outlives the trimmed history.
    audience: AudienceSession,
    /// Where saved audiences are looked up: `lookalike` is offered only when there is something to grow.
    saved: Option<SavedAudiences>,
    last_usage: Option<UsageRecord>,
    /// Redacts the API key from provider error messages.
    redact: Arc<dyn Fn(&str) -> String + Send + Sync>,
    /// The local model server this session started, stopped when the session ends.
    _local_server: Option<LocalServer>,
    /// For the confidence check of intents: the stores, and the words of the profile texts once read.
    stores: Stores,
    vocabulary: Option<HashSet<String>>,
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
        let model = config.provider.chat_model()?;
        let ledger = Ledger::open(&config.data_dir)?;
        let label =
            ModelLabel { provider: config.provider.kind.name().to_owned(), model: config.provider.model.clone() };
        let provider = config.provider.clone();
        let mut session = Self::with_model(model, label, &config, stores, ledger, verbose);
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
        let agent = build_agent(model, stores.clone(), config.max_turns, audience.clone());
        Self {
            agent,
            label,
            max_turns: config.max_turns,
            unknown_tool_retries: config.unknown_tool_retries,
            verbose,
            history: Vec::new(),
            ledger,
            audience,
            saved,
            last_usage: None,
            redact: Arc::new(str::to_owned),
            _local_server: None,
            stores,
            vocabulary: None,
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
        let history: Vec<Message> = self.history.iter().flatten().cloned().collect();
        let prompt = prompt_text(question, &self.audience);
        // A lookalike needs a seed: the conversation's audience or a saved one. Without either its schema would
        // only add tokens to every call. A lookup that fails offers it (the tool then says what is wrong).
        let can_grow = self.audience.current().is_some()
            || match &self.saved {
                Some(saved) => saved.any().await.unwrap_or(true),
                None => false,
            };
        let run_future = self
            .agent
            .prompt(prompt)
            .history(history)
            .max_turns(self.max_turns)
            .max_invalid_tool_call_retries(self.unknown_tool_retries)
            .add_hook(TraceHook::new(log.clone(), self.verbose, can_grow))
            .into_future();
        let result = tokio::select! {
            result = run_future => Some(result),
            () = cancel => None,
        };
        let mut run = std::mem::take(&mut *lock(&log));
        // The hook asks again after an empty turn, but a run can still end on one (a provider that closes a turn
        // without content): that is the provider failing, not an answer.
        let answered = run.clarification.is_some()
            || matches!(&result, Some(Ok(response)) if !response.output().trim().is_empty());
        match &result {
            Some(Ok(response)) => {
                let reported: Vec<_> = response.completion_calls.iter().map(|call| call.usage).collect();
                run.reconcile(&reported);
            }
            _ => run.record_unanswered_call(),
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
            self.push_history(vec![Message::user(prompt_text(question, &self.audience)), Message::assistant(&text)]);
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
                steps: run.steps,
                usage,
            }));
        }
        let response = result.map_err(|error| self.run_error(error, &run))?;
        if !answered {
            return Err(tagged(FailureKind::Provider, "the model returned an empty answer".to_owned()));
        }
        let text = response.output();
        self.push_history(response.messages.clone());
        let vocabulary = match run.audience.as_ref().and_then(|report| report.definition.intent.as_ref()) {
            Some(_) => self.vocabulary().await,
            None => None,
        };
        let calls: Vec<(String, bool)> = run.steps.iter().map(|step| (step.tool.clone(), step.ok)).collect();
        let confidence = confidence::assess(&Evidence {
            question,
            answer: &text,
            calls: &calls,
            outputs: &run.outputs,
            audience: run.audience.as_ref(),
            vocabulary,
        });
        Ok(Some(Answer {
            kind: AnswerKind::Answer,
            text,
            clarification: None,
            confidence,
            audience: run.audience,
            steps: run.steps,
            usage,
        }))
    }

    fn push_history(&mut self, messages: Vec<Message>) {
        self.history.push(messages);
        if self.history.len() > HISTORY_QUESTIONS {
            self.history.remove(0);
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
        self.history.clear();
        self.audience.reset();
    }

    /// Usage totals of this session.
    pub fn totals(&self) -> &UsageTotals {
        self.ledger.totals()
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
            return tagged(kind, one_line(&(self.redact)(fatal)));
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
                let detail = one_line(&(self.redact)(&error_chain(other)));
                // A request that got no reply at all: say where we tried to go.
                let hint = if detail.contains("error sending request") || detail.contains("timed out") {
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
fn one_line(text: &str) -> String {
    const MAX: usize = 400;
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// The question, preceded by the current audience when there is one: the model refines what it is told here, not
/// what the (trimmed) history happens to still hold.
fn prompt_text(question: &str, audience: &AudienceSession) -> String {
    let Some(definition) = audience.current() else { return question.to_owned() };
    let clauses: Vec<String> = definition
        .clauses()
        .map(|(clause, exclude)| {
            format!("{} {} {}", clause.id, if exclude { "exclude" } else { "include" }, clause.rule.predicate())
        })
        .collect();
    let intent = definition.intent.as_deref().map(|i| format!("; intent: {i}")).unwrap_or_default();
    let clauses = if clauses.is_empty() { "no clauses".to_owned() } else { clauses.join("; ") };
    format!("[current audience: {clauses}{intent}]\n{question}")
}

/// The system prompt: prompts/system.md. It carries no schema: every call resends it, so the columns a
/// tool's arguments refer to are described by that tool, and sent only while the tool is offered.
pub fn system_prompt() -> String {
    SYSTEM_PROMPT.trim().to_owned()
}

/// Output tokens one agent call may produce: an answer of a few sentences or one tool call. It also bounds what a
/// runaway model can write into the conversation (a megabyte "condition"), which every later call would resend.
pub const MAX_OUTPUT_TOKENS: u64 = 1_024;

fn build_agent(model: ChatModel, stores: Stores, max_turns: usize, audience: AudienceSession) -> Agent {
    AgentBuilder::new(model.clone())
        .preamble(system_prompt())
        .max_tokens(MAX_OUTPUT_TOKENS)
        .default_max_turns(max_turns)
        .tool(FindAudience::new(stores.clone(), audience.clone()))
        .tool(Lookalike::new(stores.clone(), audience))
        .tool(SqlAnalytics::new(stores.clone(), model))
        .tool(SqlDataRetriever::new(stores))
        .tool(AskClarification)
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
        let mut session = fixture.session(&model, 2);
        let error = session.ask("loop").await.unwrap_err();
        assert_eq!(kind_of(&error), Some(FailureKind::Provider));
        assert!(format!("{error:#}").contains("within 2 model calls"), "{error:#}");
        assert_eq!(model.request_count(), 2);
        let usage = session.last_usage().unwrap();
        assert!(!usage.ok);
        assert_eq!(usage.llm_calls, 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn later_calls_are_offered_what_can_follow_and_the_last_one_answers() {
        let fixture = Fixture::new().await;
        let count = || MockTurn::tool_call("c", "sql_analytics", json!({"sql": "SELECT count(*) AS n FROM customers"}));
        let model = MockCompletionModel::from_turns([
            count().with_usage(usage(1000, 20)),
            // Not among what can follow an analytics result: refused with the reason and what can be called.
            MockTurn::tool_call("d", "sql_data_retriever", json!({"customer_ids": [1]})).with_usage(usage(1100, 20)),
            count().with_usage(usage(1200, 20)),
            count().with_usage(usage(1300, 20)),
            MockTurn::text("There are 3 customers.").with_usage(usage(1400, 10)),
        ]);
        let mut session = fixture.session(&model, DEFAULT_MAX_TURNS);
        let answer = session.ask("How many customers?").await.unwrap();
        assert_eq!(answer.text, "There are 3 customers.");
        let offered = |request: usize| -> Vec<String> {
            model.requests()[request].tools.iter().map(|tool| tool.name.to_string()).collect()
        };
        assert_eq!(offered(0).len(), 4, "every tool but lookalike (nothing to grow yet)");
        assert_eq!(offered(1), ["find_audience", "sql_analytics"]);
        assert_eq!(offered(2), offered(1), "a refused call changes nothing");
        let feedback = tool_results(&model, 2);
        assert!(
            feedback.contains("`sql_data_retriever` cannot follow the results this question already has; call one of"),
            "{feedback}"
        );
        // Three results: the last call must answer. It still declares a tool, with tool choice `none`, so the
        // results stay in the tool role (a call without tools makes rig re-send them as user text).
        assert_eq!(offered(4), ["sql_analytics"]);
        assert_eq!(model.requests()[4].tool_choice, Some(rig_core::message::ToolChoice::None));
        assert_eq!(answer.steps.len(), 4);
        assert!(answer.steps[0].ok && !answer.steps[1].ok && answer.steps[3].ok);
        // Regression: the refused call was recorded as an estimate although the provider reported its usage.
        // It is counted with the reported numbers.
        assert_eq!(answer.usage.llm_calls, 5);
        assert!(!answer.usage.estimated, "{:?}", answer.usage.calls);
        let prompts: Vec<u64> = answer.usage.calls.iter().map(|call| call.prompt_tokens).collect();
        assert_eq!(prompts, [1000, 1100, 1200, 1300, 1400]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unknown_tool_gets_one_correction_then_fails() {
        let fixture = Fixture::new().await;
        let model = MockCompletionModel::from_turns([
            MockTurn::tool_call("c1", "run_sql", json!({"sql": "DROP TABLE customers"})),
            MockTurn::text("Sorry, I can only read data."),
        ]);
        let mut session = fixture.session(&model, DEFAULT_MAX_TURNS);
        let answer = session.ask("drop the customers table").await.unwrap();
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
        // The database "goes down": every connection attempt fails from now on.
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
        let tokens = crate::ledger::estimate_tokens(&system_prompt());
        assert!(tokens < 150, "system prompt is {tokens} tokens");
    }

    #[test]
    fn provider_errors_become_one_short_line() {
        let text = one_line("HttpError:\n  {\n \"error\": \"down\"\n}");
        assert_eq!(text, "HttpError: { \"error\": \"down\" }");
        assert!(one_line(&"x ".repeat(1000)).chars().count() <= 401);
    }
}
