//! Segments as the user reads them: how they were found (features, the silhouette basis, the table of k with its
//! bars), then each segment in words. One renderer for `audience segments` and the chat's answer.

use audience_tools::audience::report::Share;
use audience_tools::segments::features::FeatureGroup;
use audience_tools::segments::{ProductMatch, Segment, SegmentReport};
use comfy_table::Table;
use comfy_table::presets::ASCII_MARKDOWN;

use crate::terminal;

/// Width of the silhouette bar of the best k.
const BAR_WIDTH: usize = 30;

/// The product match in one line: which segment, and why.
pub fn product_match(matched: &ProductMatch) -> String {
    format!("for {}: {}", terminal::safe(&matched.products.join(", ")), terminal::safe(&matched.reason))
}

/// The report as text: how the segments were found, the table of k, then the segments.
pub fn report(report: &SegmentReport) -> String {
    let mut lines = Vec::new();
    let version = report.data_version.map(|v| format!(" (data version {v})")).unwrap_or_default();
    lines.push(format!(
        "{} customers as of {}{version}; seed {}, {} k-means++ starts per k",
        report.customers, report.as_of, report.seed, report.restarts
    ));
    lines.push(format!("features, standardised ({}):", report.scaling));
    for used in &report.features {
        let columns = match used.group {
            FeatureGroup::Interests | FeatureGroup::Colours => format!(" ({} columns)", used.columns),
            _ if used.columns == 0 => " (left out: the same for everyone)".to_owned(),
            _ => String::new(),
        };
        lines.push(format!("  {:<10} {}{columns}", used.group.name(), used.definition));
    }
    let basis = &report.silhouette_on;
    lines.push(if basis.sampled {
        format!(
            "silhouette on a seeded sample of {} of the {} customers (seed {})",
            basis.customers, report.customers, basis.seed
        )
    } else {
        format!("silhouette on every customer ({})", basis.customers)
    });
    lines.extend(report.notes.iter().map(|note| format!("note: {}", terminal::safe(note))));

    let best = report.candidates.iter().map(|c| c.silhouette).fold(0.0, f64::max);
    let mut table = Table::new();
    table.load_preset(ASCII_MARKDOWN).set_header(["k", "inertia", "silhouette", ""]);
    for candidate in &report.candidates {
        let width =
            if best > 0.0 { (candidate.silhouette.max(0.0) / best * BAR_WIDTH as f64).round() as usize } else { 0 };
        let chosen = if candidate.k == report.chosen_k { " chosen" } else { "" };
        table.add_row([
            candidate.k.to_string(),
            format!("{:.1}", candidate.inertia),
            format!("{:.4}", candidate.silhouette),
            format!("{}{chosen}", "█".repeat(width)),
        ]);
    }
    lines.push(String::new());
    lines.push(table.to_string());
    lines.push(format!("k = {}: {}", report.chosen_k, report.chosen_by));
    lines.push(String::new());

    let mut table = Table::new();
    table.load_preset(ASCII_MARKDOWN).set_header([
        "#",
        "segment",
        "customers",
        "share",
        "what sets it apart",
        "top products",
        "countries",
        "spend",
    ]);
    for segment in &report.segments {
        let products = product_shares(segment);
        table.add_row([
            segment.id.to_string(),
            terminal::safe(&segment.name).into_owned(),
            segment.size.to_string(),
            percent(segment.share),
            terminal::safe(&segment.description).into_owned(),
            terminal::safe(&products.join(", ")).into_owned(),
            terminal::safe(&shares(&segment.breakdown.country, 3)).into_owned(),
            format!("median {:.0}; {}", segment.median_spend, modal(&segment.breakdown.spend_band)),
        ]);
    }
    lines.push(table.to_string());
    lines.join("\n")
}

/// A segment's top products with their interest shares ("running gear 62%"), as the table and the naming prompt show them.
pub fn product_shares(segment: &Segment) -> Vec<String> {
    segment
        .top_products()
        .iter()
        .map(|p| format!("{} {:.0}%", p.product.replace('_', " "), p.interest_share * 100.0))
        .collect()
}

fn percent(share: f64) -> String {
    format!("{:.0}%", share * 100.0)
}

/// The first `count` values with their shares.
fn shares(shares: &[Share], count: usize) -> String {
    shares.iter().take(count).map(|s| format!("{} {}", s.value, percent(s.share))).collect::<Vec<_>>().join(", ")
}

/// The spend band most members are in, with its share.
fn modal(shares: &[Share]) -> String {
    shares
        .iter()
        .max_by(|a, b| a.count.cmp(&b.count))
        .map(|s| format!("{} spent {}", percent(s.share), s.value))
        .unwrap_or_default()
}
