//! What a question that ranks groups asks for, read from its words before the call is run: "which country has the
//! most customers?" ranks countries by a measure, highest first, and wants one; "the 3 worst-selling colours" wants
//! three, lowest first. The 1.5B model often answers such a question with a filter on every group instead of a
//! breakdown, so the program, not the model, decides that the call groups, orders and limits. Whether a question
//! names a dimension at all is read here too ([`names`]): "in the last 90 days" asks for no breakdown by day.

use super::catalogue::Dimension;
use super::query::Direction;

/// A ranking of the groups of one dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ranking {
    pub dimension: Dimension,
    pub order: Direction,
    /// How many groups: one for "which country", N for "top N countries", all for "which countries".
    pub limit: Option<usize>,
}

/// Words that rank highest first.
const HIGHEST: [&str; 9] = ["most", "highest", "biggest", "largest", "greatest", "top", "best", "more", "leading"];
/// Words that rank lowest first.
const LOWEST: [&str; 7] = ["least", "lowest", "fewest", "smallest", "worst", "bottom", "less"];
/// Words before a period noun that make it a window or a date, not what is ranked ("in the last month").
const PERIOD_WORDS: [&str; 8] = ["last", "past", "this", "previous", "next", "same", "that", "every"];
/// Words before a noun that pick one group ("which country", "the segment with ...").
const ONE_OF: [&str; 6] = ["which", "what", "the", "whose", "one", "single"];

/// The ranking `words` (a question's lower-case tokens, in order) ask for, if they ask for one: a word of
/// [`HIGHEST`] or [`LOWEST`], and a dimension's noun as what is ranked (the first such noun that is not part of a
/// window, "in the last month").
pub fn of(words: &[String]) -> Option<Ranking> {
    // "more than 500" compares with a number; it ranks nothing.
    let said = |list: &[&str]| {
        (0..words.len()).find(|&at| list.contains(&words[at].as_str()) && words.get(at + 1).is_none_or(|w| w != "than"))
    };
    let order = match (said(&HIGHEST), said(&LOWEST)) {
        (Some(high), Some(low)) if low < high => Direction::Asc,
        (Some(_), _) => Direction::Desc,
        (None, Some(_)) => Direction::Asc,
        (None, None) => return None,
    };
    let (at, dimension, plural) = words.iter().enumerate().find_map(|(at, word)| {
        let windowed = windowed(words, at);
        Dimension::ALL.into_iter().find_map(|dimension| {
            let (one, several) = dimension.nouns();
            let plural = several.contains(&word.as_str());
            let named = one.contains(&word.as_str()) || plural;
            (named && !(dimension.is_time() && windowed)).then_some((at, dimension, plural))
        })
    })?;
    // "top 5 products", "the 3 best-selling colours", "bottom 2 countries": a number just before the noun or the
    // ranking word.
    let number = words[..at].iter().rev().take(4).find_map(|word| word.parse::<usize>().ok()).filter(|n| *n > 0);
    let one = !plural && at.checked_sub(1).and_then(|i| words.get(i)).is_some_and(|b| ONE_OF.contains(&b.as_str()));
    let limit = number.or(one.then_some(1));
    Some(Ranking { dimension, order, limit })
}

/// Whether the word at `at` is the unit of a window or a date ("last month", "the past 3 months", "90 days"), not
/// a period a call groups by ("by month", "top 3 months", "daily").
fn windowed(words: &[String], at: usize) -> bool {
    let before = &words[at.saturating_sub(2)..at];
    before.iter().any(|b| PERIOD_WORDS.contains(&b.as_str()))
        || before.last().is_some_and(|b| b.chars().all(|c| c.is_ascii_digit()) && !before.iter().any(|w| w == "top"))
}

/// Whether `words` name `dimension` as something to group by: one of its words ([`Dimension::words`]), and for a
/// period, not as the unit of a window ("in the last 90 days" asks for no breakdown by day).
pub fn names(words: &[String], dimension: Dimension) -> bool {
    words
        .iter()
        .enumerate()
        .any(|(at, word)| dimension.words().contains(&word.as_str()) && !(dimension.is_time() && windowed(words, at)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranking(question: &str) -> Option<Ranking> {
        let words: Vec<String> = question
            .to_lowercase()
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_owned)
            .collect();
        of(&words)
    }

    #[test]
    fn a_question_for_one_group_ranks_it_and_wants_one() {
        let country = ranking("Which country has the most customers?");
        assert_eq!(country, Some(Ranking { dimension: Dimension::Country, order: Direction::Desc, limit: Some(1) }));
        let month = ranking("what was the month with the lowest net revenue in 2026?");
        assert_eq!(month, Some(Ranking { dimension: Dimension::Month, order: Direction::Asc, limit: Some(1) }));
    }

    #[test]
    fn top_n_wants_n_and_a_plural_wants_all() {
        let top = ranking("top 5 products by revenue in Germany");
        assert_eq!(top, Some(Ranking { dimension: Dimension::Product, order: Direction::Desc, limit: Some(5) }));
        let colours = ranking("Which colours sell the least?");
        assert_eq!(colours, Some(Ranking { dimension: Dimension::Color, order: Direction::Asc, limit: None }));
    }

    #[test]
    fn a_window_is_not_what_is_ranked() {
        let product = ranking("in the last month, which product brought in the most revenue?");
        assert_eq!(product.map(|r| r.dimension), Some(Dimension::Product));
        assert_eq!(ranking("revenue of the last 3 months, highest first").map(|r| r.dimension), None);
        let months = ranking("top 3 months by orders");
        assert_eq!(months, Some(Ranking { dimension: Dimension::Month, order: Direction::Desc, limit: Some(3) }));
    }

    #[test]
    fn the_unit_of_a_window_names_no_breakdown() {
        let words = |q: &str| -> Vec<String> { q.split(' ').map(str::to_owned).collect() };
        assert!(!names(&words("average order value in the last 90 days"), Dimension::Day));
        assert!(names(&words("average order value by day"), Dimension::Day));
        assert!(names(&words("daily revenue of the last 30 days"), Dimension::Day));
        assert!(!names(&words("revenue in the last month"), Dimension::Month));
    }

    #[test]
    fn no_ranking_word_or_no_group_is_no_ranking() {
        assert_eq!(ranking("revenue by country"), None);
        assert_eq!(ranking("who are our most valuable customers?"), None);
        assert_eq!(ranking("how many customers spent more than 500, by country?"), None);
    }
}
