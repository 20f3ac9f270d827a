//! Segment names from the model: one constrained call names every segment of a report at once, under a JSON schema
//! made by schemars from [`SegmentNames`] (with exactly as many names as segments), and the names are checked here
//! in Rust: as many as the segments, none empty, short, all different, no placeholder. Any failure (no provider, a
//! model that does not start or answer, a reply that is not the JSON or fails a check) keeps the deterministic names
//! `segments::describe` made, and says why in one line ([`Naming::Deterministic`]); a name is never half-applied.

use std::collections::HashSet;
use std::path::Path;
use std::time::Instant;

use audience_tools::segments::SegmentReport;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::constrained;
use crate::drafts::check_placeholders;
use crate::exit;
use crate::ledger::{CallPurpose, Ledger, UsageRecord};
use crate::local_llm;
use crate::provider::{ProviderConfig, ProviderKind};

/// The instructions of the naming call.
const SYSTEM: &str = include_str!("../prompts/segments/names.md");
/// Longest name, in characters, and in words.
pub const MAX_NAME_CHARS: usize = 40;
pub const MAX_NAME_WORDS: usize = 5;
/// The reply's token budget: a few tokens per name, for up to `segments::MAX_K` names.
const MAX_TOKENS: u64 = 400;

/// The model's reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SegmentNames {
    /// One short name per segment, in the order the segments are listed.
    pub names: Vec<String>,
}

/// Where a report's segment names came from.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "from", rename_all = "snake_case")]
pub enum Naming {
    /// The model named every segment.
    Model { model: String },
    /// The names `segments::describe` made were kept, and why.
    Deterministic { reason: String },
}

/// What naming did: where the names came from, and the call's usage (also in the ledger) when one was answered.
pub struct Outcome {
    pub naming: Naming,
    pub usage: Option<UsageRecord>,
}

impl Outcome {
    fn kept(reason: String) -> Self {
        Self { naming: Naming::Deterministic { reason }, usage: None }
    }
}

/// The schema of a reply that names `segments` segments: [`SegmentNames`]' own, with exactly that many names, each
/// 1 to [`MAX_NAME_CHARS`] characters (llama-server's grammar holds string lengths and item counts).
pub fn schema(segments: usize) -> schemars::Schema {
    let mut schema = schemars::schema_for!(SegmentNames);
    if let Some(names) = schema.pointer_mut("/properties/names").and_then(Value::as_object_mut) {
        names.insert("minItems".to_owned(), segments.into());
        names.insert("maxItems".to_owned(), segments.into());
        if let Some(items) = names.get_mut("items").and_then(Value::as_object_mut) {
            items.insert("minLength".to_owned(), 1.into());
            items.insert("maxLength".to_owned(), MAX_NAME_CHARS.into());
        }
    }
    schema
}

/// The message of the naming call: each segment's size and what sets it apart, in the report's order.
pub fn message(report: &SegmentReport) -> String {
    let mut lines = vec![format!("{} segments of {} customers:", report.segments.len(), report.customers)];
    for segment in &report.segments {
        let products = crate::render::segments::product_shares(segment);
        let apart = if segment.description.is_empty() { "nothing stands out" } else { segment.description.as_str() };
        lines.push(format!(
            "Segment {}: {} customers ({:.0}%); what sets it apart: {apart}; top products: {}; median spend {:.0}",
            segment.id,
            segment.size,
            segment.share * 100.0,
            products.join(", "),
            segment.median_spend
        ));
    }
    lines.join("\n")
}

/// The names of a reply for `segments` segments, with their whitespace tidied, or the first reason they cannot be
/// used.
pub fn check(reply: &str, segments: usize) -> Result<Vec<String>, String> {
    let names = serde_json::from_str::<SegmentNames>(reply.trim())
        .map_err(|error| format!("the reply is not a list of names ({error})"))?
        .names;
    if names.len() != segments {
        return Err(format!("the reply has {} names for {segments} segments", names.len()));
    }
    let mut seen = HashSet::new();
    let mut checked = Vec::with_capacity(segments);
    for (index, name) in names.iter().enumerate() {
        let segment = index + 1;
        let name = name.split_whitespace().collect::<Vec<_>>().join(" ");
        if name.is_empty() {
            return Err(format!("the name of segment {segment} is empty"));
        }
        let chars = name.chars().count();
        if chars > MAX_NAME_CHARS {
            return Err(format!("the name of segment {segment} has {chars} characters (at most {MAX_NAME_CHARS})"));
        }
        let words = name.split(' ').count();
        if words > MAX_NAME_WORDS {
            return Err(format!("the name of segment {segment} has {words} words (at most {MAX_NAME_WORDS})"));
        }
        if name.chars().any(char::is_control) {
            return Err(format!("the name of segment {segment} has a control character"));
        }
        if let Err(violation) = check_placeholders(&name, false) {
            return Err(format!("the name of segment {segment}: {}", violation.reason));
        }
        if is_generic(&name) {
            return Err(format!("the name of segment {segment}, {name:?}, is a placeholder"));
        }
        if !seen.insert(name.to_lowercase()) {
            return Err(format!("two segments are named {name:?}"));
        }
        checked.push(name);
    }
    Ok(checked)
}

/// A name that says nothing about its segment: "Segment 3", "Cluster B", "Group", "TBD".
fn is_generic(name: &str) -> bool {
    let lower = name.to_lowercase();
    let mut words = lower.split(' ');
    let head = words.next().unwrap_or_default();
    let generic = matches!(head, "segment" | "cluster" | "group" | "name" | "tbd" | "n/a" | "unnamed" | "untitled");
    generic && words.all(|word| word.chars().count() <= 2 || word.chars().all(|c| c.is_ascii_digit()))
}

/// Names `report`'s segments with the configured provider (the local model when nothing else is configured and it
/// is installed), in one call recorded in the ledger; on any failure the names stay as they are.
pub async fn name(report: &mut SegmentReport, data_dir: &Path) -> Outcome {
    let provider = match ProviderConfig::load(data_dir) {
        Ok(provider) => provider,
        Err(error) => return Outcome::kept(format!("no LLM provider to name them: {}", exit::one_line(&error))),
    };
    let _server = match (provider.kind, &provider.base_url) {
        (ProviderKind::Local, Some(url)) => match local_llm::ensure(url, &provider.model, data_dir).await {
            Ok(server) => Some(server),
            Err(error) => return Outcome::kept(format!("the local model did not start: {}", exit::one_line(&error))),
        },
        _ => None,
    };
    let (model, mut ledger) = match provider.chat_model().and_then(|model| Ok((model, Ledger::open(data_dir)?))) {
        Ok(ready) => ready,
        Err(error) => return Outcome::kept(provider.redact(&exit::one_line(&error))),
    };
    let segments = report.segments.len();
    let started = Instant::now();
    let reply =
        constrained::call(&model, CallPurpose::SegmentNames, SYSTEM, message(report), schema(segments), MAX_TOKENS)
            .await;
    let reply = match reply {
        Ok(reply) => reply,
        Err(error) => {
            return Outcome::kept(format!("the model call failed: {}", provider.redact(&exit::one_line(&error))));
        }
    };
    let names = check(&reply.text, segments);
    let usage = UsageRecord::new(
        provider.kind.name(),
        &provider.model,
        vec![reply.usage],
        0,
        ledger.prices(),
        started.elapsed().as_millis() as u64,
        names.is_ok(),
    );
    ledger.record(&usage);
    let naming = match names {
        Ok(names) => {
            for (segment, name) in report.segments.iter_mut().zip(names) {
                segment.name = name;
            }
            Naming::Model { model: provider.model.clone() }
        }
        Err(reason) => Naming::Deterministic { reason: format!("the model's names were refused: {reason}") },
    };
    Outcome { naming, usage: Some(usage) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(names: &[&str]) -> String {
        serde_json::json!({ "names": names }).to_string()
    }

    #[test]
    fn good_names_pass_tidied_and_each_kind_of_bad_reply_is_refused() {
        assert_eq!(
            check(&reply(&["Luxury  Loyalists", " Sporty Regulars"]), 2),
            Ok(vec!["Luxury Loyalists".to_owned(), "Sporty Regulars".to_owned()])
        );
        let refused = |text: &str, segments| check(text, segments).unwrap_err();
        assert!(refused("Luxury Loyalists", 1).contains("not a list of names"));
        assert!(refused(&reply(&["A Name"]), 2).contains("1 names for 2 segments"));
        assert!(refused(&reply(&["Luxury Loyalists", "  "]), 2).contains("segment 2 is empty"));
        assert!(refused(&reply(&["Long ".repeat(10).as_str()]), 1).contains("characters"));
        assert!(refused(&reply(&["One Two Three Four Five Six"]), 1).contains("6 words"));
        assert!(refused(&reply(&["Bargain Hunters", "bargain hunters"]), 2).contains("two segments are named"));
        assert!(refused(&reply(&["[Segment Name]"]), 1).contains("placeholder"));
        assert!(refused(&reply(&["Lorem Ipsum Buyers"]), 1).contains("placeholder"));
        assert!(refused(&reply(&["Segment 3"]), 1).contains("is a placeholder"));
        assert!(refused(&reply(&["Cluster B"]), 1).contains("is a placeholder"));
        assert!(refused(&reply(&["Bell\u{7} Ringers"]), 1).contains("control character"));
        assert!(check(&reply(&["Segment Leaders In Luxury"]), 1).is_ok(), "a name may start with a generic word");
    }

    #[test]
    fn the_schema_asks_for_exactly_one_short_name_per_segment() {
        let schema = schema(4).to_value();
        let names = &schema["properties"]["names"];
        assert_eq!((names["minItems"].as_u64(), names["maxItems"].as_u64()), (Some(4), Some(4)));
        assert_eq!(names["items"]["maxLength"].as_u64(), Some(MAX_NAME_CHARS as u64));
        assert_eq!(schema["required"], serde_json::json!(["names"]));
    }
}
