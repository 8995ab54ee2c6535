//! Accepted documents are kept as JSON, and reading that JSON back gives the same resources:
//! the control plane pushes exactly these documents and proxies load them with this loader.

use zmesh_config::{FileKind, Loader, load_paths};

#[test]
fn every_seed_configuration_round_trips_through_its_sources() {
    let seeds = zmesh_testkit::testdata().join("seed-configs");
    let mut checked = 0;
    for file in zmesh_config::yaml_files(&seeds).expect("seed directory") {
        let loaded = load_paths(std::slice::from_ref(&file), None);
        if loaded.has_errors() {
            continue; // refused seeds are covered by the CLI snapshot tests
        }
        let mut again = Loader::new();
        for source in &loaded.sources {
            let kind = if source.kind == "MeshConfig" { FileKind::MeshConfig } else { FileKind::Resources };
            again.add_str(None, &source.json, kind);
        }
        let again = again.finish();
        let errors: Vec<String> = again.errors().map(ToString::to_string).collect();
        assert!(errors.is_empty(), "{}: {errors:?}", file.display());
        assert_eq!(again.config.resource_count(), loaded.config.resource_count(), "{}", file.display());
        assert_eq!(again.sources.len(), loaded.sources.len(), "{}", file.display());
        assert_eq!(format!("{:?}", again.config.mesh.trust_domain), format!("{:?}", loaded.config.mesh.trust_domain));
        for (a, b) in loaded.sources.iter().zip(&again.sources) {
            assert_eq!((&a.kind, &a.namespace, &a.name, &a.json), (&b.kind, &b.namespace, &b.name, &b.json));
        }
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} seed files were checked");
}

#[test]
fn a_list_records_each_item_and_a_rejected_document_records_nothing() {
    let loaded = zmesh_config::load_str(
        "apiVersion: v1\nkind: List\nitems:\n- apiVersion: security.istio.io/v1\n  kind: AuthorizationPolicy\n  metadata: {name: a, namespace: x}\n  spec: {}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: b}\nspec: {action: MAYBE}\n",
    );
    let names: Vec<(&str, &str, &str)> =
        loaded.sources.iter().map(|s| (s.kind.as_str(), s.namespace.as_str(), s.name.as_str())).collect();
    assert_eq!(names, [("AuthorizationPolicy", "x", "a")]);
    assert!(loaded.has_errors());
}

#[test]
fn a_directory_symlinked_into_itself_is_listed_once() {
    let dir = zmesh_testkit::TempDir::new("yaml-files-loop");
    dir.write("a.yaml", "");
    std::fs::create_dir_all(dir.path().join("sub")).expect("sub");
    dir.write("sub/b.yml", "");
    std::os::unix::fs::symlink(dir.path(), dir.path().join("sub/loop")).expect("symlink");
    std::os::unix::fs::symlink(dir.path().join("sub"), dir.path().join("again")).expect("symlink");
    let files = zmesh_config::yaml_files(dir.path()).expect("listing");
    let names: Vec<String> =
        files.iter().map(|f| f.strip_prefix(dir.path()).expect("inside").display().to_string()).collect();
    assert_eq!(names, ["a.yaml", "sub/b.yml"]);
}

#[test]
fn appending_per_file_loads_gives_what_one_loader_reads() {
    let mut files: Vec<std::path::PathBuf> =
        zmesh_config::yaml_files(&zmesh_testkit::testdata().join("seed-configs")).expect("seed directory");
    // More MeshConfig sources (a seed has one in an IstioOperator): all but the first are
    // refused by both ways of loading.
    let dir = zmesh_testkit::TempDir::new("append-mesh");
    files.push(dir.write("mesh.yaml", "rootNamespace: first-root\n"));
    files.push(dir.write("mesh.yml", "rootNamespace: second-root\n"));
    let whole = load_paths(&files, None);

    let mut appended = zmesh_config::Loaded::default();
    for file in &files {
        appended.append(&load_paths(std::slice::from_ref(file), None));
    }
    assert_eq!(appended.sources, whole.sources, "same documents, selectors and load order");
    assert_eq!((appended.files, appended.documents), (whole.files, whole.documents));
    let rendered = |l: &zmesh_config::Loaded| l.diagnostics.iter().map(ToString::to_string).collect::<Vec<_>>();
    assert_eq!(rendered(&appended), rendered(&whole));
    assert!(rendered(&whole).iter().any(|d| d.contains("MeshConfig is given a second time")), "{:?}", rendered(&whole));
    assert_eq!(format!("{:?}", appended.config), format!("{:?}", whole.config), "typed resources and their ages");
    assert!(whole.sources.iter().any(|s| s.selector.is_some()), "some seed policy has a selector");
}
