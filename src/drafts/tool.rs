//! `draft_emails`: the agent's route to drafts of the conversation's audience. It runs the batch `audience draft`
//! runs ([`super::batch`]) on the current audience, into a file of the data directory's `drafts/` folder, and
//! returns the batch's summary, which ends the question: the program renders the answer from it. The agent offers
//! it only while the conversation has an audience (`agent_hook::offer`).
//!
//! The file is always under the data directory: its name is the model's to choose, and a name that would leave the
//! folder is refused, so that no model reply (nor an instruction stored in customer data) writes anywhere else.

use std::path::{Component, Path, PathBuf};
use std::time::Instant;

use audience_tools::audience::AudienceSession;
use audience_tools::audience::actions::ActionTable;
use audience_tools::audience::export::Members;
use audience_tools::failure::ToolFailure;
use audience_tools::registry;
use audience_tools::stores::Stores;
use audience_tools::trace::{ToolTrace, TracedTool};
use schemars::JsonSchema;
use serde::Deserialize;

use super::DraftPrompts;
use super::batch::{self, Batch, DraftSummary, Per, Writer};
use crate::campaign::Holdout;
use crate::exit::{Failure, FailureKind};
use crate::provider::ChatModel;

/// Drafts one call writes when the model gives no limit: a chat question should come back within minutes on the
/// local model (about 5 drafts a minute); the summary says how many are left.
pub const DEFAULT_LIMIT: u32 = 20;
/// The folder of the data directory the drafts files go to.
pub const DRAFTS_DIR: &str = "drafts";
/// The file written when the model names none.
const DEFAULT_FILE: &str = "drafts.csv";
/// The holdout's seed: the export's default, so that `audience export --holdout PCT` splits the same way.
const HOLDOUT_SEED: u64 = 1;

/// The arguments, as the model writes them; the schema is generated from this type.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DraftEmailsArgs {
    /// The campaign's offer in the question's words ("20% off watches until Sunday"); leave it out when the
    /// question gives none: the drafts then state no discount or price.
    #[serde(default)]
    #[schemars(length(min = 1, max = 200))]
    pub offer: Option<String>,
    /// One e-mail per member (the default), or one per segment or per next-best action.
    #[serde(default)]
    pub per: Option<Per>,
    /// At most this many drafts (default 20).
    #[serde(default)]
    #[schemars(range(min = 1, max = 1000))]
    pub limit: Option<u32>,
    /// A file name in the data directory's drafts folder, ending .csv or .jsonl (default drafts.csv).
    #[serde(default)]
    #[schemars(length(min = 5, max = 100))]
    pub file: Option<String>,
    /// The percentage of the audience kept as a control group that gets no e-mail; only when the question asks.
    #[serde(default)]
    #[schemars(range(min = 1, max = 99))]
    pub holdout: Option<f64>,
}

/// The tool: the conversation's audience, the stores, and the model and pace drafts are written with.
#[derive(Clone)]
pub struct DraftEmails {
    stores: Stores,
    audience: AudienceSession,
    model: ChatModel,
    /// The provider's name and the model id, for the usage ledger.
    provider: String,
    model_name: String,
    data_dir: PathBuf,
    concurrency: usize,
}

/// The provider a tool writes with: its model, the names the ledger records, and the requests it may have in flight.
pub struct DraftModel {
    pub model: ChatModel,
    pub provider: String,
    pub model_name: String,
    pub concurrency: usize,
}

impl DraftEmails {
    pub fn new(stores: Stores, audience: AudienceSession, with: DraftModel, data_dir: &Path) -> Self {
        Self {
            stores,
            audience,
            model: with.model,
            provider: with.provider,
            model_name: with.model_name,
            data_dir: data_dir.to_owned(),
            concurrency: with.concurrency,
        }
    }
}

/// The file `name` in `folder`, or why the name is refused: a plain file name (no folder of its own) ending .csv or
/// .jsonl.
fn file_in(folder: &Path, name: &str) -> Result<PathBuf, ToolFailure> {
    let path = Path::new(name.trim());
    let mut components = path.components();
    let plain = matches!(components.next(), Some(Component::Normal(_))) && components.next().is_none();
    if !plain {
        return Err(ToolFailure::correctable(format!(
            "`file` must be a file name in the drafts folder (like campaign.csv), not {name:?}"
        )));
    }
    match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("csv" | "jsonl") => Ok(folder.join(path)),
        _ => Err(ToolFailure::correctable(format!("`file` must end .csv or .jsonl, not {name:?}"))),
    }
}

/// A batch's error as the model or the host sees it: what the user may change (a usage error) is the model's to
/// correct; a store, the provider or a file that cannot be written ends the run.
fn failure(error: anyhow::Error) -> ToolFailure {
    match error.downcast_ref::<Failure>() {
        Some(Failure(FailureKind::Usage)) => ToolFailure::correctable(crate::exit::one_line(&error)),
        _ => ToolFailure::Fatal(error),
    }
}

impl TracedTool for DraftEmails {
    type Report = DraftSummary;

    async fn execute(&self, args: DraftEmailsArgs, trace: &mut ToolTrace) -> Result<DraftSummary, ToolFailure> {
        let Some(definition) = self.audience.current() else {
            return Err(ToolFailure::correctable("there is no audience yet: find one with find_audience first"));
        };
        let folder = self.data_dir.join(DRAFTS_DIR);
        let out = file_in(&folder, args.file.as_deref().unwrap_or(DEFAULT_FILE))?;
        let holdout = args.holdout.map(|percent| Holdout::new(percent, HOLDOUT_SEED)).transpose().map_err(|_| {
            ToolFailure::correctable("`holdout` is a percentage between 1 and 99, or left out for no control group")
        })?;
        let limit = args.limit.unwrap_or(DEFAULT_LIMIT);
        if limit == 0 {
            return Err(ToolFailure::correctable("`limit` is at least 1"));
        }
        std::fs::create_dir_all(&folder)
            .map_err(|error| ToolFailure::Fatal(anyhow::anyhow!("cannot create {}: {error}", folder.display())))?;
        let rules = ActionTable::defaults().map_err(|error| ToolFailure::Fatal(error.into()))?;
        let prompts =
            DraftPrompts::load(&self.data_dir.join("prompts").join(DRAFTS_DIR)).map_err(ToolFailure::Fatal)?;
        let batch = Batch {
            members: Members::Definition(&definition),
            out,
            offer: args.offer.map(|offer| offer.trim().to_owned()).filter(|offer| !offer.is_empty()),
            per: args.per.unwrap_or_default(),
            limit: Some(limit as usize),
            resume: false,
            mask_pii: false,
            holdout,
            rules: &rules,
            prompts,
        };
        let start = Instant::now();
        let prepared = batch::prepare(&self.stores, batch).await.map_err(failure)?;
        trace.time("recipients", start);
        let writer = Writer {
            model: &self.model,
            provider: &self.provider,
            model_name: &self.model_name,
            data_dir: &self.data_dir,
            concurrency: self.concurrency,
        };
        let start = Instant::now();
        let generated = prepared.generate(writer).await;
        // Timed as the model's phase, and no inner call recorded: a fatal failure here is the provider's (the
        // hook reads it so, as for sql_analytics's inner call).
        trace.time("llm", start);
        generated.map_err(failure)
    }

    fn observe(summary: &DraftSummary) -> String {
        format!(
            "{} drafts written to {}: {} accepted, {} rejected, {} held out, {} left",
            summary.drafts,
            summary.out.display(),
            summary.accepted,
            summary.rejected,
            summary.held_out,
            summary.remaining
        )
    }
}

audience_tools::traced_tool!(DraftEmails, registry::DRAFT_EMAILS, DraftEmailsArgs, |_| {
    audience_tools::vocabulary::schema_of::<DraftEmailsArgs>()
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_stays_in_the_drafts_folder() {
        let folder = Path::new("/data/drafts");
        assert_eq!(file_in(folder, "spring.csv").unwrap(), folder.join("spring.csv"));
        assert_eq!(file_in(folder, " q2.jsonl ").unwrap(), folder.join("q2.jsonl"));
        for refused in ["../escape.csv", "/etc/cron.d/x.csv", "q2/spring.csv", "spring.txt", "", "./.."] {
            assert!(file_in(folder, refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn the_schema_comes_from_the_arguments_type() {
        let schema = audience_tools::vocabulary::schema_of::<DraftEmailsArgs>();
        let mut properties: Vec<&str> = schema["properties"].as_object().unwrap().keys().map(String::as_str).collect();
        properties.sort_unstable();
        assert_eq!(properties, ["file", "holdout", "limit", "offer", "per"]);
        assert!(schema.get("required").is_none_or(|required| required.as_array().is_some_and(Vec::is_empty)));
        assert!(schema["properties"]["per"].to_string().contains("segment"), "{schema}");
        assert!(!schema.to_string().contains("$ref"), "inlined for llama.cpp");
    }
}
