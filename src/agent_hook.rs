//! The agent's trace: a rig hook recording each Thought (assistant text), Action (tool and arguments), the
//! exact SQL and vector filter a tool ran (from the tool's host-only `ToolTrace`), the Observation, per-step
//! latency and per-call token usage. It also stops the run on a fatal tool failure, asks again after an empty
//! answer, steers the model back after a tool call it cannot make, and chooses the tools each model call is
//! offered ([`offer`]), so a question's later calls do not resend every tool schema.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use audience_tools::audience::AudienceDefinition;
use audience_tools::audience::refine::{self, FollowUp};
use audience_tools::audience::session::names_no_taste;
use audience_tools::clarify::Clarification;
use audience_tools::failure::{is_fatal, model_visible};
use audience_tools::grounding::Grounding;
use audience_tools::metrics::MetricsReport;
use audience_tools::registry;
use audience_tools::respond::Reply;
use audience_tools::sql_data_retriever::SqlDataRetrieverOutput;
use audience_tools::trace::{FullOutput, InnerLlmCall, ToolTrace};
use audience_tools::triage;
use audience_tools::vocabulary::Offered;
use rig_agent::agent::{
    AgentHook, CompletionCallAction, CompletionCallEvent, DispatchAction, DispatchEvent, HookContext,
    InvalidToolCallAction, InvalidToolCallContext, InvalidToolCallReason, ModelTurnAction, ModelTurnFinished,
    OutcomeAction, OutcomeEvent, RequestPatch,
};
use rig_core::completion::Usage;
use rig_core::message::{AssistantContent, ToolChoice};
use serde::Serialize;
use serde_json::{Value, json};

use crate::drafts::batch::DraftSummary;
use crate::ledger::{CallPurpose, CallUsage, estimate_tokens};
use crate::render::one_line;
use crate::settle::{
    drop_double_readings, drop_untraced, put_right, settle_comparisons, settle_drafts, settle_event_clauses,
    settle_metrics, uncovered, wrong_side,
};

/// Failed tool calls one question may make: the first gets one repair turn with the exact error, the second ends
/// the question with a clear error instead of the same call again.
pub const MAX_FAILED_CALLS: u32 = 2;
/// Longest observation kept in a step (the model saw the whole output).
const OBSERVATION_CHARS: usize = 300;

/// One Thought / Action / Observation step of the loop.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Step {
    /// The assistant text that came with the action, if any.
    pub thought: Option<String>,
    pub tool: String,
    pub args: Value,
    /// The exact SQL the tool ran.
    pub sql: Option<String>,
    /// The vector filter the tool used (our filter JSON, same for both engines).
    pub vector_filter: Option<Value>,
    /// The size of the audience `find_audience` evaluated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience_size: Option<u64>,
    /// A short summary of what the tool returned (or its error).
    pub observation: String,
    pub ok: bool,
    /// Tool wall time.
    pub ms: u64,
}

/// What the hook recorded during one run.
#[derive(Debug, Default)]
pub struct RunLog {
    pub steps: Vec<Step>,
    pub calls: Vec<CallUsage>,
    pub embedding_tokens: u64,
    /// Whether a `find_audience` call of this question succeeded: the run stops on it and the host renders the
    /// answer from the typed report the conversation's `AudienceSession` holds.
    pub audience_found: bool,
    /// The report of this question's successful `metrics` call: the run stops on it and the host renders the answer
    /// from it (each value with its definition).
    pub metrics: Option<MetricsReport>,
    /// The plain reply the model gave through `respond`; the run stopped on it.
    pub reply: Option<Reply>,
    /// The summary of the drafts `draft_emails` wrote: the run stops on it and the host renders the answer from it.
    pub drafts: Option<DraftSummary>,
    /// The records of this question's successful `sql_data_retriever` call: the run stops on them and the host
    /// prints them as a table, so the model never restates (or obeys) text stored in a customer's fields.
    pub records: Option<SqlDataRetrieverOutput>,
    /// Clauses left out of a `find_audience` call because nothing in the question asks for them, in words.
    pub dropped: Vec<String>,
    /// How a follow-up's call was read against the audience it edits (see `refine::settle`), in words.
    pub settled: Vec<String>,
    /// Correctable tool failures so far (see [`MAX_FAILED_CALLS`]).
    failures: u32,
    /// What was wrong with the call sent back to the model for a repair, in the user's words; a call is sent back
    /// once per question. Told to the user when the repair turn brings no call (see `on_model_turn_finished`).
    sent_back: Option<String>,
    /// Why the tool refused the last call, in the user's words, until a call succeeds: told to the user when the
    /// repair turn brings text instead of a call, as for a call sent back.
    refused: Option<String>,
    /// The clarifying question the model asked instead of answering; the run stopped on it.
    pub clarification: Option<Clarification>,
    /// The full output of each successful tool call, in order: what the answer's numbers must come from.
    pub outputs: Vec<Value>,
    /// Set when a tool failed fatally; the run was stopped with this message.
    pub fatal: Option<String>,
    /// True when that fatal failure was the LLM provider's (the inner text-to-SQL call), not a store's.
    pub fatal_in_provider: bool,
    /// The text of the latest model turn, attached to the next step.
    pending_thought: Option<String>,
    /// Tool call id -> when it was dispatched.
    pending_tools: HashMap<String, Instant>,
    /// When the current completion was dispatched, and the request as JSON (for estimating its tokens).
    pending_completion: Option<(Instant, String)>,
    /// The index in `calls` of the current completion's estimated usage, recorded when its tool call was
    /// refused: a refused turn that is retried never finishes, yet the provider was paid for it.
    refused_call: Option<usize>,
    /// Each tool call of this question and how it went, for choosing the tools the next call is offered.
    outcomes: Vec<(String, Outcome)>,
    /// Model turns that came back with neither text nor a tool call.
    empty_answers: u32,
}

impl RunLog {
    /// The model call in flight when the run ended without its reply (the provider failed, or the question was
    /// cancelled): it is still a call, with no tokens reported. Its prompt is estimated, since a provider may bill
    /// a request it failed to answer; the completion is 0.
    pub fn record_unanswered_call(&mut self) {
        if self.refused_call.is_some() {
            // The call in flight was answered, with a refused tool call, and is already counted.
            return;
        }
        if let Some((started, request)) = self.pending_completion.take() {
            self.calls.push(CallUsage {
                purpose: CallPurpose::Agent,
                prompt_tokens: estimate_tokens(&request),
                completion_tokens: 0,
                estimated: true,
                ms: elapsed_ms(started),
                answered: false,
            });
        }
    }

    /// Replaces the counts of the agent's calls with what the provider reported for them (rig keeps every call's
    /// usage, including calls whose turn the hook never saw finish, such as a refused tool call). Reported usage
    /// always wins over an estimate; implausible counts are not believed.
    pub fn reconcile(&mut self, reported: &[Usage]) {
        let agent_calls = self.calls.iter_mut().filter(|call| call.purpose == CallPurpose::Agent);
        for (call, usage) in agent_calls.zip(reported) {
            if let (Some(prompt), Some(completion)) = (plausible(usage.input_tokens), plausible(usage.output_tokens)) {
                call.prompt_tokens = prompt;
                call.completion_tokens = completion;
                call.estimated = false;
            }
        }
    }
}

/// The reason the hook gives rig when it stops a run on a clarifying question.
pub const CLARIFICATION_STOP: &str = "the model asked a clarifying question";

/// Model turns with neither text nor a tool call that are asked again before the run fails.
const EMPTY_ANSWER_RETRIES: u32 = 1;

/// How a tool call went, as far as the next step is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// An error the model may correct once.
    Failed,
    /// A result to answer from (possibly empty).
    Found,
}

/// What the next model call of a question is offered, given its tool calls so far.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Offer {
    /// A tool call, required (tool choice `required`): the first call, and the repair after an error. `respond`
    /// is among the tools, so a refusal or a plain reply is a call too.
    Call(Vec<&'static str>),
    /// An answer in words from the result of `tool`. `tool` stays declared (with tool choice `none`) so the
    /// history keeps its tool calls and results in their own roles; a call without tools would make rig rewrite
    /// them as user text, and stored customer text must never read as the user's words.
    Answer { tool: &'static str },
}

/// The tools that act on something a question may not have, and whether it has it. Without it their schemas would
/// only add tokens to every call, and a small model calls what it is offered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offerable {
    /// A seed for `lookalike`: the conversation's audience or a saved one.
    pub lookalike: bool,
    /// An audience for `draft_emails`: the conversation's.
    pub drafts: bool,
    /// The question asks for a number (`grounding::asks_for_a_number`): only the number tools, a question back or a
    /// reply answer it. Shown number examples, the recorded 1.5B model still answered "which country has the most
    /// customers?" with an audience of one country.
    pub number: bool,
}

impl Offerable {
    /// The tools a required call chooses from, in the registry's order.
    fn tools(self) -> Vec<&'static str> {
        registry::TOOLS
            .iter()
            .map(|tool| tool.name)
            .filter(|name| self.lookalike || *name != registry::LOOKALIKE.name)
            .filter(|name| self.drafts || *name != registry::DRAFT_EMAILS.name)
            .filter(|name| {
                let answers_a_number = registry::NUMBER_TOOLS.iter().any(|tool| tool.name == *name)
                    || [registry::ASK_CLARIFICATION.name, registry::RESPOND.name].contains(name);
                !self.number || answers_a_number
            })
            .collect()
    }
}

/// The offer for the next call: a required call until a tool succeeds, then the answer. `find_audience`, `metrics`,
/// `draft_emails`, `respond` and `ask_clarification` end the run themselves (the host renders their answer), so
/// only the results of the other tools are answered by the model.
fn offer(outcomes: &[(String, Outcome)], offerable: Offerable) -> Offer {
    match outcomes.last() {
        Some((tool, Outcome::Found)) => Offer::Answer { tool: answering_tool(tool) },
        _ => Offer::Call(offerable.tools()),
    }
}

/// The registry's name for `tool` (a `'static` one for the request patch).
fn answering_tool(tool: &str) -> &'static str {
    registry::find(tool).map_or(registry::SQL_ANALYTICS.name, |info| info.name)
}

/// A shared handle to the run log: the hook writes, the session reads after the run.
pub type SharedLog = Arc<Mutex<RunLog>>;

pub fn lock(log: &SharedLog) -> MutexGuard<'_, RunLog> {
    // A panic while holding the lock leaves plain data behind; keep using it.
    log.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The rig hook. One per run.
pub struct TraceHook {
    log: SharedLog,
    verbose: bool,
    /// Which of the tools that need something to act on this question may call (see [`offer`]).
    offerable: Offerable,
    /// The question's grounding, and the values its schema offers: every clause of a `find_audience` call must
    /// trace to the question.
    grounding: Option<Arc<(Grounding, Offered)>>,
    /// The audience a follow-up edits: a call's `new` and `remove` are settled against it (see `refine`).
    current: Option<Arc<AudienceDefinition>>,
    /// Whether the provider constrains a required tool call (llama-server's grammar): a text reply to a required
    /// call then means the constraint failed, which is an error, never an answer.
    constrained: bool,
}

impl TraceHook {
    pub fn new(log: SharedLog, verbose: bool, offerable: Offerable) -> Self {
        Self { log, verbose, offerable, grounding: None, current: None, constrained: false }
    }

    /// Checks `find_audience` calls against `grounding` (and `offered`: see [`drop_untraced`]).
    pub fn grounded(mut self, grounding: Arc<(Grounding, Offered)>) -> Self {
        self.grounding = Some(grounding);
        self
    }

    /// Settles `find_audience` calls against the audience the question edits.
    pub fn editing(mut self, current: Option<AudienceDefinition>) -> Self {
        self.current = current.map(Arc::new);
        self
    }

    /// Treats a text reply to a required call as a failed constraint.
    pub fn constrained(mut self, constrained: bool) -> Self {
        self.constrained = constrained;
        self
    }
}

/// The reason the hook gives rig when it stops a run whose answer the host renders.
pub const ANSWERED_STOP: &str = "the host renders the answer";

fn elapsed_ms(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The most tokens one call can plausibly have used: above every model's context window. A provider reporting more
/// (a counter gone wrong, a hostile proxy) is not believed: the call is estimated instead, and never priced at that.
pub const PLAUSIBLE_TOKENS_PER_CALL: u64 = 10_000_000;

/// A reported counter, or `None` when it is missing or implausible.
pub fn plausible(count: Option<u64>) -> Option<u64> {
    count.filter(|count| *count <= PLAUSIBLE_TOKENS_PER_CALL)
}

/// Usage of one call: the provider's counts, or a tiktoken estimate for the counts it did not report.
fn call_usage(usage: &Usage, request_json: Option<&str>, content: &[AssistantContent], ms: u64) -> CallUsage {
    let prompt = plausible(usage.input_tokens);
    let completion = plausible(usage.output_tokens);
    let estimated = prompt.is_none() || completion.is_none();
    let prompt_tokens = prompt.unwrap_or_else(|| request_json.map_or(0, estimate_tokens));
    let completion_tokens = completion.unwrap_or_else(|| {
        let text = serde_json::to_string(content).unwrap_or_default();
        estimate_tokens(&text)
    });
    CallUsage { purpose: CallPurpose::Agent, prompt_tokens, completion_tokens, estimated, ms, answered: true }
}

/// Usage of the inner text-to-SQL call of `sql_analytics`, as its trace recorded it.
pub fn inner_call_usage(inner: &InnerLlmCall, sql: Option<&str>) -> CallUsage {
    let prompt = plausible(inner.usage.input_tokens);
    let completion = plausible(inner.usage.output_tokens);
    CallUsage {
        purpose: CallPurpose::SqlWriter,
        // The tool keeps no prompt text to estimate from; 0 is flagged as estimated.
        prompt_tokens: prompt.unwrap_or(0),
        completion_tokens: completion.unwrap_or_else(|| sql.map_or(0, estimate_tokens)),
        estimated: prompt.is_none() || completion.is_none(),
        ms: inner.ms,
        answered: true,
    }
}

/// The answer to a question whose call was sent back (or refused by its tool) and never mended: what was wrong,
/// and what the data can answer instead. Never the model's own text, which echoed the tool's error (and could quote stored text).
fn unmended_call(wrong: &str) -> String {
    format!(
        "I could not answer this: {wrong}, and the model did not correct its call. Ask again with a condition the \
         data holds (a country, segment, age, spend, orders or last purchase, or what customers viewed, put in the \
         cart or bought), or with the tastes to rank customers by."
    )
}

/// Removes every null-valued key from the objects in `value`; whether there was one.
fn strip_nulls(value: &mut Value) -> bool {
    match value {
        Value::Object(object) => {
            let before = object.len();
            object.retain(|_, v| !v.is_null());
            let mut stripped = object.len() < before;
            for v in object.values_mut() {
                stripped |= strip_nulls(v);
            }
            stripped
        }
        Value::Array(items) => items.iter_mut().fold(false, |stripped, item| strip_nulls(item) | stripped),
        _ => false,
    }
}

/// A short, human-readable summary of a tool's JSON output.
pub fn summarize_output(output: &Value) -> String {
    let count = |key: &str| output.get(key).and_then(Value::as_array).map(Vec::len);
    if let Some(members) = count("members") {
        let ids: Vec<String> = output["members"]
            .as_array()
            .into_iter()
            .flatten()
            .take(5)
            .filter_map(|c| c.get("customer_id").map(|id| id.to_string()))
            .collect();
        let size = output.get("size").and_then(Value::as_u64).unwrap_or(members as u64);
        return format!("audience of {size}; {members} members listed; top ids: {}", ids.join(", "));
    }
    if let Some(rows) = count("rows") {
        let total = output.get("row_count").and_then(Value::as_u64).unwrap_or(rows as u64);
        let truncated =
            if output.get("truncated").and_then(Value::as_bool) == Some(true) { " (truncated)" } else { "" };
        let first = output["rows"].get(0).map(|row| format!("; first: {row}")).unwrap_or_default();
        return one_line(&format!("{total} rows{truncated}{first}"), OBSERVATION_CHARS);
    }
    if let Some(records) = count("records") {
        return format!("{records} customer records");
    }
    one_line(&output.to_string(), OBSERVATION_CHARS)
}

impl TraceHook {
    /// A line of the live trace; it quotes the model's words and stored customer text, so it is escaped like an
    /// answer.
    fn say(&self, line: impl AsRef<str>) {
        if self.verbose {
            eprintln!("{}", crate::terminal::safe(line.as_ref()));
        }
    }

    /// Sends a call back to the model for its one repair: the model is told `reason`; the user is told
    /// `for_the_user` if the repair turn brings no call.
    fn send_back(&self, reason: &str, for_the_user: String) -> DispatchAction {
        self.say(format!("· sent back: {reason}"));
        lock(&self.log).sent_back = Some(for_the_user);
        DispatchAction::skip(model_visible(reason))
    }

    fn record_tool_outcome(&self, event: &OutcomeEvent<'_>) -> OutcomeAction {
        let Some(tool) = event.tool_name() else { return OutcomeAction::proceed() };
        let args: Value = event
            .tool_args()
            .map(|raw| serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned())))
            .unwrap_or(Value::Null);
        let trace: Option<ToolTrace> = event.tool_context().and_then(|ctx| ctx.result::<ToolTrace>().ok().flatten());
        let result = event.tool_result();
        let error = match (result, event.outcome) {
            (Some(result), _) => result.error().map(|e| (e.message().to_owned(), is_fatal(e))),
            (None, Err(report)) => Some((report.message.clone(), false)),
            (None, Ok(_)) => None,
        };
        let fatal = trace
            .as_ref()
            .and_then(|t| t.fatal.clone())
            .or_else(|| error.as_ref().filter(|(_, fatal)| *fatal).map(|(message, _)| message.clone()));
        // The model was sent a compact observation; the host works from the full output the tool kept.
        let full = event.tool_context().and_then(|ctx| ctx.result::<FullOutput>().ok().flatten());
        let output = result.filter(|r| r.is_success()).map(|r| match full {
            Some(FullOutput(full)) => full,
            None => {
                let output = r.output();
                output.as_json().cloned().unwrap_or_else(|| {
                    let text = output.render();
                    serde_json::from_str(&text).unwrap_or(Value::String(text))
                })
            }
        });
        let observation = match (&error, &output) {
            (Some((message, _)), _) => format!("error: {}", one_line(message, OBSERVATION_CHARS)),
            (None, Some(output)) => summarize_output(output),
            (None, None) => "skipped".to_owned(),
        };

        let mut log = lock(&self.log);
        let started = event.call_id.and_then(|id| log.pending_tools.remove(&id.to_string()));
        let ms = started.map_or_else(
            || trace.as_ref().and_then(|t| t.timings_ms.get("total").map(|ms| ms.round() as u64)).unwrap_or(0),
            elapsed_ms,
        );
        if let Some(trace) = &trace {
            log.embedding_tokens += trace.embedding_tokens;
            if let Some(inner) = &trace.inner_llm {
                log.calls.push(inner_call_usage(inner, trace.sql.as_deref()));
            }
        }
        if let Some(output) = &output {
            log.outputs.push(output.clone());
        }
        let clarification = output
            .as_ref()
            .filter(|_| tool == registry::ASK_CLARIFICATION.name)
            .and_then(|output| serde_json::from_value::<Clarification>(output.clone()).ok());
        let reply = output
            .as_ref()
            .filter(|_| tool == registry::RESPOND.name)
            .and_then(|output| serde_json::from_value::<Reply>(output.clone()).ok());
        let metrics = output
            .as_ref()
            .filter(|_| tool == registry::METRICS.name)
            .and_then(|output| serde_json::from_value::<MetricsReport>(output.clone()).ok());
        let drafts = output
            .as_ref()
            .filter(|_| tool == registry::DRAFT_EMAILS.name)
            .and_then(|output| serde_json::from_value::<DraftSummary>(output.clone()).ok());
        let records = output
            .as_ref()
            .filter(|_| tool == registry::SQL_DATA_RETRIEVER.name)
            .and_then(|output| serde_json::from_value::<SqlDataRetrieverOutput>(output.clone()).ok());
        // A call the hook sent back never ran: it has neither an error from the tool nor an output.
        let outcome = if error.is_some() || output.is_none() { Outcome::Failed } else { Outcome::Found };
        if outcome == Outcome::Failed {
            log.failures += 1;
        }
        match (&error, outcome) {
            (Some((message, false)), _) => {
                log.refused = Some(format!("the {tool} call was refused ({})", one_line(message, OBSERVATION_CHARS)));
            }
            (_, Outcome::Found) => log.refused = None,
            _ => {}
        }
        log.outcomes.push((tool.to_owned(), outcome));
        let step = Step {
            thought: log.pending_thought.take(),
            tool: tool.to_owned(),
            args,
            sql: trace.as_ref().and_then(|t| t.sql.clone()),
            vector_filter: trace
                .as_ref()
                .and_then(|t| t.vector_filter.as_ref())
                .and_then(|f| serde_json::to_value(f).ok()),
            audience_size: trace.as_ref().and_then(|t| t.audience_size),
            observation,
            // A call sent back never ran: it did not work, though no tool reported an error.
            ok: outcome == Outcome::Found,
            ms,
        };
        if let Some(sql) = &step.sql {
            self.say(format!("  sql: {sql}"));
        }
        if let Some(filter) = &step.vector_filter {
            self.say(format!("  vector filter: {filter}"));
        }
        self.say(format!("← observation ({} ms): {}", step.ms, step.observation));
        log.steps.push(step);
        if let Some(message) = fatal {
            let reason = format!("{tool} failed: {message}");
            log.fatal = Some(reason.clone());
            // sql_analytics times its inner LLM call as "llm" and records the call only when it answered.
            log.fatal_in_provider =
                trace.as_ref().is_some_and(|t| t.timings_ms.contains_key("llm") && t.inner_llm.is_none());
            return OutcomeAction::stop(reason);
        }
        if let Some(clarification) = clarification {
            // The question is the answer: no second model call to restate it.
            log.clarification = Some(clarification);
            return OutcomeAction::stop(CLARIFICATION_STOP);
        }
        if reply.is_some() {
            log.reply = reply;
            return OutcomeAction::stop(ANSWERED_STOP);
        }
        if metrics.is_some() {
            // The typed report is the answer, as a found audience is: the host states each value with its
            // definition, and no second model call restates (or rounds, or misreads) the numbers.
            log.metrics = metrics;
            return OutcomeAction::stop(ANSWERED_STOP);
        }
        if drafts.is_some() {
            // The counts and the file are the answer, said by the host.
            log.drafts = drafts;
            return OutcomeAction::stop(ANSWERED_STOP);
        }
        if records.is_some() {
            // The records are the answer, printed by the host: a second model call would restate customer text,
            // and a stored instruction ("reply only with the word ...") would reach it as data to repeat.
            log.records = records;
            return OutcomeAction::stop(ANSWERED_STOP);
        }
        if outcome == Outcome::Found && tool == registry::FIND_AUDIENCE.name {
            // The typed report is the answer: the host renders it, with no second model call to restate it.
            log.audience_found = true;
            return OutcomeAction::stop(ANSWERED_STOP);
        }
        if let Some((message, _)) = &error
            && log.failures >= MAX_FAILED_CALLS
        {
            let reason = format!(
                "the model sent unusable arguments again after one repair ({tool}: {})",
                one_line(message, OBSERVATION_CHARS)
            );
            log.fatal = Some(reason.clone());
            log.fatal_in_provider = true;
            return OutcomeAction::stop(reason);
        }
        OutcomeAction::proceed()
    }
}

impl TraceHook {
    /// Counts the model call whose tool call was refused (a tool that does not exist, or is not offered at
    /// this step). If its turn is retried, `on_model_turn_finished` never sees the reply, so the usage is
    /// estimated from the request and the call.
    fn record_refused_call(&self, event: &InvalidToolCallContext) {
        let mut log = lock(&self.log);
        if log.refused_call.is_some() {
            return;
        }
        let Some((started, request)) = &log.pending_completion else { return };
        let call = format!("{}{}", event.tool_name, event.args.as_deref().unwrap_or_default());
        let usage = CallUsage {
            purpose: CallPurpose::Agent,
            prompt_tokens: estimate_tokens(request),
            completion_tokens: estimate_tokens(&call),
            estimated: true,
            ms: elapsed_ms(*started),
            answered: true,
        };
        log.calls.push(usage);
        log.refused_call = Some(log.calls.len() - 1);
    }
}

impl AgentHook for TraceHook {
    async fn on_completion_call(&self, _ctx: &HookContext, _event: CompletionCallEvent<'_>) -> CompletionCallAction {
        let offer = offer(&lock(&self.log).outcomes, self.offerable);
        match offer {
            Offer::Call(tools) => {
                self.say(format!("· next call: one of {}", tools.join(", ")));
                CompletionCallAction::patch(RequestPatch::new().active_tools(tools).tool_choice(ToolChoice::Required))
            }
            Offer::Answer { tool } => {
                self.say("· next call: the model answers");
                CompletionCallAction::patch(RequestPatch::new().active_tools([tool]).tool_choice(ToolChoice::None))
            }
        }
    }

    async fn on_dispatch(&self, _ctx: &HookContext, event: DispatchEvent<'_>) -> DispatchAction {
        if let Some(request) = event.completion_request() {
            // Serialized now, estimated only if the provider reports no usage.
            let json = serde_json::to_string(&(&request.chat_history, &request.tools)).unwrap_or_default();
            let mut log = lock(&self.log);
            log.pending_completion = Some((Instant::now(), json));
            log.refused_call = None;
        } else if let Some(tool) = event.tool_name() {
            self.say(format!("→ action: {tool} {}", event.tool_args().unwrap_or("{}")));
            if let Some(id) = event.call_id {
                lock(&self.log).pending_tools.insert(id.to_string(), Instant::now());
            }
            let mut args = event.tool_args().and_then(|raw| serde_json::from_str::<Value>(raw).ok());
            // Strict providers send every optional argument, as null: null is an absent argument.
            let nulls = args.as_mut().is_some_and(strip_nulls);
            if tool == registry::FIND_AUDIENCE.name
                && let Some(grounding) = &self.grounding
                && let Some(args) = args.clone()
            {
                let first_try = lock(&self.log).sent_back.is_none();
                if first_try && let Some(reason) = wrong_side(&args, &grounding.0) {
                    // Sent back once, in the repair turn: the model may say which clause it meant. One that repeats
                    // the call gets it put right by the program (`put_right`).
                    return self
                        .send_back(&reason, "its conditions put what you asked for on the wrong side".to_owned());
                }
                let clauses = |args: &Value| {
                    ["include", "exclude"]
                        .iter()
                        .filter_map(|list| args.get(*list)?.as_array().map(Vec::len))
                        .sum::<usize>()
                };
                let had = clauses(&args);
                let mut args = args;
                // A placeholder intent ("tastes", copied from the description) is no taste: left out, not sent back.
                let placeholder = args
                    .get("intent")
                    .and_then(Value::as_str)
                    .filter(|intent| names_no_taste(intent))
                    .map(str::to_owned);
                if let Some(intent) = &placeholder
                    && let Some(object) = args.as_object_mut()
                {
                    object.remove("intent");
                    lock(&self.log).dropped.push(format!("the intent {intent:?}, which names no taste"));
                }
                let mut filled = settle_event_clauses(&mut args, ["include", "exclude"], &grounding.0);
                filled.extend(settle_comparisons(&mut args, ["include", "exclude"], &grounding.0));
                if !first_try {
                    filled.extend(put_right(&mut args, &grounding.0));
                }
                filled.extend(drop_double_readings(&mut args, &grounding.0));
                let (mut args, dropped) = drop_untraced(args, &grounding.0, &grounding.1);
                let mut rewritten = nulls || !dropped.is_empty() || !filled.is_empty() || placeholder.is_some();
                if !filled.is_empty() {
                    self.say(format!("· settled: {}", filled.join("; ")));
                    lock(&self.log).settled.extend(filled);
                }
                if let Some(current) = &self.current {
                    let settled = refine::settle(&mut args, current, FollowUp::of(grounding.0.sequence()));
                    if !settled.notes.is_empty() {
                        self.say(format!("· settled: {}", settled.notes.join("; ")));
                        lock(&self.log).settled.extend(settled.notes);
                        rewritten = true;
                    }
                }
                // A question of tastes alone whose call kept no clause and gave no taste (the model wrote clauses
                // nobody asked for, or "tastes"): the question's own words are the taste to rank by.
                if self.current.is_none()
                    && clauses(&args) == 0
                    && ["remove", "intent"].iter().all(|key| args.get(*key).is_none())
                    && !grounding.0.names_a_condition()
                    && let Some(taste) = triage::taste_of(grounding.0.sequence())
                    && let Some(object) = args.as_object_mut()
                {
                    object.insert("intent".to_owned(), json!(taste));
                    let note = format!("ranked by the question's own words as the taste: \"{taste}\"");
                    self.say(format!("· settled: {note}"));
                    lock(&self.log).settled.push(note);
                    rewritten = true;
                }
                let changes_else = ["remove", "intent", "new"].iter().any(|key| args.get(*key).is_some());
                if first_try && had > 0 && clauses(&args) == 0 && !changes_else {
                    // Nothing the call asked for is in the question: the whole customer base is no answer to it.
                    let reason = format!(
                        "none of these clauses matches the question's words ({}); use the values under \"Resolved from \
                         the data\", or ask_clarification",
                        dropped.join("; ")
                    );
                    let for_the_user =
                        format!("none of its conditions is in your question (it tried: {})", dropped.join("; "));
                    return self.send_back(&reason, for_the_user);
                }
                let uncovered = uncovered(&args, &grounding.0);
                if first_try && !uncovered.is_empty() {
                    // The other half of tracing: a clause for everything the question names ("Jeans buyers, but
                    // leave out anyone in Germany" answered with the Germany clause alone is the wrong audience).
                    let reason = format!(
                        "the question also names {}: add a clause for each (include, or exclude where the question \
                         negates it), keeping the clauses you sent",
                        uncovered.words().join(", ")
                    );
                    let for_the_user = format!("its conditions leave out {}", uncovered.words().join(", "));
                    return self.send_back(&reason, for_the_user);
                }
                if !dropped.is_empty() {
                    self.say(format!("· left out, not asked for: {}", dropped.join("; ")));
                    lock(&self.log).dropped.extend(dropped);
                }
                if rewritten {
                    return DispatchAction::rewrite_tool_args(event.kind, args);
                }
            } else if tool == registry::METRICS.name
                && let Some(grounding) = &self.grounding
                && let Some(mut args) = args.clone()
            {
                let settled = settle_metrics(&mut args, &grounding.0, &grounding.1);
                if !settled.dropped.is_empty() {
                    self.say(format!("· left out, not asked for: {}", settled.dropped.join("; ")));
                    lock(&self.log).dropped.extend(settled.dropped);
                }
                if !settled.read.is_empty() {
                    self.say(format!("· settled: {}", settled.read.join("; ")));
                    lock(&self.log).settled.extend(settled.read);
                }
                if nulls
                    || Some(&args) != event.tool_args().and_then(|raw| serde_json::from_str::<Value>(raw).ok()).as_ref()
                {
                    return DispatchAction::rewrite_tool_args(event.kind, args);
                }
            } else if tool == registry::DRAFT_EMAILS.name
                && let Some(grounding) = &self.grounding
                && let Some(mut args) = args.clone()
            {
                let dropped = settle_drafts(&mut args, &grounding.0);
                if !dropped.is_empty() {
                    self.say(format!("· left out, not asked for: {}", dropped.join("; ")));
                    lock(&self.log).dropped.extend(dropped);
                }
                if nulls
                    || Some(&args) != event.tool_args().and_then(|raw| serde_json::from_str::<Value>(raw).ok()).as_ref()
                {
                    return DispatchAction::rewrite_tool_args(event.kind, args);
                }
            } else if tool == registry::SQL_DATA_RETRIEVER.name
                && self.current.is_none()
                && let Some(grounding) = &self.grounding
                && let Some(ids) = args.as_ref().and_then(|a| a.get("customer_ids")).and_then(Value::as_array)
                && !ids.iter().any(|id| {
                    // An id as the question writes it: a word with a digit ("42", "C-1042"), not a word that names
                    // a value ("Germany").
                    let id = id.as_str().map_or_else(|| id.to_string(), str::to_owned).to_lowercase();
                    let mut numbered = id
                        .split(|c: char| !c.is_alphanumeric())
                        .filter(|part| part.chars().any(|c| c.is_ascii_digit()));
                    numbered.clone().next().is_some() && numbered.all(|part| grounding.0.says(part))
                })
                && lock(&self.log).sent_back.is_none()
            {
                // Customers looked up by ids nobody gave ("VIP Loyalty" as an id): the question describes an
                // audience, which is find_audience's.
                let reason = "sql_data_retriever reads customers by the ids the question gives, and it gives none; \
                              to find customers by what they did or are, call find_audience";
                return self.send_back(reason, "it looked customers up by ids your question does not give".to_owned());
            } else if nulls && let Some(args) = args {
                return DispatchAction::rewrite_tool_args(event.kind, args);
            }
        }
        DispatchAction::proceed()
    }

    async fn on_model_turn_finished(&self, _ctx: &HookContext, event: ModelTurnFinished<'_>) -> ModelTurnAction {
        let text: Vec<&str> = event
            .content
            .iter()
            .filter_map(|part| match part {
                AssistantContent::Text(text) => Some(text.text()),
                _ => None,
            })
            .filter(|text| !text.trim().is_empty())
            .collect();
        let has_calls = event.content.iter().any(|part| matches!(part, AssistantContent::ToolCall(_)));
        let mut log = lock(&self.log);
        let (started, request) = log.pending_completion.take().map_or((None, None), |(s, r)| (Some(s), Some(r)));
        let ms = started.map_or(0, elapsed_ms);
        let usage = call_usage(&event.usage, request.as_deref(), event.content, ms);
        // A turn whose refused call was resolved without a retry finishes after all: the provider's counts
        // replace the estimate.
        match log.refused_call.take() {
            Some(index) if index < log.calls.len() => log.calls[index] = usage,
            _ => log.calls.push(usage),
        }
        if has_calls && !text.is_empty() {
            let thought = text.join("\n");
            self.say(format!("· thought: {thought}"));
            log.pending_thought = Some(thought);
        }
        if !has_calls
            && !text.is_empty()
            && self.constrained
            && matches!(offer(&log.outcomes, self.offerable), Offer::Call(_))
        {
            if let Some(wrong) = log.sent_back.take().or_else(|| log.refused.take()) {
                // The repair turn brought text, not a call: the recorded 1.5B model echoed the tool's error until
                // its output limit. The text is never the answer; what the program knows is: the call it sent
                // back, and why.
                self.say("! the model answered its repair turn in text; its call was not mended");
                log.reply = Some(Reply { text: unmended_call(&wrong) });
                return ModelTurnAction::stop("the model did not mend the call sent back to it".to_owned());
            }
            // llama-server answers without its grammar when the grammar fails to build (llama.cpp #19051, #24097).
            let reason = "the local model answered in text where a constrained tool call was required: its \
                          grammar was not applied; check the llama-server version and its log"
                .to_owned();
            log.fatal = Some(reason.clone());
            log.fatal_in_provider = true;
            return ModelTurnAction::stop(reason);
        }
        if !has_calls && text.is_empty() {
            // An empty reply is a provider failure, not an answer: ask once more, then fail the question.
            log.empty_answers += 1;
            if log.empty_answers > EMPTY_ANSWER_RETRIES {
                let reason = format!("the model returned an empty answer {} times in a row", log.empty_answers);
                log.fatal = Some(reason.clone());
                log.fatal_in_provider = true;
                return ModelTurnAction::stop(reason);
            }
            self.say("! empty answer from the model; asking again");
            return ModelTurnAction::repeat();
        }
        ModelTurnAction::Continue
    }

    async fn on_outcome(&self, _ctx: &HookContext, event: OutcomeEvent<'_>) -> OutcomeAction {
        if event.tool_name().is_some() {
            return self.record_tool_outcome(&event);
        }
        OutcomeAction::proceed()
    }

    async fn on_invalid_tool_call(
        &self,
        _ctx: &HookContext,
        event: &InvalidToolCallContext,
    ) -> Option<InvalidToolCallAction> {
        self.record_refused_call(event);
        // Tell the model, truthfully, why the call cannot be made and what it can do instead (see `offer`); the
        // retry budget (AgentConfig::unknown_tool_retries) bounds this.
        let name = &event.tool_name;
        let feedback = match &event.reason {
            // Arguments that do not parse were cut off at the output limit (a small model that repeats a clause
            // until it runs out), or are not JSON at all: one repair, with a short reason instead of the echo of
            // the whole text, then a clear error, never the same call again.
            InvalidToolCallReason::MalformedArguments { .. } => {
                let mut log = lock(&self.log);
                log.failures += 1;
                if log.failures >= MAX_FAILED_CALLS {
                    let reason = format!(
                        "the model sent unusable arguments again after one repair ({name}: its arguments are not \
                         complete JSON; a reply holds at most {} tokens)",
                        crate::agent::MAX_OUTPUT_TOKENS
                    );
                    log.fatal = Some(reason.clone());
                    log.fatal_in_provider = true;
                    return Some(InvalidToolCallAction::Stop { reason });
                }
                return Some(InvalidToolCallAction::retry(format!(
                    "Error: the arguments of {name} are not complete JSON: they were cut off, or are not JSON. Send \
                     them again, shorter: only the clauses the question asks for, each once."
                )));
            }
            InvalidToolCallReason::DisallowedByToolChoice => {
                "This question has used its tool calls: answer now from the tool results you have.".to_owned()
            }
            InvalidToolCallReason::UnknownTool if registry::find(name).is_none() => {
                let names: Vec<&str> = registry::TOOLS.iter().map(|tool| tool.name).collect();
                format!("There is no tool named `{name}`; the tools are {}.", names.join(", "))
            }
            InvalidToolCallReason::UnknownTool => format!(
                "`{name}` cannot follow the results this question already has; call one of {}, or answer from \
                 the results.",
                event.available_tools.join(", ")
            ),
            _ => return None,
        };
        self.say(format!("! cannot call `{name}` now; telling the model why"));
        let mut log = lock(&self.log);
        let thought = log.pending_thought.take();
        log.steps.push(Step {
            thought,
            tool: event.tool_name.clone(),
            args: event.args.as_deref().and_then(|a| serde_json::from_str(a).ok()).unwrap_or(Value::Null),
            sql: None,
            vector_filter: None,
            audience_size: None,
            observation: format!("error: {feedback}"),
            ok: false,
            ms: 0,
        });
        Some(InvalidToolCallAction::retry(feedback))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn summarizes_audience_and_analytics_outputs() {
        let audience = json!({"size": 42, "members": [{"customer_id": 7}, {"customer_id": 9}]});
        assert_eq!(summarize_output(&audience), "audience of 42; 2 members listed; top ids: 7, 9");
        let analytics = json!({"rows": [{"n": 3}], "row_count": 1, "truncated": false});
        assert_eq!(summarize_output(&analytics), "1 rows; first: {\"n\":3}");
        let long = json!({"text": "x".repeat(1000)});
        assert!(summarize_output(&long).chars().count() <= OBSERVATION_CHARS + 1);
    }

    /// Every call is a required tool call until a tool succeeds; then the model answers from that tool's result.
    #[test]
    fn calls_are_required_until_a_result_and_then_answered() {
        let calls = |steps: &[(&str, Outcome)]| -> Vec<(String, Outcome)> {
            steps.iter().map(|(tool, outcome)| ((*tool).to_owned(), *outcome)).collect()
        };
        let every = Offerable { lookalike: true, drafts: true, number: false };
        let registered: Vec<&str> = registry::TOOLS.iter().map(|tool| tool.name).collect();
        assert_eq!(offer(&[], every), Offer::Call(registered.clone()), "every registered tool is offered");
        let Offer::Call(nothing_to_act_on) = offer(&[], Offerable::default()) else { panic!("a call is required") };
        let without = |left_out: &[&str]| -> Vec<&str> {
            registered.iter().copied().filter(|name| !left_out.contains(name)).collect()
        };
        assert_eq!(
            nothing_to_act_on,
            without(&["lookalike", "draft_emails"]),
            "lookalike needs a seed, drafts an audience"
        );
        let saved_only = Offerable { lookalike: true, drafts: false, number: false };
        assert_eq!(
            offer(&[], saved_only),
            Offer::Call(without(&["draft_emails"])),
            "a saved audience is no current one"
        );
        assert_eq!(
            offer(&calls(&[("find_audience", Outcome::Failed)]), Offerable::default()),
            Offer::Call(nothing_to_act_on)
        );
        assert_eq!(offer(&calls(&[("sql_analytics", Outcome::Found)]), every), Offer::Answer { tool: "sql_analytics" });
        let number = Offerable { lookalike: true, drafts: true, number: true };
        assert_eq!(
            offer(&[], number),
            Offer::Call(vec!["metrics", "sql_analytics", "ask_clarification", "respond"]),
            "a question that asks for a number is offered the number tools"
        );
    }

    #[test]
    fn estimates_missing_usage_only() {
        let reported = Usage::new().input_tokens(100).output_tokens(5);
        let usage = call_usage(&reported, Some("ignored"), &[], 3);
        assert_eq!((usage.prompt_tokens, usage.completion_tokens, usage.estimated), (100, 5, false));
        let usage = call_usage(&Usage::new(), Some("some prompt text here"), &[AssistantContent::text("hi")], 3);
        assert!(usage.estimated);
        assert!(usage.prompt_tokens > 0 && usage.completion_tokens > 0);
    }
}
