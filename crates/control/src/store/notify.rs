//! Hearing about changes as they happen, where the kernel can tell (inotify), so that a change
//! is acted on as soon as it has settled instead of at the next poll.
//!
//! Events are only a hint: what changed is always found by taking the tree's fingerprint, and
//! the store keeps polling (inotify is silent about writes made by other hosts on a network
//! mount, and about a directory created deep inside an unwatched one). A watch is set on the
//! root and on every directory that holds a listed file; watches follow symlinks, so a
//! ConfigMap volume's `..data` swap is seen as a rename in the root.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::inotify;
use tokio::io::unix::AsyncFd;

/// Directory events that can change what the tree resolves to.
fn interesting() -> inotify::WatchFlags {
    use inotify::WatchFlags as W;
    W::CREATE
        | W::DELETE
        | W::MODIFY
        | W::CLOSE_WRITE
        | W::MOVED_FROM
        | W::MOVED_TO
        | W::ATTRIB
        | W::DELETE_SELF
        | W::MOVE_SELF
}

/// Put the inotify descriptor under tokio's reactor.
#[allow(unsafe_code)]
fn register(fd: OwnedFd) -> Option<AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd takes ownership of the OwnedFd, so the descriptor stays open and the
    // same until the AsyncFd is dropped, which is all `register` requires.
    unsafe { AsyncFd::register(fd) }.ok()
}

/// An inotify instance and the directories it watches.
pub(super) struct TreeEvents {
    fd: AsyncFd<OwnedFd>,
    watched: BTreeMap<PathBuf, i32>,
    buffer: Vec<std::mem::MaybeUninit<u8>>,
    /// Events were read and not yet reported by [`settled`](Self::settled): kept here so that a
    /// `settled` dropped half-way (the caller woke for another reason) loses nothing.
    heard: bool,
}

impl TreeEvents {
    /// `None` where inotify is not available (then polling alone finds changes).
    pub(super) fn new() -> Option<TreeEvents> {
        let fd = inotify::init(inotify::CreateFlags::NONBLOCK | inotify::CreateFlags::CLOEXEC).ok()?;
        let fd = register(fd)?;
        let buffer = vec![std::mem::MaybeUninit::uninit(); 16 * 1024];
        Some(TreeEvents { fd, watched: BTreeMap::new(), buffer, heard: false })
    }

    /// Watch exactly `directories` (adding and removing watches as the tree changes). A
    /// directory that cannot be watched (gone already, or out of watches) is left to polling.
    pub(super) fn watch<'a>(&mut self, directories: impl IntoIterator<Item = &'a Path>) {
        // Many files share a directory: deduplicate before anything is allocated.
        let wanted: BTreeSet<&Path> = directories.into_iter().collect();
        if wanted.len() == self.watched.len() && wanted.iter().zip(self.watched.keys()).all(|(a, b)| *a == b.as_path())
        {
            return;
        }
        let mut watched = BTreeMap::new();
        for (directory, descriptor) in std::mem::take(&mut self.watched) {
            if wanted.contains(directory.as_path()) {
                watched.insert(directory, descriptor);
            } else {
                // The directory may be gone, which removed the watch already.
                let _ = inotify::remove_watch(self.fd.get_ref(), descriptor);
            }
        }
        for directory in wanted {
            if !watched.contains_key(directory)
                && let Ok(descriptor) = inotify::add_watch(self.fd.get_ref(), directory, interesting())
            {
                watched.insert(directory.to_path_buf(), descriptor);
            }
        }
        self.watched = watched;
    }

    /// Wait for a change and then for `quiet` without another one: the writer is done. (Tools
    /// write in several steps: a temporary file, a rename, a symlink swap.)
    pub(super) async fn settled(&mut self, quiet: Duration) {
        if !self.heard {
            self.next().await;
        }
        loop {
            tokio::select! {
                () = self.next() => {}
                () = tokio::time::sleep(quiet) => break,
            }
        }
        self.heard = false;
    }

    /// Wait until at least one event is in, and drain every event queued (an overflow counts as
    /// a change too: something happened, and the fingerprint will say what).
    async fn next(&mut self) {
        loop {
            let Ok(mut ready) = self.fd.readable().await else {
                // The descriptor broke: stay silent forever and leave changes to polling.
                return std::future::pending().await;
            };
            let mut events = 0usize;
            let mut reader = inotify::Reader::new(self.fd.get_ref(), &mut self.buffer);
            loop {
                match reader.next() {
                    // A removed watch says so; that is our own doing, not a change.
                    Ok(event) if event.events() == inotify::ReadFlags::IGNORED => {}
                    Ok(_) => events += 1,
                    Err(rustix::io::Errno::WOULDBLOCK | rustix::io::Errno::INTR) => break,
                    Err(_) => return std::future::pending().await,
                }
            }
            ready.clear_ready();
            if events > 0 {
                self.heard = true;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_rename_into_a_watched_directory_is_heard_and_an_unwatched_one_is_not() {
        let dir = zmesh_testkit::TempDir::new("store-notify");
        std::fs::create_dir_all(dir.path().join("watched")).expect("mkdir");
        std::fs::create_dir_all(dir.path().join("other")).expect("mkdir");
        let mut events = TreeEvents::new().expect("inotify on a local filesystem");
        let watched = dir.path().join("watched");
        events.watch([watched.as_path()]);
        let quiet = Duration::from_millis(50);

        std::fs::write(dir.path().join("other/a.yaml"), "x").expect("write");
        let heard = tokio::time::timeout(Duration::from_millis(300), events.settled(quiet)).await;
        assert!(heard.is_err(), "a write outside the watched directories is not heard");

        std::fs::write(dir.path().join("watched/.tmp"), "x").expect("write");
        std::fs::rename(dir.path().join("watched/.tmp"), dir.path().join("watched/a.yaml")).expect("rename");
        tokio::time::timeout(Duration::from_secs(5), events.settled(quiet)).await.expect("the rename is heard");

        events.watch(std::iter::empty());
        std::fs::write(dir.path().join("watched/b.yaml"), "x").expect("write");
        let heard = tokio::time::timeout(Duration::from_millis(300), events.settled(quiet)).await;
        assert!(heard.is_err(), "no longer watched");
    }
}
