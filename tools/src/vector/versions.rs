//! The embedded index as immutable published versions, so one writer and any number of readers share a data
//! directory, and every reader sees one whole version: the old one or the new one, never a mix.
//!
//! A qdrant-edge shard takes an exclusive lock on its directory and writes to it whenever it is opened (its
//! write-ahead log, its config, possibly a new appendable segment, a flush on close), so two processes can
//! never open one directory, and a directory that is being copied must not be opened at all. The store
//! therefore never opens a published version in place:
//! - the writer (ingest, reindex) copies the current version, or starts empty, into a staging directory, opens
//!   and updates that copy, closes it, and publishes it by renaming it to the next version and then replacing
//!   the `CURRENT` file atomically;
//! - a reader copies the current version into a private directory and opens its copy; on every use it reads
//!   `CURRENT` and moves to a newer version when there is one, so a chat left open follows the ingests;
//! - versions that are neither current nor being copied, and the copies of readers that have gone, are deleted.
//!
//! Layout of `<data dir>/vectors/<schema>/`:
//! - `CURRENT`: the name of the current version, e.g. `v000007`;
//! - `v000007/`: a published shard with its `manifest.json` (what it was built from); never opened again;
//! - `v000007.lock`: share-locked by readers while they copy that version, so it is not deleted under them;
//! - `writer.lock`: held by the one writer, from its staging copy to its publication;
//! - `staging-<id>/`: the writer's version in the making;
//! - `readers/<id>/`: a reader's private copy, with `readers/<id>.lock` locked for as long as it is in use.
//!
//! Locks are `flock(2)` locks (std's `File::lock`), released by the kernel when a process dies, so a crash
//! leaves nothing that blocks the next command: its leftovers are deleted by the next writer or reader.

use std::fs::{self, File, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::edge::EdgeIndex;
use super::{Filter, ScoredPoint, StoredPoint, VectorSearch};

const CURRENT_FILE: &str = "CURRENT";
const MANIFEST_FILE: &str = "manifest.json";
const WRITER_LOCK: &str = "writer.lock";
const READERS_DIR: &str = "readers";
const STAGING_PREFIX: &str = "staging-";

/// What a published version was built from, so a reader can tell whether it matches the data in PostgreSQL.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Profiles embedded into the version (one point each).
    pub profiles: u64,
    /// The fingerprint of those profiles' texts (see [`crate::dataset`]).
    pub fingerprint: String,
    /// The PostgreSQL data version the profiles came from, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_version: Option<i64>,
}

/// How a writer's staging version starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StagingStart {
    /// From a copy of the current version: an incremental sync changes only what changed.
    CopyCurrent,
    /// Empty: a full rebuild.
    Empty,
}

/// The versioned directory of one schema's embedded index.
#[derive(Clone, Debug)]
pub struct EdgeStore {
    root: PathBuf,
}

impl EdgeStore {
    /// The store under `root` (`<data dir>/vectors/<schema>`); nothing is created until it is used.
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The name of the current version, or `None` when nothing was ever published.
    pub fn current_version(&self) -> Result<Option<String>> {
        match fs::read_to_string(self.root.join(CURRENT_FILE)) {
            Ok(text) => {
                let name = text.trim();
                if parse_version(name).is_none() {
                    return Err(anyhow!(
                        "{} holds {name:?}, not a version name",
                        self.root.join(CURRENT_FILE).display()
                    ));
                }
                Ok(Some(name.to_owned()))
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error).with_context(|| format!("cannot read {}", self.root.join(CURRENT_FILE).display())),
        }
    }

    /// Starts a new version: waits for any other writer, then copies the current version (or starts empty) into
    /// a staging directory and opens it. Nothing is visible to readers until [`EdgeWriter::publish`].
    pub async fn begin(&self, start: StagingStart) -> Result<EdgeWriter> {
        let store = self.clone();
        let (lock, staging, base) = tokio::task::spawn_blocking(move || store.prepare_staging(start))
            .await
            .context("vector staging task failed")??;
        let index = EdgeIndex::open(&staging).await?;
        Ok(EdgeWriter { store: self.clone(), staging, base, index: Some(index), _lock: lock })
    }

    fn prepare_staging(&self, start: StagingStart) -> Result<(File, PathBuf, Option<String>)> {
        fs::create_dir_all(&self.root).with_context(|| format!("cannot create {}", self.root.display()))?;
        let lock = open_lock(&self.root.join(WRITER_LOCK))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                tracing::info!("waiting for another ingest or reindex to finish with {}", self.root.display());
                lock.lock().context("cannot take the vector index writer lock")?;
            }
            Err(TryLockError::Error(error)) => return Err(error).context("cannot take the vector index writer lock"),
        }
        // Holding the writer lock, any other staging directory belongs to a writer that died.
        for entry in read_dir(&self.root)? {
            if entry.file_name().to_string_lossy().starts_with(STAGING_PREFIX) {
                remove_dir(&entry.path());
            }
        }
        let staging = self.root.join(format!("{STAGING_PREFIX}{}", unique_id()));
        let base = self.current_version()?;
        match (&base, start) {
            (Some(version), StagingStart::CopyCurrent) => {
                // The current version cannot be deleted while the writer lock is held: only writers delete.
                copy_dir(&self.root.join(version), &staging)?;
                let _ = fs::remove_file(staging.join(MANIFEST_FILE));
            }
            _ => fs::create_dir_all(&staging).with_context(|| format!("cannot create {}", staging.display()))?,
        }
        Ok((lock, staging, base))
    }

    /// Deletes versions that are neither current nor being copied, and copies of readers that have gone.
    fn collect_garbage(&self) {
        let current = self.current_version().ok().flatten();
        let Ok(entries) = read_dir(&self.root) else { return };
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            // A version directory, or the lock file of one (a reader that lost a race may leave one behind).
            let version = name.strip_suffix(".lock").unwrap_or(&name);
            if parse_version(version).is_none() || Some(version) == current.as_deref() {
                continue;
            }
            let lock_path = self.root.join(format!("{version}.lock"));
            let Ok(lock) = open_lock(&lock_path) else { continue };
            if lock.try_lock().is_ok() {
                remove_dir(&self.root.join(version));
                let _ = fs::remove_file(&lock_path);
            }
        }
        collect_reader_copies(&self.root.join(READERS_DIR));
    }

    /// Copies the current version into a private directory and opens it; `None` when nothing was published.
    pub async fn open_copy(&self) -> Result<Option<ReaderCopy>> {
        let store = self.clone();
        let prepared =
            tokio::task::spawn_blocking(move || store.copy_current()).await.context("vector copy task failed")??;
        let Some((version, manifest, holder)) = prepared else { return Ok(None) };
        let index = EdgeIndex::open(&holder.dir).await?;
        Ok(Some(ReaderCopy { index, version, manifest, holder }))
    }

    fn copy_current(&self) -> Result<Option<(String, Manifest, CopyHolder)>> {
        // A writer may publish and delete the version between reading CURRENT and locking it; then try again.
        for _ in 0..5 {
            let Some(version) = self.current_version()? else { return Ok(None) };
            let source = self.root.join(&version);
            let version_lock = open_lock(&self.root.join(format!("{version}.lock")))?;
            version_lock.lock_shared().context("cannot lock the vector index version for copying")?;
            if !source.is_dir() {
                continue;
            }
            let manifest = read_manifest(&source)?;
            let readers = self.root.join(READERS_DIR);
            fs::create_dir_all(&readers).with_context(|| format!("cannot create {}", readers.display()))?;
            collect_reader_copies(&readers);
            let id = unique_id();
            let lock = open_lock(&readers.join(format!("{id}.lock")))?;
            lock.lock().context("cannot lock the private copy of the vector index")?;
            let holder =
                CopyHolder { dir: readers.join(&id), lock_path: readers.join(format!("{id}.lock")), _lock: lock };
            copy_dir(&source, &holder.dir)?;
            return Ok(Some((version, manifest, holder)));
        }
        Err(anyhow!("the vector index in {} keeps changing while it is being opened; try again", self.root.display()))
    }
}

/// A writer's version in the making. Dropping it unpublished deletes it; the current version is unchanged.
pub struct EdgeWriter {
    store: EdgeStore,
    staging: PathBuf,
    /// The version the staging copy started from.
    base: Option<String>,
    index: Option<EdgeIndex>,
    _lock: File,
}

impl EdgeWriter {
    /// The staging index, to sync into.
    pub fn index(&self) -> Option<&EdgeIndex> {
        self.index.as_ref()
    }

    /// The version the staging copy started from (`None` for an empty start with nothing published).
    pub fn base(&self) -> Option<&str> {
        self.base.as_deref()
    }

    /// Closes the staging shard, makes it the next version and then the current one, and deletes versions no
    /// reader needs. Returns the new version's name.
    pub async fn publish(mut self, manifest: &Manifest) -> Result<String> {
        // Closing flushes the shard and releases its directory lock before the directory is renamed.
        let index = self.index.take();
        tokio::task::spawn_blocking(move || drop(index)).await.context("cannot close the staging vector index")?;
        let manifest_json = serde_json::to_vec_pretty(manifest)?;
        let store = self.store.clone();
        let staging = self.staging.clone();
        let name = tokio::task::spawn_blocking(move || -> Result<String> {
            fs::write(staging.join(MANIFEST_FILE), manifest_json)
                .with_context(|| format!("cannot write the manifest in {}", staging.display()))?;
            let next = read_dir(&store.root)?
                .iter()
                .filter_map(|entry| parse_version(&entry.file_name().to_string_lossy()))
                .max()
                .unwrap_or(0)
                + 1;
            let name = version_name(next);
            fs::rename(&staging, store.root.join(&name))
                .with_context(|| format!("cannot publish the vector index version {name}"))?;
            // Readers open CURRENT by name: the rename of a complete file is what makes the switch atomic.
            let temporary = store.root.join(format!("{CURRENT_FILE}.{}", unique_id()));
            fs::write(&temporary, format!("{name}\n")).context("cannot write the new CURRENT file")?;
            File::open(&temporary).and_then(|file| file.sync_all()).context("cannot sync the new CURRENT file")?;
            fs::rename(&temporary, store.root.join(CURRENT_FILE)).context("cannot switch CURRENT")?;
            store.collect_garbage();
            Ok(name)
        })
        .await
        .context("vector publish task failed")??;
        Ok(name)
    }
}

impl Drop for EdgeWriter {
    fn drop(&mut self) {
        // Unpublished: close the shard, then remove its directory (a published one was renamed away).
        drop(self.index.take());
        if self.staging.exists() {
            remove_dir(&self.staging);
        }
    }
}

/// A reader's private copy of one version. The copy is deleted when the last handle to it goes.
pub struct ReaderCopy {
    // Declared before `holder`: the shard closes before its directory is deleted.
    index: EdgeIndex,
    version: String,
    manifest: Manifest,
    holder: CopyHolder,
}

impl ReaderCopy {
    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
}

#[async_trait]
impl VectorSearch for ReaderCopy {
    async fn search(&self, vector: Vec<f32>, filter: Option<Filter>, limit: usize) -> Result<Vec<ScoredPoint>> {
        self.index.search(vector, filter, limit).await
    }

    async fn count(&self, filter: Option<Filter>) -> Result<u64> {
        self.index.count(filter).await
    }

    async fn retrieve(&self, ids: Vec<u64>, with_vectors: bool) -> Result<Vec<StoredPoint>> {
        self.index.retrieve(ids, with_vectors).await
    }

    fn describe(&self) -> String {
        format!("embedded:{} ({})", self.holder.store_root().display(), self.version)
    }
}

/// Owns a reader's private directory: locked while alive, deleted on drop.
struct CopyHolder {
    dir: PathBuf,
    lock_path: PathBuf,
    _lock: File,
}

impl CopyHolder {
    /// `<root>/readers/<id>` → `<root>`.
    fn store_root(&self) -> &Path {
        self.dir.parent().and_then(Path::parent).unwrap_or(&self.dir)
    }
}

impl Drop for CopyHolder {
    fn drop(&mut self) {
        remove_dir(&self.dir);
        let _ = fs::remove_file(&self.lock_path);
    }
}

/// A reader that follows the store: [`Self::current`] is always the current version, copied on first use and
/// again whenever a newer version is published.
pub struct EdgeReader {
    store: EdgeStore,
    loaded: tokio::sync::Mutex<Option<Arc<ReaderCopy>>>,
}

impl EdgeReader {
    pub fn new(store: EdgeStore) -> Self {
        Self { store, loaded: tokio::sync::Mutex::new(None) }
    }

    pub fn store(&self) -> &EdgeStore {
        &self.store
    }

    /// The current version's copy, or `None` when nothing was published. Callers holding an older copy keep it
    /// until they drop it.
    pub async fn current(&self) -> Result<Option<Arc<ReaderCopy>>> {
        let mut loaded = self.loaded.lock().await;
        let current = self.store.current_version()?;
        if let (Some(copy), Some(version)) = (loaded.as_ref(), current.as_ref())
            && copy.version() == version
        {
            return Ok(Some(Arc::clone(copy)));
        }
        let copy = self.store.open_copy().await?.map(Arc::new);
        *loaded = copy.clone();
        Ok(copy)
    }
}

fn read_manifest(version_dir: &Path) -> Result<Manifest> {
    let path = version_dir.join(MANIFEST_FILE);
    let text = fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a vector index manifest", path.display()))
}

/// Deletes reader copies whose lock nobody holds (their process ended without cleaning up).
fn collect_reader_copies(readers: &Path) {
    let Ok(entries) = read_dir(readers) else { return };
    for entry in entries {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        let lock_path = path.with_extension("lock");
        let Ok(lock) = open_lock(&lock_path) else { continue };
        if lock.try_lock().is_ok() {
            remove_dir(&path);
            let _ = fs::remove_file(&lock_path);
        }
    }
}

fn version_name(number: u32) -> String {
    format!("v{number:06}")
}

fn parse_version(name: &str) -> Option<u32> {
    let digits = name.strip_prefix('v')?;
    if digits.len() != 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn unique_id() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
    format!("{}-{nanos:x}", std::process::id())
}

fn open_lock(path: &Path) -> Result<File> {
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open the lock file {}", path.display()))
}

fn read_dir(dir: &Path) -> Result<Vec<fs::DirEntry>> {
    fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .collect::<std::io::Result<Vec<_>>>()
        .with_context(|| format!("cannot list {}", dir.display()))
}

/// Best-effort removal of leftovers: a failure only leaves disk space behind, which the next collection retries.
fn remove_dir(dir: &Path) {
    if let Err(error) = fs::remove_dir_all(dir)
        && error.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!("cannot remove {}: {error}", dir.display());
    }
}

/// Copies a directory tree (regular files and directories; a shard holds nothing else).
fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    for entry in read_dir(from)? {
        let target = to.join(entry.file_name());
        let kind = entry.file_type().with_context(|| format!("cannot read {}", entry.path().display()))?;
        if kind.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), &target)
                .with_context(|| format!("cannot copy {} to {}", entry.path().display(), target.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_names_round_trip() {
        assert_eq!(version_name(7), "v000007");
        assert_eq!(parse_version("v000007"), Some(7));
        assert_eq!(parse_version("v7"), None);
        assert_eq!(parse_version("v000007.lock"), None);
        assert_eq!(parse_version("staging-1"), None);
    }
}
