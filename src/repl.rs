//! `audience chat`: an interactive session with the agent. Follow-up questions refine the previous ones,
//! Ctrl-C cancels a running question, and slash commands show the tools, the session cost and export the
//! last audience.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use audience_tools::stores::Stores;
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::{DefaultHistory, History};
use rustyline::validate::{ValidationContext, ValidationResult, Validator};
use rustyline::{Config, Editor, Helper};
use serde_json::Value;

use crate::Global;
use crate::agent::{AgentConfig, Answer, Audience, Session, open_stores};
use crate::ask::{check_question, customer_table};
use crate::exit;
use crate::terminal;
use crate::ledger::UsageTotals;

const PROMPT: &str = "audience> ";
/// Shown for the continuation lines of a multi-line question when the terminal cannot edit in place.
const CONTINUATION_PROMPT: &str = "      ... ";
const HISTORY_FILE: &str = "history.txt";
const HISTORY_SIZE: usize = 1000;
/// Customers shown under an answer; `/export` writes all of them.
const TABLE_ROWS: usize = 10;

/// The slash commands with their help text, in the order `/help` lists them.
const COMMANDS: [(&str, &str); 7] = [
    ("/help", "show this help"),
    ("/tools", "list the agent's tools"),
    ("/verbose", "toggle the live trace of each step (thought, action, SQL, observation)"),
    ("/cost", "session totals: questions, LLM calls, tokens, embedding tokens, cost"),
    ("/reset", "forget the conversation (the next question starts fresh)"),
    ("/export FILE", "write the last audience to FILE (.csv or .json)"),
    ("/quit", "leave (or Ctrl-D)"),
];

/// The tools' model-facing descriptions; `/tools` shows their first sentence.
const TOOLS: [(&str, &str); 4] = [
    ("hybrid_discovery", include_str!("../prompts/tools/hybrid_discovery.md")),
    ("semantic_search", include_str!("../prompts/tools/semantic_search.md")),
    ("sql_analytics", include_str!("../prompts/tools/sql_analytics.md")),
    ("sql_data_retriever", include_str!("../prompts/tools/sql_data_retriever.md")),
];

/// Runs the REPL until `/quit` or Ctrl-D.
pub async fn run(global: &Global) -> Result<()> {
    std::fs::create_dir_all(&global.data_dir)
        .with_context(|| format!("cannot create the data directory {}", global.data_dir.display()))?;
    let stores = open_stores(&global.data_dir).await?;
    // The prompt must not wait for the embedding model: it loads while the user types.
    stores.embedder.prefetch();
    let mut chat =
        Chat { agent: Agent::Unconfigured, stores, data_dir: global.data_dir.clone(), verbose: global.verbose };
    let setup_error = chat.configure().await.err();
    let mut lines = LineReader::open(&global.data_dir.join(HISTORY_FILE))?;

    println!("audience chat: ask about your customers in plain words. /help lists commands; Ctrl-D or /quit leaves.");
    match (&chat.agent, setup_error) {
        (Agent::Ready(session), _) => println!("model: {}", session.model()),
        (Agent::Unconfigured, Some(error)) => {
            println!(
                "note: no LLM provider is usable yet ({}); questions fail until it is set.",
                exit::one_line(&error)
            )
        }
        (Agent::Unconfigured, None) => {}
    }
    loop {
        let input = match lines.read().await? {
            Input::Text(text) => text,
            // Ctrl-C at the prompt only clears the line being typed.
            Input::Interrupted => continue,
            Input::Eof => break,
        };
        let input = input.trim();
        if input.is_empty() {
            continue;
        }
        lines.remember(input);
        if input.starts_with('/') {
            match parse_command(input) {
                Ok(Command::Quit) => break,
                Ok(command) => chat.command(command),
                Err(message) => println!("{message}"),
            }
        } else {
            chat.ask(input).await;
        }
    }
    lines.save();
    Ok(())
}

/// The agent, or why there is none yet (no provider configured).
enum Agent {
    Ready(Box<Session>),
    Unconfigured,
}

/// The REPL's state between questions.
struct Chat {
    agent: Agent,
    stores: Stores,
    data_dir: PathBuf,
    verbose: bool,
}

impl Chat {
    /// Builds the session from the provider configuration (environment, then `<data_dir>/config.toml`).
    async fn configure(&mut self) -> Result<()> {
        let config = AgentConfig::load(&self.data_dir)?;
        let session = Session::new(config, self.stores.clone(), self.verbose).await?;
        self.agent = Agent::Ready(Box::new(session));
        Ok(())
    }

    async fn ask(&mut self, question: &str) {
        if matches!(self.agent, Agent::Unconfigured) {
            // Re-read the configuration: the user may have edited config.toml since the REPL started.
            if let Err(error) = self.configure().await {
                println!("error: {}", terminal::safe(&exit::one_line(&error)));
                return;
            }
        }
        let Agent::Ready(session) = &mut self.agent else { return };
        let question = match check_question(question) {
            Ok(question) => question,
            Err(error) => {
                println!("error: {error}");
                return;
            }
        };
        // Listening for Ctrl-C only while a question runs: at the prompt the terminal is in raw mode and
        // rustyline reads Ctrl-C as a key. Cancelling drops the run's HTTP request and tool calls; the session
        // records what the run had spent and keeps the conversation as it was before the question.
        let ctrl_c = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        match session.ask_until(question, ctrl_c).await {
            Ok(Some(answer)) => print_answer(&answer),
            Err(error) => {
                println!("error: {}", terminal::safe(&exit::one_line(&error)));
                if let Some(usage) = session.last_usage() {
                    println!("{}", usage.summary_line());
                }
            }
            Ok(None) => println!("\ncancelled; the conversation is as it was before this question."),
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Help => print_help(),
            Command::Tools => {
                for (name, description) in TOOLS {
                    println!("{name:<20} {}", first_sentence(description));
                }
            }
            Command::Verbose => {
                self.verbose = !self.verbose;
                if let Agent::Ready(session) = &mut self.agent {
                    session.set_verbose(self.verbose);
                }
                println!("verbose trace {}", if self.verbose { "on" } else { "off" });
            }
            Command::Cost => {
                let totals = match &self.agent {
                    Agent::Ready(session) => session.totals().clone(),
                    Agent::Unconfigured => UsageTotals::default(),
                };
                println!("{}", totals.summary_line());
            }
            Command::Reset => {
                if let Agent::Ready(session) = &mut self.agent {
                    session.reset();
                }
                println!("conversation cleared; the next question starts fresh.");
            }
            Command::Export(path) => {
                let audience = match &self.agent {
                    Agent::Ready(session) => session.last_audience(),
                    Agent::Unconfigured => None,
                };
                match audience {
                    None => println!("no audience yet: ask a question that finds customers first."),
                    Some(audience) => match export(audience, &path) {
                        Ok(()) => println!(
                            "exported {} customer{} to {}{}",
                            audience.customers.len(),
                            plural(audience.customers.len()),
                            path.display(),
                            shown_of_size(audience)
                        ),
                        Err(error) => println!("error: {}", terminal::safe(&exit::one_line(&error))),
                    },
                }
            }
            Command::Quit => {}
        }
    }
}

fn print_answer(answer: &Answer) {
    println!("{}", terminal::safe(answer.text.trim()));
    if let Some(audience) = &answer.audience {
        println!();
        let shown = audience.customers.len().min(TABLE_ROWS);
        println!("Audience: {} customer{} (showing {shown})", audience.size, plural(audience.size as usize));
        if shown > 0 {
            println!("{}", customer_table(&audience.customers[..shown]));
        }
    }
    println!("{}", answer.usage.summary_line());
}

fn print_help() {
    println!("Ask a question in plain words; follow-ups refine the previous answer.");
    println!("End a line with \\ to continue the question on the next line.");
    for (command, help) in COMMANDS {
        println!("  {command:<14} {help}");
    }
    println!("Ctrl-C cancels a running question; at the prompt it clears the line.");
}

fn plural(count: usize) -> &'static str {
    if count == 1 { "" } else { "s" }
}

/// The tools return the top of a larger audience; say so when an export holds fewer than all of it.
fn shown_of_size(audience: &Audience) -> String {
    let size = audience.size as usize;
    if size > audience.customers.len() { format!(" (the top of {size} matching)") } else { String::new() }
}

/// The first sentence of a description: up to the first ". " that does not end "e.g." or "i.e.", within the
/// first line.
fn first_sentence(text: &str) -> &str {
    let line = text.trim().lines().next().unwrap_or_default();
    let end = line.match_indices(". ").find(|(at, _)| !line[..*at].ends_with("e.g") && !line[..*at].ends_with("i.e"));
    match end {
        Some((at, _)) => &line[..=at],
        None => line,
    }
}

/// A parsed slash command.
#[derive(Debug, PartialEq)]
enum Command {
    Help,
    Tools,
    Verbose,
    Cost,
    Reset,
    Export(PathBuf),
    Quit,
}

/// Parses a line starting with `/`; the error is the message to show.
fn parse_command(line: &str) -> std::result::Result<Command, String> {
    let (name, rest) = match line.split_once(char::is_whitespace) {
        Some((name, rest)) => (name, rest.trim()),
        None => (line, ""),
    };
    let no_argument = |command: Command| {
        if rest.is_empty() { Ok(command) } else { Err(format!("{name} takes no argument")) }
    };
    match name {
        "/help" | "/?" => no_argument(Command::Help),
        "/tools" => no_argument(Command::Tools),
        "/verbose" => no_argument(Command::Verbose),
        "/cost" => no_argument(Command::Cost),
        "/reset" => no_argument(Command::Reset),
        "/quit" | "/exit" => no_argument(Command::Quit),
        "/export" if rest.is_empty() => Err("usage: /export FILE (.csv or .json)".to_owned()),
        "/export" => Ok(Command::Export(PathBuf::from(rest.trim_matches('"')))),
        _ => Err(format!("unknown command {name}; /help lists the commands")),
    }
}

/// Writes the audience as CSV (one row per customer) or JSON (`{size, customers}`), by the file's extension.
fn export(audience: &Audience, path: &Path) -> Result<()> {
    let extension = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    let bytes = match extension.as_deref() {
        Some("json") => {
            let mut text = serde_json::to_string_pretty(audience)?;
            text.push('\n');
            text.into_bytes()
        }
        Some("csv") => audience_csv(&audience.customers)?,
        _ => bail!("cannot tell the format of {}: name it .csv or .json", path.display()),
    };
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// Columns in a reading order first, then any other field the tool returned, so nothing is dropped.
fn csv_columns(customers: &[Value]) -> Vec<String> {
    const FIRST: [&str; 7] = ["customer_id", "name", "country", "segment", "total_spent", "interests", "score"];
    let mut columns: Vec<String> = Vec::new();
    for customer in customers {
        let Some(fields) = customer.as_object() else { continue };
        for key in FIRST.iter().copied().filter(|key| fields.contains_key(*key)) {
            if !columns.iter().any(|c| c == key) {
                columns.push(key.to_owned());
            }
        }
    }
    let mut rest: Vec<String> = customers
        .iter()
        .filter_map(Value::as_object)
        .flat_map(|fields| fields.keys())
        .filter(|key| !columns.contains(key))
        .cloned()
        .collect();
    rest.sort();
    rest.dedup();
    columns.extend(rest);
    columns
}

fn audience_csv(customers: &[Value]) -> Result<Vec<u8>> {
    let columns = csv_columns(customers);
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(&columns)?;
    for customer in customers {
        writer.write_record(columns.iter().map(|column| csv_cell(customer.get(column))))?;
    }
    writer.into_inner().context("cannot finish the CSV")
}

fn csv_cell(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(text)) => text.clone(),
        // Lists (interests) as one cell, `;`-separated, so spreadsheets keep one row per customer.
        Some(Value::Array(items)) => items.iter().map(|item| csv_cell(Some(item))).collect::<Vec<_>>().join(";"),
        Some(other) => other.to_string(),
    }
}

/// True while the input needs more lines: a trailing `\` or an unclosed double quote.
fn needs_more(input: &str) -> bool {
    input.trim_end_matches([' ', '\t']).ends_with('\\') || input.matches('"').count() % 2 == 1
}

/// Joins continuation lines: `\` + newline becomes a newline.
fn join_continuations(input: &str) -> String {
    input.replace("\\\n", "\n")
}

/// rustyline helper: multi-line input and completion of slash commands.
struct ReplHelper;

impl Validator for ReplHelper {
    fn validate(&self, ctx: &mut ValidationContext) -> rustyline::Result<ValidationResult> {
        Ok(if needs_more(ctx.input()) { ValidationResult::Incomplete } else { ValidationResult::Valid(None) })
    }
}

impl Completer for ReplHelper {
    type Candidate = Pair;

    fn complete(&self, line: &str, pos: usize, _: &rustyline::Context<'_>) -> rustyline::Result<(usize, Vec<Pair>)> {
        let typed = &line[..pos];
        if !typed.starts_with('/') || typed.contains(char::is_whitespace) {
            return Ok((0, Vec::new()));
        }
        let candidates = COMMANDS
            .iter()
            .map(|(usage, _)| usage.split_whitespace().next().unwrap_or(usage))
            .filter(|name| name.starts_with(typed))
            .map(|name| Pair { display: name.to_owned(), replacement: name.to_owned() })
            .collect();
        Ok((0, candidates))
    }
}

impl Hinter for ReplHelper {
    type Hint = String;
}

impl Highlighter for ReplHelper {}

impl Helper for ReplHelper {}

/// What one read at the prompt produced.
enum Input {
    Text(String),
    Interrupted,
    Eof,
}

/// The line editor with its history file. Reading blocks, so it runs on a blocking thread and the
/// runtime keeps loading the embedding model meanwhile.
struct LineReader {
    editor: Option<Editor<ReplHelper, DefaultHistory>>,
    history: PathBuf,
}

impl LineReader {
    fn open(history: &Path) -> Result<Self> {
        let config = Config::builder()
            .max_history_size(HISTORY_SIZE)
            .context("invalid history size")?
            .history_ignore_dups(true)
            .context("invalid history setting")?
            .auto_add_history(false)
            .build();
        let mut editor: Editor<ReplHelper, DefaultHistory> =
            Editor::with_config(config).context("cannot set up the terminal line editor")?;
        editor.set_helper(Some(ReplHelper));
        if history.is_file()
            && let Err(error) = editor.load_history(history)
        {
            tracing::warn!("cannot read the REPL history {}: {error}", history.display());
        }
        Ok(Self { editor: Some(editor), history: history.to_owned() })
    }

    /// Reads one question or command. Without a terminal (input piped in) the editor returns single lines,
    /// so continuation lines are gathered here.
    async fn read(&mut self) -> Result<Input> {
        let mut text = String::new();
        loop {
            let prompt = if text.is_empty() { PROMPT } else { CONTINUATION_PROMPT };
            // Flushed so piped output shows answers before the next prompt blocks.
            std::io::stdout().flush().ok();
            match self.read_line(prompt).await? {
                Ok(line) => {
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    text.push_str(&line);
                    if !needs_more(&text) {
                        return Ok(Input::Text(join_continuations(&text)));
                    }
                }
                Err(ReadlineError::Interrupted) => return Ok(Input::Interrupted),
                // Ctrl-D in the middle of a multi-line question submits what was typed.
                Err(ReadlineError::Eof) if !text.is_empty() => return Ok(Input::Text(join_continuations(&text))),
                Err(ReadlineError::Eof) => return Ok(Input::Eof),
                Err(error) => return Err(error).context("cannot read from the terminal"),
            }
        }
    }

    async fn read_line(&mut self, prompt: &'static str) -> Result<rustyline::Result<String>> {
        let mut editor = self.editor.take().context("the line editor is busy")?;
        let (editor, line) = tokio::task::spawn_blocking(move || {
            let line = editor.readline(prompt);
            (editor, line)
        })
        .await
        .context("the line editor thread failed")?;
        self.editor = Some(editor);
        Ok(line)
    }

    /// Adds an entry to the history and appends it to the file at once, so a crash loses nothing.
    fn remember(&mut self, entry: &str) {
        let Some(editor) = self.editor.as_mut() else { return };
        if matches!(editor.add_history_entry(entry), Ok(true))
            && let Err(error) = editor.append_history(&self.history)
        {
            tracing::warn!("cannot write the REPL history {}: {error}", self.history.display());
        }
    }

    /// Rewrites the history file trimmed to its maximum size.
    fn save(&mut self) {
        let Some(editor) = self.editor.as_mut() else { return };
        if editor.history().is_empty() {
            return;
        }
        if let Err(error) = editor.save_history(&self.history) {
            tracing::warn!("cannot write the REPL history {}: {error}", self.history.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_commands() {
        assert_eq!(parse_command("/help"), Ok(Command::Help));
        assert_eq!(parse_command("/quit"), Ok(Command::Quit));
        assert_eq!(parse_command("/export out/a b.csv"), Ok(Command::Export(PathBuf::from("out/a b.csv"))));
        assert_eq!(parse_command("/export"), Err("usage: /export FILE (.csv or .json)".to_owned()));
        assert_eq!(parse_command("/cost now"), Err("/cost takes no argument".to_owned()));
        assert!(parse_command("/nope").unwrap_err().contains("unknown command /nope"));
    }

    #[test]
    fn continues_after_backslash_or_open_quote() {
        assert!(needs_more("customers who \\"));
        assert!(needs_more("customers named \"Ann"));
        assert!(!needs_more("customers named \"Ann\""));
        assert!(!needs_more("who's buying?"));
        assert_eq!(join_continuations("who buys \\\nshoes"), "who buys \nshoes");
    }

    #[test]
    fn exports_csv_with_every_field_and_lists_in_one_cell() {
        let customers = vec![
            json!({"score": 0.5, "customer_id": 7, "name": "Ann, B", "interests": ["hiking", "tea"], "extra": true}),
            json!({"customer_id": 9, "name": "Bo", "interests": [], "score": 0.25}),
        ];
        let csv = String::from_utf8(audience_csv(&customers).unwrap()).unwrap();
        assert_eq!(csv, "customer_id,name,interests,score,extra\n7,\"Ann, B\",hiking;tea,0.5,true\n9,Bo,,0.25,\n");
    }

    #[test]
    fn export_needs_a_known_extension() {
        let dir = tempfile::tempdir().unwrap();
        let audience = Audience { size: 3, customers: vec![json!({"customer_id": 1})] };
        let error = export(&audience, &dir.path().join("a.txt")).unwrap_err();
        assert!(error.to_string().contains("name it .csv or .json"), "{error}");
        export(&audience, &dir.path().join("a.JSON")).unwrap();
        let written: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("a.JSON")).unwrap()).unwrap();
        assert_eq!(written, json!({"size": 3, "customers": [{"customer_id": 1}]}));
    }

    #[test]
    fn tool_summaries_are_one_sentence() {
        for (name, description) in TOOLS {
            let summary = first_sentence(description);
            assert!(summary.ends_with('.') && summary.len() > 30, "{name}: {summary}");
            assert_eq!(summary.matches('(').count(), summary.matches(')').count(), "{name}: {summary}");
        }
    }
}
