//! Compiles an audience definition to ONE membership query: the customer ids of every profile for which all include
//! clauses hold and no exclude clause does. Size, funnel, breakdown, ranking and export all run this query (or its
//! prefixes, for the funnel); the vector index only orders its result.
//!
//! Typed clauses become SQL here, from registry column names and escaped literals; the SQL fragments a definition
//! may carry (`Event::sql`, `Rule::Sql`) are checked by the SQL guard against the events or profiles columns and
//! the guard's rendering is what is compiled in. The query then runs like all model-influenced SQL: read-only, as
//! the reader role, with a statement timeout.
//!
//! Where ingest built them, the query reads the derived tables (`customer_facts` for profile clauses and the
//! report's columns, `event_totals` for event clauses that per-product totals answer exactly) instead of the wide
//! profiles and every event: the same members, from a tenth of the rows.

use chrono::{Days, NaiveDate};
use serde_json::Value;

use super::definition::{AudienceDefinition, Clause, FieldKind, Invalid, Op, ProfileField, Rule, number};
use crate::schema::{CUSTOMER_FACTS, EVENT_TOTALS, is_sale, spend_band_sql};
use crate::sql_guard::{self, ConditionTable};

/// What the data offers the compiler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Data {
    /// The data's last day: relative days count back from it.
    pub as_of: NaiveDate,
    /// Whether ingest built the derived audience tables; a schema ingested by an older release has none, and is
    /// compiled over `profiles` and `events` alone.
    pub derived_tables: bool,
}

/// The compiled queries of a definition.
#[derive(Clone, Debug, PartialEq)]
pub struct Compiled {
    /// The table the membership reads its customers from (`profiles` or `customer_facts`, same rows).
    pub customers: &'static str,
    /// `SELECT p.customer_id FROM profiles p WHERE ...`: the audience.
    pub membership: String,
    /// The common table expression a report reads its members from, `m`: each member's id, `country`, `segment`,
    /// `churned`, `total_spent` and `spend_band` (the index in `SPEND_BANDS`).
    pub report_ctes: String,
    /// The funnel: a `bigint[]` expression of the size after each clause but the last (includes first, then
    /// excludes; the last is the size). Leading clauses that read no events are counted in one scan, a first
    /// event clause from the totals alone, and each later prefix by its own membership query.
    pub funnel: String,
    /// Each clause's boolean expression over the profile `p`, by clause id, as compiled into the queries.
    pub clauses: Vec<(String, String)>,
    /// For each include event clause, by clause id, its condition on an event `e`: the evidence a member fits.
    pub evidence: Vec<(String, String)>,
}

/// The member columns a report reads (with the spend band, which depends on the table).
const MEMBER_FACTS: &str = "p.customer_id, p.country, p.segment, p.churned, p.total_spent";

/// Compiles `definition` for `data` (relative days count back from its last day).
pub fn compile(definition: &AudienceDefinition, data: Data) -> Result<Compiled, Invalid> {
    definition.validate()?;
    let mut conditions = Vec::new();
    let mut clauses = Vec::new();
    let mut evidence = Vec::new();
    for (clause, exclude) in definition.clauses() {
        let expression = clause_sql(clause, data, exclude)?;
        clauses.push((clause.id.clone(), expression.clone()));
        conditions.push(expression);
        if !exclude && matches!(clause.rule, Rule::Event { .. }) {
            let events = event_conditions(&clause.rule, data.as_of)
                .map_err(|Invalid(r)| Invalid(format!("clause {}: {r}", clause.id)))?;
            evidence.push((clause.id.clone(), events));
        }
    }
    // A free SQL condition may name any profiles column, and the facts carry no lists (interests, colours).
    let needs_profiles = definition.clauses().any(|(clause, _)| match &clause.rule {
        Rule::Sql { .. } => true,
        Rule::Profile { field, .. } => field.kind() == FieldKind::TextList,
        Rule::Event { .. } => false,
    });
    let base = if data.derived_tables && !needs_profiles { CUSTOMER_FACTS } else { "profiles" };
    let select = |columns: &str, conditions: &[String]| -> String {
        if conditions.is_empty() {
            format!("SELECT {columns} FROM {base} p")
        } else {
            format!("SELECT {columns} FROM {base} p WHERE {}", conditions.join("\n  AND "))
        }
    };
    let query = |conditions: &[String]| select("p.customer_id", conditions);
    let band = if base == CUSTOMER_FACTS { "p.spend_band".to_owned() } else { spend_band_sql("p.total_spent") };
    let members = format!("{MEMBER_FACTS}, {band} AS spend_band");
    let reads_event: Vec<bool> =
        definition.clauses().map(|(clause, _)| matches!(clause.rule, Rule::Event { .. })).collect();
    let reads_events = reads_event.contains(&true);
    let inner = conditions.len().saturating_sub(1);
    // The leading clauses that read no events are counted together, in one scan of the customers.
    let leading = reads_event[..inner].iter().take_while(|events| !**events).count();
    let mut funnel = Vec::new();
    if leading > 0 {
        let counts: Vec<String> =
            (1..=leading).map(|n| format!("count(*) FILTER (WHERE {})", conditions[..n].join(" AND "))).collect();
        funnel.push(format!("(SELECT ARRAY[{}]::bigint[] FROM {base} p)", counts.join(", ")));
    }
    let first_event = match definition.clauses().next() {
        Some((clause, false)) if data.derived_tables && leading == 0 => totals_count(&clause.rule, data.as_of),
        _ => None,
    };
    let counts: Vec<String> = (leading + 1..=inner)
        .map(|n| match (n, &first_event) {
            (1, Some(count)) => count.clone(),
            _ => format!("(SELECT count(*) FROM ({}) f)", query(&conditions[..n])),
        })
        .collect();
    if !counts.is_empty() {
        funnel.push(format!("ARRAY[{}]::bigint[]", counts.join(", ")));
    }
    if funnel.is_empty() {
        funnel.push("ARRAY[]::bigint[]".to_owned());
    }
    // A membership that reads events is evaluated once and kept; one of profile clauses alone is a scan of the
    // narrow facts, cheaper to run again for each figure than to store (churned, 50k of 100k members: 26 ms
    // against 36 ms).
    let keep = if reads_events { "MATERIALIZED" } else { "NOT MATERIALIZED" };
    let report_ctes = format!("m AS {keep} ({})", select(&members, &conditions));
    let funnel = funnel.join(" || ");
    Ok(Compiled { customers: base, membership: query(&conditions), report_ctes, funnel, clauses, evidence })
}

/// A clause as a condition on the profile `p`: as it is for an include, negated (NULL counting as false) for an
/// exclude.
fn clause_sql(clause: &Clause, data: Data, exclude: bool) -> Result<String, Invalid> {
    let with_id = |Invalid(reason): Invalid| Invalid(format!("clause {}: {reason}", clause.id));
    match &clause.rule {
        Rule::Event { min_count, .. } => {
            let totals = if data.derived_tables { totals_conditions(&clause.rule, data.as_of) } else { None };
            let (from, alias, conditions, count) = match totals {
                Some(conditions) => (EVENT_TOTALS, "t", conditions.map_err(with_id)?, "sum(t.events)"),
                None => ("events", "e", event_conditions(&clause.rule, data.as_of).map_err(with_id)?, "count(*)"),
            };
            Ok(match min_count {
                Some(count_at_least) if *count_at_least > 1 => {
                    // Counting needs a GROUP BY; `IN` lets PostgreSQL hash it once instead of counting per customer.
                    let set = format!(
                        "SELECT {alias}.customer_id FROM {from} {alias} WHERE {conditions} \
                         GROUP BY {alias}.customer_id HAVING {count} >= {count_at_least}"
                    );
                    if exclude { format!("p.customer_id NOT IN ({set})") } else { format!("p.customer_id IN ({set})") }
                }
                _ => {
                    // EXISTS becomes a semi-join (an anti-join when negated), the cheapest shape either way.
                    let exists = format!(
                        "EXISTS (SELECT 1 FROM {from} {alias} WHERE {alias}.customer_id = p.customer_id AND {conditions})"
                    );
                    if exclude { format!("NOT {exists}") } else { exists }
                }
            })
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

/// An event rule as conditions on an `event_totals` row `t`, when the totals answer it exactly: an event type is
/// given, no colour or SQL condition, and at most one of a lowest price, a highest price and a time window (whether
/// one event is both in a price range and in a window, per-product totals cannot tell); a minimum count only
/// alone (it counts every event of the products). `None` when the rule needs the events themselves.
fn totals_conditions(rule: &Rule, as_of: NaiveDate) -> Option<Result<String, Invalid>> {
    let Rule::Event {
        event_type: Some(event_type),
        products,
        colors,
        min_price,
        max_price,
        within_days,
        since,
        until,
        min_count,
        sql,
    } = rule
    else {
        return None;
    };
    // A calendar period needs each event's day; the totals keep only the latest.
    if since.is_some() || until.is_some() {
        return None;
    }
    let bounds =
        usize::from(min_price.is_some()) + usize::from(max_price.is_some()) + usize::from(within_days.is_some());
    let counts = min_count.is_some_and(|count| count > 1);
    if !colors.is_empty() || sql.is_some() || bounds > 1 || (counts && bounds > 0) {
        return None;
    }
    // The totals leave out returns already (`schema::is_return`), as `event_conditions` does.
    let mut conditions = vec![format!("t.event_type = '{}'", event_type.as_str())];
    if !products.is_empty() {
        match in_list("t.product", products) {
            Ok(list) => conditions.push(list),
            Err(invalid) => return Some(Err(invalid)),
        }
    }
    if let Some(min) = min_price {
        conditions.push(format!("t.max_price >= {}", number(*min)));
    }
    if let Some(max) = max_price {
        conditions.push(format!("t.min_price <= {}", number(*max)));
    }
    if let Some(days) = within_days {
        // `last_ts` is the latest event up to the end of the data's last day, the window's upper bound.
        let (from, _) = window(as_of, *days);
        conditions.push(format!("t.last_ts >= TIMESTAMPTZ '{from} 00:00:00+00'"));
    }
    Some(Ok(conditions.join(" AND ")))
}

/// How many customers an include event clause selects, counted from `event_totals` alone (without the customers
/// table), when the totals answer the clause. Every customer in the totals has a profile (the loader rejects events
/// of customers the customers file lacks), so this is the size of the clause's membership: "viewed watches" at
/// 100k customers is an index-only scan of 31k rows instead of a join with every customer.
fn totals_count(rule: &Rule, as_of: NaiveDate) -> Option<String> {
    let Rule::Event { min_count, .. } = rule else { return None };
    let conditions = totals_conditions(rule, as_of)?.ok()?;
    Some(match min_count {
        Some(count_at_least) if *count_at_least > 1 => format!(
            "(SELECT count(*) FROM (SELECT t.customer_id FROM {EVENT_TOTALS} t WHERE {conditions} \
             GROUP BY t.customer_id HAVING sum(t.events) >= {count_at_least}) f)"
        ),
        _ => format!("(SELECT count(DISTINCT t.customer_id) FROM {EVENT_TOTALS} t WHERE {conditions})"),
    })
}

/// The days a window of `days` days ending on `as_of` spans: from its first day to the day after its last. The one
/// owner of the convention "the last N days": audience clauses and metrics both count back from the data's last day.
pub(crate) fn window(as_of: NaiveDate, days: u32) -> (NaiveDate, NaiveDate) {
    let from = as_of.checked_sub_days(Days::new(u64::from(days.saturating_sub(1)))).unwrap_or(NaiveDate::MIN);
    let until = as_of.checked_add_days(Days::new(1)).unwrap_or(NaiveDate::MAX);
    (from, until)
}

/// The conditions on an event `e` that an event rule sets.
pub(crate) fn event_conditions(rule: &Rule, as_of: NaiveDate) -> Result<String, Invalid> {
    let Rule::Event {
        event_type,
        products,
        colors,
        min_price,
        max_price,
        within_days,
        since,
        until,
        min_count: _,
        sql,
    } = rule
    else {
        return Err(Invalid("not an event clause".to_owned()));
    };
    let mut conditions = Vec::new();
    if let Some(event_type) = event_type {
        conditions.push(format!("e.event_type = '{}'", event_type.as_str()));
        if *event_type == super::definition::EventType::Purchase {
            // A return is not a purchase.
            conditions.push(is_sale("e.quantity"));
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
        let (from, until) = window(as_of, *days);
        conditions
            .push(format!("e.ts >= TIMESTAMPTZ '{from} 00:00:00+00' AND e.ts < TIMESTAMPTZ '{until} 00:00:00+00'"));
    }
    if let Some(since) = since {
        conditions.push(format!("e.ts >= TIMESTAMPTZ '{since} 00:00:00+00'"));
    }
    if let Some(until) = until {
        let next = until.checked_add_days(Days::new(1)).unwrap_or(NaiveDate::MAX);
        conditions.push(format!("e.ts < TIMESTAMPTZ '{next} 00:00:00+00'"));
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
        let compiled = compile(&d, base_tables(NaiveDate::from_ymd_opt(2025, 6, 30).unwrap())).unwrap();
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
        // The funnel counts the three clauses before the last, each prefix on its own (the first reads events).
        assert_eq!(compiled.funnel.matches("(SELECT count(*) FROM (SELECT p.customer_id FROM profiles p").count(), 3);
        assert!(compiled.report_ctes.starts_with(
            "m AS MATERIALIZED (SELECT p.customer_id, p.country, p.segment, \
             p.churned, p.total_spent, CASE WHEN p.total_spent <= 0 THEN 0"
        ));
    }

    #[test]
    fn no_clauses_is_everyone() {
        let compiled = compile(&AudienceDefinition::default(), base_tables(NaiveDate::MIN)).unwrap();
        assert_eq!(compiled.membership, "SELECT p.customer_id FROM profiles p");
        assert_eq!(compiled.funnel, "ARRAY[]::bigint[]");
        assert!(compiled.report_ctes.starts_with("m AS NOT MATERIALIZED (SELECT"));
        let data = Data { as_of: NaiveDate::MIN, derived_tables: true };
        let compiled = compile(&AudienceDefinition::default(), data).unwrap();
        assert_eq!(compiled.membership, "SELECT p.customer_id FROM customer_facts p");
    }

    fn base_tables(as_of: NaiveDate) -> Data {
        Data { as_of, derived_tables: false }
    }

    #[test]
    fn derived_tables_answer_what_totals_can_tell_and_events_the_rest() {
        let d = definition(json!({
            "version": 1,
            "include": [
                {"type": "event", "event_type": "view", "products": ["watches"]},
                {"type": "event", "event_type": "purchase", "min_price": 500},
                {"type": "event", "event_type": "purchase", "products": ["socks"], "within_days": 60},
                {"type": "event", "event_type": "add_to_cart", "min_count": 3},
                {"type": "event", "event_type": "purchase", "min_price": 10, "within_days": 7},
                {"type": "event", "event_type": "view", "colors": ["red"]},
                {"type": "event", "products": ["hats"]},
                {"type": "profile", "field": "country", "op": "=", "value": "PL"}
            ],
            "exclude": [{"type": "event", "event_type": "purchase", "max_price": 20}],
            "limit": 10
        }));
        let data = Data { as_of: NaiveDate::from_ymd_opt(2025, 6, 30).unwrap(), derived_tables: true };
        let compiled = compile(&d, data).unwrap();
        let clause = |id: &str| compiled.clauses.iter().find(|(c, _)| c == id).map(|(_, sql)| sql.as_str()).unwrap();
        assert_eq!(
            clause("c1"),
            "EXISTS (SELECT 1 FROM event_totals t WHERE t.customer_id = p.customer_id AND t.event_type = 'view' \
             AND t.product = 'watches')"
        );
        assert!(clause("c2").ends_with("t.event_type = 'purchase' AND t.max_price >= 500)"), "{}", clause("c2"));
        assert!(
            clause("c3").ends_with("t.product = 'socks' AND t.last_ts >= TIMESTAMPTZ '2025-05-02 00:00:00+00')"),
            "{}",
            clause("c3")
        );
        assert_eq!(
            clause("c4"),
            "p.customer_id IN (SELECT t.customer_id FROM event_totals t WHERE t.event_type = 'add_to_cart' \
             GROUP BY t.customer_id HAVING sum(t.events) >= 3)"
        );
        // A price and a window together, a colour, and no event type need the events themselves.
        for id in ["c5", "c6", "c7"] {
            assert!(clause(id).contains("FROM events e"), "{id}: {}", clause(id));
        }
        assert!(clause("c8").starts_with("p.country"));
        assert!(clause("c9").starts_with("NOT EXISTS (SELECT 1 FROM event_totals t"), "{}", clause("c9"));
        assert!(clause("c9").ends_with("t.min_price <= 20)"), "{}", clause("c9"));
        assert!(compiled.membership.starts_with("SELECT p.customer_id FROM customer_facts p WHERE "));
        // The evidence for the listed members always reads the events.
        assert!(compiled.evidence.iter().all(|(_, condition)| condition.starts_with("e.")));
    }

    #[test]
    fn a_free_sql_clause_reads_the_full_profiles() {
        let d = definition(
            json!({"version": 1, "include": [{"type": "sql", "condition": "email LIKE '%@example.com'"}], "limit": 10}),
        );
        let data = Data { as_of: NaiveDate::from_ymd_opt(2025, 6, 30).unwrap(), derived_tables: true };
        assert!(compile(&d, data).unwrap().membership.starts_with("SELECT p.customer_id FROM profiles p WHERE "));
    }

    #[test]
    fn every_scalar_profile_field_is_a_customer_fact_and_lists_read_the_profiles() {
        for field in ProfileField::ALL {
            let fact = crate::schema::CUSTOMER_FACTS_COLUMNS.contains(&field.column());
            assert_eq!(fact, field.kind() != FieldKind::TextList, "{}", field.column());
        }
        let d = definition(json!({"version": 1, "limit": 10,
            "include": [{"type": "profile", "field": "interests", "op": "contains", "value": "socks"}]}));
        let data = Data { as_of: NaiveDate::from_ymd_opt(2025, 6, 30).unwrap(), derived_tables: true };
        assert!(compile(&d, data).unwrap().membership.starts_with("SELECT p.customer_id FROM profiles p WHERE "));
    }

    #[test]
    fn leading_profile_clauses_are_counted_in_one_scan_and_a_first_event_clause_from_the_totals() {
        let d = definition(json!({"version": 1, "limit": 10,
            "include": [{"type": "profile", "field": "total_spent", "op": ">", "value": 1000},
                        {"type": "profile", "field": "churned", "op": "=", "value": true},
                        {"type": "event", "event_type": "view", "products": ["hats"]}],
            "exclude": [{"type": "profile", "field": "country", "op": "=", "value": "DE"}]}));
        let data = Data { as_of: NaiveDate::from_ymd_opt(2025, 6, 30).unwrap(), derived_tables: true };
        let compiled = compile(&d, data).unwrap();
        assert_eq!(
            compiled.funnel,
            "(SELECT ARRAY[count(*) FILTER (WHERE p.total_spent > 1000), count(*) FILTER (WHERE p.total_spent > 1000 \
             AND p.churned = true)]::bigint[] FROM customer_facts p) || ARRAY[(SELECT count(*) FROM (SELECT \
             p.customer_id FROM customer_facts p WHERE p.total_spent > 1000\n  AND p.churned = true\n  AND EXISTS \
             (SELECT 1 FROM event_totals t WHERE t.customer_id = p.customer_id AND t.event_type = 'view' AND \
             t.product = 'hats')) f)]::bigint[]"
        );
        assert!(compiled.report_ctes.starts_with(
            "m AS MATERIALIZED (SELECT p.customer_id, p.country, p.segment, \
             p.churned, p.total_spent, p.spend_band AS spend_band FROM customer_facts p WHERE"
        ));

        let d = definition(json!({"version": 1, "limit": 10,
            "include": [{"type": "event", "event_type": "view", "products": ["watches"]},
                        {"type": "profile", "field": "country", "op": "=", "value": "PL"}]}));
        assert_eq!(
            compile(&d, data).unwrap().funnel,
            "ARRAY[(SELECT count(DISTINCT t.customer_id) FROM event_totals t WHERE t.event_type = 'view' AND \
             t.product = 'watches')]::bigint[]"
        );
        let profiles_only = definition(json!({"version": 1, "limit": 10,
            "include": [{"type": "profile", "field": "churned", "op": "=", "value": true}]}));
        assert!(compile(&profiles_only, data).unwrap().report_ctes.starts_with("m AS NOT MATERIALIZED ("));
    }
}
