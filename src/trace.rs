//! The agent's trace: a rig hook recording each Thought (assistant text), Action (tool and arguments), the
//! exact SQL and vector filter a tool ran (from the tool's host-only `ToolTrace`), the Observation, per-step
//! latency and per-call token usage. It also stops the run on a fatal tool failure, steers the model back
//! after an unknown tool name, and narrows the tools each model call is offered to the steps that can still
//! follow ([`offered_tools`]), so a question's later calls do not resend every tool schema.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use audience_tools::failure::is_fatal;
use audience_tools::trace::{FullOutput, InnerLlmCall, ToolTrace};
use rig_agent::agent::{
    AgentHook, CompletionCallAction, CompletionCallEvent, DispatchAction, DispatchEvent, HookContext,
    InvalidToolCallAction, InvalidToolCallContext, InvalidToolCallReason, ModelTurnAction, ModelTurnFinished,
    OutcomeAction, OutcomeEvent, RequestPatch,
};
use rig_core::completion::Usage;
use rig_core::message::AssistantContent;
use serde::Serialize;
use serde_json::Value;

use crate::ledger::{CallPurpose, CallUsage, estimate_tokens};

/// Tools whose result defines "the audience": the customers they returned.
const AUDIENCE_TOOLS: [&str; 2] = ["hybrid_discovery", "semantic_search"];
/// Tool calls with a result that one question may make; the call after the last one is offered no tools, so
/// the model answers. One is usual; the second fetches details of the customers the first one found.
pub const MAX_TOOL_CALLS: usize = 2;
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gate_size: Option<u64>,
    /// A short summary of what the tool returned (or its error).
    pub observation: String,
    pub ok: bool,
    /// Tool wall time.
    pub ms: u64,
}

/// The customers a discovery tool returned last.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Audience {
    /// How many customers match: the gate size for `hybrid_discovery`, else the number returned.
    pub size: u64,
    /// The ranked customers as the tool returned them.
    pub customers: Vec<Value>,
}

/// What the hook recorded during one run.
#[derive(Debug, Default)]
pub struct RunLog {
    pub steps: Vec<Step>,
    pub calls: Vec<CallUsage>,
    pub embedding_tokens: u64,
    pub audience: Option<Audience>,
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

/// Model turns with neither text nor a tool call that are asked again before the run fails.
const EMPTY_ANSWER_RETRIES: u32 = 1;

/// How a tool call went, as far as the next step is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// An error the model may correct, with the same tool or another.
    Failed,
    /// Nothing found (no customers, rows or records): the model may try other arguments or another tool.
    Empty,
    /// A result to answer from.
    Found,
}

impl Outcome {
    fn of(output: Option<&Value>) -> Self {
        let Some(output) = output else { return Self::Failed };
        let empty = ["customers", "rows", "records"]
            .iter()
            .find_map(|key| output.get(key).and_then(Value::as_array))
            .is_some_and(Vec::is_empty);
        if empty { Self::Empty } else { Self::Found }
    }
}

/// What may follow a tool that found something, in the same question. A discovery is followed by the
/// details of the customers it found. An analytics result is followed by a discovery whose condition uses
/// it ("who are the luxury fans in the country with the most customers?"); details need no second call, as
/// the analytics query can select any profile column itself. A tool that found something is not offered
/// again: a refinement is the user's next question, which is offered every tool.
fn follow_ups(tool: &str) -> &'static [&'static str] {
    match tool {
        "hybrid_discovery" | "semantic_search" => &["sql_data_retriever"],
        "sql_analytics" => &["hybrid_discovery"],
        _ => &[],
    }
}

/// The tools the next model call of a question is offered, given its tool calls so far; `None` is every tool.
///
/// Every call resends the schemas of the tools it offers, so offering only the steps that can still follow
/// keeps a typical question's later calls small, and it enforces the plan the system prompt states: after
/// an error or an empty result every tool (fix the arguments, or try another tool); after a result, only
/// its follow-ups; after [`MAX_TOOL_CALLS`] results, none (answer).
fn offered_tools(outcomes: &[(String, Outcome)]) -> Option<Vec<&'static str>> {
    let found: Vec<&str> =
        outcomes.iter().filter(|(_, outcome)| *outcome == Outcome::Found).map(|(tool, _)| tool.as_str()).collect();
    if found.len() >= MAX_TOOL_CALLS {
        return Some(Vec::new());
    }
    match outcomes.last() {
        None | Some((_, Outcome::Failed | Outcome::Empty)) => None,
        Some((tool, Outcome::Found)) => {
            Some(follow_ups(tool).iter().copied().filter(|next| !found.contains(next)).collect())
        }
    }
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
}

impl TraceHook {
    pub fn new(log: SharedLog, verbose: bool) -> Self {
        Self { log, verbose }
    }
}

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

fn truncate(text: &str, max: usize) -> String {
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// A short, human-readable summary of a tool's JSON output.
pub fn summarize_output(output: &Value) -> String {
    let count = |key: &str| output.get(key).and_then(Value::as_array).map(Vec::len);
    if let Some(customers) = count("customers") {
        let ids: Vec<String> = output["customers"]
            .as_array()
            .into_iter()
            .flatten()
            .take(5)
            .filter_map(|c| c.get("customer_id").map(|id| id.to_string()))
            .collect();
        let of = matching(output).map(|n| format!(" of {n} matching"));
        return format!("{customers} customers ranked{}; top ids: {}", of.unwrap_or_default(), ids.join(", "));
    }
    if let Some(rows) = count("rows") {
        let total = output.get("row_count").and_then(Value::as_u64).unwrap_or(rows as u64);
        let truncated =
            if output.get("truncated").and_then(Value::as_bool) == Some(true) { " (truncated)" } else { "" };
        let first = output["rows"].get(0).map(|row| format!("; first: {row}")).unwrap_or_default();
        return truncate(&format!("{total} rows{truncated}{first}"), OBSERVATION_CHARS);
    }
    if let Some(records) = count("records") {
        return format!("{records} customer records");
    }
    truncate(&output.to_string(), OBSERVATION_CHARS)
}

/// How many customers matched: `gate_size` (hybrid_discovery) or `count` (semantic_search).
fn matching(output: &Value) -> Option<u64> {
    output.get("gate_size").or_else(|| output.get("count")).and_then(Value::as_u64)
}

/// The audience a discovery tool's output describes.
fn audience_of(output: &Value) -> Option<Audience> {
    let customers = output.get("customers")?.as_array()?.clone();
    let size = matching(output).unwrap_or(customers.len() as u64);
    Some(Audience { size, customers })
}

impl TraceHook {
    fn say(&self, line: impl AsRef<str>) {
        if self.verbose {
            eprintln!("{}", line.as_ref());
        }
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
            (Some((message, _)), _) => format!("error: {}", truncate(message, OBSERVATION_CHARS)),
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
        if let Some(output) = &output
            && AUDIENCE_TOOLS.contains(&tool)
        {
            log.audience = audience_of(output);
        }
        let outcome = if error.is_some() { Outcome::Failed } else { Outcome::of(output.as_ref()) };
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
            strategy: trace.as_ref().and_then(|t| t.strategy).map(|s| s.as_str().to_owned()),
            gate_size: trace.as_ref().and_then(|t| t.gate_size),
            observation,
            ok: error.is_none(),
            ms,
        };
        if let Some(sql) = &step.sql {
            self.say(format!("  sql: {sql}"));
        }
        if let Some(filter) = &step.vector_filter {
            self.say(format!("  vector filter: {filter}"));
        }
        if let Some(strategy) = &step.strategy {
            self.say(format!("  strategy: {strategy}"));
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
        let offered = offered_tools(&lock(&self.log).outcomes);
        match offered {
            None => CompletionCallAction::continue_run(),
            Some(tools) => {
                if tools.is_empty() {
                    self.say("· next call: no tools, the model answers");
                } else {
                    self.say(format!("· next call offers: {}", tools.join(", ")));
                }
                CompletionCallAction::patch(RequestPatch::new().active_tools(tools))
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
        if !matches!(event.reason, InvalidToolCallReason::UnknownTool) {
            return None;
        }
        // Tell the model which tools this step offers (see `offered_tools`), possibly none; the retry budget
        // (AgentConfig::unknown_tool_retries) bounds this.
        let feedback = if event.available_tools.is_empty() {
            format!("There is no tool named `{}` at this step. Answer from the tool results you have.", event.tool_name)
        } else {
            format!(
                "There is no tool named `{}` at this step. Call one of: {}.",
                event.tool_name,
                event.available_tools.join(", ")
            )
        };
        self.say(format!("! unknown tool `{}`; asking the model to use a listed tool", event.tool_name));
        let mut log = lock(&self.log);
        let thought = log.pending_thought.take();
        log.steps.push(Step {
            thought,
            tool: event.tool_name.clone(),
            args: event.args.as_deref().and_then(|a| serde_json::from_str(a).ok()).unwrap_or(Value::Null),
            sql: None,
            vector_filter: None,
            strategy: None,
            gate_size: None,
            observation: format!("error: unknown tool; available: {}", event.available_tools.join(", ")),
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
    fn summarizes_discovery_and_analytics_outputs() {
        let discovery = json!({"gate_size": 42, "customers": [{"customer_id": 7}, {"customer_id": 9}]});
        assert_eq!(summarize_output(&discovery), "2 customers ranked of 42 matching; top ids: 7, 9");
        let analytics = json!({"rows": [{"n": 3}], "row_count": 1, "truncated": false});
        assert_eq!(summarize_output(&analytics), "1 rows; first: {\"n\":3}");
        let long = json!({"text": "x".repeat(1000)});
        assert!(summarize_output(&long).chars().count() <= OBSERVATION_CHARS + 1);
    }

    #[test]
    fn audience_uses_gate_size_when_present() {
        let out = json!({"gate_size": 42, "customers": [{"customer_id": 7}]});
        assert_eq!(audience_of(&out).unwrap().size, 42);
        let out = json!({"count": 30, "customers": [{"customer_id": 7}]});
        assert_eq!(audience_of(&out).unwrap().size, 30);
        let out = json!({"customers": [{"customer_id": 7}, {"customer_id": 8}]});
        assert_eq!(audience_of(&out).unwrap().size, 2);
        assert!(audience_of(&json!({"rows": []})).is_none());
    }

    #[test]
    fn each_call_is_offered_only_the_steps_that_can_follow() {
        let calls = |steps: &[(&str, Outcome)]| -> Vec<(String, Outcome)> {
            steps.iter().map(|(tool, outcome)| ((*tool).to_owned(), *outcome)).collect()
        };
        use Outcome::{Empty, Failed, Found};
        assert_eq!(offered_tools(&[]), None, "the first call chooses among every tool");
        assert_eq!(offered_tools(&calls(&[("hybrid_discovery", Found)])), Some(vec!["sql_data_retriever"]));
        assert_eq!(offered_tools(&calls(&[("semantic_search", Found)])), Some(vec!["sql_data_retriever"]));
        assert_eq!(offered_tools(&calls(&[("sql_analytics", Found)])), Some(vec!["hybrid_discovery"]));
        assert_eq!(offered_tools(&calls(&[("sql_data_retriever", Found)])), Some(vec![]));
        // Errors and empty results leave every tool: fix the arguments, or try another tool.
        assert_eq!(offered_tools(&calls(&[("sql_analytics", Failed)])), None);
        assert_eq!(offered_tools(&calls(&[("hybrid_discovery", Empty)])), None);
        assert_eq!(
            offered_tools(&calls(&[("hybrid_discovery", Failed), ("hybrid_discovery", Found)])),
            Some(vec!["sql_data_retriever"])
        );
        // Two results, then the answer.
        let two = calls(&[("hybrid_discovery", Found), ("sql_data_retriever", Found)]);
        assert_eq!(offered_tools(&two), Some(vec![]));
        let two = calls(&[("sql_analytics", Found), ("sql_data_retriever", Failed), ("semantic_search", Found)]);
        assert_eq!(offered_tools(&two), Some(vec![]));
    }

    #[test]
    fn empty_results_are_told_apart_from_results() {
        assert_eq!(Outcome::of(None), Outcome::Failed);
        assert_eq!(Outcome::of(Some(&json!({"gate_size": 0, "customers": []}))), Outcome::Empty);
        assert_eq!(Outcome::of(Some(&json!({"rows": [], "row_count": 0}))), Outcome::Empty);
        assert_eq!(Outcome::of(Some(&json!({"records": [], "missing_ids": [4]}))), Outcome::Empty);
        assert_eq!(Outcome::of(Some(&json!({"count": 3, "customers": [{"customer_id": 1}]}))), Outcome::Found);
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
