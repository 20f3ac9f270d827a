//! Triage: the questions the program answers itself, before any model call.
//!
//! - A request to change stored data ("delete every customer from Germany", "mark them all as VIP", an `UPDATE`
//!   statement) gets a refusal: the product only reads, and the database login its queries run as cannot write.
//! - A request that names no criterion at all ("find good customers", "who should I target?") or points at something
//!   the conversation never named ("the big spenders from that country", "the people who bought it") gets one
//!   clarifying question, with options taken from the data.
//!
//! Both are decisions about the question's words, made the same way every time. Left to the 1.5B model, a refusal
//! came back as a refusal 8 times in 17 and an ambiguous request got a question 2 times in 7 (golden set,
//! BENCHMARKS.md 2026-12-07). A question that refines the conversation's audience is never clarified here: its
//! words refer to that audience.

use crate::audience::definition::ProfileField;
use crate::clarify::Clarification;
use crate::grounding::{Grounding, event_type_of, field_words, names_a_measure};
use crate::vocabulary::DataValues;

/// What the program does with a question before the model sees it.
#[derive(Clone, Debug, PartialEq)]
pub enum Triage {
    /// The question asks to change stored data; the text says what it asked for ("delete customers").
    ChangesData(String),
    /// Nothing in the question says who belongs to the audience, or it refers to something not yet named.
    Unclear(Clarification),
    /// The question asks what kinds of customers there are, or which segment suits the products it names (none:
    /// the segments alone). The program answers it from k-means segments of the profiles, without the model.
    Segments(Vec<String>),
    /// The model's turn.
    Model,
}

/// What triage knows besides the question.
pub struct Context<'a> {
    pub values: &'a DataValues,
    /// Whether the conversation has an audience the question may refine.
    pub has_current: bool,
    /// Saved audiences' names, most recent first (what "the ones we discussed" may mean).
    pub saved: &'a [String],
    /// A total spend that about a tenth of the buyers exceed, rounded, for a "biggest spenders" option.
    pub high_spend: Option<f64>,
}

/// Decides what happens to `grounding`'s question.
pub fn triage(grounding: &Grounding, context: &Context<'_>) -> Triage {
    let words = grounding.sequence();
    if let Some(request) = changes_data(words, context.has_current) {
        return Triage::ChangesData(request);
    }
    if asks_for_segments(words, grounding) {
        return Triage::Segments(grounding.found.products.clone());
    }
    if context.has_current {
        return Triage::Model;
    }
    if let Some(question) = unresolved_reference(words, grounding, context) {
        return Triage::Unclear(question);
    }
    let asks_for_customers = words.iter().any(|w| ASKS_FOR_CUSTOMERS.contains(&w.as_str()));
    if asks_for_customers && names_no_criterion(words, grounding) {
        let evaluative = words.iter().any(|w| EVALUATIVE.contains(&w.as_str()));
        return Triage::Unclear(criteria_question(evaluative, context));
    }
    Triage::Model
}

/// Words for kinds of customers ("what kinds of customers", "types of shoppers").
const KINDS: &[&str] = &["kinds", "kind", "types", "type", "sorts", "groups", "personas", "clusters", "segments"];
/// Words for customers.
const CUSTOMER_WORDS: &[&str] = &["customers", "customer", "shoppers", "buyers", "clients", "users"];
/// The segmenting words themselves.
const SEGMENT_WORDS: &[&str] = &["segment", "segments", "cluster", "clusters", "persona", "personas"];

/// Whether the question asks what kinds of customers there are ("what kinds of customers do we have?", "show our
/// customer segments", "segment our customers") or which segment suits something ("which segment should get the new
/// running shoes?"). A question that names a stored segment value ("customers in the VIP Loyalty segment") or asks
/// for customers by a condition is an audience, not this.
fn asks_for_segments(words: &[String], grounding: &Grounding) -> bool {
    // A stored segment is an audience; a measure per segment ("which segment spends the most?") is a number.
    if !grounding.found.segments.is_empty() || names_a_measure(words) {
        return false;
    }
    let is = |index: usize, set: &[&str]| words.get(index).is_some_and(|w| set.contains(&w.as_str()));
    (0..words.len()).any(|i| {
        // "kinds of customers", "types of our shoppers"
        (is(i, KINDS) && is(i + 1, &["of"]) && (is(i + 2, CUSTOMER_WORDS) || (is(i + 2, &["our", "my", "the"]) && is(i + 3, CUSTOMER_WORDS))))
            // "which segment", "what clusters"
            || (is(i, &["which", "what"]) && is(i + 1, SEGMENT_WORDS))
            // "customer segments", "customer personas"
            || (is(i, CUSTOMER_WORDS) && is(i + 1, SEGMENT_WORDS))
            // "segment our customers", "cluster the shoppers"
            || (is(i, &["segment", "cluster"]) && is(i + 1, &["our", "my", "the", "all"]) && is(i + 2, CUSTOMER_WORDS))
    })
}

/// Verbs that change stored data whatever their object.
const ALWAYS_WRITES: &[&str] =
    &["delete", "deleting", "truncate", "insert", "overwrite", "erase", "wipe", "purge", "alter", "rename", "restore"];
/// Verbs that change a stored value ("change the email of customer 42", "set total_spent to 0").
const MUTATES: &[&str] =
    &["change", "update", "edit", "set", "reset", "modify", "fix", "correct", "replace", "merge", "deduplicate"];
/// Verbs that take stored rows away ("drop the events table", "remove the returns"), not "drop the churned ones".
const REMOVES: &[&str] = &["remove", "drop", "clear", "clean"];
/// Verbs that add stored rows ("add a new customer", "create a table").
const ADDS: &[&str] = &["add", "create", "import", "load", "register"];
/// Verbs that label stored customers ("mark them all as VIP", "tag these as churned").
const LABELS: &[&str] = &["mark", "tag", "label", "flag", "classify", "categorise", "categorize"];
/// Objects that are stored tables or rows.
const TABLES: &[&str] =
    &["table", "tables", "database", "db", "row", "rows", "record", "records", "column", "columns", "schema"];
/// What the tables hold, which a refinement may also name ("remove the ones with returns").
const CONTENTS: &[&str] = &["data", "events", "returns", "profiles", "purchases", "orders"];
/// A customer's stored particulars, which no audience condition names.
const PARTICULARS: &[&str] =
    &["email", "emails", "mail", "address", "addresses", "phone", "name", "names", "password", "birthday"];
/// Words that make a request an edit of the audience, not of the data ("remove the Germany condition").
const AUDIENCE_EDITS: &[&str] = &[
    "audience",
    "audiences",
    "clause",
    "clauses",
    "condition",
    "conditions",
    "filter",
    "filters",
    "criteria",
    "criterion",
    "ranking",
    "rank",
    "ranked",
    "intent",
    "rule",
    "rules",
    "search",
    "query",
    "selection",
    "instead",
    "only",
    "exclude",
    "excluding",
    "keep",
    "same",
    "export",
    "save",
    "list",
    "window",
    "threshold",
    "minimum",
    "maximum",
    "limit",
];

/// What a request to change stored data asks for, or `None` when the question does not ask to change any.
fn changes_data(words: &[String], has_current: bool) -> Option<String> {
    let at = |i: usize| words.get(i).map_or("", String::as_str);
    let within = |i: usize, reach: usize, set: &[&str]| (i + 1..=i + reach).any(|j| set.contains(&at(j)));
    // A SQL statement, written as one.
    for i in 0..words.len() {
        let statement = match at(i) {
            "update" => within(i, 3, &["set"]),
            "delete" => at(i + 1) == "from",
            "insert" => at(i + 1) == "into",
            "drop" | "create" | "alter" | "truncate" => within(i, 2, &["table", "schema", "database", "view", "index"]),
            "grant" | "revoke" => true,
            _ => false,
        };
        if statement {
            return Some(format!("a SQL `{}` statement", at(i).to_uppercase()));
        }
    }
    // "Tag everyone in this audience with a discount code": a label on stored customers, audience or not.
    if let Some(i) = words.iter().position(|w| LABELS.contains(&w.as_str()))
        && within(i, 8, &["as", "with"])
    {
        return Some(format!("\"{} customers\"", at(i)));
    }
    if words.iter().any(|w| AUDIENCE_EDITS.contains(&w.as_str())) {
        return None;
    }
    let customers = |w: &str| matches!(w, "customer" | "customers" | "people" | "users" | "clients" | "everyone");
    let profile_field = |w: &str| ProfileField::ALL.iter().any(|field| field.column().split('_').any(|part| part == w));
    for (i, word) in words.iter().enumerate() {
        let word = word.as_str();
        let object = &words[i + 1..words.len().min(i + 8)];
        let has = |set: &[&str]| object.iter().any(|w| set.contains(&w.as_str()));
        // "customer 42", "a new customer": one stored record.
        let one_record = object.windows(2).any(|pair| {
            (customers(&pair[0]) && pair[1].chars().all(|c| c.is_ascii_digit()))
                || (pair[0] == "new" && customers(&pair[1]))
        });
        let writes = ALWAYS_WRITES.contains(&word)
            || (MUTATES.contains(&word)
                && (has(PARTICULARS)
                    || has(TABLES)
                    || one_record
                    // "Set total_spent to 0 for churned customers"; with an audience, "set the country to FR" edits it.
                    || (!has_current
                        && (has(CONTENTS) || (object.iter().any(|w| profile_field(w)) && has(&["to"]))))))
            || (REMOVES.contains(&word)
                && (has(TABLES)
                    || one_record
                    || (!has_current && (has(CONTENTS) || object.iter().any(|w| customers(w))))))
            || (ADDS.contains(&word) && (has(TABLES) || one_record));
        if writes {
            let target = object.iter().take(3).map(String::as_str).collect::<Vec<_>>().join(" ");
            return Some(format!("\"{word} {target}\"").replace(" \"", "\""));
        }
    }
    None
}

/// A question's words without those that carry no criterion ([`FILLER`]), as a taste to rank by: "Find the bargain
/// hunters: people who go for cheap socks and basic t-shirts" is "bargain hunters go cheap socks and basic t
/// shirts". `None` when nothing is left.
pub fn taste_of(words: &[String]) -> Option<String> {
    let kept: Vec<&str> = words
        .iter()
        .map(|word| word.trim_matches(|c: char| !c.is_alphanumeric()))
        .filter(|word| !word.is_empty() && !FILLER.contains(word))
        .collect();
    (!kept.is_empty()).then(|| kept.join(" "))
}

/// Words that carry no criterion: requests, pronouns, the product's own nouns.
const FILLER: &[&str] = &[
    "a",
    "an",
    "the",
    "me",
    "my",
    "our",
    "us",
    "we",
    "i",
    "you",
    "your",
    "all",
    "some",
    "any",
    "of",
    "for",
    "to",
    "in",
    "on",
    "at",
    "with",
    "from",
    "by",
    "please",
    "can",
    "could",
    "would",
    "should",
    "will",
    "shall",
    "do",
    "does",
    "is",
    "are",
    "be",
    "want",
    "need",
    "find",
    "show",
    "get",
    "give",
    "list",
    "pull",
    "build",
    "make",
    "create",
    "fetch",
    "identify",
    "select",
    "pick",
    "choose",
    "target",
    "targeting",
    "reach",
    "who",
    "whom",
    "which",
    "what",
    "whose",
    "customers",
    "customer",
    "people",
    "users",
    "user",
    "clients",
    "client",
    "shoppers",
    "shopper",
    "folks",
    "persons",
    "audience",
    "audiences",
    "group",
    "campaign",
    "campaigns",
    "ones",
    "one",
    "them",
    "those",
    "these",
    "this",
    "that",
    "it",
    "there",
    "here",
    "now",
    "more",
    "most",
    "really",
    "very",
    "just",
    "also",
    "too",
    "and",
    "or",
    "so",
    "then",
    "okay",
    "ok",
    "hey",
    "hi",
    "go",
    "let",
    "let's",
    "lets",
    "help",
    "i'm",
    "i'd",
    "looking",
    "start",
    "next",
    "upcoming",
    "store",
    "shop",
    "how",
    "about",
    "should",
    "send",
    "email",
    "mail",
    "newsletter",
    "offer",
    "promotion",
    "promo",
    "ad",
    "ads",
    "marketing",
    "run",
    "i'll",
    "we're",
    "im",
    "id",
    "got",
];
/// Words that ask for customers (small talk such as "what can you do?" has none, and goes to the model).
const ASKS_FOR_CUSTOMERS: &[&str] = &[
    "find",
    "show",
    "get",
    "give",
    "list",
    "pull",
    "build",
    "make",
    "fetch",
    "identify",
    "select",
    "pick",
    "choose",
    "target",
    "targeting",
    "reach",
    "who",
    "whom",
    "customers",
    "customer",
    "people",
    "users",
    "clients",
    "shoppers",
    "folks",
    "audience",
    "audiences",
    "group",
    "ones",
];
/// Words that praise without saying by what measure.
const EVALUATIVE: &[&str] = &[
    "good",
    "best",
    "better",
    "great",
    "top",
    "ideal",
    "right",
    "perfect",
    "nice",
    "strong",
    "key",
    "important",
    "relevant",
    "interesting",
    "promising",
    "suitable",
    "cool",
    "awesome",
    "valuable",
];

/// Whether the question names nothing an audience could be built on: no value of the data, no event, window,
/// period or number, no profile field, and no other word that could be a taste ("sporty", "outdoorsy").
fn names_no_criterion(words: &[String], grounding: &Grounding) -> bool {
    let found = &grounding.found;
    let grounded = !found.products.is_empty()
        || !found.colors.is_empty()
        || !found.countries.is_empty()
        || !found.segments.is_empty()
        || !grounding.event_types.is_empty()
        || !grounding.days.is_empty()
        || !grounding.periods.is_empty()
        || !grounding.numbers.is_empty()
        || !grounding.unmatched.is_empty();
    if grounded {
        return false;
    }
    // Field words that also fill sentences ("over", "total", "last") name no field alone.
    let field_word = |w: &str| {
        ProfileField::ALL.iter().any(|field| field_words(*field).contains(&w))
            && !matches!(
                w,
                "over" | "under" | "between" | "total" | "last" | "since" | "high" | "big" | "value" | "back"
            )
    };
    !words.is_empty()
        && words.iter().all(|w| {
            let w = w.as_str();
            !field_word(w) && (FILLER.contains(&w) || EVALUATIVE.contains(&w) || REFERENCES.contains(&w))
        })
}

/// Words that point back at something said before.
const REFERENCES: &[&str] = &[
    "discussed",
    "mentioned",
    "talked",
    "earlier",
    "previously",
    "previous",
    "before",
    "last",
    "time",
    "same",
    "like",
    "similar",
    "again",
];
/// Words of time and count, which say when but not what ("bought it recently").
const TIMES: &[&str] = &[
    "recently",
    "lately",
    "recent",
    "last",
    "past",
    "this",
    "week",
    "weeks",
    "month",
    "months",
    "day",
    "days",
    "year",
    "years",
    "today",
    "yesterday",
    "ago",
    "twice",
    "once",
    "again",
    "times",
    "within",
    "during",
    "since",
    "not",
    "never",
    "didn't",
    "but",
    "have",
    "has",
    "had",
    "did",
];
/// Nouns that a demonstrative ("that country") makes a reference to something named before.
const REFERENT_NOUNS: &[&str] = &[
    "country",
    "countries",
    "product",
    "products",
    "item",
    "items",
    "segment",
    "colour",
    "color",
    "group",
    "audience",
    "list",
    "campaign",
    "brand",
    "category",
    "city",
    "region",
    "ones",
    "people",
    "customers",
    "guys",
];

/// A clarifying question for a reference to something the conversation has not named: "that country" with no
/// country in it, "bought it" with no product, "like the ones we discussed" with no audience.
fn unresolved_reference(words: &[String], grounding: &Grounding, context: &Context<'_>) -> Option<Clarification> {
    let at = |i: usize| words.get(i).map_or("", String::as_str);
    let found = &grounding.found;
    for i in 0..words.len() {
        let noun = at(i + 1);
        let demonstrative = matches!(at(i), "that" | "this" | "those" | "these")
            && REFERENT_NOUNS.contains(&noun)
            // "those customers who bought shoes" describes them; "that country" points back.
            && !matches!(at(i + 2), "who" | "which" | "that" | "with" | "where" | "whose" | "from" | "in" | "of");
        if !demonstrative {
            continue;
        }
        match noun {
            "country" | "countries" | "city" | "region" if found.countries.is_empty() => {
                return Some(choose("Which country do you mean?", &context.values.countries, "customers from"));
            }
            "product" | "products" | "item" | "items" | "brand" | "category" if found.products.is_empty() => {
                return Some(choose("Which product do you mean?", &context.values.products, "customers who bought"));
            }
            "segment" | "group" if found.segments.is_empty() => {
                return Some(choose(
                    "Which segment do you mean?",
                    &context.values.segments,
                    "customers in the segment",
                ));
            }
            "colour" | "color" if found.colors.is_empty() => {
                return Some(choose("Which colour do you mean?", &context.values.colors, "customers who like"));
            }
            "audience" | "list" | "campaign" | "ones" | "people" | "customers" | "guys" => {
                return Some(no_audience_yet(context));
            }
            _ => {}
        }
    }
    // "Bought it", "viewed them": a product named by a pronoun only.
    let pronoun_object = (1..words.len()).any(|i| {
        matches!(at(i), "it" | "them" | "that" | "those" | "these" | "one")
            && event_type_of(at(i - 1)).is_some()
            && !matches!(at(i + 1), "who" | "which")
    });
    // Only when nothing else in the question could be the product ("looked at perfume but never purchased it").
    let only_the_event = words.iter().all(|w| {
        let w = w.as_str();
        FILLER.contains(&w) || TIMES.contains(&w) || event_type_of(w).is_some() || w.chars().all(|c| c.is_ascii_digit())
    });
    if pronoun_object && found.products.is_empty() && only_the_event {
        return Some(choose("Which product do you mean?", &context.values.products, "customers who bought"));
    }
    // "Like the ones we discussed", "the same audience as before".
    let looks_back =
        words.iter().any(|w| matches!(w.as_str(), "discussed" | "mentioned" | "talked" | "earlier" | "previously"))
            || words.windows(2).any(|pair| {
                matches!(
                    (pair[0].as_str(), pair[1].as_str()),
                    ("like" | "similar", "them" | "those" | "these") | ("last", "time") | ("the", "ones")
                )
            });
    (looks_back && names_no_criterion(words, grounding)).then(|| no_audience_yet(context))
}

/// "Which X do you mean?", with the data's most common values as options.
fn choose(question: &str, values: &[String], lead: &str) -> Clarification {
    let mut options: Vec<String> = values.iter().take(4).map(|value| format!("{lead} {value}")).collect();
    if options.len() < 2 {
        options.push("all customers".to_owned());
    }
    Clarification { question: question.to_owned(), options }
}

/// The question for a reference to an audience when the conversation has none.
fn no_audience_yet(context: &Context<'_>) -> Clarification {
    let mut options: Vec<String> =
        context.saved.iter().take(3).map(|name| format!("customers like the saved audience \"{name}\"")).collect();
    options.extend(example_criteria(context).into_iter().take(4 - options.len().min(3)));
    Clarification {
        question: "There is no audience in this conversation yet. Which customers do you mean?".to_owned(),
        options,
    }
}

/// The question for a request that names no criterion.
fn criteria_question(evaluative: bool, context: &Context<'_>) -> Clarification {
    let question = if evaluative {
        "Best by which measure? Pick one, or describe the customers you mean."
    } else {
        "Which customers should the audience hold? Pick one, or describe them."
    };
    Clarification { question: question.to_owned(), options: example_criteria(context) }
}

/// Criteria the data can answer, as options: high spend, frequent buying, recent buying, a segment, a product.
fn example_criteria(context: &Context<'_>) -> Vec<String> {
    let mut options = Vec::new();
    if let Some(spend) = context.high_spend {
        options.push(format!("customers who spent over {spend} in total"));
    }
    options.push("customers who bought at least 3 times".to_owned());
    options.push("customers who bought in the last 30 days".to_owned());
    if let Some(segment) = context.values.segments.first() {
        options.push(format!("customers in the segment {segment}"));
    }
    if let Some(product) = context.values.products.first() {
        options.push(format!("customers who bought {product}"));
    }
    options.truncate(5);
    options
}

#[cfg(test)]
mod tests {
    use chrono::NaiveDate;

    use super::*;
    use crate::examples::library;

    fn values() -> DataValues {
        DataValues {
            products: [
                "socks",
                "t_shirts",
                "shoes",
                "watches",
                "jewelry",
                "running_gear",
                "yoga_wear",
                "bags",
                "scarves",
            ]
            .map(String::from)
            .to_vec(),
            colors: ["black", "gold", "navy", "red"].map(String::from).to_vec(),
            countries: ["PL", "GB", "US", "DE", "FR", "ES"].map(String::from).to_vec(),
            segments: ["VIP Loyalty", "Churn Recovery", "Standard Promo"].map(String::from).to_vec(),
        }
    }

    fn of(question: &str, has_current: bool) -> Triage {
        let values = values();
        let as_of = NaiveDate::from_ymd_opt(2026, 6, 29).unwrap();
        let grounding = Grounding::of(question, &values, as_of);
        triage(&grounding, &Context { values: &values, has_current, saved: &[], high_spend: Some(1500.0) })
    }

    #[test]
    fn requests_to_change_data_are_refused_before_the_model() {
        for question in [
            "Please delete all customers older than 80",
            "update the phone number of customer 7 to 555-0100",
            "Wipe the events from last year",
            "drop the profiles table",
            "set the age of every customer to 30",
            "add a new customer called Sam from Spain",
            "Mark these customers as churned",
            "DELETE FROM events WHERE product = 'socks'",
            "remove all customers from Poland",
            "tag the whole audience with a spring coupon",
            "create a table of our best buyers",
        ] {
            assert!(matches!(of(question, false), Triage::ChangesData(_)), "{question}: {:?}", of(question, false));
        }
    }

    #[test]
    fn questions_about_kinds_of_customers_are_answered_by_segments() {
        for question in [
            "What kinds of customers do we have?",
            "what types of shoppers are there",
            "Show me our customer segments",
            "segment our customers",
            "what groups of our customers exist?",
        ] {
            assert_eq!(of(question, false), Triage::Segments(Vec::new()), "{question}");
        }
        assert_eq!(
            of("Which segment should get the new yoga wear?", true),
            Triage::Segments(vec!["yoga_wear".to_owned()]),
        );
        assert_eq!(of("which cluster would like watches", false), Triage::Segments(vec!["watches".to_owned()]));
        // A stored segment value, a condition, or a profile field named "segment" is an audience.
        for question in [
            "customers in the VIP Loyalty segment",
            "customers whose segment is Churn Recovery who bought socks",
            "which customers bought watches",
            "what kinds of socks sell best",
            "how many customers per segment",
            "which segment spends the most per order?",
            "what segment has the highest churn rate?",
        ] {
            assert!(!matches!(of(question, false), Triage::Segments(_)), "{question}: {:?}", of(question, false));
        }
    }

    #[test]
    fn audience_edits_are_not_taken_for_writes() {
        for question in [
            "remove the Poland condition",
            "drop the churned ones",
            "remove customers from Germany",
            "change the country to France",
            "add customers who bought scarves too",
            "set the window to 30 days",
            "add the ones with returns",
        ] {
            assert_eq!(of(question, true), Triage::Model, "{question}");
        }
        for question in [
            "customers who changed their address recently",
            "give me the names of customers who bought socks",
            "customers who add items to their cart but never buy",
            "who updated their profile and bought shoes",
        ] {
            assert!(!matches!(of(question, false), Triage::ChangesData(_)), "{question}: {:?}", of(question, false));
        }
    }

    #[test]
    fn requests_without_any_criterion_get_a_question_with_options_from_the_data() {
        let Triage::Unclear(question) = of("Find me the top people", false) else { panic!("not unclear") };
        assert!(question.question.starts_with("Best by which measure"), "{question:?}");
        assert!(question.options.iter().any(|o| o == "customers who spent over 1500 in total"), "{question:?}");
        assert!(question.options.iter().any(|o| o == "customers in the segment VIP Loyalty"), "{question:?}");
        assert!(matches!(of("we need an audience for the newsletter", false), Triage::Unclear(_)));
        // Small talk is the model's.
        assert_eq!(of("hi, what can you do?", false), Triage::Model);
        // A refinement's words refer to its audience.
        assert_eq!(of("show me the best ones", true), Triage::Model);
    }

    #[test]
    fn references_to_nothing_named_yet_ask_which() {
        let Triage::Unclear(question) = of("loyal buyers from this country", false) else { panic!("not unclear") };
        assert_eq!(question.question, "Which country do you mean?");
        assert_eq!(question.options[0], "customers from PL");
        let Triage::Unclear(question) = of("who viewed it twice last week", false) else { panic!("not unclear") };
        assert_eq!(question.question, "Which product do you mean?");
        assert!(matches!(of("more like those please", false), Triage::Unclear(_)));
        // Named after all: no question.
        assert_eq!(of("customers from Spain and those from France", false), Triage::Model);
        assert_eq!(of("people who looked at perfume but never purchased it", false), Triage::Model);
        assert_eq!(of("those customers who bought shoes", false), Triage::Model);
    }

    #[test]
    fn questions_with_a_criterion_or_a_taste_go_to_the_model() {
        for question in [
            "customers with a sporty taste",
            "recent customers",
            "who is worth a discount?",
            "the loyal ones please",
            "customers at risk",
            "big spenders",
            "our 10 newest sign-ups",
            "people into minimalist design",
        ] {
            assert_eq!(of(question, false), Triage::Model, "{question}");
        }
    }

    /// The example library was written before triage, for the model: none of its audience, lookalike or analytics
    /// questions may be answered by triage, and its requests to change data must be refused by it.
    #[test]
    fn triage_agrees_with_the_example_library() {
        let mut wrong = Vec::new();
        for example in library().unwrap() {
            let decided = of(&example.question, example.current.is_some());
            let fine = match example.tool.as_str() {
                "respond" | "ask_clarification" => true,
                _ => decided == Triage::Model,
            };
            if !fine {
                wrong.push(format!("{} -> {decided:?}", example.question));
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
        let writes = library()
            .unwrap()
            .into_iter()
            .filter(|e| e.tool == "respond" && matches!(of(&e.question, e.current.is_some()), Triage::ChangesData(_)))
            .count();
        assert!(writes >= 8, "only {writes} of the library's write requests are refused");
    }

    #[test]
    fn the_taste_of_a_question_is_its_words_without_filler() {
        let words = |q: &str| -> Vec<String> { q.to_lowercase().split(' ').map(str::to_owned).collect() };
        assert_eq!(taste_of(&words("Who would love luxury watches?")).as_deref(), Some("love luxury watches"));
        assert_eq!(taste_of(&words("find the customers")), None);
    }
}
