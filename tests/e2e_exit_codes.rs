//! One table of exit codes for every command (README "Exit codes", `src/exit.rs`), checked command by command:
//! 2 for usage and configuration (clap's errors, a missing or malformed DATABASE_URL or AUDIENCE_SCHEMA, arguments
//! and definitions a tool refuses), 1 for a file that cannot be written, 4 for a database that does not answer, 0
//! for help.
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
        vec!["fit"],
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
        &["fit", "--horizon-days", "0"],
        &["fit", "--monthly-discount", "2"],
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

/// Writes a definition file into the test's data directory.
fn definition(env: &TestEnv, name: &str, definition: serde_json::Value) -> String {
    let path = env.data_dir().join(name);
    std::fs::write(&path, definition.to_string()).unwrap();
    path.display().to_string()
}

/// Regression (issue 22, item 13): the same failure exited with different codes in different commands. An export
/// that could not be written exited 4 (the README says 1); invalid `find_audience` values exited 4 through `--args`
/// and 2 through `--from`; a refused `--within` definition exited 2 from `lookalike` and 4 from `export`. One kind,
/// one code, in every command.
#[test]
fn each_failure_has_one_code_in_every_command() {
    let env = TestEnv::ingested("onecode");
    let code = |args: &[&str]| {
        let result = Run::from(env.command(args).output().unwrap());
        assert_eq!(result.error_lines().len(), 1, "{args:?}: one error line: {}", result.stderr);
        assert!(result.stdout.is_empty(), "{args:?}: nothing on stdout: {}", result.stdout);
        result.code
    };
    let everyone = definition(&env, "everyone.json", serde_json::json!({"version": 1, "limit": 10}));

    // An export that cannot be written is an I/O failure (1), whatever the reason.
    let missing_dir = env.data_dir().join("no/such/dir/out.csv");
    let directory = env.data_dir().join("a_directory.csv");
    std::fs::create_dir(&directory).unwrap();
    let fifo = env.data_dir().join("fifo.csv");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let read_only = env.data_dir().join("read_only.csv");
    std::fs::write(&read_only, "keep\n").unwrap();
    std::fs::set_permissions(&read_only, std::os::unix::fs::PermissionsExt::from_mode(0o444)).unwrap();
    for out in [&missing_dir, &directory, &fifo, &read_only] {
        assert_eq!(code(&["export", "--from", &everyone, "--out", out.to_str().unwrap()]), 1, "{}", out.display());
    }
    assert_eq!(std::fs::read_to_string(&read_only).unwrap(), "keep\n");

    // Values find_audience refuses: the same code through --args and through --from.
    let zero_limit = definition(&env, "zero_limit.json", serde_json::json!({"version": 1, "limit": 0}));
    assert_eq!(code(&["tool", "find_audience", "--from", &zero_limit]), 2);
    for args in [r#"{"limit": 0}"#, r#"{"fields": ["no_such_field"]}"#, r#"{"remove": ["c9"]}"#] {
        assert_eq!(code(&["tool", "find_audience", "--args", args]), 2, "{args}");
    }
    assert_eq!(code(&["tool", "find_audience", "--from", &everyone, "--args", r#"{"remove": ["c9"]}"#]), 2);

    // A definition that parses but that the SQL guard refuses, and one that does not parse: lookalike's --within
    // and export's --from refuse both with the same code.
    let refused = definition(
        &env,
        "refused.json",
        serde_json::json!({"version": 1, "limit": 10,
                           "include": [{"type": "sql", "condition": "pg_sleep(1) IS NOT NULL"}]}),
    );
    let malformed = definition(&env, "malformed.json", serde_json::json!({"version": 1, "include": "everyone"}));
    let seed = env.sql_scalar("SELECT string_agg(external_id, ',') FROM (SELECT external_id FROM profiles LIMIT 3) s");
    let out = env.data_dir().join("out.csv").display().to_string();
    for file in [&refused, &malformed] {
        assert_eq!(code(&["lookalike", "--ids", &seed, "--within", file]), 2, "{file}");
        assert_eq!(code(&["export", "--from", file, "--out", &out]), 2, "{file}");
    }
}

/// Regression (hardening item 7): a 5,000-character audience name was echoed whole in the error, burying the reason,
/// and typed clause values had no length cap. The error quotes a name's first 40 characters, on one line, and says
/// what a name may be; a clause value over 200 characters is refused the same way.
#[test]
fn a_long_saved_audience_name_is_echoed_shortened() {
    let env = TestEnv::ingested("longname");
    let name = "x".repeat(5_000);
    let from = definition(&env, "everyone.json", serde_json::json!({"version": 1, "limit": 10}));
    for args in [&["show", name.as_str()][..], &["rm", &name], &["save", &name, "--from", &from]] {
        let result = Run::from(env.command(args).output().unwrap());
        assert_eq!(result.code, 2, "{:?}: {}", args[0], result.stderr);
        let lines = result.error_lines();
        assert_eq!(lines.len(), 1, "{:?}: {}", args[0], result.stderr);
        assert!(lines[0].len() < 300, "{:?}: {}", args[0], lines[0]);
        assert!(lines[0].contains(&format!("\"{}\"…", "x".repeat(40))), "{:?}: {}", args[0], lines[0]);
        assert!(lines[0].contains("letters, digits"), "{:?}: {}", args[0], lines[0]);
    }
    // Typed clause values are capped like conditions and intents, and a refused one is echoed shortened too.
    let long = "y".repeat(5_000);
    for clause in [
        serde_json::json!({"type": "event", "event_type": "purchase", "products": [long]}),
        serde_json::json!({"type": "profile", "field": "country", "op": "=", "value": long}),
    ] {
        let args = serde_json::json!({"include": [clause]}).to_string();
        let result = Run::from(env.command(&["tool", "find_audience", "--args", &args]).output().unwrap());
        assert_eq!(result.code, 2, "{clause}: {}", result.stderr);
        let lines = result.error_lines();
        assert_eq!(lines.len(), 1, "{}", result.stderr);
        assert!(lines[0].len() < 300 && lines[0].contains("200"), "{}", lines[0]);
    }
}

/// Regression (hardening item 18): with the vector server unreachable, `ingest` and `reindex` exited 1 (input) while
/// `tool` and `lookalike` exited 4; and a `QDRANT_URL` naming the REST port said only "h2 protocol error". A store
/// that does not answer is exit 4 in every command, and an HTTP/1 port is named as the wrong port.
#[test]
fn an_unreachable_vector_server_is_a_store_error_in_every_command() {
    let env = TestEnv::ingested("qdrantdown");
    let (customers, events) = env.sample_files();
    let (customers, events) = (customers.display().to_string(), events.display().to_string());
    let seed = env.sql_scalar("SELECT external_id FROM profiles ORDER BY external_id LIMIT 1");
    let find = r#"{"intent": "luxury watches"}"#;
    let commands: [&[&str]; 4] = [
        &["ingest", "--customers", &customers, "--events", &events],
        &["reindex"],
        &["tool", "find_audience", "--args", find],
        &["lookalike", "--ids", &seed],
    ];
    // Nobody listens on the first; the second answers every request as HTTP/1.1, as Qdrant's REST port does.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let http1 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let rest = http1.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in http1.incoming() {
            let Ok(mut stream) = stream else { continue };
            // Reads what the client sends first (the HTTP/2 preface and settings), answers, and lets the client close.
            let _ = stream.set_read_timeout(Some(std::time::Duration::from_millis(200)));
            let mut buffer = [0u8; 4096];
            while matches!(std::io::Read::read(&mut stream, &mut buffer), Ok(n) if n > 0) {}
            let _ = std::io::Write::write_all(
                &mut stream,
                b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
            let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(5)));
            while matches!(std::io::Read::read(&mut stream, &mut buffer), Ok(n) if n > 0) {}
        }
    });
    for (port, says) in [(closed, "Qdrant"), (rest, "gRPC port, 6334 by default")] {
        for args in commands {
            let mut command = env.command(args);
            command.env("QDRANT_URL", format!("http://127.0.0.1:{port}"));
            let result = Run::from(command.output().unwrap());
            assert_eq!(result.code, 4, "{args:?} on port {port}: {}", result.stderr);
            let lines = result.error_lines();
            assert_eq!(lines.len(), 1, "{args:?}: {}", result.stderr);
            assert!(lines[0].contains(says), "{args:?} on port {port}: {}", lines[0]);
        }
    }
}
