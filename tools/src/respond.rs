//! `respond`: a plain reply that reads no data, for requests no other tool serves: a refusal to change data, small
//! talk, what the product can do. With it every model turn can be a constrained tool call (`tool_choice`
//! "required"); the host ends the question's run on it and shows the text.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::failure::ToolFailure;
use crate::trace::{ToolTrace, TracedTool};

/// Longest reply: a sentence or two.
pub const MAX_REPLY_CHARS: usize = 600;

/// The reply, as the model writes it and the answer shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Reply {
    /// One or two sentences to the user.
    #[schemars(length(min = 1, max = 600))]
    pub text: String,
}

/// The tool. It has no state: the reply is its own result.
#[derive(Clone, Copy, Debug, Default)]
pub struct Respond;

impl TracedTool for Respond {
    type Report = Reply;

    async fn execute(&self, args: Reply, _trace: &mut ToolTrace) -> Result<Reply, ToolFailure> {
        let text = args.text.trim().to_owned();
        if text.is_empty() || text.chars().count() > MAX_REPLY_CHARS {
            return Err(ToolFailure::correctable(format!("`text` must be 1 to {MAX_REPLY_CHARS} characters")));
        }
        Ok(Reply { text })
    }

    fn observe(report: &Reply) -> String {
        report.text.clone()
    }
}

crate::traced_tool!(Respond, crate::registry::RESPOND, Reply, |_| crate::vocabulary::schema_of::<Reply>());

#[cfg(test)]
mod tests {
    use super::*;
    use rig_core::tool::Tool;

    #[tokio::test]
    async fn a_reply_is_trimmed_and_bounded() {
        let reply = Respond.run(Reply { text: " I only read data. ".into() }).await.unwrap();
        assert_eq!(reply.text, "I only read data.");
        assert!(Respond.run(Reply { text: " ".into() }).await.is_err());
        assert!(Respond.run(Reply { text: "x".repeat(MAX_REPLY_CHARS + 1) }).await.is_err());
        let schema = Respond.parameters();
        assert_eq!(schema["properties"]["text"]["maxLength"], MAX_REPLY_CHARS);
        assert_eq!(schema["required"], serde_json::json!(["text"]));
    }
}
