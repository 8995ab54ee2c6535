//! The files of a store's tree: what they look like without reading them ([`Fingerprint`]), and
//! what each one holds ([`Tree`]), kept from one change to the next so that a change costs
//! reading and validating the files that changed, not the whole tree.
//!
//! Each file is validated on its own loader and the per-file loads are appended in path order
//! ([`Loaded::append`]), which gives what one loader reading every file would: the same
//! diagnostics, the same load order (PeerAuthentication ages), a second MeshConfig refused.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use zmesh_config::diag::codes;
use zmesh_config::yaml::Pos;
use zmesh_config::{Config, Diagnostic, FileKind, Loaded, Loader, Origin, Severity};

use super::{RACY_WINDOW, StoreError};

/// Threads that read and validate changed files at once (the first load reads them all).
const MAX_THREADS: usize = 4;

/// What the tree looks like without reading it: every listed file and what it resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Fingerprint {
    files: Vec<(PathBuf, Stamp)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stamp {
    File {
        len: u64,
        mtime: (i64, i64),
        ctime: (i64, i64),
        ino: u64,
        dev: u64,
    },
    /// A symlink to nothing: in a ConfigMap volume, a key being removed (the kubelet swaps
    /// `..data` first and deletes the stale link after).
    Dangling,
}

impl Stamp {
    fn modified(&self) -> Option<SystemTime> {
        match *self {
            Stamp::File { mtime: (seconds, nanos), .. } => {
                let seconds = u64::try_from(seconds).ok()?;
                let nanos = u32::try_from(nanos).ok()?;
                SystemTime::UNIX_EPOCH.checked_add(Duration::new(seconds, nanos))
            }
            Stamp::Dangling => None,
        }
    }
}

pub(super) fn read_error(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Read { path: path.to_path_buf(), source }
}

/// Whether `error` reading `path` means a dangling symlink below the root. The root itself never
/// counts: a single configuration file vanishing is a failure to retry, not an empty config.
fn is_dangling(root: &Path, path: &Path, error: &std::io::Error) -> bool {
    path != root
        && error.kind() == std::io::ErrorKind::NotFound
        && std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

impl Fingerprint {
    pub(super) fn take(root: &Path) -> Result<Fingerprint, StoreError> {
        let paths = zmesh_config::yaml_files(root).map_err(|e| read_error(root, e))?;
        let mut files = Vec::with_capacity(paths.len());
        for path in paths {
            let stamp = match std::fs::metadata(&path) {
                Ok(m) => Stamp::File {
                    len: m.len(),
                    mtime: (m.mtime(), m.mtime_nsec()),
                    ctime: (m.ctime(), m.ctime_nsec()),
                    ino: m.ino(),
                    dev: m.dev(),
                },
                Err(error) if is_dangling(root, &path, &error) => Stamp::Dangling,
                Err(error) => return Err(read_error(&path, error)),
            };
            files.push((path, stamp));
        }
        Ok(Fingerprint { files })
    }

    /// The directories the listed files are in (for watches; the root is not included).
    pub(super) fn directories(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().filter_map(|(path, _)| path.parent())
    }
}

pub(super) type Digest = [u8; 32];

fn sha256(parts: &[&[u8]]) -> Digest {
    let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
    for part in parts {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    let mut digest = [0u8; 32];
    digest.copy_from_slice(hasher.finish().as_ref());
    digest
}

/// One file as last read.
#[derive(Debug, Clone)]
struct FilePart {
    stamp: Stamp,
    /// SHA-256 of the content.
    digest: Digest,
    /// Modified so shortly before it was read that a same-size rewrite could keep its stamp: it
    /// is read again at the next look, whatever its stamp says.
    racy: bool,
    /// The file validated on its own (see [`load_file`]); shared between trees while the file
    /// does not change.
    loaded: Arc<Loaded>,
}

/// Every file of the tree as last read, by path (sorted: the load order).
#[derive(Debug, Clone, Default)]
pub(super) struct Tree {
    files: BTreeMap<PathBuf, FilePart>,
}

impl Tree {
    /// The tree behind `fingerprint`. Files whose stamp is what `self` read (and was not racy)
    /// are not opened; files read again but with the same content are not validated again.
    pub(super) fn refresh(&self, root: &Path, fingerprint: &Fingerprint) -> Result<Tree, StoreError> {
        let mut files = BTreeMap::new();
        let mut stale = Vec::new();
        for (path, stamp) in &fingerprint.files {
            match self.files.get(path) {
                _ if *stamp == Stamp::Dangling => {}
                Some(part) if part.stamp == *stamp && !part.racy => {
                    files.insert(path.clone(), part.clone());
                }
                _ => stale.push((path, *stamp)),
            }
        }
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, MAX_THREADS);
        let threads = threads.min(stale.len().div_ceil(16)).max(1);
        let read =
            std::thread::scope(|scope| {
                let workers: Vec<_> =
                    (0..threads)
                        .map(|worker| {
                            let stale = &stale;
                            scope.spawn(move || {
                                // Every `threads`-th file: sizes in a directory vary together, so
                                // interleaving balances the work better than contiguous chunks.
                                let mine = stale.iter().skip(worker).step_by(threads);
                                mine.map(|(path, stamp)| Ok((*path, self.read_file(root, path, *stamp)?)))
                                    .collect::<Result<Vec<_>, StoreError>>()
                            })
                        })
                        .collect();
                let mut read = Vec::with_capacity(stale.len());
                for worker in workers {
                    let parts = worker.join().unwrap_or_else(|_| {
                        Err(read_error(root, std::io::Error::other("a thread reading the configuration panicked")))
                    })?;
                    read.extend(parts);
                }
                Ok::<_, StoreError>(read)
            })?;
        for (path, part) in read {
            if let Some(part) = part {
                files.insert(path.clone(), part);
            }
        }
        Ok(Tree { files })
    }

    /// Read one file; `None` when it turned out to be a dangling symlink.
    fn read_file(&self, root: &Path, path: &Path, stamp: Stamp) -> Result<Option<FilePart>, StoreError> {
        let read_at = SystemTime::now();
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(error) if is_dangling(root, path, &error) => return Ok(None),
            Err(error) => return Err(read_error(path, error)),
        };
        let digest = sha256(&[&bytes]);
        // A timestamp in the future (clock skew on a network mount) counts as racy too.
        let racy = stamp.modified().is_some_and(|modified| modified + RACY_WINDOW > read_at);
        let loaded = match self.files.get(path) {
            Some(old) if old.digest == digest => old.loaded.clone(),
            _ => Arc::new(load_file(path, &bytes)),
        };
        Ok(Some(FilePart { stamp, digest, racy, loaded }))
    }

    /// A digest of every path and content: equal digests, equal configurations.
    pub(super) fn digest(&self) -> Digest {
        let mut parts: Vec<&[u8]> = Vec::with_capacity(self.files.len() * 2);
        for (path, part) in &self.files {
            parts.push(path.as_os_str().as_encoded_bytes());
            parts.push(&part.digest);
        }
        sha256(&parts)
    }

    /// Some file was read so soon after it was modified that it must be read once more later.
    pub(super) fn racy(&self) -> bool {
        self.files.values().any(|part| part.racy)
    }

    /// The whole tree's load, as one loader reading every file in path order would give it.
    pub(super) fn load(&self) -> Loaded {
        let mut loaded = Loaded::default();
        for part in self.files.values() {
            loaded.append(&part.loaded);
        }
        loaded
    }
}

/// Validate one file on its own loader. Of the typed resources only the kinds the registry is
/// built from are kept (and the MeshConfig): policies are compiled by the proxies that enforce
/// them, from the documents pushed, so the control plane keeps each policy once — as its
/// document — instead of also holding its typed form for as long as the file does not change.
fn load_file(path: &Path, bytes: &[u8]) -> Loaded {
    let name: Arc<str> = path.display().to_string().into();
    let mut loaded = match std::str::from_utf8(bytes) {
        Ok(text) => {
            let mut loader = Loader::new();
            loader.add_str(Some(name), text, FileKind::Resources);
            loader.finish()
        }
        Err(error) => {
            Loaded { files: 1, diagnostics: vec![not_utf8_diagnostic(name, bytes, &error)], ..Loaded::default() }
        }
    };
    let config = std::mem::take(&mut loaded.config);
    loaded.config = Config {
        workload_entries: config.workload_entries,
        service_entries: config.service_entries,
        namespaces: config.namespaces,
        workloads: config.workloads,
        services: config.services,
        service_accounts: config.service_accounts,
        mesh: config.mesh,
        ..Config::default()
    };
    loaded
}

/// The loader's own "not UTF-8" error, with the position of the first bad byte.
fn not_utf8_diagnostic(file: Arc<str>, bytes: &[u8], error: &std::str::Utf8Error) -> Diagnostic {
    let valid = &bytes[..error.valid_up_to()];
    let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = valid.len() - valid.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1) + 1;
    Diagnostic {
        severity: Severity::Error,
        code: Some(codes::SCHEMA),
        origin: Origin { file: Some(file), pos: Pos { line, column } },
        object: None,
        field: String::new(),
        message: "the file is not UTF-8 text".into(),
        hint: Some("save it as UTF-8".into()),
    }
}

/// The first read, retried briefly when a file vanishes between listing and reading (a rename
/// in progress), so that a store opened during an update does not fail for nothing.
pub(super) fn first_read(root: &Path, pause: Duration) -> Result<(Fingerprint, Tree), StoreError> {
    let mut attempts = 0;
    loop {
        let result = Fingerprint::take(root).and_then(|fingerprint| {
            let tree = Tree::default().refresh(root, &fingerprint)?;
            Ok((fingerprint, tree))
        });
        match result {
            Err(StoreError::Read { source, .. }) if attempts < 2 && source.kind() == std::io::ErrorKind::NotFound => {
                attempts += 1;
                std::thread::sleep(pause);
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_modified_just_before_it_was_read_is_read_again_later() {
        let dir = zmesh_testkit::TempDir::new("store-racy");
        let file = dir.write("a.yaml", "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n");
        let fresh = Fingerprint::take(dir.path()).expect("fingerprint");
        let tree = Tree::default().refresh(dir.path(), &fresh).expect("read");
        assert!(tree.racy());

        let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::options().write(true).open(&file).and_then(|f| f.set_modified(an_hour_ago)).expect("set mtime");
        let old = Fingerprint::take(dir.path()).expect("fingerprint");
        assert_ne!(old, fresh, "mtime is part of the fingerprint");
        assert!(!tree.refresh(dir.path(), &old).expect("read").racy());
    }

    #[test]
    fn only_files_whose_stamp_changed_are_read_and_only_new_content_is_validated() {
        let dir = zmesh_testkit::TempDir::new("store-incremental");
        let namespace = |name: &str| format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n");
        let a = dir.write("a.yaml", &namespace("a"));
        let b = dir.write("b.yaml", &namespace("b"));
        let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
        let age = |path: &Path| {
            std::fs::File::options().write(true).open(path).and_then(|f| f.set_modified(an_hour_ago)).expect("mtime")
        };
        age(&a);
        age(&b);
        let first = Tree::default().refresh(dir.path(), &Fingerprint::take(dir.path()).expect("fp")).expect("read");
        assert!(!first.racy());

        // b rewritten with the same content, a with new content.
        std::fs::write(&b, namespace("b")).expect("rewrite b");
        std::fs::write(&a, namespace("a2")).expect("rewrite a");
        age(&a);
        age(&b);
        let second = first.refresh(dir.path(), &Fingerprint::take(dir.path()).expect("fp")).expect("read");
        assert!(Arc::ptr_eq(&first.files[&b].loaded, &second.files[&b].loaded), "same content: not validated again");
        assert!(!Arc::ptr_eq(&first.files[&a].loaded, &second.files[&a].loaded));
        let loaded = second.load();
        let names: Vec<&str> = loaded.sources.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a2", "b"]);
        assert_ne!(first.digest(), second.digest());

        // Unchanged stamps: nothing is read or validated again.
        let third = second.refresh(dir.path(), &Fingerprint::take(dir.path()).expect("fp")).expect("read");
        assert_eq!(third.digest(), second.digest());
        assert!(Arc::ptr_eq(&second.files[&a].loaded, &third.files[&a].loaded));
    }

    #[test]
    fn a_file_that_is_not_utf8_is_an_error_at_its_first_bad_byte() {
        let dir = zmesh_testkit::TempDir::new("store-utf8");
        let path = dir.path().join("a.yaml");
        std::fs::write(&path, b"kind: x\nab: \xff\n").expect("write");
        let fingerprint = Fingerprint::take(dir.path()).expect("fingerprint");
        let loaded = Tree::default().refresh(dir.path(), &fingerprint).expect("read").load();
        let errors: Vec<String> = loaded.errors().map(ToString::to_string).collect();
        assert_eq!(
            errors,
            [format!("{}:2:5: error[IST0106]: the file is not UTF-8 text; save it as UTF-8", path.display())]
        );
        assert_eq!(loaded.files, 1);
    }

    #[test]
    fn the_store_keeps_documents_and_registry_kinds_typed_but_not_policies() {
        let dir = zmesh_testkit::TempDir::new("store-slim");
        dir.write(
            "a.yaml",
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  selector: {matchLabels: {app: a}}\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: w, namespace: x}\nspec: {address: 10.0.0.1}\n",
        );
        let loaded =
            Tree::default().refresh(dir.path(), &Fingerprint::take(dir.path()).expect("fp")).expect("read").load();
        assert!(loaded.config.authorization_policies.is_empty());
        assert_eq!(loaded.config.workload_entries.len(), 1);
        assert_eq!(loaded.sources.len(), 2);
        let labels = loaded.sources[0].selector.as_ref().expect("the policy's selector is kept with its document");
        assert_eq!(labels.get("app").map(String::as_str), Some("a"));
    }
}
