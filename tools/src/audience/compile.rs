//! Compiles an audience definition to ONE membership query: the customer ids of every profile for which all include
//! clauses hold and no exclude clause does. Size, funnel, breakdown, ranking and export all run this query (or its
//! prefixes, for the funnel); the vector index only orders its result.
//!
//! Typed clauses become SQL here, from registry column names and escaped literals; the SQL fragments a definition
//! may carry (`Event::sql`, `Rule::Sql`) are checked by the SQL guard against the events or profiles columns and
//! the guard's rendering is what is compiled in. The query then runs like all model-influenced SQL: read-only, as
//! the reader role, with a statement timeout.

use chrono::{Days, NaiveDate};
use serde_json::Value;

use super::definition::{AudienceDefinition, Clause, FieldKind, Invalid, Op, ProfileField, Rule, number};
use crate::sql_guard::{self, ConditionTable};

/// The compiled queries of a definition.
#[derive(Clone, Debug, PartialEq)]
pub struct Compiled {
    /// `SELECT p.customer_id FROM profiles p WHERE ...`: the audience.
    pub membership: String,
    /// The same query selecting what a report summarises of each member besides the id (`country`, `segment`,
    /// `churned`, `total_spent`), so one scan serves size, breakdown and the top spenders.
    pub membership_facts: String,
    /// One membership query per clause, with the clauses up to and including it (includes first, then excludes):
    /// the funnel. The last one equals `membership`.
    pub prefixes: Vec<String>,
    /// Each clause's boolean expression over the profile `p`, by clause id, as compiled into the queries.
    pub clauses: Vec<(String, String)>,
    /// For each include event clause, by clause id, its condition on an event `e`: the evidence a member fits.
    pub evidence: Vec<(String, String)>,
}

/// The member columns of [`Compiled::membership_facts`].
const MEMBER_FACTS: &str = "p.customer_id, p.country, p.segment, p.churned, p.total_spent";

/// Compiles `definition` for data whose last day is `as_of` (relative days count back from it).
pub fn compile(definition: &AudienceDefinition, as_of: NaiveDate) -> Result<Compiled, Invalid> {
    definition.validate()?;
    let mut conditions = Vec::new();
    let mut clauses = Vec::new();
    let mut evidence = Vec::new();
    for (clause, exclude) in definition.clauses() {
        let expression = clause_sql(clause, as_of, exclude)?;
        clauses.push((clause.id.clone(), expression.clone()));
        conditions.push(expression);
        if !exclude && matches!(clause.rule, Rule::Event { .. }) {
            let events = event_conditions(&clause.rule, as_of)
                .map_err(|Invalid(r)| Invalid(format!("clause {}: {r}", clause.id)))?;
            evidence.push((clause.id.clone(), events));
        }
    }
    let select = |columns: &str, conditions: &[String]| -> String {
        if conditions.is_empty() {
            format!("SELECT {columns} FROM profiles p")
        } else {
            format!("SELECT {columns} FROM profiles p WHERE {}", conditions.join("\n  AND "))
        }
    };
    let query = |conditions: &[String]| select("p.customer_id", conditions);
    let prefixes = (1..=conditions.len()).map(|n| query(&conditions[..n])).collect();
    Ok(Compiled {
        membership: query(&conditions),
        membership_facts: select(MEMBER_FACTS, &conditions),
        prefixes,
        clauses,
        evidence,
    })
}

/// A clause as a condition on the profile `p`: as it is for an include, negated (NULL counting as false) for an
/// exclude.
fn clause_sql(clause: &Clause, as_of: NaiveDate, exclude: bool) -> Result<String, Invalid> {
    let with_id = |Invalid(reason): Invalid| Invalid(format!("clause {}: {reason}", clause.id));
    match &clause.rule {
        Rule::Event { min_count: Some(count), .. } if *count > 1 => {
            // Counting needs a GROUP BY; `IN` lets PostgreSQL hash it once instead of counting per customer.
            let events = event_conditions(&clause.rule, as_of).map_err(with_id)?;
            let set = format!(
                "SELECT e.customer_id FROM events e WHERE {events} GROUP BY e.customer_id HAVING count(*) >= {count}"
            );
            Ok(if exclude { format!("p.customer_id NOT IN ({set})") } else { format!("p.customer_id IN ({set})") })
        }
        Rule::Event { .. } => {
            // EXISTS becomes a semi-join (an anti-join when negated), the cheapest shape either way.
            let events = event_conditions(&clause.rule, as_of).map_err(with_id)?;
            let exists = format!("EXISTS (SELECT 1 FROM events e WHERE e.customer_id = p.customer_id AND {events})");
            Ok(if exclude { format!("NOT {exists}") } else { exists })
        }
        Rule::Profile { field, op, value } => {
            let condition = profile_condition(*field, *op, value).map_err(with_id)?;
            Ok(if exclude { format!("NOT coalesce({condition}, false)") } else { condition })
        }
        Rule::Sql { condition } => {
            let checked = sql_guard::check_condition(condition, ConditionTable::Profiles)
                .map_err(|refusal| Invalid(format!("clause {}: {refusal}", clause.id)))?;
            Ok(if exclude { format!("NOT coalesce(({checked}), false)") } else { format!("({checked})") })
        }
    }
}

/// The conditions on an event `e` that an event rule sets.
fn event_conditions(rule: &Rule, as_of: NaiveDate) -> Result<String, Invalid> {
    let Rule::Event { event_type, products, colors, min_price, max_price, within_days, min_count: _, sql } = rule
    else {
        return Err(Invalid("not an event clause".to_owned()));
    };
    let mut conditions = Vec::new();
    if let Some(event_type) = event_type {
        conditions.push(format!("e.event_type = '{}'", event_type.as_str()));
        if *event_type == super::definition::EventType::Purchase {
            // A purchase with a negative quantity is a return, not a purchase.
            conditions.push("e.quantity > 0".to_owned());
        }
    }
    if !products.is_empty() {
        conditions.push(in_list("e.product", products)?);
    }
    if !colors.is_empty() {
        conditions.push(in_list("e.color", colors)?);
    }
    if let Some(min) = min_price {
        conditions.push(format!("e.price >= {}", number(*min)));
    }
    if let Some(max) = max_price {
        conditions.push(format!("e.price <= {}", number(*max)));
    }
    if let Some(days) = within_days {
        let from = as_of.checked_sub_days(Days::new(u64::from(days.saturating_sub(1)))).unwrap_or(NaiveDate::MIN);
        let until = as_of.checked_add_days(Days::new(1)).unwrap_or(NaiveDate::MAX);
        conditions
            .push(format!("e.ts >= TIMESTAMPTZ '{from} 00:00:00+00' AND e.ts < TIMESTAMPTZ '{until} 00:00:00+00'"));
    }
    if let Some(sql) = sql {
        let checked =
            sql_guard::check_condition(sql, ConditionTable::Events).map_err(|refusal| Invalid(refusal.to_string()))?;
        conditions.push(format!("({checked})"));
    }
    if conditions.is_empty() {
        conditions.push("true".to_owned());
    }
    Ok(conditions.join(" AND "))
}

fn profile_condition(field: ProfileField, op: Op, value: &Value) -> Result<String, Invalid> {
    let column = format!("p.{}", field.column());
    // Countries are stored upper-case; segments and colours are matched regardless of case, as people type them.
    let text = |value: &Value| -> Result<String, Invalid> {
        let text = value.as_str().ok_or_else(|| Invalid(format!("{} takes strings", field.column())))?;
        match field {
            ProfileField::Country => literal(&text.trim().to_uppercase()),
            _ => literal(&text.trim().to_lowercase()),
        }
    };
    let subject = match field {
        ProfileField::Country => column.clone(),
        _ if field.kind() == FieldKind::Text => format!("lower({column})"),
        _ => column.clone(),
    };
    let scalar = |value: &Value| -> Result<String, Invalid> {
        match field.kind() {
            FieldKind::Text | FieldKind::TextList => text(value),
            FieldKind::Number => {
                value.as_f64().map(number).ok_or_else(|| Invalid(format!("{} takes numbers", field.column())))
            }
            FieldKind::Bool => value
                .as_bool()
                .map(|b| b.to_string())
                .ok_or_else(|| Invalid(format!("{} takes true or false", field.column()))),
        }
    };
    Ok(match op {
        Op::Contains => format!("{} = ANY({column})", text(value)?),
        Op::In => {
            let items = value.as_array().ok_or_else(|| Invalid(format!("{} in takes a list", field.column())))?;
            let values = items.iter().map(&scalar).collect::<Result<Vec<_>, _>>()?;
            format!("{subject} IN ({})", values.join(", "))
        }
        op => {
            let symbol = if op == Op::Ne { "<>" } else { op.symbol() };
            format!("{subject} {symbol} {}", scalar(value)?)
        }
    })
}

fn in_list(column: &str, values: &[String]) -> Result<String, Invalid> {
    let literals = values.iter().map(|v| literal(v.trim())).collect::<Result<Vec<_>, _>>()?;
    Ok(match literals.as_slice() {
        [one] => format!("{column} = {one}"),
        many => format!("{column} IN ({})", many.join(", ")),
    })
}

/// A SQL string literal. PostgreSQL's standard strings take backslashes as they are, so only quotes are doubled;
/// a NUL cannot be sent at all.
pub fn literal(text: &str) -> Result<String, Invalid> {
    if text.contains('\0') {
        return Err(Invalid("values may not contain NUL characters".to_owned()));
    }
    Ok(format!("'{}'", text.replace('\'', "''")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn definition(value: Value) -> AudienceDefinition {
        AudienceDefinition::from_json(&value.to_string()).unwrap()
    }

    #[test]
    fn compiles_each_clause_kind_into_one_membership_query() {
        let d = definition(json!({
            "version": 1,
            "include": [
                {"type": "event", "event_type": "purchase", "products": ["socks", "o'hare"], "within_days": 60},
                {"type": "profile", "field": "country", "op": "in", "value": ["pl", "DE"]},
                {"type": "event", "event_type": "view", "min_count": 3}
            ],
            "exclude": [{"type": "profile", "field": "churned", "op": "=", "value": true}],
            "limit": 10
        }));
        let compiled = compile(&d, NaiveDate::from_ymd_opt(2025, 6, 30).unwrap()).unwrap();
        assert_eq!(
            compiled.membership,
            "SELECT p.customer_id FROM profiles p WHERE EXISTS (SELECT 1 FROM events e WHERE e.customer_id = \
             p.customer_id AND e.event_type = 'purchase' AND e.quantity > 0 AND e.product IN ('socks', 'o''hare') \
             AND e.ts >= TIMESTAMPTZ '2025-05-02 00:00:00+00' AND e.ts < TIMESTAMPTZ '2025-07-01 00:00:00+00')\n  \
             AND p.country IN ('PL', 'DE')\n  \
             AND p.customer_id IN (SELECT e.customer_id FROM events e WHERE e.event_type = 'view' GROUP BY \
             e.customer_id HAVING count(*) >= 3)\n  \
             AND NOT coalesce(p.churned = true, false)"
        );
        assert_eq!(compiled.prefixes.len(), 4);
        assert_eq!(compiled.prefixes.last(), Some(&compiled.membership));
        assert!(compiled.prefixes[0].ends_with("'2025-07-01 00:00:00+00')"), "{}", compiled.prefixes[0]);
    }

    #[test]
    fn no_clauses_is_everyone() {
        let compiled = compile(&AudienceDefinition::default(), NaiveDate::MIN).unwrap();
        assert_eq!(compiled.membership, "SELECT p.customer_id FROM profiles p");
        assert!(compiled.prefixes.is_empty());
    }
}
