//! `audience segments` against the real stack: on a generated sample the chosen segments recover the hidden personas
//! (adjusted Rand index against labels.csv), the same seed gives the same segments, saved segments are frozen
//! audiences that show, export, overlap and lookalike read, a product is matched to the segment that leans to it,
//! the model names the segments in one constrained call (a scripted fake; names it gets wrong keep the deterministic
//! ones), and too few customers is a clear usage error.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly; that is its job

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use audience_tools::db::{Db, ReadLimits};
use audience_tools::embed::LazyEmbedder;
use audience_tools::paths;
use audience_tools::segments::{self, SegmentOptions};
use audience_tools::stores::Stores;
use audience_tools::vector::VectorStore;
use common::{FakeLlm, Reply, Run, TestEnv, content_text, database_url, messages_with_role};
use serde_json::{Value, json};

fn run(env: &TestEnv, args: &[&str]) -> Run {
    Run::from(env.command(args).output().unwrap())
}

fn ok(env: &TestEnv, args: &[&str]) -> Run {
    let run = run(env, args);
    assert_eq!(run.code, 0, "{args:?}: {}", run.stderr);
    run
}

/// The adjusted Rand index of two labelings of the same items (Hubert and Arabie, 1985): 1 for the same partition,
/// about 0 for a random one.
fn adjusted_rand_index(a: &[&str], b: &[&str]) -> f64 {
    let pairs = |n: u64| (n * n.saturating_sub(1)) as f64 / 2.0;
    let mut cells: HashMap<(&str, &str), u64> = HashMap::new();
    let (mut rows, mut columns): (HashMap<&str, u64>, HashMap<&str, u64>) = Default::default();
    for (x, y) in a.iter().zip(b) {
        *cells.entry((x, y)).or_default() += 1;
        *rows.entry(x).or_default() += 1;
        *columns.entry(y).or_default() += 1;
    }
    let index: f64 = cells.values().map(|n| pairs(*n)).sum();
    let (row_pairs, column_pairs): (f64, f64) =
        (rows.values().map(|n| pairs(*n)).sum(), columns.values().map(|n| pairs(*n)).sum());
    let expected = row_pairs * column_pairs / pairs(a.len() as u64);
    let max = (row_pairs + column_pairs) / 2.0;
    (index - expected) / (max - expected)
}

#[test]
fn adjusted_rand_index_of_known_partitions() {
    assert!((adjusted_rand_index(&["a", "a", "b", "b"], &["x", "x", "y", "y"]) - 1.0).abs() < 1e-12);
    // The textbook example: scikit-learn's adjusted_rand_score([0, 0, 1, 2], [0, 0, 1, 1]) is 0.5714...
    let ari = adjusted_rand_index(&["0", "0", "1", "2"], &["0", "0", "1", "1"]);
    assert!((ari - 0.571_428_571_428_571_4).abs() < 1e-12, "{ari}");
}

/// Saved audience name -> its frozen members (file ids), for names starting with `prefix-`.
fn saved_members(env: &TestEnv, prefix: &str) -> BTreeMap<String, BTreeSet<String>> {
    let text = env.sql_scalar(&format!(
        "SELECT string_agg(name || ':' || external_id, ',' ORDER BY name, external_id) FROM {}_app.saved_members \
         WHERE name LIKE '{prefix}-%'",
        env.schema
    ));
    let mut members: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for pair in text.split(',') {
        let (name, id) = pair.split_once(':').unwrap();
        members.entry(name.to_owned()).or_default().insert(id.to_owned());
    }
    members
}

fn labels(path: &Path) -> HashMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .skip(1)
        .map(|line| {
            let (id, persona) = line.split_once(',').unwrap();
            (id.to_owned(), persona.to_owned())
        })
        .collect()
}

async fn stores(env: &TestEnv) -> Stores {
    let db = Db::connect(&database_url(), &env.schema).await.unwrap();
    let vectors = VectorStore::from_env(env.data_dir(), &env.schema).reader();
    Stores::new(db, vectors, LazyEmbedder::new(paths::models_dir()), ReadLimits::default())
}

#[test]
fn segments_recover_the_personas_and_saved_segments_are_audiences() {
    let env = TestEnv::empty("segari");
    env.ingest_generated(env.data_dir(), 1000, 11);
    let report = ok(&env, &["segments", "--save", "seg", "--json"]).json();
    let chosen = report["chosen_k"].as_u64().unwrap();
    let segments = report["segments"].as_array().unwrap();
    assert_eq!(segments.len() as u64, chosen);
    assert_eq!(report["customers"], 1000);
    assert_eq!(report["silhouette_on"]["sampled"], false);
    assert_eq!(report["saved"].as_array().unwrap().len() as u64, chosen);
    let candidates: Vec<u64> =
        report["candidates"].as_array().unwrap().iter().map(|c| c["k"].as_u64().unwrap()).collect();
    assert_eq!(candidates, (2..=10).collect::<Vec<_>>());

    // The saved members partition the customers, and agree with the persona labels.
    let members = saved_members(&env, "seg");
    assert_eq!(members.len() as u64, chosen);
    let truth = labels(&env.data_dir().join("sample_1000_11").join("labels.csv"));
    let (mut found, mut expected) = (Vec::new(), Vec::new());
    for (name, ids) in &members {
        for id in ids {
            found.push(name.as_str());
            expected.push(truth[id].as_str());
        }
    }
    assert_eq!(found.len(), 1000, "every customer is in exactly one segment");
    let ari = adjusted_rand_index(&found, &expected);
    eprintln!("k = {chosen}, adjusted Rand index against the personas: {ari:.4}");
    assert!(ari >= 0.6, "adjusted Rand index {ari:.4} against the personas");
    for (segment, saved) in segments.iter().zip(members.values()) {
        assert_eq!(segment["size"].as_u64().unwrap(), saved.len() as u64);
    }

    // The same seed gives the same segments, member for member.
    let again = ok(&env, &["segments", "--save", "again", "--json"]).json();
    assert_eq!(again["segments"], report["segments"]);
    assert_eq!(again["candidates"], report["candidates"]);
    let again: Vec<BTreeSet<String>> = saved_members(&env, "again").into_values().collect();
    assert_eq!(again, members.values().cloned().collect::<Vec<_>>());

    // Saving over the segments needs --replace; nothing is half-written without it.
    let taken = run(&env, &["segments", "--save", "seg"]);
    assert_eq!(taken.code, 2, "{}", taken.stderr);
    assert!(taken.stderr.contains("already saved"), "{}", taken.stderr);

    // A saved segment is a frozen audience: show, export, overlap and lookalike read its members.
    let shown = ok(&env, &["show", "seg-1", "--json"]).json();
    assert_eq!(shown["saved"]["frozen"], true);
    assert_eq!(shown["size_now"], segments[0]["size"]);
    let out = env.data_dir().join("seg-1.jsonl");
    let exported = ok(&env, &["export", "seg-1", "--out", out.to_str().unwrap(), "--json"]).json();
    assert_eq!(exported["members"], segments[0]["size"]);
    let ids: BTreeSet<String> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap()["external_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(&ids, &members["seg-1"]);
    let overlap = ok(&env, &["overlap", "seg-1", "seg-2", "--json"]).json();
    assert_eq!(overlap["both"], 0);
    let lookalikes = ok(&env, &["lookalike", "seg-1", "-k", "5", "--json"]).json();
    let grown: Vec<&str> =
        lookalikes["members"].as_array().unwrap().iter().map(|m| m["external_id"].as_str().unwrap()).collect();
    assert_eq!(grown.len(), 5);
    assert!(grown.iter().all(|id| !members["seg-1"].contains(*id)), "lookalikes are outside the segment");

    // The library gives the same report, and matches running gear to the segment of the sporty persona.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let library = runtime.block_on(async {
        let stores = stores(&env).await;
        segments::compute(&stores, &SegmentOptions::default()).await.unwrap()
    });
    assert_eq!(serde_json::to_value(&library.segments).unwrap(), report["segments"]);
    let matched = segments::match_products(&library, &["running_gear".to_owned()]).unwrap();
    let segment = &library.segments[matched.segment_id - 1];
    let sporty = segment.members.iter().filter(|id| truth[*id] == "sporty").count();
    assert!(
        sporty * 2 > segment.members.len(),
        "{} of {} are sporty: {}",
        sporty,
        segment.members.len(),
        matched.reason
    );
    assert!(matched.lift > 1.5 && matched.reason.contains("running gear"), "{matched:?}");
    let unknown = segments::match_products(&library, &["rockets".to_owned()]).unwrap_err();
    assert!(unknown.to_string().contains("the products are"), "{unknown}");
    let cli = ok(&env, &["segments", "--product", "running_gear", "--json"]).json();
    assert_eq!(cli["product_match"]["segment_id"], matched.segment_id);
    let shown = ok(&env, &["show", "seg-1"]).stdout;
    assert!(shown.contains("members when saved: by country: "), "{shown}");
}

#[test]
fn segments_output_on_a_small_sample() {
    let env = TestEnv::ingested("segout");
    let run = ok(&env, &["segments", "--k", "2..4", "--seed", "3"]);
    insta::assert_snapshot!("segments_small_sample", run.stdout);
    let only = ok(&env, &["segments", "--k", "3", "--features", "spend,interests", "--json"]).json();
    assert_eq!(only["chosen_k"], 3);
    assert_eq!(only["chosen_by"], "fixed by --k");
    let groups: Vec<&str> = only["features"].as_array().unwrap().iter().map(|f| f["group"].as_str().unwrap()).collect();
    assert_eq!(groups, ["spend", "interests"]);
}

#[test]
fn fewer_customers_than_segments_is_a_usage_error() {
    let env = TestEnv::empty("segfew");
    env.ingest_generated(env.data_dir(), 3, 5);
    let few = run(&env, &["segments", "--k", "5"]);
    assert_eq!(few.code, 2, "{}", few.stderr);
    assert_eq!(
        few.error_lines(),
        ["error: 3 customers cannot be split into 5 segments: k-means needs more customers than segments; try a \
          smaller --k"]
    );
    // A range stops where the customers do, and says so.
    let range = ok(&env, &["segments", "--json"]).json();
    assert_eq!(range["chosen_k"], 2);
    assert_eq!(range["notes"][0], "k stops at 2: there are 3 customers");
    let bad = run(&env, &["segments", "--k", "1"]);
    assert_eq!(bad.code, 2);
    assert!(bad.stderr.contains("k must be between 2 and 30"), "{}", bad.stderr);
    let name = run(&env, &["segments", "--save", "bad name"]);
    assert_eq!(name.code, 2);
    assert!(name.stderr.contains("invalid audience name"), "{}", name.stderr);
}

fn names(report: &Value) -> Vec<String> {
    report["segments"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap().to_owned()).collect()
}

/// Issue 23: one constrained call names every segment; the names are checked in Rust, and a reply that fails a
/// check, a provider that fails, no provider and `--no-model` keep the deterministic names, saying why in one line.
#[test]
fn the_model_names_every_segment_in_one_call_and_bad_names_keep_the_deterministic_ones() {
    let env = TestEnv::ingested("segname");
    let args = ["segments", "--k", "3", "--seed", "3", "--json"];
    let with = |extra: &[&'static str]| args.iter().chain(extra).copied().collect::<Vec<&str>>();
    let plain = ok(&env, &with(&["--no-model"])).json();
    assert_eq!(plain["naming"], json!({"from": "deterministic", "reason": "--no-model"}));
    let deterministic = names(&plain);
    let count = deterministic.len();
    let given = &["Denim Regulars", "Sporty Shoppers", "Luxury Loyalists"][..count];

    let llm = FakeLlm::start(vec![Reply::text(&json!({ "names": given }).to_string())]);
    let run = Run::from(env.llm_command(&llm, &with(&["--save", "named"])).output().unwrap());
    assert_eq!(run.code, 0, "{}", run.stderr);
    let named = run.json();
    assert_eq!(names(&named), given);
    assert_eq!(named["naming"]["from"], "model");
    assert!(run.stderr.contains("usage: 1 LLM call"), "{}", run.stderr);
    for (model, rules) in named["segments"].as_array().unwrap().iter().zip(plain["segments"].as_array().unwrap()) {
        assert_eq!((&model["size"], &model["description"]), (&rules["size"], &rules["description"]));
    }
    // One request, under the schema of `SegmentNames` with exactly one name per segment, listing every segment.
    let requests = llm.requests();
    assert_eq!(requests.len(), 1);
    let format = &requests[0]["response_format"];
    assert_eq!(format["type"], "json_schema", "{format}");
    let schema = &format["json_schema"]["schema"]["properties"]["names"];
    assert_eq!((schema["minItems"].as_u64(), schema["maxItems"].as_u64()), (Some(count as u64), Some(count as u64)));
    assert!(requests[0].get("tools").is_none(), "a plain constrained call, no tools");
    let message = content_text(&messages_with_role(&requests[0], "user")[0]);
    for segment in plain["segments"].as_array().unwrap() {
        let line = format!("Segment {}: {} customers", segment["id"], segment["size"]);
        assert!(message.contains(&line), "{line:?} not in {message}");
        assert!(message.contains(segment["description"].as_str().unwrap()), "{message}");
    }
    // The saved segments carry the model's names.
    let shown = ok(&env, &["show", "named-1", "--json"]).json();
    assert!(shown.to_string().contains(given[0]), "{shown}");
    let ledger = std::fs::read_to_string(env.data_dir().join("usage.jsonl")).unwrap();
    assert!(ledger.contains("\"purpose\":\"segment_names\""), "{ledger}");

    // Names that fail a check, a reply that is no JSON and a failed call: the deterministic names, one note why.
    let twins = json!({ "names": vec!["Twins"; count] }).to_string();
    let placeholder = &["Segment 1", "Sporty Shoppers", "Luxury Loyalists"][..count];
    let placeholder = json!({ "names": placeholder }).to_string();
    let cases = [
        (Reply::text(&twins), "two segments are named \"Twins\"".to_owned()),
        (Reply::text(r#"{"names": ["Only One"]}"#), format!("the reply has 1 names for {count} segments")),
        (Reply::text(&placeholder), "\"Segment 1\", is a placeholder".to_owned()),
        (Reply::text("Denim Regulars, Sporty Shoppers"), "the reply is not a list of names".to_owned()),
        (Reply::status(400), "the model call failed".to_owned()),
    ];
    for (reply, reason) in cases {
        let llm = FakeLlm::start(vec![reply]);
        let run = Run::from(env.llm_command(&llm, &args).output().unwrap());
        assert_eq!(run.code, 0, "{reason}: {}", run.stderr);
        assert_eq!(names(&run.json()), deterministic, "{reason}");
        assert_eq!(run.json()["naming"]["from"], "deterministic");
        let notes: Vec<&str> = run.stderr.lines().filter(|l| l.starts_with("note: the segments keep")).collect();
        assert_eq!(notes.len(), 1, "{}", run.stderr);
        assert!(notes[0].contains(&reason), "{reason:?} not in {}", notes[0]);
        assert_eq!(llm.requests().len(), 1, "one call, never a retry");
    }

    // No provider configured (the test environment hides any installed local model): no call, the same names.
    let run = ok(&env, &args);
    assert_eq!(names(&run.json()), deterministic);
    assert!(
        run.stderr.contains("note: the segments keep their deterministic names: no LLM provider"),
        "{}",
        run.stderr
    );
    // --no-model makes no call, even with a provider.
    let llm = FakeLlm::start(Vec::new());
    let run = Run::from(env.llm_command(&llm, &with(&["--no-model"])).output().unwrap());
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(names(&run.json()), deterministic);
    assert!(llm.requests().is_empty() && !run.stderr.contains("note: the segments keep"), "{}", run.stderr);
}
