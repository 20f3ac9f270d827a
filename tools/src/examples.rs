//! The example library (`prompts/examples.toml`): questions written for this product, each with the one tool call
//! that answers it. Per question the agent shows the model the few nearest examples, found by MiniLM similarity of
//! the masked questions (values replaced by their kind, as DAIL-SQL does), so the model sees calls of the same
//! shape as the question, whatever products or countries it names.
//!
//! The golden set (`tests/golden`) is a test, never material here: a test refuses any example that is, or nearly
//! is, a golden question.

use anyhow::{Context, Result};
use serde::Deserialize;
use serde_json::Value;

use crate::embed::LazyEmbedder;
use crate::grounding::masked;
use crate::registry::NUMBER_TOOLS;
use crate::vocabulary::DataValues;

const LIBRARY: &str = include_str!("../../prompts/examples.toml");

/// One example: a question (and the audience it refines, for a follow-up) and the call that answers it.
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    pub question: String,
    /// The current audience the question edits, as the agent's prompt shows it (`c1 include ...`).
    pub current: Option<String>,
    pub tool: String,
    pub args: Value,
}

#[derive(Deserialize)]
struct LibraryFile {
    example: Vec<RawExample>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExample {
    question: String,
    #[serde(default)]
    current: Option<String>,
    tool: String,
    args: toml::Table,
}

/// Every example of the library.
pub fn library() -> Result<Vec<Example>> {
    let file: LibraryFile = toml::from_str(LIBRARY).context("prompts/examples.toml is not a valid example library")?;
    file.example
        .into_iter()
        .map(|raw| {
            let args = serde_json::to_value(&raw.args).context("an example's args are not JSON")?;
            Ok(Example { question: raw.question, current: raw.current, tool: raw.tool, args })
        })
        .collect()
}

impl Example {
    /// The example as the prompt shows it.
    pub fn render(&self) -> String {
        let current = self.current.as_deref().map(|c| format!("[current audience: {c}] ")).unwrap_or_default();
        format!("Q: {current}{}\nA: {} {}", self.question, self.tool, self.args)
    }

    /// The values the example's arguments name, for masking its question.
    fn values(&self, into: &mut DataValues) {
        let add = |list: &mut Vec<String>, value: &Value| {
            if let Some(text) = value.as_str()
                && !list.iter().any(|v| v == text)
            {
                list.push(text.to_owned());
            }
        };
        // An audience call's clauses, or a metrics call's filters: the same clause shapes.
        let clauses =
            ["include", "exclude", "filters"].iter().filter_map(|key| self.args.get(*key)?.as_array()).flatten();
        for clause in clauses {
            for product in clause.get("products").and_then(Value::as_array).into_iter().flatten() {
                add(&mut into.products, product);
            }
            for color in clause.get("colors").and_then(Value::as_array).into_iter().flatten() {
                add(&mut into.colors, color);
            }
            let field = clause.get("field").and_then(Value::as_str);
            let values: Vec<&Value> = match clause.get("value") {
                Some(Value::Array(items)) => items.iter().collect(),
                Some(value) => vec![value],
                None => Vec::new(),
            };
            for value in values {
                match field {
                    Some("segment") => add(&mut into.segments, value),
                    Some("interests") => add(&mut into.products, value),
                    Some("favorite_color" | "preferred_colors") => add(&mut into.colors, value),
                    _ => {}
                }
            }
        }
    }
}

/// The values the examples' arguments name (products, colours, segments): what masks their questions, and the
/// vocabulary their questions are grounded in when a test checks the examples against the agent's own guards.
pub fn values_of(examples: &[Example]) -> DataValues {
    let mut values = DataValues::default();
    for example in examples {
        example.values(&mut values);
    }
    values
}

/// The library with the embedding of each masked question, built once per session.
pub struct ExampleIndex {
    examples: Vec<Example>,
    vectors: Vec<Vec<f32>>,
}

impl ExampleIndex {
    /// Embeds the library's masked questions.
    pub async fn build(embedder: &LazyEmbedder) -> Result<Self> {
        let examples = library()?;
        let values = values_of(&examples);
        let texts: Vec<String> = examples.iter().map(|e| masked(&e.question, &values)).collect();
        let vectors = embedder.embed(texts).await?.vectors;
        Ok(Self { examples, vectors })
    }

    /// The `k` examples nearest to a masked question's embedding, best first; follow-up examples only when there
    /// is an audience to refine; calls of the number tools for a question that asks for a number, and only the other
    /// tools' calls for one that does not. By similarity alone "how many customers are from COUNTRY?" meets the
    /// audience examples about countries (and the model copies their call), and "churned customers in COUNTRY"
    /// meets a count of churned customers.
    pub fn nearest(&self, question: &[f32], k: usize, refining: bool, number: bool) -> Vec<&Example> {
        let answers_with_a_number = |example: &Example| NUMBER_TOOLS.iter().any(|tool| tool.name == example.tool);
        let mut scored: Vec<(f32, &Example)> = self
            .examples
            .iter()
            .zip(&self.vectors)
            .filter(|(example, _)| refining || example.current.is_none())
            .filter(|(example, _)| number == answers_with_a_number(example))
            .map(|(example, vector)| (question.iter().zip(vector).map(|(a, b)| a * b).sum(), example))
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        scored.into_iter().take(k).map(|(_, example)| example).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audience::Edit;
    use std::collections::HashSet;

    #[test]
    fn the_library_is_large_varied_and_every_audience_call_is_a_valid_edit() {
        let examples = library().unwrap();
        assert!(examples.len() >= 100, "{} examples", examples.len());
        let tools: HashSet<&str> = examples.iter().map(|e| e.tool.as_str()).collect();
        for tool in ["find_audience", "metrics", "lookalike", "sql_analytics", "ask_clarification", "respond"] {
            assert!(tools.contains(tool), "no example calls {tool}");
        }
        for example in examples.iter().filter(|e| e.tool == "find_audience") {
            let edit: Result<Edit, _> = serde_json::from_value(example.args.clone());
            assert!(edit.is_ok(), "{}: {:?}", example.question, edit.err());
        }
        for example in examples.iter().filter(|e| e.tool == "metrics") {
            let args: crate::metrics::MetricsArgs =
                serde_json::from_value(example.args.clone()).unwrap_or_else(|e| panic!("{}: {e}", example.question));
            assert!(args.check().is_ok(), "{}: {:?}", example.question, args.check().err());
        }
        assert!(examples.iter().any(|e| e.args.get("exclude").is_some()), "negation is shown");
        assert!(examples.iter().any(|e| e.current.is_some() && e.args.get("remove").is_some()), "removal is shown");
    }

    /// The tracing that guards the model's calls accepts the library's own answers: every clause of every
    /// audience example (refinements aside: they lean on an audience the example only describes) traces to its
    /// question and sits on the side its question puts it.
    #[tokio::test]
    async fn every_library_answer_traces_to_its_question() {
        use crate::grounding::{Grounding, Traced, value_text};
        let examples = library().unwrap();
        let mut values = values_of(&examples);
        values.countries =
            ["PL", "DE", "FR", "GB", "US", "ES", "IT", "NL", "SE", "BE", "DK", "NO", "FI", "IE", "PT", "AT", "CH"]
                .map(String::from)
                .to_vec();
        let as_of = chrono::NaiveDate::from_ymd_opt(2026, 6, 29).unwrap();
        // Grounded as the agent grounds a question: by text, then by similarity with the real model.
        let embedder = LazyEmbedder::new(crate::paths::models_dir());
        let texts: Vec<String> = values.products.iter().map(|p| value_text(p)).collect();
        let product_vectors = embedder.embed(texts).await.unwrap().vectors;
        let mut failures = Vec::new();
        for example in examples.iter().filter(|e| e.tool == "find_audience" && e.current.is_none()) {
            let mut grounding = Grounding::of(&example.question, &values, as_of);
            let words = grounding.unmatched.clone();
            if !words.is_empty() {
                let vectors = embedder.embed(words.clone()).await.unwrap().vectors;
                grounding.add_similar(&values, &product_vectors, &words.into_iter().zip(vectors).collect::<Vec<_>>());
            }
            let edit: Edit = serde_json::from_value(example.args.clone()).unwrap();
            for (clause, exclude) in
                edit.include.iter().map(|c| (c, false)).chain(edit.exclude.iter().map(|c| (c, true)))
            {
                let traced = grounding.trace(clause);
                if traced != Traced::Kept {
                    failures.push(format!("{:?}: {} -> {traced:?}", example.question, clause.rule.predicate()));
                }
                if let Some(reason) = grounding.wrong_side(clause, exclude) {
                    failures.push(format!("{:?}: {reason}", example.question));
                }
            }
            // And the other way: the answer uses everything its question names.
            let clauses: Vec<_> = edit.include.iter().chain(&edit.exclude).cloned().collect();
            let uncovered = grounding.uncovered(&clauses, edit.intent.as_deref());
            if !uncovered.is_empty() && (!clauses.is_empty() || !grounding.event_types.is_empty()) {
                failures.push(format!("{:?}: does not use {}", example.question, uncovered.words().join(", ")));
            }
        }
        assert!(failures.is_empty(), "{} answers do not trace:\n{}", failures.len(), failures.join("\n"));
    }

    /// The library agrees with the classifier that picks its examples: every question answered by a number tool asks
    /// for a number, and no audience question does (otherwise its own examples would never be shown for it).
    #[test]
    fn number_questions_are_the_ones_answered_by_number_tools() {
        let mut wrong = Vec::new();
        for example in library().unwrap().iter().filter(|e| e.current.is_none()) {
            let number = NUMBER_TOOLS.iter().any(|tool| tool.name == example.tool);
            let audience = ["find_audience", "lookalike"].contains(&example.tool.as_str());
            let asks = crate::grounding::asks_for_a_number(&example.question);
            if (number && !asks) || (audience && asks) {
                wrong.push(format!("{} ({})", example.question, example.tool));
            }
        }
        assert!(wrong.is_empty(), "classified wrongly:\n{}", wrong.join("\n"));
    }

    /// A number question is shown number examples, and any other question none of them, whatever the words share.
    #[tokio::test]
    async fn the_nearest_examples_answer_the_way_the_question_asks() {
        let embedder = LazyEmbedder::new(crate::paths::models_dir());
        let index = ExampleIndex::build(&embedder).await.unwrap();
        let vectors = embedder.embed(vec!["churned customers in COUNTRY".to_owned()]).await.unwrap().vectors;
        let number_tool = |example: &&Example| NUMBER_TOOLS.iter().any(|tool| tool.name == example.tool);
        let people = index.nearest(&vectors[0], 4, false, false);
        assert!(people.len() == 4 && !people.iter().any(number_tool), "{people:?}");
        let numbers = index.nearest(&vectors[0], 4, false, true);
        assert!(numbers.len() == 4 && numbers.iter().all(number_tool), "{numbers:?}");
    }

    fn trigrams(text: &str) -> HashSet<String> {
        let words: Vec<String> =
            text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect();
        words.windows(3).map(|w| w.join(" ")).collect()
    }

    /// The golden set stays a test: no golden question, and nothing close to one, is in the library.
    #[test]
    fn no_golden_question_is_in_the_library() {
        let cases: toml::Table = toml::from_str(include_str!("../../tests/golden/cases.toml")).unwrap();
        let turns: Vec<String> = cases["case"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|case| case["turns"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_owned()))
            .collect();
        assert!(turns.len() > 90);
        for example in library().unwrap() {
            let mine = trigrams(&example.question);
            for turn in &turns {
                assert_ne!(example.question.trim().to_lowercase(), turn.trim().to_lowercase());
                let theirs = trigrams(turn);
                let both = mine.intersection(&theirs).count() as f64;
                let either = mine.union(&theirs).count() as f64;
                let similarity = if either == 0.0 { 0.0 } else { both / either };
                assert!(similarity <= 0.5, "{:?} is close to the golden {turn:?} ({similarity:.2})", example.question);
            }
        }
    }
}
