//! The metrics layer end to end, with the built binary over a real ingested sample: `audience metrics` renders a
//! number with its definition, a breakdown as a table with bars and a series with a sparkline (snapshots), `--json`
//! carries the values, definitions, measure names and SQL; and the agent offers the `metrics` tool, renders its
//! report as the answer in one model call, and gives a bad call one repair turn and then a clear error.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly; that is its job

mod common;

use common::{FakeLlm, Reply, Run, TestEnv, content_text, messages_with_role};
use serde_json::{Value, json};

fn metrics(env: &TestEnv, args: &[&str]) -> Run {
    let mut all = vec!["metrics"];
    all.extend_from_slice(args);
    Run::from(env.command(&all).output().unwrap())
}

/// `463279.65` as the answers write money: `463,279.65`.
fn money(value: f64) -> String {
    let text = format!("{value:.2}");
    let (whole, fraction) = text.split_once('.').unwrap();
    let digits: Vec<char> = whole.chars().collect();
    let mut grouped = String::new();
    for (at, digit) in digits.iter().enumerate() {
        if at > 0 && (digits.len() - at).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(*digit);
    }
    format!("{grouped}.{fraction}")
}

/// Net revenue written by hand from the raw events: sales minus the money of returns.
const NET_REVENUE: &str = "SELECT (coalesce(sum(amount) FILTER (WHERE quantity > 0), 0) \
     - coalesce(sum(abs(amount)) FILTER (WHERE quantity <= 0), 0))::text FROM events WHERE event_type = 'purchase'";

#[test]
fn the_metrics_command_renders_a_number_a_table_and_charts() {
    let env = TestEnv::ingested("metrics_cli");
    let net: f64 = env.sql_scalar(NET_REVENUE).parse().unwrap();

    let number = metrics(&env, &["net_revenue"]);
    assert_eq!(number.code, 0, "{}", number.stderr);
    assert!(
        number.stdout.starts_with(&format!("net revenue = purchases minus returns: {}\n", money(net))),
        "{}",
        number.stdout
    );
    insta::assert_snapshot!("metrics_number", number.stdout);

    let compared = metrics(&env, &["net_revenue", "buyers", "--within-days", "30", "--compare"]);
    assert_eq!(compared.code, 0, "{}", compared.stderr);
    insta::assert_snapshot!("metrics_compared", compared.stdout);

    let breakdown = metrics(&env, &["orders", "--by", "country", "--top", "5"]);
    assert_eq!(breakdown.code, 0, "{}", breakdown.stderr);
    assert!(breakdown.stdout.contains('█'), "a bar chart: {}", breakdown.stdout);
    insta::assert_snapshot!("metrics_breakdown", breakdown.stdout);

    let series = metrics(&env, &["gross_revenue", "--by", "month", "--period", "2025"]);
    assert_eq!(series.code, 0, "{}", series.stderr);
    insta::assert_snapshot!("metrics_series", series.stdout);

    let rate = metrics(&env, &["churn_rate", "--by", "segment"]);
    assert_eq!(rate.code, 0, "{}", rate.stderr);
    insta::assert_snapshot!("metrics_rate_by_segment", rate.stdout);
}

/// Off a terminal and without `NO_COLOR` the output is the same plain text as with it: no colour codes, no cursor
/// movement, the same blocks.
#[test]
fn charts_are_plain_text_with_or_without_no_color_off_a_terminal() {
    let env = TestEnv::ingested("metrics_plain");
    let args = ["metrics", "items", "--by", "product", "--top", "4"];
    let with = Run::from(env.command(&args).output().unwrap());
    let without = Run::from(env.command(&args).env_remove("NO_COLOR").output().unwrap());
    assert_eq!(with.code, 0, "{}", with.stderr);
    assert_eq!(with.stdout, without.stdout);
    assert!(!without.stdout.contains('\u{1b}'), "{:?}", without.stdout);
    insta::assert_snapshot!("metrics_no_color_pipe", without.stdout);
}

#[test]
fn json_carries_values_definitions_measure_names_and_the_sql_and_bad_calls_are_usage_errors() {
    let env = TestEnv::ingested("metrics_json");
    let net: f64 = env.sql_scalar(NET_REVENUE).parse().unwrap();
    let run = metrics(&env, &["net_revenue", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.json();
    assert!((report["value"].as_f64().unwrap() - net).abs() < 1e-6, "{report}");
    assert_eq!(report["measures"][0]["name"], "net_revenue");
    assert_eq!(report["measures"][0]["definition"], "purchases minus returns");
    assert!(report["sql"].as_str().unwrap().starts_with("WITH f AS (SELECT"), "{report}");
    assert_eq!(report["read_from"], "customer_totals", "the whole data's net revenue, from each customer's totals");

    // Filters are audience clauses; the buyers of PL match the hand-written count.
    let clause = r#"{"type": "profile", "field": "country", "op": "=", "value": "PL"}"#;
    let run = metrics(&env, &["buyers", "--where", clause, "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let expected = env.sql_scalar(
        "SELECT count(DISTINCT e.customer_id)::text FROM events e JOIN customers c USING (customer_id) \
         WHERE c.country = 'PL' AND e.event_type = 'purchase' AND e.quantity > 0",
    );
    assert_eq!(run.json()["value"], json!(expected.parse::<f64>().unwrap()));
    assert_eq!(run.json()["filters"], "customers from PL");

    // The same call through `audience tool metrics`.
    let tool =
        Run::from(env.command(&["tool", "metrics", "--args", r#"{"measures": ["net_revenue"]}"#]).output().unwrap());
    assert_eq!(tool.code, 0, "{}", tool.stderr);
    assert_eq!(tool.json()["value"], report["value"]);

    // Mistakes are one line and exit 2, checked before any store opens.
    for (args, reason) in [
        (vec!["revenue"], "unknown measure \"revenue\"; did you mean gross_revenue or net_revenue?"),
        (vec!["churn_rate", "--by", "product"], "the dimension product does not apply to churn_rate"),
        (vec!["orders", "--period", "June"], "--period \"June\" is not a year"),
        (vec!["orders", "--where", "{\"type\": \"event\"}"], "an event clause in filters names no condition"),
    ] {
        let run = metrics(&env, &args);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        let errors = run.error_lines();
        assert_eq!(errors.len(), 1, "{}", run.stderr);
        assert!(errors[0].contains(reason), "{args:?}: {}", run.stderr);
        assert!(run.stdout.is_empty());
    }
    // A value the data does not have counts nobody: the reason names the values there are.
    let uk = r#"{"type": "profile", "field": "country", "op": "=", "value": "UK"}"#;
    let run = metrics(&env, &["customers", "--where", uk]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("filters: no customer is from UK (the United Kingdom's ISO code is GB); the data's countries: "),
        "{}",
        run.stderr
    );
    let list = metrics(&env, &["--list"]);
    assert!(list.stdout.contains("  net_revenue              purchases minus returns\n"), "{}", list.stdout);
}

/// The tool results the model was sent in `request`.
fn tool_results(request: &Value) -> String {
    messages_with_role(request, "tool").iter().map(content_text).collect::<Vec<_>>().join("\n")
}

#[test]
fn a_metrics_call_is_the_answer_rendered_with_its_definition_in_one_model_call() {
    let env = TestEnv::ingested("metrics_agent");
    let net: f64 = env.sql_scalar(NET_REVENUE).parse().unwrap();
    let llm = FakeLlm::start(vec![
        Reply::tool("c1", "metrics", json!({"measures": ["net_revenue"]})),
        Reply::text("never requested"),
    ]);
    let run = env.ask_json(&llm, "What is our net revenue?");
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(llm.remaining(), 1, "one model call: the program renders the answer");
    let answer = run.json();
    let text = answer["answer"].as_str().unwrap();
    assert!(text.starts_with(&format!("net revenue = purchases minus returns: {}", money(net))), "{text}");
    assert!(text.contains("Over all customers, events up to 2025-06-29."), "{text}");
    assert_eq!(answer["metrics"]["measures"][0]["name"], "net_revenue");
    assert!(answer["audience"].is_null());
    assert_eq!(answer["confidence"]["level"], "high", "{answer}");
    assert_eq!(answer["steps"][0]["sql"], answer["metrics"]["sql"]);

    // The tool is offered with its generated schema, on a required call, and a question that asks for a number is
    // offered only the tools that answer with one (and a question back or a reply).
    let request = &llm.requests()[0];
    assert_eq!(request["tool_choice"], "required");
    let mut offered: Vec<&str> =
        request["tools"].as_array().unwrap().iter().map(|t| t["function"]["name"].as_str().unwrap()).collect();
    offered.sort_unstable();
    assert_eq!(offered, ["ask_clarification", "metrics", "respond", "sql_analytics"]);
    let tool = request["tools"].as_array().unwrap().iter().find(|t| t["function"]["name"] == "metrics").unwrap();
    let schema = &tool["function"]["parameters"];
    assert!(schema["properties"]["measures"]["items"]["enum"].as_array().unwrap().contains(&json!("churn_rate")));
    assert!(!schema.to_string().contains("$ref"), "inlined for llama.cpp");

    // Plain `ask` shows a breakdown's table and bars under the answer.
    let llm = FakeLlm::start(vec![Reply::tool(
        "c1",
        "metrics",
        json!({"measures": ["orders"], "dimensions": ["country"], "limit": 3}),
    )]);
    let plain = env.ask_plain(&llm, "Which 3 countries have the most orders?");
    assert_eq!(plain.code, 0, "{}", plain.stderr);
    assert!(plain.stdout.starts_with("orders by country: "), "{}", plain.stdout);
    assert!(plain.stdout.contains("orders = purchase lines with a positive quantity"), "{}", plain.stdout);
    assert!(plain.stdout.contains("┌") && plain.stdout.contains('█'), "{}", plain.stdout);

    // What the 1.5B model sent for this question (it fills in every argument): the breakdowns, the window and the
    // clause nobody asked for are left out, and the answer says so.
    let recorded = json!({"measures": ["view_to_cart"], "dimensions": ["country", "segment"], "within_days": 365,
        "filters": [{"type": "event", "event_type": "purchase", "products": ["socks"], "within_days": 30}],
        "compare": false, "order_by": "view_to_cart", "order": "desc", "limit": 100});
    let llm = FakeLlm::start(vec![Reply::tool("c1", "metrics", recorded)]);
    let run = env.ask_json(&llm, "What share of our viewers also put something in their cart?");
    assert_eq!(run.code, 0, "{}", run.stderr);
    let expected: f64 = env
        .sql_scalar(
            "SELECT (100.0 * count(*) FILTER (WHERE carted) / count(*))::text FROM (SELECT customer_id, \
             bool_or(event_type = 'add_to_cart') AS carted FROM events GROUP BY customer_id \
             HAVING bool_or(event_type = 'view')) v",
        )
        .parse()
        .unwrap();
    let answer = run.json();
    let text = answer["answer"].as_str().unwrap();
    assert!(
        text.starts_with(&format!(
            "view→cart conversion = customers who viewed and added to the cart / customers who viewed: {expected:.1}%"
        )),
        "{text}"
    );
    for left_out in ["the breakdown by country", "the breakdown by segment", "within_days 365", "who bought socks"] {
        assert!(text.contains(left_out), "{left_out}: {text}");
    }
    assert_eq!(answer["steps"][0]["args"]["measures"], json!(["view_to_cart"]));
    assert!(answer["steps"][0]["args"].get("dimensions").is_none_or(|d| d == &json!([])), "{}", answer["steps"][0]);
}

#[test]
fn a_bad_metrics_call_gets_one_repair_turn_then_a_clear_error() {
    let env = TestEnv::ingested("metrics_repair");
    // Repaired: an unknown measure, then the right one.
    let llm = FakeLlm::start(vec![
        Reply::tool("c1", "metrics", json!({"measures": ["revenue"]})),
        Reply::tool("c2", "metrics", json!({"measures": ["gross_revenue"]})),
    ]);
    let run = env.ask_json(&llm, "What is our revenue?");
    assert_eq!(run.code, 0, "{}", run.stderr);
    let sent = tool_results(&llm.requests()[1]);
    assert!(sent.contains("unknown measure \\\"revenue\\\"") || sent.contains("unknown measure \"revenue\""), "{sent}");
    assert!(sent.contains("did you mean gross_revenue or net_revenue?"), "{sent}");
    let answer = run.json();
    assert!(answer["answer"].as_str().unwrap().starts_with("gross revenue = the line totals of the orders"));
    assert_eq!(answer["steps"].as_array().unwrap().len(), 2);
    assert_eq!(answer["usage"]["llm_calls"], 2);

    // Not repaired: each bad call gets one repair turn, and the second failure ends the question.
    let bad_calls = [
        (json!({"measures": ["revenue"]}), "unknown measure"),
        (json!({"measures": ["churn_rate"], "dimensions": ["product"]}), "the dimension product does not apply"),
        (json!({"measures": ["orders"], "filters": [{"type": "event"}]}), "names no condition"),
    ];
    for (args, reason) in bad_calls {
        let llm = FakeLlm::start(vec![
            Reply::tool("c1", "metrics", args.clone()),
            Reply::tool("c2", "metrics", args.clone()),
            Reply::text("never requested"),
        ]);
        // No event verb: an event clause without a type is not the program's to complete here.
        let run = env.ask_json(&llm, "How is the churn rate going, by product?");
        assert_eq!(run.code, 3, "{args}: {}", run.stderr);
        assert_eq!(llm.remaining(), 1, "{args}: no third call");
        let repair = tool_results(&llm.requests()[1]);
        assert!(repair.contains(reason), "{args}: the repair turn carries the reason: {repair}");
        let errors = run.error_lines();
        assert_eq!(errors.len(), 1, "{}", run.stderr);
        assert!(
            errors[0].contains("the model sent unusable arguments again after one repair (metrics: ")
                && errors[0].contains(reason),
            "{}",
            errors[0]
        );
    }
}

/// The SQL writer that copies the question back (SQL the agent wrote blind) is not run: the model is told so and
/// can turn to `metrics`.
#[test]
fn sql_copied_back_by_the_writer_is_not_run() {
    let env = TestEnv::ingested("metrics_copy");
    let blind = "SELECT count(*) FROM customers WHERE country = 'PL'";
    let llm = FakeLlm::start(vec![
        Reply::tool("c1", "sql_analytics", json!({"question": blind})),
        Reply::text(&format!("```sql\n{blind}\n```")),
        Reply::tool(
            "c2",
            "metrics",
            json!({"measures": ["customers"],
            "filters": [{"type": "profile", "field": "country", "op": "=", "value": "PL"}]}),
        ),
    ]);
    let run = env.ask_json(&llm, "How many customers are from Poland?");
    assert_eq!(run.code, 0, "{}", run.stderr);
    let sent = tool_results(&llm.requests()[2]);
    assert!(sent.contains("returned the question unchanged"), "{sent}");
    let answer = run.json();
    assert!(answer["steps"][0]["sql"].is_null(), "nothing ran: {}", answer["steps"][0]);
    let expected = env.sql_scalar("SELECT count(*)::text FROM customers WHERE country = 'PL'");
    assert!(
        answer["answer"]
            .as_str()
            .unwrap()
            .starts_with(&format!("customers = customers on file, each counted once: {expected}\n")),
        "{}",
        answer["answer"]
    );
}

/// The golden analytics cases added for the catalogue are within its reach: each, answered by the `metrics` call it
/// asks for (here scripted), scores 1 against its hand-written reference SQL on the golden sample. What remains for
/// the model is choosing the call; `audience eval` with the local model measures that.
#[test]
fn the_catalogue_answers_every_golden_case_added_for_it() {
    let env = TestEnv::empty("metrics_golden");
    let country = |code: &str| json!([{"type": "profile", "field": "country", "op": "=", "value": code}]);
    let segment = json!([{"type": "profile", "field": "segment", "op": "=", "value": "Standard Promo"}]);
    let calls: [(&str, Value); 20] = [
        ("analytics-view-to-cart-rate", json!({"measures": ["view_to_cart"]})),
        ("analytics-cart-to-purchase-rate", json!({"measures": ["cart_to_purchase"]})),
        ("analytics-cart-abandonment-rate", json!({"measures": ["cart_abandonment"]})),
        ("analytics-repeat-purchase-rate", json!({"measures": ["repeat_purchase_rate"]})),
        ("analytics-churn-rate-germany", json!({"measures": ["churn_rate"], "filters": country("DE")})),
        ("analytics-cart-abandonment-standard-promo", json!({"measures": ["cart_abandonment"], "filters": segment})),
        ("analytics-view-to-cart-last-90-days", json!({"measures": ["view_to_cart"], "within_days": 90})),
        ("analytics-repeat-rate-last-90-days", json!({"measures": ["repeat_purchase_rate"], "within_days": 90})),
        (
            "analytics-net-revenue-30-days-vs-before",
            json!({"measures": ["net_revenue"], "within_days": 30, "compare": true}),
        ),
        (
            "analytics-gross-revenue-may-vs-april",
            json!({"measures": ["gross_revenue"], "since": "2026-05-01", "until": "2026-05-31", "compare": true}),
        ),
        (
            "analytics-revenue-last-week-vs-week-before",
            json!({"measures": ["gross_revenue"], "within_days": 7, "compare": true}),
        ),
        (
            "analytics-top-product-buyers-last-30-days-tie",
            json!({"measures": ["buyers"], "dimensions": ["product"], "within_days": 30, "limit": 1}),
        ),
        (
            "analytics-third-country-buyers-last-30-days-tie",
            json!({"measures": ["buyers"], "dimensions": ["country"], "within_days": 30, "limit": 3}),
        ),
        (
            "analytics-top-colour-by-revenue",
            json!({"measures": ["gross_revenue"], "dimensions": ["color"], "limit": 1}),
        ),
        ("analytics-most-returned-product", json!({"measures": ["returns"], "dimensions": ["product"], "limit": 1})),
        (
            "analytics-best-revenue-month-2026",
            json!({"measures": ["gross_revenue"], "dimensions": ["month"], "since": "2026-01-01",
                   "order_by": "gross_revenue", "order": "desc", "limit": 1}),
        ),
        ("analytics-average-order-value-last-90-days", json!({"measures": ["average_order_value"], "within_days": 90})),
        (
            "analytics-spend-per-buyer-germany",
            json!({"measures": ["average_spend_per_buyer"], "filters": country("DE")}),
        ),
        ("analytics-returned-units", json!({"measures": ["returned_items"]})),
        ("analytics-active-customers-last-30-days", json!({"measures": ["active_customers"], "within_days": 30})),
    ];
    let script =
        calls.iter().enumerate().map(|(at, (_, args))| Reply::tool(&format!("c{at}"), "metrics", args.clone()));
    let llm = FakeLlm::start(script.collect());
    let cases = format!("{}/tests/golden/cases.toml", env!("CARGO_MANIFEST_DIR"));
    let ids: Vec<&str> = calls.iter().map(|(id, _)| *id).collect();
    let only = ids.join(",");
    let run =
        Run::from(env.llm_command(&llm, &["eval", "--cases", &cases, "--only", &only, "--json"]).output().unwrap());
    let report = run.json();
    let scored: Vec<(&str, f64, &str)> = report["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| (case["id"].as_str().unwrap(), case["score"].as_f64().unwrap(), case["detail"].as_str().unwrap()))
        .collect();
    assert_eq!(scored.iter().map(|(id, _, _)| *id).collect::<Vec<_>>(), ids, "{}", run.stderr);
    let missed: Vec<_> = scored.iter().filter(|(_, score, _)| *score < 1.0).collect();
    assert!(missed.is_empty(), "{missed:?}\n{}", run.stdout);
    assert_eq!(llm.remaining(), 0, "one model call per case");
    assert_eq!(run.code, 0, "{}", run.stderr);
}

/// The report of `audience metrics ARGS --json`.
fn report(env: &TestEnv, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let run = metrics(env, &all);
    assert_eq!(run.code, 0, "{args:?}: {}", run.stderr);
    run.json()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6 * b.abs().max(1.0)
}

/// Every measure, and each kind of dimension, against SQL written by hand over the raw tables of the ingested sample
/// (`churned` and `segment` are the product's own facts, read from `profiles`).
#[test]
fn every_measure_and_dimension_matches_sql_written_by_hand() {
    let env = TestEnv::ingested("metrics_values");
    const SALE: &str = "event_type = 'purchase' AND quantity > 0";
    const RETURN: &str = "event_type = 'purchase' AND quantity <= 0";
    let rate = |numerator: &str, denominator: &str| {
        format!(
            "SELECT (count(*) FILTER (WHERE {numerator})::float8 / count(*) FILTER (WHERE {denominator}))::text FROM (SELECT customer_id, bool_or(event_type = 'view') AS viewed, bool_or(event_type = 'add_to_cart') AS carted, count(*) FILTER (WHERE {SALE}) AS orders FROM events GROUP BY customer_id) f"
        )
    };
    let measures: Vec<(&str, String)> = vec![
        ("customers", "SELECT count(*)::text FROM customers".to_owned()),
        ("buyers", format!("SELECT count(DISTINCT customer_id)::text FROM events WHERE {SALE}")),
        ("active_customers", "SELECT count(DISTINCT customer_id)::text FROM events".to_owned()),
        ("events", "SELECT count(*)::text FROM events".to_owned()),
        ("orders", format!("SELECT count(*)::text FROM events WHERE {SALE}")),
        ("items", format!("SELECT sum(quantity)::text FROM events WHERE {SALE}")),
        ("gross_revenue", format!("SELECT coalesce(sum(amount), 0)::text FROM events WHERE {SALE}")),
        ("net_revenue", NET_REVENUE.to_owned()),
        ("returns", format!("SELECT count(*)::text FROM events WHERE {RETURN}")),
        ("returned_items", format!("SELECT coalesce(-sum(quantity), 0)::text FROM events WHERE {RETURN}")),
        ("average_order_value", format!("SELECT (sum(amount) / count(*))::text FROM events WHERE {SALE}")),
        (
            "average_spend_per_buyer",
            format!("SELECT (sum(amount) / count(DISTINCT customer_id))::text FROM events WHERE {SALE}"),
        ),
        (
            "orders_per_buyer",
            format!("SELECT (count(*)::float8 / count(DISTINCT customer_id))::text FROM events WHERE {SALE}"),
        ),
        ("average_age", "SELECT avg(age)::text FROM customers".to_owned()),
        (
            "churn_rate",
            format!(
                "SELECT (count(*) FILTER (WHERE p.churned)::float8 / count(*))::text FROM profiles p \
                 WHERE EXISTS (SELECT 1 FROM events e WHERE e.customer_id = p.customer_id AND e.{SALE})"
            ),
        ),
        ("view_to_cart", rate("viewed AND carted", "viewed")),
        ("cart_to_purchase", rate("carted AND orders > 0", "carted")),
        ("cart_abandonment", rate("carted AND orders = 0", "carted")),
        ("repeat_purchase_rate", rate("orders >= 2", "orders > 0")),
    ];
    assert_eq!(measures.len(), 19, "every measure of the catalogue");
    for (measure, sql) in &measures {
        let expected: f64 = env.sql_scalar(sql).parse().unwrap();
        let value = report(&env, &[measure])["value"].as_f64().unwrap();
        assert!(close(value, expected), "{measure}: {value} != {expected}");
    }

    // One value of each kind of dimension: a customer's field, a band, the event's, and each period.
    let row = |args: &[&str], key: &str| -> f64 {
        let report = report(&env, args);
        let rows = report["rows"].as_array().unwrap();
        let row = rows.iter().find(|row| row["dimensions"][0] == key).unwrap_or_else(|| panic!("{key}: {report}"));
        row["values"][0].as_f64().unwrap()
    };
    let by: [(&[&str], &str, String); 10] = [
        (
            &["orders", "--by", "country"],
            "PL",
            format!(
                "SELECT count(*)::text FROM events JOIN customers USING (customer_id) WHERE country = 'PL' AND {SALE}"
            ),
        ),
        (
            &["gross_revenue", "--by", "segment"],
            "VIP Loyalty",
            format!(
                "SELECT sum(amount)::text FROM events JOIN profiles USING (customer_id) \
                 WHERE segment = 'VIP Loyalty' AND {SALE}"
            ),
        ),
        (
            &["customers", "--by", "age_band"],
            "25-34",
            "SELECT count(*)::text FROM customers WHERE age BETWEEN 25 AND 34".to_owned(),
        ),
        (
            &["customers", "--by", "spend_band"],
            "0",
            format!(
                "SELECT count(*)::text FROM customers c WHERE NOT EXISTS \
                 (SELECT 1 FROM events e WHERE e.customer_id = c.customer_id AND e.{SALE})"
            ),
        ),
        (
            &["items", "--by", "product"],
            "socks",
            format!("SELECT coalesce(sum(quantity), 0)::text FROM events WHERE product = 'socks' AND {SALE}"),
        ),
        (
            &["events", "--by", "event_type"],
            "view",
            "SELECT count(*)::text FROM events WHERE event_type = 'view'".to_owned(),
        ),
        (
            &["events", "--by", "day"],
            "2025-06-12",
            "SELECT count(*)::text FROM events WHERE ts >= '2025-06-12 00:00+00' AND ts < '2025-06-13 00:00+00'"
                .to_owned(),
        ),
        (
            &["events", "--by", "week"],
            "2025-W22",
            "SELECT count(*)::text FROM events WHERE ts >= '2025-05-26 00:00+00' AND ts < '2025-06-02 00:00+00'"
                .to_owned(),
        ),
        (
            &["events", "--by", "month"],
            "2025-05",
            "SELECT count(*)::text FROM events WHERE ts >= '2025-05-01 00:00+00' AND ts < '2025-06-01 00:00+00'"
                .to_owned(),
        ),
        (
            &["events", "--by", "quarter"],
            "2025-Q2",
            "SELECT count(*)::text FROM events WHERE ts >= '2025-04-01 00:00+00' AND ts < '2025-07-01 00:00+00'"
                .to_owned(),
        ),
    ];
    for (args, key, sql) in by {
        let expected: f64 = env.sql_scalar(&sql).parse().unwrap();
        let value = row(args, key);
        assert!(close(value, expected), "{args:?} {key}: {value} != {expected}");
    }

    // A window ends on the data's last day: the last 7 days are that day and the 6 before it.
    let as_of = report(&env, &["orders"])["as_of"].as_str().unwrap().to_owned();
    let expected: f64 = env
        .sql_scalar(&format!(
            "SELECT count(*)::text FROM events WHERE {SALE} AND ts >= (DATE '{as_of}' - 6)::timestamp AT TIME ZONE 'UTC' \
             AND ts < (DATE '{as_of}' + 1)::timestamp AT TIME ZONE 'UTC'"
        ))
        .parse()
        .unwrap();
    assert_eq!(report(&env, &["orders", "--within-days", "7"])["value"].as_f64().unwrap(), expected);
}
