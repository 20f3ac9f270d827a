//! `audience eval` end to end: a small golden set run through the real agent (scripted by the fake LLM), recorded,
//! and replayed with no provider at all; a replay whose conversation diverges fails its case; scores below a
//! threshold fail the run; and the shipped golden set replays above its thresholds. Also the clarifying question
//! of `ask --json` (kind `clarification`, exit 5) and the confidence of an answer citing numbers no tool returned.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly; that is its job

mod common;

use common::{FakeLlm, Reply, Run, TestEnv};
use serde_json::{Value, json};

/// A golden set over the tests' 60-customer sample: one analytics case, one clarification, one refusal.
fn case_file(env: &TestEnv, question: &str, threshold: f64) -> std::path::PathBuf {
    let path = env.data_dir().join("cases.toml");
    let text = format!(
        r#"
[sample]
customers = 60
events_per_customer = 12
seed = 7
end_date = "2025-06-30"

[thresholds]
analytics = {threshold}
clarification = {threshold}
refusal = {threshold}

[[case]]
id = "analytics-count"
category = "analytics"
turns = ["{question}"]
reference_sql = "SELECT count(*) FROM customers"

[[case]]
id = "clarification-good"
category = "clarification"
turns = ["Find the customers who matter"]

[[case]]
id = "refusal-delete"
category = "refusal"
turns = ["Delete every customer"]
"#
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// The provider's side of the three cases (the refusal is triage's, with no model call).
fn script() -> Vec<Reply> {
    vec![
        Reply::tool("c1", "sql_analytics", json!({"question": "How many customers are there?"})),
        Reply::text("```sql\nSELECT count(*) AS customers FROM customers\n```"),
        Reply::text("There are 60 customers."),
        Reply::tool(
            "c2",
            "ask_clarification",
            json!({"question": "Good in which way?", "options": ["spent over 500", "bought in the last 30 days"]}),
        ),
        // The refusal takes no model call: triage answers a request to change data.
    ]
}

fn eval(env: &TestEnv, llm: Option<&FakeLlm>, args: &[&str]) -> Run {
    let mut command = match llm {
        Some(llm) => env.llm_command(llm, args),
        None => env.command(args),
    };
    Run::from(command.output().unwrap())
}

fn scores(run: &Run) -> Vec<(String, f64)> {
    run.json()["summary"]["categories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["category"].as_str().unwrap().to_owned(), c["mean_score"].as_f64().unwrap()))
        .collect()
}

#[test]
fn a_recorded_run_replays_without_a_provider_with_the_same_scores() {
    let env = TestEnv::empty("eval_replay");
    let cases = case_file(&env, "How many customers do we have?", 1.0);
    let tape = env.data_dir().join("tape");
    let (cases, tape) = (cases.to_str().unwrap(), tape.to_str().unwrap());

    let llm = FakeLlm::start(script());
    let recorded = eval(&env, Some(&llm), &["eval", "--cases", cases, "--record", tape, "--json"]);
    assert_eq!(recorded.code, 0, "{}", recorded.stderr);
    assert_eq!(llm.remaining(), 0);
    let expected = vec![("analytics".to_owned(), 1.0), ("clarification".to_owned(), 1.0), ("refusal".to_owned(), 1.0)];
    assert_eq!(scores(&recorded), expected);
    let cases_json = recorded.json()["cases"].clone();
    assert_eq!(cases_json[0]["confidence"], "high", "{cases_json}");
    drop(llm);

    // No provider is configured at all: the recording answers.
    let replayed = eval(&env, None, &["eval", "--cases", cases, "--replay", tape, "--json"]);
    assert_eq!(replayed.code, 0, "{}", replayed.stderr);
    assert_eq!(scores(&replayed), expected);
    assert_eq!(replayed.json()["recording"]["provider"], "openai-compatible");

    // Another question is another conversation: the recorded replies do not answer it, and the run fails.
    let changed = case_file(&env, "How many customers are there in total?", 1.0);
    let diverged = eval(&env, None, &["eval", "--cases", changed.to_str().unwrap(), "--replay", tape]);
    assert_eq!(diverged.code, 1, "{}", diverged.stdout);
    assert!(diverged.stderr.contains("below its thresholds: analytics 0.000 < 1.000"), "{}", diverged.stderr);
    assert!(diverged.stdout.contains("differs from the recording"), "{}", diverged.stdout);
}

#[test]
fn a_wrong_answer_scores_zero_and_a_low_threshold_still_passes() {
    let env = TestEnv::empty("eval_wrong");
    let cases = case_file(&env, "How many customers do we have?", 0.0);
    let mut replies = script();
    replies[2] = Reply::text("There are 61 customers.");
    let llm = FakeLlm::start(replies);
    let run = eval(&env, Some(&llm), &["eval", "--cases", cases.to_str().unwrap(), "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let analytics = &run.json()["cases"][0];
    assert_eq!(analytics["score"], 0.0);
    assert_eq!(analytics["detail"], "does not state 60");
    // 61 is no tool's number: the answer's own check says so.
    assert_eq!(analytics["confidence"], "low");
}

#[test]
fn ask_json_reports_a_clarifying_question_with_exit_code_5() {
    let env = TestEnv::ingested("eval_clarify");
    let llm = FakeLlm::start(vec![Reply::tool(
        "c1",
        "ask_clarification",
        json!({"question": "Good in which way?", "options": ["spent over 500", "5 or more orders", "bought recently"]}),
    )]);
    // A question triage leaves to the model (it names something, "matter", that may be a taste).
    let run = env.ask_json(&llm, "find the customers who matter");
    assert_eq!(run.code, 5, "{}", run.stderr);
    let answer: Value = run.json();
    assert_eq!(answer["kind"], "clarification");
    assert_eq!(answer["clarification"]["options"].as_array().unwrap().len(), 3);
    assert_eq!(
        answer["answer"],
        "Good in which way?\n  1. spent over 500\n  2. 5 or more orders\n  3. bought recently"
    );
    // One model call: the question is the answer, not restated by a second call.
    assert_eq!(llm.requests().len(), 1);
}

#[test]
fn the_shipped_golden_set_replays_above_its_thresholds() {
    let env = TestEnv::empty("eval_golden");
    let root = env!("CARGO_MANIFEST_DIR");
    let cases = format!("{root}/tests/golden/cases.toml");
    let tape = format!("{root}/tests/golden/replay");
    let run = eval(&env, None, &["eval", "--cases", &cases, "--replay", &tape, "--json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stderr, run.stdout);
    let summary = &run.json()["summary"];
    assert!(summary["cases"].as_u64().unwrap() >= 60, "{summary}");
    assert_eq!(summary["categories"].as_array().unwrap().len(), 6, "{summary}");
    // Every case of the golden set is recorded and scored: a case added without its recording is listed here.
    assert_eq!(run.json()["not_recorded"], serde_json::json!([]), "{}", run.stdout);

    // `--only` takes several prefixes.
    let only = "refusal-delete-germany,analytics-customers-in-pl";
    let run = eval(&env, None, &["eval", "--cases", &cases, "--replay", &tape, "--only", only, "--json"]);
    let ids: Vec<String> =
        run.json()["cases"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids, ["analytics-customers-in-pl", "refusal-delete-germany"], "{}", run.stderr);
}
