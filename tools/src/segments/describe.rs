//! A segment in words: the features that set it apart from everyone (its mean z-score per column), its ages, top
//! products, countries and spend, and a name made from the same words, the same every time.

use std::collections::HashMap;

use serde::Serialize;

use super::features::{CustomerRow, FeatureColumn, FeatureGroup, Features};
use crate::audience::report::{Breakdown, breakdown_of};

/// A column sets a segment apart when its mean z-score there is at least this far from 0 (half a standard
/// deviation from everyone's mean).
pub const DISTINGUISHING_Z: f64 = 0.5;
/// Phrases in a segment's description at most.
const MAX_PHRASES: usize = 5;
/// Products or colours named in one phrase at most.
const MAX_NAMED: usize = 3;

/// A column whose mean in the segment sets it apart.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Trait {
    pub feature: String,
    /// The segment's mean z-score of the column.
    pub z: f64,
}

/// A product's place in a segment's interests.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProductAffinity {
    pub product: String,
    /// The mean share of the members' interest weight that goes to the product, 0 to 1.
    pub interest_share: f64,
    /// The same over all customers.
    pub everyone: f64,
    /// `interest_share / everyone`.
    pub lift: f64,
    /// The share of members with the product among their top interests.
    pub members_interested: f64,
}

/// What describes one segment, from its members' rows and z-scores.
pub struct Description {
    pub name: String,
    pub description: String,
    pub traits: Vec<Trait>,
    /// The 5th and 95th percentile of the members' known ages.
    pub ages: Option<(i32, i32)>,
    pub median_spend: f64,
    /// Every product, most interest share first.
    pub products: Vec<ProductAffinity>,
    pub breakdown: Breakdown,
}

/// Describes the segment made of `members` (row indices).
pub fn describe(
    rows: &[CustomerRow],
    features: &Features,
    products: &[String],
    everyone: &HashMap<&str, f64>,
    members: &[usize],
) -> Description {
    let size = members.len().max(1) as f64;
    let centroid: Vec<f64> =
        (0..features.columns.len()).map(|j| members.iter().map(|&i| features.z[[i, j]]).sum::<f64>() / size).collect();
    let mut traits: Vec<(usize, f64)> =
        centroid.iter().copied().enumerate().filter(|(_, z)| z.abs() >= DISTINGUISHING_Z).collect();
    traits.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()).then(a.0.cmp(&b.0)));
    let mut phrases = phrases(&features.columns, &traits);
    phrases.truncate(MAX_PHRASES);
    let name = name_of(&phrases);

    let mut ages: Vec<i32> = members.iter().filter_map(|&i| rows[i].age).collect();
    ages.sort_unstable();
    let ages = (!ages.is_empty()).then(|| (percentile(&ages, 0.05), percentile(&ages, 0.95)));
    let mut description = phrases.join(", ");
    if let Some((low, high)) = ages {
        if !description.is_empty() {
            description.push_str(", ");
        }
        description.push_str(&format!("ages {low}–{high}"));
    }

    let mut spends: Vec<f64> = members.iter().map(|&i| rows[i].total_spent).collect();
    spends.sort_by(f64::total_cmp);
    let median_spend = match spends.len() {
        0 => 0.0,
        n if n % 2 == 1 => spends[n / 2],
        n => (spends[n / 2 - 1] + spends[n / 2]) / 2.0,
    };

    let mut interest: HashMap<&str, (f64, usize)> = HashMap::new();
    for &i in members {
        for (product, share) in rows[i].interest_shares() {
            let entry = interest.entry(product).or_default();
            entry.0 += share;
            entry.1 += 1;
        }
    }
    let mut products: Vec<ProductAffinity> = products
        .iter()
        .map(|product| {
            let (sum, count) = interest.get(product.as_str()).copied().unwrap_or_default();
            let interest_share = sum / size;
            let everyone = everyone.get(product.as_str()).copied().unwrap_or(0.0);
            ProductAffinity {
                product: product.clone(),
                interest_share: round4(interest_share),
                everyone: round4(everyone),
                lift: if everyone > 0.0 { round4(interest_share / everyone) } else { 0.0 },
                members_interested: round4(count as f64 / size),
            }
        })
        .collect();
    products.sort_by(|a, b| b.interest_share.total_cmp(&a.interest_share).then_with(|| a.product.cmp(&b.product)));

    let mut groups: HashMap<(Option<String>, String, bool, usize), u64> = HashMap::new();
    for &i in members {
        let row = &rows[i];
        let band = usize::try_from(row.spend_band).unwrap_or(usize::MAX);
        *groups.entry((row.country.clone(), row.segment.clone(), row.churned, band)).or_default() += 1;
    }
    let (_, breakdown) = breakdown_of(groups.into_iter().map(|((a, b, c, d), n)| (a, b, c, d, n)));

    let traits = traits
        .into_iter()
        .map(|(j, z)| Trait { feature: features.columns[j].name.clone(), z: (z * 100.0).round() / 100.0 })
        .collect();
    Description { name, description, traits, ages, median_spend, products, breakdown }
}

/// The mean interest share of each product over all customers.
pub fn everyone_interest(rows: &[CustomerRow]) -> HashMap<&str, f64> {
    let mut shares: HashMap<&str, f64> = HashMap::new();
    for row in rows {
        for (product, share) in row.interest_shares() {
            *shares.entry(product).or_default() += share;
        }
    }
    let n = rows.len().max(1) as f64;
    shares.values_mut().for_each(|share| *share /= n);
    shares
}

/// The distinguishing columns in words, strongest first: the products (and the colours) that stand out share one
/// phrase, placed where the strongest of them is.
fn phrases(columns: &[FeatureColumn], traits: &[(usize, f64)]) -> Vec<String> {
    let mut phrases: Vec<String> = Vec::new();
    let mut named_products: Vec<&str> = Vec::new();
    let mut named_colours: Vec<&str> = Vec::new();
    let (mut product_slot, mut colour_slot) = (None, None);
    for &(j, z) in traits {
        let column = &columns[j];
        let high = z > 0.0;
        let phrase = match column.group {
            FeatureGroup::Spend => {
                if high {
                    "high spend"
                } else {
                    "low spend"
                }
            }
            FeatureGroup::Orders => {
                if high {
                    "many orders"
                } else {
                    "few orders"
                }
            }
            FeatureGroup::Recency => {
                if high {
                    "long since the last purchase"
                } else {
                    "bought recently"
                }
            }
            FeatureGroup::Tenure => {
                if high {
                    "long-standing customers"
                } else {
                    "newer customers"
                }
            }
            FeatureGroup::Luxury => {
                if high {
                    "luxury buyers"
                } else {
                    "no luxury"
                }
            }
            // What a segment lacks among products and colours says little: only what it leans to is named.
            FeatureGroup::Interests | FeatureGroup::Colours if !high => continue,
            FeatureGroup::Interests => {
                if named_products.len() < MAX_NAMED {
                    named_products.push(column.value.as_deref().unwrap_or_default());
                }
                product_slot.get_or_insert(phrases.len());
                if product_slot != Some(phrases.len()) {
                    continue;
                }
                ""
            }
            FeatureGroup::Colours => {
                if named_colours.len() < MAX_NAMED {
                    named_colours.push(column.value.as_deref().unwrap_or_default());
                }
                colour_slot.get_or_insert(phrases.len());
                if colour_slot != Some(phrases.len()) {
                    continue;
                }
                ""
            }
        };
        phrases.push(phrase.to_owned());
    }
    if let Some(slot) = product_slot {
        let words: Vec<String> = named_products.iter().map(|p| p.replace('_', " ")).collect();
        phrases[slot] = and_list(&words);
    }
    if let Some(slot) = colour_slot {
        phrases[slot] =
            format!("likes {}", and_list(&named_colours.iter().map(|c| (*c).to_owned()).collect::<Vec<_>>()));
    }
    phrases
}

/// "a", "a and b", "a, b and c".
fn and_list(words: &[String]) -> String {
    match words {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// The deterministic name: the two leading phrases, capitalised; "Typical customers" when nothing stands out.
fn name_of(phrases: &[String]) -> String {
    let name = phrases.iter().take(2).cloned().collect::<Vec<_>>().join(", ");
    let mut chars = name.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => "Typical customers".to_owned(),
    }
}

/// The `q` quantile of sorted values (nearest rank).
fn percentile(sorted: &[i32], q: f64) -> i32 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn round4(value: f64) -> f64 {
    (value * 10_000.0).round() / 10_000.0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn column(name: &str, group: FeatureGroup, value: Option<&str>) -> FeatureColumn {
        FeatureColumn { name: name.to_owned(), group, value: value.map(str::to_owned), mean: 0.0, sd: 1.0 }
    }

    #[test]
    fn products_share_a_phrase_where_the_strongest_is() {
        let columns = vec![
            column("spend", FeatureGroup::Spend, None),
            column("interest:watches", FeatureGroup::Interests, Some("watches")),
            column("interest:jewelry", FeatureGroup::Interests, Some("jewelry")),
            column("colour:gold", FeatureGroup::Colours, Some("gold")),
            column("interest:socks", FeatureGroup::Interests, Some("socks")),
        ];
        let traits = [(1, 2.0), (0, 1.5), (2, 1.2), (3, 0.9), (4, -0.8)];
        let words = phrases(&columns, &traits);
        assert_eq!(words, ["watches and jewelry", "high spend", "likes gold"]);
        assert_eq!(name_of(&words), "Watches and jewelry, high spend");
        assert_eq!(name_of(&[]), "Typical customers");
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let ages: Vec<i32> = (1..=100).collect();
        assert_eq!((percentile(&ages, 0.05), percentile(&ages, 0.95)), (5, 95));
        assert_eq!(percentile(&[42], 0.05), 42);
    }
}
