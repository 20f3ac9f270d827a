//! `audience ask "question" [--json]`: one question to the agent, answered on stdout.

use std::io::Read;

use anyhow::{Context, Result, bail};
use clap::Args;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde_json::Value;

use crate::Global;
use crate::agent::{AgentConfig, Answer, Session, open_stores};

const EXIT_CODES: &str = "\
Exit codes:
  0  answered
  1  other failure (bad arguments, unreadable stdin)
  2  configuration error (no provider key, bad AUDIENCE_* value); the message names the variable to set
  3  LLM provider error (unreachable, rejected, rate limited after retries, or the agent ran out of turns)
  4  tool or database error (database down, no data ingested, vector index unusable)

Provider settings: AUDIENCE_PROVIDER (openrouter, openai, groq, gemini, ollama, openai-compatible),
AUDIENCE_MODEL, AUDIENCE_BASE_URL, AUDIENCE_API_KEY (or the provider's own key variable),
AUDIENCE_TIMEOUT_SECS, AUDIENCE_MAX_RETRIES, AUDIENCE_MAX_TURNS; also read from <data_dir>/config.toml.";

#[derive(Args, Debug)]
#[command(after_help = EXIT_CODES)]
pub struct AskArgs {
    /// The question, in plain words; `-` reads it from stdin.
    question: String,
    /// Print one JSON document on stdout: {answer, audience, steps, usage}. Logs and the usage line go to stderr.
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
    let question = question.trim();
    if question.is_empty() {
        bail!("the question is empty");
    }
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
        println!("{}", serde_json::to_string_pretty(&answer)?);
        eprintln!("{}", answer.usage.summary_line());
    } else {
        print_answer(&answer);
    }
    Ok(())
}

fn print_answer(answer: &Answer) {
    println!("{}", answer.text.trim());
    if let Some(audience) = &answer.audience
        && !audience.customers.is_empty()
    {
        println!("\nAudience: {} customers (top {} shown)", audience.size, audience.customers.len());
        println!("{}", customer_table(&audience.customers));
    }
    println!("\n{}", answer.usage.summary_line());
}

/// The ranked customers as a table; columns are the fields the discovery tools return.
pub fn customer_table(customers: &[Value]) -> Table {
    const COLUMNS: [&str; 6] = ["customer_id", "name", "country", "segment", "total_spent", "score"];
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header(COLUMNS);
    for customer in customers {
        table.add_row(COLUMNS.map(|column| match customer.get(column) {
            Some(Value::String(text)) => text.clone(),
            Some(Value::Number(number)) if column == "score" => {
                number.as_f64().map_or_else(|| number.to_string(), |score| format!("{score:.3}"))
            }
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        }));
    }
    table
}
