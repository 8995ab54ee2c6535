//! Any bytes through the whole configuration loader and policy compiler: no panic, no hang,
//! bounded memory (the YAML limits refuse alias bombs and deep nesting).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let loaded = zmesh_config::load_str(text);
    for diagnostic in &loaded.diagnostics {
        let _ = diagnostic.to_string();
    }
    let set = zmesh_policy::PolicySet::compile(&loaded.config);
    let _ = zmesh_policy::analyze::analyze(&loaded.config);
    let workload = zmesh_policy::Workload {
        namespace: "foo".into(),
        labels: [("app".to_owned(), "httpbin".to_owned())].into(),
        service_account: "sa".into(),
    };
    let _ = set.for_workload(&workload).authorize(&zmesh_policy::Request::default());
    let _ = set.mtls_mode(&workload, 8080);
});
