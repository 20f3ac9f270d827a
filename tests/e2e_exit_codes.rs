//! One table of exit codes for every command (README "Exit codes", `src/exit.rs`), checked command by command:
//! 2 for usage and configuration (clap's errors, a missing or malformed DATABASE_URL or AUDIENCE_SCHEMA), 4 for a
//! database that does not answer, 0 for help.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly; that is its job

mod common;

use common::{Run, TestEnv};

/// Every command that touches the database, with arguments that get it that far.
fn commands(env: &TestEnv) -> Vec<Vec<String>> {
    let sample = env.data_dir().join("sample");
    let customers = sample.join("customers.csv").display().to_string();
    let events = sample.join("events.csv").display().to_string();
    let tool_args = r#"{"sql": "SELECT 1"}"#.to_owned();
    [
        vec!["ingest", "--customers", &customers, "--events", &events],
        vec!["reindex"],
        vec!["ask", "how many customers?"],
        vec!["tool", "sql_analytics", "--args", &tool_args],
        vec!["chat"],
        vec!["demo", "--customers", "20"],
    ]
    .into_iter()
    .map(|args| args.into_iter().map(str::to_owned).collect())
    .collect()
}

/// A setting to break, the exit code and the message it must give, and how to break it.
type Case = (&'static str, i32, &'static str, Box<dyn Fn(&mut std::process::Command)>);

fn run(env: &TestEnv, args: &[String], edit: impl Fn(&mut std::process::Command)) -> Run {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut command = env.command(&args);
    // `ask` and `chat` need a provider before they reach the database; it is never called here.
    command
        .env("AUDIENCE_PROVIDER", "openai-compatible")
        .env("AUDIENCE_BASE_URL", "http://127.0.0.1:9/v1")
        .env("AUDIENCE_API_KEY", "unused")
        .stdin(std::process::Stdio::null());
    edit(&mut command);
    Run::from(command.output().unwrap())
}

/// Regression: a missing or invalid DATABASE_URL or AUDIENCE_SCHEMA exited 4 from ask and tool but 2 from ingest.
#[test]
fn database_settings_fail_the_same_way_in_every_command() {
    let env = TestEnv::empty("exitcodes");
    let generated = Run::from(
        env.command(&["generate", "--customers", "10", "--out", env.data_dir().join("sample").to_str().unwrap()])
            .output()
            .unwrap(),
    );
    assert_eq!(generated.code, 0, "{}", generated.stderr);
    for args in commands(&env) {
        let cases: [Case; 4] = [
            (
                "DATABASE_URL unset",
                2,
                "DATABASE_URL is not set",
                Box::new(|c| {
                    c.env_remove("DATABASE_URL");
                }),
            ),
            (
                "DATABASE_URL malformed",
                2,
                "DATABASE_URL is not a valid PostgreSQL URL",
                Box::new(|c| {
                    c.env("DATABASE_URL", "not a url");
                }),
            ),
            (
                "AUDIENCE_SCHEMA invalid",
                2,
                "AUDIENCE_SCHEMA",
                Box::new(|c| {
                    c.env("AUDIENCE_SCHEMA", "Robert'); DROP");
                }),
            ),
            (
                "database down",
                4,
                "cannot connect to PostgreSQL",
                Box::new(|c| {
                    c.env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/test");
                }),
            ),
        ];
        for (case, code, message, edit) in cases {
            let result = run(&env, &args, edit);
            assert_eq!(result.code, code, "{} with {case}: {}", args.join(" "), result.stderr);
            let errors = result.error_lines();
            assert_eq!(errors.len(), 1, "{} with {case}: one error line: {}", args.join(" "), result.stderr);
            assert!(errors[0].contains(message), "{} with {case}: {}", args.join(" "), result.stderr);
        }
    }
}

/// Regression: clap's argument errors exited 2 while the README documented 1 for bad arguments. Usage errors are
/// 2 everywhere, as configuration errors; help and version succeed.
#[test]
fn usage_errors_are_exit_2_and_help_is_exit_0() {
    let env = TestEnv::empty("usage");
    let code = |args: &[&str]| Run::from(env.command(args).output().unwrap());
    for args in [
        &["--bogus"][..],
        &["ingest"],
        &["ingest", "--events", "e.csv", "--as-of", "yesterday"],
        &["tool"],
        &["tool", "sql_analytics", "--args", "{not json"],
        &["tool", "no_such_tool"],
        &["tool", "semantic_search", "--args", r#"{"intent": 3}"#],
        &["ask", "   "],
        &["bench", "nonsense"],
    ] {
        let result = code(args);
        assert_eq!(result.code, 2, "{args:?}: {}", result.stderr);
        assert!(result.stdout.is_empty(), "{args:?}: errors go to stderr: {}", result.stdout);
    }
    let long = "why ".repeat(2_000);
    let mut command = env.command(&["ask", &long]);
    command.env("AUDIENCE_PROVIDER", "openai-compatible").env("AUDIENCE_BASE_URL", "http://127.0.0.1:9/v1");
    let result = Run::from(command.output().unwrap());
    assert_eq!(result.code, 2, "{}", result.stderr);
    assert!(result.stderr.contains("characters long; ask in at most 4000"), "{}", result.stderr);
    for args in [&["--help"][..], &["--version"], &["ingest", "--help"]] {
        let result = code(args);
        assert_eq!(result.code, 0, "{args:?}: {}", result.stderr);
        assert!(!result.stdout.is_empty());
    }
}
