//! The CA directory on disk: Istio's plugged-in CA layout, the key-permission check, and
//! crash-safe writes.
//!
//! Every change to the directory, even a single file, goes through a [`Transaction`]: new
//! contents are first written to `.pending/` and fsynced, then a `COMMIT` list is renamed into
//! place, then the files are renamed over their targets. A crash before `COMMIT` leaves the old
//! CA untouched (the next open deletes `.pending/`); a crash after it is rolled forward by the
//! next open. So a reader never sees a half-written file, nor a new `ca-cert.pem` next to an
//! old `ca-key.pem`.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use crate::CaError;

/// The signing certificate.
pub const CA_CERT_FILE: &str = "ca-cert.pem";
/// The signing certificate's private key (PKCS#8, mode 0600).
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// The trust bundle: every root a peer's chain may end at.
pub const ROOT_CERT_FILE: &str = "root-cert.pem";
/// The signing certificate followed by its issuers, up to and including the root.
pub const CERT_CHAIN_FILE: &str = "cert-chain.pem";
/// The four files of Istio's plugged-in CA layout, in the order they are reported.
pub(crate) const CA_FILES: [&str; 4] = [CA_CERT_FILE, CA_KEY_FILE, ROOT_CERT_FILE, CERT_CHAIN_FILE];

const PENDING_DIR: &str = ".pending";
const COMMIT_FILE: &str = "COMMIT";

const SECRET_MODE: u32 = 0o600;
const PUBLIC_MODE: u32 = 0o644;
/// The directory holds a private key, so only its owner may list or enter it.
const DIR_MODE: u32 = 0o700;

/// Read a whole file, naming it in the error.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>, CaError> {
    fs::read(path).map_err(|source| CaError::ReadFile { path: path.to_owned(), source })
}

/// Read a private key after checking that nobody but the owner can read it.
pub(crate) fn read_secret(path: &Path) -> Result<Vec<u8>, CaError> {
    check_owner_only(path)?;
    read(path)
}

/// Refuse a key that group or others may access: such a key must be assumed copied.
#[cfg(unix)]
pub(crate) fn check_owner_only(path: &Path) -> Result<(), CaError> {
    use std::os::unix::fs::PermissionsExt;
    // `metadata` follows symlinks, so a Kubernetes secret volume's `..data/` target is checked.
    let metadata = fs::metadata(path).map_err(|source| CaError::ReadFile { path: path.to_owned(), source })?;
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(CaError::KeyPermissions { path: path.to_owned(), mode });
    }
    Ok(())
}

#[cfg(not(unix))]
pub(crate) fn check_owner_only(_path: &Path) -> Result<(), CaError> {
    Ok(())
}

pub(crate) fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

/// Create `dir` (owner-only) if it is missing.
pub(crate) fn ensure_dir(dir: &Path) -> Result<(), CaError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, DIR_MODE);
    builder.create(dir).map_err(|source| CaError::WriteFile { path: dir.to_owned(), source })
}

/// A set of file writes and removals under one directory that lands all together or not at all.
#[derive(Debug, Default)]
pub(crate) struct Transaction {
    steps: Vec<Step>,
}

#[derive(Debug)]
enum Step {
    Put { relative: String, contents: Vec<u8>, secret: bool },
    Remove { relative: String },
}

impl Transaction {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Write a public file (mode 0644). `relative` may name one subdirectory, e.g. `rotation/x`.
    pub(crate) fn put(&mut self, relative: &str, contents: impl Into<Vec<u8>>) -> &mut Self {
        self.steps.push(Step::Put { relative: relative.to_owned(), contents: contents.into(), secret: false });
        self
    }

    /// Write a private key (mode 0600 from the moment it exists).
    pub(crate) fn put_secret(&mut self, relative: &str, contents: impl Into<Vec<u8>>) -> &mut Self {
        self.steps.push(Step::Put { relative: relative.to_owned(), contents: contents.into(), secret: true });
        self
    }

    pub(crate) fn remove(&mut self, relative: &str) -> &mut Self {
        self.steps.push(Step::Remove { relative: relative.to_owned() });
        self
    }

    /// Make every step durable under `dir`, then apply them.
    pub(crate) fn commit(&self, dir: &Path) -> Result<(), CaError> {
        self.stage(dir)?;
        apply_pending(dir)
    }

    /// Write the new contents and the `COMMIT` list, but apply nothing: after this returns, the
    /// transaction will happen even if the process dies now.
    pub(crate) fn stage(&self, dir: &Path) -> Result<(), CaError> {
        recover(dir)?;
        let pending = dir.join(PENDING_DIR);
        ensure_dir(&pending)?;
        let mut list = String::new();
        for (index, step) in self.steps.iter().enumerate() {
            match step {
                Step::Put { relative, contents, secret } => {
                    let mode = if *secret { SECRET_MODE } else { PUBLIC_MODE };
                    write_durable(&pending.join(index.to_string()), contents, mode)?;
                    list.push_str(&format!("put {index} {relative}\n"));
                }
                Step::Remove { relative } => list.push_str(&format!("remove {relative}\n")),
            }
        }
        // The rename is the commit point: before it there is no COMMIT, after it a whole one.
        let staging = pending.join(format!("{COMMIT_FILE}.tmp"));
        write_durable(&staging, list.as_bytes(), PUBLIC_MODE)?;
        rename(&staging, &pending.join(COMMIT_FILE))?;
        sync_dir(&pending)
    }
}

/// Finish or discard a transaction a crash interrupted. Every entry point calls this first.
pub(crate) fn recover(dir: &Path) -> Result<(), CaError> {
    let pending = dir.join(PENDING_DIR);
    if !exists(&pending) {
        return Ok(());
    }
    if exists(&pending.join(COMMIT_FILE)) {
        apply_pending(dir)
    } else {
        // Staging never finished, so nothing was applied: the old state stands.
        fs::remove_dir_all(&pending).map_err(|source| CaError::WriteFile { path: pending, source })
    }
}

fn apply_pending(dir: &Path) -> Result<(), CaError> {
    let pending = dir.join(PENDING_DIR);
    let commit = pending.join(COMMIT_FILE);
    let list = String::from_utf8(read(&commit)?)
        .map_err(|_| CaError::BadJournal { dir: dir.to_owned(), detail: "COMMIT is not UTF-8".to_owned() })?;
    let mut touched_dirs = vec![dir.to_owned()];
    for line in list.lines() {
        let bad = || CaError::BadJournal { dir: dir.to_owned(), detail: format!("unknown step `{line}`") };
        let mut words = line.splitn(3, ' ');
        match (words.next(), words.next(), words.next()) {
            (Some("put"), Some(index), Some(relative)) => {
                let target = safe_join(dir, relative).ok_or_else(bad)?;
                let source = pending.join(index);
                // Already moved by an earlier, interrupted run: moving is what makes this idempotent.
                if exists(&source) {
                    if let Some(parent) = target.parent() {
                        ensure_dir(parent)?;
                        touched_dirs.push(parent.to_owned());
                    }
                    rename(&source, &target)?;
                }
            }
            (Some("remove"), Some(relative), None) => {
                let target = safe_join(dir, relative).ok_or_else(bad)?;
                match fs::remove_file(&target) {
                    Ok(()) => {}
                    Err(error) if error.kind() == ErrorKind::NotFound => {}
                    Err(source) => return Err(CaError::WriteFile { path: target, source }),
                }
                if let Some(parent) = target.parent() {
                    touched_dirs.push(parent.to_owned());
                }
            }
            _ => return Err(bad()),
        }
    }
    touched_dirs.dedup();
    for touched in &touched_dirs {
        sync_dir(touched)?;
    }
    fs::remove_dir_all(&pending).map_err(|source| CaError::WriteFile { path: pending.clone(), source })?;
    sync_dir(dir)
}

/// `dir/relative`, refusing anything that could step outside `dir`.
fn safe_join(dir: &Path, relative: &str) -> Option<PathBuf> {
    let clean = !relative.is_empty()
        && !relative.starts_with('/')
        && relative.split('/').all(|part| !part.is_empty() && part != "." && part != "..");
    clean.then(|| dir.join(relative))
}

fn write_durable(path: &Path, contents: &[u8], mode: u32) -> Result<(), CaError> {
    let error = |source| CaError::WriteFile { path: path.to_owned(), source };
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    let mut file = options.open(path).map_err(error)?;
    // `mode` applies only when the file is created; a leftover file keeps its old mode.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(mode)).map_err(error)?;
    }
    #[cfg(not(unix))]
    let _ = mode;
    file.write_all(contents).map_err(error)?;
    file.sync_all().map_err(error)
}

fn rename(from: &Path, to: &Path) -> Result<(), CaError> {
    fs::rename(from, to).map_err(|source| CaError::WriteFile { path: to.to_owned(), source })
}

/// Make renames in `dir` durable. Unix only: elsewhere directories cannot be opened for fsync.
fn sync_dir(dir: &Path) -> Result<(), CaError> {
    #[cfg(unix)]
    {
        let handle = fs::File::open(dir).map_err(|source| CaError::WriteFile { path: dir.to_owned(), source })?;
        handle.sync_all().map_err(|source| CaError::WriteFile { path: dir.to_owned(), source })?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TempDir;

    #[test]
    fn a_committed_transaction_writes_files_and_leaves_no_pending_directory() {
        let dir = TempDir::new();
        let mut tx = Transaction::new();
        tx.put("a.pem", "A").put_secret("sub/key.pem", "K");
        tx.commit(dir.path()).unwrap();
        assert_eq!(fs::read(dir.path().join("a.pem")).unwrap(), b"A");
        assert_eq!(fs::read(dir.path().join("sub/key.pem")).unwrap(), b"K");
        assert!(!dir.path().join(PENDING_DIR).exists());
    }

    #[cfg(unix)]
    #[test]
    fn secret_files_are_owner_only_and_public_files_are_not() {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new();
        let mut tx = Transaction::new();
        tx.put("cert.pem", "C").put_secret("key.pem", "K");
        tx.commit(dir.path()).unwrap();
        let mode = |name| fs::metadata(dir.path().join(name)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("key.pem"), 0o600);
        assert_eq!(mode("cert.pem"), 0o644);
    }

    #[test]
    fn a_transaction_staged_before_a_crash_is_rolled_forward_by_recovery() {
        let dir = TempDir::new();
        fs::write(dir.path().join("old.pem"), "old").unwrap();
        let mut tx = Transaction::new();
        tx.put("new.pem", "new").remove("old.pem");
        tx.stage(dir.path()).unwrap();
        // The "crash": nothing applied yet.
        assert!(!dir.path().join("new.pem").exists());
        recover(dir.path()).unwrap();
        assert_eq!(fs::read(dir.path().join("new.pem")).unwrap(), b"new");
        assert!(!dir.path().join("old.pem").exists());
    }

    #[test]
    fn a_half_applied_transaction_finishes_on_recovery() {
        let dir = TempDir::new();
        let mut tx = Transaction::new();
        tx.put("one.pem", "1").put("two.pem", "2");
        tx.stage(dir.path()).unwrap();
        // The "crash" came after the first rename.
        fs::rename(dir.path().join(PENDING_DIR).join("0"), dir.path().join("one.pem")).unwrap();
        recover(dir.path()).unwrap();
        assert_eq!(fs::read(dir.path().join("one.pem")).unwrap(), b"1");
        assert_eq!(fs::read(dir.path().join("two.pem")).unwrap(), b"2");
    }

    #[test]
    fn a_transaction_interrupted_before_its_commit_point_is_discarded() {
        let dir = TempDir::new();
        let pending = dir.path().join(PENDING_DIR);
        fs::create_dir(&pending).unwrap();
        fs::write(pending.join("0"), "half").unwrap();
        recover(dir.path()).unwrap();
        assert!(!pending.exists());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_journal_naming_a_path_outside_the_directory_is_refused() {
        let dir = TempDir::new();
        let pending = dir.path().join(PENDING_DIR);
        fs::create_dir(&pending).unwrap();
        fs::write(pending.join(COMMIT_FILE), "remove ../escape\n").unwrap();
        assert!(matches!(recover(dir.path()), Err(CaError::BadJournal { .. })));
    }

    #[cfg(unix)]
    #[test]
    fn a_key_readable_by_others_is_refused_with_the_chmod_fix() {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new();
        let key = dir.path().join(CA_KEY_FILE);
        fs::write(&key, "k").unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let error = read_secret(&key).unwrap_err();
        assert!(matches!(error, CaError::KeyPermissions { mode: 0o644, .. }));
        assert!(error.to_string().contains(&format!("chmod 600 {}", key.display())));
    }
}
