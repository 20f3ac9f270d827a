//! Settling a `find_audience` call against its question: clauses nothing in the question asks for are left out,
//! event clauses and comparisons get what the question's words say, and a repeated call is put right by the program.

use audience_tools::audience::Edit;
use audience_tools::audience::definition::{Clause, Op, ProfileField, Rule};
use audience_tools::grounding::{Grounding, Traced, Uncovered};
use audience_tools::vocabulary::Offered;
use serde_json::{Value, json};

/// Why a clause of the call sits on the wrong side (see `Grounding::wrong_side`), if one does.
pub(crate) fn wrong_side(args: &Value, grounding: &Grounding) -> Option<String> {
    ["include", "exclude"].into_iter().find_map(|list| {
        let clauses = args.get(list)?.as_array()?;
        clauses.iter().find_map(|value| {
            let clause = serde_json::from_value::<Clause>(value.clone()).ok()?;
            grounding.wrong_side(&clause, list == "exclude")
        })
    })
}

/// What the question names that no clause of the call uses (see `Grounding::uncovered`). Nothing for a call whose
/// arguments do not read (its repair comes first), nor for one without clauses unless the question names an event
/// ("bought", "viewed"): an intent alone may be the right answer to a question of tastes, never to one of deeds.
pub(crate) fn uncovered(args: &Value, grounding: &Grounding) -> Uncovered {
    let Ok(edit) = Edit::try_from(args.clone()) else { return Uncovered::default() };
    let clauses: Vec<Clause> = edit.include.into_iter().chain(edit.exclude).collect();
    if clauses.is_empty() && (grounding.event_types.is_empty() || !edit.remove.is_empty()) {
        return Uncovered::default();
    }
    grounding.uncovered(&clauses, edit.intent.as_deref())
}

/// The repair the program asked for and the model did not make, made by the program on the call after the send-back
/// (the 1.5B model repeats its call far more often than grounding misreads a question): a clause on the wrong side
/// (see `Grounding::wrong_side`) moves to the other, and a country, segment or event the question names and no
/// clause uses gets its clause on the side the question puts it (see `Grounding::completing`). Returns what was
/// done, in words.
pub(crate) fn put_right(args: &mut Value, grounding: &Grounding) -> Vec<String> {
    let Ok(edit) = Edit::try_from(args.clone()) else { return Vec::new() };
    if !edit.remove.is_empty() {
        return Vec::new();
    }
    let side = |exclude: bool| if exclude { "exclude" } else { "include" };
    let mut notes = Vec::new();
    let mut moved: Vec<(Value, bool)> = Vec::new();
    for exclude in [false, true] {
        let Some(Value::Array(clauses)) = args.get_mut(side(exclude)) else { continue };
        clauses.retain(|value| {
            let Ok(clause) = serde_json::from_value::<Clause>(value.clone()) else { return true };
            if grounding.wrong_side(&clause, exclude).is_none() {
                return true;
            }
            notes.push(format!("put \"{}\" in {}, as the question says", clause.rule.predicate(), side(!exclude)));
            moved.push((value.clone(), !exclude));
            false
        });
    }
    let push = |args: &mut Value, clause: Value, exclude: bool| {
        if let Some(object) = args.as_object_mut()
            && let Value::Array(list) = object.entry(side(exclude)).or_insert_with(|| json!([]))
        {
            list.push(clause);
        }
    };
    for (clause, exclude) in moved {
        push(args, clause, exclude);
    }
    let missing = uncovered(args, grounding);
    let mut completing = grounding.completing(&missing);
    // A product named with the one deed the call lacks, sent as an interest ("jeans buyers" as `interests contains
    // jeans`), is what that deed was of, unless the question speaks of tastes.
    let events: Vec<usize> =
        (0..completing.len()).filter(|at| matches!(completing[*at].0.rule, Rule::Event { .. })).collect();
    if let [at] = events[..]
        && !grounding.speaks_of_taste()
    {
        let taken = take_named_interests(args, grounding);
        if let Rule::Event { products, .. } = &mut completing[at].0.rule
            && !taken.is_empty()
        {
            let named = taken.join(", ");
            products.extend(taken);
            let deed = completing[at].0.rule.predicate();
            notes.push(format!("read {named} as part of \"{deed}\", as the question names it, not as an interest"));
        }
    }
    for (clause, exclude) in completing {
        notes.push(format!("added \"{}\" to {}, as the question names it", clause.rule.predicate(), side(exclude)));
        if let Ok(value) = serde_json::to_value(&clause) {
            push(args, value, exclude);
        }
    }
    notes
}

/// Takes out the include clauses `interests contains ...` whose products the question names, and returns those
/// products.
fn take_named_interests(args: &mut Value, grounding: &Grounding) -> Vec<String> {
    take_interests(args, |product| grounding.found.products.iter().any(|p| p.eq_ignore_ascii_case(product)))
}

/// Takes out the include clauses `interests contains ...` all of whose products are `wanted`, and returns those
/// products.
fn take_interests(args: &mut Value, wanted: impl Fn(&str) -> bool) -> Vec<String> {
    let mut taken = Vec::new();
    let Some(Value::Array(clauses)) = args.get_mut("include") else { return taken };
    clauses.retain(|value| {
        let Ok(Clause { rule: Rule::Profile { field: ProfileField::Interests, op: Op::Contains, value }, .. }) =
            serde_json::from_value::<Clause>(value.clone())
        else {
            return true;
        };
        let products: Vec<String> = match value {
            Value::String(text) => vec![text],
            Value::Array(items) => items.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
            _ => return true,
        };
        if products.is_empty() || !products.iter().all(|product| wanted(product)) {
            return true;
        }
        taken.extend(products);
        false
    });
    taken
}

/// A product the question names once but the call reads twice, as what an include event clause was of and as an
/// interest ("jeans buyers" as `bought jeans` and `interests contains jeans`): the interest goes, unless the
/// question speaks of tastes, since it only narrows the deed to those whose profile also lists it. Returns how it
/// was read, in words.
pub(crate) fn drop_double_readings(args: &mut Value, grounding: &Grounding) -> Vec<String> {
    if grounding.speaks_of_taste() {
        return Vec::new();
    }
    let Ok(edit) = Edit::try_from(args.clone()) else { return Vec::new() };
    let of_deeds: Vec<String> = edit
        .include
        .iter()
        .filter_map(|clause| match &clause.rule {
            Rule::Event { products, .. } => Some(products.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    let taken = take_interests(args, |product| of_deeds.iter().any(|p| p.eq_ignore_ascii_case(product)));
    if taken.is_empty() {
        return Vec::new();
    }
    vec![format!("read {} as what customers did, not also as an interest", taken.join(", "))]
}

/// The call's arguments without the clauses nothing in the question asks for (a small model adds `age = 25` or
/// `churned = false` to a question that names neither), and those clauses in words. A clause naming a value the
/// schema does not offer stays: the tool sends it back with the values there are, which is the better repair.
pub(crate) fn drop_untraced(mut args: Value, grounding: &Grounding, offered: &Offered) -> (Value, Vec<String>) {
    // Malformed arguments go to the tool as they are: its reason is what the repair turn needs.
    if Edit::try_from(args.clone()).is_err() {
        return (args, Vec::new());
    }
    let dropped = drop_untraced_clauses(&mut args, ["include", "exclude"], grounding, offered);
    (args, dropped)
}

/// Event clauses with what the question's words settle and the model got wrong; returns how each was read, in
/// words:
/// - no event type: the one event the verbs name ("at least 3 purchases" sent as `{"type": "event", "min_count": 3}`,
///   which would count views and cart additions too);
/// - the count the question asks for ("at least 10 product views", "more than 2 orders") as `min_count`;
/// - a price the question bounds from above ("priced under 10") as `max_price`, not `min_price`.
pub(crate) fn settle_event_clauses(args: &mut Value, lists: [&str; 2], grounding: &Grounding) -> Vec<String> {
    let counts = grounding.counted_events();
    let ceilings = grounding.price_ceilings();
    let mut notes = Vec::new();
    for list in lists {
        let Some(Value::Array(clauses)) = args.get_mut(list) else { continue };
        for clause in clauses.iter_mut().filter_map(Value::as_object_mut) {
            if clause.get("type") != Some(&json!("event")) {
                continue;
            }
            if let [event_type] = grounding.event_types.as_slice()
                && !clause.contains_key("event_type")
            {
                clause.insert("event_type".to_owned(), json!(event_type.as_str()));
                notes.push(format!(
                    "an event clause with no event type read as {}, the event the question names",
                    event_type.as_str()
                ));
            }
            let event_type = clause.get("event_type").and_then(Value::as_str).map(str::to_owned);
            if let Some((_, least)) = counts.iter().find(|(t, _)| Some(t.as_str()) == event_type.as_deref())
                && clause.get("min_count").and_then(Value::as_u64) != Some(u64::from(*least))
            {
                clause.insert("min_count".to_owned(), json!(least));
                notes.push(format!(
                    "at least {least} {} events, as the question counts them",
                    event_type.as_deref().unwrap_or("")
                ));
            }
            // A ceiling the model also sent stands only when the question writes it (it sent `max_price: 0`).
            let said = |n: f64| grounding.numbers.iter().any(|number| (number - n).abs() < 1e-9);
            if let Some(floor) = clause.get("min_price").and_then(Value::as_f64)
                && ceilings.iter().any(|ceiling| (ceiling - floor).abs() < 1e-9)
                && clause
                    .get("max_price")
                    .and_then(Value::as_f64)
                    .is_none_or(|ceiling| !said(ceiling) || ceiling == floor)
            {
                clause.remove("min_price");
                clause.insert("max_price".to_owned(), json!(floor));
                notes.push(format!("a price under {floor} is a ceiling, as the question says"));
            }
        }
    }
    notes
}

/// Profile comparisons with a number the question bounds in words ("at least twice" sent as `order_count > 2`):
/// the operator the words say. Returns how each was read, in words.
pub(crate) fn settle_comparisons(args: &mut Value, lists: [&str; 2], grounding: &Grounding) -> Vec<String> {
    let mut notes = Vec::new();
    for list in lists {
        let Some(Value::Array(clauses)) = args.get_mut(list) else { continue };
        for clause in clauses.iter_mut().filter_map(Value::as_object_mut) {
            let Some(value) = clause.get("value").and_then(Value::as_f64) else { continue };
            let Some(sent) = clause.get("op").and_then(|op| serde_json::from_value::<Op>(op.clone()).ok()) else {
                continue;
            };
            if clause.get("type") != Some(&json!("profile")) || !matches!(sent, Op::Gt | Op::Gte | Op::Lt | Op::Lte) {
                continue;
            }
            if let Some(said) = grounding.bound_of(value).filter(|said| *said != sent) {
                clause.insert("op".to_owned(), json!(said.symbol()));
                let field = clause.get("field").and_then(Value::as_str).unwrap_or_default().to_owned();
                notes.push(format!("{field} {} {value}, as the question says", said.symbol()));
            }
        }
    }
    notes
}

/// Takes the clauses of the lists `lists` of `args` that nothing in the question asks for out (see
/// [`drop_untraced`]); returns them in words.
pub(super) fn drop_untraced_clauses(
    args: &mut Value,
    lists: [&str; 2],
    grounding: &Grounding,
    offered: &Offered,
) -> Vec<String> {
    let mut dropped = Vec::new();
    for list in lists {
        let Some(Value::Array(clauses)) = args.get_mut(list) else { continue };
        clauses.retain_mut(|value| {
            let Ok(clause) = serde_json::from_value::<Clause>(value.clone()) else { return true };
            if !offered.holds(&clause) {
                return true;
            }
            match grounding.trace(&clause) {
                Traced::Kept => true,
                Traced::Trimmed { clause: trimmed, removed } => match serde_json::to_value(&trimmed) {
                    Ok(trimmed_value) => {
                        dropped.extend(
                            removed.into_iter().map(|part| format!("{part} (of {})", trimmed.rule.predicate())),
                        );
                        *value = trimmed_value;
                        true
                    }
                    // A clause that cannot be written back is left as the model sent it.
                    Err(_) => true,
                },
                Traced::Dropped(_) => {
                    dropped.push(clause.rule.predicate());
                    false
                }
            }
        });
    }
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settle::grounding;

    /// Recorded from the local 1.5B model: "at least 3 purchases" as an event clause of any type.
    #[test]
    fn an_event_clause_with_no_type_gets_the_one_event_the_question_names() {
        let mut args = json!({"include": [{"type": "event", "min_count": 3}]});
        let notes =
            settle_event_clauses(&mut args, ["include", "exclude"], &grounding("customers with at least 3 purchases"));
        assert_eq!(args, json!({"include": [{"type": "event", "min_count": 3, "event_type": "purchase"}]}));
        assert_eq!(notes.len(), 1);
        let mut args = json!({"include": [{"type": "event", "products": ["shoes"]}]});
        assert!(
            settle_event_clauses(&mut args, ["include", "exclude"], &grounding("customers who viewed or bought shoes"))
                .is_empty(),
            "two events: left as is"
        );
    }

    /// Recorded from the local 1.5B model, each call repeated after its send-back: the program makes the repair.
    #[test]
    fn a_repeated_call_is_put_right_by_the_program() {
        let put = |question: &str, mut args: Value| {
            let notes = put_right(&mut args, &grounding(question));
            (args, notes)
        };
        let churned = json!({"type": "profile", "field": "churned", "op": "=", "value": true});
        let us = json!({"type": "profile", "field": "country", "op": "=", "value": "US"});
        let (args, notes) = put("Churned customers in the US", json!({"exclude": [churned], "limit": 10}));
        assert_eq!(args, json!({"exclude": [], "limit": 10, "include": [churned, us]}), "{notes:?}");
        assert_eq!(notes.len(), 2, "{notes:?}");

        let not_us = json!({"type": "profile", "field": "country", "op": "!=", "value": "US"});
        let vip = json!({"type": "profile", "field": "segment", "op": "=", "value": "VIP Loyalty"});
        let (args, _) = put("VIP Loyalty customers outside the US", json!({"exclude": [not_us, vip]}));
        assert_eq!(args, json!({"exclude": [], "include": [not_us, vip]}));

        // A product named with a deed and sent as an interest is what the deed was of; a taste stays a taste.
        let jeans = json!({"type": "profile", "field": "interests", "op": "contains", "value": "jeans"});
        let not_de = json!({"type": "profile", "field": "country", "op": "=", "value": "DE"});
        let (args, notes) =
            put("Jeans buyers, but leave out anyone in Germany", json!({"include": [jeans], "exclude": [not_de]}));
        let bought_jeans = json!({"type": "event", "event_type": "purchase", "products": ["jeans"]});
        assert_eq!(args, json!({"include": [bought_jeans], "exclude": [not_de]}), "{notes:?}");
        assert_eq!(
            notes[0],
            "read jeans as part of \"who bought jeans\", as the question names it, not as an interest"
        );
        assert_eq!(notes[1], "added \"who bought jeans\" to include, as the question names it");
        let (args, _) = put("Customers interested in jeans who bought something", json!({"include": [jeans]}));
        assert_eq!(args, json!({"include": [jeans, {"type": "event", "event_type": "purchase"}]}));

        // Read twice in one call: as what was bought and as an interest; the interest goes unless tastes are named.
        let read_twice = json!({"include": [bought_jeans, jeans], "exclude": [not_de]});
        let mut args = read_twice.clone();
        let notes = drop_double_readings(&mut args, &grounding("Jeans buyers, but leave out anyone in Germany"));
        assert_eq!(args, json!({"include": [bought_jeans], "exclude": [not_de]}));
        assert_eq!(notes, ["read jeans as what customers did, not also as an interest"]);
        let mut args = read_twice.clone();
        assert!(drop_double_readings(&mut args, &grounding("jeans lovers who bought jeans")).is_empty());
        assert_eq!(args, read_twice);

        let bought = json!({"type": "event", "event_type": "purchase"});
        let question = "Customers who added something to their cart but never bought anything";
        let (args, _) = put(question, json!({"exclude": [bought]}));
        let carted = json!({"type": "event", "event_type": "add_to_cart"});
        assert_eq!(args, json!({"exclude": [bought], "include": [carted]}));
    }

    /// Recorded from the local 1.5B model: "at least 10 product views" without the count, and "priced under 10"
    /// as a floor.
    #[test]
    fn counts_and_price_ceilings_are_read_from_the_question() {
        let settle = |question: &str, mut args: Value| {
            let notes = settle_event_clauses(&mut args, ["include", "exclude"], &grounding(question));
            (args, notes)
        };
        let viewed = json!({"include": [{"type": "event", "event_type": "view", "within_days": 90}]});
        let (args, _) = settle("Customers with at least 10 product views in the last 90 days", viewed);
        assert_eq!(
            args,
            json!({"include": [{"type": "event", "event_type": "view", "within_days": 90, "min_count": 10}]})
        );
        let bought = json!({"include": [{"type": "event", "event_type": "purchase", "products": ["socks"]}]});
        let (args, _) = settle("bought socks more than 2 times", bought);
        assert_eq!(args["include"][0]["min_count"], json!(3));
        let cheap = json!({"include": [{"type": "event", "event_type": "view", "products": ["socks"], "min_price": 10,
            "max_price": 0}]});
        let (args, notes) = settle("Customers who viewed socks priced under 10", cheap);
        assert_eq!(
            args,
            json!({"include": [{"type": "event", "event_type": "view", "products": ["socks"], "max_price": 10.0}]}),
            "{notes:?}"
        );
        let dear =
            json!({"include": [{"type": "event", "event_type": "view", "products": ["socks"], "min_price": 10}]});
        assert_eq!(settle("Customers who viewed socks priced over 10", dear.clone()).0, dear);
    }

    /// Recorded from the local 1.5B model: "at least twice" sent as `order_count > 2`.
    #[test]
    fn comparisons_are_read_as_the_question_says() {
        let grounding = grounding("only those who have bought at least twice in total");
        let mut args = json!({"include": [{"type": "profile", "field": "order_count", "op": ">", "value": 2}]});
        let notes = settle_comparisons(&mut args, ["include", "exclude"], &grounding);
        assert_eq!(args["include"][0]["op"], ">=", "{notes:?}");
    }
}
