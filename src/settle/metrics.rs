//! Settling a `metrics` call against its question: what nothing in the question asks for is left out, and the time,
//! the measure and the ranking the question's words give replace what the model wrote.

use audience_tools::audience::definition::{Clause, EventType};
use audience_tools::grounding::Grounding;
use audience_tools::metrics::catalogue::Unit;
use audience_tools::metrics::{self, Dimension, Measure, MetricsArgs};
use audience_tools::vocabulary::Offered;
use serde_json::{Value, json};

use super::audience::{drop_untraced_clauses, settle_comparisons, settle_event_clauses};

/// Words that ask for a comparison with the period before.
const COMPARE_WORDS: [&str; 11] =
    ["compare", "compared", "comparison", "vs", "versus", "previous", "before", "prior", "change", "growth", "grew"];

/// Words that ask for a share rather than a count: "how many churned customers?" asks for a count, "how many
/// customers churned, as a percentage?" for a rate.
const SHARE_WORDS: [&str; 10] =
    ["rate", "rates", "percentage", "percent", "share", "proportion", "fraction", "ratio", "likely", "odds"];

/// What settling a `metrics` call did, in words: what it left out, and how it read the question where the call did
/// not say what the question asks.
#[derive(Debug, Default)]
pub(crate) struct SettledMetrics {
    pub dropped: Vec<String>,
    pub read: Vec<String>,
}

/// A `metrics` call without what nothing in the question asks for, as [`super::drop_untraced`] does for an audience (the
/// 1.5B model fills in every argument of the schema: a breakdown by country and segment, `within_days: 3660`, a
/// clause on jackets, for "what share of viewers added to the cart?"): dimensions the question names no word of,
/// a window or period it does not give, a comparison it does not ask for, and clauses that do not trace to it.
/// And with what the question's words settle and the model got wrong: a ranking of groups ("which country has the
/// most customers?") groups by the ranked dimension, orders by the measure and keeps the number of groups asked
/// for, and a count of the customers a rate counts on top ("how many churned customers?") is that count, not the
/// rate. Arguments that do not read go to the tool as they are, for its reason.
pub(crate) fn settle_metrics(args: &mut Value, grounding: &Grounding, offered: &Offered) -> SettledMetrics {
    if serde_json::from_value::<MetricsArgs>(args.clone()).is_err() {
        return SettledMetrics::default();
    }
    let mut settled = SettledMetrics::default();
    let words = grounding.sequence();
    let ranking = metrics::ranking::of(words);
    if let Some(ranking) = ranking
        && let Some(Value::Array(dimensions)) = args.as_object_mut().map(|o| o.entry("dimensions").or_insert(json!([])))
        && !dimensions.iter().any(|d| d.as_str() == Some(ranking.dimension.name()))
    {
        dimensions.push(json!(ranking.dimension.name()));
        settled.read.push(format!("grouped by {}, as the question ranks them", ranking.dimension.name()));
    }
    if let Some(Value::Array(dimensions)) = args.get_mut("dimensions") {
        dimensions.retain(|dimension| {
            let name = dimension.as_str().unwrap_or_default();
            // "how many add-to-cart events" is the add_to_cart row of the events by type: the measure counts every
            // type, and a breakdown by type is the one way to read one.
            let one_type = name == Dimension::EventType.name() && !grounding.event_types.is_empty();
            let named = one_type || Dimension::named(name).is_some_and(|d| metrics::ranking::names(words, d));
            if !named {
                settled.dropped.push(format!("the breakdown by {name}"));
            }
            named
        });
    }
    if let Some(object) = args.as_object_mut() {
        let windowed = !grounding.days.is_empty();
        let dated = !grounding.periods.is_empty();
        for (key, asked) in [("within_days", windowed), ("since", dated), ("until", dated)] {
            if let Some(value) = object.get(key).filter(|_| !asked).cloned() {
                object.remove(key);
                settled.dropped.push(format!("{key} {value}"));
            }
        }
        if object.get("compare") == Some(&Value::Bool(true)) && !COMPARE_WORDS.iter().any(|word| grounding.says(word)) {
            object.remove("compare");
            settled.dropped.push("the comparison with the period before".to_owned());
        }
        let counts = grounding.says_phrase("how many") || grounding.says_phrase("number of");
        settled.read.extend(the_named_measure(object, grounding));
        settled.read.extend(events_for_event_groups(object, grounding));
        settle_time(object, grounding, &mut settled.read);
        let whole_time = ["within_days", "since", "until"].iter().all(|key| !object.contains_key(*key));
        if counts && whole_time && !SHARE_WORDS.iter().any(|word| grounding.says(word)) {
            count_instead_of_rate(object, &mut settled.read);
        } else {
            settled.read.extend(drop_what_rates_count(object));
        }
        let kept: Vec<Value> = object.get("dimensions").and_then(Value::as_array).cloned().unwrap_or_default();
        let measures: Vec<Value> = object.get("measures").and_then(Value::as_array).cloned().unwrap_or_default();
        // An order by a dimension left out (or nothing of the call) would only be refused.
        if let Some(order_by) = object.get("order_by").cloned()
            && !kept.contains(&order_by)
            && !measures.contains(&order_by)
        {
            object.remove("order_by");
        }
        if let Some(ranking) = ranking
            && let Some(first) = measures.first()
            && kept.iter().any(|d| d.as_str() == Some(ranking.dimension.name()))
        {
            if !object.get("order_by").is_some_and(|by| measures.contains(by)) {
                object.insert("order_by".to_owned(), first.clone());
            }
            object.insert("order".to_owned(), json!(ranking.order));
            if let Some(limit) = ranking.limit.filter(|_| !object.contains_key("limit")) {
                object.insert("limit".to_owned(), json!(limit));
            }
        }
    }
    settled.read.extend(settle_event_clauses(args, ["filters", "exclude"], grounding));
    settled.read.extend(settle_comparisons(args, ["filters", "exclude"], grounding));
    // An event clause that names no condition is the tool's to refuse, with its reason.
    let empty_event = |value: &Value| value.as_object().is_some_and(|o| o.keys().all(|k| k == "type" || k == "id"));
    let empty = ["filters", "exclude"]
        .iter()
        .any(|list| args.get(*list).and_then(Value::as_array).is_some_and(|clauses| clauses.iter().any(empty_event)));
    if !empty {
        settled.dropped.extend(drop_untraced_clauses(args, ["filters", "exclude"], grounding, offered));
    }
    settled
}

/// The catalogue measures a metrics call names (names it does not know are the tool's to refuse).
fn measures_of(call: &serde_json::Map<String, Value>) -> Vec<Measure> {
    let names = call.get("measures").and_then(Value::as_array).into_iter().flatten();
    names.filter_map(|m| m.as_str().and_then(Measure::named)).collect()
}

/// The time of an event-grain call as the question gives it, whatever the model wrote (it wrote "2023-01-01" to
/// "2023-01-30" for "the last 30 days"): one window the question names is `within_days`, one calendar period (or,
/// for a comparison, the latest of those named) is `since` and `until`. Left alone when the question names both
/// kinds, several without a comparison, or when a filter already carries the window (revenue of the customers who
/// bought in the last 30 days need not be revenue of those 30 days).
fn settle_time(call: &mut serde_json::Map<String, Value>, grounding: &Grounding, read: &mut Vec<String>) {
    let measures = measures_of(call);
    if measures.is_empty() {
        return;
    }
    if measures.iter().any(|measure| measure.grain() != metrics::catalogue::Grain::Event) {
        time_to_event_filters(call, read);
        return;
    }
    let mut windows = grounding.days.clone();
    windows.dedup();
    let compare = call.get("compare") == Some(&Value::Bool(true));
    let time: Vec<(&str, Value)> = match (windows.as_slice(), grounding.periods.as_slice()) {
        ([days], []) | ([days, ..], []) if compare || windows.len() == 1 => {
            // A filter that only says "bought in the last 30 days" beside a measure of purchases is the window of
            // the measure ("which product had the most buyers in the last 30 days?"): its window moves to the call.
            let window = json!(days);
            if let Some(Value::Array(clauses)) = call.get_mut("filters") {
                for clause in clauses.iter_mut().filter_map(Value::as_object_mut) {
                    let bare = clause.get("type") == Some(&json!("event"))
                        && clause.keys().all(|k| matches!(k.as_str(), "type" | "event_type" | "id" | "within_days"));
                    if bare && clause.get("within_days") == Some(&window) {
                        clause.remove("within_days");
                    }
                }
            }
            let filters = serde_json::to_string(&call.get("filters")).unwrap_or_default();
            if filters.contains(&format!("\"within_days\":{days}")) {
                return;
            }
            // "The last 12 months" is 360 days here and 365 to the model: a window the tracing accepts stays.
            let near = |written: u64| written.abs_diff(u64::from(*days)) <= u64::from((days / 30).max(2));
            if call.get("within_days").and_then(Value::as_u64).is_some_and(near)
                && !call.contains_key("since")
                && !call.contains_key("until")
            {
                return;
            }
            vec![("within_days", json!(days))]
        }
        ([], [period]) | ([], [period, ..]) if compare || grounding.periods.len() == 1 => {
            let latest = grounding.periods.iter().max_by_key(|(since, until)| (*since, *until)).unwrap_or(period);
            let day = |date: Option<chrono::NaiveDate>| date.map(|d| json!(d.to_string()));
            let mut time = Vec::new();
            time.extend(day(latest.0).map(|since| ("since", since)));
            time.extend(day(latest.1).map(|until| ("until", until)));
            time
        }
        _ => return,
    };
    let written: Vec<(&str, Value)> =
        ["within_days", "since", "until"].into_iter().filter_map(|key| Some((key, call.get(key)?.clone()))).collect();
    if written == time {
        return;
    }
    for key in ["within_days", "since", "until"] {
        call.remove(key);
    }
    let words: Vec<String> = time.iter().map(|(key, value)| format!("{key} {value}")).collect();
    call.extend(time.into_iter().map(|(key, value)| (key.to_owned(), value)));
    read.push(format!("the time as the question gives it: {}", words.join(", ")));
}

/// The measure the question names, for the call's one measure when that is another: by a phrase of its own
/// ([`Measure::phrases`]: "churn_rate" for "what's our repeat purchase rate?"), or, when it asks for a share, by the
/// two funnel events it names ([`Measure::funnel`]: "what share of the customers who viewed a product also added
/// something to their cart?" is view→cart conversion, not a count of viewers). The replacement is of the same
/// kind (a rate for a rate), or a rate for a count when the question asks for a share. For a funnel rate, event
/// filters that only restate its two events are left out: a view→cart rate of customers who added to the cart is
/// 100%. A question that names several measures, or a call of several, is left alone.
fn the_named_measure(call: &mut serde_json::Map<String, Value>, grounding: &Grounding) -> Vec<String> {
    let share = SHARE_WORDS.iter().any(|word| grounding.says(word));
    let mut by_phrase =
        Measure::ALL.into_iter().filter(|measure| measure.phrases().iter().any(|phrase| grounding.says_phrase(phrase)));
    let phrased = match (by_phrase.next(), by_phrase.next()) {
        (Some(named), None) => Some(named),
        _ => None,
    };
    let funnel = {
        let mut named: Vec<(EventType, bool)> = Vec::new();
        for (event_type, negated) in grounding.mentions() {
            if !named.iter().any(|(t, _)| t == event_type) {
                named.push((*event_type, *negated));
            }
        }
        named.sort_by_key(|(event_type, _)| EventType::ALL.iter().position(|t| t == event_type));
        match named.as_slice() {
            [(from, false), (to, negated)] if share => Measure::funnel(*from, *to, *negated).map(|m| (m, [*from, *to])),
            _ => None,
        }
    };
    let Some(named) = phrased.or(funnel.map(|(measure, _)| measure)) else { return Vec::new() };
    let Some(Value::Array(measures)) = call.get_mut("measures") else { return Vec::new() };
    let [sent] = measures.as_mut_slice() else { return Vec::new() };
    let Some(was) = sent.as_str().and_then(Measure::named) else { return Vec::new() };
    let kind = was.unit() == named.unit() || (share && named.unit() == Unit::Rate && was.unit() == Unit::Count);
    if was == named || !kind {
        return Vec::new();
    }
    *sent = json!(named.name());
    if call.get("order_by") == Some(&json!(was.name())) {
        call.insert("order_by".to_owned(), json!(named.name()));
    }
    let mut notes = vec![format!("measured the {}, which the question names, not the {}", named.label(), was.label())];
    if let Some((_, steps)) = funnel.filter(|(measure, _)| *measure == named)
        && let Some(Value::Array(filters)) = call.get_mut("filters")
    {
        let restates = |clause: &Value| {
            clause.as_object().is_some_and(|o| {
                o.get("type") == Some(&json!("event"))
                    && o.keys().all(|k| matches!(k.as_str(), "type" | "event_type" | "id"))
                    && steps.iter().any(|step| o.get("event_type") == Some(&json!(step.as_str())))
            })
        };
        let before = filters.len();
        filters.retain(|clause| !restates(clause));
        if filters.len() < before {
            notes.push(format!("the {} takes its own events; the filters on them are left out", named.label()));
        }
    }
    notes
}

/// A customer-grain call takes no time of its own (its measures describe customers as they are): "how many
/// customers bought shoes in the last 30 days?" sent with `within_days: 30` beside the purchase clause is the window
/// of that clause. The time goes to each event filter that has none; with no event filter it stays, for the tool's
/// reason.
fn time_to_event_filters(call: &mut serde_json::Map<String, Value>, read: &mut Vec<String>) {
    let time: Vec<(String, Value)> = ["within_days", "since", "until"]
        .into_iter()
        .filter_map(|key| Some((key.to_owned(), call.get(key)?.clone())))
        .collect();
    let Some(Value::Array(filters)) = call.get_mut("filters") else { return };
    let mut events: Vec<&mut serde_json::Map<String, Value>> = filters
        .iter_mut()
        .filter_map(Value::as_object_mut)
        .filter(|clause| clause.get("type") == Some(&json!("event")))
        .collect();
    if time.is_empty() || events.is_empty() {
        return;
    }
    for clause in events.iter_mut() {
        if !["within_days", "since", "until"].iter().any(|key| clause.contains_key(*key)) {
            clause.extend(time.iter().cloned());
        }
    }
    for (key, _) in &time {
        call.remove(key);
    }
    let words: Vec<String> = time.iter().map(|(key, value)| format!("{key} {value}")).collect();
    read.push(format!(
        "the time ({}) is that of the event filter, as customers are counted as they are",
        words.join(", ")
    ));
}

/// A customer count grouped by an event's dimension (product, colour, a period) counts the customers with such
/// events: the buyers when the question speaks of buying, else the customers with any event. `customers` describes
/// customers as they are, with no product of their own, and the tool would refuse it.
fn events_for_event_groups(call: &mut serde_json::Map<String, Value>, grounding: &Grounding) -> Vec<String> {
    let on_events = call
        .get("dimensions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|d| d.as_str().and_then(Dimension::named))
        .find(|dimension| dimension.source() == metrics::catalogue::Source::Event);
    let Some(Value::Array(measures)) = call.get_mut("measures") else { return Vec::new() };
    let customers = json!(Measure::Customers.name());
    let Some(dimension) = on_events.filter(|_| measures.contains(&customers)) else { return Vec::new() };
    let bought = grounding.event_types.contains(&EventType::Purchase);
    let counted = if bought { Measure::Buyers } else { Measure::ActiveCustomers };
    for measure in measures.iter_mut().filter(|measure| **measure == customers) {
        *measure = json!(counted.name());
    }
    if call.get("order_by") == Some(&customers) {
        call.insert("order_by".to_owned(), json!(counted.name()));
    }
    vec![format!(
        "counted {} per {}, as a customer has no {} of their own",
        counted.label(),
        dimension.name(),
        dimension.name()
    )]
}

/// The filters that pick only the customers a rate of the call counts on top ("churn rate" filtered to churned
/// customers is 100%): the rate's own condition is not a filter of its base. Returns what was read so, in words.
fn drop_what_rates_count(call: &mut serde_json::Map<String, Value>) -> Vec<String> {
    let measures = measures_of(call);
    let own: Vec<(Measure, String, Value)> = measures
        .into_iter()
        .filter_map(|rate| {
            let (_, rule) = rate.counted()?;
            let noun = rule.noun();
            Some((rate, noun, serde_json::to_value(Clause { id: String::new(), rule }).ok()?))
        })
        .collect();
    let mut notes = Vec::new();
    if let Some(Value::Array(filters)) = call.get_mut("filters") {
        filters.retain(|filter| {
            let Some((rate, noun, _)) = own.iter().find(|(_, _, clause)| clause == filter) else { return true };
            notes.push(format!("the {} counts {noun} among all, so it is not filtered to them", rate.label()));
            false
        });
    }
    notes
}

/// Each rate of the call that counts customers on top (see [`Measure::counted`]) replaced by that count, with the
/// clause that picks those customers added to the filters unless the call has one on the same field.
fn count_instead_of_rate(call: &mut serde_json::Map<String, Value>, read: &mut Vec<String>) {
    let Some(Value::Array(measures)) = call.get("measures").cloned() else { return };
    let mut filters: Vec<Value> = call.get("filters").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut counted: Vec<Value> = Vec::new();
    let notes = read.len();
    for measure in measures {
        let rate = measure.as_str().and_then(Measure::named);
        let Some((count, rule)) = rate.and_then(Measure::counted) else {
            if !counted.contains(&measure) {
                counted.push(measure);
            }
            continue;
        };
        let field = |clause: &Value| clause.get("field").cloned();
        let noun = rule.noun();
        let Ok(clause) = serde_json::to_value(Clause { id: String::new(), rule }) else { continue };
        if !filters.iter().any(|f| f.get("type") == clause.get("type") && field(f) == field(&clause)) {
            filters.push(clause);
        }
        if !counted.contains(&json!(count.name())) {
            counted.push(json!(count.name()));
        }
        if let Some(rate) = rate {
            read.push(format!("counted {noun} instead of the {}, as the question asks how many", rate.label()));
        }
    }
    if read.len() > notes {
        call.insert("measures".to_owned(), Value::Array(counted));
        call.insert("filters".to_owned(), Value::Array(filters));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settle::library_values;
    use serde_json::json;

    /// The library's metrics answers are what the settling keeps: no breakdown, period, comparison or filter of an
    /// example is one its question does not ask for, so the model is never shown a call the program would cut.
    /// The data values of the example library, with the sample's countries, and its last day.
    /// `args` settled against `question`, and the notes of the settling.
    fn settled_metrics(question: &str, mut args: Value) -> (Value, SettledMetrics) {
        let (values, as_of) = library_values();
        let grounding = Grounding::of(question, &values, as_of);
        let offered = Offered::narrow(&values, &grounding.found);
        let settled = settle_metrics(&mut args, &grounding, &offered);
        (args, settled)
    }

    /// Recorded from the local 1.5B model: the ranking was sent as a filter on every country.
    #[test]
    fn a_ranking_sent_as_a_filter_becomes_a_breakdown_ordered_by_the_measure() {
        let countries = ["US", "DE", "PL", "GB", "FR", "ES", "IT", "NL", "SE"];
        let call = json!({"measures": ["customers"], "filters": [
            {"type": "profile", "field": "country", "op": "in", "value": countries}]});
        let (args, settled) = settled_metrics("Which country has the most customers?", call);
        let ranked = json!({"measures": ["customers"], "dimensions": ["country"], "filters": [],
            "order_by": "customers", "order": "desc", "limit": 1});
        assert_eq!(args, ranked, "{settled:?}");
        assert_eq!(settled.read, ["grouped by country, as the question ranks them"]);
        let call = json!({"measures": ["gross_revenue"], "dimensions": ["product"], "order_by": "product"});
        let (args, _) = settled_metrics("What are the 3 worst-selling products?", call);
        let ranked = json!({"measures": ["gross_revenue"], "dimensions": ["product"], "order_by": "gross_revenue",
            "order": "asc", "limit": 3});
        assert_eq!(args, ranked);
    }

    /// Recorded from the local 1.5B model: "how many churned customers" was sent as the churn rate.
    #[test]
    fn a_count_sent_as_a_rate_becomes_the_count_of_the_customers_it_counts() {
        let churned = json!({"type": "profile", "field": "churned", "op": "=", "value": true});
        let call = json!({"measures": ["churn_rate"], "filters": [churned]});
        let (args, settled) = settled_metrics("how many churned customers have we got?", call);
        assert_eq!(args, json!({"measures": ["customers"], "filters": [churned]}));
        assert_eq!(
            settled.read,
            ["counted churned customers instead of the churn rate, as the question asks how many"]
        );
        let call = json!({"measures": ["churn_rate"]});
        let (args, _) = settled_metrics("How many customers have churned?", call);
        assert_eq!(args, json!({"measures": ["customers"], "filters": [churned]}), "the clause is added");
        let call = json!({"measures": ["churn_rate"]});
        let (args, _) = settled_metrics("What share of our buyers have churned?", call.clone());
        assert_eq!(args, call, "a share is a rate");
    }

    /// Recorded from the local 1.5B model: the churn rate "of the customers who have bought" filtered to churned
    /// customers, which would be 100%.
    #[test]
    fn a_rate_is_not_filtered_to_the_customers_it_counts() {
        let churned = json!({"type": "profile", "field": "churned", "op": "=", "value": true});
        let call = json!({"measures": ["churn_rate"], "filters": [churned]});
        let question = "What percentage of the customers who have ever bought something have churned?";
        let (args, settled) = settled_metrics(question, call);
        assert_eq!(args, json!({"measures": ["churn_rate"], "filters": []}));
        assert_eq!(settled.read, ["the churn rate counts churned customers among all, so it is not filtered to them"]);
    }

    /// Recorded from the local 1.5B model: dates of another year for "the last 30 days", which the settling
    /// dropped, and then a comparison with no period.
    #[test]
    fn the_time_of_an_event_call_is_the_time_the_question_gives() {
        let call = json!({"measures": ["net_revenue"], "since": "2023-01-01", "until": "2023-01-30", "compare": true});
        let (args, settled) = settled_metrics("net revenue of the last 30 days compared with the 30 days before", call);
        assert_eq!(args, json!({"measures": ["net_revenue"], "compare": true, "within_days": 30}), "{settled:?}");
        let call = json!({"measures": ["gross_revenue"], "within_days": 30});
        let (args, settled) = settled_metrics("gross revenue in May 2026", call);
        let may = json!({"measures": ["gross_revenue"], "since": "2026-05-01", "until": "2026-05-31"});
        assert_eq!(args, may, "{settled:?}");
        let buyers = json!({"type": "event", "event_type": "purchase", "within_days": 30});

        let question = "revenue from customers who bought shoes in the last 30 days";
        let shoes = json!({"type": "event", "event_type": "purchase", "products": ["shoes"], "within_days": 30});
        let call = json!({"measures": ["gross_revenue"], "filters": [shoes]});
        assert_eq!(settled_metrics(question, call.clone()).0, call, "the filter holds the window");
        let call = json!({"measures": ["buyers"], "dimensions": ["product"], "filters": [buyers]});
        let (args, _) = settled_metrics("Which product had the most buyers in the last 30 days?", call);
        let windowed = json!({"measures": ["buyers"], "dimensions": ["product"], "within_days": 30,
            "filters": [{"type": "event", "event_type": "purchase"}], "order_by": "buyers", "order": "desc", "limit": 1});
        assert_eq!(args, windowed, "a bare filter's window is the call's");
    }

    /// A customer count with a window beside its event clause counts the customers with such events in the window.
    #[test]
    fn the_time_of_a_customer_count_is_that_of_its_event_filter() {
        let bought = json!({"type": "event", "event_type": "purchase", "products": ["shoes"]});
        let call = json!({"measures": ["customers"], "filters": [bought], "within_days": 30});
        let (args, settled) = settled_metrics("how many customers bought shoes in the last 30 days?", call);
        let windowed = json!({"type": "event", "event_type": "purchase", "products": ["shoes"], "within_days": 30});
        assert_eq!(args, json!({"measures": ["customers"], "filters": [windowed]}), "{settled:?}");
    }

    /// Recorded from the local 1.5B model: "which product was bought by the most customers" as `customers` by
    /// product, which the tool refuses.
    #[test]
    fn customers_grouped_by_an_event_dimension_are_the_buyers_or_the_active_customers() {
        let call = json!({"measures": ["customers"], "dimensions": ["product"], "order": "desc", "limit": 1});
        let (args, settled) = settled_metrics("Which product did the most customers buy?", call);
        let buyers = json!({"measures": ["buyers"], "dimensions": ["product"], "order_by": "buyers",
            "order": "desc", "limit": 1});
        assert_eq!(args, buyers, "{settled:?}");
        let call = json!({"measures": ["customers"], "dimensions": ["color"]});
        let (args, _) = settled_metrics("customers per colour viewed", call);
        assert_eq!(args, json!({"measures": ["active_customers"], "dimensions": ["color"]}));
    }

    /// Recorded from the local 1.5B model: the churn rate for "repeat purchase rate".
    #[test]
    fn the_measure_a_question_names_is_the_one_measured() {
        let call = json!({"measures": ["churn_rate"]});
        let (args, settled) = settled_metrics("What is our repeat purchase rate?", call);
        assert_eq!(args, json!({"measures": ["repeat_purchase_rate"]}));
        assert_eq!(settled.read, ["measured the repeat-purchase rate, which the question names, not the churn rate"]);
        let call = json!({"measures": ["gross_revenue"]});
        let (args, _) = settled_metrics("What's our net revenue?", call);
        assert_eq!(args, json!({"measures": ["net_revenue"]}));
        let call = json!({"measures": ["customers"]});
        let (args, _) = settled_metrics("how many customers abandoned their cart?", call.clone());
        assert_eq!(args, call, "a count is not replaced by a rate");
        let call = json!({"measures": ["churn_rate"]});
        let (args, _) = settled_metrics("What share of our buyers have bought more than once?", call);
        assert_eq!(args, json!({"measures": ["repeat_purchase_rate"]}));
        let call = json!({"measures": ["returns"]});
        let (args, _) = settled_metrics("How many units were returned in total?", call);
        assert_eq!(args, json!({"measures": ["returned_items"]}));
    }

    /// Recorded from the local 1.5B model: a funnel share sent as a count of viewers, and as the other cart rate.
    #[test]
    fn a_share_of_one_event_among_another_is_the_funnel_rate() {
        let viewed = json!({"type": "event", "event_type": "view"});
        let carted = json!({"type": "event", "event_type": "add_to_cart"});
        let call = json!({"measures": ["customers"], "filters": [viewed, carted]});
        let question = "What share of the customers who viewed a product also added something to their cart?";
        let (args, settled) = settled_metrics(question, call);
        assert_eq!(args, json!({"measures": ["view_to_cart"], "filters": []}), "{settled:?}");
        let call = json!({"measures": ["cart_abandonment"]});
        let (args, _) = settled_metrics("What percentage of customers who added to the cart went on to buy?", call);
        assert_eq!(args, json!({"measures": ["cart_to_purchase"]}));
        let call = json!({"measures": ["cart_to_purchase"]});
        let question = "what share of shoppers who added to the cart never bought anything?";
        assert_eq!(settled_metrics(question, call).0, json!({"measures": ["cart_abandonment"]}));
    }

    #[test]
    fn every_metrics_example_survives_the_settling_whole() {
        let examples = audience_tools::examples::library().unwrap();
        let (values, as_of) = library_values();
        let mut failures = Vec::new();
        for example in examples.iter().filter(|e| e.tool == "metrics") {
            let grounding = Grounding::of(&example.question, &values, as_of);
            let offered = Offered::narrow(&values, &grounding.found);
            let mut args = example.args.clone();
            let settled = settle_metrics(&mut args, &grounding, &offered);
            if !settled.dropped.is_empty() || args != example.args {
                failures.push(format!(
                    "{:?}: {} left out; became {args}",
                    example.question,
                    settled.dropped.join(", ")
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// Recorded from the local 1.5B model: the events of one type asked for with the breakdown by type that reads
    /// them.
    #[test]
    fn a_count_of_one_event_type_keeps_the_breakdown_by_type() {
        let call = json!({"measures": ["events"], "dimensions": ["event_type"], "within_days": 7});
        let (args, _) = settled_metrics("how many add-to-cart events were there in the last 7 days?", call.clone());
        assert_eq!(args, call, "the breakdown by type stays");
    }
}
