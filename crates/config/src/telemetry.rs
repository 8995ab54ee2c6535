//! Telemetry (`telemetry.istio.io/v1`, `v1alpha1`): metrics overrides, access logging and
//! tracing for the workloads it selects.

use std::collections::BTreeMap;

use crate::decode::{Ctx, Fields, Spanned};
use crate::meta::{Meta, Selector, TargetRef, read_attachment};
use crate::yaml::Node;

#[derive(Debug, Clone, PartialEq)]
pub struct Telemetry {
    pub meta: Meta,
    pub selector: Option<Selector>,
    pub target_refs: Vec<TargetRef>,
    pub metrics: Vec<MetricsConfig>,
    pub access_logging: Vec<AccessLogging>,
    pub tracing: Vec<Tracing>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MetricsConfig {
    pub providers: Vec<String>,
    pub overrides: Vec<MetricOverride>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MetricOverride {
    /// `ALL_METRICS`, a standard metric name (`REQUEST_COUNT`, …) or a custom metric name.
    pub metric: String,
    /// `CLIENT_AND_SERVER`, `CLIENT` or `SERVER`.
    pub mode: String,
    pub disabled: bool,
    pub tag_overrides: BTreeMap<String, TagOverride>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TagOverride {
    Upsert(String),
    Remove,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AccessLogging {
    pub providers: Vec<String>,
    pub disabled: bool,
    /// A CEL expression; a request is logged when it is true.
    pub filter: Option<Spanned<String>>,
    pub mode: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tracing {
    pub providers: Vec<String>,
    pub random_sampling_percentage: Option<f64>,
    pub disable_span_reporting: bool,
}

const STANDARD_METRICS: &[&str] = &[
    "ALL_METRICS",
    "REQUEST_COUNT",
    "REQUEST_DURATION",
    "REQUEST_SIZE",
    "RESPONSE_SIZE",
    "TCP_OPENED_CONNECTIONS",
    "TCP_CLOSED_CONNECTIONS",
    "TCP_SENT_BYTES",
    "TCP_RECEIVED_BYTES",
    "GRPC_REQUEST_MESSAGES",
    "GRPC_RESPONSE_MESSAGES",
];

const MODES: &[&str] = &["CLIENT_AND_SERVER", "CLIENT", "SERVER"];

fn providers(ctx: &mut Ctx<'_>, fields: &mut Fields<'_>) -> Vec<String> {
    let mut out = Vec::new();
    for (node, path) in fields.items(ctx, "providers").unwrap_or_default() {
        let Some(mut provider) = ctx.map(node, &path) else {
            continue;
        };
        match provider.string(ctx, "name") {
            Some(name) if !name.is_empty() => out.push(name.value),
            _ => ctx.error(
                node.pos,
                &format!("{path}.name"),
                "provider without a name",
                "name a provider from meshConfig.extensionProviders, or `prometheus` / `envoy`",
            ),
        }
        provider.finish(ctx);
    }
    out
}

fn mode(ctx: &mut Ctx<'_>, fields: &mut Fields<'_>) -> String {
    let path = fields.path("mode");
    match fields.string(ctx, "mode") {
        Some(mode) if MODES.contains(&mode.as_str()) => mode.value,
        Some(mode) => {
            ctx.error(
                mode.pos,
                &path,
                format!("unknown mode `{}`", mode.value),
                "use CLIENT_AND_SERVER, CLIENT or SERVER",
            );
            String::new()
        }
        None => "CLIENT_AND_SERVER".to_owned(),
    }
}

pub(crate) fn read(ctx: &mut Ctx<'_>, meta: Meta, spec: Option<(&Node, String)>) -> Option<Telemetry> {
    let mark = ctx.diagnostics.len();
    let mut telemetry = Telemetry {
        meta,
        selector: None,
        target_refs: Vec::new(),
        metrics: Vec::new(),
        access_logging: Vec::new(),
        tracing: Vec::new(),
    };
    let Some((spec_node, spec_path)) = spec else {
        return Some(telemetry);
    };
    let mut spec = ctx.map(spec_node, &spec_path)?;
    (telemetry.selector, telemetry.target_refs) = read_attachment(ctx, &mut spec);
    for (node, path) in spec.items(ctx, "metrics").unwrap_or_default() {
        let Some(mut fields) = ctx.map(node, &path) else {
            continue;
        };
        let providers = providers(ctx, &mut fields);
        let mut overrides = Vec::new();
        for (item, item_path) in fields.items(ctx, "overrides").unwrap_or_default() {
            let Some(mut entry) = ctx.map(item, &item_path) else {
                continue;
            };
            let (mut metric, mut match_mode) = ("ALL_METRICS".to_owned(), "CLIENT_AND_SERVER".to_owned());
            if let Some(mut selector) = entry.map(ctx, "match") {
                let metric_path = selector.path("metric");
                if let Some(name) = selector.string(ctx, "metric") {
                    if !STANDARD_METRICS.contains(&name.as_str()) {
                        ctx.error(
                            name.pos,
                            &metric_path,
                            format!("unknown metric `{}`", name.value),
                            format!("use one of {}, or `customMetric` for another name", STANDARD_METRICS.join(", ")),
                        );
                    }
                    metric = name.value;
                }
                if let Some(custom) = selector.string(ctx, "customMetric") {
                    metric = custom.value;
                }
                match_mode = mode(ctx, &mut selector);
                selector.finish(ctx);
            }
            let disabled = entry.bool(ctx, "disabled").unwrap_or(false);
            let mut tag_overrides = BTreeMap::new();
            for (tag_key, tag_value, tag_path) in entry.entries(ctx, "tagOverrides").unwrap_or_default() {
                let Some(mut tag) = ctx.map(tag_value, &tag_path) else {
                    continue;
                };
                let operation = tag.string(ctx, "operation");
                let value = tag.string(ctx, "value");
                tag.finish(ctx);
                let name = tag_key.scalar_text().unwrap_or_default().to_owned();
                let parsed = match operation.as_ref().map(|o| o.as_str()) {
                    None | Some("UPSERT") => match value {
                        Some(value) => Some(TagOverride::Upsert(value.value)),
                        None => {
                            ctx.error(
                                tag_value.pos,
                                &format!("{tag_path}.value"),
                                "an UPSERT tag override needs a value",
                                "set `value`, or use `operation: REMOVE`",
                            );
                            None
                        }
                    },
                    Some("REMOVE") => Some(TagOverride::Remove),
                    Some(other) => {
                        ctx.error(
                            tag_value.pos,
                            &format!("{tag_path}.operation"),
                            format!("unknown operation `{other}`"),
                            "use UPSERT or REMOVE",
                        );
                        None
                    }
                };
                tag_overrides.extend(parsed.map(|p| (name, p)));
            }
            entry.finish(ctx);
            overrides.push(MetricOverride { metric, mode: match_mode, disabled, tag_overrides });
        }
        fields.ignore(&["reportingInterval"]);
        fields.finish(ctx);
        telemetry.metrics.push(MetricsConfig { providers, overrides });
    }
    for (node, path) in spec.items(ctx, "accessLogging").unwrap_or_default() {
        let Some(mut fields) = ctx.map(node, &path) else {
            continue;
        };
        let providers = providers(ctx, &mut fields);
        let disabled = fields.bool(ctx, "disabled").unwrap_or(false);
        let mut filter = None;
        if let Some(mut filter_fields) = fields.map(ctx, "filter") {
            let expression_path = filter_fields.path("expression");
            match filter_fields.string(ctx, "expression") {
                Some(expression) if !expression.trim().is_empty() => filter = Some(expression),
                _ => ctx.error(
                    filter_fields.pos,
                    &expression_path,
                    "filter without an expression",
                    "write a CEL expression such as `response.code >= 400`",
                ),
            }
            filter_fields.finish(ctx);
        }
        let mut match_mode = "CLIENT_AND_SERVER".to_owned();
        if let Some(mut selector) = fields.map(ctx, "match") {
            match_mode = mode(ctx, &mut selector);
            selector.finish(ctx);
        }
        fields.finish(ctx);
        telemetry.access_logging.push(AccessLogging { providers, disabled, filter, mode: match_mode });
    }
    for (node, path) in spec.items(ctx, "tracing").unwrap_or_default() {
        let Some(mut fields) = ctx.map(node, &path) else {
            continue;
        };
        let providers = providers(ctx, &mut fields);
        let sampling = fields.get("randomSamplingPercentage").and_then(|(n, p)| {
            let value = ctx.number(n, &p)?;
            if !(0.0..=100.0).contains(&value) {
                ctx.error(n.pos, &p, format!("sampling {value} is out of range"), "give a percentage from 0 to 100");
            }
            Some(value)
        });
        let disable_span_reporting = fields.bool(ctx, "disableSpanReporting").unwrap_or(false);
        fields.ignore(&["customTags", "match", "useRequestIdForTraceSampling", "enableIstioTags"]);
        fields.finish(ctx);
        telemetry.tracing.push(Tracing { providers, random_sampling_percentage: sampling, disable_span_reporting });
    }
    spec.finish(ctx);
    (!ctx.has_errors_since(mark)).then_some(telemetry)
}

/// zmesh's proxies export Istio's standard metrics with their fixed labels and do not yet read
/// Telemetry: its metric overrides, access logging and tracing are validated, not applied.
pub(crate) fn warn_not_applied(ctx: &mut Ctx<'_>, telemetry: &Telemetry) {
    let parts: Vec<&str> = [
        (!telemetry.metrics.is_empty()).then_some("metrics"),
        (!telemetry.access_logging.is_empty()).then_some("accessLogging"),
        (!telemetry.tracing.is_empty()).then_some("tracing"),
    ]
    .into_iter()
    .flatten()
    .collect();
    let what = if parts.is_empty() { "nothing to apply".to_owned() } else { parts.join(", ") };
    ctx.warn(
        crate::load::codes::TELEMETRY_NOT_APPLIED,
        telemetry.meta.origin.pos,
        "spec",
        format!(
            "Telemetry is validated but not applied ({what}): zmesh's proxies keep Istio's standard metrics and labels, write no access logs and send no traces"
        ),
        "keep it for Istio; zmesh will apply it once its proxies read Telemetry",
    );
}
