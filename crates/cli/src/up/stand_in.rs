//! `zmesh up --config DIR` for configuration written for a cluster: Deployments, StatefulSets,
//! DaemonSets, ReplicaSets and Pods outside the root namespace that have no address yet (no `status.podIP`) get one here,
//! as the kubelet would give each pod one, through a generated WorkloadEntry — the pod
//! template's labels, service account and container ports — and an echo app stands in for the
//! application on each port.
//!
//! The user's files are not touched: the control plane reads a directory holding a link to
//! them and the generated file, so edits to the user's files still reach it within a second.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use zmesh_config::Diagnostic;

/// The generated file, beside the link to the user's directory.
pub(crate) const GENERATED: &str = "zmesh-up-addresses.yaml";

/// The workload kinds whose pods `up` runs.
const POD_KINDS: [&str; 5] = ["Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"];

/// What [`prepare`] made of the user's directory.
#[derive(Debug)]
pub(crate) struct Prepared {
    /// The directory the control plane reads.
    pub config_dir: PathBuf,
    /// `namespace/name` of the workloads given an address here (their apps are echo stand-ins).
    pub stand_ins: Vec<String>,
    /// What the configuration holds but zmesh does not enforce or apply (warnings, with their
    /// codes and file:line), to list when the mesh starts.
    pub not_enforced: Vec<Diagnostic>,
}

/// The address of the `index`th workload given one here: `PREFIX.10.n`, then `PREFIX.11.n`…,
/// apart from the ones the demo mesh and the bridge use.
fn address(prefix: [u8; 2], index: usize) -> Ipv4Addr {
    let third = 10 + (index / 250) as u8;
    let fourth = 2 + (index % 250) as u8;
    Ipv4Addr::new(prefix[0], prefix[1], third, fourth)
}

/// Reads `user_dir`, writes the WorkloadEntries for its address-less pods and the link to it
/// into `state_config` (an empty directory), and says what it did.
pub(crate) fn prepare(user_dir: &Path, state_config: &Path, prefix: [u8; 2]) -> anyhow::Result<Prepared> {
    let user_dir = user_dir.canonicalize().with_context(|| format!("cannot read {}", user_dir.display()))?;
    let loaded = zmesh_config::load_paths(std::slice::from_ref(&user_dir), None);
    let taken: Vec<(String, String)> = loaded
        .config
        .workload_entries
        .iter()
        .map(|entry| (entry.meta.namespace.clone(), entry.meta.name.clone()))
        .collect();
    let mut yaml = String::from(
        "# Written by `zmesh up`: an address for each pod of the configuration that has none yet,\n\
         # as the kubelet would give it one. Edit the configuration itself, not this file.\n",
    );
    let mut stand_ins = Vec::new();
    for workload in &loaded.config.workloads {
        let key = (workload.meta.namespace.clone(), workload.meta.name.clone());
        // The root namespace (istio-system) is the control plane's own; zmesh's runs here.
        let runs = POD_KINDS.contains(&workload.kind.as_str())
            && workload.meta.namespace != loaded.config.mesh.root_namespace
            && workload.pod_ip.is_none()
            && workload.injection() != Some(false)
            && !taken.contains(&key)
            && !stand_ins.contains(&format!("{}/{}", key.0, key.1));
        if !runs {
            continue;
        }
        let labels: Vec<String> =
            workload.pod_labels.iter().map(|(k, v)| format!("{}: {}", yaml_string(k), yaml_string(v))).collect();
        let ports: Vec<String> = workload
            .container_ports
            .iter()
            .enumerate()
            .map(|(i, port)| {
                let name = if port.name.is_empty() { format!("port-{i}") } else { port.name.clone() };
                format!("{}: {}", yaml_string(&name), port.number)
            })
            .collect();
        let _ = write!(
            yaml,
            "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {}, namespace: {}}}\n\
             spec: {{address: {}, serviceAccount: {}, labels: {{{}}}, ports: {{{}}}}}\n",
            yaml_string(&key.1),
            yaml_string(&key.0),
            address(prefix, stand_ins.len()),
            yaml_string(&workload.service_account),
            labels.join(", "),
            ports.join(", "),
        );
        stand_ins.push(format!("{}/{}", key.0, key.1));
    }
    std::fs::write(state_config.join(GENERATED), yaml)
        .with_context(|| format!("cannot write {}", state_config.join(GENERATED).display()))?;
    let link = state_config.join("config");
    std::os::unix::fs::symlink(&user_dir, &link)
        .with_context(|| format!("cannot link {} to {}", link.display(), user_dir.display()))?;
    let not_enforced = loaded.diagnostics.into_iter().filter(|d| !d.is_error()).collect();
    Ok(Prepared { config_dir: state_config.to_path_buf(), stand_ins, not_enforced })
}

/// A YAML double-quoted string (JSON's escapes are YAML's).
fn yaml_string(text: &str) -> String {
    serde_json::Value::String(text.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_deployments_and_pods_get_addresses_and_load_with_the_user_s_files() {
        let state = zmesh_testkit::TempDir::new("stand-in");
        let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/seed-configs");
        let prepared = prepare(&seeds, state.path(), [127, 0]).unwrap();
        assert_eq!(prepared.stand_ins, ["default/example-app", "fintech-core/payment-processor"]);
        let loaded = zmesh_config::load_paths(&[state.path().to_path_buf()], None);
        assert!(!loaded.has_errors(), "{:?}", loaded.errors().collect::<Vec<_>>());
        let registry = zmesh_registry::Registry::from_config(&loaded.config);
        assert_eq!(registry.workloads().count(), prepared.stand_ins.len());
        let codes: Vec<&str> = prepared.not_enforced.iter().filter_map(|d| d.code).collect();
        for code in ["ZM2002", "ZM2011", "ZM2012"] {
            assert!(codes.contains(&code), "{code} missing from {codes:?}");
        }
    }

    #[test]
    fn addresses_stay_clear_of_the_demo_and_the_bridge() {
        assert_eq!(address([127, 0], 0), Ipv4Addr::new(127, 0, 10, 2));
        assert_eq!(address([10, 88], 251), Ipv4Addr::new(10, 88, 11, 3));
    }
}
