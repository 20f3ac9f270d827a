//! The sentence embedder: all-MiniLM-L6-v2 (384-d, mean pooling) through fastembed and a
//! dynamically loaded ONNX Runtime, from local files only (see `scripts/setup-models.sh`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{Context, Result, anyhow};
use fastembed::{InitOptionsUserDefined, Pooling, TextEmbedding, TokenizerFiles, UserDefinedEmbeddingModel};
use serde::Serialize;

/// Output dimension of all-MiniLM-L6-v2.
pub const DIMENSION: usize = 384;
/// Model id recorded in usage records and the price table.
pub const MODEL_NAME: &str = "sentence-transformers/all-MiniLM-L6-v2";
/// sentence-transformers truncates this model's input at 256 word pieces; so do we.
const MAX_TOKENS: usize = 256;

const RUNTIME_FILE: &str = "libonnxruntime.so";
const MODEL_FILES: [&str; 5] =
    ["model.onnx", "tokenizer.json", "config.json", "special_tokens_map.json", "tokenizer_config.json"];

/// Embeddings of a batch of texts, and the number of model tokens that were embedded.
pub struct Embedded {
    pub vectors: Vec<Vec<f32>>,
    pub tokens: u64,
}

/// How the model uses the cores: `sessions` ONNX sessions embed different batches side by side, each with
/// `threads_per_session` intra-op threads, on batches of `batch_size` length-sorted texts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct EmbedLayout {
    pub sessions: usize,
    pub threads_per_session: usize,
    pub batch_size: usize,
}

impl EmbedLayout {
    /// The layout `audience bench embed` measured fastest: one single-threaded session per core, because at
    /// ~50-token profiles one batch is too small to keep two intra-op threads busy (they meet at every
    /// operator), while independent sessions never wait: 146 against 132 profiles/s on 2 cores; and batches of
    /// 16 length-sorted texts, which pad least (146 against 140 at 32 and 131 at 64). Figures in BENCHMARKS.md.
    pub fn for_this_machine() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Self { sessions: cores, threads_per_session: 1, batch_size: 16 }
    }
}

/// What one embedding worker produced: per batch, its index in the queue, its vectors and its token count.
type BatchResults = Vec<(usize, Vec<Vec<f32>>, u64)>;

/// A loaded model. `embed` takes `&self`; each ONNX session is behind a mutex because fastembed needs `&mut`.
pub struct Embedder {
    sessions: Vec<Mutex<TextEmbedding>>,
    layout: EmbedLayout,
}

impl Embedder {
    /// Loads the model from `dir` (normally [`crate::paths::models_dir`]) with this machine's layout.
    pub fn load(dir: &Path) -> Result<Self> {
        Self::load_with(dir, EmbedLayout::for_this_machine())
    }

    /// Loads the model with an explicit layout (benchmarks compare layouts).
    pub fn load_with(dir: &Path, layout: EmbedLayout) -> Result<Self> {
        if layout.sessions == 0 || layout.threads_per_session == 0 || layout.batch_size == 0 {
            return Err(anyhow!("invalid embedding layout {layout:?}: every count must be at least 1"));
        }
        let missing: Vec<&str> =
            std::iter::once(RUNTIME_FILE).chain(MODEL_FILES).filter(|name| !dir.join(name).is_file()).collect();
        if !missing.is_empty() {
            return Err(anyhow!(
                "embedding model files missing in {} ({}); run scripts/setup-models.sh or set AUDIENCE_MODELS_DIR",
                dir.display(),
                missing.join(", ")
            ));
        }
        init_runtime(&dir.join(RUNTIME_FILE))?;
        let read = |name: &str| std::fs::read(dir.join(name)).with_context(|| format!("cannot read {name}"));
        let tokenizer_files = TokenizerFiles {
            tokenizer_file: read("tokenizer.json")?,
            config_file: read("config.json")?,
            special_tokens_map_file: read("special_tokens_map.json")?,
            tokenizer_config_file: read("tokenizer_config.json")?,
        };
        let onnx = read("model.onnx")?;
        let sessions = (0..layout.sessions)
            .map(|_| {
                // Mean pooling is what all-MiniLM-L6-v2 was trained with; fastembed's user-defined default (CLS)
                // gives vectors with cosine ~0.56 to the true embeddings.
                let model =
                    UserDefinedEmbeddingModel::new(onnx.clone(), tokenizer_files.clone()).with_pooling(Pooling::Mean);
                let options = InitOptionsUserDefined::new()
                    .with_max_length(MAX_TOKENS)
                    .with_intra_threads(layout.threads_per_session);
                TextEmbedding::try_new_from_user_defined(model, options)
                    .map(Mutex::new)
                    .map_err(|e| anyhow!("cannot load the embedding model from {}: {e}", dir.display()))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { sessions, layout })
    }

    pub fn layout(&self) -> EmbedLayout {
        self.layout
    }

    /// Embeds `texts` in their order. Vectors are L2-normalised, so a dot product is the cosine.
    ///
    /// Texts are embedded sorted by length so each batch pads to a similar length, then put back in order.
    /// The sessions take batches from a shared queue, so a slow batch never leaves a core idle for long.
    /// Callers keep memory flat by passing at most a few thousand texts per call (fastembed keeps every
    /// batch's hidden states until it returns).
    pub fn embed(&self, texts: &[String]) -> Result<Embedded> {
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| texts[i].len());
        let sorted: Vec<&str> = order.iter().map(|&i| texts[i].as_str()).collect();
        let batches: Vec<&[&str]> = sorted.chunks(self.layout.batch_size).collect();
        let next = AtomicUsize::new(0);
        let workers = self.sessions.len().min(batches.len());
        let work = |session: &Mutex<TextEmbedding>| -> Result<BatchResults> {
            let mut model = session.lock().map_err(|_| anyhow!("embedding model poisoned by an earlier panic"))?;
            let mut done = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(batch) = batches.get(index) else { return Ok(done) };
                let mut tokens = 0u64;
                for text in *batch {
                    let encoding = model.tokenizer.encode(*text, true).map_err(|e| anyhow!("tokenizer failed: {e}"))?;
                    tokens += encoding.len() as u64;
                }
                let vectors = model.embed(batch, Some(batch.len())).map_err(|e| anyhow!("embedding failed: {e}"))?;
                done.push((index, vectors, tokens));
            }
        };
        let results: Vec<Result<BatchResults>> = if workers <= 1 {
            self.sessions.first().map(work).into_iter().collect()
        } else {
            std::thread::scope(|scope| {
                let handles: Vec<_> =
                    self.sessions[..workers].iter().map(|session| scope.spawn(|| work(session))).collect();
                handles
                    .into_iter()
                    .map(|handle| handle.join().unwrap_or_else(|_| Err(anyhow!("an embedding thread panicked"))))
                    .collect()
            })
        };
        let mut by_batch: Vec<Vec<Vec<f32>>> = vec![Vec::new(); batches.len()];
        let mut tokens = 0u64;
        for result in results {
            for (index, vectors, batch_tokens) in result? {
                by_batch[index] = vectors;
                tokens += batch_tokens;
            }
        }
        let mut vectors = vec![Vec::new(); texts.len()];
        for (vector, &index) in by_batch.into_iter().flatten().zip(&order) {
            vectors[index] = vector;
        }
        Ok(Embedded { vectors, tokens })
    }

    /// Embeds one query text.
    pub fn embed_one(&self, text: &str) -> Result<(Vec<f32>, u64)> {
        let Embedded { mut vectors, tokens } = self.embed(&[text.to_owned()])?;
        let vector = vectors.pop().ok_or_else(|| anyhow!("the embedding model returned no vector"))?;
        Ok((vector, tokens))
    }
}

/// ONNX Runtime is a process-wide library: load it once, and report a failure as an error, not a panic.
fn init_runtime(library: &Path) -> Result<()> {
    static LOADED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            ort::init_from(library)
                .map(drop)
                .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", library.display()))
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// An embedder that loads on first use, so commands that never embed (and the REPL prompt) do not wait
/// for the model. `prefetch` starts loading in the background.
#[derive(Clone)]
pub struct LazyEmbedder {
    dir: PathBuf,
    cell: Arc<tokio::sync::OnceCell<Arc<Embedder>>>,
}

impl LazyEmbedder {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir, cell: Arc::new(tokio::sync::OnceCell::new()) }
    }

    /// The loaded model, loading it on a blocking thread the first time.
    pub async fn get(&self) -> Result<Arc<Embedder>> {
        self.cell
            .get_or_try_init(|| async {
                let dir = self.dir.clone();
                let embedder = tokio::task::spawn_blocking(move || Embedder::load(&dir)).await??;
                Ok(Arc::new(embedder))
            })
            .await
            .cloned()
    }

    /// Starts loading in the background; errors surface on the next `get`.
    pub fn prefetch(&self) {
        let this = self.clone();
        tokio::spawn(async move {
            let _ = this.get().await;
        });
    }

    /// Embeds texts off the async runtime.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Embedded> {
        let embedder = self.get().await?;
        tokio::task::spawn_blocking(move || embedder.embed(&texts)).await?
    }

    /// Embeds one query text off the async runtime.
    pub async fn embed_one(&self, text: String) -> Result<(Vec<f32>, u64)> {
        let embedder = self.get().await?;
        tokio::task::spawn_blocking(move || embedder.embed_one(&text)).await?
    }
}
