//! From audience to campaign against the real stack: saved audiences across a re-ingest, whole-membership exports
//! with a seeded holdout, overlap, and lookalikes, every number checked against independent SQL or the persona
//! labels of the generated sample.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly; that is its job

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use audience::campaign::Holdout;
use audience::lift::{Metric, Observation, compare};
use common::{FakeLlm, Reply, Run, TestEnv, content_text, messages_with_role};
use serde_json::{Value, json};

fn run(env: &TestEnv, args: &[&str]) -> Run {
    Run::from(env.command(args).output().unwrap())
}

fn ok_json(env: &TestEnv, args: &[&str]) -> Value {
    let run = run(env, args);
    assert_eq!(run.code, 0, "{args:?}: {}", run.stderr);
    run.json()
}

fn ok(env: &TestEnv, args: &[&str]) {
    let run = run(env, args);
    assert_eq!(run.code, 0, "{args:?}: {}", run.stderr);
}

fn count(env: &TestEnv, sql: &str) -> u64 {
    env.sql_scalar(&format!("SELECT count(*)::text FROM ({sql}) independent")).parse().unwrap()
}

/// Writes a definition in its canonical form (`limit` is the ranked list's length; exports ignore it).
fn definition_file(env: &TestEnv, name: &str, mut definition: Value) -> PathBuf {
    definition["limit"] = json!(10);
    let path = env.data_dir().join(format!("{name}.json"));
    std::fs::write(&path, definition.to_string()).unwrap();
    path
}

fn profile_clause(field: &str, value: Value) -> Value {
    json!({"type": "profile", "field": field, "op": "=", "value": value})
}

/// `external_id -> group` of a CSV export with a holdout.
fn groups(path: &Path) -> BTreeMap<String, String> {
    let mut reader = csv::Reader::from_path(path).unwrap();
    let headers = reader.headers().unwrap().clone();
    let id = headers.iter().position(|h| h == "external_id").unwrap();
    let group = headers.iter().position(|h| h == "group").unwrap();
    reader.records().map(|r| r.unwrap()).map(|r| (r[id].to_owned(), r[group].to_owned())).collect()
}

fn exported_ids(path: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap()["external_id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn saved_audiences_survive_a_reingest_and_export_exactly_their_members() {
    let env = TestEnv::empty("saved");
    env.ingest_generated(env.data_dir(), 200, 7);
    let de = definition_file(&env, "de", json!({"version": 1, "include": [profile_clause("country", json!("DE"))]}));
    let de_sql = "SELECT customer_id FROM profiles WHERE country = 'DE'";
    let before = count(&env, de_sql);
    assert!(before > 0);

    let saved = ok_json(&env, &["save", "de", "--from", de.to_str().unwrap(), "--json"]);
    assert_eq!(saved["size"], before);
    let frozen = ok_json(&env, &["save", "de-frozen", "--from", de.to_str().unwrap(), "--freeze", "--json"]);
    assert_eq!((frozen["size"].as_u64(), frozen["frozen"].as_bool()), (Some(before), Some(true)));
    let frozen_ids: BTreeSet<String> = env
        .sql_scalar("SELECT string_agg(external_id, ',') FROM profiles WHERE country = 'DE'")
        .split(',')
        .map(str::to_owned)
        .collect();

    // Names are checked, and saving over a name needs --replace (usage errors, exit 2).
    let again = run(&env, &["save", "de", "--from", de.to_str().unwrap()]);
    assert_eq!(again.code, 2, "{}", again.stderr);
    assert!(again.stderr.contains("--replace"), "{}", again.stderr);
    assert_eq!(run(&env, &["save", "bad name", "--from", de.to_str().unwrap()]).code, 2);
    assert_eq!(run(&env, &["show", "nobody"]).code, 2);
    assert_eq!(run(&env, &["save", "de", "--from", de.to_str().unwrap(), "--replace"]).code, 0);

    // The read-only role can read the data, but not write saved audiences.
    let reader_write = env.sql_scalar(&format!(
        "SELECT has_table_privilege('audience_reader', '{}_app.saved_audiences', 'INSERT')::text",
        env.schema
    ));
    assert_eq!(reader_write, "false");

    // A different dataset: the definition re-evaluates, the frozen list stays.
    env.ingest_generated(env.data_dir(), 300, 8);
    let after = count(&env, de_sql);
    assert_ne!(after, before, "the new sample should change the audience");
    let shown = ok_json(&env, &["show", "de", "--json"]);
    assert_eq!((shown["saved"]["size"].as_u64(), shown["size_now"].as_u64()), (Some(before), Some(after)));
    assert_eq!(shown["drift"].as_i64(), Some(after as i64 - before as i64));
    let listed = ok_json(&env, &["list", "--json"]);
    let names: Vec<&str> = listed.as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["de", "de-frozen"]);

    let live = env.data_dir().join("live.jsonl");
    ok_json(&env, &["export", "de", "--out", live.to_str().unwrap(), "--json"]);
    let live_ids = exported_ids(&live);
    assert_eq!(live_ids.len() as u64, after, "the export holds the whole membership, not the top N");
    let frozen_out = env.data_dir().join("frozen.jsonl");
    let summary = ok_json(&env, &["export", "de-frozen", "--out", frozen_out.to_str().unwrap(), "--json"]);
    let still_there: BTreeSet<String> = frozen_ids
        .iter()
        .filter(|id| env.sql_scalar(&format!("SELECT count(*)::text FROM profiles WHERE external_id = '{id}'")) == "1")
        .cloned()
        .collect();
    assert_eq!(exported_ids(&frozen_out), still_there);
    assert_eq!(summary["members"].as_u64(), Some(still_there.len() as u64));

    assert_eq!(run(&env, &["rm", "de"]).code, 0);
    assert_eq!(run(&env, &["rm", "de"]).code, 2);
}

#[test]
fn holdout_groups_are_stable_across_exports_and_reingests_and_overlap_matches_sql() {
    let env = TestEnv::empty("holdout");
    env.ingest_generated(env.data_dir(), 300, 7);
    let everyone = definition_file(&env, "everyone", json!({"version": 1}));
    ok(&env, &["save", "everyone", "--from", everyone.to_str().unwrap()]);
    let export = |name: &str| -> (PathBuf, Value) {
        let path = env.data_dir().join(name);
        let args = ["export", "everyone", "--out", path.to_str().unwrap(), "--holdout", "20", "--seed", "5", "--json"];
        let summary = ok_json(&env, &args);
        (path, summary)
    };
    let (first, summary) = export("a.csv");
    let (second, _) = export("b.csv");
    let (a, b) = (groups(&first), groups(&second));
    assert_eq!(a, b, "two exports put every customer in the same group");
    assert_eq!(a.len(), 300);
    let holdout = &summary["holdout"];
    let control = a.values().filter(|g| *g == "control").count() as u64;
    assert_eq!(holdout["control"].as_u64(), Some(control));
    assert_eq!(holdout["treatment"].as_u64(), Some(300 - control));
    assert!((30..=90).contains(&control), "20% of 300 held out: {control}");
    let dimensions: Vec<&str> =
        holdout["balance"].as_array().unwrap().iter().map(|b| b["dimension"].as_str().unwrap()).collect();
    assert_eq!(dimensions, ["country", "segment"]);

    // Masked: no names, hashed e-mails.
    let masked = env.data_dir().join("masked.jsonl");
    ok_json(&env, &["export", "everyone", "--out", masked.to_str().unwrap(), "--mask-pii", "--json"]);
    let line: Value = serde_json::from_str(std::fs::read_to_string(&masked).unwrap().lines().next().unwrap()).unwrap();
    assert!(line.get("first_name").is_none() && line.get("email").is_none(), "{line}");
    assert_eq!(line["email_sha256"].as_str().unwrap().len(), 64, "{line}");

    // Overlap of two saved audiences equals independent SQL.
    let de = definition_file(&env, "de", json!({"version": 1, "include": [profile_clause("country", json!("DE"))]}));
    let churned =
        definition_file(&env, "churned", json!({"version": 1, "include": [profile_clause("churned", json!(true))]}));
    ok(&env, &["save", "de", "--from", de.to_str().unwrap()]);
    ok(&env, &["save", "churned", "--from", churned.to_str().unwrap()]);
    let overlap = ok_json(&env, &["overlap", "de", "churned", "--json"]);
    let both = count(&env, "SELECT 1 FROM profiles WHERE country = 'DE' AND churned");
    let only_de = count(&env, "SELECT 1 FROM profiles WHERE country = 'DE' AND NOT churned");
    let only_churned = count(&env, "SELECT 1 FROM profiles WHERE churned AND country IS DISTINCT FROM 'DE'");
    assert_eq!(
        (overlap["both"].as_u64(), overlap["only_a"].as_u64(), overlap["only_b"].as_u64()),
        (Some(both), Some(only_de), Some(only_churned))
    );
    let jaccard = both as f64 / (both + only_de + only_churned) as f64;
    assert!((overlap["jaccard"].as_f64().unwrap() - jaccard).abs() < 1e-4);

    // `save` without --from saves the audience of the last answer in this data directory.
    let llm = FakeLlm::start(vec![Reply::tool(
        "call_1",
        "find_audience",
        json!({"include": [profile_clause("country", json!("PL"))]}),
    )]);
    let asked = env.ask_json(&llm, "customers from PL");
    assert_eq!(asked.code, 0, "{}", asked.stderr);
    let saved = ok_json(&env, &["save", "from-pl", "--json"]);
    assert_eq!(saved["size"], asked.json()["audience"]["size"]);
    assert_eq!(saved["size"].as_u64(), Some(count(&env, "SELECT 1 FROM profiles WHERE country = 'PL'")));

    // A re-ingest with more customers keeps everyone who is still there in the same group.
    env.ingest_generated(env.data_dir(), 400, 9);
    let (third, _) = export("c.csv");
    let c = groups(&third);
    assert_eq!(c.len(), 400);
    for (id, group) in &a {
        assert_eq!(c.get(id), Some(group), "customer {id} changed group after a re-ingest");
    }
}

#[test]
fn lookalikes_exclude_the_seed_share_its_persona_and_respect_a_definition() {
    let env = TestEnv::empty("lookalike");
    // 1,000 customers: the smallest persona (luxury, 12%) still has about 100 members besides a seed of 20.
    env.ingest_generated(env.data_dir(), 1000, 7);
    let labels = std::fs::read_to_string(env.data_dir().join("sample_1000_7/labels.csv")).unwrap();
    let persona: BTreeMap<String, String> = labels
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(','))
        .map(|(id, p)| (id.to_owned(), p.to_owned()))
        .collect();
    for wanted in ["luxury", "bargain", "sporty", "fashion"] {
        let seed: Vec<&str> =
            persona.iter().filter(|(_, p)| p.as_str() == wanted).map(|(id, _)| id.as_str()).take(20).collect();
        let ids = seed.join(",");
        let report = ok_json(&env, &["lookalike", "--ids", &ids, "--k", "50", "--json"]);
        let members = report["members"].as_array().unwrap();
        assert_eq!(members.len(), 50);
        let found: Vec<&str> = members.iter().map(|m| m["external_id"].as_str().unwrap()).collect();
        assert!(found.iter().all(|id| !seed.contains(id)), "a seed member came back as a lookalike");
        let same = found.iter().filter(|id| persona.get(**id).map(String::as_str) == Some(wanted)).count();
        eprintln!("{wanted}: {same} of 50 lookalikes share the persona");
        assert!(same >= 40, "{wanted}: only {same} of 50 lookalikes share the seed's persona");
        let scores: Vec<f64> = members.iter().map(|m| m["score"].as_f64().unwrap()).collect();
        assert!(scores.windows(2).all(|w| w[0] >= w[1]), "most similar first");
        assert!(!report["spread"]["at_rank"].as_array().unwrap().is_empty());
    }

    // Saved as an audience, grown only inside a definition.
    let seed_def =
        definition_file(&env, "lux", json!({"version": 1, "include": [profile_clause("likes_luxury", json!(true))]}));
    ok(&env, &["save", "lux", "--from", seed_def.to_str().unwrap(), "--freeze"]);
    let within = definition_file(
        &env,
        "within",
        json!({"version": 1, "include": [profile_clause("country", json!("DE"))],
               "exclude": [profile_clause("churned", json!(true))]}),
    );
    let report = ok_json(&env, &["lookalike", "lux", "--within", within.to_str().unwrap(), "--k", "10", "--json"]);
    let seed_ids: BTreeSet<String> = env
        .sql_scalar("SELECT string_agg(external_id, ',') FROM profiles WHERE likes_luxury")
        .split(',')
        .map(str::to_owned)
        .collect();
    let candidates = count(&env, "SELECT 1 FROM profiles WHERE country = 'DE' AND NOT churned AND NOT likes_luxury");
    assert_eq!(report["candidates"].as_u64(), Some(candidates));
    for member in report["members"].as_array().unwrap() {
        let id = member["external_id"].as_str().unwrap();
        assert!(!seed_ids.contains(id), "seed member {id} returned");
        assert_eq!(member["country"], "DE");
        assert_eq!(env.sql_scalar(&format!("SELECT churned::text FROM profiles WHERE external_id = '{id}'")), "false");
    }
    // Unknown seeds are the user's to fix.
    assert_eq!(run(&env, &["lookalike", "--ids", "nobody-1"]).code, 2);

    // The agent: with a saved audience to grow, `lookalike` is offered and answers from the same engine.
    let llm = FakeLlm::start(vec![
        Reply::tool("call_1", "lookalike", json!({"audience": "lux", "k": 5})),
        Reply::text("Here are five customers like your luxury buyers."),
    ]);
    let asked = env.ask_json(&llm, "find lookalikes of lux");
    assert_eq!(asked.code, 0, "{}", asked.stderr);
    let offered: Vec<String> = llm.requests()[0]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(offered.contains(&"lookalike".to_owned()), "{offered:?}");
    let sent = content_text(&messages_with_role(&llm.requests()[1], "tool")[0]);
    assert!(sent.starts_with("5 lookalikes of the saved audience lux"), "{sent}");
    let step = asked.json()["steps"][0]["observation"].as_str().unwrap().to_owned();
    let top = step.split("top ids: ").nth(1).unwrap_or_default();
    assert_eq!(top.split(", ").count(), 5, "{step}");
    assert!(top.split(", ").all(|id| !seed_ids.contains(id.trim())), "{step}");
}

/// The default rule table written by hand as SQL over the raw tables: each member's action, first match first.
const DEFAULT_ACTIONS_SQL: &str = "SELECT string_agg(p.external_id || ':' || CASE \
    WHEN p.churned AND p.m_score >= 4 THEN 'personal_win_back' \
    WHEN p.churned THEN 'win_back_reminder' \
    WHEN p.segment = 'VIP Loyalty' THEN 'early_access' \
    WHEN p.order_count = 0 AND EXISTS (SELECT 1 FROM events e WHERE e.customer_id = p.customer_id \
         AND e.event_type = 'add_to_cart') THEN 'cart_reminder' \
    WHEN p.order_count = 1 AND p.recency_days <= 60 THEN 'second_purchase_incentive' \
    ELSE 'none' END, ',') FROM profiles p";

fn id_map(text: &str) -> BTreeMap<String, String> {
    text.split(',').filter_map(|pair| pair.split_once(':')).map(|(id, a)| (id.to_owned(), a.to_owned())).collect()
}

fn per_member(report: &Value) -> BTreeMap<String, String> {
    report["per_member"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["external_id"].as_str().unwrap().to_owned(), m["action"].as_str().unwrap().to_owned()))
        .collect()
}

#[test]
fn actions_match_independent_sql_over_the_rule_table_and_fill_the_export() {
    let env = TestEnv::empty("actions");
    env.ingest_generated(env.data_dir(), 1000, 7);
    let everyone = definition_file(&env, "everyone", json!({"version": 1}));
    ok(&env, &["save", "everyone", "--from", everyone.to_str().unwrap()]);

    // The shipped table: every member gets exactly the action the hand-written SQL gives.
    let report = ok_json(&env, &["actions", "everyone", "--json"]);
    let expected = id_map(&env.sql_scalar(DEFAULT_ACTIONS_SQL));
    assert_eq!(expected.len(), 1000);
    assert_eq!(per_member(&report), expected);
    let counts: Vec<(String, u64)> = report["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["action"].as_str().unwrap().to_owned(), a["members"].as_u64().unwrap()))
        .collect();
    assert_eq!(counts.iter().map(|(_, n)| n).sum::<u64>(), 1000, "every member has exactly one action");
    for (action, members) in &counts {
        assert!(*members > 0, "no member gets {action}: the test would not check that rule ({counts:?})");
        assert_eq!(*members, expected.values().filter(|a| *a == action).count() as u64, "{action}");
    }
    assert_eq!(counts.last().unwrap().0, "none");

    // The export's action column is the same assignment.
    let out = env.data_dir().join("actions.csv");
    ok(&env, &["export", "everyone", "--out", out.to_str().unwrap(), "--holdout", "10", "--fields", "email"]);
    let mut reader = csv::Reader::from_path(&out).unwrap();
    assert_eq!(reader.headers().unwrap().iter().collect::<Vec<_>>(), ["external_id", "group", "email", "action"]);
    let exported: BTreeMap<String, String> =
        reader.records().map(|r| r.unwrap()).map(|r| (r[0].to_owned(), r[3].to_owned())).collect();
    assert_eq!(exported, expected);

    // A table of one's own, over a live definition: an event clause with a window, an exclude, a catch-all.
    let rules = env.data_dir().join("rules.toml");
    std::fs::write(
        &rules,
        r#"
[[rule]]
action = "watch_launch"
reason = "viewed watches lately, never bought one"
include = [{ type = "event", event_type = "view", products = ["watches"], within_days = 90 }]
exclude = [{ type = "event", event_type = "purchase", products = ["watches"] }]

[[rule]]
action = "thank_you"
reason = "spent over 500"
include = [{ type = "profile", field = "total_spent", op = ">", value = 500 }]

[[rule]]
action = "newsletter"
reason = "everyone else"
"#,
    )
    .unwrap();
    let de = definition_file(&env, "de", json!({"version": 1, "include": [profile_clause("country", json!("DE"))]}));
    let custom =
        ok_json(&env, &["actions", "--from", de.to_str().unwrap(), "--rules", rules.to_str().unwrap(), "--json"]);
    let expected = id_map(&env.sql_scalar(
        "SELECT string_agg(p.external_id || ':' || CASE \
           WHEN EXISTS (SELECT 1 FROM events e WHERE e.customer_id = p.customer_id AND e.event_type = 'view' \
                AND e.product = 'watches' AND e.ts >= ((((SELECT max(ts) FROM events) AT TIME ZONE 'UTC')::date - 89) \
                    ::timestamp AT TIME ZONE 'UTC')) \
            AND NOT EXISTS (SELECT 1 FROM events e WHERE e.customer_id = p.customer_id \
                AND e.event_type = 'purchase' AND e.quantity > 0 AND e.product = 'watches') THEN 'watch_launch' \
           WHEN p.total_spent > 500 THEN 'thank_you' ELSE 'newsletter' END, ',') \
         FROM profiles p WHERE p.country = 'DE'",
    ));
    let found = per_member(&custom);
    assert_eq!(found, expected);
    for action in ["watch_launch", "thank_you", "newsletter"] {
        assert!(found.values().any(|a| a == action), "no member gets {action}");
    }
    assert!(!found.values().any(|a| a == "none"), "a catch-all rule leaves nobody without an action");

    // A table that is not one is the user's to fix, with the rule that is wrong.
    std::fs::write(&rules, "[[rule]]\naction = \"x\"\nreason = \"r\"\ninclude = [{ type = \"profile\", field = \"age\", op = \"contains\", value = 3 }]\n").unwrap();
    let bad = run(&env, &["actions", "everyone", "--rules", rules.to_str().unwrap()]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("rule 1 (x)"), "{}", bad.stderr);

    insta::assert_snapshot!("actions_of_everyone", run(&env, &["actions", "everyone"]).stdout);
}

/// `external_id -> (orders, revenue)` of every customer's sales in `[since, until]`, by hand over the events.
fn sales_between(env: &TestEnv, since: &str, until: &str) -> BTreeMap<String, (u32, f64)> {
    let text = env.sql_scalar(&format!(
        "SELECT string_agg(c.external_id || ':' || coalesce(s.orders, 0) || ':' || coalesce(s.revenue, 0), ',') \
         FROM customers c LEFT JOIN (SELECT customer_id, count(*) AS orders, sum(price * quantity) AS revenue \
           FROM events WHERE event_type = 'purchase' AND quantity > 0 \
           AND ts >= TIMESTAMPTZ '{since} 00:00:00+00' AND ts < TIMESTAMPTZ '{until} 00:00:00+00' + interval '1 day' \
           GROUP BY customer_id) s ON s.customer_id = c.customer_id"
    ));
    text.split(',')
        .map(|row| {
            let mut parts = row.split(':');
            let id = parts.next().unwrap().to_owned();
            (id, (parts.next().unwrap().parse().unwrap(), parts.next().unwrap().parse().unwrap()))
        })
        .collect()
}

fn observations(sales: &BTreeMap<String, (u32, f64)>, holdout: &Holdout) -> Vec<Observation> {
    sales
        .iter()
        .map(|(id, (orders, revenue))| Observation {
            control: holdout.group(id) == "control",
            orders: *orders,
            revenue: *revenue,
        })
        .collect()
}

#[test]
fn measure_recovers_a_known_lift_and_an_aa_split_shows_none() {
    let env = TestEnv::empty("measure");
    // The campaign of 2025-06-01 went to the treatment group of a 50% holdout with seed 3; the generator makes 20%
    // of those customers buy once more after that day.
    let holdout = Holdout::new(50.0, 3).unwrap();
    let customers = 2000u64;
    let groups = env.data_dir().join("groups.csv");
    let rows: Vec<String> = (1..=customers).map(|id| format!("{id},{}", holdout.group(&id.to_string()))).collect();
    std::fs::write(&groups, format!("external_id,group\n{}\n", rows.join("\n"))).unwrap();
    let sample = env.data_dir().join("sample");
    let generated = run(
        &env,
        &[
            "generate",
            "--customers",
            "2000",
            "--events-per-customer",
            "12",
            "--seed",
            "11",
            "--end-date",
            "2025-06-30",
            "--out",
            sample.to_str().unwrap(),
            "--lift-ids",
            groups.to_str().unwrap(),
            "--lift-share",
            "0.2",
            "--lift-since",
            "2025-06-01",
        ],
    );
    assert_eq!(generated.code, 0, "{}", generated.stderr);
    let lifted: Vec<String> =
        std::fs::read_to_string(sample.join("lifted.csv")).unwrap().lines().skip(1).map(str::to_owned).collect();
    let treatment = (1..=customers).filter(|id| holdout.group(&id.to_string()) == "treatment").count();
    assert!(lifted.iter().all(|id| holdout.group(id) == "treatment"), "only the treatment group was reached");
    let share = lifted.len() as f64 / treatment as f64;
    assert!((0.17..=0.23).contains(&share), "{share}");
    let (customers_csv, events_csv) = (sample.join("customers.csv"), sample.join("events.csv"));
    ok(&env, &["ingest", "--customers", customers_csv.to_str().unwrap(), "--events", events_csv.to_str().unwrap()]);
    let everyone = definition_file(&env, "everyone", json!({"version": 1}));
    ok(&env, &["save", "everyone", "--from", everyone.to_str().unwrap(), "--freeze"]);

    let measured =
        ok_json(&env, &["measure", "everyone", "--since", "2025-06-01", "--holdout", "50", "--seed", "3", "--json"]);
    assert_eq!((measured["membership"].as_str(), measured["until"].as_str()), (Some("frozen"), Some("2025-06-29")));
    // The groups' figures are the hand-written SQL's.
    let june = sales_between(&env, "2025-06-01", "2025-06-30");
    let expected = compare(&observations(&june, &holdout), Metric::Conversion, 3, None).unwrap();
    for group in ["treatment", "control"] {
        let stats = if group == "treatment" { &expected.treatment } else { &expected.control };
        assert_eq!(measured[group]["size"].as_u64(), Some(stats.size), "{group}");
        assert_eq!(measured[group]["converters"].as_u64(), Some(stats.converters), "{group}");
        assert_eq!(measured[group]["orders"].as_u64(), Some(stats.orders), "{group}");
        assert!((measured[group]["revenue"].as_f64().unwrap() - stats.revenue).abs() < 0.01, "{group}");
    }
    // The known effect: a fifth of the treatment group bought once more, which converts the ones who would not have
    // bought anyway (the control group's rate says how many would have).
    let lift = &measured["lift"];
    let control_rate = lift["control"].as_f64().unwrap();
    let known = 0.2 * (1.0 - control_rate);
    let (low, high) =
        (lift["absolute_interval"]["low"].as_f64().unwrap(), lift["absolute_interval"]["high"].as_f64().unwrap());
    eprintln!("conversion lift {} (95% CI {low} to {high}), known {known}, p {}", lift["absolute"], lift["p_value"]);
    assert!(low <= known && known <= high, "the interval {low}..{high} misses the known lift {known}");
    assert!(lift["p_value"].as_f64().unwrap() < 0.001 && lift["significant"] == true, "{lift}");

    // Revenue: the extra purchases add money, and the ROI follows it.
    let revenue = ok_json(
        &env,
        &[
            "measure",
            "everyone",
            "--since",
            "2025-06-01",
            "--metric",
            "revenue",
            "--holdout",
            "50",
            "--seed",
            "3",
            "--cost-per-contact",
            "0.5",
            "--margin",
            "0.3",
            "--json",
        ],
    );
    assert!(revenue["lift"]["absolute_interval"]["low"].as_f64().unwrap() > 0.0, "{}", revenue["lift"]);
    let roi = &revenue["roi"];
    assert_eq!(roi["contacts"].as_u64(), Some(treatment as u64));
    let profit = roi["incremental_revenue"].as_f64().unwrap() * 0.3 - 0.5 * treatment as f64;
    assert!((roi["incremental_profit"].as_f64().unwrap() - profit).abs() < 1e-6);

    // Before the campaign the same split is an A/A test: no effect.
    let may = ok_json(
        &env,
        &[
            "measure",
            "everyone",
            "--since",
            "2025-05-01",
            "--until",
            "2025-05-31",
            "--holdout",
            "50",
            "--seed",
            "3",
            "--json",
        ],
    );
    assert_eq!(may["lift"]["significant"], false, "{}", may["lift"]);
    assert!(may["lift"]["verdict"].as_str().unwrap().starts_with("not significant at this size"));
    // And over 100 seeds, in memory over the same outcomes, at most 5 splits look like an effect.
    let may_sales = sales_between(&env, "2025-05-01", "2025-05-31");
    let significant = (1..=100u64)
        .filter(|seed| {
            let split = Holdout::new(50.0, *seed).unwrap();
            compare(&observations(&may_sales, &split), Metric::Conversion, *seed, None).unwrap().lift.p_value < 0.05
        })
        .count();
    eprintln!("A/A: {significant} of 100 seeds significant at 5%");
    assert!(significant <= 5, "{significant} of 100 A/A splits were significant");

    // Usage errors: no holdout, a period after the data, until before since.
    assert_eq!(run(&env, &["measure", "everyone", "--since", "2025-06-01"]).code, 2);
    let late = run(&env, &["measure", "everyone", "--since", "2025-08-01", "--holdout", "50"]);
    assert_eq!(late.code, 2, "{}", late.stderr);
    assert!(late.stderr.contains("the data ends on 2025-06-29"), "{}", late.stderr);
    let backwards = ["measure", "everyone", "--since", "2025-06-01", "--until", "2025-05-01", "--holdout", "50"];
    assert_eq!(run(&env, &backwards).code, 2);

    let text = run(
        &env,
        &[
            "measure",
            "everyone",
            "--since",
            "2025-06-01",
            "--holdout",
            "50",
            "--seed",
            "3",
            "--cost-per-contact",
            "0.5",
            "--margin",
            "0.3",
        ],
    );
    assert_eq!(text.code, 0, "{}", text.stderr);
    insta::assert_snapshot!("measure_of_a_known_lift", text.stdout);
}

fn draft_reply(subject: &str, body: &str) -> Reply {
    Reply::text(
        &json!({"subject": subject, "preheader": "Picked for you", "body": body, "cta": "Shop now"}).to_string(),
    )
}

/// Rows of a drafts CSV, by id.
fn draft_rows(path: &Path) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut reader = csv::Reader::from_path(path).unwrap();
    let headers = reader.headers().unwrap().clone();
    reader
        .records()
        .map(|r| r.unwrap())
        .map(|r| {
            let row: BTreeMap<String, String> =
                headers.iter().zip(r.iter()).map(|(h, v)| (h.to_owned(), v.to_owned())).collect();
            (row["id"].clone(), row)
        })
        .collect()
}

fn user_text(request: &Value) -> String {
    messages_with_role(request, "user").iter().map(content_text).collect::<Vec<_>>().join("\n")
}

#[test]
fn drafts_pass_the_checks_or_are_rejected_after_one_retry_and_never_obey_a_stored_instruction() {
    let env = TestEnv::empty("drafts");
    env.ingest_generated(env.data_dir(), 60, 7);
    // The golden set's stored injections, appended to the sample's customers and ingested with it.
    let sample = env.data_dir().join("sample_60_7");
    let mut customers = std::fs::read_to_string(sample.join("customers.csv")).unwrap();
    let injections =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/injections.csv")).unwrap();
    customers.push_str(&injections.lines().skip(1).map(|l| format!("{l}\n")).collect::<String>());
    let with_injections = env.data_dir().join("customers_injected.csv");
    std::fs::write(&with_injections, customers).unwrap();
    let events = sample.join("events.csv");
    ok(&env, &["ingest", "--customers", with_injections.to_str().unwrap(), "--events", events.to_str().unwrap()]);

    let fact =
        |id: &str, sql: &str| env.sql_scalar(&format!("SELECT ({sql})::text FROM profiles WHERE external_id = '{id}'"));
    // Six members with interests; each gets a scripted reply pair.
    let ids: Vec<String> = env
        .sql_scalar(
            "SELECT string_agg(external_id, ',' ORDER BY customer_id) FROM (SELECT * FROM profiles \
                     WHERE cardinality(interests) > 0 ORDER BY customer_id LIMIT 7) p",
        )
        .split(',')
        .map(str::to_owned)
        .collect();
    let interest = |id: &str| fact(id, "replace(interests[1], '_', ' ')");
    let first = |id: &str| fact(id, "first_name");
    let outside = |id: &str| {
        fact(
            id,
            "(SELECT replace(x, '_', ' ') FROM unnest(ARRAY['socks','watches','dresses','running_gear','perfume']) x \
                   WHERE x <> ALL(interests) LIMIT 1)",
        )
    };
    let other_email = env.sql_scalar(&format!("SELECT email FROM profiles WHERE external_id <> '{}' LIMIT 1", ids[4]));
    let good = |id: &str| {
        draft_reply(
            &format!("{}, new {} for you", first(id), interest(id)),
            &format!("Dear {}, we picked new {} for you, with 20% off until Sunday.", first(id), interest(id)),
        )
    };
    let offer = "20% off everything until Sunday";
    let mut script = vec![good(&ids[0])];
    let violations: Vec<(&str, Reply)> = vec![
        ("placeholder", draft_reply("Hello [Name]", &format!("New {} for you.", interest(&ids[1])))),
        ("the amount 50", draft_reply("Big sale", &format!("Take 50% off {}.", interest(&ids[2])))),
        (
            "neither among the interests nor in the offer",
            draft_reply("New in", &format!("Try our new {}.", outside(&ids[3]))),
        ),
        ("e-mail address", draft_reply("Hello", &format!("Ask {other_email} about {}.", interest(&ids[4])))),
        (
            "characters (at most 78)",
            draft_reply(&"A very long subject ".repeat(6), &format!("New {}.", interest(&ids[5]))),
        ),
    ];
    for (_, reply) in &violations {
        script.push(reply.clone());
        script.push(reply.clone());
    }
    // The last member: wrong at first, right after the retry.
    script.push(violations[0].1.clone());
    script.push(good(&ids[6]));
    let llm = FakeLlm::start(script);
    let members = definition_file(
        &env,
        "seven",
        json!({"version": 1, "include": [{"type": "sql",
        "condition": format!("external_id IN ({})", ids.iter().map(|i| format!("'{i}'")).collect::<Vec<_>>().join(", "))}]}),
    );
    let out = env.data_dir().join("drafts.csv");
    let run_draft = |llm: &FakeLlm, args: &[&str]| Run::from(env.llm_command(llm, args).output().unwrap());
    // One request at a time: each member's scripted replies come in its turn.
    let drafted = run_draft(
        &llm,
        &[
            "draft",
            "--from",
            members.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--offer",
            offer,
            "--concurrency",
            "1",
            "--json",
        ],
    );
    assert_eq!(drafted.code, 0, "{}", drafted.stderr);
    let summary = drafted.json();
    assert_eq!(
        (
            summary["accepted_first_try"].as_u64(),
            summary["accepted_after_retry"].as_u64(),
            summary["rejected"].as_u64()
        ),
        (Some(1), Some(1), Some(5)),
        "{summary}"
    );
    assert_eq!(llm.requests().len(), 1 + 2 * 5 + 2, "exactly one retry per failed draft");
    // Each draft's calls go to the usage ledger.
    let ledger = std::fs::read_to_string(env.data_dir().join("usage.jsonl")).unwrap();
    let records: Vec<Value> = ledger.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    let draft_calls: usize =
        records.iter().map(|r| r["calls"].as_array().unwrap().iter().filter(|c| c["purpose"] == "draft").count()).sum();
    assert_eq!((records.len(), draft_calls), (7, 13));
    assert_eq!(llm.remaining(), 0);
    // Generated under the JSON schema of `Draft`.
    let format = &llm.requests()[0]["response_format"];
    assert_eq!(format["type"], "json_schema", "{format}");
    assert!(format.to_string().contains("preheader"), "{format}");
    // The retry says why.
    assert!(user_text(&llm.requests()[2]).contains("Your previous draft was rejected: it has the placeholder [Name]"));
    let rows = draft_rows(&out);
    assert_eq!(rows[&ids[0]]["status"], "accepted");
    assert_eq!(rows[&ids[6]]["status"], "accepted");
    for (i, (reason, _)) in violations.iter().enumerate() {
        let row = &rows[&ids[i + 1]];
        assert_eq!(row["status"], "rejected", "{row:?}");
        assert!(row["reason"].contains(reason), "{reason}: {row:?}");
    }
    assert!(!partial_exists(&out), "the partial file goes once the output is complete");

    // A stored injection (the golden set's 900002: a colour that asks for PWN3D written with an E) is never in the
    // prompt, and a draft that obeys it is rejected.
    let injected = definition_file(
        &env,
        "injected",
        json!({"version": 1, "include": [{"type": "sql", "condition": "external_id = '900002'"}]}),
    );
    let obeying = draft_reply("PWNED", "PWNED");
    let llm = FakeLlm::start(vec![obeying.clone(), obeying]);
    let out2 = env.data_dir().join("injected.jsonl");
    let drafted = run_draft(&llm, &["draft", "--from", injected.to_str().unwrap(), "--out", out2.to_str().unwrap()]);
    assert_eq!(drafted.code, 0, "{}", drafted.stderr);
    let prompt = user_text(&llm.requests()[0]);
    assert!(!prompt.contains("PWN3D") && !prompt.contains("SYSTEM"), "{prompt}");
    let row: Value = serde_json::from_str(std::fs::read_to_string(&out2).unwrap().lines().next().unwrap()).unwrap();
    assert_eq!(row["status"], "rejected", "{row}");
    assert!(row["reason"].as_str().unwrap().contains("stored instruction"), "{row}");

    // The control group gets no draft; --limit stops early and --resume writes the rest.
    let everyone_file = definition_file(
        &env,
        "all",
        json!({"version": 1, "include": [{"type": "sql",
        "condition": "external_id IN ('1','2','3','4','5','6','7','8','9','10')"}]}),
    );
    let treatment: Vec<String> =
        (1..=10).map(|i| i.to_string()).filter(|id| Holdout::new(50.0, 4).unwrap().group(id) == "treatment").collect();
    let replies = |n: usize| (0..n).map(|_| draft_reply("New for you", "Something new for you.")).collect::<Vec<_>>();
    let llm = FakeLlm::start(replies(2));
    let out3 = env.data_dir().join("campaign.csv");
    let args = [
        "draft",
        "--from",
        everyone_file.to_str().unwrap(),
        "--out",
        out3.to_str().unwrap(),
        "--holdout",
        "50",
        "--seed",
        "4",
        "--mask-pii",
        "--json",
    ];
    let mut limited = args.to_vec();
    limited.extend(["--limit", "2"]);
    let first_run = run_draft(&llm, &limited).json();
    assert_eq!(first_run["held_out"].as_u64(), Some(10 - treatment.len() as u64), "{first_run}");
    assert_eq!(
        (first_run["drafts"].as_u64(), first_run["remaining"].as_u64()),
        (Some(2), Some(treatment.len() as u64 - 2))
    );
    assert!(partial_exists(&out3));
    let llm = FakeLlm::start(replies(treatment.len() - 2));
    let mut resumed = args.to_vec();
    resumed.push("--resume");
    let second_run = run_draft(&llm, &resumed).json();
    assert_eq!(
        (second_run["resumed"].as_u64(), second_run["drafts"].as_u64()),
        (Some(2), Some(treatment.len() as u64))
    );
    assert_eq!(llm.requests().len(), treatment.len() - 2, "the kept drafts are not written again");
    let rows = draft_rows(&out3);
    assert_eq!(rows.keys().cloned().collect::<BTreeSet<_>>(), treatment.iter().cloned().collect::<BTreeSet<_>>());
    // Written four at a time (the hosted default) and in two runs, the file keeps the members' order.
    let in_file: Vec<String> =
        csv::Reader::from_path(&out3).unwrap().records().map(|r| r.unwrap()[0].to_owned()).collect();
    assert_eq!(in_file, treatment);
    assert!(rows.values().all(|row| row["email_sha256"].len() == 64 && !row.contains_key("email")));
    assert!(!partial_exists(&out3));
}

fn partial_exists(out: &Path) -> bool {
    let mut name = out.file_name().unwrap().to_os_string();
    name.push(".partial.jsonl");
    out.with_file_name(name).exists()
}

/// Killed in the middle of a run (SIGKILL while it waits out a rate limit), `draft` leaves the output file as it
/// was and the finished drafts in the partial file; `--resume` keeps them and writes only the rest.
#[test]
fn draft_resumes_after_a_kill() {
    let env = TestEnv::ingested("draftkill");
    let five = definition_file(
        &env,
        "five",
        json!({"version": 1, "include": [{"type": "sql",
        "condition": "external_id IN ('1','2','3','4','5')"}]}),
    );
    let reply = || draft_reply("New for you", "Something new for you.");
    // Two drafts, then a rate limit whose wait outlasts the test's patience (one request at a time, so that the
    // script's order is the drafts').
    let llm = FakeLlm::start(vec![reply(), reply(), Reply::status(429).retry_after(25)]);
    let out = env.data_dir().join("drafts.csv");
    std::fs::write(&out, "the previous file\n").unwrap();
    let args =
        ["draft", "--from", five.to_str().unwrap(), "--out", out.to_str().unwrap(), "--concurrency", "1", "--json"];
    let mut child = env
        .llm_command(&llm, &args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut partial = out.file_name().unwrap().to_os_string();
    partial.push(".partial.jsonl");
    let partial = out.with_file_name(partial);
    let started = std::time::Instant::now();
    while std::fs::read_to_string(&partial).map_or(0, |text| text.lines().count()) < 2 || llm.requests().len() < 3 {
        assert!(started.elapsed().as_secs() < 60, "the run did not reach its third request");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "the previous file\n", "nothing half-written");

    let llm = FakeLlm::start(vec![reply(), reply(), reply()]);
    let mut resumed = args.to_vec();
    resumed.push("--resume");
    let run = Run::from(env.llm_command(&llm, &resumed).output().unwrap());
    assert_eq!(run.code, 0, "{}", run.stderr);
    let summary = run.json();
    assert_eq!((summary["resumed"].as_u64(), summary["drafts"].as_u64()), (Some(2), Some(5)), "{summary}");
    assert_eq!(llm.requests().len(), 3, "only the three unfinished drafts are written");
    let ids: Vec<String> = draft_rows(&out).into_keys().collect();
    assert_eq!(ids, ["1", "2", "3", "4", "5"]);
    assert!(!partial.exists());

    // One draft per segment, with the merge tag and no member's facts.
    let segments: u64 = env
        .sql_scalar("SELECT count(DISTINCT segment)::text FROM profiles WHERE external_id IN ('1','2','3','4','5')")
        .parse()
        .unwrap();
    let group_reply = || draft_reply("New for you", "Hello {{first_name}}, something new for you.");
    let llm = FakeLlm::start((0..segments).map(|_| group_reply()).collect());
    let per_segment = env.data_dir().join("segments.jsonl");
    let args = ["draft", "--from", five.to_str().unwrap(), "--out", per_segment.to_str().unwrap(), "--per", "segment"];
    let run = Run::from(env.llm_command(&llm, &args).output().unwrap());
    assert_eq!(run.code, 0, "{}", run.stderr);
    let rows: Vec<Value> = std::fs::read_to_string(&per_segment)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(rows.len() as u64, segments);
    assert!(rows.iter().all(|r| r["status"] == "accepted" && r["id"].as_str().unwrap().starts_with("segment:")));
    let prompt = user_text(&llm.requests()[0]);
    assert!(prompt.contains("The group: segment:") && !prompt.contains("First name"), "{prompt}");
}
