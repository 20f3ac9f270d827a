//! `audience segments`: K-means segments of the customers, the number chosen by silhouette, each described by what
//! sets it apart and named by the model in one call (`audience::segment_names`, deterministic names without one or
//! with `--no-model`); `--save PREFIX` keeps each segment as a saved audience with its members frozen.

use std::path::Path;

use anyhow::{Result, anyhow};
use audience::exit::{Failure, FailureKind, tool_failure};
use audience::outln;
use audience::segment_names::{self, Naming};
use audience::terminal;
use audience_tools::audience::saved::{SavedAudiences, SavedError, check_name};
use audience_tools::segments::features::FeatureGroup;
use audience_tools::segments::{self, KRange, SegmentOptions};
use audience_tools::stores::Stores;
use clap::Args;

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
    /// Keep the deterministic segment names: no model call.
    #[arg(long)]
    no_model: bool,
    #[arg(long)]
    json: bool,
}

pub async fn run(stores: &Stores, args: SegmentsArgs, data_dir: &Path) -> Result<()> {
    if let Some(prefix) = &args.save {
        // The longest name it can make must be valid before any work is done.
        check_name(&format!("{prefix}-{}", args.k.max))
            .map_err(|e| anyhow!("--save: {e}").context(Failure(FailureKind::Usage)))?;
    }
    let options = SegmentOptions { k: args.k, features: args.features, seed: args.seed, ..SegmentOptions::default() };
    let mut report = segments::compute(stores, &options).await.map_err(tool_failure)?;
    // Named before anything reads the names: the product match's reason and the saved audiences' explanations.
    let naming = if args.no_model {
        Naming::Deterministic { reason: "--no-model".to_owned() }
    } else {
        let outcome = segment_names::name(&mut report, data_dir).await;
        if let Some(usage) = &outcome.usage {
            eprintln!("{}", usage.summary_line());
        }
        if let Naming::Deterministic { reason } = &outcome.naming {
            eprintln!("note: the segments keep their deterministic names: {}", terminal::safe(reason));
        }
        outcome.naming
    };
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
        value["naming"] = serde_json::to_value(&naming)?;
        if args.save.is_some() {
            value["saved"] = serde_json::json!(saved);
        }
        if let Some(matched) = &matched {
            value["product_match"] = serde_json::to_value(matched)?;
        }
        return outln!("{}", terminal::safe_json(&value)?);
    }
    outln!("{}", audience::render::segments::report(&report))?;
    if let Some(matched) = &matched {
        outln!("\n{}", audience::render::segments::product_match(matched))?;
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
