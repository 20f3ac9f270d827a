//! The audience definition against real data: the binary's `find_audience` (and `ask`) on a sample loaded by the
//! real `generate` + `ingest`, every number checked against an independent SQL query written here by hand.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly; that is its job

mod common;

use std::collections::BTreeSet;

use common::{FakeLlm, Reply, Run, TestEnv, content_text, messages_with_role};
use serde_json::{Value, json};

/// `audience tool find_audience --args EDIT [--from FILE]`, as JSON.
fn find(env: &TestEnv, edit: &Value, from: Option<&std::path::Path>) -> Value {
    let edit = edit.to_string();
    let mut args = vec!["tool", "find_audience", "--args", edit.as_str()];
    let from = from.map(|path| path.display().to_string());
    if let Some(path) = &from {
        args.extend(["--from", path.as_str()]);
    }
    let run = Run::from(env.command(&args).output().unwrap());
    assert_eq!(run.code, 0, "find_audience {edit}: {}", run.stderr);
    run.json()
}

fn count(env: &TestEnv, sql: &str) -> u64 {
    env.sql_scalar(&format!("SELECT count(*)::text FROM ({sql}) independent")).parse().unwrap()
}

fn ids(env: &TestEnv, sql: &str) -> BTreeSet<i64> {
    let list = env.sql_scalar(&format!("SELECT coalesce(string_agg(customer_id::text, ','), '') FROM ({sql}) s"));
    list.split(',').filter(|id| !id.is_empty()).map(|id| id.parse().unwrap()).collect()
}

/// The breakdown adds up to the size in every dimension, and every listed member is in the independent set.
fn assert_consistent(report: &Value, members: &BTreeSet<i64>, what: &str) {
    let size = report["size"].as_u64().unwrap();
    for dimension in ["country", "segment", "status", "spend_band"] {
        let sum: u64 =
            report["breakdown"][dimension].as_array().unwrap().iter().map(|s| s["count"].as_u64().unwrap()).sum();
        assert_eq!(sum, size, "{what}: the {dimension} breakdown adds up to {sum}, not {size}");
    }
    for member in report["members"].as_array().unwrap() {
        let id = member["customer_id"].as_i64().unwrap();
        assert!(members.contains(&id), "{what}: member {id} is not in the audience");
    }
    let listed = report["members"].as_array().unwrap().len() as u64;
    assert_eq!(listed, size.min(report["definition"]["limit"].as_u64().unwrap()), "{what}");
}

/// The data's last day, as the definition's relative days count from it.
const AS_OF: &str = "(SELECT as_of FROM dataset)";

#[test]
fn size_equals_an_independent_count_for_each_clause_kind() {
    let env = TestEnv::ingested("aud_kinds");
    let profile =
        |field: &str, op: &str, value: Value| json!({"type": "profile", "field": field, "op": op, "value": value});
    let cases: Vec<(&str, Value, String)> = vec![
        (
            "events: bought scarves in the last 120 days",
            json!({"include": [{"type": "event", "event_type": "purchase", "products": ["scarves"], "within_days": 120}]}),
            format!(
                "SELECT DISTINCT customer_id FROM events WHERE event_type = 'purchase' AND quantity > 0 AND product = 'scarves' \
                 AND ts >= {AS_OF} - 119 AND ts < {AS_OF} + 1"
            ),
        ),
        (
            "events: viewed at least 3 times",
            json!({"include": [{"type": "event", "event_type": "view", "min_count": 3}]}),
            "SELECT customer_id FROM events WHERE event_type = 'view' GROUP BY customer_id HAVING count(*) >= 3"
                .to_owned(),
        ),
        (
            "events: bought an item priced 100 or more, in black or blue",
            json!({"include": [{"type": "event", "event_type": "purchase", "min_price": 100, "colors": ["black", "blue"]}]}),
            "SELECT DISTINCT customer_id FROM events WHERE event_type = 'purchase' AND quantity > 0 AND price >= 100 \
             AND color IN ('black', 'blue')"
                .to_owned(),
        ),
        (
            "customers: from PL or DE",
            json!({"include": [profile("country", "in", json!(["pl", "DE"]))]}),
            "SELECT customer_id FROM customers WHERE country IN ('PL', 'DE')".to_owned(),
        ),
        (
            "profiles: spent over 500",
            json!({"include": [profile("total_spent", ">", json!(500))]}),
            "SELECT customer_id FROM profiles WHERE total_spent > 500".to_owned(),
        ),
        (
            "profiles: churned, in any case of segment name",
            json!({"include": [profile("churned", "=", json!(true)), profile("segment", "=", json!("churn recovery"))]}),
            "SELECT customer_id FROM profiles WHERE churned AND segment = 'Churn Recovery'".to_owned(),
        ),
        (
            "profiles: last purchase 90+ days ago, interested in shoes",
            json!({"include": [profile("recency_days", ">=", json!(90)), profile("interests", "contains", json!("shoes"))]}),
            "SELECT customer_id FROM profiles WHERE recency_days >= 90 AND 'shoes' = ANY(interests)".to_owned(),
        ),
        (
            "exclusions: buyers, excluding churned and those from PL",
            json!({"include": [{"type": "event", "event_type": "purchase"}],
                   "exclude": [profile("churned", "=", json!(true)), profile("country", "=", json!("PL"))]}),
            "SELECT DISTINCT customer_id FROM events WHERE event_type = 'purchase' AND quantity > 0 \
             AND customer_id NOT IN (SELECT customer_id FROM profiles WHERE churned OR country = 'PL')"
                .to_owned(),
        ),
        (
            "exclusions: everyone who never viewed socks (an exclude of an event clause)",
            json!({"exclude": [{"type": "event", "event_type": "view", "products": ["socks"]}]}),
            "SELECT customer_id FROM profiles WHERE customer_id NOT IN \
             (SELECT customer_id FROM events WHERE event_type = 'view' AND product = 'socks')"
                .to_owned(),
        ),
        (
            "sql: a guarded profile condition, and an event condition",
            json!({"include": [{"type": "sql", "condition": "age > 40 AND country <> 'US'"},
                               {"type": "event", "sql": "quantity >= 2"}]}),
            "SELECT customer_id FROM profiles WHERE age > 40 AND country <> 'US' \
             AND customer_id IN (SELECT customer_id FROM events WHERE quantity >= 2)"
                .to_owned(),
        ),
    ];
    for (what, edit, independent) in cases {
        let report = find(&env, &edit, None);
        let expected = count(&env, &independent);
        assert_eq!(report["size"].as_u64().unwrap(), expected, "{what}: {}", report["sql"]);
        assert!(expected > 0 && expected < 60, "{what}: a weak case ({expected} of 60)");
        // The membership query is the audience: run on its own, it returns exactly the independent set.
        assert_eq!(ids(&env, report["sql"].as_str().unwrap()), ids(&env, &independent), "{what}");
        assert_consistent(&report, &ids(&env, &independent), what);
        // The funnel ends at the size and never grows.
        let funnel: Vec<u64> =
            report["funnel"].as_array().unwrap().iter().map(|s| s["size"].as_u64().unwrap()).collect();
        assert_eq!(funnel.last().copied(), Some(expected), "{what}");
        assert!(funnel.windows(2).all(|w| w[0] >= w[1]), "{what}: {funnel:?}");
    }
}

/// The event clauses that ingest's per-product totals answer (a product, a lowest or highest price, a window, a
/// count) are read from `event_totals`, and profile clauses from `customer_facts`; each still selects exactly the
/// customers an independent query over the events selects, returns left out of purchases. Profiles computed as of
/// an earlier day leave later events out of windows. A schema without the derived tables (ingested by an older
/// release) gets the same audiences from `profiles` and `events`.
#[test]
fn derived_tables_select_the_same_customers_as_the_events() {
    let env = TestEnv::ingested("aud_totals");
    let event = |rule: Value| json!({"new": true, "include": [rule]});
    let cases: Vec<(&str, Value, String)> = vec![
        (
            "viewed watches or bags",
            event(json!({"type": "event", "event_type": "view", "products": ["watches", "bags"]})),
            "SELECT DISTINCT customer_id FROM events WHERE event_type = 'view' AND product IN ('watches', 'bags')"
                .to_owned(),
        ),
        (
            "bought anything priced 300 or more",
            event(json!({"type": "event", "event_type": "purchase", "min_price": 300})),
            "SELECT DISTINCT customer_id FROM events WHERE event_type = 'purchase' AND quantity > 0 AND price >= 300"
                .to_owned(),
        ),
        (
            "bought something priced 20 or less",
            event(json!({"type": "event", "event_type": "purchase", "max_price": 20})),
            "SELECT DISTINCT customer_id FROM events WHERE event_type = 'purchase' AND quantity > 0 AND price <= 20"
                .to_owned(),
        ),
        (
            "bought anything in the last 45 days",
            event(json!({"type": "event", "event_type": "purchase", "within_days": 45})),
            format!(
                "SELECT DISTINCT customer_id FROM events WHERE event_type = 'purchase' AND quantity > 0 \
                 AND ts >= {AS_OF} - 44 AND ts < {AS_OF} + 1"
            ),
        ),
        (
            "added socks or t-shirts to the cart at least twice",
            event(
                json!({"type": "event", "event_type": "add_to_cart", "products": ["socks", "t_shirts"], "min_count": 2}),
            ),
            "SELECT customer_id FROM events WHERE event_type = 'add_to_cart' AND product IN ('socks', 't_shirts') \
             GROUP BY customer_id HAVING count(*) >= 2"
                .to_owned(),
        ),
        (
            "from DE, excluding anyone who bought something priced 20 or less",
            json!({"new": true, "include": [{"type": "profile", "field": "country", "op": "=", "value": "DE"}],
                   "exclude": [{"type": "event", "event_type": "purchase", "max_price": 20}]}),
            "SELECT customer_id FROM customers WHERE country = 'DE' AND customer_id NOT IN \
             (SELECT customer_id FROM events WHERE event_type = 'purchase' AND quantity > 0 AND price <= 20)"
                .to_owned(),
        ),
    ];
    let check = |env: &TestEnv, derived: bool| {
        for (what, edit, independent) in &cases {
            let report = find(env, edit, None);
            let sql = report["sql"].as_str().unwrap();
            assert_eq!(sql.contains("event_totals"), derived, "{what}: {sql}");
            let expected = count(env, independent);
            assert!(expected > 0 && expected < 60, "{what}: a weak case ({expected} of 60)");
            assert_eq!(report["size"].as_u64().unwrap(), expected, "{what}: {sql}");
            assert_eq!(ids(env, sql), ids(env, independent), "{what}");
            assert_consistent(&report, &ids(env, independent), what);
        }
    };
    check(&env, true);
    assert!(find(&env, &cases[0].1, None)["sql"].as_str().unwrap().contains("FROM customer_facts p"));
    // The funnel's first step, an event clause counted from the totals alone, and the next, a profile clause.
    let report = find(
        &env,
        &json!({"new": true, "include": [{"type": "event", "event_type": "view", "products": ["watches", "bags"]},
                                         {"type": "profile", "field": "country", "op": "in", "value": ["DE", "PL"]}]}),
        None,
    );
    let funnel: Vec<u64> = report["funnel"].as_array().unwrap().iter().map(|s| s["size"].as_u64().unwrap()).collect();
    let viewers = &cases[0].2;
    let from_de_pl =
        format!("SELECT customer_id FROM customers WHERE country IN ('DE', 'PL') AND customer_id IN ({viewers})");
    assert_eq!(funnel, [count(&env, viewers), count(&env, &from_de_pl)]);
    assert!(funnel[1] > 0 && funnel[1] < funnel[0], "{funnel:?}");

    // Returns: customers who never bought anything priced 300 or more (or 20 or less) return such an item, inside
    // the window. A return is not a purchase, so none of them may join those audiences.
    let without = |condition: &str| -> Vec<i64> {
        let sql = format!(
            "SELECT customer_id FROM customers WHERE customer_id NOT IN \
             (SELECT customer_id FROM events WHERE event_type = 'purchase' AND {condition}) ORDER BY customer_id LIMIT 3"
        );
        ids(&env, &sql).into_iter().collect()
    };
    let (cheap_returners, dear_returners) = (without("price <= 20"), without("price >= 300"));
    let (customers, events) = env.sample_files();
    let mut with_returns = std::fs::read_to_string(&events).unwrap();
    for (n, (customer, price)) in
        dear_returners.iter().map(|c| (c, 9999)).chain(cheap_returners.iter().map(|c| (c, 5))).enumerate()
    {
        with_returns.push_str(&format!(
            "{},{customer},purchase,watches,black,{price},-1,2025-05-10T10:00:00Z\n",
            9_000_000 + n
        ));
    }
    let events = env.data_dir().join("events_with_returns.csv");
    std::fs::write(&events, with_returns).unwrap();

    // Profiles as of an earlier day: a window counts back from it and ignores the later events.
    let run = Run::from(
        env.command(&[
            "ingest",
            "--customers",
            customers.to_str().unwrap(),
            "--events",
            events.to_str().unwrap(),
            "--as-of",
            "2025-05-15",
        ])
        .output()
        .unwrap(),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let later = count(&env, "SELECT customer_id FROM events WHERE ts >= '2025-05-16'");
    assert!(later > 0, "the sample should have events after the earlier day");
    assert_eq!(count(&env, "SELECT customer_id FROM events WHERE quantity < 0"), 6);
    check(&env, true);
    let members = |case: usize| ids(&env, find(&env, &cases[case].1, None)["sql"].as_str().unwrap());
    assert!(dear_returners.iter().all(|c| !members(1).contains(c)), "a return of a dear item is not a purchase");
    assert!(cheap_returners.iter().all(|c| !members(2).contains(c)), "a return of a cheap item is not a purchase");

    // An ingest by an older release bumps the data version but leaves the derived tables of the one before: they
    // describe other data, so the audiences come from the base tables again.
    env.execute("UPDATE dataset SET version = version + 1");
    check(&env, false);
    // Without the derived tables, the same audiences from the base tables.
    env.execute("DROP TABLE customer_facts, event_totals");
    check(&env, false);
}

/// Regression (issue 13): a clause on a country code no customer has ("UK" for the United Kingdom, whose code is
/// GB) silently gave an empty audience. The report, and the model's view of it, now say which values the data
/// lacks and which it has.
#[test]
fn values_the_data_does_not_have_are_named_in_a_warning() {
    let env = TestEnv::ingested("aud_unknown");
    let report = find(
        &env,
        &json!({"include": [{"type": "profile", "field": "country", "op": "in", "value": ["UK", "DE"]},
                            {"type": "event", "event_type": "view", "products": ["hoverboards"]}]}),
        None,
    );
    let warnings: Vec<&str> = report["warnings"].as_array().unwrap().iter().map(|w| w.as_str().unwrap()).collect();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[0].starts_with("no customer is from UK (the United Kingdom's ISO code is GB); the data's countries: ")
    );
    assert!(warnings[0].contains("DE") && !warnings[0].contains("UK,"), "{}", warnings[0]);
    assert_eq!(warnings[1], "no event names the product hoverboards");
    let known = find(
        &env,
        &json!({"new": true, "include": [{"type": "profile", "field": "country", "op": "=", "value": "de"}]}),
        None,
    );
    assert!(known.get("warnings").is_none(), "{known}");
}

/// Each refinement a marketer says changes the definition and the size as an independent query says; the intent
/// reorders members but never changes who is in.
#[test]
fn refinements_change_the_definition_and_the_size_as_an_independent_query_says() {
    let env = TestEnv::ingested("aud_refine");
    let saved = env.data_dir().join("audience.json");
    let buyers =
        "SELECT DISTINCT customer_id FROM events WHERE event_type = 'purchase' AND quantity > 0 AND product = 'shoes'";
    let steps: Vec<(&str, Value, String)> = vec![
        (
            "buyers of shoes who like luxury",
            json!({"include": [{"type": "event", "event_type": "purchase", "products": ["shoes"]}], "intent": "likes luxury"}),
            buyers.to_owned(),
        ),
        (
            "now only PL",
            json!({"include": [{"type": "profile", "field": "country", "op": "=", "value": "PL"}]}),
            format!("{buyers} AND customer_id IN (SELECT customer_id FROM profiles WHERE country = 'PL')"),
        ),
        (
            "drop PL again, exclude churned",
            json!({"remove": ["c2"], "exclude": [{"type": "profile", "field": "churned", "op": "=", "value": true}]}),
            format!("{buyers} AND customer_id IN (SELECT customer_id FROM profiles WHERE NOT churned)"),
        ),
        (
            "only those who spent over 100",
            json!({"include": [{"type": "profile", "field": "total_spent", "op": ">", "value": 100}]}),
            format!("{buyers} AND customer_id IN (SELECT customer_id FROM profiles WHERE NOT churned AND total_spent > 100)"),
        ),
        (
            "drop the luxury part",
            json!({"intent": ""}),
            format!("{buyers} AND customer_id IN (SELECT customer_id FROM profiles WHERE NOT churned AND total_spent > 100)"),
        ),
        (
            "same but for jackets",
            json!({"remove": ["c1"], "include": [{"type": "event", "event_type": "purchase", "products": ["jackets"]}]}),
            "SELECT DISTINCT customer_id FROM events WHERE event_type = 'purchase' AND quantity > 0 AND product = 'jackets' \
             AND customer_id IN (SELECT customer_id FROM profiles WHERE NOT churned AND total_spent > 100)"
                .to_owned(),
        ),
    ];
    let mut previous: Option<Value> = None;
    for (index, (what, edit, independent)) in steps.into_iter().enumerate() {
        let report = find(&env, &edit, (index > 0).then_some(saved.as_path()));
        assert_eq!(report["size"].as_u64().unwrap(), count(&env, &independent), "{what}: {}", report["sql"]);
        assert_consistent(&report, &ids(&env, &independent), what);
        if let Some(previous) = &previous {
            assert_ne!(report["definition"], previous["definition"], "{what} changes the definition");
        }
        std::fs::write(&saved, serde_json::to_string(&report).unwrap()).unwrap();
        previous = Some(report);
    }
    let last = previous.unwrap();
    assert_eq!(last["ranked_by"], "total_spent", "the luxury intent was dropped");
    assert_eq!(
        last["explanation"],
        "Customers who spent over 100, who bought jackets, excluding churned customers; ranked by total spent"
    );
    // The intent only orders members: the same clauses with an intent have the same size and members.
    let ranked = find(&env, &json!({"intent": "outdoor jackets for winter", "limit": 50}), Some(&saved));
    let unranked = find(&env, &json!({"limit": 50}), Some(&saved));
    assert_eq!(ranked["size"], unranked["size"]);
    let set = |report: &Value| -> BTreeSet<i64> {
        report["members"].as_array().unwrap().iter().map(|m| m["customer_id"].as_i64().unwrap()).collect()
    };
    assert_eq!(set(&ranked), set(&unranked));
}

/// An end-to-end scripted conversation of three follow-ups through `ask --json --from`, as a script drives it:
/// each question refines the audience the previous answer saved, the model is told the current audience, and the
/// last definition is exactly the intended one.
#[test]
fn a_scripted_conversation_of_three_follow_ups_ends_with_the_right_definition() {
    let env = TestEnv::ingested("aud_chat");
    let saved = env.data_dir().join("audience.json");
    let turns = [
        (
            "find customers who bought shoes and like luxury",
            json!({"new": true, "include": [{"type": "event", "event_type": "purchase", "products": ["shoes"]}], "intent": "likes luxury"}),
        ),
        (
            "now only those from PL or DE",
            json!({"include": [{"type": "profile", "field": "country", "op": "in", "value": ["PL", "DE"]}]}),
        ),
        ("exclude churned", json!({"exclude": [{"type": "profile", "field": "churned", "op": "=", "value": true}]})),
        (
            "same but for jackets",
            json!({"remove": ["c1"], "include": [{"type": "event", "event_type": "purchase", "products": ["jackets"]}]}),
        ),
    ];
    for (index, (question, edit)) in turns.iter().enumerate() {
        let llm = FakeLlm::start(vec![Reply::tool("call_1", "find_audience", edit.clone())]);
        let mut args = vec!["ask", "--json", question];
        let from = saved.display().to_string();
        if index > 0 {
            args.extend(["--from", from.as_str()]);
        }
        let run = Run::from(env.llm_command(&llm, &args).output().unwrap());
        assert_eq!(run.code, 0, "{question}: {}", run.stderr);
        let answer = run.json();
        std::fs::write(&saved, serde_json::to_string(&answer).unwrap()).unwrap();
        let requests = llm.requests();
        if index == turns.len() - 1 {
            // "same but for jackets" only swaps a value: the program edits it, with no model call.
            assert!(requests.is_empty(), "{question}: {requests:?}");
            continue;
        }
        let asked = messages_with_role(&requests[0], "user").iter().map(content_text).collect::<Vec<_>>().join("\n");
        if index > 0 {
            assert!(asked.contains("\nCurrent audience: c1 include who bought shoes"), "{question}: {asked}");
        }
        assert!(asked.ends_with(&format!("Question: {question}")), "{asked}");
    }
    let answer: Value = serde_json::from_str(&std::fs::read_to_string(&saved).unwrap()).unwrap();
    assert_eq!(
        answer["audience"]["definition"],
        json!({
            "version": 1,
            "include": [
                {"id": "c2", "type": "profile", "field": "country", "op": "in", "value": ["PL", "DE"]},
                {"id": "c4", "type": "event", "event_type": "purchase", "products": ["jackets"]}
            ],
            "exclude": [{"id": "c3", "type": "profile", "field": "churned", "op": "=", "value": true}],
            "intent": "likes luxury",
            "limit": 10
        })
    );
    let independent = "SELECT DISTINCT customer_id FROM events WHERE event_type = 'purchase' AND quantity > 0 \
        AND product = 'jackets' AND customer_id IN (SELECT customer_id FROM profiles WHERE country IN ('PL', 'DE') AND NOT churned)";
    assert_eq!(answer["audience"]["size"].as_u64().unwrap(), count(&env, independent));
}

/// "Same but for France instead" fixes its edit completely: the program swaps the country itself, with no model
/// call, says what it swapped, and the audience is the one an independent query finds.
#[test]
fn a_follow_up_that_only_swaps_a_value_needs_no_model_call() {
    let env = TestEnv::ingested("aud_swap");
    let saved = env.data_dir().join("audience.json");
    let first = json!({"include": [
        {"type": "profile", "field": "country", "op": "=", "value": "PL"},
        {"type": "event", "event_type": "purchase", "within_days": 180}
    ]});
    let llm = FakeLlm::start(vec![Reply::tool("call_1", "find_audience", first)]);
    let run = Run::from(
        env.llm_command(&llm, &["ask", "--json", "Polish customers who bought something in the last 180 days"])
            .output()
            .unwrap(),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    std::fs::write(&saved, serde_json::to_string(&run.json()).unwrap()).unwrap();

    let silent = FakeLlm::start(Vec::new());
    let from = saved.display().to_string();
    let question = "same but for France instead";
    let run = Run::from(env.llm_command(&silent, &["ask", "--json", question, "--from", &from]).output().unwrap());
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(silent.requests().is_empty(), "the model was asked: {:?}", silent.requests());
    let answer = run.json();
    assert_eq!(
        answer["audience"]["definition"]["include"],
        json!([
            {"id": "c2", "type": "event", "event_type": "purchase", "within_days": 180},
            {"id": "c3", "type": "profile", "field": "country", "op": "=", "value": "FR"}
        ])
    );
    assert!(answer["answer"].as_str().unwrap().contains("From FR replaces from PL."), "{answer}");
    let independent = format!(
        "SELECT DISTINCT customer_id FROM events WHERE event_type = 'purchase' AND quantity > 0 \
         AND ts >= {AS_OF} - 179 AND ts < {AS_OF} + 1 \
         AND customer_id IN (SELECT customer_id FROM customers WHERE country = 'FR')"
    );
    assert_eq!(answer["audience"]["size"].as_u64().unwrap(), count(&env, &independent));
}

/// A definition file that is not one is a usage error, before anything runs.
#[test]
fn a_bad_definition_file_is_a_usage_error() {
    let env = TestEnv::ingested("aud_bad");
    let path = env.data_dir().join("bad.json");
    for (text, reason) in [
        ("{not json", "is not JSON"),
        (r#"{"version": 9, "limit": 10}"#, "version 9 is not supported"),
        (
            r#"{"version": 1, "include": [{"type": "profile", "field": "shoe_size", "op": "=", "value": 1}], "limit": 10}"#,
            "not an audience definition",
        ),
    ] {
        std::fs::write(&path, text).unwrap();
        let run =
            Run::from(env.command(&["tool", "find_audience", "--from", path.to_str().unwrap()]).output().unwrap());
        assert_eq!(run.code, 2, "{text}: {}", run.stderr);
        assert!(run.stderr.contains(reason), "{text}: {}", run.stderr);
    }
}
