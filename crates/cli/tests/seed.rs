//! `zmesh validate` and `zmesh analyze` on the seed configurations: the exact findings,
//! snapshot-tested.

use std::process::Command;

use zmesh_testkit::testdata;

fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_zmesh"))
        .args(args)
        .current_dir(testdata())
        .output()
        .expect("the zmesh binary runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn validate_reports_the_seed_findings() {
    let (code, stdout, stderr) = run(&["validate", "seed-configs"]);
    // The seed's EnvoyFilter has no token bucket: a warning (it limits nothing), not an error.
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.is_empty());
    insta::assert_snapshot!("validate_seed", stderr);
}

#[test]
fn analyze_reports_the_seed_findings() {
    let (code, stdout, stderr) = run(&["analyze", "seed-configs"]);
    assert_eq!(code, Some(1));
    insta::assert_snapshot!("analyze_seed", format!("{stdout}--- stderr ---\n{stderr}"));
}
