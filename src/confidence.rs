//! How far an answer can be trusted, judged without the LLM from what the tools returned: whether the data was
//! consulted and the last call worked, whether the audience is empty or nearly everyone, whether the ranking
//! separates members, whether the intent's words occur in the data at all, and whether every number the answer
//! cites came from a tool (a final text citing ids or counts that no tool returned is the commonest small-model
//! failure, and it would otherwise pass silently).

use std::collections::HashSet;

use audience_tools::audience::AudienceReport;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Low,
    Medium,
    High,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Low => "low",
            Level::Medium => "medium",
            Level::High => "high",
        }
    }
}

/// The level and why: every reason that lowered it, or what supports a high one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Confidence {
    pub level: Level,
    pub reasons: Vec<String>,
}

/// An audience this share of the customers or more is "nearly everyone": the clauses did not select.
const NEARLY_EVERYONE: f64 = 0.9;
/// The top and the tenth member's similarity closer than this: the intent does not tell members apart.
const FLAT_SPREAD: f64 = 0.01;
/// A best match below this similarity is a weak match for MiniLM profile texts.
const WEAK_MATCH: f64 = 0.3;

/// What the assessment looks at.
pub struct Evidence<'a> {
    pub question: &'a str,
    pub answer: &'a str,
    /// Each tool call: its name and whether it worked, in order.
    pub calls: &'a [(String, bool)],
    /// The full output of each successful call.
    pub outputs: &'a [Value],
    pub audience: Option<&'a AudienceReport>,
    /// What the program itself wrote into the answer (the clauses it left out, how it read a follow-up): their
    /// numbers are the program's, not claims a tool must back.
    pub host_notes: &'a [String],
    /// Words of the profile texts, when the audience is ranked by an intent.
    pub vocabulary: Option<&'a HashSet<String>>,
}

pub fn assess(evidence: &Evidence) -> Confidence {
    let mut low = Vec::new();
    let mut medium = Vec::new();
    match evidence.calls.last() {
        None => medium.push("answered without looking at the data".to_owned()),
        Some((tool, false)) => low.push(format!("the last tool call ({tool}) failed")),
        Some(_) => {}
    }
    if let Some(report) = evidence.audience {
        audience_checks(report, evidence.vocabulary, &mut low, &mut medium);
        if report.definition.clauses().next().is_none() && asks_for_behaviour(evidence.question) {
            low.push(
                "the question sets conditions (behaviour, money, time or place) but the audience has no clause: \
                 every customer was only ranked by taste"
                    .to_owned(),
            );
        }
    }
    let host_notes: Vec<Value> = evidence.host_notes.iter().map(|note| Value::String(note.clone())).collect();
    let sources: Vec<Value> = evidence.outputs.iter().chain(&host_notes).cloned().collect();
    let ungrounded = ungrounded_numbers(evidence.answer, evidence.question, &sources);
    if !ungrounded.is_empty() {
        let shown: Vec<String> = ungrounded.iter().take(5).cloned().collect();
        low.push(format!("the answer cites {} that no tool returned", shown.join(", ")));
    }
    if !low.is_empty() {
        low.extend(medium);
        return Confidence { level: Level::Low, reasons: low };
    }
    if !medium.is_empty() {
        return Confidence { level: Level::Medium, reasons: medium };
    }
    // Only the calls that worked returned numbers; a tool named twice is named once.
    let mut tools: Vec<&str> = Vec::new();
    for (tool, _) in evidence.calls.iter().filter(|(_, ok)| *ok) {
        if !tools.contains(&tool.as_str()) {
            tools.push(tool);
        }
    }
    let mut reasons = vec![format!("every number in the answer comes from {}", tools.join(", "))];
    if let Some(report) = evidence.audience {
        reasons.push(format!("the audience has {} of {} customers", report.size, report.total_customers));
    }
    Confidence { level: Level::High, reasons }
}

fn audience_checks(
    report: &AudienceReport,
    vocabulary: Option<&HashSet<String>>,
    low: &mut Vec<String>,
    medium: &mut Vec<String>,
) {
    if report.size == 0 {
        low.push("the audience is empty".to_owned());
    } else if report.total_customers > 0
        && report.definition.clauses().next().is_some()
        && report.size as f64 >= NEARLY_EVERYONE * report.total_customers as f64
    {
        low.push(format!(
            "the audience is nearly everyone ({} of {} customers): the clauses hardly select",
            report.size, report.total_customers
        ));
    }
    let scores: Vec<f64> = report.members.iter().filter_map(|m| m.score).collect();
    if let (Some(top), Some(tenth)) = (scores.first(), scores.get(9))
        && top - tenth < FLAT_SPREAD
    {
        medium.push(format!("the intent barely separates members (similarity {top:.3} to {tenth:.3} over the top 10)"));
    }
    if let Some(top) = scores.first().filter(|top| **top < WEAK_MATCH) {
        medium.push(format!("even the best member matches the intent weakly (similarity {top:.2})"));
    }
    if let (Some(intent), Some(vocabulary)) = (&report.definition.intent, vocabulary) {
        let words = content_words(intent);
        if !words.is_empty() && !words.iter().any(|word| known(word, vocabulary)) {
            medium.push(format!("no word of the intent ({}) occurs in the customers' profiles", words.join(", ")));
        }
    }
}

/// Whether a question states a condition that only a clause can apply: a number, or a word of behaviour, money,
/// recency or status. "Who would love luxury watches" is a taste; "bought shoes in the last 180 days" is not.
fn asks_for_behaviour(question: &str) -> bool {
    const CONDITIONS: [&str; 24] = [
        "bought",
        "buy",
        "buyers",
        "purchased",
        "purchase",
        "purchases",
        "spent",
        "spend",
        "ordered",
        "orders",
        "viewed",
        "browsed",
        "cart",
        "churned",
        "lapsed",
        "stopped",
        "never",
        "days",
        "weeks",
        "months",
        "recent",
        "recently",
        "over",
        "from",
    ];
    question.chars().any(|c| c.is_ascii_digit()) || words(question).any(|w| CONDITIONS.contains(&w.as_str()))
}

/// Words that carry an intent's meaning: not the filler of a request.
fn content_words(text: &str) -> Vec<String> {
    const FILLER: [&str; 24] = [
        "customers",
        "customer",
        "people",
        "who",
        "that",
        "like",
        "likes",
        "love",
        "loves",
        "into",
        "with",
        "and",
        "the",
        "for",
        "buy",
        "buys",
        "bought",
        "items",
        "things",
        "stuff",
        "shoppers",
        "fans",
        "lovers",
        "interested",
    ];
    words(text).filter(|w| w.len() >= 3 && !FILLER.contains(&w.as_str())).collect()
}

/// The lower-case alphanumeric words of `text`.
pub fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase)
}

/// A word is in the vocabulary when a vocabulary word shares its first letters (watch / watches, jewellery /
/// jewelry), at least four, or all of a shorter word.
fn known(word: &str, vocabulary: &HashSet<String>) -> bool {
    let stem: String = word.chars().take(4).collect();
    vocabulary.contains(word)
        || vocabulary.iter().any(|known| known.len() >= 4 && stem.len() >= 4 && known.starts_with(&stem))
}

/// The numbers of `answer` that neither a tool output nor the question holds. A number matches a returned value
/// rounded to 0, 1 or 2 decimals, or a share (0 to 1) shown as a percentage. List markers ("1." at a line start)
/// are not citations.
fn ungrounded_numbers(answer: &str, question: &str, outputs: &[Value]) -> Vec<String> {
    let mut known: Vec<f64> = numbers(question).map(|(_, n)| n).collect();
    for output in outputs {
        collect_numbers(output, &mut known);
    }
    let mut missing = Vec::new();
    for line in answer.lines() {
        let marker = line.trim_start().split(['.', ')']).next().filter(|head| {
            head.len() <= 2 && head.chars().all(|c| c.is_ascii_digit()) && line.trim_start().len() > head.len()
        });
        for (text, value) in numbers(line) {
            if marker == Some(text.as_str()) && line.trim_start().starts_with(&text) {
                continue;
            }
            if !known.iter().any(|k| matches(*k, value)) && !missing.contains(&text) {
                missing.push(text);
            }
        }
    }
    missing
}

fn matches(known: f64, cited: f64) -> bool {
    let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
    (0..=2).any(|decimals| {
        let scale = 10f64.powi(decimals);
        close((known * scale).round() / scale, cited)
            || ((0.0..=1.0).contains(&known) && close((known * 100.0 * scale).round() / scale, cited))
    }) || close(known, cited)
}

fn collect_numbers(value: &Value, into: &mut Vec<f64>) {
    match value {
        Value::Number(n) => into.extend(n.as_f64()),
        Value::String(text) => into.extend(numbers(text).map(|(_, n)| n)),
        Value::Array(items) => items.iter().for_each(|item| collect_numbers(item, into)),
        Value::Object(map) => map.values().for_each(|item| collect_numbers(item, into)),
        _ => {}
    }
}

/// The numbers written in `text` (thousands separators allowed), as written and as values.
pub fn numbers(text: &str) -> impl Iterator<Item = (String, f64)> + '_ {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let (start, c) = chars[i];
        let after_word = i > 0 && chars[i - 1].1.is_alphabetic();
        if !c.is_ascii_digit() || after_word {
            i += 1;
            continue;
        }
        let mut end = i;
        while end < chars.len() {
            let c = chars[end].1;
            let separator = (c == ',' || c == '.') && chars.get(end + 1).is_some_and(|(_, next)| next.is_ascii_digit());
            if c.is_ascii_digit() || separator {
                end += 1;
            } else {
                break;
            }
        }
        let byte_end = chars.get(end).map_or(text.len(), |(at, _)| *at);
        let written = &text[start..byte_end];
        let plain = if thousands_grouped(written) { written.replace(',', "") } else { written.replace(',', ".") };
        if let Ok(value) = plain.parse::<f64>() {
            found.push((written.to_owned(), value));
        }
        i = end;
    }
    found.into_iter()
}

/// "12,345" or "1,234.5": commas that group thousands.
fn thousands_grouped(written: &str) -> bool {
    let integer = written.split('.').next().unwrap_or_default();
    let groups: Vec<&str> = integer.split(',').collect();
    groups.len() > 1 && groups[1..].iter().all(|g| g.len() == 3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn evidence<'a>(answer: &'a str, calls: &'a [(String, bool)], outputs: &'a [Value]) -> Evidence<'a> {
        Evidence {
            question: "top 5 customers",
            answer,
            calls,
            outputs,
            audience: None,
            host_notes: &[],
            vocabulary: None,
        }
    }

    #[test]
    fn numbers_that_no_tool_returned_make_an_answer_low() {
        let calls = [("sql_analytics".to_owned(), true)];
        let outputs = [json!({"rows": [{"n": 1234, "share": 0.4567, "spent": 99.987}]})];
        let grounded = assess(&evidence("There are 1,234 customers (45.7%), spending 99.99.", &calls, &outputs));
        assert_eq!(grounded.level, Level::High, "{grounded:?}");
        let invented = assess(&evidence("There are 1,234 customers; ids 777 and 12 top the list.", &calls, &outputs));
        assert_eq!(invented.level, Level::Low);
        assert!(invented.reasons[0].contains("777, 12"), "{invented:?}");
        let listed = assess(&evidence("The top 5:\n1. Ann (1234)\n2. Bob", &calls, &outputs));
        assert_eq!(listed.level, Level::High, "{listed:?}");
    }

    #[test]
    fn no_data_or_a_failed_last_call_lowers_confidence() {
        assert_eq!(assess(&evidence("Hello!", &[], &[])).level, Level::Medium);
        let calls = [("sql_analytics".to_owned(), true), ("find_audience".to_owned(), false)];
        assert_eq!(assess(&evidence("Done.", &calls, &[])).level, Level::Low);
    }

    #[test]
    fn conditions_in_the_question_are_told_from_tastes() {
        assert!(asks_for_behaviour("Find customers who bought shoes in the last 180 days"));
        assert!(asks_for_behaviour("VIP customers from outside the US"));
        assert!(!asks_for_behaviour("Who would love luxury watches and jewelry?"));
    }

    #[test]
    fn reads_written_numbers() {
        let found: Vec<f64> = numbers("1,234 and 5.5, then 3,4 and v2 2026-06-30").map(|(_, n)| n).collect();
        assert_eq!(found, vec![1234.0, 5.5, 3.4, 2026.0, 6.0, 30.0]);
        let vocabulary: HashSet<String> = ["watches".to_owned(), "jewelry".to_owned()].into();
        assert!(known("watch", &vocabulary) && known("jewellery", &vocabulary) && !known("yachts", &vocabulary));
    }
}
