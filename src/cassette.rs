//! Records an LLM provider's replies to files and serves them again, so `audience eval --replay` runs the golden
//! set through the real agent, tools, PostgreSQL and vector index without a model, deterministically.
//!
//! A cassette is a directory with one JSON file per case: the requests the agent sent and the replies the provider
//! gave, in order. Replay serves reply *n* to request *n* and checks that the conversation the agent sent matches
//! the recorded one (the system prompt and tool schemas aside): a reply is only meaningful as the answer to the
//! request it was recorded for, so a diverging run fails the case instead of scoring a stale answer.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Whether the cassette stores what the provider says or plays it back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Record,
    Replay,
}

/// One request and the provider's reply to it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Exchange {
    request: Value,
    response: Value,
}

/// What a recording was made with, kept beside the cases.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recording {
    pub provider: String,
    pub model: String,
    /// SHA-256 of the system prompt and tool schemas of the first request: a replay with other prompts still runs
    /// (its answers are the recorded model's answers to the recorded prompts) but says so.
    pub prompt_sha256: String,
    pub recorded_at: String,
}

#[derive(Debug)]
struct State {
    mode: Mode,
    dir: PathBuf,
    case: Option<String>,
    exchanges: Vec<Exchange>,
    next: usize,
    prompt_sha256: Option<String>,
}

/// A shared cassette: the eval runner chooses the case, the HTTP transport records or replays its calls.
#[derive(Clone, Debug)]
pub struct Cassette {
    state: Arc<Mutex<State>>,
}

const RECORDING_FILE: &str = "recording.json";

impl Cassette {
    /// A cassette in `dir` (created when recording).
    pub fn new(mode: Mode, dir: &Path) -> Result<Self> {
        if mode == Mode::Record {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        } else if !dir.join(RECORDING_FILE).is_file() {
            bail!("{} holds no recording (no {RECORDING_FILE}); record one with --record", dir.display());
        }
        let state =
            State { mode, dir: dir.to_owned(), case: None, exchanges: Vec::new(), next: 0, prompt_sha256: None };
        Ok(Self { state: Arc::new(Mutex::new(state)) })
    }

    pub fn mode(&self) -> Mode {
        self.lock().mode
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What the recording in the directory was made with.
    pub fn recording(&self) -> Result<Recording> {
        let path = self.lock().dir.join(RECORDING_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not a recording", path.display()))
    }

    /// Whether case `id` was recorded (a recording always "has" the case it is about to make).
    pub fn has_case(&self, id: &str) -> bool {
        let state = self.lock();
        state.mode == Mode::Record || case_path(&state.dir, id).is_file()
    }

    /// Starts case `id`: a recording starts empty, a replay loads the case's exchanges.
    pub fn start_case(&self, id: &str) -> Result<()> {
        let mut state = self.lock();
        let exchanges = match state.mode {
            Mode::Record => Vec::new(),
            Mode::Replay => {
                let path = case_path(&state.dir, id);
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("case {id} was not recorded ({} is missing)", path.display()))?;
                serde_json::from_str(&text).with_context(|| format!("{} is not a recorded case", path.display()))?
            }
        };
        state.case = Some(id.to_owned());
        state.exchanges = exchanges;
        state.next = 0;
        Ok(())
    }

    /// Ends the current case; a recording writes its file.
    pub fn finish_case(&self) -> Result<()> {
        let mut state = self.lock();
        let Some(id) = state.case.take() else { return Ok(()) };
        if state.mode == Mode::Record {
            let path = case_path(&state.dir, &id);
            let text = serde_json::to_string_pretty(&state.exchanges)?;
            std::fs::write(&path, text + "\n").with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(())
    }

    /// Writes what the recording was made with (after the cases, so the prompt hash is known).
    pub fn write_recording(&self, provider: &str, model: &str) -> Result<()> {
        let state = self.lock();
        let recording = Recording {
            provider: provider.to_owned(),
            model: model.to_owned(),
            prompt_sha256: state.prompt_sha256.clone().unwrap_or_default(),
            recorded_at: chrono::Utc::now().format("%Y-%m-%d").to_string(),
        };
        let path = state.dir.join(RECORDING_FILE);
        std::fs::write(&path, serde_json::to_string_pretty(&recording)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// The prompt hash of the requests seen so far in this run (replay: to compare with the recording's).
    pub fn prompt_sha256(&self) -> Option<String> {
        self.lock().prompt_sha256.clone()
    }

    /// Replay: the recorded reply to `request`, or why there is none.
    pub fn replay(&self, request: &Bytes) -> Result<Bytes> {
        let request: Value = serde_json::from_slice(request).context("the agent sent a request that is not JSON")?;
        let mut state = self.lock();
        state.note_prompt(&request);
        let case = state.case.clone().unwrap_or_default();
        let index = state.next;
        let Some(exchange) = state.exchanges.get(index) else {
            bail!("case {case}: the agent made more model calls than were recorded ({index}); re-record the case");
        };
        if conversation(&exchange.request) != conversation(&request) {
            bail!(
                "case {case}: model call {} differs from the recording (the agent sent another conversation, e.g. \
                 other tool results); re-record the case",
                index + 1
            );
        }
        let response = serde_json::to_vec(&exchange.response)?;
        state.next += 1;
        Ok(Bytes::from(response))
    }

    /// Record: keeps `request` and the provider's `response`.
    pub fn record(&self, request: &Bytes, response: &Bytes) {
        let (Ok(request), Ok(response)) =
            (serde_json::from_slice::<Value>(request), serde_json::from_slice::<Value>(response))
        else {
            tracing::warn!("an LLM exchange that is not JSON was not recorded");
            return;
        };
        let mut state = self.lock();
        state.note_prompt(&request);
        state.exchanges.push(Exchange { request, response });
    }
}

impl State {
    fn note_prompt(&mut self, request: &Value) {
        if self.prompt_sha256.is_none() {
            let system: Vec<&Value> = messages(request).iter().filter(|m| m["role"] == "system").collect();
            let text = serde_json::to_string(&(system, &request["tools"])).unwrap_or_default();
            self.prompt_sha256 = Some(hex::encode(Sha256::digest(text.as_bytes())));
        }
    }
}

fn case_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.json"))
}

fn messages(request: &Value) -> &[Value] {
    request["messages"].as_array().map_or(&[], Vec::as_slice)
}

/// The conversation of a request without its system prompt: what the model was asked and what the tools said.
fn conversation(request: &Value) -> Vec<Value> {
    messages(request).iter().filter(|m| m["role"] != "system").cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(user: &str) -> Bytes {
        Bytes::from(
            json!({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": user}], "tools": []})
                .to_string(),
        )
    }

    #[test]
    fn replays_what_was_recorded_and_refuses_another_conversation() {
        let dir = tempfile::tempdir().unwrap();
        let recorder = Cassette::new(Mode::Record, dir.path()).unwrap();
        recorder.start_case("c1").unwrap();
        recorder.record(&request("hi"), &Bytes::from_static(br#"{"choices": [1]}"#));
        recorder.finish_case().unwrap();
        recorder.write_recording("local", "m").unwrap();

        let player = Cassette::new(Mode::Replay, dir.path()).unwrap();
        assert_eq!(player.recording().unwrap().model, "m");
        player.start_case("c1").unwrap();
        assert_eq!(player.replay(&request("hi")).unwrap(), Bytes::from_static(br#"{"choices":[1]}"#));
        let more = player.replay(&request("hi")).unwrap_err().to_string();
        assert!(more.contains("more model calls than were recorded"), "{more}");

        player.start_case("c1").unwrap();
        let other = player.replay(&request("bye")).unwrap_err().to_string();
        assert!(other.contains("differs from the recording"), "{other}");
        assert!(player.start_case("c2").unwrap_err().to_string().contains("was not recorded"));
    }

    #[test]
    fn a_directory_without_a_recording_cannot_be_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let error = Cassette::new(Mode::Replay, dir.path()).unwrap_err().to_string();
        assert!(error.contains("no recording"), "{error}");
    }
}
