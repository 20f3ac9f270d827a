//! The audience definition: who is in it (include and exclude clauses), who comes first (an optional intent), and
//! how many members an answer lists. Its canonical JSON form (versioned, stable field order) is what `--json`
//! prints, saved audiences store and `ask --from` reads; its plain-language form is generated here, never by the LLM.
//!
//! Clauses are typed where a marketer's words are common ("bought socks in the last 60 days", "from PL", "spent over
//! 500", "churned") and SQL where they are not: `Event::sql` and `Clause::Sql` are boolean expressions that the SQL
//! guard checks against the events or profiles columns. Behaviour, money and recency belong in clauses; the intent
//! is for tastes, and only ranks members (see `compile`).

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The version of the canonical JSON form; a definition of another version is refused, not guessed at.
pub const DEFINITION_VERSION: u32 = 1;
/// Members listed when a definition does not say.
pub const DEFAULT_LIMIT: usize = 10;
/// Most members one answer lists: the list goes to the model (the export has everyone).
pub const MAX_LIMIT: usize = 50;
/// Most clauses one definition may hold: each one is a join or a filter in every query.
pub const MAX_CLAUSES: usize = 12;
/// Longest intent: it is embedded as one query text, like a short description of tastes.
pub const MAX_INTENT_CHARS: usize = 300;
/// Longest text value of a clause (a product, a colour, a country, a segment): every later model call resends the
/// definition, so a runaway value must not grow every request.
pub const MAX_VALUE_CHARS: usize = 200;
/// Most values in one list of a clause (products, colours, an `in` list).
pub const MAX_LIST_VALUES: usize = 50;

/// An audience definition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudienceDefinition {
    pub version: u32,
    /// Every include clause holds for a member.
    #[serde(default)]
    pub include: Vec<Clause>,
    /// No exclude clause holds for a member.
    #[serde(default)]
    pub exclude: Vec<Clause>,
    /// Tastes to rank the members by, in plain words; without one, members are listed by total spent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<String>,
    pub limit: usize,
}

impl Default for AudienceDefinition {
    fn default() -> Self {
        Self {
            version: DEFINITION_VERSION,
            include: Vec::new(),
            exclude: Vec::new(),
            intent: None,
            limit: DEFAULT_LIMIT,
        }
    }
}

/// One clause, with the id follow-ups use to remove it (`c1`, `c2`, ... in the order they were added).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Clause {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    #[serde(flatten)]
    pub rule: Rule,
}

/// What a clause says.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Rule {
    /// The customer has events like this: of this type, for these products and colours, in this price range, at
    /// least `min_count` times, within the `within_days` days up to the data's last day, and matching `sql`.
    Event {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_type: Option<EventType>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        products: Vec<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        colors: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min_price: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_price: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        within_days: Option<u32>,
        /// The first day (UTC, inclusive) of a calendar period the events fall in ("in May 2026").
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<NaiveDate>,
        /// The last day (UTC, inclusive) of that period.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until: Option<NaiveDate>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min_count: Option<u32>,
        /// A further condition over the events columns, checked by the SQL guard.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sql: Option<String>,
    },
    /// A profile field compared with a value.
    Profile { field: ProfileField, op: Op, value: Value },
    /// A boolean SQL expression over the profiles columns, checked by the SQL guard.
    Sql { condition: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    View,
    AddToCart,
    Purchase,
}

impl EventType {
    pub const ALL: [EventType; 3] = [Self::View, Self::AddToCart, Self::Purchase];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::View => "view",
            Self::AddToCart => "add_to_cart",
            Self::Purchase => "purchase",
        }
    }
}

/// The profile fields a clause may compare; their names are the `profiles` columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProfileField {
    Country,
    Age,
    FavoriteColor,
    TotalSpent,
    OrderCount,
    ReturnCount,
    RecencyDays,
    RScore,
    FScore,
    MScore,
    Churned,
    Segment,
    LikesLuxury,
    Interests,
    PreferredColors,
    /// The purchase model's probability that the customer is still active (`ingest::predict`).
    PAlive,
    ExpectedPurchases,
    ExpectedAvgSpend,
    #[serde(rename = "clv_12m")]
    Clv12m,
}

/// What kind of value a field holds, which decides the operators and values it takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldKind {
    Text,
    Number,
    Bool,
    TextList,
}

impl ProfileField {
    pub const ALL: [ProfileField; 19] = [
        Self::Country,
        Self::Age,
        Self::FavoriteColor,
        Self::TotalSpent,
        Self::OrderCount,
        Self::ReturnCount,
        Self::RecencyDays,
        Self::RScore,
        Self::FScore,
        Self::MScore,
        Self::Churned,
        Self::Segment,
        Self::LikesLuxury,
        Self::Interests,
        Self::PreferredColors,
        Self::PAlive,
        Self::ExpectedPurchases,
        Self::ExpectedAvgSpend,
        Self::Clv12m,
    ];

    /// The `profiles` column.
    pub fn column(self) -> &'static str {
        match self {
            Self::Country => "country",
            Self::Age => "age",
            Self::FavoriteColor => "favorite_color",
            Self::TotalSpent => "total_spent",
            Self::OrderCount => "order_count",
            Self::ReturnCount => "return_count",
            Self::RecencyDays => "recency_days",
            Self::RScore => "r_score",
            Self::FScore => "f_score",
            Self::MScore => "m_score",
            Self::Churned => "churned",
            Self::Segment => "segment",
            Self::LikesLuxury => "likes_luxury",
            Self::Interests => "interests",
            Self::PreferredColors => "preferred_colors",
            Self::PAlive => "p_alive",
            Self::ExpectedPurchases => "expected_purchases",
            Self::ExpectedAvgSpend => "expected_avg_spend",
            Self::Clv12m => "clv_12m",
        }
    }

    pub fn kind(self) -> FieldKind {
        match self {
            Self::Country | Self::FavoriteColor | Self::Segment => FieldKind::Text,
            Self::Churned | Self::LikesLuxury => FieldKind::Bool,
            Self::Interests | Self::PreferredColors => FieldKind::TextList,
            _ => FieldKind::Number,
        }
    }
}

/// A comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    #[serde(rename = "=")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Gte,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Lte,
    /// One of a list of values.
    #[serde(rename = "in")]
    In,
    /// A list field holds the value.
    #[serde(rename = "contains")]
    Contains,
}

impl Op {
    pub fn symbol(self) -> &'static str {
        match self {
            Self::Eq => "=",
            Self::Ne => "!=",
            Self::Gt => ">",
            Self::Gte => ">=",
            Self::Lt => "<",
            Self::Lte => "<=",
            Self::In => "in",
            Self::Contains => "contains",
        }
    }
}

/// A definition that cannot be used, and why, in one sentence for the model (or the user).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid<T>(message: impl Into<String>) -> Result<T, Invalid> {
    Err(Invalid(message.into()))
}

impl AudienceDefinition {
    /// Reads a definition from its canonical JSON, checking it; clauses without an id get one.
    pub fn from_json(text: &str) -> Result<Self, Invalid> {
        let mut definition: Self =
            serde_json::from_str(text).map_err(|e| Invalid(format!("not an audience definition: {e}")))?;
        if definition.version != DEFINITION_VERSION {
            return invalid(format!(
                "audience definition version {} is not supported (this release reads version {DEFINITION_VERSION})",
                definition.version
            ));
        }
        definition.normalize();
        definition.assign_ids();
        definition.validate()?;
        Ok(definition)
    }

    /// The canonical JSON form.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// All clauses with whether each excludes.
    pub fn clauses(&self) -> impl Iterator<Item = (&Clause, bool)> {
        self.include.iter().map(|c| (c, false)).chain(self.exclude.iter().map(|c| (c, true)))
    }

    /// Writes values the way the data holds them, so the canonical form does not depend on how they were typed:
    /// countries upper-case, text trimmed.
    pub fn normalize(&mut self) {
        for clause in self.include.iter_mut().chain(self.exclude.iter_mut()) {
            match &mut clause.rule {
                Rule::Profile { field, value, .. } => {
                    let country = *field == ProfileField::Country;
                    let fix = |text: &str| if country { text.trim().to_uppercase() } else { text.trim().to_owned() };
                    match value {
                        Value::String(text) => *text = fix(text),
                        Value::Array(items) => {
                            for item in items {
                                if let Value::String(text) = item {
                                    *text = fix(text);
                                }
                            }
                        }
                        _ => {}
                    }
                }
                Rule::Event { products, colors, .. } => {
                    for value in products.iter_mut().chain(colors.iter_mut()) {
                        *value = value.trim().to_owned();
                    }
                }
                Rule::Sql { condition } => *condition = condition.trim().to_owned(),
            }
        }
        if let Some(intent) = &mut self.intent {
            *intent = intent.trim().to_owned();
        }
    }

    /// Gives every clause without an id the next free `cN`.
    pub fn assign_ids(&mut self) {
        let mut next = self
            .clauses()
            .filter_map(|(clause, _)| clause.id.strip_prefix('c')?.parse::<u32>().ok())
            .max()
            .unwrap_or(0);
        for clause in self.include.iter_mut().chain(self.exclude.iter_mut()) {
            if clause.id.is_empty() {
                next += 1;
                clause.id = format!("c{next}");
            }
        }
    }

    /// Checks everything that can be checked without the database: counts, ids, limits, and each clause's
    /// fields, operators and values. SQL fragments are checked by the guard when the definition is compiled.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.include.len() + self.exclude.len() > MAX_CLAUSES {
            return invalid(format!("at most {MAX_CLAUSES} clauses; combine or drop some"));
        }
        if !(1..=MAX_LIMIT).contains(&self.limit) {
            return invalid(format!("limit must be between 1 and {MAX_LIMIT}"));
        }
        if let Some(intent) = &self.intent {
            if intent.trim().is_empty() {
                return invalid("the intent is empty; leave it out to rank by total spent");
            }
            if intent.chars().count() > MAX_INTENT_CHARS {
                return invalid(format!(
                    "the intent is longer than {MAX_INTENT_CHARS} characters; describe tastes briefly"
                ));
            }
        }
        let mut ids = std::collections::HashSet::new();
        for (clause, _) in self.clauses() {
            if !ids.insert(clause.id.as_str()) {
                return invalid(format!("clause id {} is used twice", clause.id));
            }
            clause.rule.validate().map_err(|Invalid(reason)| Invalid(format!("clause {}: {reason}", clause.id)))?;
        }
        Ok(())
    }

    /// The plain-language form, e.g. "Customers who bought socks in the last 60 days, from PL, excluding churned
    /// customers; ranked by: likes luxury".
    pub fn explain(&self) -> String {
        let mut text = String::from("Customers");
        let includes: Vec<String> = self.include.iter().map(|c| c.rule.predicate()).collect();
        if includes.is_empty() {
            text = String::from("All customers");
        } else {
            text.push(' ');
            text.push_str(&includes.join(", "));
        }
        if !self.exclude.is_empty() {
            let excludes: Vec<String> = self.exclude.iter().map(|c| c.rule.noun()).collect();
            text.push_str(", excluding ");
            text.push_str(&join_or(&excludes, "and"));
        }
        match &self.intent {
            Some(intent) => text.push_str(&format!("; ranked by: {}", intent.trim())),
            None => text.push_str("; ranked by total spent"),
        }
        text
    }
}

impl Rule {
    fn validate(&self) -> Result<(), Invalid> {
        match self {
            Rule::Event {
                products, colors, min_price, max_price, within_days, since, until, min_count, sql, ..
            } => {
                for (name, list) in [("products", products), ("colors", colors)] {
                    if list.iter().any(|value| value.trim().is_empty()) {
                        return invalid(format!("{name} holds an empty value"));
                    }
                    if list.len() > MAX_LIST_VALUES {
                        return invalid(format!("at most {MAX_LIST_VALUES} {name}"));
                    }
                    if let Some(long) = list.iter().find(|value| value.chars().count() > MAX_VALUE_CHARS) {
                        return invalid(format!(
                            "{name} holds a value of {} characters (at most {MAX_VALUE_CHARS}): {}",
                            long.chars().count(),
                            shorten(long)
                        ));
                    }
                }
                for (name, price) in [("min_price", min_price), ("max_price", max_price)] {
                    if price.is_some_and(|p| !p.is_finite() || p < 0.0) {
                        return invalid(format!("{name} must be a non-negative number"));
                    }
                }
                if let (Some(min), Some(max)) = (min_price, max_price)
                    && min > max
                {
                    return invalid(format!("min_price {min} is above max_price {max}"));
                }
                if within_days.is_some_and(|days| days == 0 || days > 36_600) {
                    return invalid("within_days must be between 1 and 36600");
                }
                if let (Some(since), Some(until)) = (since, until)
                    && since > until
                {
                    return invalid(format!("since {since} is after until {until}"));
                }
                if min_count.is_some_and(|count| count == 0) {
                    return invalid("min_count must be at least 1");
                }
                if sql.as_deref().is_some_and(|sql| sql.trim().is_empty()) {
                    return invalid("sql is empty; leave it out");
                }
                Ok(())
            }
            Rule::Profile { field, op, value } => check_comparison(*field, *op, value),
            Rule::Sql { condition } => {
                if condition.trim().is_empty() {
                    return invalid("the condition is empty");
                }
                Ok(())
            }
        }
    }

    /// What the clause says of a customer, after "Customers ...".
    pub fn predicate(&self) -> String {
        match self {
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
                sql,
            } => {
                let object = if products.is_empty() { "anything".to_owned() } else { join_or(products, "or") };
                let mut text = match event_type {
                    Some(EventType::Purchase) => format!("who bought {object}"),
                    Some(EventType::View) => format!("who viewed {object}"),
                    Some(EventType::AddToCart) => format!("who added {object} to the cart"),
                    None if products.is_empty() => "with any activity".to_owned(),
                    None => format!("who interacted with {object}"),
                };
                if !colors.is_empty() {
                    text.push_str(&format!(" in {}", join_or(colors, "or")));
                }
                match (min_price, max_price) {
                    (Some(min), Some(max)) => text.push_str(&format!(" priced {} to {}", number(*min), number(*max))),
                    (Some(min), None) => text.push_str(&format!(" priced at least {}", number(*min))),
                    (None, Some(max)) => text.push_str(&format!(" priced at most {}", number(*max))),
                    (None, None) => {}
                }
                if let Some(count) = min_count.filter(|count| *count > 1) {
                    text.push_str(&format!(" at least {count} times"));
                }
                if let Some(days) = within_days {
                    text.push_str(&match days {
                        1 => " on the last day".to_owned(),
                        days => format!(" in the last {days} days"),
                    });
                }
                match (since, until) {
                    (Some(since), Some(until)) => text.push_str(&format!(" between {since} and {until}")),
                    (Some(since), None) => text.push_str(&format!(" since {since}")),
                    (None, Some(until)) => text.push_str(&format!(" up to {until}")),
                    (None, None) => {}
                }
                if let Some(sql) = sql {
                    text.push_str(&format!(" where `{}`", sql.trim()));
                }
                text
            }
            Rule::Profile { field, op, value } => profile_predicate(*field, *op, value),
            Rule::Sql { condition } => format!("matching `{}`", condition.trim()),
        }
    }

    /// The customers the clause describes, after "excluding ...".
    pub fn noun(&self) -> String {
        let predicate = self.predicate();
        match self {
            Rule::Profile { field: ProfileField::Churned, op: Op::Eq, value: Value::Bool(true) } => {
                "churned customers".to_owned()
            }
            Rule::Profile { field: ProfileField::Churned, op: Op::Eq, value: Value::Bool(false) } => {
                "active customers".to_owned()
            }
            _ if predicate.starts_with("who ") || predicate.starts_with("whose ") => format!("those {predicate}"),
            _ => format!("customers {predicate}"),
        }
    }
}

/// Checks that `op` and `value` fit `field`.
fn check_comparison(field: ProfileField, op: Op, value: &Value) -> Result<(), Invalid> {
    let name = field.column();
    let expect = |what: &str| Invalid(format!("{name} {} takes {what}", op.symbol()));
    match (field.kind(), op) {
        (FieldKind::TextList, Op::Contains) => check_scalar(FieldKind::TextList, value)
            .map_err(|_| expect(&format!("a string of 1 to {MAX_VALUE_CHARS} characters"))),
        (FieldKind::TextList, _) => invalid(format!("{name} is a list: use op \"contains\"")),
        (_, Op::Contains) => invalid(format!("{name} is not a list: use =, != or in")),
        (kind, Op::In) => match value {
            Value::Array(items) if !items.is_empty() && items.len() <= MAX_LIST_VALUES => {
                items.iter().try_for_each(|item| check_scalar(kind, item).map_err(|_| expect(kind_values(kind))))
            }
            _ => Err(expect(&format!("a list of 1 to {MAX_LIST_VALUES} values"))),
        },
        (FieldKind::Bool, Op::Eq | Op::Ne) => check_scalar(FieldKind::Bool, value).map_err(|_| expect("true or false")),
        (FieldKind::Bool, _) => invalid(format!("{name} is true or false: use = or !=")),
        (FieldKind::Text, Op::Eq | Op::Ne) => check_scalar(FieldKind::Text, value)
            .map_err(|_| expect(&format!("a string of 1 to {MAX_VALUE_CHARS} characters"))),
        (FieldKind::Text, _) => invalid(format!("{name} is text: use =, != or in")),
        (FieldKind::Number, _) => check_scalar(FieldKind::Number, value).map_err(|_| expect("a number")),
    }
}

fn kind_values(kind: FieldKind) -> &'static str {
    match kind {
        FieldKind::Text | FieldKind::TextList => "strings",
        FieldKind::Number => "numbers",
        FieldKind::Bool => "true or false",
    }
}

fn check_scalar(kind: FieldKind, value: &Value) -> Result<(), ()> {
    let fits = match kind {
        FieldKind::Text | FieldKind::TextList => {
            value.as_str().is_some_and(|text| !text.trim().is_empty() && text.chars().count() <= MAX_VALUE_CHARS)
        }
        FieldKind::Number => value.as_f64().is_some_and(f64::is_finite),
        FieldKind::Bool => value.is_boolean(),
    };
    if fits { Ok(()) } else { Err(()) }
}

fn profile_predicate(field: ProfileField, op: Op, value: &Value) -> String {
    let values = |value: &Value| -> Vec<String> {
        match value {
            Value::Array(items) => items.iter().map(plain).collect(),
            other => vec![plain(other)],
        }
    };
    let list = join_or(&values(value), "or");
    let compare = |op: Op| -> &'static str {
        match op {
            Op::Gt => "over",
            Op::Gte => "at least",
            Op::Lt => "under",
            Op::Lte => "at most",
            Op::Ne => "other than",
            _ => "",
        }
    };
    let amount = |op: Op| -> String {
        match compare(op) {
            "" => list.clone(),
            word => format!("{word} {list}"),
        }
    };
    let negated = matches!(op, Op::Ne);
    match field {
        ProfileField::Country if negated => format!("not from {list}"),
        ProfileField::Country => format!("from {list}"),
        ProfileField::Segment if negated => format!("not in segment {list}"),
        ProfileField::Segment => format!("in segment {list}"),
        ProfileField::FavoriteColor if negated => format!("whose favorite color is not {list}"),
        ProfileField::FavoriteColor => format!("whose favorite color is {list}"),
        ProfileField::Churned | ProfileField::LikesLuxury => {
            let yes = value.as_bool().unwrap_or(true) != negated;
            match (field, yes) {
                (ProfileField::Churned, true) => "churned".to_owned(),
                (ProfileField::Churned, false) => "active (not churned)".to_owned(),
                (_, true) => "who like luxury".to_owned(),
                (_, false) => "who do not lean to luxury".to_owned(),
            }
        }
        ProfileField::Interests => format!("interested in {list}"),
        ProfileField::PreferredColors => format!("who prefer {list}"),
        ProfileField::TotalSpent => format!("who spent {}", amount(op)),
        ProfileField::Age => format!("aged {}", amount(op)),
        ProfileField::OrderCount => format!("with {} orders", amount(op)),
        ProfileField::ReturnCount => format!("with {} returns", amount(op)),
        ProfileField::RecencyDays => format!("whose last purchase was {} days ago", amount(op)),
        ProfileField::RScore => format!("with R score {}", amount(op)),
        ProfileField::FScore => format!("with F score {}", amount(op)),
        ProfileField::MScore => format!("with M score {}", amount(op)),
        ProfileField::PAlive => format!("with a probability of being active {}", amount(op)),
        ProfileField::ExpectedPurchases => format!("expected to make {} purchases soon", amount(op)),
        ProfileField::ExpectedAvgSpend => format!("with an expected spend per purchase of {}", amount(op)),
        ProfileField::Clv12m => format!("with a predicted 12-month value of {}", amount(op)),
    }
}

/// The start of a long value, for an error message that must not echo all of it.
pub fn shorten(text: &str) -> String {
    const SHOWN: usize = 40;
    match text.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{:?}…", &text[..cut]),
        None => format!("{text:?}"),
    }
}

/// A value as words: strings as they are, numbers without a needless `.0`.
fn plain(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Number(n) => n.as_f64().map_or_else(|| n.to_string(), number),
        other => other.to_string(),
    }
}

/// A number as SQL and plain words write it: whole numbers without a `.0`.
pub(crate) fn number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 { format!("{}", value as i64) } else { format!("{value}") }
}

/// "a", "a or b", "a, b or c".
fn join_or(items: &[String], word: &str) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} {word} {last}", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn definition(value: Value) -> AudienceDefinition {
        AudienceDefinition::from_json(&value.to_string()).unwrap()
    }

    #[test]
    fn the_issue_example_reads_as_written() {
        let d = definition(json!({
            "version": 1,
            "include": [
                {"type": "event", "event_type": "purchase", "products": ["socks"], "within_days": 60},
                {"type": "profile", "field": "country", "op": "=", "value": "PL"}
            ],
            "exclude": [{"type": "profile", "field": "churned", "op": "=", "value": true}],
            "intent": "likes luxury",
            "limit": 10
        }));
        assert_eq!(
            d.explain(),
            "Customers who bought socks in the last 60 days, from PL, excluding churned customers; ranked by: likes luxury"
        );
        let ids: Vec<&str> = d.clauses().map(|(c, _)| c.id.as_str()).collect();
        assert_eq!(ids, ["c1", "c2", "c3"]);
    }

    #[test]
    fn canonical_json_round_trips_and_is_stable() {
        let d = definition(json!({
            "version": 1,
            "include": [{"type": "profile", "field": "total_spent", "op": ">", "value": 500}],
            "limit": 5
        }));
        let text = d.to_json().to_string();
        assert_eq!(
            text,
            r#"{"version":1,"include":[{"id":"c1","type":"profile","field":"total_spent","op":">","value":500}],"exclude":[],"limit":5}"#
        );
        assert_eq!(AudienceDefinition::from_json(&text).unwrap(), d);
    }

    #[test]
    fn bad_definitions_are_refused_with_a_reason() {
        let refuse = |value: Value| AudienceDefinition::from_json(&value.to_string()).unwrap_err().0;
        let base = |clause: Value| json!({"version": 1, "include": [clause], "limit": 10});
        assert!(refuse(json!({"version": 2, "limit": 10})).contains("version 2 is not supported"));
        assert!(
            refuse(base(json!({"type": "profile", "field": "total_spent", "op": ">", "value": "lots"})))
                .contains("total_spent > takes a number")
        );
        assert!(
            refuse(base(json!({"type": "profile", "field": "interests", "op": "=", "value": "x"})))
                .contains("use op \"contains\"")
        );
        assert!(
            refuse(base(json!({"type": "profile", "field": "shoe_size", "op": "=", "value": 42})))
                .contains("not an audience definition")
        );
        assert!(refuse(base(json!({"type": "event", "min_price": 10, "max_price": 5}))).contains("above max_price"));
        assert!(refuse(json!({"version": 1, "limit": 0})).contains("limit must be between 1 and 50"));
    }
}
