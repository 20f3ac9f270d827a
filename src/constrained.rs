//! One constrained model call outside the agent loop: a system text, a message and the JSON schema the reply must
//! follow (made by schemars from a Rust type), at temperature 0. rig sends the schema as the chat-completions
//! `response_format` (`json_schema`, strict), which hosted providers enforce and llama-server turns into a grammar;
//! neither is trusted, so the caller parses and checks the reply in Rust. The call's usage is returned for the
//! ledger, counts the provider did not report (or reported implausibly) estimated and marked so, never 0.

use rig_core::completion::CompletionRequest;

use crate::agent_hook::plausible;
use crate::ledger::{CallPurpose, CallUsage, estimate_tokens};
use crate::provider::ChatModel;

/// A reply's text and what the call cost.
pub struct Reply {
    pub text: String,
    pub usage: CallUsage,
}

/// Asks `model` once for a reply under `schema`, with at most `max_tokens` tokens of answer.
pub async fn call(
    model: &ChatModel,
    purpose: CallPurpose,
    system: &str,
    message: String,
    schema: schemars::Schema,
    max_tokens: u64,
) -> anyhow::Result<Reply> {
    let prompt_text = format!("{system}\n{message}");
    let request =
        CompletionRequest::new(message).preamble(system).max_tokens(max_tokens).temperature(0.0).output_schema(schema);
    let start = std::time::Instant::now();
    let response = model.call(request).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let text = response.text();
    let (prompt, completion) = (plausible(response.usage.input_tokens), plausible(response.usage.output_tokens));
    let usage = CallUsage {
        purpose,
        prompt_tokens: prompt.unwrap_or_else(|| estimate_tokens(&prompt_text)),
        completion_tokens: completion.unwrap_or_else(|| estimate_tokens(&text)),
        estimated: prompt.is_none() || completion.is_none(),
        ms: start.elapsed().as_millis() as u64,
        answered: true,
    };
    Ok(Reply { text, usage })
}
