//! The metrics' rollups: the per-customer facts of the catalogue ([`customer_event_facts`]) summed once at ingest,
//! so a call reads a hundred thousand rows (or a few hundred thousand) instead of every event.
//!
//! - [`CUSTOMER_TOTALS`]: per customer, all events up to the data's last day. Any measure of the whole data, by
//!   customer dimensions, with any filter.
//! - [`DAILY_TOTALS`]: per UTC day, event type, product and colour, without the customer: the summed facts only.
//!   Additive measures (`Measure::additive`) of any period, by event dimensions, without filters.
//! - [`CUSTOMER_DAYS`]: per customer, UTC day, product and colour. Any measure of any period, by any dimension but
//!   the event type, with any filter.
//!
//! A call none of them answers (a count of customers by event type) reads the events, as every call does on a
//! schema ingested before the rollups. Each rollup holds exactly the facts the events give for its rows, so a
//! call's value does not depend on the rows it was read from (tested against the events in `ingest`'s pipeline).
//!
//! Architecture Invariant: the rollups are derived in the ingest transaction, from the staging events, and swapped in
//! with them; the compiler reads them only when the dataset row says the ingest that wrote the data built them.

use chrono::NaiveDate;

use super::catalogue::{Combine, Dimension, Fact, Source, customer_event_facts};
use super::query::{MetricsQuery, Period};
use crate::audience::compile::Data;
use crate::audience::definition::Invalid;
use crate::schema::{CUSTOMER_DAYS, CUSTOMER_TOTALS, DAILY_TOTALS, is_sale};

/// The rows a call's per-customer facts `f` are computed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rows {
    /// The events, one row per event.
    Events,
    /// [`CUSTOMER_TOTALS`]: already one row `f` per customer.
    CustomerTotals,
    /// [`CUSTOMER_DAYS`].
    CustomerDays,
    /// [`DAILY_TOTALS`].
    DailyTotals,
}

impl Rows {
    /// The smallest rows that answer `query` over `period` (with `compare`, the period and the one before it).
    pub fn for_call(query: &MetricsQuery, period: &Period, data: Data) -> Self {
        if !data.derived_tables {
            return Self::Events;
        }
        let by = |source: Source| query.dimensions.iter().any(|dimension| dimension.source() == source);
        if period.first.is_none() && period.last == data.as_of && !query.compare && !by(Source::Event) {
            return Self::CustomerTotals;
        }
        let filtered = query.filters.clauses().next().is_some();
        if !filtered && !by(Source::Customer) && query.measures.iter().all(|measure| measure.additive()) {
            return Self::DailyTotals;
        }
        if query.dimensions.contains(&Dimension::EventType) { Self::Events } else { Self::CustomerDays }
    }

    /// The table the rows are read from, as `e`.
    pub fn table(self) -> &'static str {
        match self {
            Self::Events => "events",
            Self::CustomerTotals => CUSTOMER_TOTALS,
            Self::CustomerDays => CUSTOMER_DAYS,
            Self::DailyTotals => DAILY_TOTALS,
        }
    }

    /// Whether a row belongs to one customer, so the facts are grouped per customer.
    pub fn has_customers(self) -> bool {
        self != Self::DailyTotals
    }

    /// Whether the rows are already one per customer: the facts are read as they are, not grouped.
    pub fn one_per_customer(self) -> bool {
        self == Self::CustomerTotals
    }

    /// The UTC day of a row `e`, as a timestamp without time zone (what the time dimensions truncate).
    pub fn day(self) -> &'static str {
        match self {
            Self::Events => "(e.ts AT TIME ZONE 'UTC')",
            _ => "e.day::timestamp",
        }
    }

    /// The facts the rows give: every one, but only the summed ones where rows do not tell customers apart.
    pub fn facts(self) -> Vec<Fact> {
        let facts = customer_event_facts();
        if self.has_customers() { facts } else { facts.into_iter().filter(|f| f.combine == Combine::Sum).collect() }
    }

    /// The SQL of `fact` for one row `f`: over the events, over the rollup's rows of the group, or the row's own.
    pub fn fact(self, fact: &Fact) -> String {
        match self {
            Self::Events => fact.sql.clone(),
            Self::CustomerTotals => format!("e.{}", fact.name),
            Self::CustomerDays | Self::DailyTotals => fact.combined(),
        }
    }

    /// The condition on a row `e` that it holds a sale (see `Measure::of_sales_only`).
    pub fn with_sales(self) -> String {
        match self {
            Self::Events => format!("e.event_type = 'purchase' AND {}", is_sale("e.quantity")),
            _ => "e.orders > 0".to_owned(),
        }
    }

    /// The condition on a row `e` that it falls in `period`; none for the customer totals, which hold the whole
    /// data up to its last day and nothing else.
    pub fn in_period(self, period: &Period, as_of: NaiveDate) -> Result<Option<String>, Invalid> {
        Ok(match self {
            Self::Events => Some(period.condition(as_of)?),
            Self::CustomerTotals => None,
            Self::CustomerDays | Self::DailyTotals => Some(match period.first {
                Some(first) => format!("e.day BETWEEN DATE '{first}' AND DATE '{}'", period.last),
                None => format!("e.day <= DATE '{}'", period.last),
            }),
        })
    }
}

/// The statements that create the rollups as `<name>_staging` from the staging events `events` (replacing earlier
/// ones; the caller drops them). `as_of` is the data's last day: the customer totals hold the events up to its end.
pub fn build_statements(events: &str, as_of: NaiveDate) -> Vec<String> {
    let facts = customer_event_facts();
    let summed: Vec<Fact> = facts.iter().filter(|fact| fact.combine == Combine::Sum).cloned().collect();
    let columns = |facts: &[Fact], sql: fn(&Fact) -> String| -> String {
        facts
            .iter()
            .map(|fact| format!("({})::{} AS {}", sql(fact), fact.stored, fact.name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let over_events: fn(&Fact) -> String = |fact| fact.sql.clone();
    let day = format!("({})::date", Rows::Events.day());
    vec![
        // Ordered by day, so a period's rows lie together on disk.
        format!(
            "CREATE TABLE {CUSTOMER_DAYS}_staging AS SELECT e.customer_id, {day} AS day, e.product, e.color, {} \
             FROM {events} e GROUP BY 1, 2, 3, 4 ORDER BY 2, 1",
            columns(&facts, over_events)
        ),
        format!(
            "CREATE TABLE {CUSTOMER_TOTALS}_staging AS SELECT e.customer_id, {} FROM {CUSTOMER_DAYS}_staging e \
             WHERE e.day <= DATE '{as_of}' GROUP BY 1",
            columns(&facts, Fact::combined)
        ),
        format!(
            "CREATE TABLE {DAILY_TOTALS}_staging AS SELECT {day} AS day, e.event_type, e.product, e.color, {} \
             FROM {events} e GROUP BY 1, 2, 3, 4 ORDER BY 1",
            columns(&summed, over_events)
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::MetricsArgs;
    use serde_json::json;

    const AS_OF: NaiveDate = NaiveDate::from_ymd_opt(2025, 6, 30).expect("a date");

    fn rows(call: serde_json::Value, derived_tables: bool) -> Rows {
        let query = serde_json::from_value::<MetricsArgs>(call).unwrap().check().unwrap();
        let compiled = super::super::query::compile(&query, Data { as_of: AS_OF, derived_tables }).unwrap();
        let read = [Rows::CustomerTotals, Rows::CustomerDays, Rows::DailyTotals, Rows::Events]
            .into_iter()
            .filter(|rows| compiled.sql.contains(&format!(" FROM {} e", rows.table())))
            .collect::<Vec<_>>();
        assert_eq!(read.len(), 1, "{}", compiled.sql);
        assert_eq!(compiled.read_from, read[0].table());
        read[0]
    }

    #[test]
    fn each_call_reads_the_smallest_rows_that_answer_it() {
        let filter = json!([{"type": "profile", "field": "country", "op": "=", "value": "PL"}]);
        let cases = [
            (json!({"measures": ["buyers", "net_revenue"]}), Rows::CustomerTotals),
            (json!({"measures": ["view_to_cart"], "dimensions": ["country"], "filters": filter}), Rows::CustomerTotals),
            (json!({"measures": ["orders"], "until": "2026-01-01"}), Rows::CustomerTotals),
            (json!({"measures": ["orders"], "until": "2025-06-29"}), Rows::DailyTotals),
            (json!({"measures": ["orders", "average_order_value"], "dimensions": ["month"]}), Rows::DailyTotals),
            (json!({"measures": ["events"], "dimensions": ["event_type"], "within_days": 7}), Rows::DailyTotals),
            (json!({"measures": ["net_revenue"], "within_days": 30, "compare": true}), Rows::DailyTotals),
            (json!({"measures": ["orders"], "dimensions": ["product"], "filters": filter}), Rows::CustomerDays),
            (json!({"measures": ["orders"], "dimensions": ["country", "month"]}), Rows::CustomerDays),
            (json!({"measures": ["buyers"], "within_days": 30, "compare": true}), Rows::CustomerDays),
            (json!({"measures": ["view_to_cart"], "dimensions": ["product", "quarter"]}), Rows::CustomerDays),
            (json!({"measures": ["active_customers"], "dimensions": ["event_type"]}), Rows::Events),
        ];
        for (call, expected) in cases {
            assert_eq!(rows(call.clone(), true), expected, "{call}");
            assert_eq!(rows(call.clone(), false), Rows::Events, "a schema without rollups: {call}");
        }
    }

    #[test]
    fn rollups_hold_every_fact_their_rows_can_tell() {
        let statements = build_statements("events_staging", AS_OF);
        for fact in customer_event_facts() {
            let column = format!(" AS {}", fact.name);
            assert!(statements[0].contains(&column) && statements[1].contains(&column), "{}", fact.name);
            assert_eq!(statements[2].contains(&column), fact.combine == Combine::Sum, "{}", fact.name);
        }
    }
}
