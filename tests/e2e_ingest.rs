//! End-to-end tests of `audience ingest` failing on its rejects: the built binary against the real PostgreSQL
//! (a schema per test), embedding model and embedded vector index (a data directory per test).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly; that is its job

mod common;

use std::path::{Path, PathBuf};

use common::{Run, TestEnv};

/// The generated sample's customers file (written by [`TestEnv::ingested`]) with `edit` applied to each data row.
fn edited_customers(env: &TestEnv, name: &str, edit: impl Fn(usize, &str) -> String) -> PathBuf {
    let original = std::fs::read_to_string(env.sample_files().0).unwrap();
    let mut lines = original.lines();
    let mut text = format!("{}\n", lines.next().unwrap());
    for (row, line) in lines.enumerate() {
        text.push_str(&edit(row, line));
        text.push('\n');
    }
    let path = env.data_dir().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn sample_events(env: &TestEnv) -> PathBuf {
    env.sample_files().1
}

fn ingest(env: &TestEnv, customers: &Path, extra: &[&str]) -> Run {
    ingest_with_events(env, customers, &sample_events(env), extra)
}

fn ingest_with_events(env: &TestEnv, customers: &Path, events: &Path, extra: &[&str]) -> Run {
    let mut args = vec!["ingest", "--customers", customers.to_str().unwrap(), "--events", events.to_str().unwrap()];
    args.extend_from_slice(extra);
    Run::from(env.command(&args).output().unwrap())
}

/// The reported bug: every customer row was rejected (ids in another format, `user_0001`), the ingest exited 0 and
/// the live tables became empty. String ids load now, so every row is made bad another way: a country that is
/// not a code.
#[test]
fn an_ingest_that_rejects_every_row_fails_with_exit_1_and_keeps_the_live_data() {
    let env = TestEnv::ingested("allbad");
    let before = env.checksum();
    let bad_countries = edited_customers(&env, "bad_countries.csv", |_, line| {
        let mut fields: Vec<&str> = line.split(',').collect();
        fields[4] = "Atlantis";
        fields.join(",")
    });

    for extra in [&[][..], &["--max-rejects", "100%"][..]] {
        let run = ingest(&env, &bad_countries, extra);
        assert_eq!(run.code, 1, "{extra:?}: stdout {}\nstderr {}", run.stdout, run.stderr);
        let rejects = env.data_dir().join("rejects.csv");
        let expected = format!(
            "error: no valid customers in {}: 60 rows rejected, e.g. line 2: country \"Atlantis\" is not an ISO \
             3166-1 alpha-2 code; nothing was changed; all rejects are in {}",
            bad_countries.display(),
            rejects.display()
        );
        assert_eq!(run.error_lines(), [expected.as_str()], "{extra:?}: {}", run.stderr);
        assert_eq!(env.checksum(), before, "{extra:?}: the live data changed");
        assert_eq!(std::fs::read_to_string(&rejects).unwrap().lines().count(), 61, "a header and 60 rejects");
    }

    // The original file: its `user_0001` ids are customers now, but no event names them, so the events file is
    // rejected whole and nothing changes.
    let string_ids = edited_customers(&env, "string_ids.csv", |_, line| {
        let (id, rest) = line.split_once(',').unwrap();
        format!("user_{:04},{rest}", id.parse::<u32>().unwrap())
    });
    let run = ingest(&env, &string_ids, &[]);
    assert_eq!(run.code, 1, "stdout {}\nstderr {}", run.stdout, run.stderr);
    // Every event is rejected: the load would leave no events where there are some, which is refused first.
    assert!(run.stderr.contains("no valid events in "), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("unknown customer_id 1, and loading it would remove every current event; nothing was changed"),
        "{}",
        run.stderr
    );
    assert_eq!(env.checksum(), before, "the live data changed");
}

#[test]
fn max_rejects_sets_the_limit_and_the_summary_counts_rows_in_the_singular_and_plural() {
    let env = TestEnv::ingested("limit");
    let before = env.checksum();
    let bad_emails = |count: usize| {
        move |row: usize, line: &str| {
            let mut fields: Vec<&str> = line.split(',').collect();
            if row < count {
                fields[3] = "not-an-email";
            }
            fields.join(",")
        }
    };
    let three_bad = edited_customers(&env, "three_bad.csv", bad_emails(3));

    // 3 of 60 rows is 5%: within the default 10%, over a limit of 2 rows or of 4%.
    for limit in ["2", "4%"] {
        let run = ingest(&env, &three_bad, &["--max-rejects", limit]);
        assert_eq!(run.code, 1, "{limit}: {}", run.stderr);
        let expected = format!(
            "error: {}: 3 of 60 rows rejected, more than --max-rejects {limit} allows; most common reason (3 rows), \
             e.g. line 2: email \"not-an-email\" is not an e-mail address; nothing was changed; all rejects are in {}",
            three_bad.display(),
            env.data_dir().join("rejects.csv").display()
        );
        assert_eq!(run.error_lines(), [expected.as_str()], "{limit}");
        assert_eq!(env.checksum(), before, "{limit}: the live data changed");
    }

    let run = ingest(&env, &three_bad, &["--max-rejects", "ten"]);
    assert_eq!(run.code, 2, "a malformed limit is a usage error: {}", run.stderr);
    assert!(run.stderr.contains("\"ten\" is not a row count (100) or a percentage"), "{}", run.stderr);

    // The default loads them; the events of the 3 customers are rejected too, as of unknown customers.
    let run = ingest(&env, &three_bad, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.starts_with("loaded 57 customers and "), "{}", run.stdout);
    assert!(run.stdout.contains(" rows rejected, see "), "{}", run.stdout);

    // One bad event and nothing else: "1 row", not "1 rows".
    let customers = env.sample_files().0;
    let mut events_text = std::fs::read_to_string(sample_events(&env)).unwrap();
    events_text.push_str("999999,1,click,socks,red,1.00,1,2025-06-01T00:00:00Z\n");
    let one_bad_event = env.data_dir().join("one_bad_event.csv");
    std::fs::write(&one_bad_event, events_text).unwrap();
    let run = ingest_with_events(&env, &customers, &one_bad_event, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.starts_with("loaded 60 customers and "), "{}", run.stdout);
    assert!(run.stdout.contains("; 1 row rejected, see "), "{}", run.stdout);
}

/// Every file under `dir` with its size: the vector index's footprint, to prove a dry run wrote nothing there.
fn files_under(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push((path.clone(), entry.metadata().map(|m| m.len()).unwrap_or(0)));
            }
        }
    }
    files.sort();
    files
}

/// `ingest --check` validates and reports (counts, rejects by reason, rendered profiles) and changes nothing: no
/// table, no customer key, no vector index file, no rejects file.
#[test]
fn check_reports_what_would_load_and_changes_nothing() {
    let env = TestEnv::ingested("check");
    let before = (env.checksum(), files_under(env.data_dir()));
    let two_bad = edited_customers(&env, "two_bad.csv", |row, line| {
        let mut fields: Vec<&str> = line.split(',').collect();
        if row < 2 {
            fields[3] = "not-an-email";
        }
        fields.join(",")
    });
    let run = ingest(&env, &two_bad, &["--check"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    // The two customers' events are rejected with them.
    let their_events = env.sql_scalar("SELECT count(*)::text FROM events WHERE customer_id IN (1, 2)");
    let kept_events = env.sql_scalar("SELECT count(*)::text FROM events WHERE customer_id NOT IN (1, 2)");
    let rejected = 2 + their_events.parse::<u64>().unwrap();
    assert!(
        run.stdout.starts_with(&format!(
            "check: would load 58 customers and {kept_events} events; {rejected} rows rejected (nothing was changed)"
        )),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains(&format!("  {their_events} rows of ")), "{}", run.stdout);
    assert!(
        run.stdout.contains("  2 rows of ")
            && run.stdout.contains(": email \"…\" is not an e-mail address (first at line 2: email \"not-an-email\""),
        "{}",
        run.stdout
    );
    assert_eq!(run.stdout.matches("\ncustomer ").count(), 3, "three rendered profiles: {}", run.stdout);
    let mut expected_files = before.1.clone();
    expected_files.push((two_bad.clone(), std::fs::metadata(&two_bad).unwrap().len()));
    expected_files.sort();
    assert_eq!(env.checksum(), before.0, "the data changed");
    assert_eq!(files_under(env.data_dir()), expected_files, "only the test's own input file is new");

    // --json: the same report for scripts.
    let run = ingest(&env, &two_bad, &["--check", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.json();
    assert_eq!(report["load"]["customers"], 58);
    assert_eq!(report["load"]["rejected"], rejected);
    assert_eq!(report["load"]["rejects_by_reason"][0]["rows"], 2);
    assert_eq!(report["samples"].as_array().map(Vec::len), Some(3));
    assert_eq!(env.checksum(), before.0);

    // On a database that has never been ingested, a check does not even create the schema.
    let fresh = TestEnv::empty("checkfresh");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let log = root.join("ingest/tests/fixtures/purchase_log.txt");
    let mapping = root.join("examples/mappings/purchase_log.toml");
    let run = Run::from(
        fresh
            .command(&["ingest", "--check", "--events", log.to_str().unwrap(), "--mapping", mapping.to_str().unwrap()])
            .output()
            .unwrap(),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.starts_with("check: would load 12 customers and 41 events; 0 rows rejected"), "{}", run.stdout);
    assert!(run.stdout.contains("\ncustomer 00007:\n"), "the biggest spender, under the file's id: {}", run.stdout);
    let schemas =
        fresh.sql_scalar(&format!("SELECT count(*)::text FROM pg_namespace WHERE nspname = '{}'", fresh.schema));
    assert_eq!(schemas, "0");
    assert!(files_under(fresh.data_dir()).is_empty(), "{:?}", files_under(fresh.data_dir()));
}

/// The median as PostgreSQL's `percentile_cont(0.5)` defines it: the middle value, or the mean of the two middle ones.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 { values[middle] } else { (values[middle - 1] + values[middle]) / 2.0 }
}

fn assert_spread(spread: &serde_json::Value, values: Vec<f64>, what: &str) {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let median = median(values);
    for (key, want) in [("min", min), ("median", median), ("max", max)] {
        let got = spread[key].as_f64().unwrap();
        assert!((got - want).abs() < 0.005, "{what} {key}: {got} != {want}: {spread}");
    }
}

/// Regression (issue 22, item 9): `--check` showed no spend or order figures, so a line total mapped to `price`
/// (spend multiplied by the quantity) went unnoticed, and a file without products loaded profiles that an intent
/// cannot rank. The check now shows spend and purchases per customer (min, median, max), the share of customers who
/// bought something, and a note when no event names a product.
#[test]
fn check_shows_spend_and_purchases_and_notes_a_file_without_products() {
    let env = TestEnv::empty("checkspread");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let log = root.join("ingest/tests/fixtures/purchase_log.txt");
    let mapping = root.join("examples/mappings/purchase_log.toml");
    let check = |extra: &[&str]| {
        let mut args =
            vec!["ingest", "--check", "--events", log.to_str().unwrap(), "--mapping", mapping.to_str().unwrap()];
        args.extend_from_slice(extra);
        let run = Run::from(env.command(&args).output().unwrap());
        assert_eq!(run.code, 0, "{}", run.stderr);
        run
    };
    // Independently from the file: every line is one purchase, its dollar value the line total.
    let mut spend: std::collections::BTreeMap<String, (f64, f64)> = std::collections::BTreeMap::new();
    for line in std::fs::read_to_string(&log).unwrap().lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let entry = spend.entry(fields[0].to_owned()).or_default();
        entry.0 += fields[3].parse::<f64>().unwrap();
        entry.1 += 1.0;
    }
    let report = check(&["--json"]).json();
    let distribution = &report["distribution"];
    assert_spread(&distribution["spend"], spend.values().map(|(spent, _)| *spent).collect(), "spend");
    assert_spread(&distribution["orders"], spend.values().map(|(_, orders)| *orders).collect(), "purchases");
    assert_eq!(distribution["buyers_share"].as_f64(), Some(1.0));
    let notes: Vec<&str> =
        report["profiles"]["notes"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
    assert!(notes.iter().any(|note| note.starts_with("no event names a product")), "{notes:?}");
    let text = check(&[]).stdout;
    assert!(text.contains("note: no event names a product (is a product column mapped?)"), "{text}");
    assert!(text.contains("% of customers bought something"), "{text}");

    // A sample with products and customers who never bought: the share and the spread match the ingested data.
    let sample = TestEnv::ingested("checkspread2");
    let (customers, events) = sample.sample_files();
    let run = Run::from(
        sample
            .command(&[
                "ingest",
                "--check",
                "--json",
                "--customers",
                customers.to_str().unwrap(),
                "--events",
                events.to_str().unwrap(),
            ])
            .output()
            .unwrap(),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.json();
    let live = |sql: &str| -> Vec<f64> {
        sample
            .sql_scalar(&format!("SELECT string_agg(v::text, ',') FROM ({sql}) s(v)"))
            .split(',')
            .map(|v| v.parse().unwrap())
            .collect()
    };
    assert_spread(&report["distribution"]["spend"], live("SELECT total_spent FROM profiles"), "spend");
    assert_spread(&report["distribution"]["orders"], live("SELECT order_count FROM profiles"), "purchases");
    let buyers = live("SELECT (order_count > 0)::int FROM profiles");
    let share = buyers.iter().sum::<f64>() / buyers.len() as f64;
    assert!((report["distribution"]["buyers_share"].as_f64().unwrap() - share).abs() < 1e-9, "{report}");
    let notes = report["profiles"]["notes"].to_string();
    assert!(!notes.contains("no event names a product"), "{notes}");
}
