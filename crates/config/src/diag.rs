//! Diagnostics: every problem names where it is (file, line, column), what object and field it
//! is in, what is wrong, and what to do about it.

use std::fmt;
use std::sync::Arc;

use crate::yaml::Pos;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Error,
    Warning,
    Info,
}

impl Severity {
    /// The word istioctl uses for the level.
    pub fn label(self) -> &'static str {
        match self {
            Severity::Error => "Error",
            Severity::Warning => "Warning",
            Severity::Info => "Info",
        }
    }
}

/// `Kind namespace/name`, as istioctl names objects in its messages.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.kind)?;
        match (&self.namespace, &self.name) {
            (Some(ns), Some(name)) => write!(f, " {ns}/{name}"),
            (None, Some(name)) => write!(f, " {name}"),
            _ => Ok(()),
        }
    }
}

/// Where a document or value came from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Origin {
    /// The file as the user named it; `None` for configuration given inline.
    pub file: Option<Arc<str>>,
    pub pos: Pos,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(file) => write!(f, "{file}:{}", self.pos),
            None => write!(f, "<input>:{}", self.pos),
        }
    }
}

/// Stable codes of findings: Istio's where it has one for the same finding, zmesh's otherwise.
pub mod codes {
    /// A document Istio would reject (istioctl's SchemaValidationError).
    pub const SCHEMA: &str = "IST0106";
    /// A selector that matches no known workload (istioctl's NoMatchingWorkloadsFound).
    pub const NO_MATCHING_WORKLOADS: &str = "IST0127";
    pub const WILDCARD_BOTH_ENDS: &str = "ZM1001";
    pub const HOST_WITHOUT_PORT: &str = "ZM1002";
    pub const PRINCIPAL_NEVER_MATCHES: &str = "ZM1003";
    pub const DENY_HTTP_ONLY_ON_TCP: &str = "ZM1004";
    pub const SHADOWED_BY_DENY: &str = "ZM1005";
    pub const SELECTOR_WITHOUT_LABELS: &str = "ZM1006";
    pub const MESH_CONFIG_IGNORED: &str = "ZM1007";
    pub const CUSTOM_PROVIDER_UNKNOWN: &str = "ZM1008";
    pub const ROOT_SELECTOR_IGNORED: &str = "ZM1009";
    /// A DENY path a request can get past by spelling the path another way.
    pub const DENY_PATH_BYPASS: &str = "ZM1010";
    /// A PeerAuthentication whose STRICT would refuse plaintext that live traffic still sends.
    pub const STRICT_WOULD_BREAK: &str = "ZM1011";
    pub const NOT_USED: &str = "ZM0001";
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    /// A stable code for findings of `analyze` (`IST…` where Istio has one, `ZM…` otherwise).
    pub code: Option<&'static str>,
    pub origin: Origin,
    pub object: Option<ObjectRef>,
    /// Field path in the document, such as `spec.rules[0].to[0].operation.ports[1]`.
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// What to do about it.
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    /// `file:line:col: error: Kind ns/name: field: message; hint`, with the stable code after
    /// the level when there is one (`warning[ZM2011]: …`), so scripts can match it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        };
        write!(f, "{}: {level}", self.origin)?;
        if let Some(code) = self.code {
            write!(f, "[{code}]")?;
        }
        f.write_str(": ")?;
        if let Some(object) = &self.object {
            write!(f, "{object}: ")?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "; {hint}")?;
        }
        Ok(())
    }
}

/// The known name closest to `unknown`, if it is close enough to be a likely typo.
pub fn nearest<'k>(unknown: &str, known: impl IntoIterator<Item = &'k str>) -> Option<&'k str> {
    let lowered = unknown.to_ascii_lowercase();
    known
        .into_iter()
        .map(|candidate| (edit_distance(&lowered, &candidate.to_ascii_lowercase()), candidate))
        .filter(|&(distance, candidate)| distance <= (candidate.len().max(unknown.len()) / 3).max(1))
        .min_by_key(|&(distance, _)| distance)
        .map(|(_, candidate)| candidate)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut row = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            row[j + 1] = (previous[j] + usize::from(ca != cb)).min(previous[j + 1] + 1).min(row[j] + 1);
        }
        previous = row;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_field_is_suggested_for_a_typo() {
        let known = ["principals", "notPrincipals", "namespaces", "ipBlocks"];
        assert_eq!(nearest("principal", known), Some("principals"));
        assert_eq!(nearest("nameSpaces", known), Some("namespaces"));
        assert_eq!(nearest("zzz", known), None);
    }
}
