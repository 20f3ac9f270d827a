//! The audience a conversation is working on: the current definition, the edits that led to it (for undo), and
//! the last evaluation. The host holds it, not the model's history, so it survives history truncation, and the
//! `find_audience` tool edits it instead of retyping the whole audience at every follow-up.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::Deserialize;
use serde_json::{Map, Value};

use super::definition::{AudienceDefinition, Clause, FieldKind, Invalid, Op, ProfileField, shorten};
use super::report::AudienceReport;

/// Shared by the session and its `find_audience` tool; clones share the state.
#[derive(Clone, Debug, Default)]
pub struct AudienceSession {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    current: Option<AudienceDefinition>,
    /// Earlier definitions, most recent last; `None` is "no audience yet".
    undo: Vec<Option<AudienceDefinition>>,
    last: Option<AudienceReport>,
}

/// A change to the current definition, as the `find_audience` tool receives it: with `new`, start from an empty
/// definition; otherwise refine the current one. Clauses are added, `remove` drops clauses by id, `intent`
/// replaces the intent ("" removes it) and `limit` the number of members listed; `fields` only changes what is
/// listed of each member.
#[derive(Clone, Debug, Default, Deserialize, serde::Serialize)]
#[serde(try_from = "Value")]
pub struct Edit {
    pub new: bool,
    pub include: Vec<Clause>,
    pub exclude: Vec<Clause>,
    pub remove: Vec<String>,
    pub intent: Option<String>,
    pub limit: Option<usize>,
    /// Profile fields to list with each member besides the usual ones (not part of the definition).
    pub fields: Vec<String>,
}

/// The shape serde checks once [`Edit::try_from`] has checked what a model gets wrong, with a precise reason.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEdit {
    #[serde(default)]
    new: bool,
    #[serde(default)]
    include: Vec<Clause>,
    #[serde(default)]
    exclude: Vec<Clause>,
    #[serde(default)]
    remove: Vec<String>,
    #[serde(default)]
    intent: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    fields: Vec<String>,
}

/// The arguments an edit takes, in the order the schema lists them.
const EDIT_KEYS: [&str; 7] = ["new", "include", "exclude", "remove", "intent", "limit", "fields"];
/// The fields of an event clause besides `type` (and the free `sql` condition).
const EVENT_KEYS: [&str; 10] =
    ["event_type", "products", "colors", "min_price", "max_price", "within_days", "since", "until", "min_count", "sql"];
/// Intents that name no taste: words of the tool's own description that a model copies into the slot.
const EMPTY_INTENTS: [&str; 8] = ["tastes", "taste", "intent", "style", "preferences", "none", "null", "n/a"];

/// Whether an intent is a placeholder word ("tastes", copied from the description) rather than a taste.
pub fn names_no_taste(intent: &str) -> bool {
    EMPTY_INTENTS.contains(&intent.trim().to_lowercase().as_str())
}

impl TryFrom<Value> for Edit {
    type Error = String;

    /// Reads an edit, naming exactly what is wrong with a malformed one: the forms a small model writes (a profile
    /// field inside an event clause, `equals` for `=`, `"true"` for `true`, a clause without `type`, the word
    /// "tastes" as the intent) each get a reason it can act on in one repair turn.
    fn try_from(value: Value) -> Result<Self, String> {
        let Value::Object(object) = &value else { return Err("the arguments must be a JSON object".to_owned()) };
        if let Some(key) = object.keys().find(|key| !EDIT_KEYS.contains(&key.as_str())) {
            return Err(format!("unknown argument `{}`; the arguments are {}", shorten(key), EDIT_KEYS.join(", ")));
        }
        for list in ["include", "exclude"] {
            match object.get(list) {
                None | Some(Value::Null) => {}
                Some(Value::Array(clauses)) => {
                    for (index, clause) in clauses.iter().enumerate() {
                        check_clause(clause).map_err(|reason| format!("{list}[{index}]: {reason}"))?;
                    }
                }
                Some(_) => return Err(format!("{list} must be a list of clauses")),
            }
        }
        if let Some(Value::String(intent)) = object.get("intent")
            && names_no_taste(intent)
        {
            return Err(format!(
                "intent {intent:?} names no taste: write the shopper's tastes in words (\"minimal black outfits\"), or \
                 leave intent out; conditions go in include/exclude clauses"
            ));
        }
        let raw: RawEdit = serde_json::from_value(value).map_err(|e| format!("invalid arguments: {e}"))?;
        Ok(Self {
            new: raw.new,
            include: raw.include,
            exclude: raw.exclude,
            remove: raw.remove,
            intent: raw.intent,
            limit: raw.limit,
            fields: raw.fields,
        })
    }
}

/// What a clause gets wrong, before serde reads it.
fn check_clause(clause: &Value) -> Result<(), String> {
    let Value::Object(clause) = clause else { return Err("a clause must be a JSON object".to_owned()) };
    let has = |key: &str| clause.contains_key(key);
    let kind = match clause.get("type") {
        Some(Value::String(kind)) => kind.as_str(),
        Some(_) => return Err("\"type\" must be \"event\" or \"profile\"".to_owned()),
        None if has("field") => return Err("the clause has no \"type\": add \"type\": \"profile\"".to_owned()),
        None => return Err("the clause has no \"type\": add \"type\": \"event\" or \"profile\"".to_owned()),
    };
    match kind {
        "event" => {
            if let Some(key) =
                clause.keys().find(|key| *key != "type" && *key != "id" && !EVENT_KEYS.contains(&key.as_str()))
            {
                let profile = ["field", "op", "value"].contains(&key.as_str());
                let hint = if profile {
                    "; field/op/value belong in a separate clause with \"type\": \"profile\""
                } else {
                    ""
                };
                return Err(format!(
                    "an event clause has no `{}`: it takes {}{hint}",
                    shorten(key),
                    EVENT_KEYS[..9].join(", ")
                ));
            }
            Ok(())
        }
        "profile" => check_profile(clause),
        "sql" => Ok(()),
        other => Err(format!("unknown clause type {}: use \"event\" or \"profile\"", shorten(other))),
    }
}

fn check_profile(clause: &Map<String, Value>) -> Result<(), String> {
    let fields = || ProfileField::ALL.iter().map(|f| f.column()).collect::<Vec<_>>().join(", ");
    let Some(Value::String(name)) = clause.get("field") else {
        return Err(format!("a profile clause needs \"field\": one of {}", fields()));
    };
    let Some(field) = ProfileField::ALL.into_iter().find(|field| field.column() == name) else {
        return Err(format!("unknown profile field {}; the fields are {}", shorten(name), fields()));
    };
    let ops: Vec<&str> = crate::vocabulary::ops_for(field.kind()).iter().map(|op| op.symbol()).collect();
    let op = match clause.get("op") {
        Some(Value::String(op)) => op.as_str(),
        _ => return Err(format!("a profile clause needs \"op\": for {name} one of {}", ops.join(" "))),
    };
    if !ops.contains(&op) {
        let meant = match op.to_lowercase().as_str() {
            "equals" | "eq" | "==" | "is" => Some(Op::Eq),
            "not_equals" | "ne" | "neq" | "<>" | "is_not" | "not" => Some(Op::Ne),
            "gt" | "greater_than" | "more_than" | "above" => Some(Op::Gt),
            "gte" | "ge" | "at_least" | "=>" => Some(Op::Gte),
            "lt" | "less_than" | "below" | "under" => Some(Op::Lt),
            "lte" | "le" | "at_most" | "=<" => Some(Op::Lte),
            "one_of" | "any" => Some(Op::In),
            "has" | "includes" => Some(Op::Contains),
            _ => None,
        };
        let hint = meant.map(|op| format!(" (for {} write \"{}\")", shorten_op(op), op.symbol())).unwrap_or_default();
        return Err(format!("{name} takes op {}, not {}{hint}", ops.join(" "), shorten(op)));
    }
    match (field.kind(), clause.get("value")) {
        (_, None) => Err(format!("a profile clause needs \"value\" (for {name})")),
        (FieldKind::Bool, Some(Value::String(text))) => {
            Err(format!("{name} takes true or false as JSON booleans, not the string {}", shorten(text)))
        }
        (FieldKind::Number, Some(Value::String(text))) => {
            Err(format!("{name} takes a number, not the string {} (write 500, not \"500\")", shorten(text)))
        }
        _ => Ok(()),
    }
}

fn shorten_op(op: Op) -> &'static str {
    match op {
        Op::Eq => "equals",
        Op::Ne => "not equal",
        Op::Gt => "greater than",
        Op::Gte => "at least",
        Op::Lt => "less than",
        Op::Lte => "at most",
        Op::In => "one of",
        Op::Contains => "contains",
    }
}

impl Edit {
    /// The definition this edit makes of `current`.
    pub fn apply(&self, current: Option<&AudienceDefinition>) -> Result<AudienceDefinition, Invalid> {
        let mut definition = match current {
            Some(current) if !self.new => current.clone(),
            _ => AudienceDefinition::default(),
        };
        for id in &self.remove {
            let before = definition.include.len() + definition.exclude.len();
            definition.include.retain(|clause| &clause.id != id);
            definition.exclude.retain(|clause| &clause.id != id);
            if definition.include.len() + definition.exclude.len() == before {
                let ids: Vec<&str> = definition.clauses().map(|(clause, _)| clause.id.as_str()).collect();
                return Err(Invalid(format!(
                    "there is no clause {id} to remove; the clauses are {}",
                    if ids.is_empty() { "none".to_owned() } else { ids.join(", ") }
                )));
            }
        }
        // New clauses get fresh ids: an id the model invents could collide with an existing one.
        let fresh = |clause: &Clause| Clause { id: String::new(), rule: clause.rule.clone() };
        definition.include.extend(self.include.iter().map(fresh));
        definition.exclude.extend(self.exclude.iter().map(fresh));
        if let Some(intent) = &self.intent {
            definition.intent = Some(intent.trim().to_owned()).filter(|intent| !intent.is_empty());
        }
        if let Some(limit) = self.limit {
            definition.limit = limit;
        }
        definition.normalize();
        definition.assign_ids();
        definition.validate()?;
        Ok(definition)
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding the lock leaves plain data behind; keep using it.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl AudienceSession {
    /// A session that starts from `definition` (`tool find_audience --from FILE`).
    pub fn starting_from(definition: AudienceDefinition) -> Self {
        let session = Self::default();
        session.start_from(definition);
        session
    }

    /// Makes `definition` the current one, as the start of a new line of edits (`ask --from FILE`).
    pub fn start_from(&self, definition: AudienceDefinition) {
        let mut state = lock(&self.state);
        *state = State { current: Some(definition), ..State::default() };
    }

    pub fn current(&self) -> Option<AudienceDefinition> {
        lock(&self.state).current.clone()
    }

    /// The evaluation of the current definition, when it has been evaluated.
    pub fn last_report(&self) -> Option<AudienceReport> {
        lock(&self.state).last.clone()
    }

    /// Makes `report`'s definition the current one; the previous one can be restored with [`Self::undo`].
    pub fn commit(&self, report: AudienceReport) {
        let mut state = lock(&self.state);
        let previous = state.current.replace(report.definition.clone());
        if previous.as_ref() != Some(&report.definition) {
            state.undo.push(previous);
        }
        state.last = Some(report);
    }

    /// Goes back one edit; false when there is nothing to undo. The restored definition needs evaluating again.
    pub fn undo(&self) -> bool {
        let mut state = lock(&self.state);
        match state.undo.pop() {
            Some(previous) => {
                state.current = previous;
                state.last = None;
                true
            }
            None => false,
        }
    }

    /// Forgets the audience and its history.
    pub fn reset(&self) {
        *lock(&self.state) = State::default();
    }

    /// Records an evaluation of the current definition without making it an edit (after undo, `/audience`).
    pub fn remember(&self, report: AudienceReport) {
        let mut state = lock(&self.state);
        if state.current.as_ref() == Some(&report.definition) {
            state.last = Some(report);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn edit(value: serde_json::Value) -> Edit {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn edits_refine_the_current_definition() {
        let first = edit(json!({"include": [{"type": "profile", "field": "country", "op": "=", "value": "PL"}],
                                "intent": "luxury"}))
        .apply(None)
        .unwrap();
        assert_eq!(first.include[0].id, "c1");
        let second = edit(json!({"exclude": [{"type": "profile", "field": "churned", "op": "=", "value": true}],
                                 "intent": ""}))
        .apply(Some(&first))
        .unwrap();
        assert_eq!((second.include.len(), second.exclude[0].id.as_str(), second.intent.clone()), (1, "c2", None));
        let third = edit(json!({"remove": ["c1"]})).apply(Some(&second)).unwrap();
        assert!(third.include.is_empty() && third.exclude.len() == 1);
        let error = edit(json!({"remove": ["c9"]})).apply(Some(&third)).unwrap_err();
        assert!(error.0.contains("no clause c9 to remove; the clauses are c2"), "{error}");
        let fresh = edit(json!({"new": true, "limit": 5})).apply(Some(&third)).unwrap();
        assert_eq!((fresh.include.len(), fresh.exclude.len(), fresh.limit), (0, 0, 5));
    }

    #[test]
    fn undo_walks_back_through_committed_definitions() {
        let session = AudienceSession::default();
        assert!(!session.undo());
        let mut report = crate::audience::report::tests_support::report(AudienceDefinition::default());
        session.commit(report.clone());
        report.definition.limit = 3;
        session.commit(report);
        assert_eq!(session.current().map(|d| d.limit), Some(3));
        assert!(session.undo());
        assert_eq!(session.current().map(|d| d.limit), Some(10));
        assert!(session.undo());
        assert_eq!(session.current(), None);
        assert!(!session.undo());
    }
}
