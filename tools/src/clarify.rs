//! `ask_clarification`: how the model asks ONE clarifying question with concrete options instead of guessing what
//! an ambiguous request means ("find good customers": good by spend, by recency, by loyalty?). It reads nothing;
//! the host ends the question's run on it and shows the question, and the user's reply is the next turn.

use serde::{Deserialize, Serialize};

use crate::failure::ToolFailure;
use crate::trace::{ToolTrace, TracedTool};

/// Options a clarifying question offers: at least two (else it is not a choice), few enough to read.
const MIN_OPTIONS: usize = 2;
const MAX_OPTIONS: usize = 5;
const MAX_QUESTION_CHARS: usize = 300;
const MAX_OPTION_CHARS: usize = 160;

/// The question and its options, as the model asks them and as `ask --json` prints them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Clarification {
    #[schemars(length(min = 1, max = 300))]
    pub question: String,
    #[schemars(length(min = 2, max = 5), inner(length(min = 1, max = 160)))]
    pub options: Vec<String>,
}

impl Clarification {
    /// The question with its options numbered, as the user reads it.
    pub fn render(&self) -> String {
        let mut text = self.question.trim().to_owned();
        for (n, option) in self.options.iter().enumerate() {
            text.push_str(&format!("\n  {}. {}", n + 1, option.trim()));
        }
        text
    }

    /// The option a reply picks by its number ("2", "option 2", "#2"), or `None` for any other reply.
    pub fn chosen(&self, reply: &str) -> Option<String> {
        let reply = reply.trim().trim_end_matches(['.', ')']).to_lowercase();
        let number = reply.trim_start_matches("option").trim_start_matches('#').trim();
        let index = number.parse::<usize>().ok()?.checked_sub(1)?;
        self.options.get(index).cloned()
    }

    fn checked(self) -> Result<Self, ToolFailure> {
        let question = self.question.trim().to_owned();
        if question.is_empty() || question.chars().count() > MAX_QUESTION_CHARS {
            return Err(ToolFailure::correctable(format!(
                "`question` must be one question of 1 to {MAX_QUESTION_CHARS} characters"
            )));
        }
        let options: Vec<String> = self.options.iter().map(|o| o.trim().to_owned()).filter(|o| !o.is_empty()).collect();
        if !(MIN_OPTIONS..=MAX_OPTIONS).contains(&options.len())
            || options.iter().any(|o| o.chars().count() > MAX_OPTION_CHARS)
        {
            return Err(ToolFailure::correctable(format!(
                "give {MIN_OPTIONS} to {MAX_OPTIONS} concrete `options` (each under {MAX_OPTION_CHARS} characters), \
                 e.g. \"spent over 500 in total\""
            )));
        }
        Ok(Self { question, options })
    }
}

/// The tool. It has no state: the question is its own result.
#[derive(Clone, Copy, Debug, Default)]
pub struct AskClarification;

impl TracedTool for AskClarification {
    type Report = Clarification;

    async fn execute(&self, args: Clarification, _trace: &mut ToolTrace) -> Result<Clarification, ToolFailure> {
        args.checked()
    }

    fn observe(report: &Clarification) -> String {
        report.render()
    }
}

crate::traced_tool!(AskClarification, crate::registry::ASK_CLARIFICATION, Clarification, |_| {
    crate::vocabulary::schema_of::<Clarification>()
});

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_question_needs_two_to_five_concrete_options() {
        let ask = |question: &str, options: &[&str]| {
            AskClarification.run(Clarification {
                question: question.to_owned(),
                options: options.iter().map(|o| (*o).to_owned()).collect(),
            })
        };
        let asked = ask(" Good by what? ", &["spent over 500", " bought in the last 30 days ", ""]).await.unwrap();
        assert_eq!(asked.render(), "Good by what?\n  1. spent over 500\n  2. bought in the last 30 days");
        assert!(ask("Which?", &["only one"]).await.unwrap_err().to_string().contains("2 to 5"));
        assert!(ask("  ", &["a", "b"]).await.unwrap_err().to_string().contains("one question"));
    }
}
