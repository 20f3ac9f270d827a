//! Customer segments: K-means over standardised profile features ([`features`]), the number of segments chosen
//! by the mean silhouette over a range of k ([`cluster`]), each segment described in words ([`describe`]), and a
//! product matched to the segment with the most affinity for it ([`match_products`]).
//!
//! [`compute`] reads the profiles through the reader connection, in one read-only statement, so every figure
//! comes from one data version; the clustering itself runs off the async runtime. The same data, options and seed
//! give the same segments.

pub mod cluster;
pub mod describe;
pub mod features;

use std::fmt;
use std::str::FromStr;
use std::time::Instant;

use chrono::NaiveDate;
use serde::Serialize;

use self::cluster::{Clustering, kmeans, mean_silhouettes, silhouette_sample};
use self::describe::{ProductAffinity, Trait, describe, everyone_interest};
use self::features::{CustomerRow, FeatureColumn, FeatureGroup, standardise, vocabulary};
use crate::audience::AudienceDefinition;
use crate::audience::report::Breakdown;
use crate::audience::saved::FrozenAudience;
use crate::dataset::Dataset;
use crate::failure::ToolFailure;
use crate::schema::spend_band_sql;
use crate::stores::Stores;

/// The largest k a range may ask for: more segments than a marketer can act on, and each k costs a clustering.
pub const MAX_K: usize = 30;
/// Customers the silhouette is computed on at most; above it, a seeded sample of this many.
pub const SILHOUETTE_SAMPLE: usize = 10_000;
/// K-means runs per k from different k-means++ starts; the one with the lowest inertia is kept.
pub const RESTARTS: usize = 4;
/// Products shown as a segment's top products.
pub const TOP_PRODUCTS: usize = 3;

/// The k to try: one (`--k 5`) or an inclusive range (`--k 2..10`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct KRange {
    pub min: usize,
    pub max: usize,
}

impl Default for KRange {
    fn default() -> Self {
        Self { min: 2, max: 10 }
    }
}

impl fmt::Display for KRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min == self.max { write!(f, "{}", self.min) } else { write!(f, "{}..{}", self.min, self.max) }
    }
}

impl FromStr for KRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let number = |part: &str| {
            part.trim()
                .parse::<usize>()
                .map_err(|_| format!("{text:?} is not a k: write a number (5) or a range (2..10)"))
        };
        let (min, max) = match text.split_once("..") {
            Some((min, max)) => (number(min)?, number(max.trim_start_matches('='))?),
            None => {
                let k = number(text)?;
                (k, k)
            }
        };
        if min < 2 || min > max || max > MAX_K {
            return Err(format!("k must be between 2 and {MAX_K}, the range's start no larger than its end: {text:?}"));
        }
        Ok(Self { min, max })
    }
}

/// How to segment.
#[derive(Clone, Debug, PartialEq)]
pub struct SegmentOptions {
    pub k: KRange,
    /// The feature groups to cluster on; empty for all of them.
    pub features: Vec<FeatureGroup>,
    pub seed: u64,
    pub restarts: usize,
    pub silhouette_sample: usize,
}

impl Default for SegmentOptions {
    fn default() -> Self {
        Self {
            k: KRange::default(),
            features: Vec::new(),
            seed: 42,
            restarts: RESTARTS,
            silhouette_sample: SILHOUETTE_SAMPLE,
        }
    }
}

impl SegmentOptions {
    /// The groups in their fixed order, each once.
    fn groups(&self) -> Vec<FeatureGroup> {
        if self.features.is_empty() {
            return FeatureGroup::ALL.to_vec();
        }
        FeatureGroup::ALL.into_iter().filter(|group| self.features.contains(group)).collect()
    }
}

/// A feature group as the report states it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GroupUsed {
    pub group: FeatureGroup,
    pub definition: &'static str,
    /// Its standardised columns (one per product or colour for those groups).
    pub columns: usize,
}

/// Which customers the silhouette was computed on.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SilhouetteBasis {
    /// Customers in the computation.
    pub customers: usize,
    /// True when they are a seeded sample of all customers.
    pub sampled: bool,
    pub seed: u64,
}

/// One k tried.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Candidate {
    pub k: usize,
    /// Sum of squared distances to the segment means, in standardised units.
    pub inertia: f64,
    /// Mean silhouette, -1 to 1: how much closer customers are to their own segment than to the next one.
    pub silhouette: f64,
}

/// One segment.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Segment {
    /// 1 for the largest segment, then by size.
    pub id: usize,
    /// Made from the leading distinguishing features, the same every time; the `segments` command replaces it with
    /// the model's name when the model gives valid ones.
    pub name: String,
    /// What sets it apart, in words.
    pub description: String,
    pub size: u64,
    /// Of all customers, 0 to 1.
    pub share: f64,
    /// The columns whose mean z-score is at least `describe::DISTINGUISHING_Z` from 0, strongest first.
    pub traits: Vec<Trait>,
    /// The 5th and 95th percentile of the members' ages.
    pub ages: Option<(i32, i32)>,
    pub median_spend: f64,
    /// Every product, the largest interest share first.
    pub products: Vec<ProductAffinity>,
    /// Countries, RFM segments, status and spend bands of the members.
    pub breakdown: Breakdown,
    /// The members' file ids, in customer order (not printed: `--save` keeps them).
    #[serde(skip)]
    pub members: Vec<String>,
}

impl Segment {
    pub fn top_products(&self) -> &[ProductAffinity] {
        &self.products[..self.products.len().min(TOP_PRODUCTS)]
    }
}

/// The segments of the customers and how they were found.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SegmentReport {
    pub customers: u64,
    pub as_of: NaiveDate,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_version: Option<i64>,
    pub seed: u64,
    pub restarts: usize,
    pub features: Vec<GroupUsed>,
    /// How every column was scaled.
    pub scaling: &'static str,
    pub columns: Vec<FeatureColumn>,
    /// Columns left out because every customer has the same value.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub constant_columns: Vec<String>,
    pub silhouette_on: SilhouetteBasis,
    pub candidates: Vec<Candidate>,
    pub chosen_k: usize,
    pub chosen_by: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    pub segments: Vec<Segment>,
    pub seconds: Seconds,
}

/// Where the time went, in seconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Seconds {
    /// Reading the profiles.
    pub read: f64,
    /// K-means for every k.
    pub kmeans: f64,
    /// The silhouettes of every k.
    pub silhouette: f64,
    pub total: f64,
}

/// The scaling, as reports state it.
pub const SCALING: &str = "z-score over all customers: (value - mean) / standard deviation; the share columns of \
                             interests and of colours each share their group's pooled standard deviation";

/// Segments the customers: reads their profiles, standardises the features, clusters for every k in the range,
/// keeps the k with the highest mean silhouette (the smallest such k on a tie) and describes its segments.
pub async fn compute(stores: &Stores, options: &SegmentOptions) -> Result<SegmentReport, ToolFailure> {
    let started = Instant::now();
    let mut reading = stores.one_version();
    let (rows, as_of, data_version) = loop {
        let version = reading.start().await?;
        let rows = read_rows(stores).await?;
        let as_of = Dataset::as_of(&stores.db).await.map_err(ToolFailure::Fatal)?;
        if reading.unchanged(version).await? {
            break (rows, as_of, version);
        }
    };
    let as_of = as_of.unwrap_or_else(|| chrono::Utc::now().date_naive());
    let read = started.elapsed().as_secs_f64();
    let options = options.clone();
    let mut report = tokio::task::spawn_blocking(move || segment_rows(rows, &options, as_of, data_version))
        .await
        .map_err(|e| ToolFailure::Fatal(anyhow::anyhow!("the clustering stopped: {e}")))??;
    report.seconds.read = read;
    report.seconds.total = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Every customer's row, in customer order, read as the reader role.
async fn read_rows(stores: &Stores) -> Result<Vec<CustomerRow>, ToolFailure> {
    let sql = format!(
        "SELECT external_id, country, age, total_spent::float8 AS total_spent, order_count, recency_days, \
         ((last_purchase AT TIME ZONE 'UTC')::date - (first_purchase AT TIME ZONE 'UTC')::date) AS span_days, \
         interests, interest_weights, preferred_colors, likes_luxury, segment, churned, \
         {} AS spend_band FROM profiles ORDER BY customer_id",
        spend_band_sql("total_spent")
    );
    let mut tx = stores.db.begin_read_only(stores.limits).await.map_err(ToolFailure::Fatal)?;
    let rows = sqlx::query_as::<_, CustomerRow>(&sql).fetch_all(&mut *tx).await?;
    tx.rollback().await?;
    Ok(rows)
}

/// The clustering and the descriptions, from the rows read.
fn segment_rows(
    rows: Vec<CustomerRow>,
    options: &SegmentOptions,
    as_of: NaiveDate,
    data_version: Option<i64>,
) -> Result<SegmentReport, ToolFailure> {
    let n = rows.len();
    let KRange { min, max } = options.k;
    if n == 0 {
        return Err(ToolFailure::correctable("there are no customers to segment: ingest some first"));
    }
    // K-means needs more customers than segments (each segment's silhouette needs a neighbour).
    if n <= min {
        return Err(ToolFailure::Correctable(format!(
            "{n} customer{} cannot be split into {min} segments: k-means needs more customers than segments; \
             try a smaller --k",
            if n == 1 { "" } else { "s" }
        )));
    }
    let mut notes = Vec::new();
    let max = if n <= max {
        notes.push(format!("k stops at {}: there are {n} customers", n - 1));
        n - 1
    } else {
        max
    };
    let groups = options.groups();
    let (products, colours) = vocabulary(&rows);
    let features = standardise(&rows, &groups, &products, &colours);
    if features.columns.is_empty() {
        return Err(ToolFailure::correctable(
            "every customer has the same value in every chosen feature: there is nothing to segment by",
        ));
    }
    let z = &features.z;
    let mut seconds = Seconds::default();
    let started = Instant::now();
    let clusterings: Vec<Clustering> =
        (min..=max).map(|k| kmeans(z, k, options.seed, options.restarts)).collect::<Result<_, _>>()?;
    seconds.kmeans = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let sample = silhouette_sample(n, options.silhouette_sample, options.seed);
    let scores = mean_silhouettes(z, &sample, &clusterings.iter().collect::<Vec<_>>());
    seconds.silhouette = started.elapsed().as_secs_f64();
    let candidates: Vec<Candidate> = clusterings
        .iter()
        .zip(&scores)
        .map(|(c, s)| Candidate { k: c.k, inertia: (c.inertia * 100.0).round() / 100.0, silhouette: round4(*s) })
        .collect();
    // The highest silhouette, the smallest k among equals (`max_by` keeps the last of equals, so go from the top).
    let best = (0..clusterings.len()).rev().max_by(|a, b| scores[*a].total_cmp(&scores[*b])).unwrap_or_default();
    let chosen = &clusterings[best];

    // Segments numbered by size, largest first; equal sizes by their first member.
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); chosen.k];
    for (i, label) in chosen.labels.iter().enumerate() {
        members[*label].push(i);
    }
    members.retain(|m| !m.is_empty());
    members.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.first().cmp(&b.first())));
    let everyone = everyone_interest(&rows);
    let mut segments: Vec<Segment> = members
        .iter()
        .enumerate()
        .map(|(index, members)| {
            let d = describe(&rows, &features, &products, &everyone, members);
            Segment {
                id: index + 1,
                name: d.name,
                description: d.description,
                size: members.len() as u64,
                share: round4(members.len() as f64 / n as f64),
                traits: d.traits,
                ages: d.ages,
                median_spend: d.median_spend,
                products: d.products,
                breakdown: d.breakdown,
                members: members.iter().map(|&i| rows[i].external_id.clone()).collect(),
            }
        })
        .collect();
    // Two segments described alike keep apart by number.
    for i in 1..segments.len() {
        if segments[..i].iter().any(|s| s.name == segments[i].name) {
            segments[i].name = format!("{} ({})", segments[i].name, segments[i].id);
        }
    }

    let features_used = groups
        .iter()
        .map(|&group| GroupUsed {
            group,
            definition: group.definition(),
            columns: features.columns.iter().filter(|c| c.group == group).count(),
        })
        .collect();
    Ok(SegmentReport {
        customers: n as u64,
        as_of,
        data_version,
        seed: options.seed,
        restarts: options.restarts,
        features: features_used,
        scaling: SCALING,
        columns: features.columns,
        constant_columns: features.constant,
        silhouette_on: SilhouetteBasis { customers: sample.len(), sampled: sample.len() < n, seed: options.seed },
        candidates,
        chosen_k: chosen.k,
        chosen_by: if min == max { "fixed by --k".to_owned() } else { "the highest mean silhouette".to_owned() },
        notes,
        segments,
        seconds,
    })
}

/// The segment a product (or a set of products) suits best, and why.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProductMatch {
    pub products: Vec<String>,
    pub segment_id: usize,
    pub segment: String,
    /// The mean share of the segment's interest weight that goes to the products.
    pub interest_share: f64,
    /// The same over all customers.
    pub everyone: f64,
    pub lift: f64,
    pub reason: String,
    /// Every segment's interest share in the products, by segment id.
    pub by_segment: Vec<(usize, f64)>,
}

/// The segment with the most affinity for `products`: the largest mean share of its members' interest weight that
/// goes to them (a product names a value of the data's `product` column, as the interests do).
pub fn match_products(report: &SegmentReport, products: &[String]) -> Result<ProductMatch, ToolFailure> {
    let known: Vec<&str> = report
        .segments
        .first()
        .map(|segment| segment.products.iter().map(|p| p.product.as_str()).collect())
        .unwrap_or_default();
    if products.is_empty() {
        return Err(ToolFailure::correctable("name a product to match to a segment"));
    }
    let mut sorted_known = known.clone();
    sorted_known.sort_unstable();
    if let Some(unknown) = products.iter().find(|p| !known.contains(&p.as_str())) {
        return Err(ToolFailure::Correctable(format!(
            "no customer's interests name the product {unknown:?}; the products are {}",
            sorted_known.join(", ")
        )));
    }
    let affinity = |segment: &Segment| -> (f64, f64) {
        segment
            .products
            .iter()
            .filter(|p| products.contains(&p.product))
            .fold((0.0, 0.0), |(share, everyone), p| (share + p.interest_share, everyone + p.everyone))
    };
    let by_segment: Vec<(usize, f64)> =
        report.segments.iter().map(|segment| (segment.id, round4(affinity(segment).0))).collect();
    let best = report
        .segments
        .iter()
        .rev()
        .max_by(|a, b| affinity(a).0.total_cmp(&affinity(b).0))
        .ok_or_else(|| ToolFailure::correctable("there are no segments to match"))?;
    let (share, everyone) = affinity(best);
    let lift = if everyone > 0.0 { share / everyone } else { 0.0 };
    let names: Vec<String> = products.iter().map(|p| p.replace('_', " ")).collect();
    let reason = format!(
        "segment {} ({}, {} customers) gives {:.0}% of its interest to {}, against {:.0}% over all customers \
         ({lift:.1}x), the most of the {} segments",
        best.id,
        best.name,
        best.size,
        share * 100.0,
        names.join(" and "),
        everyone * 100.0,
        report.segments.len()
    );
    Ok(ProductMatch {
        products: products.to_vec(),
        segment_id: best.id,
        segment: best.name.clone(),
        interest_share: round4(share),
        everyone: round4(everyone),
        lift: round4(lift),
        reason,
        by_segment,
    })
}

/// Each segment as a saved audience named `PREFIX-ID` with its frozen members. The definition is the whole base:
/// membership is the frozen list (show, export, overlap and lookalike read it), the explanation says which
/// segment it is.
pub fn frozen_audiences(report: &SegmentReport, prefix: &str) -> Vec<FrozenAudience> {
    let features: Vec<&str> = report.features.iter().map(|f| f.group.name()).collect();
    report
        .segments
        .iter()
        .map(|segment| FrozenAudience {
            name: format!("{prefix}-{}", segment.id),
            definition: AudienceDefinition::default(),
            explanation: format!(
                "segment {} of {} ({}): {}; k-means on {}, seed {}",
                segment.id,
                report.segments.len(),
                segment.name,
                segment.description,
                features.join(", "),
                report.seed
            ),
            breakdown: segment.breakdown.clone(),
            as_of: report.as_of,
            members: segment.members.clone(),
        })
        .collect()
}

fn round4(value: f64) -> f64 {
    (value * 10_000.0).round() / 10_000.0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn k_ranges_parse() {
        assert_eq!("2..10".parse::<KRange>(), Ok(KRange { min: 2, max: 10 }));
        assert_eq!("4".parse::<KRange>(), Ok(KRange { min: 4, max: 4 }));
        assert_eq!("3..=5".parse::<KRange>(), Ok(KRange { min: 3, max: 5 }));
        for bad in ["1", "5..3", "x", "2..99"] {
            assert!(bad.parse::<KRange>().is_err(), "{bad}");
        }
        assert_eq!(KRange { min: 2, max: 10 }.to_string(), "2..10");
    }
}
