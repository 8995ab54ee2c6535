//! End-to-end scripts: each runs in new user, network and mount namespaces (`unshare`), so it
//! needs no real root and leaves the host untouched, and reports `RESULT <name> <value>` lines.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::process::{Command, Output};

/// Runs `bash SCRIPT ARGS…` inside `unshare --user --map-root-user --net --mount --fork`.
/// Panics, naming what is missing, when `unshare` cannot be run at all.
pub fn unshare_bash<I, S>(script: &str, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new("unshare")
        .args(["--user", "--map-root-user", "--net", "--mount", "--fork", "bash", script])
        .args(args)
        .output()
        .expect("`unshare` must be installed (util-linux); CI installs it")
}

/// The `RESULT <name> <value>` lines of a script's output, by name.
pub fn results(stdout: &str) -> HashMap<String, String> {
    stdout
        .lines()
        .filter_map(|line| line.strip_prefix("RESULT "))
        .map(|line| {
            line.split_once(' ').map_or((line.to_owned(), String::new()), |(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect()
}
