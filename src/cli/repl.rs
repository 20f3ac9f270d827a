//! `audience chat`: an interactive session with the agent. Follow-up questions refine the previous ones,
//! Ctrl-C cancels a running question, and slash commands show the tools, the session cost and export the
//! last audience.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use audience_tools::stores::Stores;
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::{DefaultHistory, History};
use rustyline::validate::{ValidationContext, ValidationResult, Validator};
use rustyline::{Config, Editor, Helper};

use crate::Global;
use crate::cli::ask;
use crate::cli::ask::check_question;
use crate::cli::audiences;
use crate::cli::campaign_commands;
use audience::agent::{AgentConfig, Answer, Session};
use audience::exit;
use audience::ledger::UsageTotals;
use audience::open_stores::open_stores;
use audience::outln;
use audience::render::{audience_summary, member_table};
use audience::terminal;
use audience_tools::audience::report::evaluate;
use audience_tools::audience::{AudienceReport, AudienceSession};
use audience_tools::registry;
use audience_tools::trace::ToolTrace;
use clap::Parser;

const PROMPT: &str = "audience> ";
/// Shown for the continuation lines of a multi-line question when the terminal cannot edit in place.
const CONTINUATION_PROMPT: &str = "      ... ";
const HISTORY_FILE: &str = "history.txt";
const HISTORY_SIZE: usize = 1000;
/// The slash commands with their help text, in the order `/help` lists them.
const COMMANDS: [(&str, &str); 18] = [
    ("/help", "show this help"),
    ("/audience", "the current audience: its definition, size and makeup"),
    ("/explain", "the current audience in plain words, clause by clause"),
    ("/undo", "go back one edit of the audience"),
    ("/export FILE", "write every member to FILE (.csv, .json, .jsonl); --holdout PCT --seed N --mask-pii --fields"),
    ("/save NAME", "save the current audience (--freeze keeps its members, --replace saves over NAME)"),
    ("/saved", "list the saved audiences with their size then and now"),
    ("/show NAME", "a saved audience: definition, size drift, breakdown now"),
    ("/overlap A B", "how two saved audiences overlap"),
    ("/lookalike [NAME]", "customers most like NAME (default: the current audience) who are not in it; -k N"),
    ("/actions [NAME]", "the next-best action of each member of NAME (default: the current audience); --rules FILE"),
    (
        "/draft FILE",
        "e-mail drafts for the current audience (or NAME) into FILE; --offer TEXT --per --limit N --holdout PCT",
    ),
    ("/tools", "list the agent's tools"),
    ("/verbose", "toggle the live trace of each step (thought, action, SQL, observation)"),
    ("/cost", "session totals: questions, LLM calls, tokens, embedding tokens, cost"),
    ("/reset", "forget the conversation and the audience (the next question starts fresh)"),
    ("/quit", "leave (or Ctrl-D)"),
    ("Ctrl-C", "cancel a running question; at the prompt, clear the line"),
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

    outln!("audience chat: ask about your customers in plain words. /help lists commands; Ctrl-D or /quit leaves.")?;
    match (&chat.agent, setup_error) {
        (Agent::Ready(session), _) => outln!("model: {}", session.model())?,
        (Agent::Unconfigured, Some(error)) => {
            outln!("note: no LLM provider is usable yet ({}); questions fail until it is set.", exit::one_line(&error))?
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
                Ok(command) => chat.command(command).await?,
                Err(message) => outln!("{message}")?,
            }
        } else {
            chat.ask(input).await?;
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

    /// Answers one question; only a failure to write the answer is returned, every other error is shown.
    async fn ask(&mut self, question: &str) -> Result<()> {
        if matches!(self.agent, Agent::Unconfigured) {
            // Re-read the configuration: the user may have edited config.toml since the REPL started.
            if let Err(error) = self.configure().await {
                return outln!("error: {}", terminal::safe(&exit::one_line(&error)));
            }
        }
        let Agent::Ready(session) = &mut self.agent else { return Ok(()) };
        let question = match check_question(question) {
            Ok(question) => question,
            Err(error) => return outln!("error: {error}"),
        };
        // Listening for Ctrl-C only while a question runs: at the prompt the terminal is in raw mode and
        // rustyline reads Ctrl-C as a key. Cancelling drops the run's HTTP request and tool calls; the session
        // records what the run had spent and keeps the conversation as it was before the question.
        let ctrl_c = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        match session.ask_until(question, ctrl_c).await {
            Ok(Some(answer)) => {
                if let Some(audience) = &answer.audience {
                    audiences::remember_current(&self.data_dir, audience);
                }
                print_answer(&answer)
            }
            Err(error) => {
                outln!("error: {}", terminal::safe(&exit::one_line(&error)))?;
                if let Some(usage) = session.last_usage() {
                    outln!("{}", usage.summary_line())?;
                }
                Ok(())
            }
            Ok(None) => outln!("\ncancelled; the conversation is as it was before this question."),
        }
    }

    /// Runs one slash command; only a failure to write its output is returned, every other error is shown.
    async fn command(&mut self, command: Command) -> Result<()> {
        match command {
            Command::Help => print_help()?,
            Command::Tools => {
                for tool in registry::TOOLS {
                    outln!("{:<20} {}", tool.name, first_sentence(tool.text()))?;
                }
            }
            Command::Verbose => {
                self.verbose = !self.verbose;
                if let Agent::Ready(session) = &mut self.agent {
                    session.set_verbose(self.verbose);
                }
                outln!("verbose trace {}", if self.verbose { "on" } else { "off" })?;
            }
            Command::Cost => {
                let totals = match &self.agent {
                    Agent::Ready(session) => session.totals().clone(),
                    Agent::Unconfigured => UsageTotals::default(),
                };
                outln!("{}", totals.summary_line())?;
            }
            Command::Reset => {
                if let Agent::Ready(session) = &mut self.agent {
                    session.reset();
                }
                outln!("conversation and audience cleared; the next question starts fresh.")?;
            }
            Command::Audience => match self.current_report().await {
                Ok(Some(report)) => {
                    outln!("{}", audience_summary(&report))?;
                    if !report.members.is_empty() {
                        outln!("{}", member_table(&report.members))?;
                    }
                }
                Ok(None) => outln!("no audience yet: ask a question that finds customers first.")?,
                Err(error) => outln!("error: {}", terminal::safe(&exit::one_line(&error)))?,
            },
            Command::Explain => match self.audience().and_then(|audience| audience.current()) {
                Some(definition) => {
                    outln!("{}", terminal::safe(&definition.explain()))?;
                    for (clause, exclude) in definition.clauses() {
                        let verb = if exclude { "exclude" } else { "include" };
                        outln!("  {} {verb} {}", clause.id, terminal::safe(&clause.rule.predicate()))?;
                    }
                }
                None => outln!("no audience yet: ask a question that finds customers first.")?,
            },
            Command::Undo => match self.audience() {
                Some(audience) if audience.undo() => match audience.current() {
                    Some(definition) => outln!("back to: {}", terminal::safe(&definition.explain()))?,
                    None => outln!("back to no audience.")?,
                },
                _ => outln!("nothing to undo.")?,
            },
            Command::Export(rest) => {
                let words = file_first(&rest);
                let current = self.audience().and_then(AudienceSession::current);
                match audiences::ExportArgs::try_parse_from(words) {
                    Ok(args) if args.name.is_none() && args.from.is_none() && current.is_none() => {
                        outln!("no audience yet: ask a question that finds customers first.")?
                    }
                    Ok(args) => report(audiences::export(&self.stores, args, current).await)?,
                    Err(error) => outln!("{}", error.render())?,
                }
            }
            Command::Save(rest) => match audiences::SaveArgs::try_parse_from(split_words(&rest)) {
                Ok(args) => report(audiences::save(&self.stores, args, self.audience(), &self.data_dir).await)?,
                Err(error) => outln!("{}", error.render())?,
            },
            Command::Saved => report(audiences::list(&self.stores, audiences::ListArgs { json: false }).await)?,
            Command::Show(rest) => match audiences::NameArgs::try_parse_from(split_words(&rest)) {
                Ok(args) => report(audiences::show(&self.stores, args).await)?,
                Err(error) => outln!("{}", error.render())?,
            },
            Command::Overlap(rest) => match audiences::OverlapArgs::try_parse_from(split_words(&rest)) {
                Ok(args) => report(audiences::overlap(&self.stores, args).await)?,
                Err(error) => outln!("{}", error.render())?,
            },
            Command::Lookalike(rest) => match audiences::LookalikeCommandArgs::try_parse_from(split_words(&rest)) {
                Ok(args) => {
                    let session = self.audience().cloned().unwrap_or_default();
                    report(audiences::lookalike(&self.stores, args, &session).await)?
                }
                Err(error) => outln!("{}", error.render())?,
            },
            Command::Actions(rest) => match campaign_commands::ActionsArgs::try_parse_from(split_words(&rest)) {
                Ok(args) => {
                    let current = self.audience().and_then(AudienceSession::current);
                    report(campaign_commands::actions(&self.stores, args, current).await)?
                }
                Err(error) => outln!("{}", error.render())?,
            },
            Command::Draft(rest) => match campaign_commands::DraftArgs::try_parse_from(file_first(&rest)) {
                Ok(args) => {
                    let current = self.audience().and_then(AudienceSession::current);
                    let drafted = campaign_commands::draft(&self.stores, args, &self.data_dir, current).await;
                    if let (Ok(summary), Agent::Ready(session)) = (&drafted, &mut self.agent) {
                        session.absorb_usage(&summary.usage);
                    }
                    report(drafted.map(|_| ()))?
                }
                Err(error) => outln!("{}", error.render())?,
            },
            Command::Quit => {}
        }
        Ok(())
    }

    fn audience(&self) -> Option<&AudienceSession> {
        match &self.agent {
            Agent::Ready(session) => Some(session.audience()),
            Agent::Unconfigured => None,
        }
    }

    /// The current audience's evaluation: the last one, or a fresh one (after `/undo`).
    async fn current_report(&self) -> Result<Option<AudienceReport>> {
        let Some(audience) = self.audience() else { return Ok(None) };
        if let Some(report) = audience.last_report() {
            return Ok(Some(report));
        }
        let Some(definition) = audience.current() else { return Ok(None) };
        let report = evaluate(&self.stores, &definition, &[], &mut ToolTrace::new("audience"))
            .await
            .map_err(|failure| anyhow::anyhow!("{failure}"))?;
        audience.remember(report.clone());
        Ok(Some(report))
    }
}

/// In the chat the usage line follows each answer on screen.
fn print_answer(answer: &Answer) -> Result<()> {
    ask::print_answer(answer)?;
    outln!("{}", answer.usage.summary_line())
}

fn print_help() -> Result<()> {
    outln!("Ask a question in plain words; follow-ups refine the current audience (\"now only PL\").")?;
    outln!("End a line with \\ to continue the question on the next line.")?;
    for (command, help) in COMMANDS {
        outln!("  {command:<18} {help}")?;
    }
    Ok(())
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
    Audience,
    Explain,
    Undo,
    Tools,
    Verbose,
    Cost,
    Reset,
    /// The rest of the line, parsed when run (the command-line `export` syntax, FILE first).
    Export(String),
    Save(String),
    Saved,
    Show(String),
    Overlap(String),
    Lookalike(String),
    Actions(String),
    /// The rest of the line, parsed when run (the command-line `draft` syntax, FILE first).
    Draft(String),
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
        "/audience" => no_argument(Command::Audience),
        "/explain" => no_argument(Command::Explain),
        "/undo" => no_argument(Command::Undo),
        "/verbose" => no_argument(Command::Verbose),
        "/cost" => no_argument(Command::Cost),
        "/reset" => no_argument(Command::Reset),
        "/quit" | "/exit" => no_argument(Command::Quit),
        "/export" if rest.is_empty() => Err("usage: /export FILE (.csv, .json or .jsonl)".to_owned()),
        "/export" => Ok(Command::Export(rest.to_owned())),
        "/save" if rest.is_empty() => Err("usage: /save NAME [--freeze] [--replace]".to_owned()),
        "/save" => Ok(Command::Save(rest.to_owned())),
        "/saved" => no_argument(Command::Saved),
        "/show" => Ok(Command::Show(rest.to_owned())),
        "/overlap" => Ok(Command::Overlap(rest.to_owned())),
        "/lookalike" => Ok(Command::Lookalike(rest.to_owned())),
        "/actions" => Ok(Command::Actions(rest.to_owned())),
        "/draft" if rest.is_empty() => {
            Err("usage: /draft FILE [--offer TEXT] [--per member|segment|action] [--limit N]".to_owned())
        }
        "/draft" => Ok(Command::Draft(rest.to_owned())),
        _ => Err(format!("unknown command {name}; /help lists the commands")),
    }
}

/// Words of a slash command's arguments: split on whitespace, with double quotes around words that have spaces.
fn split_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in text.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// The words of a command that writes a file, the file allowed first without `--out` (`/export out.csv`).
fn file_first(rest: &str) -> Vec<String> {
    let mut words = split_words(rest);
    if words.first().is_some_and(|word| !word.starts_with('-')) && !words.iter().any(|w| w == "--out") {
        words.insert(0, "--out".to_owned());
    }
    words
}

/// Shows a command's error on its own line, and the REPL goes on; a closed stdout ends it.
fn report(result: Result<()>) -> Result<()> {
    match result {
        Err(error) if !error.is::<terminal::StdoutClosed>() => {
            outln!("error: {}", terminal::safe(&exit::one_line(&error)))
        }
        other => other,
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

    #[test]
    fn parses_commands() {
        assert_eq!(parse_command("/help"), Ok(Command::Help));
        assert_eq!(parse_command("/quit"), Ok(Command::Quit));
        assert_eq!(
            parse_command("/export \"out/a b.csv\" --holdout 10"),
            Ok(Command::Export("\"out/a b.csv\" --holdout 10".to_owned()))
        );
        assert_eq!(split_words("\"out/a b.csv\" --holdout 10"), ["out/a b.csv", "--holdout", "10"]);
        assert_eq!(parse_command("/export"), Err("usage: /export FILE (.csv, .json or .jsonl)".to_owned()));
        assert_eq!(parse_command("/undo"), Ok(Command::Undo));
        assert_eq!(parse_command("/audience"), Ok(Command::Audience));
        assert_eq!(parse_command("/explain"), Ok(Command::Explain));
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
    fn tool_summaries_are_one_sentence() {
        for tool in registry::TOOLS {
            let summary = first_sentence(tool.text());
            assert!(summary.ends_with('.') && summary.len() > 30, "{}: {summary}", tool.name);
            assert_eq!(summary.matches('(').count(), summary.matches(')').count(), "{}: {summary}", tool.name);
        }
    }
}
