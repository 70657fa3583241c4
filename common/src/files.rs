//! JSON files that hold state (the catalog, keys and roles, the file
//! metastore): read whole, and replaced atomically — written to a temporary
//! file, synced, renamed over the old one — readable by their owner only (they
//! hold source secrets and key digests).

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The content of `path`, or the default if there is no such file; `what` names
/// the file in the error message.
pub fn load<T: DeserializeOwned + Default>(path: &Path, what: &str) -> Result<T, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| format!("{what} {} is corrupt: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(format!("cannot read {what} {}: {e}", path.display())),
    }
}

/// Replaces `path` with `value` as pretty JSON, atomically, mode 0600.
pub fn store<T: Serialize>(path: &Path, value: &T, what: &str) -> Result<(), String> {
    let write = || -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let temp = path.with_extension("json.tmp");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&temp)?;
        std::io::Write::write_all(&mut file, &serde_json::to_vec_pretty(value)?)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    };
    write().map_err(|e| format!("cannot write {what} {}: {e}", path.display()))
}
