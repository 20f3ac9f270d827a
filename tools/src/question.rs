//! A question made ready for one constrained model call: its words grounded in the data ([`crate::grounding`]),
//! the schema's value enums for it ([`crate::vocabulary::Offered`]), and the nearest examples of the library
//! ([`crate::examples`]), written into the user message the model answers.
//!
//! The system prompt and the tool schemas come first in every request and stay the same across questions (the
//! enums hold the whole vocabulary unless it is too large), so providers and llama-server serve them from their
//! prompt cache; what a question adds (examples, hints, the question) is its uncached part.

use std::sync::Arc;

use anyhow::Result;
use chrono::NaiveDate;

use crate::audience::AudienceDefinition;
use crate::dataset::Dataset;
use crate::examples::{Example, ExampleIndex};
use crate::grounding::{Grounding, asks_for_a_number, masked, value_text};
use crate::stores::Stores;
use crate::vocabulary::{DataValues, Offered};

/// Examples shown per question.
pub const EXAMPLES_SHOWN: usize = 4;
/// Products compared by similarity: the most common ones (a catalogue of thousands is matched by text).
const SIMILARITY_VALUES: usize = 500;

/// What a session reads once: the data's values, their embeddings, its last day, and the example library.
pub struct Vocabulary {
    pub values: DataValues,
    product_vectors: Vec<Vec<f32>>,
    pub as_of: NaiveDate,
    /// A total spend about a tenth of the buyers exceed, at two significant digits (an option triage offers).
    pub high_spend: Option<f64>,
    examples: ExampleIndex,
}

impl Vocabulary {
    pub async fn load(stores: &Stores) -> Result<Arc<Self>> {
        let values = DataValues::load(&stores.db).await?;
        let texts: Vec<String> = values.products.iter().take(SIMILARITY_VALUES).map(|p| value_text(p)).collect();
        let product_vectors = if texts.is_empty() { Vec::new() } else { stores.embedder.embed(texts).await?.vectors };
        let as_of = Dataset::as_of(&stores.db).await?.unwrap_or_else(|| chrono::Utc::now().date_naive());
        let examples = ExampleIndex::build(&stores.embedder).await?;
        let high_spend: Option<f64> = sqlx::query_scalar(
            "SELECT percentile_cont(0.9) WITHIN GROUP (ORDER BY total_spent::float8) FROM profiles WHERE total_spent > 0",
        )
        .fetch_one(&stores.db.pool)
        .await?;
        let high_spend = high_spend.filter(|spend| *spend >= 1.0).map(two_digits);
        Ok(Arc::new(Self { values, product_vectors, as_of, high_spend, examples }))
    }
}

/// `value` rounded to two significant digits (1,537.20 is 1,500), as a person would write a threshold.
fn two_digits(value: f64) -> f64 {
    let exponent = value.log10().floor() as i32 - 1;
    let scale = 10f64.powi(exponent.abs());
    if exponent >= 0 { (value / scale).round() * scale } else { (value * scale).round() / scale }
}

/// One question, grounded and with its examples.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub grounding: Grounding,
    pub offered: Offered,
    pub examples: Vec<Example>,
    /// The user message: examples, resolved values, the current audience and the question.
    pub prompt: String,
    /// The question asks for a number ([`asks_for_a_number`]): its examples and tools are the number tools'.
    pub number: bool,
}

/// The audience a question refines: its definition, and how the prompt shows it (`c1 include who bought socks;
/// intent: ...`).
pub struct Current<'a> {
    pub definition: &'a AudienceDefinition,
    pub text: &'a str,
}

/// Grounds `question` (in the data and in the audience it refines, if any), picks its examples and writes its
/// prompt; `earlier` is the conversation so far, one line per question with the gist of its answer.
pub async fn prepare(
    stores: &Stores,
    vocabulary: &Vocabulary,
    question: &str,
    current: Option<Current<'_>>,
    earlier: Option<&str>,
) -> Result<Prepared> {
    let mut grounding = Grounding::of(question, &vocabulary.values, vocabulary.as_of);
    let candidates = grounding.unmatched.clone();
    let mut texts = candidates.clone();
    texts.push(masked(question, &vocabulary.values));
    let mut vectors = stores.embedder.embed(texts).await?.vectors;
    let question_vector = vectors.pop().unwrap_or_default();
    if !vocabulary.product_vectors.is_empty() {
        let words: Vec<(String, Vec<f32>)> = candidates.into_iter().zip(vectors).collect();
        grounding.add_similar(&vocabulary.values, &vocabulary.product_vectors, &words);
    }
    if let Some(current) = &current {
        grounding.inherit(current.definition);
    }
    let offered = Offered::narrow(&vocabulary.values, &grounding.found);
    let number = asks_for_a_number(question);
    let examples: Vec<Example> = vocabulary
        .examples
        .nearest(&question_vector, EXAMPLES_SHOWN, current.is_some(), number)
        .into_iter()
        .cloned()
        .collect();
    let mut prompt = String::from("Examples of calls:\n");
    for example in &examples {
        prompt.push_str(&example.render());
        prompt.push('\n');
    }
    if let Some(hints) = grounding.hint_line() {
        prompt.push_str(&format!("Resolved from the data: {hints}\n"));
    }
    if let Some(earlier) = earlier {
        prompt.push_str(&format!("Earlier in this conversation:\n{earlier}\n"));
    }
    if let Some(current) = &current {
        prompt.push_str(&format!("Current audience: {}\n", current.text));
    }
    prompt.push_str(&format!("Question: {question}"));
    Ok(Prepared { grounding, offered, examples, prompt, number })
}

#[cfg(test)]
mod tests {
    use super::two_digits;

    #[test]
    fn thresholds_are_rounded_as_a_person_writes_them() {
        assert_eq!(two_digits(1537.2), 1500.0);
        assert_eq!(two_digits(86.4), 86.0);
        assert_eq!(two_digits(9.99), 10.0);
    }
}
