//! Settling a `draft_emails` call against its question: an offer, holdout, limit, grouping or file the question
//! does not give is left to the defaults.

use audience_tools::grounding::Grounding;
use serde_json::Value;

/// Words that ask for a control group.
const HOLDOUT_WORDS: [&str; 6] = ["holdout", "hold", "held", "control", "withhold", "withheld"];

/// A `draft_emails` call without what the question does not give, as [`super::settle_metrics`] does for a metrics call.
/// An offer is a promise in every e-mail: one whose numbers (a discount, a price, a date) the question does not
/// write, or, without numbers, none of whose words it says, is the model's invention. A holdout, a limit, a
/// grouping or a file name nobody asked for is left to the defaults. Returns what was left out, in words.
pub(crate) fn settle_drafts(args: &mut Value, grounding: &Grounding) -> Vec<String> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settle::grounding;
    use serde_json::json;

    /// A draft call keeps what the question gives and loses what the model made up: an offer is a promise in every
    /// e-mail.
    #[test]
    fn a_draft_call_loses_an_offer_and_settings_the_question_does_not_give() {
        let settle = |question: &str, mut args: Value| {
            let dropped = settle_drafts(&mut args, &grounding(question));
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
}
