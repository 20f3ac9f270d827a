//! Answers as the user reads them, written by the program from typed results: the answer to a found audience, the
//! audience's summary (size, funnel, breakdown) and its members' table, and a metrics report ([`metrics`]: the
//! value with its definition, the table and the chart), and the drafts the agent wrote. `ask`, the REPL and the
//! campaign commands print these; text from the model or from customer data is escaped for the terminal where it is printed.

use audience_tools::audience::AudienceReport;
use audience_tools::audience::report::{Breakdown, Member, Share};
use audience_tools::sql_data_retriever::SqlDataRetrieverOutput;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};

use crate::drafts::batch::DraftSummary;

pub mod metrics;
pub mod segments;

/// `text` on one line, cut to `max` characters: a tool's output or an answer where only its gist is shown.
pub fn one_line(text: &str, max: usize) -> String {
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// The answer to a `draft_emails` call: the counts and the file, and the members left without a draft.
pub fn drafts_answer(summary: &DraftSummary) -> String {
    let mut text = format!("{}.", summary.line());
    if summary.remaining > 0 {
        text.push_str(&format!(
            " {} more members have no draft yet: ask for more, or write them all with `audience draft`.",
            summary.remaining
        ));
    }
    text
}

/// The customers `sql_data_retriever` read, as a table written by the program from the typed records (every cell
/// escaped: a stored field may hold control characters or an instruction), and the ids that have no profile.
pub fn records_answer(output: &SqlDataRetrieverOutput) -> String {
    let mut parts = Vec::new();
    if let Some(first) = output.records.first() {
        let columns: Vec<&String> = first.keys().collect();
        let mut table = Table::new();
        table.load_preset(UTF8_FULL_CONDENSED).set_header(columns.iter().map(|c| c.as_str()));
        for record in &output.records {
            table.add_row(columns.iter().map(|column| {
                let cell = match record.get(*column) {
                    Some(serde_json::Value::String(text)) => text.clone(),
                    Some(serde_json::Value::Null) | None => String::new(),
                    Some(other) => other.to_string(),
                };
                crate::terminal::safe(&cell).into_owned()
            }));
        }
        let count = output.records.len();
        parts.push(format!("{count} customer record{}:\n{table}", if count == 1 { "" } else { "s" }));
    }
    if !output.missing_ids.is_empty() {
        let ids: Vec<String> = output.missing_ids.iter().map(|id| id.external_id()).collect();
        parts.push(format!("No profile for {}.", ids.join(", ")));
    }
    parts.join("\n")
}

/// Members named in a rendered answer; the whole list is printed below it (and in `--json`).
const NAMED_MEMBERS: usize = 3;

/// The answer to a found audience, written by the program from the typed report: its size, what defines it, the
/// best members and why they fit, any clause left out because the question did not ask for it, and how a
/// follow-up's call was read against the audience it edits.
pub fn audience_answer(report: &AudienceReport, dropped: &[String], settled: &[String]) -> String {
    let mut text = format!("{} of {} customers: {}.", report.size, report.total_customers, report.explanation);
    if report.size == 0 {
        text.push_str(" No customer meets every condition.");
    }
    let named: Vec<String> = report
        .members
        .iter()
        .take(NAMED_MEMBERS)
        .map(|m| {
            let why = m.why.first().map(|why| format!(": {why}")).unwrap_or_default();
            format!("{} {}{why}", m.external_id, m.name)
        })
        .collect();
    if !named.is_empty() {
        let order = if report.ranked_by == "intent" { "Best matches" } else { "Top spenders" };
        text.push_str(&format!(" {order}: {}.", named.join("; ")));
    }
    for clause in unique(dropped) {
        text.push_str(&format!(" Left out, as no word of the question asks for it: {clause}."));
    }
    for note in unique(settled) {
        text.push_str(&format!(" {}.", sentence(note)));
    }
    text
}

/// The notes once each, in order: a repeated call of the same question is settled the same way again.
fn unique(notes: &[String]) -> Vec<&String> {
    let mut seen = Vec::new();
    for note in notes {
        if !seen.contains(&note) {
            seen.push(note);
        }
    }
    seen
}

/// An answer rendered from a typed result, with a line for each argument the host left out of the call because no
/// word of the question asks for it, and one for each way it read the question where the call did not.
pub fn with_host_notes(mut text: String, dropped: &[String], settled: &[String]) -> String {
    for left_out in unique(dropped) {
        text.push_str(&format!("\nLeft out, as no word of the question asks for it: {left_out}."));
    }
    for note in unique(settled) {
        text.push_str(&format!("\n{}.", sentence(note)));
    }
    text
}

/// A note of the host ("grouped by country, as ...") as a sentence, its first letter capitalised.
fn sentence(note: &str) -> String {
    let mut note = note.to_owned();
    if let Some(first) = note.get(..1) {
        note.replace_range(..1, &first.to_uppercase());
    }
    note
}

/// The audience in a few lines: its size, what defines it (with the size after each clause) and its makeup.
pub fn audience_summary(report: &AudienceReport) -> String {
    let mut lines = vec![format!(
        "Audience: {} of {} customers: {}",
        report.size,
        report.total_customers,
        crate::terminal::safe(&report.explanation)
    )];
    for step in &report.funnel {
        let verb = if step.exclude { "excluding" } else { "" };
        let text = crate::terminal::safe(&step.text);
        lines.push(format!("  {} {verb:<9} {text:<60} {:>8}", step.clause, step.size).trim_end().to_owned());
    }
    lines.extend(report.warnings.iter().map(|warning| format!("  warning: {}", crate::terminal::safe(warning))));
    if report.size > 0 {
        lines.push(format!("  {}", breakdown_line(&report.breakdown)));
    }
    lines.join("\n")
}

/// A breakdown on one line: the four largest values of each dimension with their shares.
pub fn breakdown_line(b: &Breakdown) -> String {
    let shares = |shares: &[Share]| -> String {
        shares
            .iter()
            .take(4)
            .map(|s| format!("{} {}%", crate::terminal::safe(&s.value), (s.share * 100.0).round()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "by country: {}; segment: {}; status: {}; spend: {}",
        shares(&b.country),
        shares(&b.segment),
        shares(&b.status),
        shares(&b.spend_band)
    )
}

/// The listed members as a table: who, where, value, score (when ranked by an intent) and why they fit.
pub fn member_table(members: &[Member]) -> Table {
    let scored = members.iter().any(|member| member.score.is_some());
    // The id column is the file's id (`external_id`), the one users know; the internal key stays internal.
    let mut header = vec!["customer", "name", "country", "segment", "total_spent"];
    if scored {
        header.push("score");
    }
    header.push("why");
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header(header);
    for member in members {
        let mut row = vec![
            crate::terminal::safe(&member.external_id).into_owned(),
            crate::terminal::safe(&member.name).into_owned(),
            crate::terminal::safe(member.country.as_deref().unwrap_or("unknown")).into_owned(),
            crate::terminal::safe(&member.segment).into_owned(),
            format!("{:.2}", member.total_spent),
        ];
        if scored {
            row.push(member.score.map(|score| format!("{score:.3}")).unwrap_or_default());
        }
        row.push(crate::terminal::safe(&member.why.join("; ")).into_owned());
        table.add_row(row);
    }
    table
}
