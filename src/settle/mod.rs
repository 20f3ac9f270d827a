//! Settling: the program's reading of a tool call against the question it answers, before the tool runs. A small
//! model fills every slot of a schema; what no word of the question asks for is left out, and what the question's
//! words settle (a count, a window, the side of a clause, the measure named) replaces what the model wrote. Each
//! function returns what it did, in words, for the answer's notes.

mod audience;
mod drafts;
mod metrics;

pub(crate) use audience::{
    drop_double_readings, drop_untraced, put_right, settle_comparisons, settle_event_clauses, uncovered, wrong_side,
};
pub(crate) use drafts::settle_drafts;
pub(crate) use metrics::settle_metrics;

/// The example library's values and the data day the settling tests ground their questions in.
#[cfg(test)]
fn library_values() -> (audience_tools::vocabulary::DataValues, chrono::NaiveDate) {
    let examples = audience_tools::examples::library().unwrap();
    let mut values = audience_tools::examples::values_of(&examples);
    values.countries =
        ["AT", "BE", "DE", "DK", "ES", "FR", "GB", "IT", "NL", "PL", "SE", "US"].map(String::from).to_vec();
    (values, chrono::NaiveDate::from_ymd_opt(2026, 6, 29).unwrap())
}

/// `question` grounded in the example library's values (see [`library_values`]).
#[cfg(test)]
fn grounding(question: &str) -> audience_tools::grounding::Grounding {
    let (values, as_of) = library_values();
    audience_tools::grounding::Grounding::of(question, &values, as_of)
}
