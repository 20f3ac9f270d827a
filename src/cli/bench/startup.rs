//! `audience bench startup`: cold start as a user meets it. The time from launching `audience chat` on a
//! terminal until its prompt is drawn, and the wall time of direct tool calls, each a new process: one that
//! needs no model (`sql_data_retriever`) and one that loads the model to embed its intent (`find_audience` ranked by an intent).

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;

use super::stats::{Samples, Table, thousands};
use super::{Bench, Dataset, output_of};

/// What the REPL prints when it is ready for a question.
const PROMPT: &str = "audience> ";
/// Longest wait for the prompt before the run counts as failed.
const PROMPT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Args, Debug)]
pub struct StartupBenchArgs {
    /// Dataset size (customers) whose index the commands open; ingested first if needed.
    #[arg(long, default_value_t = 100_000)]
    customers: u64,
    /// Mean events per customer of the dataset.
    #[arg(long, default_value_t = 50)]
    events_per_customer: u32,
    /// Repetitions of every figure.
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

impl StartupBenchArgs {
    pub fn smoke(customers: u64) -> Self {
        Self { customers, events_per_customer: 20, runs: 1 }
    }
}

pub async fn run(bench: &Bench, args: &StartupBenchArgs) -> Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let dataset = bench.dataset(args.customers, args.events_per_customer)?;
    bench.ensure_ingested(&dataset).await?;
    let mut prompt = Samples::default();
    let mut retriever = Samples::default();
    let mut semantic = Samples::default();
    for _ in 0..args.runs {
        prompt.push(time_to_prompt(bench.chat_command(&dataset))?);
        retriever.push(time_tool(bench, &dataset, "sql_data_retriever", r#"{"customer_ids": [1, 2, 3]}"#)?);
        semantic.push(time_tool(bench, &dataset, "find_audience", r#"{"intent": "luxury watches", "limit": 5}"#)?);
    }
    let mut table = Table::new(["from launch to", "seconds: median (min–max)"]);
    table.row(["the REPL prompt (`audience chat` on a terminal)".to_owned(), prompt.spread(3)]);
    table.row(["a `sql_data_retriever` answer (no model)".to_owned(), retriever.spread(3)]);
    table.row(["a `find_audience` answer ranked by an intent (model load included)".to_owned(), semantic.spread(3)]);
    table.print(&format!(
        "## Cold start, index of {} customers ({} runs, each a new process)",
        thousands(dataset.customers as f64),
        args.runs
    ))?;
    Ok(())
}

impl Bench {
    /// `audience chat` for `dataset` with a provider configured (never called: nobody asks a question).
    fn chat_command(&self, dataset: &Dataset) -> Command {
        let mut command = self.command(dataset);
        command
            .arg("chat")
            .env("AUDIENCE_PROVIDER", "openai-compatible")
            .env("AUDIENCE_BASE_URL", "http://127.0.0.1:9/v1")
            .env("AUDIENCE_MODEL", "bench")
            .env("AUDIENCE_API_KEY", "bench")
            .env("TERM", "xterm");
        command
    }
}

/// Seconds of a whole `audience tool NAME --args ARGS` process.
fn time_tool(bench: &Bench, dataset: &Dataset, name: &str, args: &str) -> Result<f64> {
    let mut command = bench.command(dataset);
    command.args(["tool", name, "--args", args]);
    let start = Instant::now();
    output_of(command)?;
    Ok(start.elapsed().as_secs_f64())
}

/// Seconds from spawning `command` on a new terminal until it draws the REPL prompt; then it is told to quit.
fn time_to_prompt(mut command: Command) -> Result<f64> {
    let size = nix::pty::Winsize { ws_row: 50, ws_col: 200, ws_xpixel: 0, ws_ypixel: 0 };
    let pty = nix::pty::openpty(&size, None).context("cannot open a pseudo-terminal")?;
    let slave: OwnedFd = pty.slave;
    command.stdin(Stdio::from(slave.try_clone()?)).stdout(Stdio::from(slave.try_clone()?)).stderr(Stdio::from(slave));
    let start = Instant::now();
    let mut child = command.spawn().context("cannot start audience chat")?;
    // The parent's copies of the terminal's slave side go with `command`, so reads end when the child exits.
    drop(command);
    let mut master = std::fs::File::from(pty.master);
    let mut reader = master.try_clone()?;
    let (sender, chunks) = mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        // EIO ends the loop once the child and its terminal are gone.
        while let Ok(read @ 1..) = reader.read(&mut buffer) {
            if sender.send(buffer[..read].to_vec()).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    let elapsed = loop {
        let left = PROMPT_TIMEOUT.saturating_sub(start.elapsed());
        match chunks.recv_timeout(left) {
            Ok(chunk) => {
                seen.extend_from_slice(&chunk);
                if String::from_utf8_lossy(&seen).contains(PROMPT) {
                    break start.elapsed().as_secs_f64();
                }
            }
            Err(_) => {
                let _ = child.kill();
                bail!("audience chat showed no prompt within {PROMPT_TIMEOUT:?}: {}", String::from_utf8_lossy(&seen));
            }
        }
    };
    master.write_all(b"/quit\r")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("audience chat did not quit after /quit");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(elapsed)
}
