//! The audience a conversation is working on: the current definition, the edits that led to it (for undo), and
//! the last evaluation. The host holds it, not the model's history, so it survives history truncation, and the
//! `find_audience` tool edits it instead of retyping the whole audience at every follow-up.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::Deserialize;

use super::definition::{AudienceDefinition, Clause, Invalid};
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
#[serde(deny_unknown_fields)]
pub struct Edit {
    #[serde(default)]
    pub new: bool,
    #[serde(default)]
    pub include: Vec<Clause>,
    #[serde(default)]
    pub exclude: Vec<Clause>,
    #[serde(default)]
    pub remove: Vec<String>,
    #[serde(default)]
    pub intent: Option<String>,
    #[serde(default)]
    pub limit: Option<usize>,
    /// Profile fields to list with each member besides the usual ones (not part of the definition).
    #[serde(default)]
    pub fields: Vec<String>,
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
