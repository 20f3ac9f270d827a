//! stdout and stderr as scripts and terminals see them, with the real binary: every command's `--json` is JSON, a
//! reader that closes stdout early (`audience … | head -1`) ends the command quietly, and log lines carry no colour
//! codes off a terminal.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly; that is its job

mod common;

use common::{Run, TestEnv};
use serde_json::json;

/// Runs the binary with a stdout whose reader is already gone, so its first write fails with a broken pipe.
fn with_stdout_closed(env: &TestEnv, args: &[&str]) -> Run {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let output = env.command(args).stdout(writer).stderr(std::process::Stdio::piped()).output().unwrap();
    Run::from(output)
}

/// Regression (issue 22, item 12): `audience tool find_audience --args '{"limit":3}' | head -5` panicked with
/// "failed printing to stdout: Broken pipe" and a stack trace. A closed stdout now ends every command with exit 0
/// and nothing on stderr, as ripgrep does.
#[test]
fn a_closed_stdout_ends_every_command_quietly() {
    let env = TestEnv::ingested("pipe");
    let everyone = env.data_dir().join("everyone.json");
    std::fs::write(&everyone, json!({"version": 1, "limit": 10}).to_string()).unwrap();
    let saved = Run::from(env.command(&["save", "everyone", "--from", everyone.to_str().unwrap()]).output().unwrap());
    assert_eq!(saved.code, 0, "{}", saved.stderr);
    let export = env.data_dir().join("everyone.csv");
    let sample = env.data_dir().join("generated");
    let commands: [&[&str]; 9] = [
        &["tool", "--list"],
        &["generate", "--customers", "5", "--out", sample.to_str().unwrap()],
        &["tool", "find_audience", "--args", r#"{"limit": 3}"#],
        &["tool", "sql_analytics", "--args", r#"{"sql": "SELECT customer_id FROM customers"}"#],
        &["list"],
        &["show", "everyone", "--json"],
        &["export", "everyone", "--out", export.to_str().unwrap()],
        &["overlap", "everyone", "everyone"],
        &["rm", "everyone", "--json"],
    ];
    for args in commands {
        let run = with_stdout_closed(&env, args);
        assert_eq!(run.code, 0, "{args:?}: {}", run.stderr);
        assert!(run.stderr.is_empty(), "{args:?} wrote to stderr: {}", run.stderr);
    }
    assert_eq!(env.sql_scalar(&format!("SELECT count(*)::text FROM {}_app.saved_audiences", env.schema)), "0");
}

/// Regression (issue 22, item 12): `rm NAME --json` printed plain text.
#[test]
fn rm_with_json_prints_json() {
    let env = TestEnv::ingested("rmjson");
    let everyone = env.data_dir().join("everyone.json");
    std::fs::write(&everyone, json!({"version": 1, "limit": 10}).to_string()).unwrap();
    let saved = Run::from(env.command(&["save", "everyone", "--from", everyone.to_str().unwrap()]).output().unwrap());
    assert_eq!(saved.code, 0, "{}", saved.stderr);
    let removed = Run::from(env.command(&["rm", "everyone", "--json"]).output().unwrap());
    assert_eq!(removed.code, 0, "{}", removed.stderr);
    assert_eq!(removed.json(), json!({"removed": "everyone"}));
    let plain = Run::from(env.command(&["rm", "everyone"]).output().unwrap());
    assert_eq!(plain.code, 2, "{}", plain.stderr);
}

/// Regression (issue 22, item 11): log lines carried ANSI colours when stderr was a file or a pipe. Here stderr is
/// a pipe and `NO_COLOR` is unset: the debug lines come, plain.
#[test]
fn log_lines_off_a_terminal_carry_no_colour() {
    let env = TestEnv::empty("colour");
    let mut command = env.command(&["tool", "sql_analytics", "--args", r#"{"sql": "SELECT 1"}"#]);
    command.env("AUDIENCE_LOG", "debug").env_remove("NO_COLOR");
    let run = Run::from(command.output().unwrap());
    assert_eq!(run.code, 4, "nothing is ingested in this schema: {}", run.stderr);
    assert!(run.stderr.contains("DEBUG"), "debug lines are logged: {}", run.stderr);
    assert!(!run.stderr.contains('\u{1b}'), "colour codes on stderr: {:?}", run.stderr);
}
