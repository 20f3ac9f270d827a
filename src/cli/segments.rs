//! `audience segments`: K-means segments of the customers, the number chosen by silhouette, each described by what
//! sets it apart; `--save PREFIX` keeps each segment as a saved audience with its members frozen.

use anyhow::{Result, anyhow};
use audience::exit::{Failure, FailureKind, tool_failure};
use audience::outln;
use audience::terminal;
use audience_tools::audience::report::Share;
use audience_tools::audience::saved::{SavedAudiences, SavedError, check_name};
use audience_tools::segments::features::FeatureGroup;
use audience_tools::segments::{self, KRange, SegmentOptions, SegmentReport};
use audience_tools::stores::Stores;
use clap::Args;
use comfy_table::Table;
use comfy_table::presets::ASCII_MARKDOWN;

/// Width of the silhouette bar of the best k.
const BAR_WIDTH: usize = 30;

#[derive(Args, Debug)]
pub struct SegmentsArgs {
    /// The number of segments (5), or a range to choose it from by silhouette (2..10).
    #[arg(long, value_name = "N|FROM..TO", default_value_t = KRange::default())]
    k: KRange,
    /// Feature groups to cluster on, comma-separated (default: all): spend, orders, recency, tenure, interests,
    /// colours, luxury.
    #[arg(long, value_delimiter = ',')]
    features: Vec<FeatureGroup>,
    /// Seed of the k-means++ starts and of the silhouette sample: the same seed gives the same segments.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Save each segment as the audience PREFIX-1, PREFIX-2, ... with its members frozen.
    #[arg(long, value_name = "PREFIX")]
    save: Option<String>,
    /// Also name the segment with the most affinity for these products (comma-separated: as the data names them).
    #[arg(long, value_delimiter = ',', value_name = "PRODUCT")]
    product: Vec<String>,
    /// With --save: save over audiences of the same names.
    #[arg(long, requires = "save")]
    replace: bool,
    #[arg(long)]
    json: bool,
}

pub async fn run(stores: &Stores, args: SegmentsArgs) -> Result<()> {
    if let Some(prefix) = &args.save {
        // The longest name it can make must be valid before any work is done.
        check_name(&format!("{prefix}-{}", args.k.max))
            .map_err(|e| anyhow!("--save: {e}").context(Failure(FailureKind::Usage)))?;
    }
    let options = SegmentOptions { k: args.k, features: args.features, seed: args.seed, ..SegmentOptions::default() };
    let report = segments::compute(stores, &options).await.map_err(tool_failure)?;
    let matched = if args.product.is_empty() {
        None
    } else {
        Some(segments::match_products(&report, &args.product).map_err(tool_failure)?)
    };
    let saved = match &args.save {
        Some(prefix) => {
            let audiences = segments::frozen_audiences(&report, prefix);
            let store = SavedAudiences::new(&stores.db).map_err(saved_error)?;
            store.save_frozen(stores, &audiences, args.replace).await.map_err(saved_error)?;
            audiences.into_iter().map(|a| a.name).collect()
        }
        None => Vec::new(),
    };
    if args.json {
        let mut value = serde_json::to_value(&report)?;
        if args.save.is_some() {
            value["saved"] = serde_json::json!(saved);
        }
        if let Some(matched) = &matched {
            value["product_match"] = serde_json::to_value(matched)?;
        }
        return outln!("{}", terminal::safe_json(&value)?);
    }
    outln!("{}", render(&report))?;
    if let Some(matched) = &matched {
        outln!("\nfor {}: {}", terminal::safe(&matched.products.join(", ")), terminal::safe(&matched.reason))?;
    }
    if !saved.is_empty() {
        outln!(
            "\nsaved {} audiences with their members frozen: {} (`audience show {}`)",
            saved.len(),
            saved.join(", "),
            saved[0]
        )?;
    }
    Ok(())
}

/// A saved-audience error with its exit kind: a bad name or one already taken is the user's to fix.
fn saved_error(error: SavedError) -> anyhow::Error {
    match error {
        SavedError::Store(error) => error.context(Failure(FailureKind::Store)),
        other => anyhow!("{other}").context(Failure(FailureKind::Usage)),
    }
}

/// The report as text: how the segments were found, the table of k, then the segments.
pub fn render(report: &SegmentReport) -> String {
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
        let products: Vec<String> = segment
            .top_products()
            .iter()
            .map(|p| format!("{} {:.0}%", p.product.replace('_', " "), p.interest_share * 100.0))
            .collect();
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
