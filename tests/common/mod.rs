//! Shared end-to-end test helpers: a fake OpenAI chat-completions server with scripted replies, a per-test
//! PostgreSQL schema and data directory filled by the real `audience generate` + `audience ingest`, and a
//! runner for the built binary with an isolated environment.
#![allow(dead_code)] // Each test binary uses a different subset of these helpers.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

pub const DATABASE_URL_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/test";

pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DATABASE_URL_DEFAULT.to_owned())
}

/// One scripted reply of the fake LLM.
#[derive(Clone, Debug)]
pub enum Reply {
    /// A chat completion: optional text, tool calls, and usage (None = the provider reports no usage).
    Chat { content: Option<String>, tool_calls: Vec<(String, String, Value)>, usage: Option<(u64, u64)> },
    /// An HTTP error.
    Status { code: u16, retry_after: Option<u64>, body: String },
    /// A 200 reply with this JSON body, whatever it is.
    Body(Value),
    /// No reply for this long, then a plain answer (a provider slower than the client's timeout).
    Stall(std::time::Duration),
}

impl Reply {
    /// A final text answer with usage 100 prompt / 10 completion tokens.
    pub fn text(text: &str) -> Self {
        Reply::Chat { content: Some(text.to_owned()), tool_calls: Vec::new(), usage: Some((100, 10)) }
    }

    /// One tool call with usage 100 / 10.
    pub fn tool(id: &str, name: &str, args: Value) -> Self {
        Reply::Chat { content: None, tool_calls: vec![(id.to_owned(), name.to_owned(), args)], usage: Some((100, 10)) }
    }

    /// Sets the reported usage; `None` makes the fake omit the `usage` field.
    pub fn usage(self, usage: Option<(u64, u64)>) -> Self {
        match self {
            Reply::Chat { content, tool_calls, .. } => Reply::Chat { content, tool_calls, usage },
            other => other,
        }
    }

    /// Adds assistant text (a "thought") to a tool-call reply.
    pub fn thought(self, text: &str) -> Self {
        match self {
            Reply::Chat { tool_calls, usage, .. } => Reply::Chat { content: Some(text.to_owned()), tool_calls, usage },
            other => other,
        }
    }

    pub fn status(code: u16) -> Self {
        Reply::Status { code, retry_after: None, body: json!({"error": {"message": "scripted failure"}}).to_string() }
    }

    pub fn retry_after(self, seconds: u64) -> Self {
        match self {
            Reply::Status { code, body, .. } => Reply::Status { code, retry_after: Some(seconds), body },
            other => other,
        }
    }

    fn into_response(self, model: &str, index: usize) -> Response {
        match self {
            Reply::Status { code, retry_after, body } => {
                let mut headers = HeaderMap::new();
                headers.insert("content-type", HeaderValue::from_static("application/json"));
                if let Some(seconds) = retry_after {
                    headers.insert("retry-after", HeaderValue::from(seconds));
                }
                let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                (status, headers, body).into_response()
            }
            Reply::Body(body) => axum::Json(body).into_response(),
            Reply::Stall(_) => Reply::text("too late").into_response(model, index),
            Reply::Chat { content, tool_calls, usage } => {
                let calls: Vec<Value> = tool_calls
                    .iter()
                    .map(|(id, name, args)| {
                        json!({"id": id, "type": "function", "function": {"name": name, "arguments": args.to_string()}})
                    })
                    .collect();
                let mut message = json!({"role": "assistant", "content": content});
                if !calls.is_empty() {
                    message["tool_calls"] = Value::Array(calls);
                }
                let finish = if tool_calls.is_empty() { "stop" } else { "tool_calls" };
                let mut body = json!({
                    "id": format!("chatcmpl-{index}"),
                    "object": "chat.completion",
                    "created": 1_700_000_000,
                    "model": model,
                    "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                });
                if let Some((prompt, completion)) = usage {
                    body["usage"] = json!({
                        "prompt_tokens": prompt,
                        "completion_tokens": completion,
                        "total_tokens": prompt + completion
                    });
                }
                axum::Json(body).into_response()
            }
        }
    }
}

struct FakeState {
    script: Mutex<VecDeque<Reply>>,
    requests: Mutex<Vec<Value>>,
}

/// A fake OpenAI-compatible server on 127.0.0.1, answering `POST /v1/chat/completions` from a script.
/// It runs on its own thread and runtime so tests can run the binary synchronously.
pub struct FakeLlm {
    pub base_url: String,
    state: Arc<FakeState>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

async fn chat_completions(State(state): State<Arc<FakeState>>, body: String) -> Response {
    let request: Value = serde_json::from_str(&body).unwrap_or(Value::String(body));
    let model = request.get("model").and_then(Value::as_str).unwrap_or("unknown").to_owned();
    let index = {
        let mut requests = state.requests.lock().unwrap();
        requests.push(request);
        requests.len()
    };
    let next = state.script.lock().unwrap().pop_front();
    if let Some(Reply::Stall(wait)) = &next {
        tokio::time::sleep(*wait).await;
    }
    match next {
        Some(reply) => reply.into_response(&model, index),
        // A test that sends more requests than it scripted fails on this body, not on a hang.
        None => (StatusCode::IM_A_TEAPOT, "fake LLM script exhausted").into_response(),
    }
}

impl FakeLlm {
    pub fn start(script: Vec<Reply>) -> Self {
        let state = Arc::new(FakeState { script: Mutex::new(script.into()), requests: Mutex::new(Vec::new()) });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (shutdown, on_shutdown) = tokio::sync::oneshot::channel::<()>();
        let app_state = state.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let app = Router::new().route("/v1/chat/completions", post(chat_completions)).with_state(app_state);
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = on_shutdown.await;
                    })
                    .await
                    .unwrap();
            });
        });
        Self { base_url: format!("http://127.0.0.1:{port}/v1"), state, shutdown: Some(shutdown), thread: Some(thread) }
    }

    /// The JSON bodies received, in order.
    pub fn requests(&self) -> Vec<Value> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Scripted replies not yet consumed.
    pub fn remaining(&self) -> usize {
        self.state.script.lock().unwrap().len()
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The text of a message's `content`, which may be a string or a list of `{"type":"text","text":..}` parts
/// (rig sends the system message as parts).
pub fn content_text(message: &Value) -> String {
    match message.get("content") {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => {
            parts.iter().filter_map(|part| part.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join("")
        }
        _ => String::new(),
    }
}

/// The messages of a request with a given role.
pub fn messages_with_role(request: &Value, role: &str) -> Vec<Value> {
    request["messages"]
        .as_array()
        .map(|messages| messages.iter().filter(|m| m["role"] == role).cloned().collect())
        .unwrap_or_default()
}

fn unique_suffix() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{}_{nanos:x}", std::process::id())
}

/// A per-test PostgreSQL schema and data directory, dropped at the end of the test.
pub struct TestEnv {
    pub schema: String,
    pub dir: tempfile::TempDir,
}

impl TestEnv {
    /// An empty schema name (not created) and data directory.
    pub fn empty(prefix: &str) -> Self {
        let schema = format!("t_{prefix}_{}", unique_suffix());
        Self { schema, dir: tempfile::tempdir().unwrap() }
    }

    /// A schema filled by the real `audience generate` + `audience ingest` (small, deterministic sample).
    pub fn ingested(prefix: &str) -> Self {
        let env = Self::empty(prefix);
        env.ingest_generated(env.dir.path(), 60, 7);
        env
    }

    /// Generates `customers` customers with `seed` (12 events each, up to 2025-06-30) into `data_dir/sample` and
    /// ingests them into this test's schema with `data_dir` as the data directory.
    pub fn ingest_generated(&self, data_dir: &Path, customers: u64, seed: u64) {
        let sample = data_dir.join(format!("sample_{customers}_{seed}"));
        let run = |args: &[&str]| {
            let mut command = self.command(args);
            command.env("AUDIENCE_DATA_DIR", data_dir);
            let out = command.output().unwrap();
            assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        };
        let (customers, seed) = (customers.to_string(), seed.to_string());
        run(&[
            "generate",
            "--customers",
            &customers,
            "--events-per-customer",
            "12",
            "--seed",
            &seed,
            "--end-date",
            "2025-06-30",
            "--out",
            sample.to_str().unwrap(),
        ]);
        let (customers, events) = (sample.join("customers.csv"), sample.join("events.csv"));
        run(&["ingest", "--customers", customers.to_str().unwrap(), "--events", events.to_str().unwrap()]);
    }

    /// The sample [`Self::ingested`] loaded: its customers and events files.
    pub fn sample_files(&self) -> (PathBuf, PathBuf) {
        let sample = self.dir.path().join("sample_60_7");
        (sample.join("customers.csv"), sample.join("events.csv"))
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The binary with an isolated environment: our schema and data dir, no provider variables, and a working
    /// directory without a `.env` file.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_audience"));
        command.args(args).current_dir(self.dir.path());
        for (key, _) in std::env::vars() {
            if key.starts_with("AUDIENCE_") || key.ends_with("_API_KEY") || key == "QDRANT_URL" {
                command.env_remove(key);
            }
        }
        command
            .env("DATABASE_URL", database_url())
            .env("AUDIENCE_SCHEMA", &self.schema)
            .env("AUDIENCE_DATA_DIR", self.dir.path())
            .env("AUDIENCE_LOG", "warn,qdrant_edge=error")
            .env("NO_COLOR", "1")
            // With nothing configured the CLI uses the local model when it is installed; tests that mean "nothing
            // configured" must not start one (a test that wants the local server names its own).
            .env("AUDIENCE_LLAMA_SERVER", "/nonexistent/llama-server");
        command
    }

    /// [`Self::command`] pointed at a fake LLM through the openai-compatible provider.
    pub fn llm_command(&self, llm: &FakeLlm, args: &[&str]) -> Command {
        let mut command = self.command(args);
        command
            .env("AUDIENCE_PROVIDER", "openai-compatible")
            .env("AUDIENCE_BASE_URL", &llm.base_url)
            .env("AUDIENCE_API_KEY", "test");
        command
    }

    /// Runs `ask --json QUESTION` against `llm`.
    pub fn ask_json(&self, llm: &FakeLlm, question: &str) -> Run {
        Run::from(self.llm_command(llm, &["ask", "--json", question]).output().unwrap())
    }

    /// Runs plain `ask QUESTION` (text output) against `llm`.
    pub fn ask_plain(&self, llm: &FakeLlm, question: &str) -> Run {
        Run::from(self.llm_command(llm, &["ask", question]).output().unwrap())
    }

    /// Runs a SQL statement as the superuser in this test's schema and returns the first column as text.
    pub fn sql_scalar(&self, sql: &str) -> String {
        self.run_sql(sql, true)
    }

    /// Runs one statement that returns no rows (DDL), as the schema's owner.
    pub fn execute(&self, sql: &str) {
        self.run_sql(sql, false);
    }

    /// Runs `sql` in this test's schema; with `fetch`, returns the first column of its row as text.
    fn run_sql(&self, sql: &str, fetch: bool) -> String {
        let url = database_url();
        let schema = self.schema.clone();
        let sql = sql.to_owned();
        block_on(async move {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
            sqlx::query(&format!("SET search_path TO {schema}")).execute(&mut conn).await.unwrap();
            if !fetch {
                sqlx::query(&sql).execute(&mut conn).await.unwrap();
                return String::new();
            }
            let value: Option<String> = sqlx::query_scalar(&sql).fetch_one(&mut conn).await.unwrap();
            value.unwrap_or_default()
        })
    }

    /// A checksum of every table in the schema, to prove nothing changed.
    pub fn checksum(&self) -> String {
        let tables = self.sql_scalar(&format!(
            "SELECT string_agg(tablename::text, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = '{}'",
            self.schema
        ));
        assert!(tables.contains("profiles"), "nothing to checksum in {}: {tables:?}", self.schema);
        tables
            .split(',')
            .map(|table| {
                self.sql_scalar(&format!("SELECT md5(string_agg(t::text, ',' ORDER BY t::text)) FROM {table} t"))
            })
            .collect::<Vec<_>>()
            .join("/")
    }
}

impl Drop for TestEnv {
    /// Drops the test's schema and the schemas named after it (`audience bench` makes `<schema>_bench_<n>`).
    fn drop(&mut self) {
        let url = database_url();
        let schema = self.schema.clone();
        block_on(async move {
            if let Ok(pool) = sqlx::PgPool::connect(&url).await {
                let names: Vec<String> = sqlx::query_scalar(
                    "SELECT nspname::text FROM pg_namespace WHERE nspname = $1 OR starts_with(nspname, $1 || '_')",
                )
                .bind(&schema)
                .fetch_all(&pool)
                .await
                .unwrap_or_default();
                for name in names {
                    let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {name} CASCADE")).execute(&pool).await;
                }
            }
        });
    }
}

fn block_on<T: Send + 'static>(future: impl std::future::Future<Output = T> + Send + 'static) -> T {
    // Own thread: callers may be inside another runtime (Drop during an async test).
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(future)
    })
    .join()
    .unwrap()
}

/// A finished run of the binary.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(output: Output) -> Self {
        Self {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!("stdout is not one JSON document ({e}):\n{}\nstderr:\n{}", self.stdout, self.stderr)
        })
    }

    /// The `error: ...` lines on stderr.
    pub fn error_lines(&self) -> Vec<&str> {
        self.stderr.lines().filter(|line| line.starts_with("error: ")).collect()
    }
}

/// Runs the binary with `stdin` as its standard input.
pub fn run_with_stdin(mut command: Command, stdin: &str) -> Run {
    command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    Run::from(child.wait_with_output().unwrap())
}

/// Replaces values that change between runs (timings, timestamps) so a snapshot is stable.
pub fn redact_timings(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, field) in map.iter_mut() {
                if matches!(key.as_str(), "ms" | "latency_ms" | "timestamp") {
                    *field = Value::String("[redacted]".to_owned());
                } else {
                    redact_timings(field);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_timings),
        _ => {}
    }
}

/// A path inside the test's data directory.
pub fn data_file(env: &TestEnv, name: &str) -> PathBuf {
    env.data_dir().join(name)
}
