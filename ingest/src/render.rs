//! Profile text: the sentence each customer's vector is embedded from, rendered from `prompts/profile.txt`.
//!
//! The template holds the fixed wording with `{placeholder}`s; sentences that depend on the data (no purchases
//! yet, returns, the luxury remark) are built here, so the template stays a plain, readable paragraph.
//!
//! The text carries what an intent can match (place, age, tastes, behaviour, value), not identity: names,
//! e-mail addresses and the RFM digits cost about 18 of a profile's 73 word pieces and mean nothing to the
//! model, so they stay in the payload and the database and out of the template (`audience bench ingest`
//! measured 25% less embedding work). They remain placeholders the template may use.

use sha2::{Digest, Sha256};

/// The template, compiled in so the binary needs no prompt files at run time.
const TEMPLATE: &str = include_str!("../../prompts/profile.txt");

/// The profile facts the text is rendered from, as computed by [`crate::profiles`].
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct ProfileFacts {
    pub customer_id: i64,
    pub first_name: String,
    pub last_name: String,
    pub email: String,
    pub country: String,
    pub age: Option<i32>,
    pub favorite_color: Option<String>,
    pub total_spent: f64,
    pub order_count: i32,
    pub return_count: i32,
    pub recency_days: Option<i32>,
    pub r_score: i16,
    pub f_score: i16,
    pub m_score: i16,
    pub segment: String,
    pub interests: Vec<String>,
    pub preferred_colors: Vec<String>,
    pub likes_luxury: bool,
}

/// Renders the profile text, e.g. `Customer from PL, age 34, favorite color black. Total spent: 1520. 6 orders, the
/// last one 12 days ago. Primary interests: watches, jewelry, bags. …`
pub fn render(facts: &ProfileFacts) -> String {
    let age = match facts.age {
        Some(age) => format!("age {age}"),
        None => "age unknown".to_owned(),
    };
    let favorite_color = match facts.favorite_color.as_deref().filter(|c| !c.is_empty()) {
        Some(color) => format!("favorite color {color}"),
        None => "no favorite color given".to_owned(),
    };
    // Whole units: cents are noise to the model and cost word pieces.
    let total_spent = format!("{:.0}", facts.total_spent);
    let rfm = format!("{}{}{}", facts.r_score, facts.f_score, facts.m_score);
    let values: [(&str, &str); 13] = [
        ("first_name", &facts.first_name),
        ("last_name", &facts.last_name),
        ("email", &facts.email),
        ("country", &facts.country),
        ("age", &age),
        ("favorite_color", &favorite_color),
        ("total_spent", &total_spent),
        ("purchases", &purchases_sentence(facts)),
        ("interests", &list_or_none(&facts.interests)),
        ("preferred_colors", &list_or_none(&facts.preferred_colors)),
        ("segment", &facts.segment),
        ("rfm", &rfm),
        ("luxury", if facts.likes_luxury { " This customer likes luxury items." } else { "" }),
    ];
    substitute(TEMPLATE.trim_end(), &values)
}

/// Hex SHA-256 of a profile text: what the vector index stores to tell whether a profile must be re-embedded.
pub fn text_hash(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn purchases_sentence(facts: &ProfileFacts) -> String {
    let mut sentence = match (facts.order_count, facts.recency_days) {
        (0, _) | (_, None) => "No purchases yet.".to_owned(),
        (1, Some(days)) => format!("1 order, {}.", days_ago(days)),
        (orders, Some(days)) => format!("{orders} orders, the last one {}.", days_ago(days)),
    };
    match facts.return_count {
        0 => {}
        1 => sentence.push_str(" 1 return."),
        returns => sentence.push_str(&format!(" {returns} returns.")),
    }
    sentence
}

fn days_ago(days: i32) -> String {
    match days {
        0 => "today".to_owned(),
        1 => "1 day ago".to_owned(),
        days => format!("{days} days ago"),
    }
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() { "none yet".to_owned() } else { items.join(", ").replace('_', " ") }
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
            first_name: "Anna".into(),
            last_name: "Nowak".into(),
            email: "anna.nowak1@example.com".into(),
            country: "PL".into(),
            age: Some(34),
            favorite_color: Some("black".into()),
            total_spent: 1520.0,
            order_count: 6,
            return_count: 1,
            recency_days: Some(12),
            r_score: 5,
            f_score: 4,
            m_score: 5,
            segment: "VIP Loyalty".into(),
            interests: vec!["watches".into(), "jewelry".into(), "running_gear".into()],
            preferred_colors: vec!["black".into(), "gold".into()],
            likes_luxury: true,
        }
    }

    #[test]
    fn renders_tastes_and_behaviour_without_identity() {
        assert_eq!(
            render(&facts()),
            "Customer from PL, age 34, favorite color black. \
             Total spent: 1520. 6 orders, the last one 12 days ago. 1 return. \
             Primary interests: watches, jewelry, running gear. Preferred colors: black, gold. \
             Segment: VIP Loyalty. This customer likes luxury items."
        );
    }

    #[test]
    fn renders_a_customer_without_purchases() {
        let mut f = facts();
        f.age = None;
        f.favorite_color = None;
        f.total_spent = 0.0;
        f.order_count = 0;
        f.return_count = 0;
        f.recency_days = None;
        f.interests.clear();
        f.preferred_colors.clear();
        f.likes_luxury = false;
        f.segment = "{country}".into();
        let text = render(&f);
        assert_eq!(
            text,
            "Customer from PL, age unknown, no favorite color given. \
             Total spent: 0. No purchases yet. Primary interests: none yet. Preferred colors: none yet. \
             Segment: {country}."
        );
    }

    #[test]
    fn hash_is_sha256_hex() {
        assert_eq!(text_hash("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
