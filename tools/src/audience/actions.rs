//! Next-best actions: an ordered rule table (TOML, shipped as `prompts/actions.toml`) that gives every member of an
//! audience exactly one action and its reason, or the explicit `none`.
//!
//! A rule's condition is a list of include and exclude clauses of the audience definition itself, compiled by the
//! audience compiler: there is one condition language, checked the same way (the SQL guard for `sql` clauses), and
//! a rule reads like a saved definition. The whole table compiles to one `CASE` over the profile `p`, first match
//! first, which the export and the `actions` command add to the membership query as one more column, so a
//! member's action comes from the same snapshot as the member.

use serde::{Deserialize, Serialize};

use super::compile::{Data, compile};
use super::definition::{AudienceDefinition, Clause, Invalid};
use super::export::{Computed, Members, for_each_member};
use super::report::data_for_compile;
use crate::failure::ToolFailure;
use crate::stores::Stores;

/// The rule table shipped with the program.
pub const DEFAULT_RULES: &str = include_str!("../../../prompts/actions.toml");
/// The action of a member that no rule matches.
pub const NONE: &str = "none";
/// The reason given with [`NONE`].
pub const NO_RULE_MATCHED: &str = "no rule matched";
/// Most rules in one table: each one is a branch of the `CASE` every member is evaluated against.
pub const MAX_RULES: usize = 50;
/// The computed column that carries a member's rule index (see [`ActionTable::case_sql`]).
pub const RULE_COLUMN: &str = "action_rule";
/// Longest action name: it is a CSV cell and a command-line word.
const MAX_ACTION_CHARS: usize = 64;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[serde(rename = "rule", default)]
    rules: Vec<RuleEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleEntry {
    action: String,
    reason: String,
    #[serde(default)]
    include: Vec<Clause>,
    #[serde(default)]
    exclude: Vec<Clause>,
}

/// One rule: the action, why, and who it is for (the clauses of a definition; its intent and limit are unused).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ActionRule {
    pub action: String,
    pub reason: String,
    pub when: AudienceDefinition,
}

/// An ordered rule table: the first rule that matches a member gives its action.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ActionTable {
    pub rules: Vec<ActionRule>,
}

/// The action a member gets: from a rule (its index in the table), or `none`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Assigned {
    Rule(usize),
    None,
}

impl ActionTable {
    /// The shipped table (`prompts/actions.toml`).
    pub fn defaults() -> Result<Self, Invalid> {
        Self::from_toml(DEFAULT_RULES).map_err(|Invalid(reason)| Invalid(format!("prompts/actions.toml: {reason}")))
    }

    /// Reads and checks a table: action names, reasons, and each rule's clauses as a definition's.
    pub fn from_toml(text: &str) -> Result<Self, Invalid> {
        let file: RuleFile = toml::from_str(text).map_err(|e| Invalid(format!("not an action table: {e}")))?;
        if file.rules.is_empty() {
            return Err(Invalid("the table has no [[rule]]".to_owned()));
        }
        if file.rules.len() > MAX_RULES {
            return Err(Invalid(format!("at most {MAX_RULES} rules")));
        }
        let mut rules = Vec::new();
        for (index, entry) in file.rules.into_iter().enumerate() {
            let number = index + 1;
            let action = entry.action.trim().to_owned();
            let valid_name = !action.is_empty()
                && action.chars().count() <= MAX_ACTION_CHARS
                && action.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
            if !valid_name {
                return Err(Invalid(format!(
                    "rule {number}: the action {:?} is not a name (1 to {MAX_ACTION_CHARS} lower-case letters, digits, \
                     '_' or '-')",
                    entry.action
                )));
            }
            let reason = entry.reason.trim().to_owned();
            if reason.is_empty() {
                return Err(Invalid(format!("rule {number} ({action}): the reason is empty")));
            }
            let mut when = AudienceDefinition { include: entry.include, exclude: entry.exclude, ..Default::default() };
            when.normalize();
            when.assign_ids();
            when.validate().map_err(|Invalid(reason)| Invalid(format!("rule {number} ({action}): {reason}")))?;
            rules.push(ActionRule { action, reason, when });
        }
        Ok(Self { rules })
    }

    /// The table as one SQL expression over the profile `p` (the `profiles` columns): the 0-based index of the
    /// first rule that holds, or NULL when none does. A condition that is NULL for a member (an unknown recency)
    /// does not hold, as in a membership query.
    pub fn case_sql(&self, data: Data) -> Result<String, Invalid> {
        let mut branches = Vec::new();
        for (index, rule) in self.rules.iter().enumerate() {
            let compiled = compile(&rule.when, data)
                .map_err(|Invalid(reason)| Invalid(format!("rule {} ({}): {reason}", index + 1, rule.action)))?;
            let condition = if compiled.clauses.is_empty() {
                "true".to_owned()
            } else {
                compiled.clauses.iter().map(|(_, sql)| format!("({sql})")).collect::<Vec<_>>().join(" AND ")
            };
            branches.push(format!("WHEN {condition} THEN {index}"));
        }
        Ok(format!("(CASE {} END)", branches.join(" ")))
    }

    /// The action and reason of an assignment.
    pub fn describe(&self, assigned: Assigned) -> (&str, &str) {
        match assigned {
            Assigned::Rule(index) => {
                self.rules.get(index).map_or((NONE, NO_RULE_MATCHED), |r| (r.action.as_str(), r.reason.as_str()))
            }
            Assigned::None => (NONE, NO_RULE_MATCHED),
        }
    }

    /// The assignment a [`Self::case_sql`] value stands for (a JSON number, or null).
    pub fn assigned(&self, value: Option<&serde_json::Value>) -> Assigned {
        match value.and_then(serde_json::Value::as_u64) {
            Some(index) if (index as usize) < self.rules.len() => Assigned::Rule(index as usize),
            _ => Assigned::None,
        }
    }
}

/// The table as the computed column of a member query, compiled for the data as it is now; a clause the compiler
/// refuses (a `sql` clause the guard rejects) is the user's to fix.
pub async fn rule_column(stores: &Stores, table: &ActionTable) -> Result<Computed, ToolFailure> {
    let data = data_for_compile(stores).await?;
    let sql = table.case_sql(data).map_err(|Invalid(reason)| ToolFailure::Correctable(reason))?;
    Ok(Computed { name: RULE_COLUMN, sql })
}

/// Every member's file id and action, in customer order, from one query.
pub async fn assign(
    stores: &Stores,
    members: Members<'_>,
    table: &ActionTable,
) -> Result<Vec<(String, Assigned)>, ToolFailure> {
    let column = rule_column(stores, table).await?;
    let mut assigned = Vec::new();
    for_each_member(stores, members, &["external_id"], &[column], |record| {
        let id = record.get("external_id").and_then(serde_json::Value::as_str).unwrap_or_default().to_owned();
        assigned.push((id, table.assigned(record.get(RULE_COLUMN))));
        Ok(())
    })
    .await?;
    Ok(assigned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    #[test]
    fn the_default_table_reads_and_compiles_to_one_case() {
        let table = ActionTable::defaults().unwrap();
        let actions: Vec<&str> = table.rules.iter().map(|r| r.action.as_str()).collect();
        assert_eq!(
            actions,
            ["personal_win_back", "win_back_reminder", "early_access", "cart_reminder", "second_purchase_incentive"]
        );
        let data = Data { as_of: NaiveDate::from_ymd_opt(2025, 6, 30).unwrap(), derived_tables: true };
        let sql = table.case_sql(data).unwrap();
        assert!(sql.starts_with("(CASE WHEN (p.churned = true) AND (p.m_score >= 4) THEN 0 WHEN"), "{sql}");
        assert!(sql.contains("WHEN (EXISTS (SELECT 1 FROM event_totals t WHERE t.customer_id = p.customer_id AND"));
        assert!(sql.ends_with("THEN 4 END)"), "{sql}");
    }

    #[test]
    fn bad_tables_are_refused_with_the_rule_that_is_wrong() {
        let refuse = |text: &str| ActionTable::from_toml(text).unwrap_err().0;
        assert!(refuse("").contains("no [[rule]]"));
        assert!(refuse("[[rule]]\naction = \"Win Back!\"\nreason = \"x\"").contains("rule 1: the action"));
        assert!(refuse("[[rule]]\naction = \"a\"\nreason = \" \"").contains("rule 1 (a): the reason is empty"));
        let bad_clause = "[[rule]]\naction = \"a\"\nreason = \"r\"\n\
                          include = [{ type = \"profile\", field = \"total_spent\", op = \">\", value = \"lots\" }]";
        assert!(refuse(bad_clause).contains("rule 1 (a): clause c1: total_spent > takes a number"));
        assert!(refuse("[[rule]]\naction = \"a\"\nreason = \"r\"\ncolour = 1").contains("unknown field"));
        // A rule without clauses matches everyone: a catch-all at the end of a table.
        let table = ActionTable::from_toml("[[rule]]\naction = \"newsletter\"\nreason = \"everyone else\"").unwrap();
        let data = Data { as_of: NaiveDate::from_ymd_opt(2025, 6, 30).unwrap(), derived_tables: false };
        assert_eq!(table.case_sql(data).unwrap(), "(CASE WHEN true THEN 0 END)");
        assert_eq!(table.describe(table.assigned(Some(&serde_json::json!(0)))), ("newsletter", "everyone else"));
        assert_eq!(table.describe(table.assigned(None)), (NONE, NO_RULE_MATCHED));
    }
}
