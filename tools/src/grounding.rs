//! Grounding: the words of a question matched to the data's values before the model is called, so a small model
//! fills its slots with values that exist. "Britain" and "UK" become `GB`, "tees" and "t-shirts" become `t_shirts`,
//! "sneakers" becomes `shoes` where the data has no sneakers (by MiniLM similarity), and "last 6 months", "since
//! March" or "this year" become a number of days counted back from the data's last day.
//!
//! The result is used three times: as hints in the model's prompt, to narrow the schema's enums for large
//! vocabularies ([`crate::vocabulary::Offered`]), and after the call, to check that every clause traces to the
//! question ([`Grounding::traces`]).

use std::collections::HashSet;

use chrono::{Datelike, NaiveDate};
use serde_json::Value;

use crate::audience::definition::{AudienceDefinition, Clause, EventType, FieldKind, Op, ProfileField, Rule};
use crate::vocabulary::DataValues;

/// One resolved phrase of the question, shown to the model as `"phrase" = meaning`.
#[derive(Clone, Debug, PartialEq)]
pub struct Hint {
    pub phrase: String,
    pub meaning: String,
}

/// What grounding found in one question.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Grounding {
    pub hints: Vec<Hint>,
    /// The data values the question names.
    pub found: DataValues,
    /// Event types the question's verbs name ("bought" is a purchase).
    pub event_types: Vec<EventType>,
    /// Each event type named, with whether it was negated.
    mentions: Vec<(EventType, bool)>,
    /// A negation or exclusion that is not right before an event verb ("socks but not shoes", "except VIPs").
    loose_negation: bool,
    /// Where in the question each grounded value is named (value, token index), for its polarity.
    positions: Vec<(String, usize)>,
    /// The question's tokens, lower-case, in order.
    sequence: Vec<String>,
    /// Windows in days, counted back from the data's last day.
    pub days: Vec<u32>,
    /// The data's last day, which windows count back from.
    as_of: NaiveDate,
    /// Calendar periods the question names ("in May 2026", "in 2025", "in Q2"): first and last day, inclusive.
    pub periods: Vec<(Option<NaiveDate>, Option<NaiveDate>)>,
    /// Every number the question writes (money, counts, ages), words included ("twice" is 2).
    pub numbers: Vec<f64>,
    /// Words that look like a product ("bought kayaks") and match nothing in the data.
    pub unmatched: Vec<String>,
    /// The question's words, lower-case (for tracing a clause's field to the question).
    words: HashSet<String>,
    /// Whether the current audience's values were added ([`Self::inherit`]): a refinement's call need not name
    /// them all again.
    inherited: bool,
}

/// What a question names that no clause of a call uses (see [`Grounding::uncovered`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Uncovered {
    pub countries: Vec<String>,
    pub segments: Vec<String>,
    pub products: Vec<String>,
    pub colors: Vec<String>,
    pub event_types: Vec<EventType>,
}

impl Uncovered {
    pub fn is_empty(&self) -> bool {
        self.words().is_empty()
    }

    /// Each value, as "country PL", "event_type purchase".
    pub fn words(&self) -> Vec<String> {
        let mut words = Vec::new();
        for (what, values) in [
            ("country", &self.countries),
            ("segment", &self.segments),
            ("product", &self.products),
            ("colour", &self.colors),
        ] {
            words.extend(values.iter().map(|value| format!("{what} {value}")));
        }
        words.extend(self.event_types.iter().map(|event_type| format!("event_type {}", event_type.as_str())));
        words
    }
}

/// A word of the question with its normalised form.
#[derive(Clone, Debug)]
struct Token {
    text: String,
    lower: String,
    /// Lower-case, letters and digits only, a plural `s` removed: "T-Shirts" and "t_shirts" meet as "tshirt".
    key: String,
}

fn tokens(question: &str) -> Vec<Token> {
    // A comma between digits is a thousands separator ("1,500"), not a break between words.
    let chars: Vec<char> = question.chars().collect();
    let question: String = chars
        .iter()
        .enumerate()
        .filter(|(i, c)| {
            **c != ','
                || !(i.checked_sub(1).and_then(|p| chars.get(p)).is_some_and(char::is_ascii_digit)
                    && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        })
        // Typographic quotes and dashes as a keyboard writes them ("didn’t", "25–34").
        .map(|(_, c)| match c {
            '\u{2018}' | '\u{2019}' => '\'',
            '\u{201c}' | '\u{201d}' => '"',
            '\u{2013}' | '\u{2014}' => '-',
            other => *other,
        })
        .collect();
    question
        .split(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | '?' | '!' | '(' | ')' | '"' | '/' | ':'))
        .flat_map(|word| {
            // "t-shirts" keeps its parts as separate tokens, so "t shirts" and "t-shirts" both reach "tshirt";
            // "500+" is 500; "U.K." keeps its dots.
            let word = word.trim_start_matches(['.', '\'', '`']).trim_end_matches(['\'', '`', '+']);
            let word = if word.matches('.').count() >= 2 { word } else { word.trim_end_matches('.') };
            word.split(['-', '_']).map(str::to_owned).collect::<Vec<_>>()
        })
        .filter(|word| !word.is_empty())
        .map(|text| {
            let lower = text.to_lowercase();
            Token { key: key_of(&lower), lower, text }
        })
        .collect()
}

/// The comparison key of one word.
fn key_of(word: &str) -> String {
    let plain: String = word.chars().filter(|c| c.is_alphanumeric()).flat_map(char::to_lowercase).collect();
    singular(&plain)
}

fn singular(word: &str) -> String {
    if word.len() > 4 && word.ends_with("ves") {
        // scarves, shelves: scarf, shelf.
        format!("{}f", &word[..word.len() - 3])
    } else if word.len() > 4 && word.ends_with("ies") {
        format!("{}y", &word[..word.len() - 3])
    } else if word.len() > 3
        && word.ends_with("es")
        && (word.ends_with("sses") || word.ends_with("shes") || word.ends_with("ches") || word.ends_with("xes"))
    {
        word[..word.len() - 2].to_owned()
    } else if word.len() > 3 && word.ends_with('s') && !word.ends_with("ss") {
        word[..word.len() - 1].to_owned()
    } else {
        word.to_owned()
    }
}

/// The comparison key of a data value: its words' keys joined ("t_shirts" → "tshirt", "VIP Loyalty" →
/// "viployalty").
fn value_key(value: &str) -> String {
    value.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(key_of).collect()
}

/// Countries by ISO 3166-1 alpha-2 code, with the names, short forms and demonyms questions use.
const COUNTRIES: &[(&str, &[&str])] = &[
    (
        "GB",
        &[
            "uk",
            "u.k.",
            "britain",
            "great britain",
            "british",
            "united kingdom",
            "england",
            "english",
            "scotland",
            "wales",
            "gb",
        ],
    ),
    ("US", &["us", "u.s.", "usa", "america", "american", "americans", "united states", "states"]),
    ("PL", &["poland", "polish", "poles", "pl"]),
    ("DE", &["germany", "german", "germans", "deutschland", "de"]),
    ("FR", &["france", "french", "fr"]),
    ("ES", &["spain", "spanish", "spaniards", "es"]),
    ("IT", &["italy", "italian", "italians"]),
    ("NL", &["netherlands", "holland", "dutch", "nl"]),
    ("BE", &["belgium", "belgian", "belgians"]),
    ("SE", &["sweden", "swedish", "swedes", "se"]),
    ("NO", &["norway", "norwegian", "norwegians"]),
    ("DK", &["denmark", "danish", "danes", "dk"]),
    ("FI", &["finland", "finnish", "finns"]),
    ("IS", &["iceland", "icelandic", "icelanders"]),
    ("IE", &["ireland", "irish"]),
    ("PT", &["portugal", "portuguese", "pt"]),
    ("AT", &["austria", "austrian", "austrians"]),
    ("CH", &["switzerland", "swiss", "ch"]),
    ("CZ", &["czechia", "czech republic", "czech", "cz"]),
    ("SK", &["slovakia", "slovak"]),
    ("HU", &["hungary", "hungarian", "hungarians"]),
    ("RO", &["romania", "romanian", "romanians"]),
    ("BG", &["bulgaria", "bulgarian", "bulgarians"]),
    ("GR", &["greece", "greek", "greeks"]),
    ("HR", &["croatia", "croatian", "croatians"]),
    ("SI", &["slovenia", "slovenian"]),
    ("LT", &["lithuania", "lithuanian"]),
    ("LV", &["latvia", "latvian"]),
    ("EE", &["estonia", "estonian"]),
    ("LU", &["luxembourg", "luxembourgish"]),
    ("UA", &["ukraine", "ukrainian", "ukrainians"]),
    ("TR", &["turkey", "türkiye", "turkish"]),
    ("RU", &["russia", "russian", "russians"]),
    ("CA", &["canada", "canadian", "canadians", "ca"]),
    ("MX", &["mexico", "mexican", "mexicans"]),
    ("BR", &["brazil", "brazilian", "brazilians"]),
    ("AR", &["argentina", "argentinian", "argentine"]),
    ("CL", &["chile", "chilean"]),
    ("CO", &["colombia", "colombian"]),
    ("AU", &["australia", "australian", "australians", "au"]),
    ("NZ", &["new zealand", "kiwi", "nz"]),
    ("JP", &["japan", "japanese", "jp"]),
    ("CN", &["china", "chinese", "cn"]),
    ("KR", &["south korea", "korea", "korean", "koreans"]),
    ("IN", &["india", "indian", "indians"]),
    ("SG", &["singapore", "singaporean"]),
    ("ZA", &["south africa", "south african"]),
    ("EG", &["egypt", "egyptian"]),
    ("NG", &["nigeria", "nigerian"]),
    ("IL", &["israel", "israeli"]),
    ("AE", &["uae", "united arab emirates", "emirates", "emirati"]),
    ("SA", &["saudi arabia", "saudi"]),
];

/// Verbs and nouns that name an event type.
const EVENT_WORDS: &[(EventType, &[&str])] = &[
    (
        EventType::Purchase,
        &[
            "bought",
            "buy",
            "buys",
            "buying",
            "buyer",
            "buyers",
            "purchased",
            "purchase",
            "purchases",
            "purchasing",
            "ordered",
            "purchasers",
            "purchaser",
            "order",
            "orders",
            "paid",
            "shopped",
        ],
    ),
    (
        EventType::View,
        &[
            "viewed", "viewers", "viewer", "visitors", "view", "views", "viewing", "browsed", "browse", "browsing",
            "looked", "visited", "saw", "seen",
        ],
    ),
    (EventType::AddToCart, &["cart", "carted", "basket", "carts", "baskets"]),
];

/// The event type a word names ("bought" a purchase, "basket" a cart), if any.
pub fn event_type_of(word: &str) -> Option<EventType> {
    EVENT_WORDS.iter().find(|(_, words)| words.contains(&word)).map(|(event_type, _)| *event_type)
}

/// Words that negate an event verb within the three words before it.
const NEGATIONS: &[&str] = &[
    "never", "not", "didn't", "didnt", "haven't", "havent", "hasn't", "hasnt", "don't", "dont", "doesn't", "doesnt",
    "without", "no", "nor", "hadn't", "hadnt", "weren't", "wasn't", "nothing", "none", "neither", "aren't", "arent",
    "isn't", "isnt",
];

/// Words that leave something out ("everyone except VIPs"); right before an event verb they negate it like
/// "never" ("excluding anyone who purchased", "non-buyers").
const EXCLUSIONS: &[&str] =
    &["except", "excluding", "exclude", "besides", "minus", "non", "apart", "remove", "drop", "leave", "without"];
/// Words that end the reach of a negation: in "never browse but buy" the purchase is not negated.
const CLAUSE_BREAKS: &[&str] = &["but", "and", "or", "yet", "while"];

/// Words after a purchase or view verb that are not a product ("bought twice", "viewed something").
const NOT_PRODUCTS: &[&str] = &[
    "events",
    "event",
    "activity",
    "activities",
    "actions",
    "interactions",
    "clicks",
    "sessions",
    "visits",
    "a",
    "an",
    "the",
    "some",
    "any",
    "anything",
    "something",
    "nothing",
    "items",
    "item",
    "products",
    "product",
    "stuff",
    "things",
    "thing",
    "more",
    "most",
    "less",
    "at",
    "in",
    "on",
    "from",
    "with",
    "within",
    "during",
    "over",
    "under",
    "above",
    "below",
    "least",
    "twice",
    "once",
    "again",
    "recently",
    "lately",
    "last",
    "past",
    "this",
    "since",
    "before",
    "after",
    "but",
    "and",
    "or",
    "not",
    "never",
    "only",
    "online",
    "us",
    "them",
    "it",
    "one",
    "ones",
    "times",
    "time",
    "every",
    "each",
    "all",
    "both",
    "multiple",
    "several",
    "many",
    "few",
    "expensive",
    "cheap",
    "pricey",
    "luxury",
    "premium",
    "full",
    "price",
    "priced",
    "discount",
    "sale",
    "new",
    "for",
    "to",
    "of",
    "by",
    "than",
    // Auxiliaries and light verbs after a purchase word ("how many purchases does a buyer make").
    "does",
    "do",
    "did",
    "is",
    "are",
    "was",
    "were",
    "has",
    "have",
    "had",
    "will",
    "would",
    "can",
    "could",
    "make",
    "made",
    "per",
    "between",
    "year",
    "years",
    "month",
    "months",
    "week",
    "weeks",
    "day",
    "days",
    "quarter",
    "today",
    "yesterday",
    "frequently",
    "often",
    "regularly",
    "repeatedly",
    "who",
    "that",
    "which",
    "what",
    "they",
    "their",
    "there",
    "here",
    "up",
    "out",
    "into",
    "something",
    "stuff",
    "orders",
    "order",
    "purchase",
    "purchases",
    "our",
    "my",
    "your",
    "these",
    "those",
    "store",
    "shop",
    "site",
    "website",
];

const NUMBER_WORDS: &[(&str, f64)] = &[
    ("a", 1.0),
    ("an", 1.0),
    ("one", 1.0),
    ("once", 1.0),
    ("two", 2.0),
    ("twice", 2.0),
    ("couple", 2.0),
    ("three", 3.0),
    ("thrice", 3.0),
    ("four", 4.0),
    ("five", 5.0),
    ("six", 6.0),
    ("seven", 7.0),
    ("eight", 8.0),
    ("nine", 9.0),
    ("ten", 10.0),
    ("eleven", 11.0),
    ("twelve", 12.0),
    ("fifteen", 15.0),
    ("twenty", 20.0),
    ("thirty", 30.0),
    ("forty", 40.0),
    ("fifty", 50.0),
    ("sixty", 60.0),
    ("ninety", 90.0),
    ("hundred", 100.0),
];

/// The ordinals of a quarter ("the first quarter", "the 3rd quarter"), in order.
const ORDINALS: [[&str; 2]; 4] = [["first", "1st"], ["second", "2nd"], ["third", "3rd"], ["fourth", "4th"]];

const MONTHS: [&str; 12] = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];

/// A number as written: `500`, `1,000`, `$1.5k`, `€200`, `12.50`; or a number word.
fn number_of(token: &str) -> Option<f64> {
    let text = token.trim_start_matches(['$', '€', '£']).trim_end_matches(['$', '€', '£']).replace(',', "");
    let (text, scale) = match text.strip_suffix('k') {
        Some(rest) if !rest.is_empty() => (rest.to_owned(), 1000.0),
        _ => (text, 1.0),
    };
    if let Ok(value) = text.parse::<f64>() {
        return value.is_finite().then_some(value * scale);
    }
    NUMBER_WORDS.iter().find(|(word, _)| *word == text).map(|(_, value)| *value)
}

/// Days per unit of a window.
fn unit_days(word: &str) -> Option<u32> {
    match word.trim_end_matches('s') {
        "day" => Some(1),
        "week" => Some(7),
        "fortnight" => Some(14),
        "month" => Some(30),
        "quarter" => Some(90),
        "year" => Some(365),
        _ => None,
    }
}

impl Grounding {
    /// Grounds `question` in `values` by text alone; [`Self::add_similar`] adds what only similarity finds.
    pub fn of(question: &str, values: &DataValues, as_of: NaiveDate) -> Self {
        let tokens = tokens(question);
        let mut grounding = Grounding {
            words: tokens.iter().map(|t| t.lower.clone()).collect(),
            sequence: tokens.iter().map(|t| t.lower.clone()).collect(),
            as_of,
            ..Self::default()
        };
        grounding.find_countries(&tokens, &values.countries);
        let mut used = vec![false; tokens.len()];
        for (list, found, what) in
            [(&values.products, 0, "product"), (&values.colors, 1, "colour"), (&values.segments, 2, "segment")]
        {
            for (index, span, value) in grounding.match_values(&tokens, list, &mut used) {
                let slot = match found {
                    0 => &mut grounding.found.products,
                    1 => &mut grounding.found.colors,
                    _ => &mut grounding.found.segments,
                };
                grounding.positions.push((value.clone(), index));
                if !slot.contains(&value) {
                    slot.push(value.clone());
                    let phrase =
                        tokens[index..index + span].iter().map(|t| t.text.as_str()).collect::<Vec<_>>().join(" ");
                    grounding.hints.push(Hint { phrase, meaning: format!("{what} {value}") });
                }
            }
        }
        grounding.find_event_types(&tokens);
        grounding.find_windows(&tokens, as_of);
        grounding.find_numbers(&tokens);
        grounding.unmatched = product_like_words(&tokens, &used);
        grounding
    }

    fn find_countries(&mut self, tokens: &[Token], countries: &[String]) {
        for (code, names) in COUNTRIES {
            if !countries.iter().any(|c| c == code) {
                continue;
            }
            for span in (1..=3).rev() {
                for start in 0..tokens.len().saturating_sub(span - 1) {
                    let words = &tokens[start..start + span];
                    let phrase: Vec<&str> = words.iter().map(|t| t.lower.as_str()).collect();
                    let phrase = phrase.join(" ");
                    // Two-letter names only as written upper-case ("US", not "us").
                    let short = phrase.len() <= 3 && !phrase.contains('.');
                    let written_upper =
                        words.iter().all(|t| t.text.chars().all(|c| c.is_uppercase() || !c.is_alphabetic()));
                    if names.contains(&phrase.as_str())
                        && (!short || written_upper || phrase == "usa" || phrase == "uae")
                        && !self.found.countries.iter().any(|c| c == code)
                    {
                        self.found.countries.push((*code).to_owned());
                        let text: Vec<&str> = words.iter().map(|t| t.text.as_str()).collect();
                        self.hints.push(Hint { phrase: text.join(" "), meaning: format!("country {code}") });
                        self.positions.push(((*code).to_owned(), start));
                    }
                }
            }
        }
        // A code the data holds, written as a code ("from PL"), unless the whole question is in capitals.
        let shouting = tokens.iter().filter(|t| t.text.len() > 2).all(|t| !t.text.chars().any(char::is_lowercase));
        for token in tokens.iter().filter(|_| !shouting) {
            if token.text.len() == 2
                && token.text.chars().all(|c| c.is_ascii_uppercase())
                && countries.contains(&token.text)
                && !self.found.countries.contains(&token.text)
            {
                self.found.countries.push(token.text.clone());
                if let Some(at) = tokens.iter().position(|t| std::ptr::eq(t, token)) {
                    self.positions.push((token.text.clone(), at));
                }
                self.hints.push(Hint { phrase: token.text.clone(), meaning: format!("country {}", token.text) });
            }
        }
    }

    /// The values of `list` the question names (by key, over spans of one to three words), with the index of the
    /// first token and the number of tokens of each; the tokens are marked used.
    fn match_values(&self, tokens: &[Token], list: &[String], used: &mut [bool]) -> Vec<(usize, usize, String)> {
        let mut found = Vec::new();
        for value in list {
            let key = value_key(value);
            if key.is_empty() {
                continue;
            }
            // A value whose first word is an acronym ("VIP Loyalty") is also named by the acronym alone.
            let acronym = value
                .split_whitespace()
                .next()
                .filter(|word| word.len() >= 2 && word.chars().all(|c| c.is_ascii_uppercase()))
                .map(key_of);
            'spans: for span in (1..=3).rev() {
                for start in 0..tokens.len().saturating_sub(span - 1) {
                    let joined: String = tokens[start..start + span].iter().map(|t| t.key.as_str()).collect();
                    let by_acronym = span == 1 && acronym.as_deref() == Some(joined.as_str());
                    if joined == key || by_acronym {
                        used[start..start + span].iter_mut().for_each(|u| *u = true);
                        found.push((start, span, value.clone()));
                        break 'spans;
                    }
                }
            }
        }
        found
    }

    /// The event types the question's verbs name, each with whether it is negated ("never bought", "did not
    /// buy", "without buying"), which decides whether its clause belongs in include or in exclude.
    fn find_event_types(&mut self, tokens: &[Token]) {
        let is_verb = |t: &Token| EVENT_WORDS.iter().any(|(_, words)| words.contains(&t.lower.as_str()));
        self.loose_negation = tokens.iter().enumerate().any(|(index, t)| {
            let negates = NEGATIONS.contains(&t.lower.as_str()) || EXCLUSIONS.contains(&t.lower.as_str());
            negates && !tokens.iter().skip(index + 1).take(3).any(is_verb)
        });
        for (index, token) in tokens.iter().enumerate() {
            let Some((event_type, _)) = EVENT_WORDS.iter().find(|(_, words)| words.contains(&token.lower.as_str()))
            else {
                continue;
            };
            // The three words before the verb, up to a break or another verb.
            let mut start = index.saturating_sub(3);
            if let Some(stop) =
                tokens[start..index].iter().rposition(|t| CLAUSE_BREAKS.contains(&t.lower.as_str()) || is_verb(t))
            {
                start += stop + 1;
            }
            let before = &tokens[start..index];
            let negates = |t: &Token| NEGATIONS.contains(&t.lower.as_str()) || EXCLUSIONS.contains(&t.lower.as_str());
            let negated = before.iter().any(negates);
            if self.mentions.contains(&(*event_type, negated)) {
                continue;
            }
            self.mentions.push((*event_type, negated));
            if !self.event_types.contains(event_type) {
                self.event_types.push(*event_type);
            }
            let (phrase, meaning) = match before.iter().rposition(negates) {
                Some(at) if negated => {
                    let words: Vec<&str> = before[at..].iter().chain([token]).map(|t| t.text.as_str()).collect();
                    (words.join(" "), format!("exclude event_type {}", event_type.as_str()))
                }
                _ => (token.text.clone(), format!("event_type {}", event_type.as_str())),
            };
            self.hints.push(Hint { phrase, meaning });
        }
    }

    /// Why a clause sits on the wrong side, when the question names its event type only negated and the clause
    /// includes, or only affirmed and the clause excludes ("added to the cart but never bought": the cart clause
    /// is included, the purchase clause excluded).
    pub fn wrong_side(&self, clause: &Clause, exclude: bool) -> Option<String> {
        if let Rule::Profile { field, op, value } = &clause.rule {
            return self.wrong_side_of_profile(*field, *op, value, exclude);
        }
        let Rule::Event { event_type: Some(event_type), .. } = &clause.rule else { return None };
        let said = |negated: bool| self.mentions.contains(&(*event_type, negated));
        let name = event_type.as_str();
        match (exclude, said(false), said(true)) {
            (false, false, true) => Some(format!(
                "the question says the customers did NOT do {name}: put that {name} clause in exclude, not include"
            )),
            // "bought socks but not shoes" negates an object, not a verb: an excluded clause may be meant.
            (true, true, false) if !self.loose_negation => Some(format!(
                "the question asks for customers who did {name}: put that {name} clause in include, not exclude"
            )),
            _ => None,
        }
    }

    /// Whether the words before token `at` negate it ("outside the US", "not churned", "except VIP Loyalty").
    fn negated_at(&self, at: usize) -> bool {
        let start = at.saturating_sub(4);
        let before = &self.sequence[start..at];
        // A list of values shares its negation ("not in Poland or Germany"); "but" starts a new part, except in
        // "anything but red".
        let cut = before.iter().enumerate().rposition(|(i, w)| {
            w == "but" && !(i > 0 && matches!(before[i - 1].as_str(), "anything" | "everything" | "all" | "nothing"))
        });
        let from = cut.map_or(0, |i| i + 1);
        let near = before[from..].iter().any(|w| {
            NEGATIONS.contains(&w.as_str())
                || EXCLUSIONS.contains(&w.as_str())
                || matches!(w.as_str(), "outside" | "other" | "than" | "leaving" | "but")
        });
        // A verb of exclusion reaches over the people it excludes and what they do: "exclude the ones who like
        // luxury" leaves the luxury lovers out, five words on.
        let far = &self.sequence[at.saturating_sub(7)..at];
        let cut = far.iter().rposition(|w| matches!(w.as_str(), "but" | "yet" | "while")).map_or(0, |i| i + 1);
        near || far[cut..].iter().any(|w| matches!(w.as_str(), "exclude" | "excluding" | "except" | "minus"))
    }

    /// A profile clause on the wrong side: a country, segment or colour the question asks for that the clause
    /// leaves out ("VIP Loyalty customers outside the US" with VIP Loyalty excluded), or the reverse; churn or
    /// luxury said one way and compared the other ("churned customers" with churned = true excluded).
    fn wrong_side_of_profile(&self, field: ProfileField, op: Op, value: &Value, exclude: bool) -> Option<String> {
        let name = field.column();
        match field.kind() {
            FieldKind::Text if matches!(op, Op::Eq | Op::Ne | Op::In) => {
                let leaves_out = exclude != (op == Op::Ne);
                let texts: Vec<&str> = match value {
                    Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
                    other => other.as_str().into_iter().collect(),
                };
                texts.iter().find_map(|text| {
                    let at: Vec<bool> = self
                        .positions
                        .iter()
                        .filter(|(v, _)| v.eq_ignore_ascii_case(text))
                        .map(|(_, at)| self.negated_at(*at))
                        .collect();
                    match (at.is_empty(), at.iter().all(|n| *n), at.iter().all(|n| !*n), leaves_out) {
                        (false, true, _, false) => Some(format!(
                            "the question leaves {name} {text} out: put that clause in exclude (or use !=), not include"
                        )),
                        (false, _, true, true) => Some(format!(
                            "the question asks for {name} {text}: put that clause in include with =, not exclude"
                        )),
                        _ => None,
                    }
                })
            }
            FieldKind::Bool => {
                let (yes, flips): (&[&str], &[&str]) = match field {
                    ProfileField::Churned => (&["churned", "lapsed", "inactive", "dormant", "churn"], &["active"]),
                    _ => (&["luxury", "premium", "upscale", "luxurious"], &[]),
                };
                let said: Vec<bool> = self
                    .sequence
                    .iter()
                    .enumerate()
                    .filter_map(|(at, w)| {
                        let negated = self.negated_at(at);
                        if yes.contains(&w.as_str()) {
                            Some(!negated)
                        } else if flips.contains(&w.as_str()) {
                            Some(negated)
                        } else {
                            None
                        }
                    })
                    .collect();
                // What the clause keeps: true when its members are churned (like luxury).
                let keeps =
                    value.as_bool()? != (op == Op::Ne) && !exclude || (value.as_bool()? == (op == Op::Ne) && exclude);
                match (said.is_empty(), said.iter().all(|s| *s), said.iter().all(|s| !*s), keeps) {
                    (false, true, _, false) => {
                        Some(format!("the question asks for {name} = true customers; the clause keeps the others"))
                    }
                    (false, _, true, true) => {
                        Some(format!("the question asks for {name} = false customers; the clause keeps the others"))
                    }
                    _ => None,
                }
            }
            _ => None,
        }
    }

    fn find_windows(&mut self, tokens: &[Token], as_of: NaiveDate) {
        let push = |grounding: &mut Self, phrase: String, days: u32| {
            if days > 0 && !grounding.days.contains(&days) {
                grounding.days.push(days);
                grounding.hints.push(Hint { phrase, meaning: format!("within_days {days}") });
            }
        };
        let words: Vec<&str> = tokens.iter().map(|t| t.lower.as_str()).collect();
        for (i, word) in words.iter().enumerate() {
            if matches!(*word, "last" | "past" | "previous" | "recent" | "within") {
                // "last 6 months", "past two weeks", "last month", "within 30 days", "the last 90 days".
                let (count, unit_at) = match words.get(i + 1).and_then(|w| number_of(w)) {
                    Some(n) if n >= 1.0 && n.fract() == 0.0 => (n as u32, i + 2),
                    _ => (1, i + 1),
                };
                if let Some(unit) = words.get(unit_at).and_then(|w| unit_days(w)) {
                    let phrase = tokens[i..=unit_at].iter().map(|t| t.text.as_str()).collect::<Vec<_>>().join(" ");
                    push(self, phrase, count * unit);
                }
            }
            if *word == "this" {
                let days = match words.get(i + 1).copied() {
                    Some("year") => Some(as_of.ordinal()),
                    Some("month") => Some(as_of.day()),
                    Some("week") => Some(as_of.weekday().num_days_from_monday() + 1),
                    Some("quarter") => {
                        let first = NaiveDate::from_ymd_opt(as_of.year(), (as_of.month0() / 3) * 3 + 1, 1);
                        first.map(|first| (as_of - first).num_days() as u32 + 1)
                    }
                    _ => None,
                };
                if let Some(days) = days {
                    push(self, format!("{} {}", tokens[i].text, tokens[i + 1].text), days);
                }
            }
            if matches!(*word, "since" | "in" | "during") {
                // "since March" (up to the data's last day); "in May 2026", "in June", "during 2025", "in Q2".
                let year_at =
                    |at: usize| words.get(at).and_then(|w| w.parse::<i32>().ok()).filter(|y| (1900..3000).contains(y));
                let month = words
                    .get(i + 1)
                    .and_then(|w| MONTHS.iter().position(|m| m == w || (w.len() == 3 && m.starts_with(*w))));
                let quarter = words
                    .get(i + 1)
                    .and_then(|w| w.strip_prefix('q'))
                    .and_then(|q| q.parse::<u32>().ok())
                    .filter(|q| (1..=4).contains(q));
                // "in the first quarter of 2026": an ordinal quarter, its year (if any) after "of".
                let ordinal_at = if words.get(i + 1) == Some(&"the") { i + 2 } else { i + 1 };
                let ordinal_quarter = words
                    .get(ordinal_at)
                    .and_then(|w| ORDINALS.iter().position(|ordinal| ordinal.contains(w)))
                    .filter(|_| words.get(ordinal_at + 1) == Some(&"quarter"))
                    .map(|nth| {
                        (nth as u32 + 1, ordinal_at + 2 + usize::from(words.get(ordinal_at + 2) == Some(&"of")))
                    });
                // Where the year would be: after a month or quarter, or the word itself.
                let (first_month, months, year_at_word) = match (month, quarter, ordinal_quarter, year_at(i + 1)) {
                    (Some(month), ..) => (month as u32 + 1, 1, i + 2),
                    (_, Some(q), ..) => ((q - 1) * 3 + 1, 3, i + 2),
                    (_, _, Some((q, at)), _) => ((q - 1) * 3 + 1, 3, at),
                    (_, _, _, Some(_)) if *word != "since" => (1, 12, i + 1),
                    _ => continue,
                };
                let year = year_at(year_at_word);
                let end = if year.is_some() { year_at_word } else { year_at_word - 1 };
                // A month or quarter without a year is the latest one that has begun by the data's last day.
                let year = year.unwrap_or(if first_month <= as_of.month() { as_of.year() } else { as_of.year() - 1 });
                let Some(first) = NaiveDate::from_ymd_opt(year, first_month, 1) else { continue };
                let phrase = tokens[i..=end].iter().map(|t| t.text.as_str()).collect::<Vec<_>>().join(" ");
                if *word == "since" {
                    if first <= as_of {
                        push(self, phrase, (as_of - first).num_days() as u32 + 1);
                    }
                    continue;
                }
                let last = first.checked_add_months(chrono::Months::new(months)).and_then(|next| next.pred_opt());
                if let Some(last) = last
                    && !self.periods.contains(&(Some(first), Some(last)))
                {
                    self.periods.push((Some(first), Some(last)));
                    self.hints.push(Hint { phrase, meaning: format!("since {first}, until {last}") });
                }
            }
        }
        for (word, days) in [("today", 1), ("yesterday", 2)] {
            if let Some(token) = tokens.iter().find(|t| t.lower == word) {
                push(self, token.text.clone(), days);
            }
        }
    }

    fn find_numbers(&mut self, tokens: &[Token]) {
        for token in tokens {
            // "a" and "an" are numbers only before a unit ("a month"), which windows already read.
            if matches!(token.lower.as_str(), "a" | "an") {
                continue;
            }
            if let Some(value) = number_of(&token.lower) {
                if !self.numbers.contains(&value) {
                    self.numbers.push(value);
                }
            } else if let Some(decade) = token.lower.strip_suffix('s').and_then(|d| d.parse::<u32>().ok()) {
                for value in [decade as f64, decade as f64 + 9.0] {
                    if !self.numbers.contains(&value) {
                        self.numbers.push(value);
                    }
                }
            }
        }
        // Counting words: "more than once", "repeat buyers", "bought again" are at least 2.
        let repeated =
            ["again", "repeat", "repeated", "multiple", "several", "returning"].iter().any(|w| self.words.contains(*w))
                || (self.words.contains("once") && self.words.contains("more"));
        if repeated && !self.numbers.contains(&2.0) {
            self.numbers.push(2.0);
        }
        // Decades in words: "in their thirties" is 30 to 39 (and 40 for "under 40").
        for (word, from, to) in [
            ("teens", 13.0, 19.0),
            ("teenagers", 13.0, 19.0),
            ("twenties", 20.0, 29.0),
            ("thirties", 30.0, 39.0),
            ("forties", 40.0, 49.0),
            ("fifties", 50.0, 59.0),
            ("sixties", 60.0, 69.0),
        ] {
            if self.words.contains(word) {
                for value in [from, to, to + 1.0] {
                    if !self.numbers.contains(&value) {
                        self.numbers.push(value);
                    }
                }
            }
        }
        for days in self.days.clone() {
            if !self.numbers.contains(&f64::from(days)) {
                self.numbers.push(f64::from(days));
            }
        }
    }

    /// Adds the values that only similarity finds: for each word that looks like a product and matched nothing,
    /// the product (or colour) whose MiniLM embedding is closest, when it is close enough. `embed` embeds texts
    /// and returns unit vectors in the same order.
    pub fn add_similar(
        &mut self,
        values: &DataValues,
        embedded_values: &[Vec<f32>],
        word_vectors: &[(String, Vec<f32>)],
    ) {
        let mut unrelated = Vec::new();
        for (word, vector) in word_vectors {
            let mut scored: Vec<(&String, f32)> =
                values.products.iter().zip(embedded_values).map(|(value, v)| (value, dot(vector, v))).collect();
            scored.sort_by(|a, b| b.1.total_cmp(&a.1));
            let (Some(&(best, score)), second) = (scored.first(), scored.get(1).map_or(0.0, |s| s.1)) else {
                unrelated.push(word.clone());
                continue;
            };
            if score >= SIMILAR || (score >= SIMILAR_WITH_MARGIN && score - second >= MARGIN) {
                if !self.found.products.contains(best) {
                    self.found.products.push(best.clone());
                    self.hints.push(Hint { phrase: word.clone(), meaning: format!("product {best}") });
                }
            } else if score >= UNRELATED {
                // Near a product but not it ("hiking gear" and `running_gear`): the model is told, and a taste goes
                // in the intent.
                self.hints.push(Hint {
                    phrase: word.clone(),
                    meaning: format!("no such product (closest: {best}); a taste goes in intent"),
                });
            } else if word.ends_with('s') && !word.ends_with("ss") {
                // Plural nouns after a purchase or view ("kayaks") name products; anything else is told only.
                unrelated.push(word.clone());
            } else {
                self.hints.push(Hint { phrase: word.clone(), meaning: "no such product in the data".to_owned() });
            }
        }
        self.unmatched = unrelated;
    }

    /// Counts the current audience's values, windows, periods and numbers as the question's: a refinement ("now
    /// only Germany", "widen the window to 60 days") re-sends clauses of the audience it edits.
    pub fn inherit(&mut self, definition: &AudienceDefinition) {
        self.inherited = true;
        fn add<T: PartialEq + Clone>(list: &mut Vec<T>, value: &T) {
            if !list.contains(value) {
                list.push(value.clone());
            }
        }
        for (clause, _) in definition.clauses() {
            match &clause.rule {
                Rule::Event {
                    event_type,
                    products,
                    colors,
                    min_price,
                    max_price,
                    within_days,
                    since,
                    until,
                    min_count,
                    ..
                } => {
                    if let Some(event_type) = event_type {
                        add(&mut self.event_types, event_type);
                    }
                    products.iter().for_each(|p| add(&mut self.found.products, p));
                    colors.iter().for_each(|c| add(&mut self.found.colors, c));
                    for number in [*min_price, *max_price, min_count.map(f64::from)].into_iter().flatten() {
                        add(&mut self.numbers, &number);
                    }
                    if let Some(days) = within_days {
                        add(&mut self.days, days);
                    }
                    if since.is_some() || until.is_some() {
                        add(&mut self.periods, &(*since, *until));
                    }
                }
                Rule::Profile { field, value, .. } => {
                    let items: Vec<&Value> = match value {
                        Value::Array(items) => items.iter().collect(),
                        other => vec![other],
                    };
                    for item in items {
                        match (item.as_str(), item.as_f64()) {
                            (Some(text), _) => {
                                let list = match field {
                                    ProfileField::Country => &mut self.found.countries,
                                    ProfileField::Segment => &mut self.found.segments,
                                    ProfileField::Interests => &mut self.found.products,
                                    _ => &mut self.found.colors,
                                };
                                add(list, &text.to_owned());
                            }
                            (None, Some(number)) => add(&mut self.numbers, &number),
                            _ => {}
                        }
                    }
                    // The field's own word is as good as said: the audience already compares it.
                    add_word(&mut self.words, field.column());
                }
                Rule::Sql { .. } => {}
            }
        }
    }

    /// The question's words, lower-case, in order.
    pub fn sequence(&self) -> &[String] {
        &self.sequence
    }

    /// What the question names that no clause of `clauses` uses: a country, segment, product or colour grounding
    /// found, or an event its verbs name ("Jeans buyers, but leave out anyone in Germany" answered with the Germany
    /// clause alone). Empty for a refinement, whose call edits an audience that may already hold them.
    pub fn uncovered(&self, clauses: &[Clause], intent: Option<&str>) -> Uncovered {
        if self.inherited {
            return Uncovered::default();
        }
        let mut used = DataValues::default();
        // A taste may name products and colours ("who loves luxury watches" ranked by "luxury watches"); a country,
        // a segment or an event is a condition, and needs its clause.
        if let Some(intent) = intent {
            let said: HashSet<String> = tokens(intent).into_iter().map(|t| t.key).collect();
            let named = |value: &String| value.split('_').all(|part| said.contains(&key_of(part)));
            used.products.extend(self.found.products.iter().filter(|v| named(v)).cloned());
            used.colors.extend(self.found.colors.iter().filter(|v| named(v)).cloned());
        }
        let mut events = Vec::new();
        for clause in clauses {
            match &clause.rule {
                Rule::Event { event_type, products, colors, .. } => {
                    events.extend(*event_type);
                    used.products.extend(products.iter().cloned());
                    used.colors.extend(colors.iter().cloned());
                }
                Rule::Profile { field, value, .. } => {
                    let texts: Vec<String> = match value {
                        Value::Array(items) => items.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
                        Value::String(text) => vec![text.clone()],
                        _ => Vec::new(),
                    };
                    match field {
                        ProfileField::Country => used.countries.extend(texts),
                        ProfileField::Segment => used.segments.extend(texts),
                        ProfileField::Interests => used.products.extend(texts),
                        ProfileField::FavoriteColor | ProfileField::PreferredColors => used.colors.extend(texts),
                        // Facts computed from the purchases ("one-time buyers", "lapsed buyers") name them too.
                        ProfileField::OrderCount
                        | ProfileField::RecencyDays
                        | ProfileField::RScore
                        | ProfileField::FScore
                        | ProfileField::MScore
                        | ProfileField::TotalSpent
                        | ProfileField::ReturnCount
                        | ProfileField::Churned
                        | ProfileField::PAlive
                        | ProfileField::ExpectedPurchases
                        | ProfileField::ExpectedAvgSpend
                        | ProfileField::Clv12m => events.push(EventType::Purchase),
                        ProfileField::Age | ProfileField::LikesLuxury => {}
                    }
                }
                Rule::Sql { .. } => {}
            }
        }
        let unused = |named: &[String], had: &[String]| -> Vec<String> {
            named.iter().filter(|value| !had.iter().any(|h| h.eq_ignore_ascii_case(value))).cloned().collect()
        };
        Uncovered {
            countries: unused(&self.found.countries, &used.countries),
            segments: unused(&self.found.segments, &used.segments),
            products: unused(&self.found.products, &used.products),
            colors: unused(&self.found.colors, &used.colors),
            event_types: self.event_types.iter().filter(|event_type| !events.contains(event_type)).copied().collect(),
        }
    }

    /// The clauses the program can write itself for what `uncovered` lists: a country or a segment as a profile
    /// clause, an event the verbs name as an event clause, each on the side the question's words put it (`true`:
    /// exclude). Products and colours are left out: which event they belong to is a reading of the question.
    pub fn completing(&self, uncovered: &Uncovered) -> Vec<(Clause, bool)> {
        let mut clauses = Vec::new();
        for (field, values) in
            [(ProfileField::Country, &uncovered.countries), (ProfileField::Segment, &uncovered.segments)]
        {
            for value in values {
                let at: Vec<bool> = self
                    .positions
                    .iter()
                    .filter(|(v, _)| v.eq_ignore_ascii_case(value))
                    .map(|(_, at)| self.negated_at(*at))
                    .collect();
                let exclude = !at.is_empty() && at.iter().all(|negated| *negated);
                let rule = Rule::Profile { field, op: Op::Eq, value: Value::String(value.clone()) };
                clauses.push((Clause { id: String::new(), rule }, exclude));
            }
        }
        for event_type in &uncovered.event_types {
            let said = |negated: bool| self.mentions.contains(&(*event_type, negated));
            let exclude = said(true) && !said(false);
            let rule = Rule::Event {
                event_type: Some(*event_type),
                products: Vec::new(),
                colors: Vec::new(),
                min_price: None,
                max_price: None,
                within_days: None,
                since: None,
                until: None,
                min_count: None,
                sql: None,
            };
            clauses.push((Clause { id: String::new(), rule }, exclude));
        }
        clauses
    }

    /// Whether the question's words hold `phrase` (lower case, words apart) in a row: "units were returned".
    pub fn says_phrase(&self, phrase: &str) -> bool {
        phrase_ends(&self.sequence, phrase).next().is_some()
    }

    /// Whether the question names a condition a clause is for: a country, a segment, an event, a window or period,
    /// or a number. Products and colours alone may be a taste ("who would love luxury watches?").
    pub fn names_a_condition(&self) -> bool {
        !(self.found.countries.is_empty()
            && self.found.segments.is_empty()
            && self.event_types.is_empty()
            && self.days.is_empty()
            && self.periods.is_empty()
            && self.numbers.is_empty())
    }

    /// Each event type the question names, with whether it was negated, in the order named.
    pub fn mentions(&self) -> &[(EventType, bool)] {
        &self.mentions
    }

    /// The least number of events of a type the question asks for: "at least 10 product views", "3 or more
    /// purchases", "more than 2 orders" (3), "bought at least 3 times" (the one event the verbs name).
    pub fn counted_events(&self) -> Vec<(EventType, u32)> {
        let words = &self.sequence;
        let mut counts = Vec::new();
        for (at, word) in words.iter().enumerate() {
            let Some(n) = number_of(word).filter(|n| n.fract() == 0.0 && *n >= 1.0 && *n < 10_000.0) else { continue };
            let before = |back: usize| at.checked_sub(back).and_then(|i| words.get(i)).map(String::as_str);
            let after = words.get(at + 1).map(String::as_str);
            let at_least = matches!((before(2), before(1)), (Some("at"), Some("least")) | (Some("no"), Some("fewer")))
                || matches!((before(2), before(1)), (Some("minimum"), Some("of")))
                || matches!((after, words.get(at + 2).map(String::as_str)), (Some("or"), Some("more")));
            let more_than = matches!((before(2), before(1)), (Some("more"), Some("than"))) || before(1) == Some("over");
            if !at_least && !more_than {
                continue;
            }
            let least = n as u32 + u32::from(more_than && !at_least);
            // The counted event: a noun just after the number ("10 product views"), or "times" after a verb.
            let noun = words[at + 1..].iter().take(3).find_map(|w| event_type_of(w));
            let times = words[at + 1..].iter().take(3).any(|w| w == "times");
            let only = match (times, self.event_types.as_slice()) {
                (true, [only]) => Some(*only),
                _ => None,
            };
            let counted = noun.or(only);
            if let Some(event_type) = counted {
                counts.push((event_type, least));
            }
        }
        counts
    }

    /// The comparison the question's words put before the number `value`: "at least 2" and "2 or more" are `>=`,
    /// "more than 2" and "over 2" `>`, "at most 2" and "up to 2" `<=`, "under 2" and "fewer than 2" `<`. `None` when
    /// the question writes the number without one, or more than one way.
    pub fn bound_of(&self, value: f64) -> Option<Op> {
        let words = &self.sequence;
        let mut ops = Vec::new();
        for (at, word) in words.iter().enumerate() {
            if number_of(word).is_none_or(|n| (n - value).abs() > 1e-9) {
                continue;
            }
            let before = |back: usize| at.checked_sub(back).and_then(|i| words.get(i)).map(String::as_str);
            let after = (words.get(at + 1).map(String::as_str), words.get(at + 2).map(String::as_str));
            let op = match (before(2), before(1), after) {
                (Some("at"), Some("least"), _) | (_, _, (Some("or"), Some("more"))) => Some(Op::Gte),
                (Some("at"), Some("most"), _)
                | (Some("up"), Some("to"), _)
                | (_, _, (Some("or"), Some("less" | "fewer"))) => Some(Op::Lte),
                (Some("more" | "greater"), Some("than"), _) | (_, Some("over" | "above" | "exceeding"), _) => {
                    Some(Op::Gt)
                }
                (Some("less" | "fewer"), Some("than"), _) | (_, Some("under" | "below"), _) => Some(Op::Lt),
                _ => None,
            };
            ops.extend(op);
        }
        ops.dedup();
        match ops.as_slice() {
            [op] => Some(*op),
            _ => None,
        }
    }

    /// Prices the question bounds from above: "priced under 10", "cheaper than 50", "below 20", "at most 30".
    pub fn price_ceilings(&self) -> Vec<f64> {
        let words = &self.sequence;
        let below = ["under", "below", "cheaper", "less", "max", "maximum", "most", "within", "upto"];
        let mut ceilings = Vec::new();
        for (at, word) in words.iter().enumerate() {
            let Some(n) = number_of(word) else { continue };
            let said = words[at.saturating_sub(3)..at].iter().any(|w| below.contains(&w.as_str()));
            // "less than 3 times" bounds a count, not a price.
            let counts = words.get(at + 1).is_some_and(|w| w == "times" || event_type_of(w).is_some());
            if said && !counts {
                ceilings.push(n);
            }
        }
        ceilings
    }

    pub fn says(&self, word: &str) -> bool {
        self.words.contains(word)
    }

    /// Whether the question speaks of tastes or interests ("who like jeans", "interested in hats"), where a product
    /// may be an interest rather than what was bought.
    pub fn speaks_of_taste(&self) -> bool {
        const TASTE: [&str; 12] =
            ["like", "likes", "love", "loves", "into", "fan", "fans", "lovers", "prefer", "prefers", "enjoy", "enjoys"];
        TASTE.iter().chain(field_words(ProfileField::Interests)).any(|word| self.says(word))
    }

    /// `clause` with what the question does not ask for taken out: an event clause loses the window, period,
    /// price, count or colours nobody asked for and keeps the rest ("bought watches" stays when the model added "in
    /// the last 365 days"); a clause whose products, event type or profile comparison do not trace is dropped whole.
    pub fn trace(&self, clause: &Clause) -> Traced {
        let Some(reason) = self.untraced(clause) else { return Traced::Kept };
        if !matches!(clause.rule, Rule::Event { .. }) {
            return Traced::Dropped(reason);
        }
        // The essential part must trace: the event type, and the products when the question names any (a clause
        // on other products than the question's is wrong, not too narrow). Each optional part is checked on its
        // own with it.
        let parts: Vec<EventPart> = EventPart::ALL
            .into_iter()
            .filter(|part| *part != EventPart::Products || self.found.products.is_empty())
            .collect();
        let essential = parts.iter().fold(clause.clone(), |kept, part| part.without(&kept));
        if self.untraced(&essential).is_some() {
            return Traced::Dropped(reason);
        }
        let mut trimmed = clause.clone();
        let mut removed = Vec::new();
        for &part in &parts {
            let Some(words) = part.describe(&clause.rule) else { continue };
            let alone =
                parts.iter().filter(|other| **other != part).fold(clause.clone(), |kept, other| other.without(&kept));
            if self.untraced(&alone).is_some() {
                trimmed = part.without(&trimmed);
                removed.push(words);
            }
        }
        Traced::Trimmed { clause: trimmed, removed }
    }

    /// Why `clause` does not trace to the question, or `None` when every value it sets does: its products,
    /// colours, countries and segments were grounded, its window and numbers are written in the question, and the
    /// field it compares is named by a word of the question.
    pub fn untraced(&self, clause: &Clause) -> Option<String> {
        let number_said = |value: f64| self.numbers.iter().any(|n| (n - value).abs() < 1e-9);
        // "More than 3 times" is at least 4; "under 30" may be written as at most 29.
        let count_said = |value: f64| self.numbers.iter().any(|n| (n - value).abs() <= 1.0 + 1e-9);
        // "The last 6 months" is 180 days here and 182 or 183 to someone else.
        let window_said =
            |days: u32| self.days.iter().any(|d| d.abs_diff(days) <= (d / 30).max(2)) || number_said(f64::from(days));
        match &clause.rule {
            Rule::Event {
                event_type,
                products,
                colors,
                min_price,
                max_price,
                within_days,
                since,
                until,
                min_count,
                ..
            } => {
                // A period traces when the question names it, or, opened with `since` alone, when it is a window
                // the question names ("since March" read as a date).
                let as_window = match (since, until) {
                    (Some(since), None) => {
                        u32::try_from((self.as_of - *since).num_days() + 1).ok().is_some_and(window_said)
                    }
                    _ => false,
                };
                if (since.is_some() || until.is_some()) && !self.periods.contains(&(*since, *until)) && !as_window {
                    return Some(format!("period {since:?} to {until:?}"));
                }
                if let Some(event_type) = event_type
                    && !self.event_types.is_empty()
                    && !self.event_types.contains(event_type)
                {
                    return Some(format!(
                        "event_type {} (the question says {})",
                        event_type.as_str(),
                        names(&self.event_types)
                    ));
                }
                if let Some(p) = products.iter().find(|p| !self.found.products.contains(p)) {
                    return Some(format!("product {p}"));
                }
                if let Some(c) = colors.iter().find(|c| !self.found.colors.contains(c)) {
                    return Some(format!("colour {c}"));
                }
                if let Some(days) = within_days
                    && !window_said(*days)
                {
                    return Some(format!("within_days {days}"));
                }
                for (name, value) in [("min_price", min_price), ("max_price", max_price)] {
                    if let Some(value) = value
                        && !number_said(*value)
                    {
                        return Some(format!("{name} {value}"));
                    }
                }
                if let Some(count) = min_count
                    && *count > 1
                    && !count_said(f64::from(*count))
                {
                    return Some(format!("min_count {count}"));
                }
                None
            }
            Rule::Profile { field, value, .. } => self.untraced_profile(*field, value),
            Rule::Sql { .. } => None,
        }
    }

    fn untraced_profile(&self, field: ProfileField, value: &Value) -> Option<String> {
        let texts: Vec<&str> = match value {
            Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
            Value::String(text) => vec![text.as_str()],
            _ => Vec::new(),
        };
        let grounded = |list: &[String]| {
            texts.iter().find(|t| !list.iter().any(|v| v.eq_ignore_ascii_case(t))).map(|t| (*t).to_owned())
        };
        let name = field.column();
        match field {
            ProfileField::Country => grounded(&self.found.countries).map(|v| format!("country {v}")),
            ProfileField::Segment => grounded(&self.found.segments).map(|v| format!("segment {v}")),
            ProfileField::Interests => grounded(&self.found.products).map(|v| format!("interest {v}")),
            ProfileField::FavoriteColor | ProfileField::PreferredColors => {
                grounded(&self.found.colors).map(|v| format!("colour {v}"))
            }
            _ if field.kind() == FieldKind::Bool => {
                (!field_words(field).iter().any(|w| self.says(w))).then(|| format!("{name} = {value}"))
            }
            _ => {
                let tolerance = if field == ProfileField::TotalSpent { 1e-9 } else { 1.0 + 1e-9 };
                let said_one = |v: f64| self.numbers.iter().any(|n| (n - v).abs() <= tolerance);
                let said = match value {
                    Value::Array(items) => !items.is_empty() && items.iter().all(|v| v.as_f64().is_some_and(said_one)),
                    other => other.as_f64().is_some_and(said_one),
                };
                let field_named = field_words(field).iter().any(|w| self.says(w));
                // A number must be written in the question and its field named; a comparison with 0 ("never
                // returned anything") only needs the field named.
                let zero = value.as_f64().is_some_and(|v| v == 0.0);
                (!field_named || !(said || zero)).then(|| format!("{name} {value}"))
            }
        }
    }

    /// The hints as one prompt line, or `None` without any.
    pub fn hint_line(&self) -> Option<String> {
        if self.hints.is_empty() {
            return None;
        }
        let parts: Vec<String> = self.hints.iter().map(|h| format!("\"{}\" = {}", h.phrase, h.meaning)).collect();
        Some(parts.join("; "))
    }
}

/// The optional parts of an event clause, which tracing can take off one by one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EventPart {
    Products,
    Colors,
    MinPrice,
    MaxPrice,
    Window,
    Period,
    MinCount,
}

impl EventPart {
    const ALL: [EventPart; 7] =
        [Self::Products, Self::Colors, Self::MinPrice, Self::MaxPrice, Self::Window, Self::Period, Self::MinCount];

    /// `clause` without this part.
    fn without(self, clause: &Clause) -> Clause {
        let mut clause = clause.clone();
        if let Rule::Event { products, colors, min_price, max_price, within_days, since, until, min_count, .. } =
            &mut clause.rule
        {
            match self {
                Self::Products => products.clear(),
                Self::Colors => colors.clear(),
                Self::MinPrice => *min_price = None,
                Self::MaxPrice => *max_price = None,
                Self::Window => *within_days = None,
                Self::Period => (*since, *until) = (None, None),
                Self::MinCount => *min_count = None,
            }
        }
        clause
    }

    /// The part in words, when the rule sets it.
    fn describe(self, rule: &Rule) -> Option<String> {
        let Rule::Event { products, colors, min_price, max_price, within_days, since, until, min_count, .. } = rule
        else {
            return None;
        };
        let day = |day: &Option<NaiveDate>| day.map_or("open".to_owned(), |d| d.to_string());
        match self {
            Self::Products => (!products.is_empty()).then(|| format!("the products {}", products.join(", "))),
            Self::Colors => (!colors.is_empty()).then(|| format!("the colours {}", colors.join(", "))),
            Self::MinPrice => min_price.map(|p| format!("a price of at least {p}")),
            Self::MaxPrice => max_price.map(|p| format!("a price of at most {p}")),
            Self::Window => within_days.map(|d| format!("a window of the last {d} days")),
            Self::Period => {
                (since.is_some() || until.is_some()).then(|| format!("the period {} to {}", day(since), day(until)))
            }
            Self::MinCount => min_count.map(|n| format!("a count of at least {n}")),
        }
    }
}

/// The words by which a question names a profile field ("spenders" names `total_spent`, "lapsed" `churned`): a
/// clause on the field traces to the question only when one of them is in it.
pub fn field_words(field: ProfileField) -> &'static [&'static str] {
    match field {
        ProfileField::Churned => &[
            "churned", "churn", "churning", "lapsed", "lost", "inactive", "active", "dormant", "gone", "win", "back",
            "lapsing", "left", "stopped",
        ],
        ProfileField::LikesLuxury => {
            &["luxury", "luxurious", "premium", "high", "upscale", "designer", "expensive", "posh", "lux"]
        }
        ProfileField::Age => &[
            "age",
            "aged",
            "ages",
            "old",
            "young",
            "younger",
            "older",
            "years",
            "year",
            "teen",
            "teens",
            "twenties",
            "thirties",
            "forties",
            "fifties",
            "sixties",
            "seniors",
            "senior",
            "youth",
            "millennials",
            "students",
            "teenagers",
            "olds",
            "under",
            "over",
            "between",
            "adults",
            "retirees",
        ],
        ProfileField::TotalSpent => &[
            "spent", "spend", "spends", "spending", "spenders", "value", "revenue", "worth", "total", "lifetime",
            "money", "big", "high", "ltv", "clv",
        ],
        ProfileField::OrderCount => &[
            "orders",
            "order",
            "purchases",
            "purchased",
            "bought",
            "times",
            "once",
            "twice",
            "repeat",
            "frequent",
            "ordered",
        ],
        ProfileField::ReturnCount => &["returns", "returned", "return", "returning", "sent", "refund", "refunds"],
        ProfileField::RecencyDays => &["recency", "since", "days", "ago", "last", "recent", "recently", "lapsed"],
        ProfileField::RScore | ProfileField::FScore | ProfileField::MScore => {
            &["score", "scores", "rfm", "recency", "frequency", "monetary", "r", "f", "m"]
        }
        ProfileField::Country => &["country", "countries", "nationality"],
        ProfileField::Segment => &["segment", "segments", "tier"],
        ProfileField::FavoriteColor | ProfileField::PreferredColors => &["colour", "colours", "color", "colors"],
        ProfileField::Interests => &["interest", "interests", "interested"],
        ProfileField::PAlive => &["alive", "probability", "chance", "chances"],
        ProfileField::ExpectedPurchases => &["expected", "predicted", "forecast", "forecasted"],
        ProfileField::ExpectedAvgSpend => &["expected", "average", "avg", "aov"],
        ProfileField::Clv12m => &["clv", "ltv", "lifetime", "predicted"],
    }
}

/// Adds a field's name to the question's words, for tracing ("total_spent" names itself).
fn add_word(words: &mut HashSet<String>, column: &str) {
    let named = match column {
        "total_spent" => "spent",
        "order_count" => "orders",
        "return_count" => "returns",
        "recency_days" => "recency",
        "likes_luxury" => "luxury",
        "p_alive" => "alive",
        "expected_purchases" | "expected_avg_spend" => "expected",
        "clv_12m" => "clv",
        "churned" => "churned",
        "age" => "age",
        other => other,
    };
    words.insert(named.to_owned());
}

/// What tracing a clause to the question left of it.
#[derive(Clone, Debug, PartialEq)]
pub enum Traced {
    /// Every part traces.
    Kept,
    /// The clause without the parts nobody asked for, which are named in `removed`.
    Trimmed { clause: Clause, removed: Vec<String> },
    /// Nothing of it traces; why.
    Dropped(String),
}

/// Cosine similarities (MiniLM) that decide what a product word the data does not spell names, measured on shop
/// words against a catalogue of 15 products: at `SIMILAR` a word names the product ("sneakers" `shoes` 0.86,
/// "jewellery" 0.93, "fragrance" `perfume` 0.82, "coats" `jackets` 0.66); from `SIMILAR_WITH_MARGIN` only when it
/// is clearly closer to one product than to any other ("tees" `t_shirts` 0.58 against 0.41, "designer handbags"
/// `bags` 0.57 against 0.43, but not "sweaters" `dresses` 0.59 against 0.54); below `UNRELATED` it names nothing
/// in the data ("kayaks" 0.37, "electronics" 0.38, "furniture" 0.40), and the answer says so.
pub const SIMILAR: f32 = 0.62;
const SIMILAR_WITH_MARGIN: f32 = 0.55;
const MARGIN: f32 = 0.12;
const UNRELATED: f32 = 0.45;

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn names(types: &[EventType]) -> String {
    types.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(" or ")
}

/// Phrases right after a purchase, view or cart verb that no value matched (one or two words: "kayaks",
/// "designer handbags"): what the question wants bought or viewed.
fn product_like_words(tokens: &[Token], used: &[bool]) -> Vec<String> {
    let verbs: Vec<&str> = EVENT_WORDS.iter().flat_map(|(_, words)| words.iter().copied()).collect();
    // Besides event verbs, words after which a product is named ("interacted with sneakers").
    let cues = ["interacted", "engaged", "interested"];
    let is_word = |t: &Token| t.lower.chars().all(char::is_alphabetic) && t.lower.len() >= 3;
    let filler =
        |t: &Token| matches!(t.lower.as_str(), "a" | "an" | "the" | "some" | "any" | "of" | "our" | "with" | "in");
    let stop = |t: &Token| {
        NOT_PRODUCTS.contains(&t.lower.as_str())
            || NUMBER_WORDS.iter().any(|(word, _)| *word == t.lower)
            || verbs.contains(&t.lower.as_str())
            || MONTHS.contains(&t.lower.as_str())
    };
    let mut phrases = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        if !verbs.contains(&token.lower.as_str()) && !cues.contains(&token.lower.as_str()) {
            continue;
        }
        // The first word after the verb that no value matched; matched words before it (a colour in "white
        // tees") are skipped, a matched product ends the search ("bought shoes in red").
        let mut at = i + 1;
        while tokens.get(at).is_some_and(&filler) {
            at += 1;
        }
        // One matched word (a colour) may stand before the product.
        if used.get(at) == Some(&true) && tokens.get(at + 1).is_some_and(|n| !used[at + 1] && is_word(n) && !stop(n)) {
            at += 1;
        }
        let Some(first) = tokens.get(at) else { continue };
        if used[at] || !is_word(first) || stop(first) {
            continue;
        }
        let mut phrase = vec![first.lower.clone()];
        if let Some(second) = tokens.get(at + 1)
            && is_word(second)
            && !stop(second)
        {
            if used[at + 1] {
                continue;
            }
            phrase.push(second.lower.clone());
        }
        let phrase = phrase.join(" ");
        if !phrases.contains(&phrase) {
            phrases.push(phrase);
        }
    }
    phrases
}

/// Words that open a request for people ("find ...", "customers who ...", "who ...") whatever else it says:
/// "customers who have spent more than 500 in total" asks for an audience, not for a total.
const PEOPLE_OPENERS: [&str; 14] = [
    "find",
    "customers",
    "customer",
    "people",
    "shoppers",
    "who",
    "whom",
    "list",
    "anyone",
    "anybody",
    "everyone",
    "get",
    "give",
    "those",
];
/// Words for people: a measure word beside one asks for a number only in a question ("what's the average age of
/// our customers?"), not in a description ("Dutch customers whose total spending exceeds 2,000").
const PEOPLE_NOUNS: [&str; 10] =
    ["customers", "customer", "shoppers", "shopper", "people", "buyers", "buyer", "spenders", "clients", "members"];
/// Words that open a question about a number or a group.
const QUESTION_OPENERS: [&str; 8] = ["what", "what's", "whats", "which", "how", "top", "rank", "show"];
/// Phrases that ask for a number wherever they stand.
const NUMBER_PHRASES: [&str; 12] = [
    "how many",
    "how much",
    "how often",
    "how frequently",
    "number of",
    "what percentage",
    "what percent",
    "what share",
    "what proportion",
    "what fraction",
    "break down",
    "breakdown",
];
/// Words that name a measure.
const MEASURE_WORDS: [&str; 38] = [
    "revenue",
    "revenues",
    "sales",
    "takings",
    "money",
    "rate",
    "rates",
    "conversion",
    "average",
    "mean",
    "median",
    "total",
    "totals",
    "sum",
    "count",
    "headcount",
    "size",
    "aov",
    "percentage",
    "percent",
    "share",
    "proportion",
    "trend",
    "compare",
    "compared",
    "versus",
    "vs",
    "spread",
    "distribution",
    "units",
    "spend",
    "spends",
    "spent",
    "spending",
    "worth",
    "value",
    "amount",
    "amounts",
];
/// What a ranking of groups ranks ("which country ...", "top 5 products ..."): a number per group.
const GROUP_WORDS: [&str; 19] = [
    "country",
    "countries",
    "market",
    "markets",
    "product",
    "products",
    "category",
    "categories",
    "colour",
    "colours",
    "color",
    "colors",
    "segment",
    "segments",
    "month",
    "quarter",
    "week",
    "day",
    "age",
];

/// Whether the question asks for a number (a count, an amount, a rate, a ranking of groups) rather than for people.
/// Decided from its words alone, before any call: it picks which examples the model is shown.
pub fn asks_for_a_number(question: &str) -> bool {
    let words: Vec<String> = tokens(question).into_iter().map(|token| token.lower).collect();
    let Some(first) = words.first().map(String::as_str) else { return false };
    if PEOPLE_OPENERS.contains(&first) {
        return false;
    }
    if says_a_number_phrase(&words) {
        return true;
    }
    let says = |list: &[&str]| words.iter().any(|word| list.contains(&word.as_str()));
    // "rank them by spend", "which of those ...": the people of the conversation, ordered or narrowed.
    if says(&["them", "those", "these"]) {
        return false;
    }
    let opened_by = |openers: &[&str]| words.iter().take(3).any(|word| openers.contains(&word.as_str()));
    let asked = opened_by(&QUESTION_OPENERS);
    let ranks_groups = opened_by(&["which", "what", "what's", "whats", "top", "rank"]) && says(&GROUP_WORDS);
    // A measure that opens the question ("net revenue from ...") asks for it; one inside a description of people
    // ("dressers who have spent more than 1,500") does not.
    let opens_with_measure = words.iter().take(2).any(|word| MEASURE_WORDS.contains(&word.as_str()));
    let describes_people = says(&PEOPLE_NOUNS) || says(&["who", "whose"]);
    let measure = says(&MEASURE_WORDS) && (asked || opens_with_measure || !describes_people);
    ranks_groups || measure
}

/// Whether the lower-case words name a measure or ask "how many", "how much", ...: "which segment spends the most
/// per order?" asks for a number per segment, "which segment should get the new shoes?" for a segment.
pub fn names_a_measure(words: &[String]) -> bool {
    words.iter().any(|word| MEASURE_WORDS.contains(&word.as_str())) || says_a_number_phrase(words)
}

fn says_a_number_phrase(words: &[String]) -> bool {
    NUMBER_PHRASES.iter().any(|phrase| {
        // "how much they like ..." is a degree of liking, not an amount.
        phrase_ends(words, phrase).any(|end| {
            !words.get(end).is_some_and(|next| ["they", "he", "she", "it", "we", "you"].contains(&next.as_str()))
        })
    })
}

/// Where each occurrence of `phrase` (lower case, words apart) in `words` ends: the index of the word after it.
fn phrase_ends<'a>(words: &'a [String], phrase: &'a str) -> impl Iterator<Item = usize> + 'a {
    let length = phrase.split(' ').count();
    words
        .windows(length)
        .enumerate()
        .filter(move |(_, window)| window.iter().map(String::as_str).eq(phrase.split(' ')))
        .map(move |(at, _)| at + length)
}

/// The question with its values masked, for finding examples of the same shape (DAIL-SQL): numbers become `N`,
/// and words naming a product, colour, segment or country become `PRODUCT`, `COLOR`, `SEGMENT` or `COUNTRY`.
pub fn masked(question: &str, values: &DataValues) -> String {
    let tokens = tokens(question);
    let mut out: Vec<String> = tokens.iter().map(|t| t.lower.clone()).collect();
    let mut used = vec![false; tokens.len()];
    let probe = Grounding::default();
    for (list, mask) in [(&values.products, "PRODUCT"), (&values.colors, "COLOR"), (&values.segments, "SEGMENT")] {
        for (start, span, _) in probe.match_values(&tokens, list, &mut used) {
            out[start] = mask.to_owned();
            for word in out.iter_mut().skip(start + 1).take(span.saturating_sub(1)) {
                word.clear();
            }
        }
    }
    for (index, token) in tokens.iter().enumerate() {
        let country =
            COUNTRIES.iter().any(|(code, names)| names.contains(&token.lower.as_str()) || token.text == *code);
        if country && (token.lower.len() > 3 || token.text.chars().all(|c| c.is_ascii_uppercase())) {
            out[index] = "COUNTRY".to_owned();
        } else if number_of(&token.lower).is_some() && !matches!(token.lower.as_str(), "a" | "an") {
            out[index] = "N".to_owned();
        }
    }
    out.retain(|word| !word.is_empty());
    out.join(" ")
}

/// The data's value as words to embed: `t_shirts` → "t shirts".
pub fn value_text(value: &str) -> String {
    value.replace(['_', '-'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> DataValues {
        DataValues {
            products: ["socks", "t_shirts", "shoes", "watches", "jewelry", "running_gear", "yoga_wear"]
                .map(String::from)
                .to_vec(),
            colors: ["black", "gold", "navy", "red"].map(String::from).to_vec(),
            countries: ["PL", "GB", "US", "DE", "FR"].map(String::from).to_vec(),
            segments: ["VIP Loyalty", "Churn Recovery", "Standard Promo"].map(String::from).to_vec(),
        }
    }

    fn day(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
    }

    fn ground(question: &str) -> Grounding {
        Grounding::of(question, &values(), day("2026-06-29"))
    }

    fn clauses(args: serde_json::Value) -> Vec<Clause> {
        serde_json::from_value(args).unwrap()
    }

    #[test]
    fn a_call_must_use_what_the_question_names() {
        let grounding = ground("Watch buyers, but leave out anyone in Germany");
        let only_germany = clauses(serde_json::json!([
            {"id": "c1", "type": "profile", "field": "country", "op": "=", "value": "DE"}
        ]));
        assert_eq!(grounding.uncovered(&only_germany, None).words(), ["product watches", "event_type purchase"]);
        // A product in the intent is a taste; the purchase is still a condition.
        assert_eq!(grounding.uncovered(&only_germany, Some("fine watches")).words(), ["event_type purchase"]);
        let both = clauses(serde_json::json!([
            {"id": "c1", "type": "profile", "field": "country", "op": "=", "value": "DE"},
            {"id": "c2", "type": "event", "event_type": "purchase", "products": ["watches"]}
        ]));
        assert!(grounding.uncovered(&both, None).is_empty());
        // An interest names the product as well as a purchase does.
        let grounding = ground("VIP Loyalty customers interested in watches");
        let interest = clauses(serde_json::json!([
            {"id": "c1", "type": "profile", "field": "segment", "op": "=", "value": "VIP Loyalty"},
            {"id": "c2", "type": "profile", "field": "interests", "op": "contains", "value": "watches"}
        ]));
        assert!(grounding.uncovered(&interest, None).is_empty());
    }

    #[test]
    fn masking_keeps_the_shape_of_a_question() {
        assert_eq!(
            masked("Customers from Britain who bought T-shirts in gold in the last 60 days", &values()),
            "customers from COUNTRY who bought PRODUCT in COLOR in the last N days"
        );
        assert_eq!(masked("VIP Loyalty members", &values()), "SEGMENT members");
    }

    #[test]
    fn countries_by_name_demonym_and_code() {
        assert_eq!(ground("Customers from Britain who bought t-shirts").found.countries, ["GB"]);
        assert_eq!(ground("UK shoppers").found.countries, ["GB"]);
        assert_eq!(ground("Polish buyers and customers in Poland").found.countries, ["PL"]);
        let mut both = ground("people from PL or the US").found.countries;
        both.sort();
        assert_eq!(both, ["PL", "US"]);
        // "us" as a pronoun is not the United States.
        assert!(ground("customers who bought from us").found.countries.is_empty());
        // A country the data lacks is not offered.
        assert!(ground("customers in Spain").found.countries.is_empty());
    }

    #[test]
    fn products_colours_and_segments_by_normalised_text() {
        let g = ground("who bought T-Shirts or tees in gold, VIPs only");
        assert_eq!(g.found.products, ["t_shirts"]);
        assert_eq!(g.found.colors, ["gold"]);
        assert_eq!(g.found.segments, ["VIP Loyalty"]);
        assert_eq!(ground("running gear buyers").found.products, ["running_gear"]);
        assert_eq!(ground("a watch or some jewelry").found.products, ["watches", "jewelry"]);
        assert_eq!(ground("people who put a watch in the cart").event_types, [EventType::AddToCart]);
    }

    /// Numbers and rankings of groups are number questions; requests for people are not, whatever measure words
    /// they hold.
    #[test]
    fn a_question_asks_for_a_number_or_for_people() {
        for question in [
            "how many shoppers live in Denmark?",
            "On average, how much does a buyer spend?",
            "Which market has the most buyers?",
            "what product sold the most units last month?",
            "Gross sales by quarter for 2025",
            "Show me the weekly revenue trend",
            "cart conversion for Standard Promo",
            "Rank the segments by orders",
            "total number of returns in May",
            "Net revenue from customers who bought shoes",
        ] {
            assert!(super::asks_for_a_number(question), "{question}");
        }
        for question in [
            "Customers who have spent more than 500 in total",
            "Find customers with an average order above 100",
            "Who is our top spender?",
            "Which customers are into fashion?",
            "Show me customers who bought socks",
            "What's the email address of customer 17?",
            "people from Poland who bought shoes",
            "minimalists who have spent more than 1,000",
            "forget the taste, just rank them by spend",
            "Show me the full profiles of customers 12 and 13, with their favourite colours",
        ] {
            assert!(!super::asks_for_a_number(question), "{question}");
        }
    }

    #[test]
    fn time_phrases_count_back_from_the_data_s_last_day() {
        assert_eq!(ground("bought in the last 60 days").days, [60]);
        assert_eq!(ground("bought in the last 6 months").days, [180]);
        assert_eq!(ground("viewed over the past two weeks").days, [14]);
        assert_eq!(ground("bought last month").days, [30]);
        assert_eq!(ground("bought this year").days, [180], "2026-01-01 .. 2026-06-29");
        assert_eq!(ground("bought since March").days, [121], "2026-03-01 .. 2026-06-29");
        let may = (NaiveDate::from_ymd_opt(2026, 5, 1), NaiveDate::from_ymd_opt(2026, 5, 31));
        assert_eq!(ground("bought in May 2026").periods, [may]);
        let first_quarter = (NaiveDate::from_ymd_opt(2026, 1, 1), NaiveDate::from_ymd_opt(2026, 3, 31));
        assert_eq!(ground("sales in the first quarter of 2026").periods, [first_quarter]);
        assert_eq!(ground("orders during the 1st quarter").periods, [first_quarter], "the latest one begun");
        assert_eq!(ground("bought in May").periods, [may], "the latest May up to the data's last day");
        assert_eq!(
            ground("bought in 2025").periods,
            [(NaiveDate::from_ymd_opt(2025, 1, 1), NaiveDate::from_ymd_opt(2025, 12, 31))]
        );
        assert_eq!(
            ground("viewed in Q1").periods,
            [(NaiveDate::from_ymd_opt(2026, 1, 1), NaiveDate::from_ymd_opt(2026, 3, 31))]
        );
        assert_eq!(
            ground("bought in December").periods,
            [(NaiveDate::from_ymd_opt(2025, 12, 1), NaiveDate::from_ymd_opt(2025, 12, 31))],
            "a month after the data's last day is last year's"
        );
    }

    #[test]
    fn negated_verbs_put_their_clause_in_exclude() {
        let clause = |value: serde_json::Value| -> Clause { serde_json::from_value(value).unwrap() };
        let g = ground("customers who added something to their cart but never bought anything");
        let cart = clause(serde_json::json!({"type": "event", "event_type": "add_to_cart"}));
        let bought = clause(serde_json::json!({"type": "event", "event_type": "purchase"}));
        assert_eq!(g.wrong_side(&cart, false), None);
        assert_eq!(g.wrong_side(&bought, true), None);
        assert!(g.wrong_side(&cart, true).unwrap().contains("put that add_to_cart clause in include"));
        assert!(g.wrong_side(&bought, false).unwrap().contains("put that purchase clause in exclude"));
        assert!(
            g.hint_line().unwrap().contains("\"never bought\" = exclude event_type purchase"),
            "{:?}",
            g.hint_line()
        );
        let g = ground("people who viewed jeans and didn't buy them");
        assert!(g.wrong_side(&bought, false).is_some());
        // The object negated, not the verb: excluding purchases of shoes is meant.
        let g = ground("customers who bought socks but not shoes");
        assert_eq!(g.wrong_side(&bought, true), None);
        // Both sides named: either placement may be meant.
        let g = ground("bought socks before but have not bought anything since March");
        assert_eq!(g.wrong_side(&bought, false), None);
    }

    #[test]
    fn a_refinement_traces_to_the_audience_it_edits_and_windows_have_some_give() {
        let clause = |value: serde_json::Value| -> Clause { serde_json::from_value(value).unwrap() };
        let current = AudienceDefinition::from_json(
            &serde_json::json!({"version": 1, "limit": 10, "include": [
                {"type": "event", "event_type": "view", "products": ["shoes"], "within_days": 30},
                {"type": "profile", "field": "country", "op": "in", "value": ["PL", "DE"]}]})
            .to_string(),
        )
        .unwrap();
        let mut g = ground("widen the window to 60 days and add the US");
        g.inherit(&current);
        let widened = clause(
            serde_json::json!({"type": "event", "event_type": "view", "products": ["shoes"], "within_days": 60}),
        );
        assert_eq!(g.trace(&widened), Traced::Kept);
        let countries =
            clause(serde_json::json!({"type": "profile", "field": "country", "op": "in", "value": ["PL", "DE", "US"]}));
        assert_eq!(g.trace(&countries), Traced::Kept);
        // "The last 6 months" is 180 days here; 182 or 183 elsewhere.
        let g = ground("bought shoes in the last 6 months");
        let months = clause(
            serde_json::json!({"type": "event", "event_type": "purchase", "products": ["shoes"], "within_days": 183}),
        );
        assert_eq!(g.trace(&months), Traced::Kept);
        // "More than 3 times" is at least 4.
        let g = ground("bought socks more than 3 times");
        let times = clause(
            serde_json::json!({"type": "event", "event_type": "purchase", "products": ["socks"], "min_count": 4}),
        );
        assert_eq!(g.trace(&times), Traced::Kept);
        // Curly apostrophes negate as straight ones do.
        let g = ground("customers who didn\u{2019}t buy anything");
        let bought = clause(serde_json::json!({"type": "event", "event_type": "purchase"}));
        assert!(g.wrong_side(&bought, false).is_some());
        // "Excluding" before a verb negates it.
        let g = ground("everyone excluding anyone who purchased recently");
        assert_eq!(g.wrong_side(&bought, true), None);
    }

    #[test]
    fn profile_clauses_on_the_wrong_side_are_named() {
        let clause = |value: serde_json::Value| -> Clause { serde_json::from_value(value).unwrap() };
        let us = clause(serde_json::json!({"type": "profile", "field": "country", "op": "=", "value": "US"}));
        let vip = clause(serde_json::json!({"type": "profile", "field": "segment", "op": "=", "value": "VIP Loyalty"}));
        let g = ground("VIP Loyalty customers outside the US");
        assert_eq!(g.wrong_side(&us, true), None);
        assert!(g.wrong_side(&us, false).is_some());
        assert_eq!(g.wrong_side(&vip, false), None);
        assert!(g.wrong_side(&vip, true).is_some());
        let not_us = clause(serde_json::json!({"type": "profile", "field": "country", "op": "!=", "value": "US"}));
        assert_eq!(g.wrong_side(&not_us, false), None, "!= in include leaves out as exclude does");
        let churned = clause(serde_json::json!({"type": "profile", "field": "churned", "op": "=", "value": true}));
        let g = ground("Churned customers in the US");
        assert_eq!(g.wrong_side(&churned, false), None);
        assert!(g.wrong_side(&churned, true).is_some());
        let g = ground("customers who have not churned");
        assert!(g.wrong_side(&churned, false).is_some());
        assert_eq!(g.wrong_side(&churned, true), None);
        let g = ground("active customers in PL");
        assert!(g.wrong_side(&churned, false).is_some());
    }

    #[test]
    fn numbers_money_and_counts() {
        let g = ground("spent over $1,500 and bought socks at least twice");
        assert!(g.numbers.contains(&1500.0) && g.numbers.contains(&2.0), "{:?}", g.numbers);
        assert!(ground("spent more than 2k").numbers.contains(&2000.0));
        assert!(ground("in their 30s").numbers.contains(&39.0));
    }

    #[test]
    fn the_comparison_before_a_number_is_read() {
        assert_eq!(ground("only those who have bought at least twice in total").bound_of(2.0), Some(Op::Gte));
        assert_eq!(ground("spent more than 300").bound_of(300.0), Some(Op::Gt));
        assert_eq!(ground("3 or more orders").bound_of(3.0), Some(Op::Gte));
        assert_eq!(ground("aged under 30").bound_of(30.0), Some(Op::Lt));
        assert_eq!(ground("customers aged 30").bound_of(30.0), None);
    }

    /// Recorded from the local 1.5B model: "exclude the ones who like luxury" read as asking for luxury lovers, so
    /// the right clause was sent back and then moved to the wrong side.
    #[test]
    fn a_verb_of_exclusion_reaches_over_a_relative_clause() {
        let g = ground("exclude the ones who like luxury");
        let luxury = serde_json::json!({"type": "profile", "field": "likes_luxury", "op": "=", "value": true});
        let clause: Clause = serde_json::from_value(luxury).unwrap();
        assert_eq!(g.wrong_side(&clause, true), None, "excluded, as the question says");
        assert!(g.wrong_side(&clause, false).is_some(), "included is the wrong side");
        let g = ground("customers in Germany who like luxury");
        assert_eq!(g.wrong_side(&clause, false), None);
    }

    #[test]
    fn product_like_words_without_a_match_are_reported() {
        assert_eq!(ground("customers who bought kayaks last month").unmatched, ["kayaks"]);
        assert!(ground("customers who bought socks twice").unmatched.is_empty());
        assert!(ground("customers who bought something recently").unmatched.is_empty());
        assert_eq!(ground("people who bought designer handbags").unmatched, ["designer handbags"]);
        assert!(ground("people who bought gold watches").unmatched.is_empty());
        // A question about purchases, not a product (the recorded run answered it "nothing matches \"does\"").
        assert!(ground("On average, how many purchases does a customer who buys make?").unmatched.is_empty());
        // Words for events themselves (the recorded run answered it "nothing matches \"events\"").
        assert!(ground("how many add-to-cart events were there in the last 7 days?").unmatched.is_empty());
    }

    #[test]
    fn clauses_trace_to_the_question_or_are_named() {
        let clause = |value: serde_json::Value| -> Clause { serde_json::from_value(value).unwrap() };
        let g = ground("UK customers who bought t-shirts in the last 60 days");
        let asked = clause(
            serde_json::json!({"type": "event", "event_type": "purchase", "products": ["t_shirts"], "within_days": 60}),
        );
        assert_eq!(g.untraced(&asked), None);
        assert_eq!(
            g.untraced(&clause(serde_json::json!({"type": "profile", "field": "country", "op": "=", "value": "GB"}))),
            None
        );
        // The three clauses the probe's model added that nobody asked for.
        for unasked in [
            serde_json::json!({"type": "profile", "field": "age", "op": "=", "value": 25}),
            serde_json::json!({"type": "profile", "field": "total_spent", "op": ">", "value": 100}),
            serde_json::json!({"type": "profile", "field": "churned", "op": "=", "value": false}),
        ] {
            assert!(g.untraced(&clause(unasked.clone())).is_some(), "{unasked}");
        }
        let other_window = clause(serde_json::json!({"type": "event", "event_type": "purchase", "within_days": 90}));
        assert_eq!(g.untraced(&other_window).as_deref(), Some("within_days 90"));
        // An event clause keeps what was asked and loses only the window nobody asked for.
        let g = ground("customers who bought a watch or jewelry priced over 1000");
        let added =
            clause(serde_json::json!({"type": "event", "event_type": "purchase", "products": ["watches", "jewelry"],
                                               "min_price": 1000, "within_days": 365}));
        let Traced::Trimmed { clause: trimmed, removed } = g.trace(&added) else { panic!("{:?}", g.trace(&added)) };
        assert_eq!(removed, ["a window of the last 365 days"]);
        assert_eq!(
            serde_json::to_value(&trimmed).unwrap(),
            serde_json::json!({"type": "event", "event_type": "purchase", "products": ["watches", "jewelry"], "min_price": 1000.0})
        );
        // A question that names no product: products the model listed are taken off, the cart clause stays.
        let g = ground("customers who added something to their cart but never bought anything");
        let listed =
            clause(serde_json::json!({"type": "event", "event_type": "add_to_cart", "products": ["socks", "shoes"],
                                                "min_price": 0, "within_days": 36600}));
        let Traced::Trimmed { clause: trimmed, .. } = g.trace(&listed) else { panic!("{:?}", g.trace(&listed)) };
        assert_eq!(
            serde_json::to_value(&trimmed).unwrap(),
            serde_json::json!({"type": "event", "event_type": "add_to_cart"})
        );
        // A question that names products: a clause on other products is dropped.
        let g = ground("customers who bought socks");
        let other = clause(serde_json::json!({"type": "event", "event_type": "purchase", "products": ["shoes"]}));
        assert!(matches!(g.trace(&other), Traced::Dropped(_)));
    }
}
