//! Istio's validation corpus: documents Istio rejects must be rejected with a precise
//! diagnostic, and the tricky ones it accepts must load.

use zmesh_testkit::{ValidationCase, load_cases};

#[test]
fn every_validation_case_is_judged_as_istio_judges_it() {
    let cases: Vec<ValidationCase> = load_cases("conformance/validation-cases.yaml");
    assert!(cases.len() >= 20, "the corpus shrank to {} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let loaded = zmesh_config::load_str(&case.document);
        let errors: Vec<_> = loaded.errors().collect();
        match (case.valid, errors.is_empty()) {
            (true, false) => failures.push(format!(
                "{}: Istio accepts it ({}) but zmesh says:\n    {}",
                case.name,
                case.reason,
                errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n    ")
            )),
            (false, true) => {
                failures.push(format!("{}: Istio rejects it ({}) but zmesh accepts it", case.name, case.reason))
            }
            (false, false) => {
                for error in &errors {
                    if error.object.is_none() || error.origin.pos.line == 0 || error.hint.is_none() {
                        failures.push(format!("{}: the diagnostic is not precise enough: {error}", case.name));
                    }
                }
            }
            (true, true) => {}
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from Istio:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
