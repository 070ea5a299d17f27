//! Small filesystem helpers shared by the pipeline stages.

use std::path::Path;

use anyhow::{Context as _, Result};

/// Write an output file through a temporary file in the same directory, renamed into place only
/// when `fill` succeeds: an interrupted or failed run never leaves a half-written output.
pub fn write_atomically<T>(dest: &Path, fill: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)
        .with_context(|| format!("failed to create a temporary file in {}", dir.display()))?;
    let value = fill(tmp.path())?;
    tmp.persist(dest)
        .with_context(|| format!("failed to rename the finished file to {}", dest.display()))?;
    Ok(value)
}
