//! Secret files: written whole or not at all, readable by their owner only.

use std::io::Write as _;
use std::path::Path;

/// Writes `contents` to `path` atomically (a temp file in the same directory, synced,
/// then renamed over it), with mode 0600 on Unix from the moment it exists.
pub fn write_secret(path: &Path, contents: &str) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".gf-secret-")
        .permissions(secret_permissions())
        .tempfile_in(dir)?;
    tmp.write_all(contents.as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(unix)]
fn secret_permissions() -> std::fs::Permissions {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::Permissions::from_mode(0o600)
}

#[cfg(not(unix))]
fn secret_permissions() -> std::fs::Permissions {
    // Windows: the file inherits the directory's ACL (the user's profile).
    let f = tempfile::tempfile().expect("temp file");
    f.metadata().expect("metadata").permissions()
}

/// Reads a secret file, trimmed; the error names the file.
pub fn read_secret(path: &Path) -> anyhow::Result<String> {
    use anyhow::Context as _;
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .trim()
        .to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn written_whole_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/key.nk");
        super::write_secret(&p, "one").unwrap();
        super::write_secret(&p, "two\n").unwrap();
        assert_eq!(super::read_secret(&p).unwrap(), "two");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // No temp file left behind.
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
    }
}
