//! The agent's trace: a rig hook recording each Thought (assistant text), Action (tool and arguments), the
//! exact SQL and vector filter a tool ran (from the tool's host-only `ToolTrace`), the Observation, per-step
//! latency and per-call token usage. It also stops the run on a fatal tool failure, asks again after an empty
//! answer, steers the model back after a tool call it cannot make, and chooses the tools each model call is
//! offered ([`offer`]), so a question's later calls do not resend every tool schema.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use audience_tools::audience::AudienceDefinition;
use audience_tools::audience::Edit;
use audience_tools::audience::definition::Clause;
use audience_tools::audience::definition::{EventType, Op};
use audience_tools::audience::refine::{self, FollowUp};
use audience_tools::audience::session::names_no_taste;
use audience_tools::clarify::Clarification;
use audience_tools::failure::{is_fatal, model_visible};
use audience_tools::grounding::{Grounding, Traced, Uncovered};
use audience_tools::metrics::catalogue::Unit;
use audience_tools::metrics::{self, Dimension, Measure, MetricsArgs, MetricsReport};
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

/// The answer to a question whose call was sent back and never mended: what was wrong, and what the data can
/// answer instead. Never the model's own text, which echoed the tool's error (and could quote stored text).
fn unmended_call(wrong: &str) -> String {
    format!(
        "I could not answer this: {wrong}, and the model did not correct its call. Ask again with a condition the \
         data holds (a country, segment, age, spend, orders or last purchase, or what customers viewed, put in the \
         cart or bought), or with the tastes to rank customers by."
    )
}

/// Why a clause of the call sits on the wrong side (see `Grounding::wrong_side`), if one does.
fn wrong_side(args: &Value, grounding: &Grounding) -> Option<String> {
    ["include", "exclude"].into_iter().find_map(|list| {
        let clauses = args.get(list)?.as_array()?;
        clauses.iter().find_map(|value| {
            let clause = serde_json::from_value::<Clause>(value.clone()).ok()?;
            grounding.wrong_side(&clause, list == "exclude")
        })
    })
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

/// What the question names that no clause of the call uses (see `Grounding::uncovered`). Nothing for a call whose
/// arguments do not read (its repair comes first), nor for one without clauses unless the question names an event
/// ("bought", "viewed"): an intent alone may be the right answer to a question of tastes, never to one of deeds.
fn uncovered(args: &Value, grounding: &Grounding) -> Uncovered {
    let Ok(edit) = Edit::try_from(args.clone()) else { return Uncovered::default() };
    let clauses: Vec<Clause> = edit.include.into_iter().chain(edit.exclude).collect();
    if clauses.is_empty() && (grounding.event_types.is_empty() || !edit.remove.is_empty()) {
        return Uncovered::default();
    }
    grounding.uncovered(&clauses, edit.intent.as_deref())
}

/// The repair the program asked for and the model did not make, made by the program on the call after the send-back
/// (the 1.5B model repeats its call far more often than grounding misreads a question): a clause on the wrong side
/// (see `Grounding::wrong_side`) moves to the other, and a country, segment or event the question names and no
/// clause uses gets its clause on the side the question puts it (see `Grounding::completing`). Returns what was
/// done, in words.
fn put_right(args: &mut Value, grounding: &Grounding) -> Vec<String> {
    let Ok(edit) = Edit::try_from(args.clone()) else { return Vec::new() };
    if !edit.remove.is_empty() {
        return Vec::new();
    }
    let side = |exclude: bool| if exclude { "exclude" } else { "include" };
    let mut notes = Vec::new();
    let mut moved: Vec<(Value, bool)> = Vec::new();
    for exclude in [false, true] {
        let Some(Value::Array(clauses)) = args.get_mut(side(exclude)) else { continue };
        clauses.retain(|value| {
            let Ok(clause) = serde_json::from_value::<Clause>(value.clone()) else { return true };
            if grounding.wrong_side(&clause, exclude).is_none() {
                return true;
            }
            notes.push(format!("put \"{}\" in {}, as the question says", clause.rule.predicate(), side(!exclude)));
            moved.push((value.clone(), !exclude));
            false
        });
    }
    let push = |args: &mut Value, clause: Value, exclude: bool| {
        if let Some(object) = args.as_object_mut()
            && let Value::Array(list) = object.entry(side(exclude)).or_insert_with(|| json!([]))
        {
            list.push(clause);
        }
    };
    for (clause, exclude) in moved {
        push(args, clause, exclude);
    }
    let missing = uncovered(args, grounding);
    for (clause, exclude) in grounding.completing(&missing) {
        notes.push(format!("added \"{}\" to {}, as the question names it", clause.rule.predicate(), side(exclude)));
        if let Ok(value) = serde_json::to_value(&clause) {
            push(args, value, exclude);
        }
    }
    notes
}

/// The call's arguments without the clauses nothing in the question asks for (a small model adds `age = 25` or
/// `churned = false` to a question that names neither), and those clauses in words. A clause naming a value the
/// schema does not offer stays: the tool sends it back with the values there are, which is the better repair.
fn drop_untraced(mut args: Value, grounding: &Grounding, offered: &Offered) -> (Value, Vec<String>) {
    // Malformed arguments go to the tool as they are: its reason is what the repair turn needs.
    if Edit::try_from(args.clone()).is_err() {
        return (args, Vec::new());
    }
    let dropped = drop_untraced_clauses(&mut args, ["include", "exclude"], grounding, offered);
    (args, dropped)
}

/// Event clauses with what the question's words settle and the model got wrong; returns how each was read, in
/// words:
/// - no event type: the one event the verbs name ("at least 3 purchases" sent as `{"type": "event", "min_count": 3}`,
///   which would count views and cart additions too);
/// - the count the question asks for ("at least 10 product views", "more than 2 orders") as `min_count`;
/// - a price the question bounds from above ("priced under 10") as `max_price`, not `min_price`.
fn settle_event_clauses(args: &mut Value, lists: [&str; 2], grounding: &Grounding) -> Vec<String> {
    let counts = grounding.counted_events();
    let ceilings = grounding.price_ceilings();
    let mut notes = Vec::new();
    for list in lists {
        let Some(Value::Array(clauses)) = args.get_mut(list) else { continue };
        for clause in clauses.iter_mut().filter_map(Value::as_object_mut) {
            if clause.get("type") != Some(&json!("event")) {
                continue;
            }
            if let [event_type] = grounding.event_types.as_slice()
                && !clause.contains_key("event_type")
            {
                clause.insert("event_type".to_owned(), json!(event_type.as_str()));
                notes.push(format!(
                    "an event clause with no event type read as {}, the event the question names",
                    event_type.as_str()
                ));
            }
            let event_type = clause.get("event_type").and_then(Value::as_str).map(str::to_owned);
            if let Some((_, least)) = counts.iter().find(|(t, _)| Some(t.as_str()) == event_type.as_deref())
                && clause.get("min_count").and_then(Value::as_u64) != Some(u64::from(*least))
            {
                clause.insert("min_count".to_owned(), json!(least));
                notes.push(format!(
                    "at least {least} {} events, as the question counts them",
                    event_type.as_deref().unwrap_or("")
                ));
            }
            // A ceiling the model also sent stands only when the question writes it (it sent `max_price: 0`).
            let said = |n: f64| grounding.numbers.iter().any(|number| (number - n).abs() < 1e-9);
            if let Some(floor) = clause.get("min_price").and_then(Value::as_f64)
                && ceilings.iter().any(|ceiling| (ceiling - floor).abs() < 1e-9)
                && clause
                    .get("max_price")
                    .and_then(Value::as_f64)
                    .is_none_or(|ceiling| !said(ceiling) || ceiling == floor)
            {
                clause.remove("min_price");
                clause.insert("max_price".to_owned(), json!(floor));
                notes.push(format!("a price under {floor} is a ceiling, as the question says"));
            }
        }
    }
    notes
}

/// Profile comparisons with a number the question bounds in words ("at least twice" sent as `order_count > 2`):
/// the operator the words say. Returns how each was read, in words.
fn settle_comparisons(args: &mut Value, lists: [&str; 2], grounding: &Grounding) -> Vec<String> {
    let mut notes = Vec::new();
    for list in lists {
        let Some(Value::Array(clauses)) = args.get_mut(list) else { continue };
        for clause in clauses.iter_mut().filter_map(Value::as_object_mut) {
            let Some(value) = clause.get("value").and_then(Value::as_f64) else { continue };
            let Some(sent) = clause.get("op").and_then(|op| serde_json::from_value::<Op>(op.clone()).ok()) else {
                continue;
            };
            if clause.get("type") != Some(&json!("profile")) || !matches!(sent, Op::Gt | Op::Gte | Op::Lt | Op::Lte) {
                continue;
            }
            if let Some(said) = grounding.bound_of(value).filter(|said| *said != sent) {
                clause.insert("op".to_owned(), json!(said.symbol()));
                let field = clause.get("field").and_then(Value::as_str).unwrap_or_default().to_owned();
                notes.push(format!("{field} {} {value}, as the question says", said.symbol()));
            }
        }
    }
    notes
}

/// Takes the clauses of the lists `lists` of `args` that nothing in the question asks for out (see
/// [`drop_untraced`]); returns them in words.
fn drop_untraced_clauses(args: &mut Value, lists: [&str; 2], grounding: &Grounding, offered: &Offered) -> Vec<String> {
    let mut dropped = Vec::new();
    for list in lists {
        let Some(Value::Array(clauses)) = args.get_mut(list) else { continue };
        clauses.retain_mut(|value| {
            let Ok(clause) = serde_json::from_value::<Clause>(value.clone()) else { return true };
            if !offered.holds(&clause) {
                return true;
            }
            match grounding.trace(&clause) {
                Traced::Kept => true,
                Traced::Trimmed { clause: trimmed, removed } => match serde_json::to_value(&trimmed) {
                    Ok(trimmed_value) => {
                        dropped.extend(
                            removed.into_iter().map(|part| format!("{part} (of {})", trimmed.rule.predicate())),
                        );
                        *value = trimmed_value;
                        true
                    }
                    // A clause that cannot be written back is left as the model sent it.
                    Err(_) => true,
                },
                Traced::Dropped(_) => {
                    dropped.push(clause.rule.predicate());
                    false
                }
            }
        });
    }
    dropped
}

/// Words that ask for a comparison with the period before.
const COMPARE_WORDS: [&str; 11] =
    ["compare", "compared", "comparison", "vs", "versus", "previous", "before", "prior", "change", "growth", "grew"];

/// Words that ask for a share rather than a count: "how many churned customers?" asks for a count, "how many
/// customers churned, as a percentage?" for a rate.
const SHARE_WORDS: [&str; 10] =
    ["rate", "rates", "percentage", "percent", "share", "proportion", "fraction", "ratio", "likely", "odds"];

/// What settling a `metrics` call did, in words: what it left out, and how it read the question where the call did
/// not say what the question asks.
#[derive(Debug, Default)]
struct SettledMetrics {
    dropped: Vec<String>,
    read: Vec<String>,
}

/// A `metrics` call without what nothing in the question asks for, as [`drop_untraced`] does for an audience (the
/// 1.5B model fills in every argument of the schema: a breakdown by country and segment, `within_days: 3660`, a
/// clause on jackets, for "what share of viewers added to the cart?"): dimensions the question names no word of,
/// a window or period it does not give, a comparison it does not ask for, and clauses that do not trace to it.
/// And with what the question's words settle and the model got wrong: a ranking of groups ("which country has the
/// most customers?") groups by the ranked dimension, orders by the measure and keeps the number of groups asked
/// for, and a count of the customers a rate counts on top ("how many churned customers?") is that count, not the
/// rate. Arguments that do not read go to the tool as they are, for its reason.
fn settle_metrics(args: &mut Value, grounding: &Grounding, offered: &Offered) -> SettledMetrics {
    if serde_json::from_value::<MetricsArgs>(args.clone()).is_err() {
        return SettledMetrics::default();
    }
    let mut settled = SettledMetrics::default();
    let words = grounding.sequence();
    let ranking = metrics::ranking::of(words);
    if let Some(ranking) = ranking
        && let Some(Value::Array(dimensions)) = args.as_object_mut().map(|o| o.entry("dimensions").or_insert(json!([])))
        && !dimensions.iter().any(|d| d.as_str() == Some(ranking.dimension.name()))
    {
        dimensions.push(json!(ranking.dimension.name()));
        settled.read.push(format!("grouped by {}, as the question ranks them", ranking.dimension.name()));
    }
    if let Some(Value::Array(dimensions)) = args.get_mut("dimensions") {
        dimensions.retain(|dimension| {
            let name = dimension.as_str().unwrap_or_default();
            // "how many add-to-cart events" is the add_to_cart row of the events by type: the measure counts every
            // type, and a breakdown by type is the one way to read one.
            let one_type = name == Dimension::EventType.name() && !grounding.event_types.is_empty();
            let named = one_type || Dimension::named(name).is_some_and(|d| metrics::ranking::names(words, d));
            if !named {
                settled.dropped.push(format!("the breakdown by {name}"));
            }
            named
        });
    }
    if let Some(object) = args.as_object_mut() {
        let windowed = !grounding.days.is_empty();
        let dated = !grounding.periods.is_empty();
        for (key, asked) in [("within_days", windowed), ("since", dated), ("until", dated)] {
            if let Some(value) = object.get(key).filter(|_| !asked).cloned() {
                object.remove(key);
                settled.dropped.push(format!("{key} {value}"));
            }
        }
        if object.get("compare") == Some(&Value::Bool(true)) && !COMPARE_WORDS.iter().any(|word| grounding.says(word)) {
            object.remove("compare");
            settled.dropped.push("the comparison with the period before".to_owned());
        }
        let counts = grounding.says_phrase("how many") || grounding.says_phrase("number of");
        settled.read.extend(the_named_measure(object, grounding));
        settled.read.extend(events_for_event_groups(object, grounding));
        settle_time(object, grounding, &mut settled.read);
        let whole_time = ["within_days", "since", "until"].iter().all(|key| !object.contains_key(*key));
        if counts && whole_time && !SHARE_WORDS.iter().any(|word| grounding.says(word)) {
            count_instead_of_rate(object, &mut settled.read);
        } else {
            settled.read.extend(drop_what_rates_count(object));
        }
        let kept: Vec<Value> = object.get("dimensions").and_then(Value::as_array).cloned().unwrap_or_default();
        let measures: Vec<Value> = object.get("measures").and_then(Value::as_array).cloned().unwrap_or_default();
        // An order by a dimension left out (or nothing of the call) would only be refused.
        if let Some(order_by) = object.get("order_by").cloned()
            && !kept.contains(&order_by)
            && !measures.contains(&order_by)
        {
            object.remove("order_by");
        }
        if let Some(ranking) = ranking
            && let Some(first) = measures.first()
            && kept.iter().any(|d| d.as_str() == Some(ranking.dimension.name()))
        {
            if !object.get("order_by").is_some_and(|by| measures.contains(by)) {
                object.insert("order_by".to_owned(), first.clone());
            }
            object.insert("order".to_owned(), json!(ranking.order));
            if let Some(limit) = ranking.limit.filter(|_| !object.contains_key("limit")) {
                object.insert("limit".to_owned(), json!(limit));
            }
        }
    }
    settled.read.extend(settle_event_clauses(args, ["filters", "exclude"], grounding));
    settled.read.extend(settle_comparisons(args, ["filters", "exclude"], grounding));
    // An event clause that names no condition is the tool's to refuse, with its reason.
    let empty_event = |value: &Value| value.as_object().is_some_and(|o| o.keys().all(|k| k == "type" || k == "id"));
    let empty = ["filters", "exclude"]
        .iter()
        .any(|list| args.get(*list).and_then(Value::as_array).is_some_and(|clauses| clauses.iter().any(empty_event)));
    if !empty {
        settled.dropped.extend(drop_untraced_clauses(args, ["filters", "exclude"], grounding, offered));
    }
    settled
}

/// The catalogue measures a metrics call names (names it does not know are the tool's to refuse).
fn measures_of(call: &serde_json::Map<String, Value>) -> Vec<Measure> {
    let names = call.get("measures").and_then(Value::as_array).into_iter().flatten();
    names.filter_map(|m| m.as_str().and_then(Measure::named)).collect()
}

/// The time of an event-grain call as the question gives it, whatever the model wrote (it wrote "2023-01-01" to
/// "2023-01-30" for "the last 30 days"): one window the question names is `within_days`, one calendar period (or,
/// for a comparison, the latest of those named) is `since` and `until`. Left alone when the question names both
/// kinds, several without a comparison, or when a filter already carries the window (revenue of the customers who
/// bought in the last 30 days need not be revenue of those 30 days).
fn settle_time(call: &mut serde_json::Map<String, Value>, grounding: &Grounding, read: &mut Vec<String>) {
    let measures = measures_of(call);
    if measures.is_empty() {
        return;
    }
    if measures.iter().any(|measure| measure.grain() != metrics::catalogue::Grain::Event) {
        time_to_event_filters(call, read);
        return;
    }
    let mut windows = grounding.days.clone();
    windows.dedup();
    let compare = call.get("compare") == Some(&Value::Bool(true));
    let time: Vec<(&str, Value)> = match (windows.as_slice(), grounding.periods.as_slice()) {
        ([days], []) | ([days, ..], []) if compare || windows.len() == 1 => {
            // A filter that only says "bought in the last 30 days" beside a measure of purchases is the window of
            // the measure ("which product had the most buyers in the last 30 days?"): its window moves to the call.
            let window = json!(days);
            if let Some(Value::Array(clauses)) = call.get_mut("filters") {
                for clause in clauses.iter_mut().filter_map(Value::as_object_mut) {
                    let bare = clause.get("type") == Some(&json!("event"))
                        && clause.keys().all(|k| matches!(k.as_str(), "type" | "event_type" | "id" | "within_days"));
                    if bare && clause.get("within_days") == Some(&window) {
                        clause.remove("within_days");
                    }
                }
            }
            let filters = serde_json::to_string(&call.get("filters")).unwrap_or_default();
            if filters.contains(&format!("\"within_days\":{days}")) {
                return;
            }
            // "The last 12 months" is 360 days here and 365 to the model: a window the tracing accepts stays.
            let near = |written: u64| written.abs_diff(u64::from(*days)) <= u64::from((days / 30).max(2));
            if call.get("within_days").and_then(Value::as_u64).is_some_and(near)
                && !call.contains_key("since")
                && !call.contains_key("until")
            {
                return;
            }
            vec![("within_days", json!(days))]
        }
        ([], [period]) | ([], [period, ..]) if compare || grounding.periods.len() == 1 => {
            let latest = grounding.periods.iter().max_by_key(|(since, until)| (*since, *until)).unwrap_or(period);
            let day = |date: Option<chrono::NaiveDate>| date.map(|d| json!(d.to_string()));
            let mut time = Vec::new();
            time.extend(day(latest.0).map(|since| ("since", since)));
            time.extend(day(latest.1).map(|until| ("until", until)));
            time
        }
        _ => return,
    };
    let written: Vec<(&str, Value)> =
        ["within_days", "since", "until"].into_iter().filter_map(|key| Some((key, call.get(key)?.clone()))).collect();
    if written == time {
        return;
    }
    for key in ["within_days", "since", "until"] {
        call.remove(key);
    }
    let words: Vec<String> = time.iter().map(|(key, value)| format!("{key} {value}")).collect();
    call.extend(time.into_iter().map(|(key, value)| (key.to_owned(), value)));
    read.push(format!("the time as the question gives it: {}", words.join(", ")));
}

/// The measure the question names, for the call's one measure when that is another: by a phrase of its own
/// ([`Measure::phrases`]: "churn_rate" for "what's our repeat purchase rate?"), or, when it asks for a share, by the
/// two funnel events it names ([`Measure::funnel`]: "what share of the customers who viewed a product also added
/// something to their cart?" is view→cart conversion, not a count of viewers). The replacement is of the same
/// kind (a rate for a rate), or a rate for a count when the question asks for a share. For a funnel rate, event
/// filters that only restate its two events are left out: a view→cart rate of customers who added to the cart is
/// 100%. A question that names several measures, or a call of several, is left alone.
fn the_named_measure(call: &mut serde_json::Map<String, Value>, grounding: &Grounding) -> Vec<String> {
    let share = SHARE_WORDS.iter().any(|word| grounding.says(word));
    let mut by_phrase =
        Measure::ALL.into_iter().filter(|measure| measure.phrases().iter().any(|phrase| grounding.says_phrase(phrase)));
    let phrased = match (by_phrase.next(), by_phrase.next()) {
        (Some(named), None) => Some(named),
        _ => None,
    };
    let funnel = {
        let mut named: Vec<(EventType, bool)> = Vec::new();
        for (event_type, negated) in grounding.mentions() {
            if !named.iter().any(|(t, _)| t == event_type) {
                named.push((*event_type, *negated));
            }
        }
        named.sort_by_key(|(event_type, _)| EventType::ALL.iter().position(|t| t == event_type));
        match named.as_slice() {
            [(from, false), (to, negated)] if share => Measure::funnel(*from, *to, *negated).map(|m| (m, [*from, *to])),
            _ => None,
        }
    };
    let Some(named) = phrased.or(funnel.map(|(measure, _)| measure)) else { return Vec::new() };
    let Some(Value::Array(measures)) = call.get_mut("measures") else { return Vec::new() };
    let [sent] = measures.as_mut_slice() else { return Vec::new() };
    let Some(was) = sent.as_str().and_then(Measure::named) else { return Vec::new() };
    let kind = was.unit() == named.unit() || (share && named.unit() == Unit::Rate && was.unit() == Unit::Count);
    if was == named || !kind {
        return Vec::new();
    }
    *sent = json!(named.name());
    if call.get("order_by") == Some(&json!(was.name())) {
        call.insert("order_by".to_owned(), json!(named.name()));
    }
    let mut notes = vec![format!("measured the {}, which the question names, not the {}", named.label(), was.label())];
    if let Some((_, steps)) = funnel.filter(|(measure, _)| *measure == named)
        && let Some(Value::Array(filters)) = call.get_mut("filters")
    {
        let restates = |clause: &Value| {
            clause.as_object().is_some_and(|o| {
                o.get("type") == Some(&json!("event"))
                    && o.keys().all(|k| matches!(k.as_str(), "type" | "event_type" | "id"))
                    && steps.iter().any(|step| o.get("event_type") == Some(&json!(step.as_str())))
            })
        };
        let before = filters.len();
        filters.retain(|clause| !restates(clause));
        if filters.len() < before {
            notes.push(format!("the {} takes its own events; the filters on them are left out", named.label()));
        }
    }
    notes
}

/// A customer-grain call takes no time of its own (its measures describe customers as they are): "how many
/// customers bought shoes in the last 30 days?" sent with `within_days: 30` beside the purchase clause is the window
/// of that clause. The time goes to each event filter that has none; with no event filter it stays, for the tool's
/// reason.
fn time_to_event_filters(call: &mut serde_json::Map<String, Value>, read: &mut Vec<String>) {
    let time: Vec<(String, Value)> = ["within_days", "since", "until"]
        .into_iter()
        .filter_map(|key| Some((key.to_owned(), call.get(key)?.clone())))
        .collect();
    let Some(Value::Array(filters)) = call.get_mut("filters") else { return };
    let mut events: Vec<&mut serde_json::Map<String, Value>> = filters
        .iter_mut()
        .filter_map(Value::as_object_mut)
        .filter(|clause| clause.get("type") == Some(&json!("event")))
        .collect();
    if time.is_empty() || events.is_empty() {
        return;
    }
    for clause in events.iter_mut() {
        if !["within_days", "since", "until"].iter().any(|key| clause.contains_key(*key)) {
            clause.extend(time.iter().cloned());
        }
    }
    for (key, _) in &time {
        call.remove(key);
    }
    let words: Vec<String> = time.iter().map(|(key, value)| format!("{key} {value}")).collect();
    read.push(format!(
        "the time ({}) is that of the event filter, as customers are counted as they are",
        words.join(", ")
    ));
}

/// A customer count grouped by an event's dimension (product, colour, a period) counts the customers with such
/// events: the buyers when the question speaks of buying, else the customers with any event. `customers` describes
/// customers as they are, with no product of their own, and the tool would refuse it.
fn events_for_event_groups(call: &mut serde_json::Map<String, Value>, grounding: &Grounding) -> Vec<String> {
    let on_events = call
        .get("dimensions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|d| d.as_str().and_then(Dimension::named))
        .find(|dimension| dimension.source() == metrics::catalogue::Source::Event);
    let Some(Value::Array(measures)) = call.get_mut("measures") else { return Vec::new() };
    let customers = json!(Measure::Customers.name());
    let Some(dimension) = on_events.filter(|_| measures.contains(&customers)) else { return Vec::new() };
    let bought = grounding.event_types.contains(&EventType::Purchase);
    let counted = if bought { Measure::Buyers } else { Measure::ActiveCustomers };
    for measure in measures.iter_mut().filter(|measure| **measure == customers) {
        *measure = json!(counted.name());
    }
    if call.get("order_by") == Some(&customers) {
        call.insert("order_by".to_owned(), json!(counted.name()));
    }
    vec![format!(
        "counted {} per {}, as a customer has no {} of their own",
        counted.label(),
        dimension.name(),
        dimension.name()
    )]
}

/// The filters that pick only the customers a rate of the call counts on top ("churn rate" filtered to churned
/// customers is 100%): the rate's own condition is not a filter of its base. Returns what was read so, in words.
fn drop_what_rates_count(call: &mut serde_json::Map<String, Value>) -> Vec<String> {
    let measures = measures_of(call);
    let own: Vec<(Measure, String, Value)> = measures
        .into_iter()
        .filter_map(|rate| {
            let (_, rule) = rate.counted()?;
            let noun = rule.noun();
            Some((rate, noun, serde_json::to_value(Clause { id: String::new(), rule }).ok()?))
        })
        .collect();
    let mut notes = Vec::new();
    if let Some(Value::Array(filters)) = call.get_mut("filters") {
        filters.retain(|filter| {
            let Some((rate, noun, _)) = own.iter().find(|(_, _, clause)| clause == filter) else { return true };
            notes.push(format!("the {} counts {noun} among all, so it is not filtered to them", rate.label()));
            false
        });
    }
    notes
}

/// Each rate of the call that counts customers on top (see [`Measure::counted`]) replaced by that count, with the
/// clause that picks those customers added to the filters unless the call has one on the same field.
fn count_instead_of_rate(call: &mut serde_json::Map<String, Value>, read: &mut Vec<String>) {
    let Some(Value::Array(measures)) = call.get("measures").cloned() else { return };
    let mut filters: Vec<Value> = call.get("filters").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut counted: Vec<Value> = Vec::new();
    let notes = read.len();
    for measure in measures {
        let rate = measure.as_str().and_then(Measure::named);
        let Some((count, rule)) = rate.and_then(Measure::counted) else {
            if !counted.contains(&measure) {
                counted.push(measure);
            }
            continue;
        };
        let field = |clause: &Value| clause.get("field").cloned();
        let noun = rule.noun();
        let Ok(clause) = serde_json::to_value(Clause { id: String::new(), rule }) else { continue };
        if !filters.iter().any(|f| f.get("type") == clause.get("type") && field(f) == field(&clause)) {
            filters.push(clause);
        }
        if !counted.contains(&json!(count.name())) {
            counted.push(json!(count.name()));
        }
        if let Some(rate) = rate {
            read.push(format!("counted {noun} instead of the {}, as the question asks how many", rate.label()));
        }
    }
    if read.len() > notes {
        call.insert("measures".to_owned(), Value::Array(counted));
        call.insert("filters".to_owned(), Value::Array(filters));
    }
}

/// Words that ask for a control group.
const HOLDOUT_WORDS: [&str; 6] = ["holdout", "hold", "held", "control", "withhold", "withheld"];

/// A `draft_emails` call without what the question does not give, as [`settle_metrics`] does for a metrics call.
/// An offer is a promise in every e-mail: one whose numbers (a discount, a price, a date) the question does not
/// write, or, without numbers, none of whose words it says, is the model's invention. A holdout, a limit, a
/// grouping or a file name nobody asked for is left to the defaults. Returns what was left out, in words.
fn settle_drafts(args: &mut Value, grounding: &Grounding) -> Vec<String> {
    let Some(call) = args.as_object_mut() else { return Vec::new() };
    // The question's numbers, "15%" and "$20" included.
    let written: Vec<f64> = grounding
        .sequence()
        .iter()
        .filter_map(|word| word.trim_matches(|c: char| !c.is_ascii_digit()).parse().ok())
        .chain(grounding.numbers.iter().copied())
        .collect();
    let said = |n: f64| written.iter().any(|number| (number - n).abs() < 1e-9);
    let mut dropped = Vec::new();
    if let Some(offer) = call.get("offer").and_then(Value::as_str).map(str::to_owned) {
        let numbers: Vec<f64> = offer
            .split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter_map(|part| part.trim_matches('.').parse().ok())
            .collect();
        let lower = offer.to_lowercase();
        let mut words = lower.split(|c: char| !c.is_alphanumeric()).filter(|word| word.len() > 3);
        let traced =
            if numbers.is_empty() { words.any(|word| grounding.says(word)) } else { numbers.iter().all(|n| said(*n)) };
        if !traced {
            call.remove("offer");
            dropped.push(format!("the offer {offer:?}"));
        }
    }
    if let Some(holdout) = call.get("holdout").and_then(Value::as_f64)
        && !(said(holdout) && HOLDOUT_WORDS.iter().any(|word| grounding.says(word)))
    {
        call.remove("holdout");
        dropped.push(format!("a holdout of {holdout}%"));
    }
    if let Some(limit) = call.get("limit").and_then(Value::as_f64).filter(|limit| !said(*limit)) {
        call.remove("limit");
        dropped.push(format!("a limit of {limit} drafts"));
    }
    if let Some(per) = call.get("per").and_then(Value::as_str).map(str::to_owned)
        && per != "member"
        && !grounding.says(&per)
        && !grounding.says(&format!("{per}s"))
    {
        call.remove("per");
        dropped.push(format!("one draft per {per}"));
    }
    if let Some(file) = call.get("file").and_then(Value::as_str).map(str::to_owned) {
        // The name as the question writes it ("spring.csv" is one word there, or two), its extension aside.
        let lower = file.to_lowercase();
        let stem = lower.rsplit_once('.').map_or(lower.as_str(), |(stem, _)| stem);
        let mut parts = stem.split(|c: char| !c.is_alphanumeric()).filter(|part| !part.is_empty());
        let said = grounding.sequence().iter().any(|word| word.trim_matches(|c: char| !c.is_alphanumeric()) == lower);
        if !said && !parts.all(|part| grounding.says(part)) {
            call.remove("file");
            dropped.push(format!("the file name {file:?}"));
        }
    }
    dropped
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
                    return self.send_back(&reason, "its conditions put what you asked for on the wrong side".to_owned());
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
            if let Some(wrong) = log.sent_back.take() {
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

    /// The library's metrics answers are what the settling keeps: no breakdown, period, comparison or filter of an
    /// example is one its question does not ask for, so the model is never shown a call the program would cut.
    /// The data values of the example library, with the sample's countries, and its last day.
    fn library_values() -> (audience_tools::vocabulary::DataValues, chrono::NaiveDate) {
        let examples = audience_tools::examples::library().unwrap();
        let mut values = audience_tools::examples::values_of(&examples);
        values.countries =
            ["AT", "BE", "DE", "DK", "ES", "FR", "GB", "IT", "NL", "PL", "SE", "US"].map(String::from).to_vec();
        (values, chrono::NaiveDate::from_ymd_opt(2026, 6, 29).unwrap())
    }

    /// `args` settled against `question`, and the notes of the settling.
    fn settled_metrics(question: &str, mut args: Value) -> (Value, SettledMetrics) {
        let (values, as_of) = library_values();
        let grounding = Grounding::of(question, &values, as_of);
        let offered = Offered::narrow(&values, &grounding.found);
        let settled = settle_metrics(&mut args, &grounding, &offered);
        (args, settled)
    }

    /// Recorded from the local 1.5B model: the ranking was sent as a filter on every country.
    #[test]
    fn a_ranking_sent_as_a_filter_becomes_a_breakdown_ordered_by_the_measure() {
        let countries = ["US", "DE", "PL", "GB", "FR", "ES", "IT", "NL", "SE"];
        let call = json!({"measures": ["customers"], "filters": [
            {"type": "profile", "field": "country", "op": "in", "value": countries}]});
        let (args, settled) = settled_metrics("Which country has the most customers?", call);
        let ranked = json!({"measures": ["customers"], "dimensions": ["country"], "filters": [],
            "order_by": "customers", "order": "desc", "limit": 1});
        assert_eq!(args, ranked, "{settled:?}");
        assert_eq!(settled.read, ["grouped by country, as the question ranks them"]);
        let call = json!({"measures": ["gross_revenue"], "dimensions": ["product"], "order_by": "product"});
        let (args, _) = settled_metrics("What are the 3 worst-selling products?", call);
        let ranked = json!({"measures": ["gross_revenue"], "dimensions": ["product"], "order_by": "gross_revenue",
            "order": "asc", "limit": 3});
        assert_eq!(args, ranked);
    }

    /// Recorded from the local 1.5B model: "how many churned customers" was sent as the churn rate.
    #[test]
    fn a_count_sent_as_a_rate_becomes_the_count_of_the_customers_it_counts() {
        let churned = json!({"type": "profile", "field": "churned", "op": "=", "value": true});
        let call = json!({"measures": ["churn_rate"], "filters": [churned]});
        let (args, settled) = settled_metrics("how many churned customers have we got?", call);
        assert_eq!(args, json!({"measures": ["customers"], "filters": [churned]}));
        assert_eq!(
            settled.read,
            ["counted churned customers instead of the churn rate, as the question asks how many"]
        );
        let call = json!({"measures": ["churn_rate"]});
        let (args, _) = settled_metrics("How many customers have churned?", call);
        assert_eq!(args, json!({"measures": ["customers"], "filters": [churned]}), "the clause is added");
        let call = json!({"measures": ["churn_rate"]});
        let (args, _) = settled_metrics("What share of our buyers have churned?", call.clone());
        assert_eq!(args, call, "a share is a rate");
    }

    /// Recorded from the local 1.5B model: the churn rate "of the customers who have bought" filtered to churned
    /// customers, which would be 100%.
    #[test]
    fn a_rate_is_not_filtered_to_the_customers_it_counts() {
        let churned = json!({"type": "profile", "field": "churned", "op": "=", "value": true});
        let call = json!({"measures": ["churn_rate"], "filters": [churned]});
        let question = "What percentage of the customers who have ever bought something have churned?";
        let (args, settled) = settled_metrics(question, call);
        assert_eq!(args, json!({"measures": ["churn_rate"], "filters": []}));
        assert_eq!(settled.read, ["the churn rate counts churned customers among all, so it is not filtered to them"]);
    }

    /// A draft call keeps what the question gives and loses what the model made up: an offer is a promise in every
    /// e-mail.
    #[test]
    fn a_draft_call_loses_an_offer_and_settings_the_question_does_not_give() {
        let (values, as_of) = library_values();
        let settle = |question: &str, mut args: Value| {
            let dropped = settle_drafts(&mut args, &Grounding::of(question, &values, as_of));
            (args, dropped)
        };
        let invented =
            json!({"offer": "20% off everything until Sunday", "holdout": 10, "limit": 50, "per": "segment"});
        let (args, dropped) = settle("write e-mails for this audience", invented);
        assert_eq!(args, json!({}));
        assert_eq!(dropped.len(), 4, "{dropped:?}");
        assert!(dropped[0].contains("20% off"), "{dropped:?}");

        let given = json!({"offer": "15% off until Sunday", "holdout": 10, "limit": 5, "per": "segment"});
        let question = "draft 5 e-mails, one per segment, offering 15% off until Sunday, with a 10% control group";
        let (args, dropped) = settle(question, given.clone());
        assert_eq!((args, dropped), (given, Vec::<String>::new()));

        let (args, _) = settle("e-mails with free shipping", json!({"offer": "free shipping on all orders"}));
        assert_eq!(args, json!({"offer": "free shipping on all orders"}), "an offer without numbers traces by words");
    }

    /// Recorded from the local 1.5B model: dates of another year for "the last 30 days", which the settling
    /// dropped, and then a comparison with no period.
    #[test]
    fn the_time_of_an_event_call_is_the_time_the_question_gives() {
        let call = json!({"measures": ["net_revenue"], "since": "2023-01-01", "until": "2023-01-30", "compare": true});
        let (args, settled) = settled_metrics("net revenue of the last 30 days compared with the 30 days before", call);
        assert_eq!(args, json!({"measures": ["net_revenue"], "compare": true, "within_days": 30}), "{settled:?}");
        let call = json!({"measures": ["gross_revenue"], "within_days": 30});
        let (args, settled) = settled_metrics("gross revenue in May 2026", call);
        let may = json!({"measures": ["gross_revenue"], "since": "2026-05-01", "until": "2026-05-31"});
        assert_eq!(args, may, "{settled:?}");
        let buyers = json!({"type": "event", "event_type": "purchase", "within_days": 30});

        let question = "revenue from customers who bought shoes in the last 30 days";
        let shoes = json!({"type": "event", "event_type": "purchase", "products": ["shoes"], "within_days": 30});
        let call = json!({"measures": ["gross_revenue"], "filters": [shoes]});
        assert_eq!(settled_metrics(question, call.clone()).0, call, "the filter holds the window");
        let call = json!({"measures": ["buyers"], "dimensions": ["product"], "filters": [buyers]});
        let (args, _) = settled_metrics("Which product had the most buyers in the last 30 days?", call);
        let windowed = json!({"measures": ["buyers"], "dimensions": ["product"], "within_days": 30,
            "filters": [{"type": "event", "event_type": "purchase"}], "order_by": "buyers", "order": "desc", "limit": 1});
        assert_eq!(args, windowed, "a bare filter's window is the call's");
    }

    /// A customer count with a window beside its event clause counts the customers with such events in the window.
    #[test]
    fn the_time_of_a_customer_count_is_that_of_its_event_filter() {
        let bought = json!({"type": "event", "event_type": "purchase", "products": ["shoes"]});
        let call = json!({"measures": ["customers"], "filters": [bought], "within_days": 30});
        let (args, settled) = settled_metrics("how many customers bought shoes in the last 30 days?", call);
        let windowed = json!({"type": "event", "event_type": "purchase", "products": ["shoes"], "within_days": 30});
        assert_eq!(args, json!({"measures": ["customers"], "filters": [windowed]}), "{settled:?}");
    }

    /// Recorded from the local 1.5B model: "which product was bought by the most customers" as `customers` by
    /// product, which the tool refuses.
    #[test]
    fn customers_grouped_by_an_event_dimension_are_the_buyers_or_the_active_customers() {
        let call = json!({"measures": ["customers"], "dimensions": ["product"], "order": "desc", "limit": 1});
        let (args, settled) = settled_metrics("Which product did the most customers buy?", call);
        let buyers = json!({"measures": ["buyers"], "dimensions": ["product"], "order_by": "buyers",
            "order": "desc", "limit": 1});
        assert_eq!(args, buyers, "{settled:?}");
        let call = json!({"measures": ["customers"], "dimensions": ["color"]});
        let (args, _) = settled_metrics("customers per colour viewed", call);
        assert_eq!(args, json!({"measures": ["active_customers"], "dimensions": ["color"]}));
    }

    /// Recorded from the local 1.5B model: the churn rate for "repeat purchase rate".
    #[test]
    fn the_measure_a_question_names_is_the_one_measured() {
        let call = json!({"measures": ["churn_rate"]});
        let (args, settled) = settled_metrics("What is our repeat purchase rate?", call);
        assert_eq!(args, json!({"measures": ["repeat_purchase_rate"]}));
        assert_eq!(settled.read, ["measured the repeat-purchase rate, which the question names, not the churn rate"]);
        let call = json!({"measures": ["gross_revenue"]});
        let (args, _) = settled_metrics("What's our net revenue?", call);
        assert_eq!(args, json!({"measures": ["net_revenue"]}));
        let call = json!({"measures": ["customers"]});
        let (args, _) = settled_metrics("how many customers abandoned their cart?", call.clone());
        assert_eq!(args, call, "a count is not replaced by a rate");
        let call = json!({"measures": ["churn_rate"]});
        let (args, _) = settled_metrics("What share of our buyers have bought more than once?", call);
        assert_eq!(args, json!({"measures": ["repeat_purchase_rate"]}));
        let call = json!({"measures": ["returns"]});
        let (args, _) = settled_metrics("How many units were returned in total?", call);
        assert_eq!(args, json!({"measures": ["returned_items"]}));
    }

    /// Recorded from the local 1.5B model: a funnel share sent as a count of viewers, and as the other cart rate.
    #[test]
    fn a_share_of_one_event_among_another_is_the_funnel_rate() {
        let viewed = json!({"type": "event", "event_type": "view"});
        let carted = json!({"type": "event", "event_type": "add_to_cart"});
        let call = json!({"measures": ["customers"], "filters": [viewed, carted]});
        let question = "What share of the customers who viewed a product also added something to their cart?";
        let (args, settled) = settled_metrics(question, call);
        assert_eq!(args, json!({"measures": ["view_to_cart"], "filters": []}), "{settled:?}");
        let call = json!({"measures": ["cart_abandonment"]});
        let (args, _) = settled_metrics("What percentage of customers who added to the cart went on to buy?", call);
        assert_eq!(args, json!({"measures": ["cart_to_purchase"]}));
        let call = json!({"measures": ["cart_to_purchase"]});
        let question = "what share of shoppers who added to the cart never bought anything?";
        assert_eq!(settled_metrics(question, call).0, json!({"measures": ["cart_abandonment"]}));
    }

    /// Recorded from the local 1.5B model: "at least 3 purchases" as an event clause of any type.
    #[test]
    fn an_event_clause_with_no_type_gets_the_one_event_the_question_names() {
        let (values, as_of) = library_values();
        let grounding = Grounding::of("customers with at least 3 purchases", &values, as_of);
        let mut args = json!({"include": [{"type": "event", "min_count": 3}]});
        let notes = settle_event_clauses(&mut args, ["include", "exclude"], &grounding);
        assert_eq!(args, json!({"include": [{"type": "event", "min_count": 3, "event_type": "purchase"}]}));
        assert_eq!(notes.len(), 1);
        let grounding = Grounding::of("customers who viewed or bought shoes", &values, as_of);
        let mut args = json!({"include": [{"type": "event", "products": ["shoes"]}]});
        assert!(
            settle_event_clauses(&mut args, ["include", "exclude"], &grounding).is_empty(),
            "two events: left as is"
        );
    }

    /// Recorded from the local 1.5B model, each call repeated after its send-back: the program makes the repair.
    #[test]
    fn a_repeated_call_is_put_right_by_the_program() {
        let (values, as_of) = library_values();
        let put = |question: &str, mut args: Value| {
            let notes = put_right(&mut args, &Grounding::of(question, &values, as_of));
            (args, notes)
        };
        let churned = json!({"type": "profile", "field": "churned", "op": "=", "value": true});
        let us = json!({"type": "profile", "field": "country", "op": "=", "value": "US"});
        let (args, notes) = put("Churned customers in the US", json!({"exclude": [churned], "limit": 10}));
        assert_eq!(args, json!({"exclude": [], "limit": 10, "include": [churned, us]}), "{notes:?}");
        assert_eq!(notes.len(), 2, "{notes:?}");

        let not_us = json!({"type": "profile", "field": "country", "op": "!=", "value": "US"});
        let vip = json!({"type": "profile", "field": "segment", "op": "=", "value": "VIP Loyalty"});
        let (args, _) = put("VIP Loyalty customers outside the US", json!({"exclude": [not_us, vip]}));
        assert_eq!(args, json!({"exclude": [], "include": [not_us, vip]}));

        let bought = json!({"type": "event", "event_type": "purchase"});
        let question = "Customers who added something to their cart but never bought anything";
        let (args, _) = put(question, json!({"exclude": [bought]}));
        let carted = json!({"type": "event", "event_type": "add_to_cart"});
        assert_eq!(args, json!({"exclude": [bought], "include": [carted]}));
    }

    /// Recorded from the local 1.5B model: "at least 10 product views" without the count, and "priced under 10"
    /// as a floor.
    #[test]
    fn counts_and_price_ceilings_are_read_from_the_question() {
        let (values, as_of) = library_values();
        let settle = |question: &str, mut args: Value| {
            let notes =
                settle_event_clauses(&mut args, ["include", "exclude"], &Grounding::of(question, &values, as_of));
            (args, notes)
        };
        let viewed = json!({"include": [{"type": "event", "event_type": "view", "within_days": 90}]});
        let (args, _) = settle("Customers with at least 10 product views in the last 90 days", viewed);
        assert_eq!(
            args,
            json!({"include": [{"type": "event", "event_type": "view", "within_days": 90, "min_count": 10}]})
        );
        let bought = json!({"include": [{"type": "event", "event_type": "purchase", "products": ["socks"]}]});
        let (args, _) = settle("bought socks more than 2 times", bought);
        assert_eq!(args["include"][0]["min_count"], json!(3));
        let cheap = json!({"include": [{"type": "event", "event_type": "view", "products": ["socks"], "min_price": 10,
            "max_price": 0}]});
        let (args, notes) = settle("Customers who viewed socks priced under 10", cheap);
        assert_eq!(
            args,
            json!({"include": [{"type": "event", "event_type": "view", "products": ["socks"], "max_price": 10.0}]}),
            "{notes:?}"
        );
        let dear =
            json!({"include": [{"type": "event", "event_type": "view", "products": ["socks"], "min_price": 10}]});
        assert_eq!(settle("Customers who viewed socks priced over 10", dear.clone()).0, dear);
    }

    /// Recorded from the local 1.5B model: "at least twice" sent as `order_count > 2`, and the events of one type
    /// asked for with the breakdown by type that reads them.
    #[test]
    fn comparisons_and_event_types_are_read_as_the_question_says() {
        let (values, as_of) = library_values();
        let grounding = Grounding::of("only those who have bought at least twice in total", &values, as_of);
        let mut args = json!({"include": [{"type": "profile", "field": "order_count", "op": ">", "value": 2}]});
        let notes = settle_comparisons(&mut args, ["include", "exclude"], &grounding);
        assert_eq!(args["include"][0]["op"], ">=", "{notes:?}");
        let call = json!({"measures": ["events"], "dimensions": ["event_type"], "within_days": 7});
        let (args, _) = settled_metrics("how many add-to-cart events were there in the last 7 days?", call.clone());
        assert_eq!(args, call, "the breakdown by type stays");
    }

    #[test]
    fn every_metrics_example_survives_the_settling_whole() {
        let examples = audience_tools::examples::library().unwrap();
        let (values, as_of) = library_values();
        let mut failures = Vec::new();
        for example in examples.iter().filter(|e| e.tool == "metrics") {
            let grounding = Grounding::of(&example.question, &values, as_of);
            let offered = Offered::narrow(&values, &grounding.found);
            let mut args = example.args.clone();
            let settled = settle_metrics(&mut args, &grounding, &offered);
            if !settled.dropped.is_empty() || args != example.args {
                failures.push(format!(
                    "{:?}: {} left out; became {args}",
                    example.question,
                    settled.dropped.join(", ")
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
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
