//! Host-only metadata about one tool call: what actually ran. Never sent to the model.
//!
//! Each tool fills a [`ToolTrace`] and publishes it into rig's tool context with
//! `ctx.insert_result(trace)`, on success and on failure alike. The agent's hook reads it back with
//! `event.tool_context()?.result::<ToolTrace>()` to show the exact SQL, the vector filter and the costs.
//! The tool's full output travels the same way ([`FullOutput`]), because the model is sent only a compact
//! observation of it.

use std::collections::BTreeMap;
use std::time::Instant;

use rig_core::completion::Usage;
use rig_core::tool::{ContextValue, Tool, ToolContext, ToolOutput};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::failure::ToolFailure;
use crate::vector::Filter;

/// The inner LLM call of `sql_analytics` (text to SQL).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct InnerLlmCall {
    /// The model id the provider reported, else the one requested.
    pub model: Option<String>,
    /// Token usage as reported by the provider (`None` counters were not reported).
    pub usage: Usage,
    pub ms: u64,
}

/// What one tool call did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ToolTrace {
    /// The tool's name.
    pub tool: String,
    /// The exact SQL sent to PostgreSQL (after the guard), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql: Option<String>,
    /// The vector filter, in our own filter model (the same JSON for both engines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vector_filter: Option<Filter>,
    /// The size of the audience `find_audience` evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience_size: Option<u64>,
    /// Tokens embedded for the query text (0 when nothing was embedded).
    #[serde(default)]
    pub embedding_tokens: u64,
    /// The inner text-to-SQL LLM call (`sql_analytics` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inner_llm: Option<InnerLlmCall>,
    /// Wall time per phase in milliseconds, to the microsecond (`total`, `sql`, `embed`, `vector`, `llm`, ...):
    /// the benchmarks read sub-millisecond phases from here.
    #[serde(default)]
    pub timings_ms: BTreeMap<String, f64>,
    /// The model-visible error of a failed call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Set when the failure is fatal: the host must stop the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fatal: Option<String>,
}

impl ContextValue for ToolTrace {
    const KEY: &'static str = "tool_trace";
}

impl ToolTrace {
    pub fn new(tool: &str) -> Self {
        Self { tool: tool.to_owned(), ..Self::default() }
    }

    /// Adds the time since `start` to phase `phase`.
    pub fn time(&mut self, phase: &str, start: Instant) {
        let ms = (start.elapsed().as_secs_f64() * 1e6).round() / 1e3;
        *self.timings_ms.entry(phase.to_owned()).or_default() += ms;
    }
}

/// Records the outcome in `trace` and attaches it to the tool context for the agent's hook.
pub fn publish<T>(context: &mut ToolContext, mut trace: ToolTrace, result: &Result<T, ToolFailure>) {
    if let Err(failure) = result {
        trace.error = Some(failure.to_string());
        if failure.is_fatal() {
            trace.fatal = Some(failure.to_string());
        }
    }
    insert(context, trace);
}

/// Attaches host-only data to the tool context. Serializing plain data cannot fail; if it ever did, only the
/// host-side view would be missing, so the tool call itself still succeeds.
fn insert<T: ContextValue>(context: &mut ToolContext, value: T) {
    if let Err(error) = context.insert_result(value) {
        tracing::warn!("cannot attach {} to the tool context: {error}", T::KEY);
    }
}

/// A tool's full output as JSON, published into the tool context next to its [`ToolTrace`]. The model is sent
/// only the tool's compact observation ([`TracedTool::observe`]); the host builds the audience and the step
/// summaries from this.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FullOutput(pub Value);

impl ContextValue for FullOutput {
    const KEY: &'static str = "full_output";
}

/// A tool whose body records what it ran into a [`ToolTrace`] and whose model-visible output is a compact
/// rendering of its full output. The ways a tool is run share that body: [`run`](Self::run) (no agent),
/// [`run_traced`](Self::run_traced) (the caller keeps the trace), [`call_traced`](Self::call_traced) (the
/// trace and the full output go into the tool context; the `tool` command) and
/// [`call_observed`](Self::call_observed) (rig's `Tool::call`: the same, and the model gets the observation).
pub trait TracedTool: Tool<Error = ToolFailure, Output = ToolOutput> {
    /// The tool's full output: what `audience tool` prints and what the host keeps.
    type Report: Serialize + Send;

    /// The tool's work; `trace` receives the SQL, vector filter, strategy and timings as they happen.
    fn execute(
        &self,
        args: Self::Args,
        trace: &mut ToolTrace,
    ) -> impl Future<Output = Result<Self::Report, ToolFailure>> + Send;

    /// What the model is sent of `report` (see [`crate::observe`]): what it needs to answer and to choose the
    /// next step, in as few tokens as possible.
    fn observe(report: &Self::Report) -> String;

    /// Runs the tool outside an agent.
    fn run(&self, args: Self::Args) -> impl Future<Output = Result<Self::Report, ToolFailure>> + Send {
        async move { self.run_traced(args, &mut ToolTrace::new(Self::NAME)).await }
    }

    /// Runs the tool, recording into `trace`, including its total time.
    fn run_traced(
        &self,
        args: Self::Args,
        trace: &mut ToolTrace,
    ) -> impl Future<Output = Result<Self::Report, ToolFailure>> + Send {
        async move {
            let start = Instant::now();
            let result = self.execute(args, trace).await;
            trace.time("total", start);
            result
        }
    }

    /// Runs the tool and publishes its trace (on success and failure alike) and its full output into `context`.
    fn call_traced(
        &self,
        context: &mut ToolContext,
        args: Self::Args,
    ) -> impl Future<Output = Result<Self::Report, ToolFailure>> + Send {
        async move {
            let mut trace = ToolTrace::new(Self::NAME);
            let result = self.run_traced(args, &mut trace).await;
            publish(context, trace, &result);
            if let Ok(report) = &result {
                match serde_json::to_value(report) {
                    Ok(full) => insert(context, FullOutput(full)),
                    Err(error) => tracing::warn!("cannot keep the full output of {}: {error}", Self::NAME),
                }
            }
            result
        }
    }

    /// The body of rig's `Tool::call`: [`call_traced`](Self::call_traced), and the model gets the observation.
    fn call_observed(
        &self,
        context: &mut ToolContext,
        args: Self::Args,
    ) -> impl Future<Output = Result<ToolOutput, ToolFailure>> + Send {
        async move {
            let report = self.call_traced(context, args).await?;
            Ok(ToolOutput::text(Self::observe(&report)))
        }
    }
}

/// Implements rig's `Tool` for a [`TracedTool`]: its name and description from its `registry` entry, its argument
/// schema from `parameters` (generated from its types and the data, see `vocabulary`), its failures mapped by
/// [`ToolFailure`], and its call through [`TracedTool::call_observed`]. One body for every tool, so no tool's
/// plumbing can drift from the others'.
#[macro_export]
macro_rules! traced_tool {
    ($tool:ty, $entry:expr, $args:ty, |$this:pat_param| $parameters:expr) => {
        impl ::rig_core::tool::Tool for $tool {
            const NAME: &'static str = $entry.name;
            type Args = $args;
            type Output = ::rig_core::tool::ToolOutput;
            type Error = $crate::failure::ToolFailure;

            fn description(&self) -> String {
                $entry.text().to_owned()
            }

            fn parameters(&self) -> ::serde_json::Value {
                let $this = self;
                $parameters
            }

            fn map_error(&self, error: $crate::failure::ToolFailure) -> ::rig_core::tool::ToolExecutionError {
                error.into_execution_error()
            }

            async fn call(
                &self,
                context: &mut ::rig_core::tool::ToolContext,
                args: Self::Args,
            ) -> Result<Self::Output, Self::Error> {
                $crate::trace::TracedTool::call_observed(self, context, args).await
            }
        }
    };
}
