//! The customer features segments are clustered on, read from `profiles` and standardised to z-scores.
//!
//! Each feature group is one or more columns:
//! - `spend`: ln(1 + total spent), so a few large spenders do not stretch the scale;
//! - `orders`: ln(1 + purchases), for the same reason;
//! - `recency`: days from the last purchase to the data's day; a customer who never bought gets the longest
//!   recency among buyers (as far from a purchase as anyone);
//! - `tenure`: days from the first purchase to the data's day (0 without a purchase);
//! - `interests`: for every product in the data, its share of the customer's interest weight (the profile's top
//!   interests and their weights, purchase 3, add to cart 2, view 1), 0 when it is not among them;
//! - `colours`: for every colour in the data, an equal share of each of the customer's preferred colours;
//! - `luxury`: 1 when the profile likes luxury, else 0.
//!
//! Every column is then standardised to a z-score over all customers: minus its mean, divided by a standard
//! deviation. A scalar column is divided by its own. The share columns of a group (interests, colours) are divided
//! by the group's pooled standard deviation (the root of their mean variance), so a customer's shares keep their
//! proportions: with a deviation of its own, a rare product's small share would count as much as spend, and noise
//! in the few sessions outside a customer's tastes would outweigh them. A column that is the same for everyone
//! carries nothing and is left out (the report names it).

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use ndarray::Array2;
use serde::{Deserialize, Serialize};

/// A group of feature columns, as `--features` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureGroup {
    Spend,
    Orders,
    Recency,
    Tenure,
    Interests,
    Colours,
    Luxury,
}

impl FeatureGroup {
    pub const ALL: [FeatureGroup; 7] =
        [Self::Spend, Self::Orders, Self::Recency, Self::Tenure, Self::Interests, Self::Colours, Self::Luxury];

    pub fn name(self) -> &'static str {
        match self {
            Self::Spend => "spend",
            Self::Orders => "orders",
            Self::Recency => "recency",
            Self::Tenure => "tenure",
            Self::Interests => "interests",
            Self::Colours => "colours",
            Self::Luxury => "luxury",
        }
    }

    /// What the group's columns hold, in words (the report states it).
    pub fn definition(self) -> &'static str {
        match self {
            Self::Spend => "ln(1 + total spent)",
            Self::Orders => "ln(1 + purchases)",
            Self::Recency => "days since the last purchase (never bought: the longest among buyers)",
            Self::Tenure => "days since the first purchase (never bought: 0)",
            Self::Interests => "each product's share of the customer's interest weight",
            Self::Colours => "each colour's share of the customer's preferred colours",
            Self::Luxury => "likes luxury (1 or 0)",
        }
    }
}

impl fmt::Display for FeatureGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for FeatureGroup {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim().to_lowercase();
        let text = if text == "colors" { "colours".to_owned() } else { text };
        Self::ALL.into_iter().find(|group| group.name() == text).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|group| group.name()).collect();
            format!("unknown feature group {text:?}; the groups are {}", names.join(", "))
        })
    }
}

/// One customer's profile facts that features and descriptions are made from.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct CustomerRow {
    pub external_id: String,
    pub country: Option<String>,
    pub age: Option<i32>,
    pub total_spent: f64,
    pub order_count: i32,
    pub recency_days: Option<i32>,
    /// Days between the first and the last purchase.
    pub span_days: Option<i32>,
    pub interests: Vec<String>,
    pub interest_weights: Vec<i32>,
    pub preferred_colors: Vec<String>,
    pub likes_luxury: bool,
    /// The RFM segment of the profile.
    pub segment: String,
    pub churned: bool,
    /// The index in `schema::SPEND_BANDS`.
    pub spend_band: i32,
}

impl CustomerRow {
    /// Each interest and its share of the customer's listed interest weight.
    pub fn interest_shares(&self) -> impl Iterator<Item = (&str, f64)> {
        let total: i64 = self.interest_weights.iter().map(|w| i64::from((*w).max(0))).sum();
        self.interests
            .iter()
            .zip(&self.interest_weights)
            .filter(move |_| total > 0)
            .map(move |(product, weight)| (product.as_str(), f64::from((*weight).max(0)) / total as f64))
    }
}

/// One standardised column.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FeatureColumn {
    /// `spend`, `orders`, `recency`, `tenure`, `luxury`, or `interest:PRODUCT`, `colour:COLOUR`.
    pub name: String,
    pub group: FeatureGroup,
    /// The value this column is about (a product or a colour), for the words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Mean and standard deviation over all customers, before standardising.
    pub mean: f64,
    pub sd: f64,
}

/// The standardised feature matrix: one row per customer (in the order of the rows given), one column per
/// [`FeatureColumn`].
#[derive(Clone, Debug)]
pub struct Features {
    pub columns: Vec<FeatureColumn>,
    /// Columns left out because every customer has the same value.
    pub constant: Vec<String>,
    pub z: Array2<f64>,
}

/// The products and colours the customers' profiles name, sorted.
pub fn vocabulary(rows: &[CustomerRow]) -> (Vec<String>, Vec<String>) {
    let mut products = BTreeSet::new();
    let mut colours = BTreeSet::new();
    for row in rows {
        products.extend(row.interests.iter().filter(|p| !p.is_empty()).cloned());
        colours.extend(row.preferred_colors.iter().filter(|c| !c.is_empty()).cloned());
    }
    (products.into_iter().collect(), colours.into_iter().collect())
}

/// The raw (unstandardised) columns of `groups`, each with its name, group and value.
fn raw_columns(
    rows: &[CustomerRow],
    groups: &[FeatureGroup],
    products: &[String],
    colours: &[String],
) -> Vec<(String, FeatureGroup, Option<String>, Vec<f64>)> {
    let longest_recency = rows.iter().filter_map(|row| row.recency_days).max().unwrap_or(0);
    let mut columns = Vec::new();
    for &group in groups {
        let scalar = |value: &dyn Fn(&CustomerRow) -> f64| rows.iter().map(value).collect::<Vec<f64>>();
        match group {
            FeatureGroup::Spend => {
                columns.push((group.name().to_owned(), group, None, scalar(&|r| r.total_spent.max(0.0).ln_1p())))
            }
            FeatureGroup::Orders => columns.push((
                group.name().to_owned(),
                group,
                None,
                scalar(&|r| f64::from(r.order_count.max(0)).ln_1p()),
            )),
            FeatureGroup::Recency => columns.push((
                group.name().to_owned(),
                group,
                None,
                scalar(&|r| f64::from(r.recency_days.unwrap_or(longest_recency))),
            )),
            FeatureGroup::Tenure => columns.push((
                group.name().to_owned(),
                group,
                None,
                scalar(&|r| match r.recency_days {
                    Some(recency) => f64::from(recency) + f64::from(r.span_days.unwrap_or(0).max(0)),
                    None => 0.0,
                }),
            )),
            FeatureGroup::Luxury => columns.push((
                group.name().to_owned(),
                group,
                None,
                scalar(&|r| if r.likes_luxury { 1.0 } else { 0.0 }),
            )),
            FeatureGroup::Interests => {
                for product in products {
                    let values =
                        scalar(&|r| r.interest_shares().find(|(p, _)| *p == product).map_or(0.0, |(_, share)| share));
                    columns.push((format!("interest:{product}"), group, Some(product.clone()), values));
                }
            }
            FeatureGroup::Colours => {
                for colour in colours {
                    let values = scalar(&|r| {
                        let named = r.preferred_colors.iter().filter(|c| !c.is_empty()).count();
                        if named > 0 && r.preferred_colors.contains(colour) { 1.0 / named as f64 } else { 0.0 }
                    });
                    columns.push((format!("colour:{colour}"), group, Some(colour.clone()), values));
                }
            }
        }
    }
    columns
}

/// The standardised features of `rows` for `groups`.
pub fn standardise(rows: &[CustomerRow], groups: &[FeatureGroup], products: &[String], colours: &[String]) -> Features {
    let n = rows.len();
    let mut columns = Vec::new();
    let mut constant = Vec::new();
    let mut kept: Vec<Vec<f64>> = Vec::new();
    let raw = raw_columns(rows, groups, products, colours);
    let moments: Vec<(f64, f64)> = raw
        .iter()
        .map(|(_, _, _, values)| {
            let mean = values.iter().sum::<f64>() / n.max(1) as f64;
            (mean, values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n.max(1) as f64)
        })
        .collect();
    let pooled: Vec<(FeatureGroup, f64)> = groups
        .iter()
        .map(|&group| {
            let variances: Vec<f64> =
                raw.iter().zip(&moments).filter(|(column, _)| column.1 == group).map(|(_, (_, var))| *var).collect();
            (group, (variances.iter().sum::<f64>() / variances.len().max(1) as f64).sqrt())
        })
        .collect();
    for ((name, group, value, values), (mean, variance)) in raw.into_iter().zip(moments) {
        if variance.sqrt() < 1e-12 {
            constant.push(name);
            continue;
        }
        let sd = match value {
            Some(_) => pooled.iter().find(|(g, _)| *g == group).map_or(variance.sqrt(), |(_, sd)| *sd),
            None => variance.sqrt(),
        };
        kept.push(values.iter().map(|v| (v - mean) / sd).collect());
        columns.push(FeatureColumn { name, group, value, mean, sd });
    }
    let mut z = Array2::zeros((n, kept.len()));
    for (j, values) in kept.iter().enumerate() {
        for (i, value) in values.iter().enumerate() {
            z[[i, j]] = *value;
        }
    }
    Features { columns, constant, z }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn row(spent: f64, interests: &[(&str, i32)], colours: &[&str], recency: Option<i32>) -> CustomerRow {
        CustomerRow {
            external_id: "x".to_owned(),
            country: None,
            age: None,
            total_spent: spent,
            order_count: i32::from(recency.is_some()),
            recency_days: recency,
            span_days: recency.map(|_| 10),
            interests: interests.iter().map(|(p, _)| (*p).to_owned()).collect(),
            interest_weights: interests.iter().map(|(_, w)| *w).collect(),
            preferred_colors: colours.iter().map(|c| (*c).to_owned()).collect(),
            likes_luxury: false,
            segment: "Standard Promo".to_owned(),
            churned: false,
            spend_band: 0,
        }
    }

    #[test]
    fn columns_are_z_scores_and_constants_are_left_out() {
        let rows = vec![
            row(100.0, &[("socks", 3), ("hats", 1)], &["red"], Some(5)),
            row(0.0, &[], &["red", "blue"], None),
            row(1000.0, &[("hats", 2)], &["red"], Some(50)),
        ];
        let (products, colours) = vocabulary(&rows);
        assert_eq!(products, ["hats", "socks"]);
        let features = standardise(&rows, &FeatureGroup::ALL, &products, &colours);
        // Luxury is false for everyone.
        assert_eq!(features.constant, ["luxury"]);
        // Every column is centred; a scalar has variance 1, and a share group's columns have variance 1 on average.
        let variance = |j: usize| {
            let column = features.z.column(j);
            let mean = column.sum() / 3.0;
            assert!(mean.abs() < 1e-9, "{}", features.columns[j].name);
            column.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 3.0
        };
        for group in FeatureGroup::ALL {
            let in_group: Vec<usize> =
                (0..features.columns.len()).filter(|j| features.columns[*j].group == group).collect();
            if in_group.is_empty() {
                continue;
            }
            let mean_variance = in_group.iter().map(|j| variance(*j)).sum::<f64>() / in_group.len() as f64;
            assert!((mean_variance - 1.0).abs() < 1e-9, "{group}: {mean_variance}");
        }
        let socks = features.columns.iter().find(|c| c.name == "interest:socks").unwrap();
        assert!((socks.mean - 0.25).abs() < 1e-9, "socks are 3/4 of the first customer's weight");
        let recency = features.columns.iter().position(|c| c.name == "recency").unwrap();
        // The customer who never bought is as far from a purchase as the least recent buyer.
        assert_eq!(features.z[[1, recency]], features.z[[2, recency]]);
    }

    #[test]
    fn groups_parse_by_name() {
        assert_eq!("Colors".parse::<FeatureGroup>(), Ok(FeatureGroup::Colours));
        assert!("height".parse::<FeatureGroup>().unwrap_err().contains("spend, orders"));
    }
}
