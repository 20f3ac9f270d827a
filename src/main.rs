//! `audience`: the command-line entry point. Parses arguments, loads `.env`, dispatches to `cli`, and maps errors to
//! exit codes.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use audience::exit;
use audience::open_stores::open_stores;
use clap::{Parser, Subcommand};

use audience::terminal;
use cli::{ask, audiences, bench, campaign_commands, data_commands, eval, metrics, repl, segments, tool_command};

/// Agentic audience discovery over customer data in PostgreSQL and a vector index.
#[derive(Parser, Debug)]
#[command(name = "audience", version, about)]
struct Cli {
    /// Directory for the embedded vector index, the usage ledger and REPL history.
    #[arg(long, global = true, env = "AUDIENCE_DATA_DIR")]
    data_dir: Option<PathBuf>,

    /// Show each agent step (thought, action, SQL, observation) as it happens, and debug logs.
    #[arg(long, short, global = true)]
    verbose: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write a deterministic synthetic CRM + clickstream sample (customers.csv, events.csv, labels.csv).
    Generate(data_commands::GenerateArgs),
    /// Validate and load customers and events, compute profiles, and embed new or changed profiles.
    #[command(after_help = "File formats, columns, event types, the spend rule and example mappings: the README's \
                            \"Ingest\" section, and examples/mappings/.\n\
                            Try a new file or mapping first with --check: it changes nothing.")]
    Ingest(data_commands::IngestArgs),
    /// Fit the purchase and spend models again on the data already ingested and write the predicted profile fields
    /// (p_alive, expected_purchases, expected_avg_spend, clv_12m) as a new data version.
    Fit(data_commands::FitArgs),
    /// Re-embed every profile and rewrite the vector index (e.g. after a model change).
    Reindex,
    /// Set up a working demo: generate the 500-customer sample, ingest it, and run a first query with the tools.
    Demo(data_commands::DemoArgs),
    /// Ask the agent one question and print the answer (with --json: one JSON document on stdout).
    Ask(ask::AskArgs),
    /// Compute measures of the catalogue (revenue, buyers, rates, ...), optionally by a dimension, without the LLM.
    Metrics(metrics::MetricsCommandArgs),
    /// Run one agent tool directly, without the LLM loop, and print its JSON output.
    Tool(tool_command::ToolArgs),
    /// Start an interactive session: follow-up questions refine the answer, /help lists commands.
    Chat,
    /// Save the last answer's audience (or --from FILE) under a name; --freeze also keeps its members.
    Save(audiences::SaveArgs),
    /// List the saved audiences: size when saved, size now, when.
    List(audiences::ListArgs),
    /// Show a saved audience: definition, explanation, breakdown now, and how its size drifted.
    Show(audiences::NameArgs),
    /// Remove a saved audience.
    Rm(audiences::NameArgs),
    /// Compare two saved audiences: both, only A, only B, Jaccard.
    Overlap(audiences::OverlapArgs),
    /// Write every member of a saved audience to a file, optionally with a seeded A/B holdout and masked PII.
    Export(audiences::ExportArgs),
    /// Each member's next-best action from the rule table (prompts/actions.toml or --rules FILE), with counts.
    Actions(campaign_commands::ActionsArgs),
    /// The lift of a campaign: treatment against the holdout's control group over purchases after a date.
    Measure(campaign_commands::MeasureArgs),
    /// E-mail drafts for an audience (per member, segment or action), checked in Rust, control group held out.
    Draft(campaign_commands::DraftArgs),
    /// Find the customers most like a saved audience (or given ids) who are not in it.
    Lookalike(audiences::LookalikeCommandArgs),
    /// Segment the customers with K-means (k chosen by silhouette) and say what sets each segment apart.
    Segments(segments::SegmentsArgs),
    /// Measure ingest, embedding, tool latency and cold start on this machine (Markdown tables on stdout).
    Bench(bench::BenchArgs),
    /// Score the agent on the golden set (tests/golden): per category, calibration, tokens, cost, latency.
    Eval(eval::EvalArgs),
}

/// Settings every command shares.
pub struct Global {
    pub data_dir: PathBuf,
    pub verbose: bool,
}

fn main() -> ExitCode {
    let _ = dotenvy::dotenv();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help and version go to stdout and succeed; a usage error is exit 2, like every configuration error.
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::from(exit::FailureKind::Usage.code())
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_logging(cli.verbose);
    let global =
        Global { data_dir: cli.data_dir.unwrap_or_else(audience_tools::paths::data_dir), verbose: cli.verbose };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, &global)) {
        Ok(code) => code,
        // `audience … | head -1`: the reader has what it wanted.
        Err(error) if error.is::<terminal::StdoutClosed>() => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", terminal::safe(&exit::one_line(&error)));
            exit::code_for(&error)
        }
    }
}

async fn run(command: Command, global: &Global) -> anyhow::Result<ExitCode> {
    match command {
        Command::Generate(args) => data_commands::generate(args)?,
        Command::Ingest(args) => data_commands::ingest(args, global).await?,
        Command::Fit(args) => data_commands::fit(args).await?,
        Command::Reindex => data_commands::reindex(global).await?,
        Command::Demo(args) => data_commands::demo(args, global).await?,
        Command::Ask(args) => return ask::run(args, global).await,
        Command::Metrics(args) => metrics::run(args, global).await?,
        Command::Tool(args) => tool_command::run(args, global).await?,
        Command::Chat => repl::run(global).await?,
        Command::Bench(args) => bench::run(args, global).await?,
        Command::Eval(args) => eval::run(args, global).await?,
        Command::Save(args) => {
            audiences::save(&open_stores(&global.data_dir).await?, args, None, &global.data_dir).await?
        }
        Command::List(args) => audiences::list(&open_stores(&global.data_dir).await?, args).await?,
        Command::Show(args) => audiences::show(&open_stores(&global.data_dir).await?, args).await?,
        Command::Rm(args) => audiences::remove(&open_stores(&global.data_dir).await?, args).await?,
        Command::Overlap(args) => audiences::overlap(&open_stores(&global.data_dir).await?, args).await?,
        Command::Export(args) => audiences::export(&open_stores(&global.data_dir).await?, args, None).await?,
        Command::Actions(args) => campaign_commands::actions(&open_stores(&global.data_dir).await?, args, None).await?,
        Command::Measure(args) => campaign_commands::measure(&open_stores(&global.data_dir).await?, args).await?,
        Command::Draft(args) => {
            campaign_commands::draft(&open_stores(&global.data_dir).await?, args, &global.data_dir, None)
                .await
                .map(drop)?
        }
        Command::Segments(args) => segments::run(&open_stores(&global.data_dir).await?, args, &global.data_dir).await?,
        Command::Lookalike(args) => {
            let session = audience_tools::audience::AudienceSession::default();
            audiences::lookalike(&open_stores(&global.data_dir).await?, args, &session).await?
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Logs go to stderr so that `--json` output on stdout stays one clean document.
fn init_logging(verbose: bool) {
    // qdrant-edge warns at every open about feature flags and mmap probing that do not apply to an
    // embedded shard; its real failures arrive as errors, so its logs start at `error`.
    let default = if verbose { "info,audience=debug,qdrant_edge=error" } else { "warn,qdrant_edge=error" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("AUDIENCE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(terminal::colour_stderr())
        .without_time()
        .try_init();
}
