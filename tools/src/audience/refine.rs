//! How a refinement's call is read against the audience it edits.
//!
//! A follow-up edits the current audience: its clauses are added, `remove` takes clauses out, and `new` starts
//! over. A small model gets two things wrong here, seen in every recorded refinement chain:
//! - it sends `new` for a follow-up that only narrows ("exclude churned customers"), which throws away the
//!   audience the follow-up was about;
//! - it adds a second country for "same but for France instead", and `country = PL AND country = FR` is nobody.
//!
//! Both are decisions about what the question says, so the program settles them: `new` stands only when the
//! question starts over or reads as a question of its own, and a clause the edit adds on the same profile field (or
//! the same event) as a current clause replaces it when the question says so ("instead", "swap") or when keeping
//! both could only hold nobody (two different values of a field a customer has one of).

use serde_json::Value;

use crate::audience::definition::{AudienceDefinition, Clause, FieldKind, Op, ProfileField, Rule};
use crate::audience::session::Edit;
use crate::grounding::Grounding;

/// Words that start a new audience ("forget that", "new search", "scrap all of this").
const STARTS_OVER: &[&str] = &["forget", "scrap", "scratch", "fresh", "reset", "restart", "anew", "afresh"];
/// Nouns that "new", "different" or "another" make a new audience ("a new search").
const FRESH_NOUNS: &[&str] = &["search", "audience", "list", "question", "query", "segment", "one", "group"];
/// Words that make a question a follow-up of the current audience ("only those in Italy", "exclude churned").
const FOLLOW_UP: &[&str] = &[
    "only",
    "now",
    "those",
    "them",
    "these",
    "ones",
    "they",
    "their",
    "exclude",
    "excluding",
    "except",
    "also",
    "keep",
    "same",
    "instead",
    "just",
    "remove",
    "drop",
    "add",
    "narrow",
    "widen",
    "restrict",
    "limit",
    "leave",
    "too",
    "further",
    "swap",
    "switch",
    "change",
    "replace",
    "still",
];
/// Words that say a clause takes another's place ("same but for France instead", "swap Germany for Austria").
const REPLACES: &[&str] = &["instead", "swap", "switch", "replace", "rather", "change", "changing", "substitute"];
/// Words that take a clause out of the audience ("drop the window", "remove the country filter", "without the
/// intent"). "Exclude" is not one: it adds an exclusion.
const REMOVES: &[&str] =
    &["remove", "removing", "drop", "dropping", "without", "forget", "ignore", "undo", "lose", "loosen", "widen"];

/// What a follow-up's `words` (lower-case, in order) say about the audience it edits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FollowUp {
    /// The question asks for a new audience, or reads as a question of its own.
    pub starts_over: bool,
    /// The question says a clause takes another's place.
    pub replaces: bool,
    /// The question says a clause goes ("drop the window"); without it, or `replaces`, a follow-up takes nothing out.
    pub removes: bool,
}

impl FollowUp {
    pub fn of(words: &[String]) -> Self {
        let has = |set: &[&str]| words.iter().any(|w| set.contains(&w.as_str()));
        let fresh = words.windows(2).any(|pair| {
            matches!(pair[0].as_str(), "new" | "different" | "another") && FRESH_NOUNS.contains(&pair[1].as_str())
        }) || words.windows(2).any(|pair| pair[0] == "start" && pair[1] == "over");
        Self {
            starts_over: has(STARTS_OVER) || fresh || !has(FOLLOW_UP),
            // "same but for jackets" swaps the products, as "instead" does.
            replaces: has(REPLACES)
                || (has(&["same"]) && words.windows(2).any(|pair| pair[0] == "but" && pair[1] == "for")),
            removes: has(REMOVES),
        }
    }
}

/// What settling changed, in words for the answer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Settled {
    pub notes: Vec<String>,
}

/// Settles `args` (a `find_audience` call) against `current` and the question's `follow_up`: rewrites `new` and
/// `remove` in place, and says what it changed. Arguments that do not read as an edit are left for the tool to
/// refuse with its precise reason.
pub fn settle(args: &mut Value, current: &AudienceDefinition, follow_up: FollowUp) -> Settled {
    let mut settled = Settled::default();
    let Ok(edit) = Edit::try_from(args.clone()) else { return settled };
    let Some(object) = args.as_object_mut() else { return settled };
    if edit.new && !follow_up.starts_over {
        object.remove("new");
        settled.notes.push("kept the current audience: the question edits it, it does not start over".to_owned());
    }
    if edit.new && follow_up.starts_over {
        return settled;
    }
    // A follow-up that narrows ("exclude Germany", "only those who spent over 200") takes nothing out: the model's
    // `remove` of every clause turned "exclude Germany" into "everyone but Germany".
    let mut remove = if follow_up.removes || follow_up.replaces { edit.remove.clone() } else { Vec::new() };
    let kept: Vec<String> = current
        .clauses()
        .filter(|(old, _)| edit.remove.contains(&old.id) && !remove.contains(&old.id))
        .map(|(old, _)| old.rule.predicate())
        .collect();
    if !kept.is_empty() {
        settled.notes.push(format!("kept {}: the question takes nothing out", kept.join(", ")));
    }
    let mut restated = Vec::new();
    for (added, exclude) in edit.include.iter().map(|c| (c, false)).chain(edit.exclude.iter().map(|c| (c, true))) {
        for (old, old_exclude) in current.clauses() {
            if old_exclude != exclude || remove.contains(&old.id) || !same_slot(&old.rule, &added.rule) {
                continue;
            }
            if opposite(&old.rule, &added.rule) && !follow_up.replaces {
                // "excluding customers not from US" added to "excluding customers from US" holds nobody: the model
                // restated a clause of the audience the wrong way round.
                settled.notes.push(format!("left out {}: it undoes {}", added.rule.predicate(), old.rule.predicate()));
                restated.push((added.clone(), exclude));
            } else if follow_up.replaces || (!exclude && contradicts(&old.rule, &added.rule)) {
                settled.notes.push(format!("{} replaces {}", added.rule.predicate(), old.rule.predicate()));
                remove.push(old.id.clone());
            }
        }
    }
    for (clause, exclude) in restated {
        let list = if exclude { "exclude" } else { "include" };
        if let Some(Value::Array(clauses)) = object.get_mut(list) {
            clauses.retain(|value| serde_json::from_value::<Clause>(value.clone()).ok().as_ref() != Some(&clause));
        }
    }
    if remove != edit.remove {
        if remove.is_empty() {
            object.remove("remove");
        } else {
            object.insert("remove".into(), Value::from(remove));
        }
    }
    settled
}

/// Whether `new` says the opposite of `old` on the same side: the same field and value with `=` and `!=`.
fn opposite(old: &Rule, new: &Rule) -> bool {
    let (
        Rule::Profile { field: a, op: old_op, value: old_value },
        Rule::Profile { field: b, op: new_op, value: new_value },
    ) = (old, new)
    else {
        return false;
    };
    a == b && old_value == new_value && matches!((old_op, new_op), (Op::Eq, Op::Ne) | (Op::Ne, Op::Eq))
}

/// A follow-up that only swaps values, made by the program: the edit and what it changed, in words.
#[derive(Clone, Debug)]
pub struct Swap {
    pub edit: Edit,
    pub note: String,
}

/// The kinds of value a follow-up can swap, each held by its own clauses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Country,
    Segment,
    Product,
    Color,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::Country, Kind::Segment, Kind::Product, Kind::Color];

    /// The values of this kind the question names.
    fn named(self, asked: &Grounding) -> &[String] {
        match self {
            Kind::Country => &asked.found.countries,
            Kind::Segment => &asked.found.segments,
            Kind::Product => &asked.found.products,
            Kind::Color => &asked.found.colors,
        }
    }

    /// The values of this kind a rule holds, if it holds any (an equality on a one-valued field, or a list).
    fn values_of(self, rule: &Rule) -> Option<Vec<String>> {
        let texts = |value: &Value| -> Option<Vec<String>> {
            match value {
                Value::String(text) => Some(vec![text.clone()]),
                Value::Array(items) => items.iter().map(|item| item.as_str().map(str::to_owned)).collect(),
                _ => None,
            }
        };
        match (self, rule) {
            (Kind::Product, Rule::Event { products, .. }) if !products.is_empty() => Some(products.clone()),
            (Kind::Color, Rule::Event { colors, .. }) if !colors.is_empty() => Some(colors.clone()),
            (_, Rule::Profile { field, op: Op::Eq | Op::In, value }) if self.holds(*field) => texts(value),
            _ => None,
        }
    }

    fn holds(self, field: ProfileField) -> bool {
        match self {
            Kind::Country => field == ProfileField::Country,
            Kind::Segment => field == ProfileField::Segment,
            Kind::Color => field == ProfileField::FavoriteColor,
            Kind::Product => false,
        }
    }

    /// `rule` holding `values` instead of its own.
    fn with_values(self, rule: &Rule, values: Vec<String>) -> Rule {
        let mut rule = rule.clone();
        match &mut rule {
            Rule::Event { products, .. } if self == Kind::Product => *products = values,
            Rule::Event { colors, .. } if self == Kind::Color => *colors = values,
            Rule::Profile { op, value, .. } => {
                (*op, *value) = match values.as_slice() {
                    [one] => (Op::Eq, Value::from(one.clone())),
                    many => (Op::In, Value::from(many.to_vec())),
                };
            }
            _ => {}
        }
        rule
    }
}

/// The edit of a follow-up that only swaps values of one kind ("same but for France instead", "jewelry instead of
/// watches"): the values it names that the audience does not hold take the place of the ones it names that the
/// audience holds (or of all the values, when it names none of them), in the one clause holding that kind.
///
/// The program makes this edit because the question fixes it completely, and a small model gets it wrong: asked
/// "same but for jewelry instead of watches", the recorded 1.5B model sent a spend, a recency and a segment clause.
/// `asked` is the question's own grounding (not the one that inherits the audience's values). `None` when the
/// question says anything more (a number, a window, a period, an event of another type, a second kind of value),
/// when no value is new, or when the clause to edit is not the only one: the model writes that edit.
pub fn swap(current: &AudienceDefinition, asked: &Grounding, follow_up: FollowUp) -> Option<Swap> {
    if !follow_up.replaces || follow_up.starts_over {
        return None;
    }
    if !asked.numbers.is_empty() || !asked.days.is_empty() || !asked.periods.is_empty() {
        return None;
    }
    let mut kinds = Kind::ALL.into_iter().filter(|kind| !kind.named(asked).is_empty());
    let (Some(kind), None) = (kinds.next(), kinds.next()) else { return None };
    let named = kind.named(asked);
    let holding: Vec<(&Clause, bool, Vec<String>)> = current
        .clauses()
        .filter_map(|(clause, exclude)| kind.values_of(&clause.rule).map(|values| (clause, exclude, values)))
        .collect();
    let held: Vec<&String> = holding.iter().flat_map(|(_, _, values)| values).collect();
    let fresh: Vec<String> = named.iter().filter(|value| !held.contains(value)).cloned().collect();
    let replaced: Vec<&String> = named.iter().filter(|value| held.contains(value)).collect();
    if fresh.is_empty() {
        return None;
    }
    let mut targets = holding
        .iter()
        .filter(|(_, _, values)| replaced.is_empty() || values.iter().any(|value| replaced.contains(&value)));
    let (Some((clause, exclude, values)), None) = (targets.next(), targets.next()) else { return None };
    if let Rule::Event { event_type, .. } = &clause.rule
        && asked.event_types.iter().any(|named| Some(*named) != *event_type)
    {
        return None;
    }
    if !matches!(clause.rule, Rule::Event { .. }) && !asked.event_types.is_empty() {
        return None;
    }
    let mut kept: Vec<String> = if replaced.is_empty() {
        Vec::new()
    } else {
        values.iter().filter(|v| !replaced.contains(v)).cloned().collect()
    };
    kept.extend(fresh);
    let added = Clause { id: String::new(), rule: kind.with_values(&clause.rule, kept) };
    let note = format!("{} replaces {}", added.rule.predicate(), clause.rule.predicate());
    let (include, exclude) = if *exclude { (Vec::new(), vec![added]) } else { (vec![added], Vec::new()) };
    let edit = Edit { include, exclude, remove: vec![clause.id.clone()], ..Edit::default() };
    Some(Swap { edit, note })
}

/// Whether two rules constrain the same thing: one profile field, or events of one type.
fn same_slot(old: &Rule, new: &Rule) -> bool {
    match (old, new) {
        (Rule::Profile { field: a, .. }, Rule::Profile { field: b, .. }) => a == b,
        (Rule::Event { event_type: a, .. }, Rule::Event { event_type: b, .. }) => a == b && a.is_some(),
        _ => false,
    }
}

/// Whether both rules together could hold nobody: a field a customer has one value of (a country, a segment, a
/// favourite colour, a flag), required to equal two different sets of values.
fn contradicts(old: &Rule, new: &Rule) -> bool {
    let (Rule::Profile { field, op: old_op, value: old_value }, Rule::Profile { op: new_op, value: new_value, .. }) =
        (old, new)
    else {
        return false;
    };
    let single = matches!(field.kind(), FieldKind::Text | FieldKind::Bool) && *field != ProfileField::Interests;
    let equality = |op: &Op| matches!(op, Op::Eq | Op::In);
    if !single || !equality(old_op) || !equality(new_op) {
        return false;
    }
    let values = |value: &Value| -> Vec<String> {
        match value {
            Value::Array(items) => items.iter().map(|v| v.to_string().to_lowercase()).collect(),
            other => vec![other.to_string().to_lowercase()],
        }
    };
    let old_values = values(old_value);
    !values(new_value).iter().any(|v| old_values.contains(v))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn words(text: &str) -> Vec<String> {
        text.split_whitespace().map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()).to_lowercase()).collect()
    }

    fn current() -> AudienceDefinition {
        serde_json::from_value(json!({
            "version": 1,
            "limit": 10,
            "include": [
                {"id": "c1", "type": "profile", "field": "country", "op": "=", "value": "PL"},
                {"id": "c2", "type": "event", "event_type": "view", "products": ["watches"], "within_days": 180}
            ]
        }))
        .unwrap()
    }

    fn asked(question: &str) -> Grounding {
        let values = crate::vocabulary::DataValues {
            products: vec!["watches".into(), "jewelry".into(), "shoes".into()],
            colors: vec!["black".into(), "gold".into()],
            countries: vec!["PL".into(), "FR".into(), "DE".into()],
            segments: vec!["VIP Loyalty".into()],
        };
        Grounding::of(question, &values, chrono::NaiveDate::from_ymd_opt(2026, 6, 29).unwrap())
    }

    fn swapped(question: &str) -> Option<Swap> {
        let asked = asked(question);
        swap(&current(), &asked, FollowUp::of(asked.sequence()))
    }

    /// "Instead" with one new value of one kind is an edit the program makes: the value takes the place of the one
    /// the question names, or of the clause's values, in the one clause that holds that kind.
    #[test]
    fn a_follow_up_that_only_swaps_a_value_is_edited_by_the_program() {
        let france = swapped("same but for France instead").unwrap();
        assert_eq!(france.edit.remove, ["c1"]);
        assert_eq!(
            serde_json::to_value(&france.edit.include).unwrap(),
            json!([{"type": "profile", "field": "country", "op": "=", "value": "FR"}])
        );
        assert_eq!(france.note, "from FR replaces from PL");
        let jewelry = swapped("same but for jewelry instead of watches").unwrap();
        assert_eq!(jewelry.edit.remove, ["c2"]);
        assert_eq!(
            serde_json::to_value(&jewelry.edit.include).unwrap(),
            json!([{"type": "event", "event_type": "view", "products": ["jewelry"], "within_days": 180}])
        );
        // Anything more than a swap is the model's to write.
        for question in [
            "same but for France instead, and only those over 30",
            "France instead, in the last 30 days",
            "same but for France and jewelry instead",
            "jewelry instead, and the buyers only",
            "now only France",
            "same but Poland instead",
        ] {
            assert!(swapped(question).is_none(), "{question}");
        }
    }

    #[test]
    fn new_stands_only_when_the_question_starts_over_or_stands_alone() {
        let mut args =
            json!({"new": true, "exclude": [{"type": "profile", "field": "churned", "op": "=", "value": true}]});
        let settled = settle(&mut args, &current(), FollowUp::of(&words("exclude churned customers")));
        assert!(args.get("new").is_none(), "{args}");
        assert_eq!(settled.notes.len(), 1);
        for question in ["forget that, show me churned customers", "new search: perfume buyers", "Who bought socks?"] {
            let mut args = json!({"new": true, "include": [{"type": "event", "event_type": "purchase"}]});
            settle(&mut args, &current(), FollowUp::of(&words(question)));
            assert_eq!(args["new"], true, "{question}");
        }
    }

    #[test]
    fn a_clause_on_the_same_field_replaces_the_current_one_when_both_could_hold_nobody_or_the_question_says_so() {
        let france = json!({"type": "profile", "field": "country", "op": "=", "value": "FR"});
        let mut args = json!({"include": [france]});
        settle(&mut args, &current(), FollowUp::of(&words("now only France")));
        assert_eq!(args["remove"], json!(["c1"]));
        // A second country that overlaps narrows: kept as an AND.
        let mut args = json!({"include": [{"type": "profile", "field": "country", "op": "in", "value": ["PL", "DE"]}]});
        settle(&mut args, &current(), FollowUp::of(&words("only those in Poland or Germany")));
        assert!(args.get("remove").is_none(), "{args}");
        // Events of one type are replaced only when the question says so.
        let jewelry = json!({"type": "event", "event_type": "view", "products": ["jewelry"]});
        let mut args = json!({"include": [jewelry.clone()]});
        settle(&mut args, &current(), FollowUp::of(&words("also those who viewed jewelry")));
        assert!(args.get("remove").is_none(), "{args}");
        let mut args = json!({"include": [jewelry]});
        let settled = settle(&mut args, &current(), FollowUp::of(&words("same but for jewelry instead of watches")));
        assert_eq!(args["remove"], json!(["c2"]));
        assert_eq!(settled.notes, ["who viewed jewelry replaces who viewed watches in the last 180 days"]);
    }

    /// Recorded from the local 1.5B model: "exclude Germany" sent with `remove` of the jeans clause, "only those who
    /// have spent more than 200" with `remove` of every clause, and a restated exclusion the wrong way round.
    #[test]
    fn a_narrowing_follow_up_takes_nothing_out_and_does_not_undo_a_clause() {
        let words = |q: &str| -> Vec<String> { q.to_lowercase().split(' ').map(str::to_owned).collect() };
        let mut current = AudienceDefinition::from_json(
            r#"{"version": 1, "include": [{"type": "event", "event_type": "purchase", "products": ["jeans"]}],
                "exclude": [{"type": "profile", "field": "country", "op": "=", "value": "US"}], "limit": 10}"#,
        )
        .unwrap();
        current.assign_ids();
        let mut args = json!({"exclude": [{"type": "profile", "field": "country", "op": "=", "value": "DE"}],
                              "remove": ["c1"]});
        let settled = settle(&mut args, &current, FollowUp::of(&words("exclude Germany")));
        assert!(args.get("remove").is_none(), "{args}");
        assert_eq!(settled.notes, ["kept who bought jeans: the question takes nothing out"]);
        let mut args = json!({"include": [{"type": "profile", "field": "total_spent", "op": ">", "value": 200}],
                              "exclude": [{"type": "profile", "field": "country", "op": "!=", "value": "US"}]});
        let settled = settle(&mut args, &current, FollowUp::of(&words("only those who spent more than 200")));
        assert_eq!(args["exclude"], json!([]), "{settled:?}");
        let mut args = json!({"include": [], "remove": ["c1"]});
        settle(&mut args, &current, FollowUp::of(&words("now drop the jeans")));
        assert_eq!(args["remove"], json!(["c1"]), "a follow-up that says so removes");
    }
}
