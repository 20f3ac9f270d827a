//! One `metrics` call: its arguments as the model or a user sends them ([`MetricsArgs`]), checked in Rust into a
//! [`MetricsQuery`] with one precise reason per mistake, and compiled to ONE read-only query ([`compile`]).
//!
//! **Time, the one convention.** Event measures count the events up to the end of the data's last day (`as_of`,
//! the day ingest computed the profiles for, as audience clauses do). `within_days: N` is the N days ending on that
//! day (`audience::compile::window`); `since` and `until` are a calendar period, both days included, in UTC, and
//! never past the data's last day. With `compare`, the previous period ends the day before the period starts: a
//! calendar period of whole months (a month, a quarter, a year) is compared with as many calendar months before it
//! (May with April), any other period with the same number of days. Customer measures describe customers as they are now and take no time.
//!
//! **Filters** are audience clauses, compiled by the audience compiler into the membership the counted customers
//! (or the customers whose events are counted) must be in; there is no second compiler.

use chrono::{Datelike, Days, Months, NaiveDate};
use serde::{Deserialize, Serialize};

use super::catalogue::{Dimension, Grain, Measure};
use super::rollups::Rows;
use crate::audience::compile::{self as audience_compile, Data, event_conditions, window};
use crate::audience::definition::{AudienceDefinition, Clause, Invalid, Rule};

/// Most measures one call computes: they share one query and one table.
pub const MAX_MEASURES: usize = 4;
/// Most dimensions one call groups by: a breakdown, or a breakdown of a series.
pub const MAX_DIMENSIONS: usize = 2;
/// Most rows one call lists (a top N); a longer table is an export, not an answer.
pub const MAX_LIMIT: usize = 100;
/// The longest window, in days: a century, as an audience clause's.
pub const MAX_WINDOW_DAYS: u32 = 36_600;

/// The arguments of a `metrics` call. Names are plain strings, so that an unknown one gets a reason with the names
/// there are rather than a parser's error.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsArgs {
    /// Measure names of the catalogue (`net_revenue`).
    #[serde(default)]
    pub measures: Vec<String>,
    /// Dimension names to group by (`country`, `month`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dimensions: Vec<String>,
    /// Audience clauses the customers must meet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<Clause>,
    /// Audience clauses the customers must not meet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<Clause>,
    /// The N days ending on the data's last day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub within_days: Option<u32>,
    /// The first day of a calendar period (inclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<NaiveDate>,
    /// The last day of a calendar period (inclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<NaiveDate>,
    /// Also compute the previous period of the same length.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub compare: bool,
    /// A measure or dimension of the call to order the rows by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<Direction>,
    /// The first N rows only (top N).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Asc,
    Desc,
}

/// The time a call covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Time {
    /// Every event up to the data's last day.
    Whole,
    /// The N days ending on the data's last day.
    LastDays(u32),
    /// A calendar period, both days included; an open end is the data's first or last day.
    Calendar { since: Option<NaiveDate>, until: Option<NaiveDate> },
}

/// What the rows are ordered by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrderKey {
    /// The measure at this position of the call.
    Measure(usize),
    /// The dimension at this position of the call.
    Dimension(usize),
}

/// A checked call.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricsQuery {
    pub measures: Vec<Measure>,
    pub dimensions: Vec<Dimension>,
    /// The filters as an audience definition (its clause ids `c1`, `c2`, ...).
    pub filters: AudienceDefinition,
    pub time: Time,
    pub compare: bool,
    pub order_by: OrderKey,
    pub descending: bool,
    pub limit: Option<usize>,
}

fn invalid<T>(message: impl Into<String>) -> Result<T, Invalid> {
    Err(Invalid(message.into()))
}

/// `a, b or c`.
fn either(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

/// The names close to `wanted`: containing it, contained in it, or sharing a word with it.
fn close_to(wanted: &str, names: &[&'static str]) -> Vec<&'static str> {
    let wanted = wanted.trim().to_lowercase().replace([' ', '-'], "_");
    let words: Vec<&str> = wanted.split('_').filter(|word| word.len() > 3).collect();
    names
        .iter()
        .copied()
        .filter(|name| {
            (!wanted.is_empty() && (name.contains(wanted.as_str()) || wanted.contains(name)))
                || name.split('_').any(|word| words.contains(&word))
        })
        .collect()
}

impl MetricsArgs {
    /// Checks the call, giving the first mistake in one sentence that says what to send instead.
    pub fn check(&self) -> Result<MetricsQuery, Invalid> {
        let measures = self.measures()?;
        let grain = measures[0].grain();
        if let Some(other) = measures.iter().find(|measure| measure.grain() != grain) {
            return invalid(format!(
                "{} and {} cannot be measured in one call: {} {}, {} {}; make one call for each",
                measures[0].name(),
                other.name(),
                measures[0].name(),
                grain.words(),
                other.name(),
                other.grain().words()
            ));
        }
        let dimensions = self.dimensions(&measures)?;
        let filters = self.filters()?;
        let time = self.time(&measures)?;
        if self.compare {
            let closed = matches!(time, Time::LastDays(_) | Time::Calendar { since: Some(_), until: Some(_) });
            if !closed {
                return invalid(
                    "compare needs a period of known length to compare with the one before: give within_days, or \
                     since and until",
                );
            }
            if let Some(series) = dimensions.iter().find(|dimension| dimension.is_time()) {
                return invalid(format!(
                    "compare lines up the same groups of two periods, and {} already is a series over time: leave \
                     out compare or the {} dimension",
                    series.name(),
                    series.name()
                ));
            }
        }
        let (order_by, descending) = self.order(&measures, &dimensions)?;
        if let Some(limit) = self.limit
            && !(1..=MAX_LIMIT).contains(&limit)
        {
            return invalid(format!("limit must be between 1 and {MAX_LIMIT}"));
        }
        Ok(MetricsQuery {
            measures,
            dimensions,
            filters,
            time,
            compare: self.compare,
            order_by,
            descending,
            limit: self.limit,
        })
    }

    fn measures(&self) -> Result<Vec<Measure>, Invalid> {
        let all: Vec<&str> = Measure::ALL.iter().map(|measure| measure.name()).collect();
        if self.measures.is_empty() {
            return invalid(format!("name at least one measure: {}", all.join(", ")));
        }
        if self.measures.len() > MAX_MEASURES {
            return invalid(format!("at most {MAX_MEASURES} measures in one call; make another call for the rest"));
        }
        let mut measures = Vec::new();
        for name in &self.measures {
            let Some(measure) = Measure::named(name) else {
                if Dimension::named(name).is_some() {
                    return invalid(format!("{name} is a dimension, not a measure: put it in dimensions"));
                }
                let close = close_to(name, &all);
                let hint = match close.as_slice() {
                    [] => "; the measures are".to_owned(),
                    close => format!("; did you mean {}? The measures are", either(close)),
                };
                return invalid(format!(
                    "unknown measure {}{hint} {}",
                    crate::audience::definition::shorten(name),
                    all.join(", ")
                ));
            };
            if measures.contains(&measure) {
                return invalid(format!("the measure {name} is named twice"));
            }
            measures.push(measure);
        }
        Ok(measures)
    }

    fn dimensions(&self, measures: &[Measure]) -> Result<Vec<Dimension>, Invalid> {
        let all: Vec<&str> = Dimension::ALL.iter().map(|dimension| dimension.name()).collect();
        if self.dimensions.len() > MAX_DIMENSIONS {
            return invalid(format!("at most {MAX_DIMENSIONS} dimensions in one call"));
        }
        let mut dimensions = Vec::new();
        for name in &self.dimensions {
            let Some(dimension) = Dimension::named(name) else {
                if Measure::named(name).is_some() {
                    return invalid(format!("{name} is a measure, not a dimension: put it in measures"));
                }
                let close = close_to(name, &all);
                let hint = match close.as_slice() {
                    [] => "; the dimensions are".to_owned(),
                    close => format!("; did you mean {}? The dimensions are", either(close)),
                };
                return invalid(format!(
                    "unknown dimension {}{hint} {}",
                    crate::audience::definition::shorten(name),
                    all.join(", ")
                ));
            };
            if dimensions.contains(&dimension) {
                return invalid(format!("the dimension {name} is named twice"));
            }
            if let Some(measure) = measures.iter().find(|measure| !measure.takes(dimension)) {
                let takes: Vec<&str> = Dimension::ALL.iter().filter(|d| measure.takes(**d)).map(|d| d.name()).collect();
                let why = match measure.grain() {
                    Grain::Customer => {
                        format!("{} {}, and {name} belongs to events", measure.name(), measure.grain().words())
                    }
                    Grain::Event => {
                        format!("{} counts given event types only, so other types have no value", measure.name())
                    }
                };
                return invalid(format!(
                    "the dimension {name} does not apply to {}: {why}; {} takes {}",
                    measure.name(),
                    measure.name(),
                    either(&takes)
                ));
            }
            dimensions.push(dimension);
        }
        Ok(dimensions)
    }

    fn filters(&self) -> Result<AudienceDefinition, Invalid> {
        for (clause, kind) in
            self.filters.iter().map(|c| (c, "filters")).chain(self.exclude.iter().map(|c| (c, "exclude")))
        {
            if names_nothing(&clause.rule) {
                return invalid(format!(
                    "an event clause in {kind} names no condition: give at least one of event_type, products, colors, \
                     min_price, max_price, within_days, since, until or min_count, or leave it out"
                ));
            }
        }
        let mut definition =
            AudienceDefinition { include: self.filters.clone(), exclude: self.exclude.clone(), ..Default::default() };
        definition.normalize();
        definition.assign_ids();
        definition.validate().map_err(|Invalid(reason)| Invalid(format!("filters: {reason}")))?;
        Ok(definition)
    }

    fn time(&self, measures: &[Measure]) -> Result<Time, Invalid> {
        let time = match (self.within_days, self.since, self.until) {
            (None, None, None) => Time::Whole,
            (Some(_), None, None) if self.within_days.is_some_and(|days| days == 0 || days > MAX_WINDOW_DAYS) => {
                return invalid(format!("within_days must be between 1 and {MAX_WINDOW_DAYS}"));
            }
            (Some(days), None, None) => Time::LastDays(days),
            (Some(_), _, _) => return invalid("give within_days or since/until, not both"),
            (None, Some(since), Some(until)) if since > until => {
                return invalid(format!("since {since} is after until {until}"));
            }
            (None, since, until) => Time::Calendar { since, until },
        };
        if time != Time::Whole && measures[0].grain() == Grain::Customer {
            let names: Vec<&str> = measures.iter().map(|measure| measure.name()).collect();
            return invalid(format!(
                "{} {} and takes no time; for customers active in a period measure active_customers or buyers, or \
                 filter on an event clause with within_days",
                either(&names),
                Grain::Customer.words()
            ));
        }
        Ok(time)
    }

    fn order(&self, measures: &[Measure], dimensions: &[Dimension]) -> Result<(OrderKey, bool), Invalid> {
        let key = match &self.order_by {
            Some(name) => {
                if let Some(at) = measures.iter().position(|measure| measure.name() == name) {
                    OrderKey::Measure(at)
                } else if let Some(at) = dimensions.iter().position(|dimension| dimension.name() == name) {
                    OrderKey::Dimension(at)
                } else {
                    let names: Vec<&str> = measures
                        .iter()
                        .map(|measure| measure.name())
                        .chain(dimensions.iter().map(|dimension| dimension.name()))
                        .collect();
                    return invalid(format!(
                        "order_by {} is not a measure or dimension of this call; order by {}",
                        crate::audience::definition::shorten(name),
                        either(&names)
                    ));
                }
            }
            // A series reads in time order; a breakdown, largest first.
            None => match dimensions.iter().position(|dimension| dimension.is_time()) {
                Some(at) => OrderKey::Dimension(at),
                None => OrderKey::Measure(0),
            },
        };
        let descending = match (self.order, key) {
            (Some(direction), _) => direction == Direction::Desc,
            (None, OrderKey::Measure(_)) => true,
            (None, OrderKey::Dimension(_)) => false,
        };
        Ok((key, descending))
    }
}

/// True for an event clause without a single condition: it would count every customer with any event, which nobody
/// asks for in a filter.
fn names_nothing(rule: &Rule) -> bool {
    matches!(
        rule,
        Rule::Event {
            event_type: None,
            products,
            colors,
            min_price: None,
            max_price: None,
            within_days: None,
            since: None,
            until: None,
            min_count: None,
            sql: None,
        } if products.is_empty() && colors.is_empty()
    )
}

/// Days of the data a call covers, both included; `first` is open for "every event up to `last`".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Period {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first: Option<NaiveDate>,
    pub last: NaiveDate,
}

impl Period {
    /// The period in words: "2025-06-01 to 2025-06-30", or "up to 2025-06-30".
    pub fn words(&self) -> String {
        match self.first {
            None => format!("up to {}", self.last),
            Some(first) if first == self.last => format!("on {first}"),
            Some(first) => format!("{first} to {}", self.last),
        }
    }

    /// The condition on an event `e` that it falls in the period, as the audience compiler writes it.
    pub(super) fn condition(&self, as_of: NaiveDate) -> Result<String, Invalid> {
        let rule = Rule::Event {
            event_type: None,
            products: Vec::new(),
            colors: Vec::new(),
            min_price: None,
            max_price: None,
            within_days: None,
            since: self.first,
            until: Some(self.last),
            min_count: None,
            sql: None,
        };
        event_conditions(&rule, as_of)
    }
}

/// A call compiled for the data.
#[derive(Clone, Debug, PartialEq)]
pub struct CompiledMetrics {
    pub sql: String,
    /// The days counted (event measures only).
    pub period: Option<Period>,
    /// The days of the period compared with (with `compare`).
    pub previous: Option<Period>,
    /// The table the values are computed from: the customers, a rollup or the events.
    pub read_from: &'static str,
}

impl MetricsQuery {
    /// The days the call counts, on data whose last day is `as_of`.
    fn period(&self, as_of: NaiveDate) -> Result<Option<Period>, Invalid> {
        if self.measures.first().is_some_and(|measure| measure.grain() == Grain::Customer) {
            return Ok(None);
        }
        let period = match self.time {
            Time::Whole => Period { first: None, last: as_of },
            Time::LastDays(days) => Period { first: Some(window(as_of, days).0), last: as_of },
            Time::Calendar { since, until } => {
                let last = until.map_or(as_of, |until| until.min(as_of));
                if let Some(since) = since
                    && since > last
                {
                    return invalid(format!("since {since} is after the data's last day, {as_of}"));
                }
                Period { first: since, last }
            }
        };
        Ok(Some(period))
    }
}

/// The period `period` is compared with, ending the day before it starts: for a calendar period of whole months (a
/// month, a quarter, a year) as many calendar months, so May is compared with April however long each is; else the
/// same number of days.
fn previous(period: &Period, calendar: bool) -> Option<Period> {
    let first = period.first?;
    let last = first.checked_sub_days(Days::new(1))?;
    let after = period.last.succ_opt()?;
    if calendar && first.day() == 1 && after.day() == 1 {
        let months = (after.year() - first.year()) * 12 + i32::try_from(after.month()).ok()?
            - i32::try_from(first.month()).ok()?;
        let start = first.checked_sub_months(Months::new(u32::try_from(months).ok()?))?;
        return Some(Period { first: Some(start), last });
    }
    let days = u64::try_from((period.last - first).num_days() + 1).ok()?;
    Some(Period { first: Some(first.checked_sub_days(Days::new(days))?), last })
}

/// Compiles a checked call for `data`: ONE query, its filters compiled by the audience compiler.
pub fn compile(query: &MetricsQuery, data: Data) -> Result<CompiledMetrics, Invalid> {
    let audience = audience_compile::compile(&query.filters, data)?;
    let customers = audience.customers;
    let filtered = query.filters.clauses().next().is_some();
    // The groups' keys over rows whose UTC day is `day` (see `Rows::day`).
    let keys = |day: &str| -> Vec<String> {
        query
            .dimensions
            .iter()
            .enumerate()
            .map(|(at, dimension)| format!("{} AS k{at}", dimension.key_sql(day)))
            .collect()
    };
    let key_names: Vec<String> = (0..query.dimensions.len()).map(|at| format!("k{at}")).collect();
    let measures: Vec<String> =
        query.measures.iter().enumerate().map(|(at, measure)| format!("{} AS m{at}", measure.sql())).collect();
    let period = query.period(data.as_of)?;
    let compared = match (&period, query.compare) {
        (Some(period), true) => {
            let calendar = matches!(query.time, Time::Calendar { .. });
            Some(
                previous(period, calendar)
                    .ok_or_else(|| Invalid("the previous period starts before any date".to_owned()))?,
            )
        }
        _ => None,
    };
    let grouping = |columns: usize| -> String {
        if columns == 0 {
            String::new()
        } else {
            format!(" GROUP BY {}", (1..=columns).map(|n| n.to_string()).collect::<Vec<_>>().join(", "))
        }
    };
    let mut read_from = customers;
    let grouped = match (&period, &compared) {
        (None, _) => {
            let filter =
                if filtered { format!(" WHERE c.customer_id IN ({})", audience.membership) } else { String::new() };
            // Customer measures take customer dimensions only, which read no day.
            let keys = keys(Rows::Events.day());
            let select = keys.iter().chain(&measures).cloned().collect::<Vec<_>>().join(", ");
            format!("g AS (SELECT {select} FROM {customers} c{filter}{})", grouping(keys.len()))
        }
        (Some(period), compared) => {
            let rows = Rows::for_call(query, period, data);
            read_from = rows.table();
            let covered = match compared {
                Some(previous) => Period { first: previous.first, last: period.last },
                None => *period,
            };
            let mut conditions: Vec<String> = rows.in_period(&covered, data.as_of)?.into_iter().collect();
            // Without dimensions only: a group (a product, a country) without a sale is a row of its own, with 0.
            if query.dimensions.is_empty() && query.measures.iter().all(|measure| measure.of_sales_only()) {
                conditions.push(rows.with_sales());
            }
            if filtered {
                conditions.push(format!("e.customer_id IN ({})", audience.membership));
            }
            let join = if query.dimensions.iter().any(|d| d.source() == super::catalogue::Source::Customer) {
                format!(" JOIN {customers} c ON c.customer_id = e.customer_id")
            } else {
                String::new()
            };
            let mut inner: Vec<String> = Vec::new();
            let mut outer_keys: Vec<String> = Vec::new();
            if compared.is_some() {
                let current = rows
                    .in_period(period, data.as_of)?
                    .ok_or_else(|| Invalid("a comparison needs rows of days".to_owned()))?;
                inner.push(format!("CASE WHEN {current} THEN 0 ELSE 1 END AS span"));
                outer_keys.push("f.span".to_owned());
            }
            inner.extend(keys(rows.day()));
            outer_keys.extend(key_names.iter().map(|key| format!("f.{key}")));
            // Measures of sums alone need the facts of each group, not of each customer in it: fewer, larger rows.
            let per_customer = !query.measures.iter().all(|measure| measure.additive());
            if per_customer && rows.has_customers() {
                inner.push("e.customer_id".to_owned());
            }
            let grouped_by = if rows.one_per_customer() { 0 } else { inner.len() };
            // Only the facts the measures read: each is an aggregate over every row.
            let read = rows.facts().into_iter().filter(|fact| query.measures.iter().any(|m| m.reads(fact.name)));
            inner.extend(read.map(|fact| format!("{} AS {}", rows.fact(&fact), fact.name)));
            let filter =
                if conditions.is_empty() { String::new() } else { format!(" WHERE {}", conditions.join(" AND ")) };
            let facts = format!(
                "f AS (SELECT {} FROM {} e{join}{filter}{})",
                inner.join(", "),
                rows.table(),
                grouping(grouped_by)
            );
            let select = outer_keys.iter().chain(&measures).cloned().collect::<Vec<_>>().join(", ");
            format!("{facts},\ng AS (SELECT {select} FROM f{})", grouping(outer_keys.len()))
        }
    };
    let mut select: Vec<String> = query
        .dimensions
        .iter()
        .enumerate()
        .map(|(at, dimension)| format!("{} AS {}", dimension.label_sql(&format!("k{at}")), dimension.name()))
        .collect();
    let from = if compared.is_some() {
        for (at, measure) in query.measures.iter().enumerate() {
            let side = |alias: &str| {
                if measure.unit().zero_when_missing() {
                    format!("coalesce({alias}.m{at}, 0)::float8")
                } else {
                    format!("{alias}.m{at}::float8")
                }
            };
            select.push(format!("{} AS {}", side("cur"), measure.name()));
            select.push(format!("{} AS {}_previous", side("prev"), measure.name()));
        }
        let (current, before) = ("(SELECT * FROM g WHERE span = 0) cur", "(SELECT * FROM g WHERE span = 1) prev");
        if key_names.is_empty() {
            format!("(SELECT 1) one LEFT JOIN {current} ON true LEFT JOIN {before} ON true")
        } else {
            format!("{current} FULL JOIN {before} USING ({})", key_names.join(", "))
        }
    } else {
        for (at, measure) in query.measures.iter().enumerate() {
            select.push(format!("m{at}::float8 AS {}", measure.name()));
        }
        "g".to_owned()
    };
    let mut sql = format!("WITH {grouped}\nSELECT {} FROM {from}", select.join(", "));
    if !key_names.is_empty() {
        // Ties are broken by the dimension values, so a top N is the same every time.
        let direction = if query.descending { "DESC NULLS LAST" } else { "ASC NULLS LAST" };
        let mut order = vec![match query.order_by {
            OrderKey::Measure(at) => format!("{} {direction}", query.measures[at].name()),
            OrderKey::Dimension(at) => format!("k{at} {direction}"),
        }];
        let ordered = |at: usize| query.order_by == OrderKey::Dimension(at);
        order.extend(key_names.iter().enumerate().filter(|(at, _)| !ordered(*at)).map(|(_, key)| format!("{key} ASC")));
        sql.push_str(&format!("\nORDER BY {}", order.join(", ")));
    }
    if let Some(limit) = query.limit {
        sql.push_str(&format!(" LIMIT {limit}"));
    }
    Ok(CompiledMetrics { sql, period, previous: compared, read_from })
}

/// The filters in words ("customers from PL who bought socks, excluding churned customers"), if there are any.
pub fn filter_words(filters: &AudienceDefinition) -> Option<String> {
    filters.clauses().next()?;
    let mut text = String::from("customers");
    let includes: Vec<String> = filters.include.iter().map(|clause| clause.rule.predicate()).collect();
    if !includes.is_empty() {
        text.push(' ');
        text.push_str(&includes.join(", "));
    }
    let excludes: Vec<String> = filters.exclude.iter().map(|clause| clause.rule.noun()).collect();
    if !excludes.is_empty() {
        text.push_str(&format!(", excluding {}", excludes.join(" and ")));
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn args(value: Value) -> MetricsArgs {
        serde_json::from_value(value).unwrap()
    }

    fn refusal(value: Value) -> String {
        args(value).check().unwrap_err().0
    }

    const DATA: Data = Data { as_of: NaiveDate::from_ymd_opt(2025, 6, 30).expect("a date"), derived_tables: true };

    #[test]
    fn bad_calls_get_one_precise_reason() {
        let unknown = refusal(json!({"measures": ["revenue"]}));
        assert!(
            unknown.starts_with("unknown measure \"revenue\"; did you mean gross_revenue or net_revenue?"),
            "{unknown}"
        );
        assert!(unknown.contains("The measures are customers, buyers,"), "{unknown}");
        assert_eq!(
            refusal(json!({"measures": ["churn_rate"], "dimensions": ["product"]})),
            "the dimension product does not apply to churn_rate: churn_rate describes customers as they are now, and \
             product belongs to events; churn_rate takes country, segment, age_band or spend_band"
        );
        assert_eq!(
            refusal(json!({"measures": ["net_revenue"], "dimensions": ["event_type"]})),
            "the dimension event_type does not apply to net_revenue: net_revenue counts given event types only, so \
             other types have no value; net_revenue takes country, segment, age_band, spend_band, product, color, \
             day, week, month or quarter"
        );
        assert!(
            refusal(json!({"measures": ["orders"], "filters": [{"type": "event"}]}))
                .starts_with("an event clause in filters names no condition")
        );
        assert!(refusal(json!({"measures": []})).starts_with("name at least one measure: customers, buyers"));
        assert_eq!(
            refusal(json!({"measures": ["country"]})),
            "country is a dimension, not a measure: put it in dimensions"
        );
        assert_eq!(
            refusal(json!({"measures": ["customers", "orders"]})),
            "customers and orders cannot be measured in one call: customers describes customers as they are now, \
             orders is computed from events; make one call for each"
        );
        assert!(refusal(json!({"measures": ["customers"], "within_days": 30})).contains("takes no time"));
        assert!(refusal(json!({"measures": ["orders"], "compare": true})).starts_with("compare needs a period"));
        assert!(
            refusal(json!({"measures": ["orders"], "within_days": 30, "compare": true, "dimensions": ["month"]}))
                .starts_with("compare lines up the same groups")
        );
        assert_eq!(
            refusal(json!({"measures": ["orders"], "within_days": 30, "since": "2025-01-01"})),
            "give within_days or since/until, not both"
        );
        assert!(refusal(json!({"measures": ["orders"], "order_by": "items"})).starts_with("order_by \"items\" is not"));
        assert!(
            refusal(json!({"measures": ["customers"], "filters": [{"type": "profile", "field": "age", "op": ">", "value": "x"}]}))
                .starts_with("filters: clause c1: age > takes a number")
        );
        let late = args(json!({"measures": ["orders"], "since": "2025-07-01"})).check().unwrap();
        assert_eq!(compile(&late, DATA).unwrap_err().0, "since 2025-07-01 is after the data's last day, 2025-06-30");
    }

    #[test]
    fn a_window_ends_on_the_data_s_last_day_and_the_previous_period_has_its_length() {
        let query = args(json!({"measures": ["net_revenue"], "within_days": 30, "compare": true})).check().unwrap();
        let compiled = compile(&query, DATA).unwrap();
        let day = |text: &str| NaiveDate::parse_from_str(text, "%Y-%m-%d").ok();
        assert_eq!(compiled.period, Some(Period { first: day("2025-06-01"), last: DATA.as_of }));
        assert_eq!(compiled.previous, Some(Period { first: day("2025-05-02"), last: day("2025-05-31").unwrap() }));
        assert!(
            compiled.sql.contains("AS net_revenue, coalesce(prev.m0, 0)::float8 AS net_revenue_previous"),
            "{}",
            compiled.sql
        );
        // Both periods' days, from the daily rollup or, on a schema without it, from the events.
        assert!(
            compiled.sql.contains("WHERE e.day BETWEEN DATE '2025-05-02' AND DATE '2025-06-30'"),
            "{}",
            compiled.sql
        );
        let events = compile(&query, Data { derived_tables: false, ..DATA }).unwrap().sql;
        assert!(
            events.contains(
                "WHERE e.ts >= TIMESTAMPTZ '2025-05-02 00:00:00+00' AND e.ts < TIMESTAMPTZ '2025-07-01 00:00:00+00'"
            ),
            "{events}"
        );
    }

    #[test]
    fn whole_calendar_months_are_compared_with_as_many_months_before() {
        let day = |text: &str| NaiveDate::parse_from_str(text, "%Y-%m-%d").ok();
        let compared = |since: &str, until: &str| {
            let query = args(json!({"measures": ["orders"], "since": since, "until": until, "compare": true}));
            compile(&query.check().unwrap(), DATA).unwrap().previous.unwrap()
        };
        assert_eq!(
            compared("2025-05-01", "2025-05-31"),
            Period { first: day("2025-04-01"), last: day("2025-04-30").unwrap() }
        );
        assert_eq!(
            compared("2025-03-01", "2025-03-31"),
            Period { first: day("2025-02-01"), last: day("2025-02-28").unwrap() }
        );
        assert_eq!(
            compared("2025-01-01", "2025-03-31"),
            Period { first: day("2024-10-01"), last: day("2024-12-31").unwrap() }
        );
        // Not whole months: the same number of days.
        assert_eq!(
            compared("2025-05-10", "2025-05-19"),
            Period { first: day("2025-04-30"), last: day("2025-05-09").unwrap() }
        );
    }

    #[test]
    fn a_breakdown_is_ordered_by_its_first_measure_with_ties_by_value_and_a_series_by_time() {
        let breakdown = args(json!({"measures": ["orders"], "dimensions": ["country"], "limit": 5})).check().unwrap();
        let sql = compile(&breakdown, DATA).unwrap().sql;
        assert!(sql.ends_with("ORDER BY orders DESC NULLS LAST, k0 ASC LIMIT 5"), "{sql}");
        assert!(sql.contains("JOIN customer_facts c ON c.customer_id = e.customer_id"), "{sql}");
        let series = args(json!({"measures": ["orders"], "dimensions": ["month"]})).check().unwrap();
        let sql = compile(&series, DATA).unwrap().sql;
        assert!(sql.ends_with("ORDER BY k0 ASC NULLS LAST"), "{sql}");
        assert!(!sql.contains("JOIN"), "a series of event measures reads no customer: {sql}");
    }

    #[test]
    fn filters_are_compiled_by_the_audience_compiler() {
        let query = args(json!({"measures": ["customers"],
            "filters": [{"type": "profile", "field": "country", "op": "=", "value": "pl"}],
            "exclude": [{"type": "profile", "field": "churned", "op": "=", "value": true}]}))
        .check()
        .unwrap();
        let membership = audience_compile::compile(&query.filters, DATA).unwrap().membership;
        let sql = compile(&query, DATA).unwrap().sql;
        assert!(sql.contains(&format!("WHERE c.customer_id IN ({membership})")), "{sql}");
        assert_eq!(filter_words(&query.filters).unwrap(), "customers from PL, excluding churned customers");
    }
}
