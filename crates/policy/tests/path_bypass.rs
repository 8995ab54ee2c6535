//! `zmesh analyze` (ZM1010): a DENY on a path that the mesh's pathNormalization lets a client
//! spell past. Each spelling is found under the normalization that lets it through, and not
//! under the one that closes it, as `zmesh_http` (Envoy's normalization) computes.

use zmesh_config::load_str;
use zmesh_http::PathNormalization::{self, Base, DecodeAndMergeSlashes, MergeSlashes, None as NoNormalization};
use zmesh_policy::analyze::{BypassClass, analyze, path_bypasses};

fn spelled(pattern: &str, mode: PathNormalization, class: BypassClass) -> Option<String> {
    path_bypasses(pattern, mode).into_iter().find(|b| b.class == class).map(|b| b.sent)
}

#[test]
fn repeated_slashes_pass_a_deny_under_none_and_base_and_not_once_slashes_are_merged() {
    assert_eq!(spelled("/admin", NoNormalization, BypassClass::RepeatedSlashes).as_deref(), Some("//admin"));
    assert_eq!(spelled("/admin", Base, BypassClass::RepeatedSlashes).as_deref(), Some("//admin"));
    assert_eq!(spelled("/admin", MergeSlashes, BypassClass::RepeatedSlashes), None);
    assert_eq!(spelled("/admin", DecodeAndMergeSlashes, BypassClass::RepeatedSlashes), None);
}

#[test]
fn an_encoded_slash_passes_until_slashes_are_decoded_and_merged() {
    for mode in [NoNormalization, Base, MergeSlashes] {
        assert_eq!(spelled("/admin", mode, BypassClass::EncodedSlash).as_deref(), Some("/%2Fadmin"), "{mode:?}");
        assert!(spelled("/admin", mode, BypassClass::EncodedBackslash).is_some(), "{mode:?}");
    }
    assert_eq!(spelled("/admin", DecodeAndMergeSlashes, BypassClass::EncodedSlash), None);
    assert_eq!(spelled("/admin", DecodeAndMergeSlashes, BypassClass::EncodedBackslash), None);
}

#[test]
fn dot_segments_and_encoded_dots_pass_only_without_normalization() {
    assert_eq!(spelled("/admin", NoNormalization, BypassClass::DotSegment).as_deref(), Some("/./admin"));
    assert_eq!(spelled("/admin", NoNormalization, BypassClass::EncodedDot).as_deref(), Some("/%2e/admin"));
    assert_eq!(spelled("/admin", NoNormalization, BypassClass::EncodedCharacter).as_deref(), Some("/%61dmin"));
    for mode in [Base, MergeSlashes, DecodeAndMergeSlashes] {
        for class in [BypassClass::DotSegment, BypassClass::EncodedDot, BypassClass::EncodedCharacter] {
            assert_eq!(spelled("/admin", mode, class), None, "{class:?} under {mode:?}");
        }
    }
}

#[test]
fn a_backslash_passes_without_normalization_and_as_a_repeated_slash_under_base() {
    // BASE turns `\` into `/`, so `/\admin` arrives as `//admin`, which only merging closes.
    assert_eq!(spelled("/admin", NoNormalization, BypassClass::Backslash).as_deref(), Some("/\\admin"));
    let base = path_bypasses("/admin", Base);
    let backslash = base.iter().find(|b| b.class == BypassClass::Backslash).expect("a backslash spelling under BASE");
    assert_eq!(backslash.normalized, "//admin");
    assert_eq!(spelled("/admin", MergeSlashes, BypassClass::Backslash), None);
}

#[test]
fn letter_case_passes_under_every_normalization() {
    for mode in [NoNormalization, Base, MergeSlashes, DecodeAndMergeSlashes] {
        assert_eq!(spelled("/admin", mode, BypassClass::Case).as_deref(), Some("/ADMIN"), "{mode:?}");
    }
    assert_eq!(spelled("/42/7", Base, BypassClass::Case), None, "no letters, no case spelling");
}

#[test]
fn prefix_suffix_and_template_patterns_are_spelled_past_where_they_can_be() {
    assert_eq!(spelled("/admin/*", Base, BypassClass::RepeatedSlashes).as_deref(), Some("//admin/x"));
    // A suffix match still sees `/x//admin` end in `/admin`; the slash has to go before the
    // suffix's own.
    assert_eq!(spelled("*/admin", MergeSlashes, BypassClass::EncodedSlash).as_deref(), Some("/x/%2Fadmin"));
    assert_eq!(spelled("/api/{*}/admin", Base, BypassClass::RepeatedSlashes).as_deref(), Some("//api/x/admin"));
    assert!(path_bypasses("*", NoNormalization).is_empty(), "a presence match cannot be spelled past");
}

const DENY: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: shop}
spec:
  action: DENY
  rules:
  - to:
    - operation:
        paths: [\"/admin\"]
";

fn mesh(mode: &str) -> String {
    format!(
        "apiVersion: v1
kind: ConfigMap
metadata: {{name: istio, namespace: istio-system}}
data:
  mesh: |
    pathNormalization: {{normalization: {mode}}}
---
{DENY}"
    )
}

#[test]
fn analyze_reports_the_spellings_under_the_meshs_normalization_with_the_line_and_a_fix() {
    let loaded = load_str(&mesh("BASE"));
    assert!(!loaded.has_errors(), "{:?}", loaded.errors().collect::<Vec<_>>());
    let found: Vec<_> = analyze(&loaded.config).into_iter().filter(|d| d.code == Some("ZM1010")).collect();
    assert_eq!(found.len(), 1, "{found:?}");
    let finding = &found[0];
    assert_eq!(finding.origin.pos.line, 16);
    assert_eq!(finding.field, "spec.rules[0].to[0].operation.paths[0]");
    assert_eq!(finding.severity, zmesh_config::Severity::Warning);
    assert!(finding.message.contains("under pathNormalization BASE"), "{}", finding.message);
    for spelling in ["`//admin`", "`/%2Fadmin`", "`/ADMIN`"] {
        assert!(finding.message.contains(spelling), "{spelling} missing from: {}", finding.message);
    }
    assert!(!finding.message.contains("`/./admin`"), "BASE resolves dot segments: {}", finding.message);
    let hint = finding.hint.as_deref().unwrap_or_default();
    assert!(hint.contains("DECODE_AND_MERGE_SLASHES"), "{hint}");
    assert!(hint.contains("ALLOW") && hint.contains("..;p"), "{hint}");
}

#[test]
fn under_the_strictest_normalization_only_case_and_dot_segments_with_parameters_remain() {
    let loaded = load_str(&mesh("DECODE_AND_MERGE_SLASHES"));
    let found: Vec<_> = analyze(&loaded.config).into_iter().filter(|d| d.code == Some("ZM1010")).collect();
    assert_eq!(found.len(), 1, "{found:?}");
    // `..;p` reaches a servlet container as the denied path: still a warning.
    assert_eq!(found[0].severity, zmesh_config::Severity::Warning);
    let message = &found[0].message;
    assert!(message.contains("`/ADMIN`") && message.contains("..;p") && !message.contains("`//admin`"), "{message}");
    let hint = found[0].hint.as_deref().unwrap_or_default();
    assert!(hint.contains("ALLOW") && !hint.contains("set meshConfig"), "no mode closes what remains: {hint}");
}

#[test]
fn a_dot_segment_with_parameters_passes_under_every_normalization_as_envoy_keeps_it() {
    for mode in [NoNormalization, Base, MergeSlashes, DecodeAndMergeSlashes] {
        let found = path_bypasses("/admin", mode).into_iter().find(|b| b.class == BypassClass::DotSegmentParameters);
        let found = found.unwrap_or_else(|| panic!("no `..;p` bypass under {mode:?}"));
        assert!(found.normalized.contains("..;p"), "{mode:?}: {found:?}");
    }
}

#[test]
fn a_dry_run_deny_is_not_reported_since_it_enforces_nothing() {
    let yaml = mesh("BASE").replace(
        "metadata: {name: no-admin, namespace: shop}",
        "metadata: {name: no-admin, namespace: shop, annotations: {\"istio.io/dry-run\": \"true\"}}",
    );
    let loaded = load_str(&yaml);
    assert!(!loaded.has_errors(), "{:?}", loaded.errors().collect::<Vec<_>>());
    assert!(loaded.config.authorization_policies.iter().all(|p| p.dry_run), "the policy is read as dry-run");
    assert!(analyze(&loaded.config).iter().all(|d| d.code != Some("ZM1010")));
}
