//! The CI smoke run of `audience bench`: every section once on a tiny dataset, through the built binary, against
//! the real PostgreSQL, embedding model and embedded vector engine. It proves the harness works end to end (the
//! bench itself fails when a full ingest does not embed every profile or a 1% change does not re-embed exactly
//! 1%); its figures are not benchmarks.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly; that is its job

mod common;

use common::{Run, TestEnv};

#[test]
fn bench_smoke_runs_every_section() {
    let env = TestEnv::empty("bench");
    let dir = env.data_dir().join("bench");
    let run = Run::from(env.command(&["bench", "--dir", dir.to_str().unwrap(), "smoke"]).output().unwrap());
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    for heading in [
        "## Ingest: 300 customers",
        "### Loader alone: COPY is",
        "### Full ingest",
        "### Incremental re-ingest after 1% of customers changed",
        "## Hardware floor",
        "## Embedding throughput",
        "### find_audience ranked by an intent, by audience size",
        "### find_audience membership queries",
        "### sql_data_retriever",
        "### metrics: every measure of the catalogue",
        "## Cold start",
    ] {
        assert!(run.stdout.contains(heading), "missing {heading:?} in:\n{}", run.stdout);
    }
    assert!(run.stdout.contains("| profiles re-embedded | 3 of 300 (1%), every run |"), "{}", run.stdout);
    // Every audience size of the sweep, and everyone, ran; every marketer definition ran.
    let ranking =
        run.stdout.split("### find_audience ranked by an intent").nth(1).unwrap().split("###").next().unwrap();
    assert_eq!(
        ranking.lines().filter(|line| line.starts_with("| ") && !line.starts_with("| audience")).count(),
        4,
        "{ranking}"
    );
    assert!(ranking.contains("| everyone (300) |"), "{ranking}");
    let membership =
        run.stdout.split("### find_audience membership queries").nth(1).unwrap().split("###").next().unwrap();
    for definition in ["bought socks in the last 60 days", "churned", "big spenders who stopped buying, not from DE"] {
        assert!(membership.contains(&format!("| {definition} |")), "{definition} in:\n{membership}");
    }
    let metrics = run.stdout.split("### metrics: every measure").nth(1).unwrap().split("###").next().unwrap();
    for call in ["net_revenue", "churn_rate", "repeat_purchase_rate", "buyers, last 30 days vs the 30 before"] {
        assert!(metrics.contains(&format!("| {call} |")), "{call} in:\n{metrics}");
    }
}
