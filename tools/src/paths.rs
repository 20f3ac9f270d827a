//! Where `audience` keeps its files: the data directory (vector index, ledger, history) and the models directory.

use std::path::PathBuf;

/// The data directory: `$AUDIENCE_DATA_DIR`, else the XDG data directory (`~/.local/share/audience`).
pub fn data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("AUDIENCE_DATA_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    xdg_data_home().join("audience")
}

/// The models directory: `$AUDIENCE_MODELS_DIR`, else `models/` under the XDG data directory.
///
/// It does not follow `AUDIENCE_DATA_DIR` on purpose: tests and users point the data directory at
/// many places (one per test), while the ~50 MB of model files are fetched once per machine by
/// `scripts/setup-models.sh`, which installs into this same default.
pub fn models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("AUDIENCE_MODELS_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    xdg_data_home().join("audience").join("models")
}

fn xdg_data_home() -> PathBuf {
    dirs::data_dir().unwrap_or_else(|| PathBuf::from(".local/share"))
}
