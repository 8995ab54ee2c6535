//! PeerAuthentication and RequestAuthentication (`security.istio.io/v1`, `v1beta1`).

use std::collections::BTreeMap;

use crate::decode::Ctx;
use crate::meta::{DRY_RUN_ANNOTATION, Meta, Selector, TargetRef, read_attachment, read_selector};
use crate::yaml::{Node, Pos, ScalarType};

/// A PeerAuthentication mTLS mode. `Unset` inherits from the level above.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MtlsMode {
    #[default]
    Unset,
    Disable,
    Permissive,
    Strict,
}

impl MtlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            MtlsMode::Unset => "UNSET",
            MtlsMode::Disable => "DISABLE",
            MtlsMode::Permissive => "PERMISSIVE",
            MtlsMode::Strict => "STRICT",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAuthentication {
    pub meta: Meta,
    pub selector: Option<Selector>,
    pub mode: MtlsMode,
    /// Per workload (container) port overrides.
    pub port_level_mtls: BTreeMap<u16, MtlsMode>,
    /// `istio.io/dry-run: "true"`: not enforced; proxies count and log the plaintext connections
    /// it would refuse. Istio reads this annotation on AuthorizationPolicy only; reading it on
    /// PeerAuthentication is a zmesh extension (Istio would enforce such a policy).
    pub dry_run: bool,
}

impl PeerAuthentication {
    /// A selector with at least one label; an empty selector counts as none (Istio treats it as
    /// namespace-wide).
    pub fn has_selector(&self) -> bool {
        self.selector.as_ref().is_some_and(|s| !s.match_labels.is_empty())
    }
}

fn read_mode(ctx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<MtlsMode> {
    let mut fields = ctx.map(node, path)?;
    let mode = fields.string(ctx, "mode");
    let mode_path = fields.path("mode");
    fields.finish(ctx);
    let Some(mode) = mode else {
        return Some(MtlsMode::Unset);
    };
    match mode.value.as_str() {
        "UNSET" => Some(MtlsMode::Unset),
        "DISABLE" => Some(MtlsMode::Disable),
        "PERMISSIVE" => Some(MtlsMode::Permissive),
        "STRICT" => Some(MtlsMode::Strict),
        other => {
            ctx.error(
                mode.pos,
                &mode_path,
                format!("unknown mTLS mode `{other}`"),
                "use UNSET, DISABLE, PERMISSIVE or STRICT (upper case)",
            );
            None
        }
    }
}

pub(crate) fn read_peer_authentication(
    ctx: &mut Ctx<'_>,
    meta: Meta,
    spec: Option<(&Node, String)>,
) -> Option<PeerAuthentication> {
    let mark = ctx.diagnostics.len();
    let dry_run = meta.annotations.get(DRY_RUN_ANNOTATION).is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if dry_run {
        ctx.warn(
            crate::load::codes::PEER_AUTHENTICATION_DRY_RUN,
            meta.origin.pos,
            &format!("metadata.annotations.{DRY_RUN_ANNOTATION}"),
            "PeerAuthentication is dry-run: observed, not enforced; proxies count the plaintext connections it would refuse (zmesh_mtls_dry_run_refusals_total) and log each one",
            "Istio reads istio.io/dry-run on AuthorizationPolicy only and would enforce this policy; check `zmesh mtls-readiness`, then remove the annotation to enforce it",
        );
    }
    let mut policy =
        PeerAuthentication { meta, selector: None, mode: MtlsMode::Unset, port_level_mtls: BTreeMap::new(), dry_run };
    let Some((spec_node, spec_path)) = spec else {
        return Some(policy);
    };
    let mut spec = ctx.map(spec_node, &spec_path)?;
    policy.selector = read_selector(ctx, &mut spec, "selector");
    if let Some((node, path)) = spec.get("mtls") {
        policy.mode = read_mode(ctx, node, &path).unwrap_or_default();
    }
    let port_path = spec.path("portLevelMtls");
    if let Some(entries) = spec.entries(ctx, "portLevelMtls") {
        if entries.is_empty() {
            ctx.error(spec_node.pos, &port_path, "portLevelMtls is empty", "remove it, or list ports with their modes");
        }
        if !policy.has_selector() {
            ctx.error(
                spec_node.pos,
                &port_path,
                "portLevelMtls requires a workload selector",
                "add selector.matchLabels naming the workloads whose ports these are",
            );
        }
        for (key, value, path) in entries {
            let text = key.scalar_text().unwrap_or_default();
            let port = match (key.scalar_type(), text.parse::<u32>()) {
                (Some(ScalarType::Int | ScalarType::String), Ok(port)) if (1..=65535).contains(&port) => port as u16,
                (_, Ok(port)) => {
                    ctx.error(key.pos, &path, format!("port {port} is out of range"), "use a port from 1 to 65535");
                    continue;
                }
                _ => {
                    ctx.error(
                        key.pos,
                        &path,
                        format!("`{text}` is not a port number"),
                        "key portLevelMtls by the workload's port number",
                    );
                    continue;
                }
            };
            if let Some(mode) = read_mode(ctx, value, &path) {
                policy.port_level_mtls.insert(port, mode);
            }
        }
    }
    spec.finish(ctx);
    (!ctx.has_errors_since(mark)).then_some(policy)
}

/// One way a JWT may arrive in a header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtHeader {
    pub name: String,
    /// The token must follow this exact prefix (such as `Bearer `).
    pub prefix: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimToHeader {
    pub header: String,
    pub claim: String,
}

/// A `jwtRules` entry: how to find and verify tokens of one issuer.
#[derive(Debug, Clone, PartialEq)]
pub struct JwtRule {
    pub pos: Pos,
    pub issuer: String,
    /// Accepted audiences; empty means the audience is not checked.
    pub audiences: Vec<String>,
    pub jwks_uri: Option<String>,
    /// An inline JWK set (JSON), already checked to parse.
    pub jwks: Option<serde_json::Value>,
    pub from_headers: Vec<JwtHeader>,
    pub from_params: Vec<String>,
    pub from_cookies: Vec<String>,
    pub output_payload_to_header: Option<String>,
    pub forward_original_token: bool,
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    pub timeout: Option<std::time::Duration>,
    /// Claims whose space-separated string is split into a list (added to `scope` and
    /// `permission`, which are always split).
    pub space_delimited_claims: Vec<String>,
}

impl JwtRule {
    /// Where tokens are looked for: the configured locations, or by default the
    /// `Authorization: Bearer` header and the `access_token` query parameter.
    pub fn uses_default_locations(&self) -> bool {
        self.from_headers.is_empty() && self.from_params.is_empty() && self.from_cookies.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RequestAuthentication {
    pub meta: Meta,
    pub selector: Option<Selector>,
    pub target_refs: Vec<TargetRef>,
    pub jwt_rules: Vec<JwtRule>,
}

pub(crate) fn read_request_authentication(
    ctx: &mut Ctx<'_>,
    meta: Meta,
    spec: Option<(&Node, String)>,
) -> Option<RequestAuthentication> {
    let mark = ctx.diagnostics.len();
    let mut policy = RequestAuthentication { meta, selector: None, target_refs: Vec::new(), jwt_rules: Vec::new() };
    let Some((spec_node, spec_path)) = spec else {
        return Some(policy);
    };
    let mut spec = ctx.map(spec_node, &spec_path)?;
    (policy.selector, policy.target_refs) = read_attachment(ctx, &mut spec);
    for (node, path) in spec.items(ctx, "jwtRules").unwrap_or_default() {
        policy.jwt_rules.extend(read_jwt_rule(ctx, node, &path));
    }
    spec.finish(ctx);
    (!ctx.has_errors_since(mark)).then_some(policy)
}

fn read_jwt_rule(ctx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<JwtRule> {
    let mut fields = ctx.map(node, path)?;
    let issuer = fields.string(ctx, "issuer");
    let audiences = fields.strings(ctx, "audiences").unwrap_or_default();
    let jwks_uri = fields.string(ctx, "jwksUri");
    let jwks = fields.string(ctx, "jwks");
    let mut rule = JwtRule {
        pos: node.pos,
        issuer: issuer.as_ref().map(|i| i.value.clone()).unwrap_or_default(),
        audiences: Vec::new(),
        jwks_uri: None,
        jwks: None,
        from_headers: Vec::new(),
        from_params: Vec::new(),
        from_cookies: Vec::new(),
        output_payload_to_header: fields.string(ctx, "outputPayloadToHeader").map(|s| s.value),
        forward_original_token: fields.bool(ctx, "forwardOriginalToken").unwrap_or(false),
        output_claim_to_headers: Vec::new(),
        timeout: None,
        space_delimited_claims: Vec::new(),
    };
    if issuer.as_ref().is_none_or(|i| i.is_empty()) && jwks_uri.as_ref().is_none_or(|u| u.is_empty()) {
        ctx.error(
            node.pos,
            &fields.path("issuer"),
            "a jwtRule needs an issuer or a jwksUri",
            "set `issuer` to the token's `iss` claim",
        );
    }
    for (i, audience) in audiences.iter().enumerate() {
        if audience.is_empty() {
            ctx.error(audience.pos, &format!("{}[{i}]", fields.path("audiences")), "empty audience", "remove it");
        }
    }
    rule.audiences = audiences.into_iter().map(|a| a.value).collect();
    if let Some(uri) = &jwks_uri
        && let Err(message) = check_http_uri(uri)
    {
        ctx.error(uri.pos, &fields.path("jwksUri"), message, "use an http:// or https:// URL with a host");
    }
    if let (Some(_), Some(inline)) = (&jwks_uri, &jwks) {
        ctx.error(
            inline.pos,
            &fields.path("jwks"),
            "jwks and jwksUri are both set",
            "keep one: the inline key set or the URL to fetch it from",
        );
    }
    if let Some(inline) = &jwks {
        match serde_json::from_str::<serde_json::Value>(inline) {
            Ok(value) if value.get("keys").is_some_and(serde_json::Value::is_array) => rule.jwks = Some(value),
            Ok(_) => ctx.error(
                inline.pos,
                &fields.path("jwks"),
                "jwks is JSON but not a JWK set",
                "give an object with a `keys` list",
            ),
            Err(error) => ctx.error(
                inline.pos,
                &fields.path("jwks"),
                format!("jwks is not valid JSON: {error}"),
                "give the JWK set as a JSON string",
            ),
        }
    }
    rule.jwks_uri = jwks_uri.map(|u| u.value);
    for (item, item_path) in fields.items(ctx, "fromHeaders").unwrap_or_default() {
        let Some(mut header) = ctx.map(item, &item_path) else {
            continue;
        };
        let name = header.string(ctx, "name");
        let prefix = header.string(ctx, "prefix").map(|p| p.value).unwrap_or_default();
        header.finish(ctx);
        match name {
            Some(name) if !name.is_empty() => {
                rule.from_headers.push(JwtHeader { name: name.value.to_ascii_lowercase(), prefix })
            }
            _ => ctx.error(
                item.pos,
                &format!("{item_path}.name"),
                "fromHeaders entry without a header name",
                "set `name`, such as Authorization",
            ),
        }
    }
    for (key, target) in [
        ("fromParams", &mut rule.from_params),
        ("fromCookies", &mut rule.from_cookies),
        ("spaceDelimitedClaims", &mut rule.space_delimited_claims),
    ] {
        let path = fields.path(key);
        for (i, value) in fields.strings(ctx, key).unwrap_or_default().into_iter().enumerate() {
            if value.is_empty() {
                ctx.error(value.pos, &format!("{path}[{i}]"), "empty entry", "remove it");
            } else {
                target.push(value.value);
            }
        }
    }
    for (item, item_path) in fields.items(ctx, "outputClaimToHeaders").unwrap_or_default() {
        let Some(mut entry) = ctx.map(item, &item_path) else {
            continue;
        };
        let header = entry.string(ctx, "header").map(|h| h.value).unwrap_or_default();
        let claim = entry.string(ctx, "claim").map(|c| c.value).unwrap_or_default();
        entry.finish(ctx);
        if header.is_empty() || claim.is_empty() {
            ctx.error(item.pos, &item_path, "outputClaimToHeaders needs both header and claim", "set both");
        } else if !header.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            ctx.error(
                item.pos,
                &format!("{item_path}.header"),
                format!("`{header}` is not a valid header name"),
                "use letters, digits, '-' and '_' only",
            );
        } else {
            rule.output_claim_to_headers.push(ClaimToHeader { header, claim });
        }
    }
    if let Some(timeout) = fields.string(ctx, "timeout") {
        match parse_duration(&timeout) {
            Some(duration) if !duration.is_zero() => rule.timeout = Some(duration),
            _ => ctx.error(
                timeout.pos,
                &fields.path("timeout"),
                format!("`{}` is not a valid duration", timeout.value),
                "write a positive duration such as 5s or 500ms",
            ),
        }
    }
    fields.finish(ctx);
    Some(rule)
}

fn check_http_uri(uri: &str) -> Result<(), String> {
    let rest = uri
        .strip_prefix("https://")
        .or_else(|| uri.strip_prefix("http://"))
        .ok_or_else(|| format!("`{uri}` is not an http or https URL"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(format!("`{uri}` has no valid host"));
    }
    Ok(())
}

/// A duration in Go/protobuf-JSON style: `1.5s`, `500ms`, `1m30s`, `2h`.
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let number: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += number * seconds_per_unit;
        rest = &rest[unit_end..];
    }
    std::time::Duration::try_from_secs_f64(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_go_style_units() {
        assert_eq!(parse_duration("0.5s"), Some(std::time::Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Some(std::time::Duration::from_secs(90)));
        assert_eq!(parse_duration("100ms"), Some(std::time::Duration::from_millis(100)));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("5 parsecs"), None);
    }

    #[test]
    fn jwks_uri_must_be_http_with_a_host() {
        assert!(check_http_uri("https://auth.company.com/.well-known/jwks.json").is_ok());
        assert!(check_http_uri("ftp://example.com/jwks.json").is_err());
        assert!(check_http_uri("https:///jwks").is_err());
    }

    const DRY_RUN_STRICT: &str = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: strict-trial
  namespace: shop
  annotations: {istio.io/dry-run: "true"}
spec:
  mtls: {mode: STRICT}
"#;

    #[test]
    fn a_dry_run_peer_authentication_loads_marked_and_warns_that_it_is_not_enforced() {
        let loaded = crate::load::load_str(DRY_RUN_STRICT);
        assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
        let policy = &loaded.config.peer_authentications[0];
        assert!(policy.dry_run);
        assert_eq!(policy.mode, MtlsMode::Strict);
        let warning = loaded.diagnostics.iter().find(|d| d.code == Some("ZM2015")).expect("a ZM2015 warning");
        assert!(!warning.is_error());
        assert!(warning.to_string().contains("observed, not enforced"), "{warning}");
    }

    #[test]
    fn a_peer_authentication_without_the_annotation_or_with_false_is_enforced() {
        for text in [DRY_RUN_STRICT.replace("\"true\"", "\"false\""), DRY_RUN_STRICT.replace("annotations", "labels")] {
            let loaded = crate::load::load_str(&text);
            assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
            assert!(!loaded.config.peer_authentications[0].dry_run);
            assert!(loaded.diagnostics.iter().all(|d| d.code != Some("ZM2015")));
        }
    }
}
