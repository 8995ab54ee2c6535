//! Configuration pushes from the control plane: any bytes decoded as a `ConfigResponse`,
//! applied to what a proxy already holds as the proxy applies a push (removals, then
//! additions), then loaded with the validating loader and compiled for the workload. Never
//! panics; the size cap on the input bounds the work (no document can be larger than it).
#![no_main]

use std::collections::BTreeMap;

use prost::Message as _;
use zmesh_xds::config::{ConfigResponse, Resource};

const MAX_INPUT: usize = 64 * 1024;

/// What the proxy holds before the push: its own workload, so most pushes compile.
fn held() -> BTreeMap<String, Resource> {
    let workload = Resource {
        key: "WorkloadEntry/foo/httpbin".into(),
        version: "1".into(),
        document:
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: httpbin, namespace: foo}\n\
                   spec: {address: 10.0.0.7, labels: {app: httpbin}, serviceAccount: httpbin}\n"
                .into(),
        order: 1,
    };
    [(workload.key.clone(), workload)].into()
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_INPUT {
        return;
    }
    let Ok(response) = ConfigResponse::decode(data) else { return };
    let mut candidate = held();
    for key in &response.removed {
        candidate.remove(key);
    }
    for resource in response.resources {
        candidate.insert(resource.key.clone(), resource);
    }
    if let Ok(config) = zmesh_proxy::subscription::build(&candidate, &response.version_info, "foo", "httpbin") {
        // What the proxy does with a new version at once: its policy answers a request.
        let _ = config.admission.policy().authorize(&zmesh_policy::Request::default());
    }
});
