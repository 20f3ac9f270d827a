//! The LLM provider: configuration from the environment (and `<data_dir>/config.toml`), and a chat model
//! whose HTTP transport retries 429 and 5xx replies with exponential backoff or the wait `Retry-After` asks for
//! (a rate limit pauses every request the model has in flight, not only the one it answered), and enforces a
//! request timeout.
//!
//! Every provider is reached through its chat-completions API (never OpenAI's Responses API): the fake
//! server in the end-to-end tests, OpenRouter, Groq, Ollama and compatible gateways all speak it.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use rig_core::DynModel;
use rig_core::completion::Usage;
use rig_core::http_client::{
    self, HttpClientExt, LazyBody, MultipartForm, Request, Response, StatusCode, StreamingResponse,
};
use rig_core::operation::Completion;
use rig_core::providers::gemini::GeminiConfig;
use rig_core::providers::ollama::OllamaConfig;
use rig_core::providers::openai::OpenAIConfig;
use rig_core::providers::openai::wire::{Dialect, GROQ, OLLAMA, OPENAI, OPENROUTER};
use rig_reqwest::ReqwestClient;

use crate::cassette::{Cassette, Mode};
use crate::exit::{FailureExt, FailureKind};

/// The chat model every part of the agent uses (the loop and the inner text-to-SQL call).
pub type ChatModel = DynModel<Completion>;

/// Longest wait we honour from a `Retry-After` header; a provider asking for more is treated as down.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// First backoff delay; doubled on each retry.
const BASE_BACKOFF: Duration = Duration::from_millis(500);
/// Cap of the exponential backoff.
const MAX_BACKOFF: Duration = Duration::from_secs(8);
const DEFAULT_TIMEOUT_SECS: u64 = 60;
/// A small model on two CPU cores takes about 30 s for a 2k-token call, several times that while other work runs.
const LOCAL_TIMEOUT_SECS: u64 = 600;
const DEFAULT_MAX_RETRIES: u32 = 3;
/// Requests a batch (`audience draft`) keeps in flight with a hosted provider unless told otherwise: enough to
/// overlap the network's latency, few enough to stay under a free tier's requests per minute.
pub const HOSTED_CONCURRENCY: usize = 4;

/// A supported provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderKind {
    OpenRouter,
    OpenAi,
    Groq,
    Gemini,
    Ollama,
    OpenAiCompatible,
    /// llama.cpp's server on this machine (see [`crate::local_llm`]).
    Local,
}

impl ProviderKind {
    pub(crate) const ALL: [ProviderKind; 7] = [
        ProviderKind::OpenRouter,
        ProviderKind::OpenAi,
        ProviderKind::Groq,
        ProviderKind::Gemini,
        ProviderKind::Ollama,
        ProviderKind::OpenAiCompatible,
        ProviderKind::Local,
    ];

    /// The value of `AUDIENCE_PROVIDER` that selects this provider.
    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::OpenRouter => "openrouter",
            ProviderKind::OpenAi => "openai",
            ProviderKind::Groq => "groq",
            ProviderKind::Gemini => "gemini",
            ProviderKind::Ollama => "ollama",
            ProviderKind::OpenAiCompatible => "openai-compatible",
            ProviderKind::Local => "local",
        }
    }

    fn parse(value: &str) -> Result<Self> {
        let value = value.trim().to_ascii_lowercase();
        Self::ALL.into_iter().find(|kind| kind.name() == value).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|kind| kind.name()).collect();
            anyhow!("AUDIENCE_PROVIDER={value:?} is not a known provider; use one of {}", names.join(", "))
        })
    }

    /// The model used when `AUDIENCE_MODEL` is not set; prompts/prices.toml prices each of these.
    pub fn default_model(self) -> &'static str {
        match self {
            ProviderKind::OpenRouter => "google/gemini-2.0-flash-001",
            ProviderKind::OpenAi | ProviderKind::OpenAiCompatible => "gpt-4o-mini",
            ProviderKind::Groq => "llama-3.3-70b-versatile",
            ProviderKind::Gemini => "gemini-2.0-flash",
            ProviderKind::Ollama => "llama3.1",
            ProviderKind::Local => crate::local_llm::DEFAULT_MODEL,
        }
    }

    /// The provider's own key variable, tried after `AUDIENCE_API_KEY`; `None` when no key is needed.
    pub fn key_variable(self) -> Option<&'static str> {
        match self {
            ProviderKind::OpenRouter => Some("OPENROUTER_API_KEY"),
            ProviderKind::OpenAi | ProviderKind::OpenAiCompatible => Some("OPENAI_API_KEY"),
            ProviderKind::Groq => Some("GROQ_API_KEY"),
            ProviderKind::Gemini => Some("GEMINI_API_KEY"),
            ProviderKind::Ollama | ProviderKind::Local => None,
        }
    }

    /// Requests a batch may keep in flight: the local server answers one at a time (and reuses its prompt cache
    /// only then) whatever was `asked`; Ollama, usually on this machine too, one unless asked; a hosted provider
    /// `asked` or [`HOSTED_CONCURRENCY`].
    pub fn concurrency(self, asked: Option<usize>) -> usize {
        match self {
            ProviderKind::Local => 1,
            ProviderKind::Ollama => asked.unwrap_or(1).max(1),
            _ => asked.unwrap_or(HOSTED_CONCURRENCY).max(1),
        }
    }

    /// Whether the provider offers strict tool schemas (OpenAI's structured outputs, which OpenRouter passes on
    /// to the models that support them). The local server constrains calls with a grammar instead.
    pub fn has_strict_tools(self) -> bool {
        matches!(self, ProviderKind::OpenAi | ProviderKind::OpenRouter)
    }

    /// Request fields the provider needs besides the standard ones: OpenRouter routes a request with strict
    /// tools only to providers that honour them when asked to require its parameters.
    pub fn request_params(self) -> Option<serde_json::Value> {
        (self == ProviderKind::OpenRouter).then(|| serde_json::json!({"provider": {"require_parameters": true}}))
    }

    fn dialect(self) -> &'static Dialect {
        match self {
            ProviderKind::OpenRouter => &OPENROUTER,
            ProviderKind::Groq => &GROQ,
            ProviderKind::Ollama => &OLLAMA,
            ProviderKind::OpenAi | ProviderKind::OpenAiCompatible | ProviderKind::Gemini | ProviderKind::Local => {
                &OPENAI
            }
        }
    }
}

/// A credential that never appears in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl From<&str> for ApiKey {
    fn from(key: &str) -> Self {
        Self(key.to_owned())
    }
}

impl ApiKey {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

/// When and how often the transport retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (`AUDIENCE_MAX_RETRIES`, default 3).
    pub max_retries: u32,
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: DEFAULT_MAX_RETRIES,
            base_backoff: BASE_BACKOFF,
            max_backoff: MAX_BACKOFF,
            max_retry_after: MAX_RETRY_AFTER,
        }
    }
}

/// The resolved provider settings.
#[derive(Clone, Debug)]
pub struct ProviderConfig {
    pub kind: ProviderKind,
    pub model: String,
    /// Overrides the provider's URL (`AUDIENCE_BASE_URL`); required for `openai-compatible`.
    pub base_url: Option<String>,
    /// `None` only for providers that need no key (ollama).
    pub api_key: Option<ApiKey>,
    /// Per-request timeout (`AUDIENCE_TIMEOUT_SECS`).
    pub timeout: Duration,
    pub retry: RetryPolicy,
    /// Records the provider's replies, or replays recorded ones instead of calling it (`audience eval`).
    pub cassette: Option<Cassette>,
}

/// Settings from the environment, falling back to `<data_dir>/config.toml` (same keys, env wins); a command's
/// own flags (`eval --provider`) override both.
pub struct Settings {
    file: BTreeMap<String, String>,
    overrides: BTreeMap<String, String>,
}

impl Settings {
    pub fn load(data_dir: &Path) -> Result<Self> {
        let path = data_dir.join("config.toml");
        let file = match std::fs::read_to_string(&path) {
            Ok(text) => parse_config_file(&text).with_context(|| format!("invalid {}", path.display()))?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(error) => return Err(error).with_context(|| format!("cannot read {}", path.display())),
        };
        Ok(Self { file, overrides: BTreeMap::new() })
    }

    pub fn get(&self, name: &str) -> Option<String> {
        if let Some(value) = self.overrides.get(name) {
            return Some(value.trim().to_owned());
        }
        let from_env = std::env::var(name).ok().filter(|value| !value.trim().is_empty());
        from_env.or_else(|| self.file.get(name).cloned()).map(|value| value.trim().to_owned())
    }

    fn number(&self, name: &str, default: u64) -> Result<u64> {
        match self.get(name) {
            None => Ok(default),
            Some(value) => value.parse().map_err(|_| anyhow!("{name}={value:?} is not a whole number")),
        }
    }
}

/// The config file is a flat table of the environment variable names, e.g. `AUDIENCE_PROVIDER = "groq"`.
fn parse_config_file(text: &str) -> Result<BTreeMap<String, String>> {
    let table: toml::Table = toml::from_str(text)?;
    table
        .into_iter()
        .map(|(key, value)| {
            let value = match value {
                toml::Value::String(text) => text,
                toml::Value::Integer(number) => number.to_string(),
                other => bail!("{key} must be a string or a number, not {}", other.type_str()),
            };
            Ok((key, value))
        })
        .collect()
}

impl ProviderConfig {
    /// Whether the provider constrains tool calls to their schema (llama-server does), so that a text reply where
    /// a call was required means its grammar failed. A replay answers as the provider it was recorded from.
    pub fn constrains_calls(&self) -> bool {
        let recorded = self.cassette.as_ref().and_then(|cassette| cassette.recording().ok());
        match recorded {
            Some(recording) if self.cassette.as_ref().is_some_and(|c| c.mode() == Mode::Replay) => {
                ProviderKind::parse(&recording.provider).is_ok_and(|kind| kind == ProviderKind::Local)
            }
            _ => self.kind == ProviderKind::Local,
        }
    }

    /// Reads the provider settings. A missing key or an unusable value is a configuration error (exit 2)
    /// naming the variable to set.
    pub fn load(data_dir: &Path) -> Result<Self> {
        Self::load_with(data_dir, BTreeMap::new())
    }

    /// [`Self::load`] with some settings given by the command (they win over the environment and the file).
    pub fn load_with(data_dir: &Path, overrides: BTreeMap<String, String>) -> Result<Self> {
        Self::resolve(data_dir, overrides).kind(FailureKind::Config)
    }

    fn resolve(data_dir: &Path, overrides: BTreeMap<String, String>) -> Result<Self> {
        let mut settings = Settings::load(data_dir)?;
        settings.overrides = overrides;
        let kind = match settings.get("AUDIENCE_PROVIDER") {
            Some(value) => ProviderKind::parse(&value)?,
            // Nothing configured: the local model when it is installed, so customer data stays on the machine
            // and a fresh install answers without an account anywhere.
            None if settings.get("AUDIENCE_API_KEY").is_none()
                && ProviderKind::OpenRouter.key_variable().and_then(|v| settings.get(v)).is_none()
                && crate::local_llm::installed() =>
            {
                eprintln!("note: no LLM provider is configured; using the local model (AUDIENCE_PROVIDER=local)");
                ProviderKind::Local
            }
            None => ProviderKind::OpenRouter,
        };
        let model = settings.get("AUDIENCE_MODEL").unwrap_or_else(|| kind.default_model().to_owned());
        let base_url = settings
            .get("AUDIENCE_BASE_URL")
            .or_else(|| (kind == ProviderKind::Local).then(|| crate::local_llm::DEFAULT_BASE_URL.to_owned()));
        if kind == ProviderKind::OpenAiCompatible && base_url.is_none() {
            bail!(
                "AUDIENCE_PROVIDER=openai-compatible needs AUDIENCE_BASE_URL (e.g. http://127.0.0.1:8000/v1); set it"
            );
        }
        let api_key = settings.get("AUDIENCE_API_KEY").or_else(|| kind.key_variable().and_then(|v| settings.get(v)));
        let api_key = match (api_key, kind.key_variable()) {
            (Some(key), _) => Some(ApiKey(key)),
            (None, None) => None,
            (None, Some(variable)) => bail!(
                "no LLM provider key configured for provider {}: set AUDIENCE_API_KEY (or {variable}), \
                 or choose another provider with AUDIENCE_PROVIDER",
                kind.name()
            ),
        };
        let default_timeout = if kind == ProviderKind::Local { LOCAL_TIMEOUT_SECS } else { DEFAULT_TIMEOUT_SECS };
        let timeout_secs = settings.number("AUDIENCE_TIMEOUT_SECS", default_timeout)?;
        if timeout_secs == 0 {
            bail!("AUDIENCE_TIMEOUT_SECS must be at least 1");
        }
        let max_retries = settings.number("AUDIENCE_MAX_RETRIES", u64::from(DEFAULT_MAX_RETRIES))?;
        let max_retries = u32::try_from(max_retries).map_err(|_| anyhow!("AUDIENCE_MAX_RETRIES is too large"))?;
        Ok(Self {
            kind,
            model,
            base_url,
            api_key,
            timeout: Duration::from_secs(timeout_secs),
            retry: RetryPolicy { max_retries, ..RetryPolicy::default() },
            cassette: None,
        })
    }

    /// Builds the chat model on a retrying, time-limited transport.
    pub fn chat_model(&self) -> Result<ChatModel> {
        self.model_on(RetryingHttp::new(self.timeout, self.retry).kind(FailureKind::Config)?)
    }

    /// The agent's chat model, and the usage its provider reports for each tool-offering call, read off the
    /// transport: a run that ends in an error keeps those counts for the ledger.
    pub fn agent_model(&self) -> Result<(ChatModel, ReportedUsage)> {
        let reported = ReportedUsage::default();
        let mut http = RetryingHttp::new(self.timeout, self.retry).kind(FailureKind::Config)?;
        http.reported = Some(reported.clone());
        Ok((self.model_on(http)?, reported))
    }

    fn model_on(&self, mut http: RetryingHttp) -> Result<ChatModel> {
        http.cassette = self.cassette.clone();
        let key = self.api_key.as_ref().map(|key| key.expose().to_owned()).unwrap_or_default();
        let model = match self.kind {
            ProviderKind::Gemini => {
                let mut config = GeminiConfig::new(key);
                if let Some(url) = &self.base_url {
                    config = config.with_base_url(url.clone());
                }
                config.connect(http).completion(self.model.clone()).erase()
            }
            ProviderKind::Ollama => {
                let mut config = OllamaConfig::new();
                if let Some(url) = &self.base_url {
                    config = config.with_base_url(url);
                }
                if !key.is_empty() {
                    config = config.with_api_key(key);
                }
                config.connect(http).completion(self.model.clone()).erase()
            }
            kind => {
                let mut config = OpenAIConfig::with_key(kind.dialect(), key);
                if let Some(url) = &self.base_url {
                    config = config.with_base_url(url.clone());
                }
                let mut model = config.connect(http).chat(self.model.clone());
                if kind.has_strict_tools() {
                    // The provider then holds every call to its tool's schema; rig rewrites the schemas into the
                    // strict subset (every property required, optional ones nullable, `oneOf` as `anyOf`).
                    model.wire = model.wire.with_strict_tools();
                }
                model.erase()
            }
        };
        Ok(model)
    }

    /// Removes the API key from a message before it is printed (some providers put it in URLs).
    pub fn redact(&self, message: &str) -> String {
        match &self.api_key {
            Some(key) if !key.expose().is_empty() => message.replace(key.expose(), "***"),
            _ => message.to_owned(),
        }
    }
}

/// An HTTP transport that retries 429 and 5xx replies: exponential backoff, or the reply's `Retry-After` (seconds
/// or an HTTP date) when present, capped. A 429 also pauses every other request of the transport (its clones
/// share the pause) until the wait is over: a rate limit is the account's, and requests sent into it would only
/// be refused again. Connection failures and timeouts are not retried: they would only multiply the wait before
/// the same error.
#[derive(Clone, Debug)]
pub struct RetryingHttp {
    inner: ReqwestClient,
    policy: RetryPolicy,
    pause: Pause,
    /// The request timeout, named in the error when it is reached.
    timeout: Duration,
    cassette: Option<Cassette>,
    reported: Option<ReportedUsage>,
}

/// The token counts a provider reported for each agent call (a request that offers tools), in the order the replies
/// came, `Usage::new()` where a reply reported none. rig's error for an aborted run (a tool that does not exist,
/// called twice) carries no usage; without these the ledger would record estimates for calls the provider counted.
#[derive(Clone, Debug, Default)]
pub struct ReportedUsage(Arc<Mutex<Vec<Usage>>>);

impl ReportedUsage {
    /// The counts recorded since the last `take`, oldest first.
    pub fn take(&self) -> Vec<Usage> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn push(&self, usage: Usage) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).push(usage);
    }
}

/// The counters of one JSON reply: OpenAI-style `usage`, Gemini's `usageMetadata`, Ollama's top-level counters.
fn reported_usage(reply: &serde_json::Value) -> Usage {
    let count =
        |object: Option<&serde_json::Value>, key: &str| object.and_then(|o| o.get(key)).and_then(|v| v.as_u64());
    let (openai, gemini) = (reply.get("usage"), reply.get("usageMetadata"));
    let mut usage = Usage::new();
    usage.input_tokens = count(openai, "prompt_tokens")
        .or_else(|| count(gemini, "promptTokenCount"))
        .or_else(|| count(Some(reply), "prompt_eval_count"));
    usage.output_tokens = count(openai, "completion_tokens")
        .or_else(|| count(gemini, "candidatesTokenCount"))
        .or_else(|| count(Some(reply), "eval_count"));
    usage
}

impl RetryingHttp {
    pub fn new(timeout: Duration, policy: RetryPolicy) -> Result<Self> {
        let client = rig_reqwest::reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Self {
            inner: ReqwestClient::from(client),
            policy,
            pause: Pause::default(),
            timeout,
            cassette: None,
            reported: None,
        })
    }

    /// A reply's body as the agent reads it: implausible counts removed ([`scrub_usage`]), the counts of an agent
    /// call recorded, a reply without choices and a timeout while reading turned into errors that say so.
    fn reply<U: From<Bytes> + Send + 'static>(
        &self,
        agent_call: bool,
        response: Response<LazyBody<Bytes>>,
    ) -> Response<LazyBody<U>> {
        let (timeout, reported) = (self.timeout, self.reported.clone().filter(|_| agent_call));
        response.map(|body| -> LazyBody<U> {
            Box::pin(async move {
                let bytes = scrub_usage(body.await.map_err(|error| named_timeout(error, timeout))?);
                let reply = serde_json::from_slice::<serde_json::Value>(&bytes).ok();
                if let (Some(reported), Some(reply)) = (&reported, &reply) {
                    reported.push(reported_usage(reply));
                }
                if reply.as_ref().and_then(|r| r.get("choices")).and_then(|c| c.as_array()).is_some_and(Vec::is_empty) {
                    return Err(http_client::Error::Instance(
                        "the provider's reply held no answer (an empty `choices` list)".into(),
                    ));
                }
                Ok(U::from(bytes))
            })
        })
    }
}

/// A timeout reached by the transport, said as such with the setting that sets it: reqwest reports it as "error
/// sending request", which reads like a network failure.
fn named_timeout(error: http_client::Error, timeout: Duration) -> http_client::Error {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(cause) = source {
        if cause.downcast_ref::<rig_reqwest::reqwest::Error>().is_some_and(rig_reqwest::reqwest::Error::is_timeout) {
            return http_client::Error::Instance(
                format!("no reply within {} s (AUDIENCE_TIMEOUT_SECS)", timeout.as_secs()).into(),
            );
        }
        source = cause.source();
    }
    error
}

/// The time before which no request of a transport goes out, set by a rate limit and shared by its clones.
#[derive(Clone, Debug, Default)]
struct Pause(Arc<Mutex<Option<tokio::time::Instant>>>);

impl Pause {
    /// Holds every request until `until` (or a later time another rate limit set).
    fn until(&self, until: tokio::time::Instant) {
        let mut pause = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        *pause = Some(pause.map_or(until, |earlier| earlier.max(until)));
    }

    /// Waits out the pause, if one is set.
    async fn wait(&self) {
        let until = *self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(until) = until {
            tokio::time::sleep_until(until).await;
        }
    }
}

/// The wait a `Retry-After` value asks for at `now`: whole seconds, or an HTTP date (RFC 9110; one in the past is
/// no wait). `None` for a value that is neither.
fn retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    Some((date.with_timezone(&chrono::Utc) - now).to_std().unwrap_or(Duration::ZERO))
}

/// How long to wait before retrying `error`, or `None` when it must not be retried.
fn retry_delay(error: &http_client::Error, attempt: u32, policy: &RetryPolicy) -> Option<Duration> {
    let status = error.non_success_status()?;
    if status != StatusCode::TOO_MANY_REQUESTS && !status.is_server_error() {
        return None;
    }
    let retry_after = error
        .non_success_headers()
        .and_then(|headers| headers.get(http::header::RETRY_AFTER))
        .and_then(|value| value.to_str().ok())
        .and_then(|value| retry_after(value, chrono::Utc::now()));
    let backoff = policy.base_backoff.saturating_mul(2u32.saturating_pow(attempt)).min(policy.max_backoff);
    match retry_after {
        Some(wait) if wait > policy.max_retry_after => None,
        Some(wait) => Some(wait),
        None => Some(backoff),
    }
}

/// The reply with implausible token counts removed, so that they read as "not reported" (and are estimated, marked
/// as such) instead of being priced, or overflowing a sum: negative, fractional or above
/// [`crate::agent_hook::PLAUSIBLE_TOKENS_PER_CALL`]. Only the usage objects of the providers' JSON replies are
/// touched; anything that is not a JSON object with such counters is returned as it came.
fn scrub_usage(bytes: Bytes) -> Bytes {
    let Ok(serde_json::Value::Object(mut reply)) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return bytes;
    };
    let believable = |value: &serde_json::Value| {
        value.as_u64().is_some_and(|count| count <= crate::agent_hook::PLAUSIBLE_TOKENS_PER_CALL)
    };
    let mut changed = false;
    // OpenAI-style `usage`, Gemini's `usageMetadata`, and Ollama's top-level counters.
    for key in ["usage", "usageMetadata"] {
        if let Some(serde_json::Value::Object(usage)) = reply.get_mut(key) {
            let before = usage.len();
            usage.retain(|_, value| !value.is_number() || believable(value));
            changed |= usage.len() != before;
        }
    }
    for key in ["prompt_eval_count", "eval_count"] {
        if reply.get(key).is_some_and(|value| value.is_number() && !believable(value)) {
            reply.remove(key);
            changed = true;
        }
    }
    if !changed {
        return bytes;
    }
    tracing::warn!("the LLM provider reported implausible token counts; they are estimated instead");
    serde_json::to_vec(&reply).map(Bytes::from).unwrap_or(bytes)
}

/// A body that is already here.
fn ready_body(bytes: Bytes) -> LazyBody<Bytes> {
    Box::pin(async move { Ok(bytes) })
}

/// A request with the same method, URI, headers and body, for another attempt.
fn rebuild(parts: &http::request::Parts, body: &Bytes) -> Result<Request<Bytes>, http::Error> {
    let mut builder = Request::builder().method(parts.method.clone()).uri(parts.uri.clone()).version(parts.version);
    if let Some(headers) = builder.headers_mut() {
        *headers = parts.headers.clone();
    }
    builder.body(body.clone())
}

impl HttpClientExt for RetryingHttp {
    fn send<T, U>(
        &self,
        req: Request<T>,
    ) -> impl Future<Output = http_client::Result<Response<LazyBody<U>>>> + Send + 'static
    where
        T: Into<Bytes>,
        T: Send,
        U: From<Bytes>,
        U: Send + 'static,
    {
        let (parts, body) = req.into_parts();
        let body: Bytes = body.into();
        let transport = self.clone();
        let (inner, policy, cassette) = (self.inner.clone(), self.policy, self.cassette.clone());
        // Agent calls offer tools; the text-to-SQL writer's call does not.
        let agent_call = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|request| request.get("tools").and_then(|tools| tools.as_array()).map(|tools| !tools.is_empty()))
            .unwrap_or(false);
        async move {
            if let Some(cassette) = cassette.as_ref().filter(|c| c.mode() == Mode::Replay) {
                let reply = cassette.replay(&body).map_err(|e| http_client::Error::Instance(e.into()))?;
                return Ok(transport.reply(agent_call, Response::new(ready_body(reply))));
            }
            let mut attempt = 0;
            loop {
                transport.pause.wait().await;
                let request = rebuild(&parts, &body)?;
                match inner.send::<Bytes, Bytes>(request).await {
                    Err(error) if attempt < policy.max_retries => match retry_delay(&error, attempt, &policy) {
                        Some(delay) => {
                            let status = error.non_success_status();
                            tracing::warn!(
                                "LLM provider answered {}; retrying in {:.1} s",
                                status.map_or_else(String::new, |s| s.to_string()),
                                delay.as_secs_f64()
                            );
                            if status == Some(StatusCode::TOO_MANY_REQUESTS) {
                                // Every request waits with this one; the loop's first step waits it out.
                                transport.pause.until(tokio::time::Instant::now() + delay);
                            } else {
                                tokio::time::sleep(delay).await;
                            }
                            attempt += 1;
                        }
                        None => return Err(named_timeout(error, transport.timeout)),
                    },
                    Err(error) => return Err(named_timeout(error, transport.timeout)),
                    Ok(response) => {
                        let Some(cassette) = &cassette else { return Ok(transport.reply(agent_call, response)) };
                        // Recording reads the reply now, to keep it as the provider sent it.
                        let (reply_parts, reply) = response.into_parts();
                        let reply = reply.await.map_err(|error| named_timeout(error, transport.timeout))?;
                        cassette.record(&body, &reply);
                        return Ok(transport.reply(agent_call, Response::from_parts(reply_parts, ready_body(reply))));
                    }
                }
            }
        }
    }

    fn send_multipart<U>(
        &self,
        req: Request<MultipartForm>,
    ) -> impl Future<Output = http_client::Result<Response<LazyBody<U>>>> + Send + 'static
    where
        U: From<Bytes>,
        U: Send + 'static,
    {
        // Multipart forms cannot be replayed; the agent never sends them (audio/files only).
        self.inner.send_multipart(req)
    }

    fn send_streaming<T>(&self, req: Request<T>) -> impl Future<Output = http_client::Result<StreamingResponse>> + Send
    where
        T: Into<Bytes> + Send,
    {
        // The agent uses unary calls; a stream is sent once, like the bundled client does.
        self.inner.send_streaming(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rig_core::http_client::{HeaderMap, HeaderValue};

    fn status_error(status: u16, retry_after: Option<&str>) -> http_client::Error {
        let mut headers = HeaderMap::new();
        if let Some(value) = retry_after {
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from_str(value).unwrap());
        }
        http_client::Error::non_success_with_details(StatusCode::from_u16(status).unwrap(), headers, String::new())
    }

    #[test]
    fn retries_rate_limits_and_server_errors_only() {
        let policy = RetryPolicy::default();
        assert_eq!(retry_delay(&status_error(429, Some("2")), 0, &policy), Some(Duration::from_secs(2)));
        assert_eq!(retry_delay(&status_error(503, None), 0, &policy), Some(BASE_BACKOFF));
        assert_eq!(retry_delay(&status_error(500, None), 2, &policy), Some(BASE_BACKOFF * 4));
        assert_eq!(retry_delay(&status_error(500, None), 10, &policy), Some(MAX_BACKOFF));
        assert_eq!(retry_delay(&status_error(400, None), 0, &policy), None);
        assert_eq!(retry_delay(&status_error(401, None), 0, &policy), None);
        // A provider asking for a long pause is treated as unavailable rather than hanging the command.
        assert_eq!(retry_delay(&status_error(429, Some("3600")), 0, &policy), None);
        let in_five_seconds = (chrono::Utc::now() + chrono::TimeDelta::seconds(5)).to_rfc2822();
        let delay = retry_delay(&status_error(429, Some(&in_five_seconds)), 0, &policy).unwrap();
        assert!(delay > Duration::from_secs(3) && delay <= Duration::from_secs(5), "{delay:?}");
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = chrono::DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z").unwrap().with_timezone(&chrono::Utc);
        assert_eq!(retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        assert_eq!(retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now), Some(Duration::from_secs(30)));
        assert_eq!(retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now), Some(Duration::ZERO), "a past date: no wait");
        assert_eq!(retry_after("soon", now), None);
    }

    #[test]
    fn the_local_model_gets_one_request_at_a_time() {
        assert_eq!(ProviderKind::Local.concurrency(Some(8)), 1);
        assert_eq!(ProviderKind::OpenRouter.concurrency(None), HOSTED_CONCURRENCY);
        assert_eq!(ProviderKind::Groq.concurrency(Some(2)), 2);
        assert_eq!(ProviderKind::Ollama.concurrency(None), 1);
    }

    #[test]
    fn implausible_usage_counts_are_removed_and_others_kept() {
        let body = br#"{"choices":[],"usage":{"prompt_tokens":-5,"completion_tokens":9000000000000000,"total_tokens":12.5,"prompt_tokens_details":{"cached_tokens":1}}}"#;
        let scrubbed: serde_json::Value = serde_json::from_slice(&scrub_usage(Bytes::from_static(body))).unwrap();
        assert_eq!(scrubbed["usage"], serde_json::json!({"prompt_tokens_details": {"cached_tokens": 1}}));
        let fine = br#"{"usage":{"prompt_tokens":100,"completion_tokens":10}}"#;
        assert_eq!(scrub_usage(Bytes::from_static(fine)), Bytes::from_static(fine));
        assert_eq!(scrub_usage(Bytes::from_static(b"not json")), Bytes::from_static(b"not json"));
    }

    #[test]
    fn config_file_accepts_strings_and_numbers() {
        let table = parse_config_file("AUDIENCE_PROVIDER = \"groq\"\nAUDIENCE_TIMEOUT_SECS = 30\n").unwrap();
        assert_eq!(table["AUDIENCE_PROVIDER"], "groq");
        assert_eq!(table["AUDIENCE_TIMEOUT_SECS"], "30");
        assert!(parse_config_file("AUDIENCE_PROVIDER = [1]").is_err());
    }

    #[test]
    fn provider_names_round_trip() {
        for kind in ProviderKind::ALL {
            assert_eq!(ProviderKind::parse(kind.name()).unwrap(), kind);
        }
        let error = ProviderKind::parse("claude").unwrap_err().to_string();
        assert!(error.contains("openrouter, openai"), "{error}");
    }

    #[test]
    fn redacts_the_key() {
        let config = ProviderConfig {
            kind: ProviderKind::Gemini,
            model: "m".into(),
            base_url: None,
            api_key: Some(ApiKey("sekret".into())),
            timeout: Duration::from_secs(1),
            retry: RetryPolicy::default(),
            cassette: None,
        };
        assert_eq!(config.redact("GET /x?key=sekret failed"), "GET /x?key=*** failed");
        assert!(!format!("{config:?}").contains("sekret"));
    }
}
