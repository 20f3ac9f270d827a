//! `audience ask "question" [--json]`: one question to the agent, answered on stdout.

use std::io::Read;

use anyhow::{Context, Result, bail};
use clap::Args;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde_json::Value;

use crate::Global;
use crate::agent::{AgentConfig, Answer, Session, open_stores};
use crate::exit::{FailureExt, FailureKind};
use crate::terminal;

const EXIT_CODES: &str = "\
Exit codes:
  0  answered
  1  other failure (unreadable stdin)
  2  usage or configuration error (bad arguments, an empty or oversized question, no provider key, a bad
     AUDIENCE_* or DATABASE_URL value); the message names what to change
  3  LLM provider error (unreachable, rejected, rate limited after retries, empty answers, out of turns)
  4  tool or store error (database down, no data ingested, vector index missing or outdated)

Provider settings: AUDIENCE_PROVIDER (openrouter, openai, groq, gemini, ollama, openai-compatible),
AUDIENCE_MODEL, AUDIENCE_BASE_URL, AUDIENCE_API_KEY (or the provider's own key variable),
AUDIENCE_TIMEOUT_SECS, AUDIENCE_MAX_RETRIES, AUDIENCE_MAX_TURNS; also read from <data_dir>/config.toml.";

#[derive(Args, Debug)]
#[command(after_help = EXIT_CODES)]
pub struct AskArgs {
    /// The question, in plain words; `-` reads it from stdin.
    question: String,
    /// Print one JSON document on stdout: {answer, audience, steps, usage}. Logs and the usage line go to stderr
    /// in both modes, so stdout holds only the answer.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: AskArgs, global: &Global) -> Result<()> {
    let question = if args.question == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("cannot read the question from stdin")?;
        text
    } else {
        args.question
    };
    let question = check_question(&question).kind(FailureKind::Usage)?;
    // Configuration first: a missing key is reported even when the database is down.
    let config = AgentConfig::load(&global.data_dir)?;
    let stores = open_stores(&global.data_dir).await?;
    let mut session = Session::new(config, stores, global.verbose).await?;
    let answer = match session.ask(question).await {
        Ok(answer) => answer,
        Err(error) => {
            if let Some(usage) = session.last_usage().filter(|usage| usage.llm_calls > 0) {
                eprintln!("{}", usage.summary_line());
            }
            return Err(error);
        }
    };
    if args.json {
        println!("{}", terminal::safe_json(&answer)?);
    } else {
        print_answer(&answer);
    }
    eprintln!("{}", answer.usage.summary_line());
    Ok(())
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

fn print_answer(answer: &Answer) {
    println!("{}", terminal::safe(answer.text.trim()));
    if let Some(audience) = &answer.audience
        && !audience.customers.is_empty()
    {
        println!("\nAudience: {} customers (top {} shown)", audience.size, audience.customers.len());
        println!("{}", customer_table(&audience.customers));
    }
}

/// The ranked customers as a table; columns are the fields the discovery tools return.
pub fn customer_table(customers: &[Value]) -> Table {
    const COLUMNS: [&str; 6] = ["customer_id", "name", "country", "segment", "total_spent", "score"];
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header(COLUMNS);
    for customer in customers {
        table.add_row(COLUMNS.map(|column| match customer.get(column) {
            Some(Value::String(text)) => terminal::safe(text).into_owned(),
            Some(Value::Number(number)) if column == "score" => {
                number.as_f64().map_or_else(|| number.to_string(), |score| format!("{score:.3}"))
            }
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        }));
    }
    table
}
