//! `zmesh ca …` (the CA offline) and `zmesh cert inspect`.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context as _;
use ring::rand::SystemRandom;
use zmesh_ca::rotation::{self, RetireCheck, RotationStatus};
use zmesh_ca::{CaConfig, CertInfo, CertificateAuthority, Opened};
use zmesh_id::{SpiffeId, TrustDomain};

use crate::check::Output;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum CaCommand {
    /// Create a CA in DIR (a new root), or check the one already there.
    Init {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        #[arg(long, default_value = "cluster.local")]
        trust_domain: TrustDomain,
    },
    /// Issue an SVID with a new key, for a machine outside the mesh or a test.
    Issue {
        /// The SPIFFE ID to issue, e.g. spiffe://cluster.local/ns/default/sa/web.
        #[arg(long)]
        identity: SpiffeId,
        #[arg(long, value_name = "DIR")]
        ca_dir: PathBuf,
        /// Where to write cert-chain.pem, key.pem and root-cert.pem.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Lifetime, such as 24h or 90m (capped by the CA's maximum).
        #[arg(long, default_value = "24h")]
        ttl: String,
    },
    /// Print a bootstrap token proving IDENTITY to the control plane that uses this CA directory
    /// (for `zmesh proxy --token-file`). The token key (`bootstrap-token.key`) is created next
    /// to the CA's key if the control plane has not made it yet.
    Token {
        /// The SPIFFE ID the token proves, e.g. spiffe://cluster.local/ns/default/sa/web.
        #[arg(long)]
        identity: SpiffeId,
        /// The control plane's CA directory (`zmesh control-plane --ca-dir`).
        #[arg(long, visible_alias = "dir", value_name = "DIR")]
        ca_dir: PathBuf,
        /// How long the token is accepted, such as 10m or 1h (at most 1h: a token only gets a
        /// workload its first certificate).
        #[arg(long, default_value = "10m")]
        ttl: String,
    },
    /// Rotate the root in stages: prepare (add the new root to the bundle), activate (sign with
    /// it), retire (drop the old root once no old leaf can be valid).
    Rotate {
        #[command(subcommand)]
        step: RotateStep,
    },
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum RotateStep {
    /// Where a rotation stands and what comes next.
    Status {
        #[arg(long, value_name = "DIR")]
        ca_dir: PathBuf,
    },
    /// Stage 1: generate the new root and add it to the trust bundle (the old one still signs).
    Prepare {
        #[arg(long, value_name = "DIR")]
        ca_dir: PathBuf,
    },
    /// Stage 2: sign with the new root (after every workload has the new bundle).
    Activate {
        #[arg(long, value_name = "DIR")]
        ca_dir: PathBuf,
        #[arg(long, default_value = "cluster.local")]
        trust_domain: TrustDomain,
    },
    /// Stage 3: remove the old root from the bundle.
    Retire {
        #[arg(long, value_name = "DIR")]
        ca_dir: PathBuf,
        /// Retire even though leaves signed by the old root may still be valid.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum CertCommand {
    /// Identity, issuer, serial and validity of every certificate in a PEM file.
    Inspect {
        file: PathBuf,
        #[arg(short = 'o', long, value_enum, default_value = "text")]
        output: Output,
    },
}

fn rfc3339(time: SystemTime) -> String {
    zmesh_ca::Rfc3339(time).to_string()
}

/// Writes `contents` to `path`; a secret is created with mode 0600 (and an existing file is
/// restricted) before any byte is written, so the key is never readable under the umask's mode.
fn write_file(path: &Path, contents: &str, secret: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if secret {
        options.mode(0o600);
    }
    let mut file = options.open(path).with_context(|| format!("cannot write {}", path.display()))?;
    if secret {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot restrict {} to its owner", path.display()))?;
    }
    file.write_all(contents.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn print_status(status: &RotationStatus) {
    outln!("stage: {}", status.stage);
    outln!("roots in the bundle: {}", status.roots_in_bundle);
    outln!("next step: {}", status.next_step);
    if let Some(until) = status.old_leaves_valid_until {
        outln!("leaves of the old root may be valid until: {}", rfc3339(until));
    }
}

pub(crate) fn ca(command: CaCommand) -> anyhow::Result<u8> {
    let rng = SystemRandom::new();
    let now = SystemTime::now();
    match command {
        CaCommand::Init { dir, trust_domain } => {
            let (ca, opened) = CertificateAuthority::open_or_create(&dir, CaConfig::new(trust_domain), now, &rng)?;
            let verb = match opened {
                Opened::GeneratedRoot => "created a new root CA in",
                Opened::LoadedExisting => "loaded the existing CA in",
            };
            outln!("{verb} {}", dir.display());
            outln!("signing certificate valid until {}", rfc3339(ca.signing_cert_not_after()));
            outln!(
                "trust bundle: {} root(s) in {}",
                ca.roots_der().len(),
                dir.join(zmesh_ca::ROOT_CERT_FILE).display()
            );
        }
        CaCommand::Issue { identity, ca_dir, out, ttl } => {
            let ttl = zmesh_config::authn::parse_duration(&ttl)
                .filter(|d| !d.is_zero())
                .ok_or_else(|| crate::UsageError(format!("--ttl `{ttl}` is not a duration such as 24h or 90m")))?;
            let config = CaConfig { trust_domain: identity.trust_domain().clone(), ..CaConfig::default() };
            let ca = CertificateAuthority::load(&ca_dir, config, now)?;
            let (svid, key) = ca.issue_with_new_key(&identity, Some(ttl), now, &rng)?;
            std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
            write_file(&out.join("cert-chain.pem"), &svid.chain_pem, false)?;
            write_file(&out.join("key.pem"), key.expose(), true)?;
            write_file(&out.join("root-cert.pem"), ca.trust_bundle_pem(), false)?;
            outln!("issued {} (serial {}) valid until {}", svid.id, svid.serial_hex, rfc3339(svid.not_after));
            if svid.ttl_capped {
                outln!("note: the lifetime was shortened to the CA's maximum");
            }
            outln!("wrote cert-chain.pem, key.pem and root-cert.pem to {}", out.display());
        }
        CaCommand::Token { identity, ca_dir, ttl: text } => {
            let ttl = zmesh_config::authn::parse_duration(&text)
                .filter(|d| !d.is_zero())
                .ok_or_else(|| crate::UsageError(format!("--ttl `{text}` is not a duration such as 24h or 90m")))?;
            // A typo must not create a key nobody uses: the directory has to exist already.
            if !ca_dir.is_dir() {
                return Err(crate::UsageError(format!(
                    "--ca-dir {}: no such directory (start `zmesh control-plane --ca-dir` or run `zmesh ca init` first)",
                    ca_dir.display()
                ))
                .into());
            }
            if ttl > zmesh_control::tokens::MAX_TOKEN_TTL {
                return Err(crate::UsageError(format!(
                    "--ttl `{text}` is too long: bootstrap tokens live at most {} minutes (they only get a workload its first certificate; renewals use the certificate)",
                    zmesh_control::tokens::MAX_TOKEN_TTL.as_secs() / 60
                ))
                .into());
            }
            let expires = now + ttl;
            let token = zmesh_control::plane::token_issuer(&ca_dir)?.issue(&identity, now, expires);
            outln!("{token}");
        }
        CaCommand::Rotate { step } => {
            let status = match step {
                RotateStep::Status { ca_dir } => rotation::status(&ca_dir)?,
                RotateStep::Prepare { ca_dir } => rotation::prepare(&ca_dir, now, &rng)?,
                RotateStep::Activate { ca_dir, trust_domain } => {
                    rotation::activate(&ca_dir, &CaConfig::new(trust_domain), now)?
                }
                RotateStep::Retire { ca_dir, force } => rotation::retire(
                    &ca_dir,
                    now,
                    if force { RetireCheck::Force } else { RetireCheck::WaitForOldLeaves },
                )?,
            };
            print_status(&status);
        }
    }
    Ok(0)
}

fn resource(info: &CertInfo, index: usize) -> (&'static str, &'static str) {
    match (index, info.is_ca, info.subject == info.issuer) {
        (0, false, _) => ("default", "Cert Chain"),
        (_, true, true) => ("ROOTCA", "CA"),
        (_, true, false) => ("INTERMEDIATE", "CA"),
        _ => ("default", "Cert Chain"),
    }
}

pub(crate) fn cert(command: CertCommand) -> anyhow::Result<u8> {
    let CertCommand::Inspect { file, output } = command;
    let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
    let certs =
        zmesh_ca::inspect_pem(&text).with_context(|| format!("{} holds no readable certificate", file.display()))?;
    let now = SystemTime::now();
    let valid = |info: &CertInfo| info.not_before <= now && now < info.not_after;
    match output {
        Output::Json => {
            let list: Vec<serde_json::Value> = certs
                .iter()
                .enumerate()
                .map(|(i, info)| {
                    let (name, kind) = resource(info, i);
                    serde_json::json!({
                        "resourceName": name,
                        "type": kind,
                        "identity": info.spiffe_ids,
                        "dnsNames": info.dns_names,
                        "subject": info.subject,
                        "issuer": info.issuer,
                        "serialNumber": info.serial_hex,
                        "notBefore": rfc3339(info.not_before),
                        "notAfter": rfc3339(info.not_after),
                        "validCert": valid(info),
                        "isCa": info.is_ca,
                        "keyAlgorithm": info.key_algorithm.to_string(),
                    })
                })
                .collect();
            outln!("{}", serde_json::to_string_pretty(&list)?);
        }
        Output::Text => {
            let header = [
                "RESOURCE NAME",
                "TYPE",
                "STATUS",
                "VALID CERT",
                "SERIAL NUMBER",
                "NOT AFTER",
                "NOT BEFORE",
                "IDENTITY",
                "ISSUER",
            ];
            let rows: Vec<Vec<String>> = certs
                .iter()
                .enumerate()
                .map(|(i, info)| {
                    let (name, kind) = resource(info, i);
                    let identity = if info.spiffe_ids.is_empty() { "-".to_owned() } else { info.spiffe_ids.join(",") };
                    vec![
                        name.to_owned(),
                        kind.to_owned(),
                        "ACTIVE".to_owned(),
                        valid(info).to_string(),
                        info.serial_hex.clone(),
                        rfc3339(info.not_after),
                        rfc3339(info.not_before),
                        identity,
                        info.issuer.clone(),
                    ]
                })
                .collect();
            out!("{}", table(&header, &rows));
        }
    }
    Ok(0)
}

/// Space-aligned columns with three spaces of padding, as istioctl's tabwriter prints them.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}   "));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_pad_columns_like_istioctl() {
        let out = table(&["A", "LONG HEADER"], &[vec!["value".into(), "x".into()]]);
        assert_eq!(out, "A       LONG HEADER\nvalue   x\n");
    }
}
