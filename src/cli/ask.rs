//! `audience ask "question" [--json]`: one question to the agent, answered on stdout.

use std::io::Read;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::Global;
use crate::cli::tool_command::read_definition;
use audience::agent::{AgentConfig, Answer, AnswerKind, Session};
use audience::exit::{FailureExt, FailureKind};
use audience::open_stores::open_stores;
use audience::outln;
use audience::render::{audience_summary, member_table, metrics};
use audience::terminal;

const EXIT_CODES: &str = "\
Exit codes:
  0  answered
  1  other failure (unreadable stdin)
  2  usage or configuration error (bad arguments, an empty or oversized question, no provider key, a bad
     AUDIENCE_* or DATABASE_URL value); the message names what to change
  3  LLM provider error (unreachable, rejected, rate limited after retries, empty answers, out of turns)
  4  tool or store error (database down, no data ingested, vector index missing or outdated)
  5  no answer yet: the request was ambiguous and the agent asks a clarifying question (kind
     \"clarification\" in --json); ask again with the chosen meaning

Provider settings: AUDIENCE_PROVIDER (openrouter, openai, groq, gemini, ollama, openai-compatible, local),
AUDIENCE_MODEL, AUDIENCE_BASE_URL, AUDIENCE_API_KEY (or the provider's own key variable),
AUDIENCE_TIMEOUT_SECS, AUDIENCE_MAX_RETRIES, AUDIENCE_MAX_TURNS; also read from <data_dir>/config.toml.";

#[derive(Args, Debug)]
#[command(after_help = EXIT_CODES)]
pub struct AskArgs {
    /// The question, in plain words; `-` reads it from stdin.
    question: String,
    /// Print one JSON document on stdout: {answer, audience or metrics, steps, usage} (README "ask --json"). Logs and the
    /// usage line go to stderr in both modes, so stdout holds only the answer.
    #[arg(long)]
    json: bool,
    /// Start from a saved audience definition (JSON, e.g. the `audience` of an earlier `ask --json`): the question
    /// refines it.
    #[arg(long, value_name = "FILE")]
    from: Option<std::path::PathBuf>,
}

/// The exit code of an answer that is a clarifying question (scripts must not take it as the answer).
pub const CLARIFICATION_EXIT: u8 = 5;

pub async fn run(args: AskArgs, global: &Global) -> Result<ExitCode> {
    let question = if args.question == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("cannot read the question from stdin")?;
        text
    } else {
        args.question
    };
    let question = check_question(&question).kind(FailureKind::Usage)?;
    let start_from = args.from.as_deref().map(read_definition).transpose()?;
    // Configuration first: a missing key is reported even when the database is down.
    let config = AgentConfig::load(&global.data_dir)?;
    let stores = open_stores(&global.data_dir).await?;
    let mut session = Session::new(config, stores, global.verbose).await?;
    if let Some(definition) = start_from {
        session.audience().start_from(definition);
    }
    let answer = match session.ask(question).await {
        Ok(answer) => answer,
        Err(error) => {
            if let Some(usage) = session.last_usage().filter(|usage| usage.llm_calls > 0) {
                eprintln!("{}", usage.summary_line());
            }
            return Err(error);
        }
    };
    if let Some(audience) = &answer.audience {
        crate::cli::audiences::remember_current(&global.data_dir, audience);
    }
    if args.json {
        outln!("{}", terminal::safe_json(&answer)?)?;
    } else {
        print_answer(&answer)?;
    }
    eprintln!("{}", answer.usage.summary_line());
    Ok(match answer.kind {
        AnswerKind::Answer => ExitCode::SUCCESS,
        AnswerKind::Clarification => ExitCode::from(CLARIFICATION_EXIT),
    })
}

/// The longest question accepted: a question is resent with every model call of the session, and a pasted
/// document is not a question.
pub const MAX_QUESTION_CHARS: usize = 4_000;

/// The question trimmed, or why it cannot be asked.
pub fn check_question(question: &str) -> Result<&str> {
    let question = question.trim();
    if question.is_empty() {
        bail!("the question is empty");
    }
    let chars = question.chars().count();
    if chars > MAX_QUESTION_CHARS {
        bail!("the question is {chars} characters long; ask in at most {MAX_QUESTION_CHARS}");
    }
    if question.contains('\0') {
        bail!("the question contains a NUL character");
    }
    Ok(question)
}

/// The answer's text and its audience (summary and members) or its metrics (table and chart), as the REPL and plain
/// `ask` show them.
pub fn print_answer(answer: &Answer) -> Result<()> {
    outln!("{}", terminal::safe(answer.text.trim()))?;
    if answer.kind == AnswerKind::Answer {
        let confidence = &answer.confidence;
        outln!("confidence: {} ({})", confidence.level.name(), terminal::safe(&confidence.reasons.join("; ")))?;
    }
    if let Some(audience) = &answer.audience {
        outln!("\n{}", audience_summary(audience))?;
        if !audience.members.is_empty() {
            outln!("{}", member_table(&audience.members))?;
        }
    }
    if let Some(report) = answer.metrics.as_ref().filter(|report| !report.dimensions.is_empty()) {
        if !report.rows.is_empty() {
            outln!("\n{}", metrics::table(report))?;
        }
        if let Some(chart) = metrics::chart(report) {
            outln!("\n{chart}")?;
        }
    }
    Ok(())
}
