//! The agent's tools by name, with the descriptions they send to the model: the one list that the agent, the
//! `tool` command, the REPL's `/tools` and the tests read.

/// A tool of the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ToolInfo {
    pub name: &'static str,
    /// What the model is told the tool does (prompts/tools/NAME.md).
    pub description: &'static str,
}

pub const FIND_AUDIENCE: ToolInfo =
    ToolInfo { name: "find_audience", description: include_str!("../../prompts/tools/find_audience.md") };
pub const SQL_ANALYTICS: ToolInfo =
    ToolInfo { name: "sql_analytics", description: include_str!("../../prompts/tools/sql_analytics.md") };
pub const SQL_DATA_RETRIEVER: ToolInfo =
    ToolInfo { name: "sql_data_retriever", description: include_str!("../../prompts/tools/sql_data_retriever.md") };

pub const LOOKALIKE: ToolInfo =
    ToolInfo { name: "lookalike", description: include_str!("../../prompts/tools/lookalike.md") };

pub const ASK_CLARIFICATION: ToolInfo =
    ToolInfo { name: "ask_clarification", description: include_str!("../../prompts/tools/ask_clarification.md") };

pub const RESPOND: ToolInfo = ToolInfo { name: "respond", description: include_str!("../../prompts/tools/respond.md") };

pub const METRICS: ToolInfo = ToolInfo { name: "metrics", description: include_str!("../../prompts/tools/metrics.md") };

/// Campaign e-mails for the conversation's audience. The tool itself is the `audience` crate's (it writes with the
/// chat model and the draft checks there); its name and description live here with every other tool's.
pub const DRAFT_EMAILS: ToolInfo =
    ToolInfo { name: "draft_emails", description: include_str!("../../prompts/tools/draft_emails.md") };

/// Every tool of the agent, in the order they are offered and listed.
pub const TOOLS: [ToolInfo; 8] =
    [FIND_AUDIENCE, LOOKALIKE, METRICS, SQL_ANALYTICS, SQL_DATA_RETRIEVER, DRAFT_EMAILS, ASK_CLARIFICATION, RESPOND];

/// The tools that answer with a number rather than people: a question that asks for one is shown their examples.
pub const NUMBER_TOOLS: [ToolInfo; 2] = [METRICS, SQL_ANALYTICS];

/// The agent's tool called `name`, if there is one.
pub fn find(name: &str) -> Option<ToolInfo> {
    TOOLS.into_iter().find(|tool| tool.name == name)
}

impl ToolInfo {
    /// The description as sent: trimmed.
    pub fn text(&self) -> &'static str {
        self.description.trim()
    }
}
