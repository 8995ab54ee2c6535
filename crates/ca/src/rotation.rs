//! Staged root rotation, so roots change without a single failed handshake.
//!
//! 1. `prepare`: generate a new root and add it to the trust bundle; the old root keeps signing.
//!    Peers pick up the two-root bundle before anything is signed by the new root.
//! 2. `activate`: the new root signs from now on; the old root stays in the bundle, so leaves it
//!    signed keep verifying until they expire.
//! 3. `retire`: drop the old root from the bundle, once no leaf it signed can still be valid.
//!
//! The stage is read from the files under `rotation/` (no separate state to drift), and each
//! step is one crash-safe transaction (see `store.rs`), so a crash leaves the directory at one
//! stage or the next. Running a step out of order is an error naming the step that comes next.
//! After a step, the signing service must `CertificateAuthority::load` the directory again.

use std::fmt;
use std::path::Path;
use std::time::SystemTime;

use ring::rand::SecureRandom;

use crate::chain::{self, Layout};
use crate::inspect::{self, CertInfo};
use crate::store::{self, CA_CERT_FILE, CA_KEY_FILE, CERT_CHAIN_FILE, ROOT_CERT_FILE, Transaction};
use crate::{CaConfig, CaError, clock, pem, root};

const ROTATION_DIR: &str = "rotation";
const NEXT_ROOT_CERT: &str = "rotation/next-root-cert.pem";
const NEXT_ROOT_KEY: &str = "rotation/next-root-key.pem";
const OLD_ROOT_CERT: &str = "rotation/old-root-cert.pem";
const ACTIVATED: &str = "rotation/activated";

/// Where a root rotation stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RotationStage {
    /// No rotation in progress.
    Idle,
    /// The new root is in the bundle; the old root still signs.
    Prepared,
    /// The new root signs; the old root is still in the bundle.
    Activated,
}

/// One step of a root rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RotationStep {
    Prepare,
    Activate,
    Retire,
}

impl RotationStage {
    /// The step that moves the rotation on from this stage.
    pub fn next_step(self) -> RotationStep {
        match self {
            Self::Idle => RotationStep::Prepare,
            Self::Prepared => RotationStep::Activate,
            Self::Activated => RotationStep::Retire,
        }
    }
}

impl fmt::Display for RotationStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Idle => "idle (no rotation in progress)",
            Self::Prepared => "prepared (new root in the bundle, old root still signing)",
            Self::Activated => "activated (new root signing, old root still trusted)",
        })
    }
}

impl fmt::Display for RotationStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Prepare => "prepare",
            Self::Activate => "activate",
            Self::Retire => "retire",
        })
    }
}

/// Whether `retire` waits until every leaf of the old root has expired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetireCheck {
    /// Refuse while a leaf of the old root may still be valid (the safe default).
    WaitForOldLeaves,
    /// Retire now; leaves of the old root stop verifying at once (after a key compromise).
    Force,
}

/// What `zmesh ca rotate status` prints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RotationStatus {
    pub stage: RotationStage,
    pub next_step: RotationStep,
    pub roots_in_bundle: usize,
    /// The root being rotated in (from `prepare` until `retire`).
    pub new_root: Option<CertInfo>,
    /// The root being rotated out (from `prepare` until `retire`).
    pub old_root: Option<CertInfo>,
    pub activated_at: Option<SystemTime>,
    /// The latest expiry of any leaf the old root's chain signed; `retire` waits for it.
    pub old_leaves_valid_until: Option<SystemTime>,
}

/// Where the rotation in `dir` stands.
pub fn status(dir: &Path) -> Result<RotationStatus, CaError> {
    store::recover(dir)?;
    let stage = stage(dir);
    let roots_in_bundle = chain::read_certificates(&dir.join(ROOT_CERT_FILE), "one or more root certificates")?.len();
    let info = |relative: &str| -> Result<Option<CertInfo>, CaError> {
        let path = dir.join(relative);
        if !store::exists(&path) {
            return Ok(None);
        }
        let der = single_cert(&path)?;
        Ok(inspect::inspect_der(&der).ok())
    };
    let activation = if stage == RotationStage::Activated { Some(read_activation(dir)?) } else { None };
    Ok(RotationStatus {
        stage,
        next_step: stage.next_step(),
        roots_in_bundle,
        new_root: info(NEXT_ROOT_CERT)?,
        old_root: info(OLD_ROOT_CERT)?,
        activated_at: activation.map(|a| a.activated_at),
        old_leaves_valid_until: activation.map(|a| a.old_leaves_valid_until),
    })
}

/// Stage 1: generate a new root and add it to the bundle. The CA in `dir` must be a valid,
/// self-generated root (a plugged-in CA is rotated by plugging in new files).
pub fn prepare(dir: &Path, now: SystemTime, rng: &dyn SecureRandom) -> Result<RotationStatus, CaError> {
    store::recover(dir)?;
    expect_stage(dir, RotationStep::Prepare, RotationStage::Idle)?;
    let material = chain::load(&Layout::new(dir), now)?;
    if material.ca_cert != material.anchor {
        return Err(CaError::RotationOfPluggedCa { dir: dir.to_owned() });
    }
    let new_root = root::generate(now, rng)?;
    let mut bundle = pem::encode_certificates(material.roots.iter().map(Vec::as_slice));
    bundle.push_str(&new_root.cert_pem);
    let mut tx = Transaction::new();
    tx.put_secret(NEXT_ROOT_KEY, new_root.key_pem)
        .put(NEXT_ROOT_CERT, new_root.cert_pem)
        .put(OLD_ROOT_CERT, pem::encode(pem::CERTIFICATE, &material.anchor))
        .put(ROOT_CERT_FILE, bundle);
    tx.commit(dir)?;
    status(dir)
}

/// Stage 2: sign with the new root from now on. The old root stays in the bundle.
pub fn activate(dir: &Path, config: &CaConfig, now: SystemTime) -> Result<RotationStatus, CaError> {
    store::recover(dir)?;
    expect_stage(dir, RotationStep::Activate, RotationStage::Prepared)?;
    let key_path = dir.join(NEXT_ROOT_KEY);
    let cert_path = dir.join(NEXT_ROOT_CERT);
    let key = chain::read_key(&key_path)?;
    let new_root = single_cert(&cert_path)?;
    let parsed = chain::parse(&new_root).map_err(|detail| CaError::BadCertificate {
        path: cert_path.clone(),
        index: 1,
        detail,
    })?;
    if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(CaError::KeyMismatch { key_path, cert_path });
    }
    let bundle_path = dir.join(ROOT_CERT_FILE);
    if !chain::read_certificates(&bundle_path, "one or more root certificates")?.contains(&new_root) {
        // Signing with a root peers do not trust yet is exactly the failed handshake staging avoids.
        return Err(CaError::BadRotationState {
            path: bundle_path,
            detail: "the new root is missing from the bundle; add rotation/next-root-cert.pem back to it".to_owned(),
        });
    }
    // The old signer's leaves end no later than its own expiry, nor than max TTL from now.
    let old_signer_path = dir.join(CA_CERT_FILE);
    let old_signer = single_cert(&old_signer_path)?;
    let old_signer_not_after = chain::parse(&old_signer)
        .map(|cert| clock::from_asn1(cert.validity().not_after))
        .map_err(|detail| CaError::BadCertificate { path: old_signer_path, index: 1, detail })?;
    let last_leaf_end = now.checked_add(config.max_ttl).unwrap_or(old_signer_not_after);
    let activation = Activation {
        activated_at: clock::floor_second(now),
        old_leaves_valid_until: clock::floor_second(old_signer_not_after.min(last_leaf_end)),
    };
    let new_root_pem = pem::encode(pem::CERTIFICATE, &new_root);
    let mut tx = Transaction::new();
    tx.put(ACTIVATED, activation.encode())
        .put_secret(CA_KEY_FILE, key.serialize_pem())
        .put(CA_CERT_FILE, new_root_pem.clone())
        .put(CERT_CHAIN_FILE, new_root_pem)
        // ca-key.pem now holds it; one copy of a key is one fewer to protect.
        .remove(NEXT_ROOT_KEY);
    tx.commit(dir)?;
    status(dir)
}

/// Stage 3: remove the old root from the bundle. Leaves it signed stop verifying, so unless
/// forced this waits until the last of them has expired.
pub fn retire(dir: &Path, now: SystemTime, check: RetireCheck) -> Result<RotationStatus, CaError> {
    store::recover(dir)?;
    match stage(dir) {
        RotationStage::Activated => {}
        RotationStage::Prepared => return Err(CaError::RetireWhileOldRootSigns),
        stage @ RotationStage::Idle => {
            return Err(CaError::RotationOutOfOrder {
                attempted: RotationStep::Retire,
                stage,
                next: stage.next_step(),
            });
        }
    }
    let activation = read_activation(dir)?;
    if check == RetireCheck::WaitForOldLeaves && now < activation.old_leaves_valid_until {
        return Err(CaError::OldLeavesStillValid { until: activation.old_leaves_valid_until });
    }
    let bundle_path = dir.join(ROOT_CERT_FILE);
    let old_root = single_cert(&dir.join(OLD_ROOT_CERT))?;
    let new_root = single_cert(&dir.join(NEXT_ROOT_CERT))?;
    let roots = chain::read_certificates(&bundle_path, "one or more root certificates")?;
    let remaining: Vec<Vec<u8>> = roots.into_iter().filter(|root| *root != old_root).collect();
    if !remaining.contains(&new_root) {
        // Someone edited root-cert.pem; retiring now would leave the signing root untrusted.
        return Err(CaError::BadRotationState {
            path: bundle_path,
            detail: "the new root is missing from the bundle; add rotation/next-root-cert.pem back to it".to_owned(),
        });
    }
    let mut tx = Transaction::new();
    tx.put(ROOT_CERT_FILE, pem::encode_certificates(remaining.iter().map(Vec::as_slice)))
        .remove(NEXT_ROOT_KEY)
        .remove(OLD_ROOT_CERT)
        .remove(ACTIVATED)
        .remove(NEXT_ROOT_CERT);
    tx.commit(dir)?;
    // Tidy up; a leftover empty directory is harmless, so failure here is not an error.
    let _ = std::fs::remove_dir(dir.join(ROTATION_DIR));
    status(dir)
}

fn stage(dir: &Path) -> RotationStage {
    if !store::exists(&dir.join(NEXT_ROOT_CERT)) {
        RotationStage::Idle
    } else if store::exists(&dir.join(ACTIVATED)) {
        RotationStage::Activated
    } else {
        RotationStage::Prepared
    }
}

fn expect_stage(dir: &Path, attempted: RotationStep, expected: RotationStage) -> Result<(), CaError> {
    let stage = stage(dir);
    if stage == expected {
        Ok(())
    } else {
        Err(CaError::RotationOutOfOrder { attempted, stage, next: stage.next_step() })
    }
}

fn single_cert(path: &Path) -> Result<Vec<u8>, CaError> {
    let mut ders = chain::read_certificates(path, "one certificate")?;
    Ok(ders.swap_remove(0))
}

/// When the new root took over, and how long leaves of the old one may live.
#[derive(Clone, Copy, Debug)]
struct Activation {
    activated_at: SystemTime,
    old_leaves_valid_until: SystemTime,
}

impl Activation {
    fn encode(&self) -> String {
        format!(
            "activated_at={}\nold_leaves_valid_until={}\n",
            clock::unix_seconds(self.activated_at),
            clock::unix_seconds(self.old_leaves_valid_until)
        )
    }
}

fn read_activation(dir: &Path) -> Result<Activation, CaError> {
    let path = dir.join(ACTIVATED);
    let text = store::read(&path)?;
    let bad = |detail: &str| CaError::BadRotationState { path: path.clone(), detail: detail.to_owned() };
    let text = std::str::from_utf8(&text).map_err(|_| bad("not UTF-8"))?;
    let field = |name: &str| -> Result<SystemTime, CaError> {
        let value = text
            .lines()
            .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix('=')))
            .ok_or_else(|| bad(&format!("missing `{name}`")))?;
        let seconds = value.trim().parse::<i64>().map_err(|_| bad(&format!("`{name}` is not a number")))?;
        Ok(clock::from_unix_seconds(seconds))
    };
    Ok(Activation { activated_at: field("activated_at")?, old_leaves_valid_until: field("old_leaves_valid_until")? })
}

#[cfg(test)]
mod tests;
