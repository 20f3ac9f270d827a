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

/// The reported bug: every customer id in another format (`user_0001`) was rejected, the ingest exited 0 and the
/// live tables became empty.
#[test]
fn an_ingest_that_rejects_every_row_fails_with_exit_1_and_keeps_the_live_data() {
    let env = TestEnv::ingested("allbad");
    let before = env.checksum();
    let bad_ids = edited_customers(&env, "bad_ids.csv", |_, line| {
        let (id, rest) = line.split_once(',').unwrap();
        format!("user_{:04},{rest}", id.parse::<u32>().unwrap())
    });

    for extra in [&[][..], &["--max-rejects", "100%"][..]] {
        let run = ingest(&env, &bad_ids, extra);
        assert_eq!(run.code, 1, "{extra:?}: stdout {}\nstderr {}", run.stdout, run.stderr);
        let rejects = env.data_dir().join("rejects.csv");
        let expected = format!(
            "error: no valid customers in {}: 60 rows rejected, e.g. line 2: customer_id \"user_0001\" is not an \
             integer; nothing was changed; all rejects are in {}",
            bad_ids.display(),
            rejects.display()
        );
        assert_eq!(run.error_lines(), [expected.as_str()], "{extra:?}: {}", run.stderr);
        assert_eq!(env.checksum(), before, "{extra:?}: the live data changed");
        assert_eq!(std::fs::read_to_string(&rejects).unwrap().lines().count(), 61, "a header and 60 rejects");
    }
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
