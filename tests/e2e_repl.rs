//! End-to-end tests of `audience chat`: the real binary on a pseudo-terminal, against the fake OpenAI server
//! and a dataset loaded by the real `generate` + `ingest`. A person's keystrokes (Enter, Ctrl-C, a `\`
//! continuation) go through the terminal's line discipline exactly as they would from a keyboard.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly; that is its job

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{FakeLlm, Reply, TestEnv, content_text, messages_with_role};
use serde_json::{Value, json};

const PROMPT: &str = "audience> ";
/// Generous: the first discovery question waits for the embedding model to load on a busy 2-core machine.
const TIMEOUT: Duration = Duration::from_secs(90);

/// The REPL running on a pseudo-terminal, with everything it wrote collected by a reader thread.
struct Terminal {
    master: File,
    child: Child,
    output: Arc<(Mutex<Output>, Condvar)>,
    /// How much of the cleaned output earlier `expect` calls consumed.
    seen: usize,
}

#[derive(Default)]
struct Output {
    raw: Vec<u8>,
    closed: bool,
}

impl Terminal {
    /// Starts `command` as the session leader of a new 200x50 terminal, so Ctrl-C typed on it raises SIGINT
    /// in the program (when the program is not in raw mode), as in a real terminal.
    fn spawn(mut command: Command) -> Self {
        let size = nix::pty::Winsize { ws_row: 50, ws_col: 200, ws_xpixel: 0, ws_ypixel: 0 };
        let pty = nix::pty::openpty(&size, None).expect("openpty");
        let slave: OwnedFd = pty.slave;
        command
            .env("TERM", "xterm")
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            command.pre_exec(|| {
                if nix::libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if nix::libc::ioctl(0, nix::libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("spawn the binary on the pty");
        // The parent's copies of the slave side close with `command`, so reads end when the child exits.
        drop(command);
        let master = File::from(pty.master);
        let output = Arc::new((Mutex::new(Output::default()), Condvar::new()));
        let mut reader = master.try_clone().unwrap();
        let sink = output.clone();
        thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            loop {
                // EIO once the child and its terminal are gone.
                let read = reader.read(&mut buffer).unwrap_or(0);
                let (lock, ready) = &*sink;
                let mut output = lock.lock().unwrap();
                if read == 0 {
                    output.closed = true;
                    ready.notify_all();
                    return;
                }
                output.raw.extend_from_slice(&buffer[..read]);
                ready.notify_all();
            }
        });
        Self { master, child, output, seen: 0 }
    }

    fn send(&mut self, text: &str) {
        self.master.write_all(text.as_bytes()).unwrap();
        self.master.flush().unwrap();
    }

    /// Types a line and presses Enter.
    fn line(&mut self, text: &str) {
        self.send(text);
        self.send("\r");
    }

    /// Waits until the output after the last match contains `needle`; returns the text before it.
    fn expect(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        let (lock, ready) = &*self.output;
        let mut output = lock.lock().unwrap();
        loop {
            let text = clean(&output.raw);
            if let Some(at) = text[self.seen..].find(needle) {
                let before = text[self.seen..self.seen + at].to_owned();
                self.seen += at + needle.len();
                return before;
            }
            let now = Instant::now();
            if output.closed || now >= deadline {
                let closed = output.closed;
                drop(output);
                let _ = self.child.kill();
                panic!(
                    "expected {needle:?} ({}); output since the last match:\n{}",
                    if closed { "the program exited" } else { "timed out" },
                    &text[self.seen..]
                );
            }
            output = ready.wait_timeout(output, deadline - now).unwrap().0;
        }
    }

    /// Sends Enter after a line, then returns everything printed up to the next prompt (the echo of the
    /// typed line excluded).
    fn ask(&mut self, text: &str) -> String {
        self.line(text);
        self.expect("\n");
        self.expect(PROMPT)
    }

    fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!("the REPL did not exit");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The output as a person reads it: escape sequences and carriage returns removed.
fn clean(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => match chars.next() {
                // CSI: parameters, then one final byte in @..~
                Some('[') => {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                // OSC: up to BEL or ESC \
                Some(']') => {
                    while let Some(c) = chars.next() {
                        if c == '\x07' || (c == '\x1b' && chars.next_if_eq(&'\\').is_some()) {
                            break;
                        }
                    }
                }
                _ => {}
            },
            '\r' | '\x07' => {}
            c => out.push(c),
        }
    }
    out
}

/// Replaces the seconds of a usage or cost line, which vary between runs.
fn redact_seconds(text: &str) -> String {
    text.lines()
        .map(|line| match line.rfind(", ") {
            Some(at) if line.starts_with("usage: ") && line.ends_with(" s") => format!("{}, [seconds]", &line[..at]),
            _ => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn chat(env: &TestEnv, llm_url: Option<&str>) -> Terminal {
    let mut command = env.command(&["chat"]);
    if let Some(url) = llm_url {
        command
            .env("AUDIENCE_PROVIDER", "openai-compatible")
            .env("AUDIENCE_BASE_URL", url)
            .env("AUDIENCE_API_KEY", "test");
    }
    let mut terminal = Terminal::spawn(command);
    terminal.expect(PROMPT);
    terminal
}

#[test]
fn conversation_refines_reports_cost_exports_and_quits() {
    let env = TestEnv::ingested("repl");
    let first_edit = json!({"include": [{"type": "event", "event_type": "purchase"}],
                            "intent": "outdoor hiking and camping gear", "limit": 5});
    let llm = FakeLlm::start(vec![
        Reply::tool("call_1", "find_audience", first_edit),
        // The follow-up sends only the change.
        Reply::tool(
            "call_2",
            "find_audience",
            json!({"include": [{"type": "event", "event_type": "purchase", "min_price": 50}], "limit": 3}),
        ),
        Reply::tool("call_3", "respond", json!({"text": "A fresh start."})),
    ]);
    let mut repl = chat(&env, Some(&llm.base_url));

    let help = repl.ask("/help");
    insta::assert_snapshot!("help", help);
    let tools = repl.ask("/tools");
    for name in ["find_audience", "sql_analytics", "sql_data_retriever"] {
        assert_eq!(tools.lines().filter(|line| line.starts_with(&format!("{name} "))).count(), 1, "{tools}");
    }
    assert!(repl.ask("/audience").starts_with("no audience yet"));

    let first = repl.ask("who buys hiking gear?");
    assert!(first.contains(" of 60 customers: Customers who bought anything; ranked by: outdoor hiking"), "{first}");
    let size = env.sql_scalar(
        "SELECT count(DISTINCT customer_id)::text FROM events WHERE event_type = 'purchase' AND quantity > 0",
    );
    assert!(
        first.contains(&format!(
            "Audience: {size} of 60 customers: Customers who bought anything; ranked by: outdoor hiking"
        )),
        "{first}"
    );
    let table_rows = first.lines().filter(|line| line.starts_with("│") && !line.contains("total_spent")).count();
    assert_eq!(table_rows, 5, "{first}");
    let usage = first.lines().last().unwrap();
    insta::assert_snapshot!("first_answer_usage", redact_seconds(usage));
    assert!(!first.contains("action:"), "the trace is off by default: {first}");

    // Two commands typed ahead in one go both run (rustyline keeps its read buffer between prompts).
    repl.send("/verbose\r/tools\r");
    repl.expect("verbose trace on");
    repl.expect("sql_data_retriever");
    repl.expect(PROMPT);

    // A follow-up typed over two lines with a trailing backslash, with the live trace on.
    repl.line("only those who spent \\");
    repl.expect("\n");
    let second = repl.ask("more than 50 on an item");
    assert!(second.contains("Customers who bought anything, who bought anything priced at least 50"), "{second}");
    assert!(second.contains("action: find_audience"), "{second}");
    assert!(second.contains("t.max_price >= 50"), "the trace shows the SQL: {second}");
    // Two clauses met by the same purchase give one line of evidence, not the same line twice.
    assert!(!second.contains("116 days ago; bought running_gear 116 days ago"), "{second}");
    let narrowed = env.sql_scalar(
        "SELECT count(DISTINCT customer_id)::text FROM events WHERE event_type = 'purchase' AND quantity > 0 AND price >= 50",
    );
    assert!(second.contains(&format!("Audience: {narrowed} of 60 customers")), "{second}");
    assert!(repl.ask("/verbose").contains("verbose trace off"));

    // The follow-up's one message carries the first question with the gist of its answer, and the current
    // audience, which the host holds: one call per question, and no chat history (no assistant message in plain
    // text for a small model to copy).
    let requests = llm.requests();
    assert_eq!(requests.len(), 2);
    let follow_up = &requests[1];
    let users: Vec<String> = messages_with_role(follow_up, "user").iter().map(content_text).collect();
    assert_eq!(users.len(), 1, "{follow_up}");
    let last = users.last().unwrap();
    assert!(
        last.contains("\nEarlier in this conversation:\n- \"who buys hiking gear?\" -> ")
            && last.contains(" of 60 customers: Customers who bought anything"),
        "{last}"
    );
    assert!(
        last.contains("\nCurrent audience: c1 include who bought anything; intent: outdoor hiking and camping gear\n"),
        "{last}"
    );
    assert!(last.ends_with("only those who spent \nmore than 50 on an item"), "{last}");
    assert!(messages_with_role(follow_up, "assistant").is_empty(), "{follow_up}");

    // The audience, its explanation, and undo.
    let audience = repl.ask("/audience");
    assert!(audience.contains(&format!("Audience: {narrowed} of 60 customers")), "{audience}");
    assert!(audience.contains("c1           who bought anything"), "{audience}");
    let explain = repl.ask("/explain");
    assert!(explain.starts_with("Customers who bought anything, who bought anything priced at least 50"), "{explain}");
    assert!(explain.contains("  c2 include who bought anything priced at least 50"), "{explain}");

    let cost = repl.ask("/cost");
    insta::assert_snapshot!("cost", cost);

    // Regression: /export wrote only the listed top members; it writes every member of the audience.
    let csv_path = env.data_dir().join("audience.csv");
    let exported = repl.ask(&format!("/export {}", csv_path.display()));
    assert!(exported.starts_with(&format!("exported {narrowed} members to ")), "{exported}");
    let csv = std::fs::read_to_string(&csv_path).unwrap();
    let mut lines = csv.lines();
    assert!(lines.next().unwrap().starts_with("external_id,first_name,last_name,email,country"), "{csv}");
    assert_eq!(lines.count().to_string(), narrowed, "{csv}");
    let leftovers: Vec<_> = std::fs::read_dir(env.data_dir())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(".audience-export-"))
        .collect();
    assert!(leftovers.is_empty(), "an export left its temporary file: {leftovers:?}");

    assert!(repl.ask("/undo").starts_with("back to: Customers who bought anything; ranked by: outdoor hiking"));
    let json_path = env.data_dir().join("audience.json");
    repl.ask(&format!("/export {}", json_path.display()));
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    assert_eq!(
        json.as_array().map(Vec::len).map(|n| n.to_string()),
        Some(size.clone()),
        "after undo, the first audience"
    );
    let audience = repl.ask("/audience");
    assert!(audience.contains(&format!("Audience: {size} of 60 customers")), "re-evaluated after undo: {audience}");

    // Saving the session's audience, listing it, and a holdout export in the command line's syntax.
    let saved = repl.ask("/save hikers --freeze");
    assert!(saved.starts_with(&format!("saved hikers: {size} members (members frozen)")), "{saved}");
    assert!(repl.ask("/save hikers").contains("pass --replace"), "a name is not saved over silently");
    let listed = repl.ask("/saved");
    assert!(listed.contains("| hikers ") && listed.contains(&format!("| {size} ")), "{listed}");
    let held_out = repl.ask(&format!("/export \"{}\" --holdout 50 --seed 3", csv_path.display()));
    assert!(held_out.contains("holdout 50% (seed 3): treatment "), "{held_out}");
    assert!(std::fs::read_to_string(&csv_path).unwrap().starts_with("external_id,group,"));

    // After /reset the next question carries no history and no audience.
    assert!(repl.ask("/reset").contains("conversation and audience cleared"));
    assert!(repl.ask("a new topic").starts_with("A fresh start.\n"));
    let after_reset = &llm.requests()[2];
    assert_eq!(after_reset["messages"].as_array().map(Vec::len), Some(2), "system + question only: {after_reset}");
    assert!(repl.ask("/export out.csv").starts_with("no audience yet"));
    assert!(repl.ask("/undo").starts_with("nothing to undo"));
    repl.line("/quit");
    assert!(repl.wait().success());
    let history = std::fs::read_to_string(env.data_dir().join("history.txt")).unwrap();
    assert!(history.contains("who buys hiking gear?") && history.contains("/cost"), "{history}");
}

/// A TCP proxy to the fake LLM that holds its first connection open without answering (a provider that is
/// slow to reply) and forwards every later connection.
struct StallingProxy {
    url: String,
    stalled_request: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
}

impl StallingProxy {
    fn start(llm: &FakeLlm) -> Self {
        let upstream = llm.base_url.trim_start_matches("http://").trim_end_matches("/v1").to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let stalled_request = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (stalled, stopped) = (stalled_request.clone(), stop.clone());
        thread::spawn(move || {
            let mut held: Vec<TcpStream> = Vec::new();
            while !stopped.load(Ordering::SeqCst) {
                let Ok((mut client, _)) = listener.accept() else {
                    thread::sleep(Duration::from_millis(20));
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                if held.is_empty() {
                    client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let mut buffer = [0u8; 65536];
                    let read = client.read(&mut buffer).unwrap_or(0);
                    stalled.lock().unwrap().extend_from_slice(&buffer[..read]);
                    held.push(client);
                    continue;
                }
                let server = TcpStream::connect(&upstream).unwrap();
                for (mut from, mut to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)]
                {
                    thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        Self { url, stalled_request, stop }
    }

    fn wait_for_stalled_request(&self) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let request = String::from_utf8_lossy(&self.stalled_request.lock().unwrap()).into_owned();
            if !request.is_empty() {
                return request;
            }
            assert!(Instant::now() < deadline, "the REPL never sent its request");
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for StallingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

#[test]
fn ctrl_c_cancels_a_slow_question_and_a_missing_provider_is_named() {
    let env = TestEnv::ingested("repl_cancel");

    // No provider: the REPL still starts, and a question names the variable to set.
    let mut repl = chat(&env, None);
    let answer = repl.ask("who buys hiking gear?");
    assert!(answer.starts_with("error: "), "{answer}");
    assert!(answer.contains("AUDIENCE_API_KEY") && answer.contains("OPENROUTER_API_KEY"), "{answer}");
    repl.line("/quit");
    assert!(repl.wait().success());

    // Without a terminal (input piped in), lines still join after a trailing backslash.
    let piped = common::run_with_stdin(env.command(&["chat"]), "who buys \\\nhiking gear?\n/cost\n");
    assert_eq!(piped.code, 0, "{}", piped.stderr);
    assert_eq!(piped.stdout.matches("error: no LLM provider key configured").count(), 1, "{}", piped.stdout);
    assert!(piped.stdout.contains("session: 0 question(s)"), "{}", piped.stdout);

    let llm = FakeLlm::start(vec![Reply::text("Second answer.")]);
    let proxy = StallingProxy::start(&llm);
    let mut repl = chat(&env, Some(&proxy.url));

    repl.line("a slow question");
    repl.expect("\n");
    assert!(proxy.wait_for_stalled_request().contains("a slow question"));
    // The request is in flight, so the REPL is listening for Ctrl-C; give the select a moment to be polled.
    thread::sleep(Duration::from_millis(300));
    repl.send("\x03");
    let cancelled = repl.expect(PROMPT);
    assert!(cancelled.contains("cancelled"), "{cancelled}");

    // Ctrl-C at the prompt clears the typed text and keeps the REPL running.
    repl.send("half a questi");
    repl.send("\x03");
    repl.expect(PROMPT);

    let second = repl.ask("a second question");
    assert!(second.starts_with("Second answer.\n"), "{second}");
    // The cancelled question left no trace in the conversation.
    let requests = llm.requests();
    assert_eq!(requests.len(), 1);
    let users: Vec<String> = messages_with_role(&requests[0], "user").iter().map(content_text).collect();
    assert_eq!(users.len(), 1);
    assert!(users[0].ends_with("\nQuestion: a second question"), "{users:?}");

    // Regression: the cancelled question is still in the ledger (it had spent nothing the provider reported).
    let cost = repl.ask("/cost");
    // The cancelled question's call is counted too: it was sent, and a provider may bill it.
    assert!(cost.starts_with("session: 2 question(s), 2 LLM calls"), "{cost}");
    let ledger = std::fs::read_to_string(env.data_dir().join("usage.jsonl")).unwrap();
    let oks: Vec<bool> =
        ledger.lines().map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()["ok"] == true).collect();
    assert_eq!(oks, [false, true], "{ledger}");
    // Ctrl-D leaves.
    repl.send("\x04");
    assert!(repl.wait().success());
}

/// Regression: while a chat was open every other command on its data directory failed with "vector index busy",
/// ingest and `tool sql_analytics` included. Now an ingest and other readers run beside an open chat, and the
/// chat's next question uses the newly ingested data without a restart.
#[test]
fn an_open_chat_shares_its_data_directory_and_follows_a_new_ingest() {
    let env = TestEnv::ingested("share");
    let search =
        || Reply::tool("c", "find_audience", json!({"new": true, "intent": "outdoor hiking and camping", "limit": 3}));
    let llm = FakeLlm::start(vec![search(), search()]);
    let mut repl = chat(&env, Some(&llm.base_url));
    let first = repl.ask("who likes hiking?");
    assert!(first.contains("Audience: 60 of 60 customers"), "{first}");
    // Segments are computed once per version of the data: a second question reuses them.
    let kinds = repl.ask("what kinds of customers do we have?");
    assert!(kinds.contains("computed by k-means over 60") && !kinds.contains("earlier answer"), "{kinds}");
    let again = repl.ask("what kinds of customers do we have?");
    assert!(again.contains("for an earlier answer: the data has not changed since"), "{again}");

    // With the chat holding its index open: other readers and a new ingest of other data.
    let run = |args: &[&str]| common::Run::from(env.command(args).output().unwrap());
    let tool = run(&["tool", "find_audience", "--args", r#"{"intent": "luxury watches", "limit": 2}"#]);
    assert_eq!(tool.code, 0, "{}", tool.stderr);
    let sql = run(&["tool", "sql_analytics", "--args", r#"{"sql": "SELECT count(*) FROM customers"}"#]);
    assert_eq!(sql.code, 0, "{}", sql.stderr);
    env.ingest_generated(env.data_dir(), 40, 9);

    let second = repl.ask("and now?");
    assert!(second.contains("Audience: 40 of 40 customers"), "the open chat sees the new data: {second}");
    let kinds = repl.ask("what kinds of customers do we have?");
    assert!(kinds.contains("computed by k-means over 40") && !kinds.contains("earlier answer"), "new data: {kinds}");
    repl.line("/quit");
    assert!(repl.wait().success());
}

/// String ids round-trip: a clickstream whose users are `user_0203` and a UUID, loaded through its example mapping,
/// shows those ids in the answer's table and in every exported row, never the internal keys.
#[test]
fn string_ids_from_the_file_are_the_ids_in_answers_and_exports() {
    let env = TestEnv::empty("strids");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let clicks = root.join("ingest/tests/fixtures/clickstream.csv.gz");
    let mapping = root.join("examples/mappings/clickstream.toml");
    let out = env
        .command(&["ingest", "--events", clicks.to_str().unwrap(), "--mapping", mapping.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let file_ids: Vec<String> = ["user_0203", "user_0007", "user_0150", "user_0099", "user_0012"]
        .into_iter()
        .map(str::to_owned)
        .chain(["7f3c9a2e-1b4d-4c8e-9a0f-3d2b1c0e9f8a".to_owned()])
        .collect();

    let llm = FakeLlm::start(vec![Reply::tool(
        "call_1",
        "find_audience",
        json!({"include": [{"type": "event", "event_type": "view"}], "limit": 10}),
    )]);
    let mut repl = chat(&env, Some(&llm.base_url));
    let answer = repl.ask("who browsed?");
    assert!(answer.contains("Audience: 6 of 6 customers"), "{answer}");
    for id in &file_ids {
        assert!(answer.contains(&format!("│ {id}")), "{id} is not in the table: {answer}");
    }
    // The rendered answer names members by the file's ids, never by a key.
    let first_line = answer.lines().next().unwrap();
    assert!(file_ids.iter().any(|id| first_line.contains(id.as_str())), "{first_line}");
    assert!(!answer.contains("10000000000000"), "an internal key reached the answer: {answer}");

    let csv_path = env.data_dir().join("browsers.csv");
    assert!(repl.ask(&format!("/export {}", csv_path.display())).starts_with("exported 6 members"));
    let mut exported: Vec<String> =
        csv::Reader::from_path(&csv_path).unwrap().records().map(|record| record.unwrap()[0].to_owned()).collect();
    exported.sort();
    let mut expected = file_ids.clone();
    expected.sort();
    assert_eq!(exported, expected);
    repl.line("/quit");
    assert!(repl.wait().success());
}

/// The campaign loop from the chat: the current audience's next-best actions and drafts, without saving it first.
#[test]
fn the_current_audience_gets_actions_and_drafts_from_the_chat() {
    let env = TestEnv::ingested("replcampaign");
    let buyers = json!({"include": [{"type": "event", "event_type": "purchase"}], "limit": 5});
    let draft = json!({"subject": "Something new for you", "preheader": "Picked for you",
                       "body": "We picked a few new arrivals we think you will enjoy.", "cta": "Shop now"});
    let llm = FakeLlm::start(vec![Reply::tool("call_1", "find_audience", buyers), Reply::text(&draft.to_string())]);
    let mut repl = chat(&env, Some(&llm.base_url));
    let before = repl.ask("/actions");
    assert!(before.contains("name a saved audience to plan actions for"), "{before}");
    repl.ask("customers who bought anything");
    let size: u64 = env
        .sql_scalar(
            "SELECT count(DISTINCT customer_id)::text FROM events WHERE event_type = 'purchase' AND quantity > 0",
        )
        .parse()
        .unwrap();

    let actions = repl.ask("/actions");
    assert!(actions.starts_with(&format!("the definition: {size} members;")), "{actions}");
    let counted: u64 = actions
        .lines()
        .filter(|line| line.starts_with("| ") && !line.starts_with("| rule"))
        .map(|line| line.split('|').nth(3).unwrap().trim().parse::<u64>().unwrap())
        .sum();
    assert_eq!(counted, size, "every member gets exactly one action: {actions}");

    let out = env.data_dir().join("drafts.csv");
    let cost = repl.ask("/cost");
    assert!(cost.contains("1 question(s), 1 LLM calls"), "{cost}");
    let drafted = repl.ask(&format!("/draft {} --limit 1", out.display()));
    assert!(drafted.contains("1 accepted (1 at the first try"), "{drafted}");
    let rows = std::fs::read_to_string(&out).unwrap();
    assert!(rows.contains("Something new for you") && rows.contains(",accepted,"), "{rows}");
    let cost = repl.ask("/cost");
    assert!(cost.contains("1 question(s), 2 LLM calls"), "the draft's call is in the session's totals: {cost}");
}
