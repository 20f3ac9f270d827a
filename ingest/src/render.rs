//! Profile text: the sentence each customer's vector is embedded from, rendered from `prompts/profile.txt`.
//!
//! The vector index ranks customers by an intent, which is for tastes ("likes luxury watches", "sporty"); money,
//! recency, country and segment are answered exactly by audience clauses. So the text says what the customer is
//! drawn to and nothing else: the interests with how strongly (from their weights), the colours they choose, their
//! stated favourite colour, and a luxury leaning. Numbers in the text only made an intent match customers with
//! similar numbers (on real data, "frequent buyers" matched customers whose total spent was near 192).
//!
//! The template holds the fixed layout with `{placeholder}`s; the sentences are built here.

use sha2::{Digest, Sha256};

/// The template, compiled in so the binary needs no prompt files at run time.
const TEMPLATE: &str = include_str!("../../prompts/profile.txt");

/// The profile facts the text is rendered from, as computed by [`crate::profiles`].
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct ProfileFacts {
    pub customer_id: i64,
    pub favorite_color: Option<String>,
    /// Top categories, strongest first, and their weights.
    pub interests: Vec<String>,
    pub interest_weights: Vec<i32>,
    pub preferred_colors: Vec<String>,
    pub likes_luxury: bool,
}

/// Renders the profile text, e.g. `Shops mostly for watches, also for jewelry and bags. Chooses gold and black;
/// favourite colour black. Likes luxury items.`
pub fn render(facts: &ProfileFacts) -> String {
    let values: [(&str, &str); 3] = [
        ("interests", &interests_sentence(facts)),
        ("colors", &colors_sentence(facts)),
        ("luxury", if facts.likes_luxury { " Likes luxury items." } else { "" }),
    ];
    substitute(TEMPLATE.trim_end(), &values).trim().to_owned()
}

/// "Shops mostly for watches, also for jewelry and bags." when the top interest outweighs the next one twice over;
/// else "Shops for watches, jewelry and bags."
fn interests_sentence(facts: &ProfileFacts) -> String {
    let names: Vec<String> = facts.interests.iter().map(|i| i.replace('_', " ")).collect();
    let weight = |index: usize| facts.interest_weights.get(index).copied().unwrap_or(0);
    match names.as_slice() {
        [] => "No shopping interests yet.".to_owned(),
        [only] => format!("Shops for {only}."),
        [first, rest @ ..] if weight(0) >= 2 * weight(1) => {
            format!("Shops mostly for {first}, also for {}.", and_list(rest))
        }
        all => format!("Shops for {}.", and_list(all)),
    }
}

fn colors_sentence(facts: &ProfileFacts) -> String {
    let favorite = facts.favorite_color.as_deref().map(str::trim).filter(|c| !c.is_empty());
    match (facts.preferred_colors.as_slice(), favorite) {
        ([], None) => String::new(),
        ([], Some(color)) => format!("Favourite colour {color}."),
        (colors, None) => format!("Chooses {}.", and_list(colors)),
        (colors, Some(color)) => format!("Chooses {}; favourite colour {color}.", and_list(colors)),
    }
}

/// "a", "a and b", "a, b and c".
fn and_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// Hex SHA-256 of a profile text: what the vector index stores to tell whether a profile must be re-embedded.
pub fn text_hash(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Replaces each `{name}` in one left-to-right pass, so braces inside values (a customer's name) stay as they are.
/// A `{` that does not start a known placeholder is copied unchanged.
fn substitute(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len() + 128);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let known = after
            .find('}')
            .and_then(|close| values.iter().find(|(name, _)| *name == &after[..close]).map(|(_, v)| (close, *v)));
        match known {
            Some((close, value)) => {
                out.push_str(value);
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> ProfileFacts {
        ProfileFacts {
            customer_id: 1,
            favorite_color: Some("black".into()),
            interests: vec!["watches".into(), "jewelry".into(), "running_gear".into()],
            interest_weights: vec![12, 5, 2],
            preferred_colors: vec!["black".into(), "gold".into()],
            likes_luxury: true,
        }
    }

    #[test]
    fn renders_tastes_not_numbers() {
        assert_eq!(
            render(&facts()),
            "Shops mostly for watches, also for jewelry and running gear. Chooses black and gold; favourite colour \
             black. Likes luxury items."
        );
        let mut even = facts();
        even.interest_weights = vec![6, 5, 4];
        even.likes_luxury = false;
        even.favorite_color = None;
        assert_eq!(render(&even), "Shops for watches, jewelry and running gear. Chooses black and gold.");
    }

    #[test]
    fn renders_a_customer_without_activity() {
        let mut f = facts();
        f.interests.clear();
        f.interest_weights.clear();
        f.preferred_colors.clear();
        f.likes_luxury = false;
        f.favorite_color = Some("{colors}".into());
        assert_eq!(render(&f), "No shopping interests yet. Favourite colour {colors}.");
    }

    #[test]
    fn hash_is_sha256_hex() {
        assert_eq!(text_hash("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
