//! Reading typed values out of a [`yaml::Node`] tree while collecting every problem.
//!
//! Each reader takes the field path of the value it reads, so a diagnostic can say exactly where
//! the problem is. Readers never stop at the first problem: they record it and return `None`
//! (or skip the bad element), so one run reports everything wrong with a document.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::diag::{Diagnostic, ObjectRef, Origin, Severity, nearest};
use crate::yaml::{Node, Pos, ScalarType, Value};

/// A value with the position it was written at.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Spanned<T> {
    pub value: T,
    pub pos: Pos,
}

impl<T> std::ops::Deref for Spanned<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

/// Collects diagnostics for one document.
#[derive(Debug)]
pub(crate) struct Ctx<'d> {
    pub file: Option<Arc<str>>,
    pub object: Option<ObjectRef>,
    pub diagnostics: &'d mut Vec<Diagnostic>,
}

impl Ctx<'_> {
    pub fn origin(&self, pos: Pos) -> Origin {
        Origin { file: self.file.clone(), pos }
    }

    pub fn report(&mut self, severity: Severity, pos: Pos, field: &str, message: String, hint: Option<String>) {
        self.diagnostics.push(Diagnostic {
            severity,
            code: match severity {
                Severity::Error => Some(crate::diag::codes::SCHEMA),
                Severity::Info => Some(crate::diag::codes::NOT_USED),
                Severity::Warning => None,
            },
            origin: self.origin(pos),
            object: self.object.clone(),
            field: field.to_owned(),
            message,
            hint,
        });
    }

    pub fn error(&mut self, pos: Pos, field: &str, message: impl Into<String>, hint: impl Into<String>) {
        let hint = hint.into();
        self.report(Severity::Error, pos, field, message.into(), (!hint.is_empty()).then_some(hint));
    }

    pub fn warn(
        &mut self,
        code: &'static str,
        pos: Pos,
        field: &str,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        let hint = hint.into();
        self.report(Severity::Warning, pos, field, message.into(), (!hint.is_empty()).then_some(hint));
        if let Some(last) = self.diagnostics.last_mut() {
            last.code = Some(code);
        }
    }

    pub fn has_errors_since(&self, mark: usize) -> bool {
        self.diagnostics[mark..].iter().any(Diagnostic::is_error)
    }

    fn wrong_type(&mut self, node: &Node, field: &str, expected: &str) {
        let hint = match (expected, node.scalar_type()) {
            ("a string", Some(ScalarType::Int | ScalarType::Bool | ScalarType::Float)) => {
                format!("quote it: \"{}\"", node.scalar_text().unwrap_or_default())
            }
            _ => String::new(),
        };
        self.error(node.pos, field, format!("expected {expected}, found {}", node.type_name()), hint);
    }

    /// A map's fields; reports an error and returns `None` for anything else.
    pub fn map<'n>(&mut self, node: &'n Node, path: &str) -> Option<Fields<'n>> {
        match &node.value {
            Value::Map(entries) => Some(Fields { pos: node.pos, entries, path: path.to_owned(), known: Vec::new() }),
            _ => {
                self.wrong_type(node, path, "a map");
                None
            }
        }
    }

    pub fn list<'n>(&mut self, node: &'n Node, path: &str) -> Option<&'n [Node]> {
        match &node.value {
            Value::Seq(items) => Some(items),
            _ => {
                self.wrong_type(node, path, "a list");
                None
            }
        }
    }

    pub fn string(&mut self, node: &Node, path: &str) -> Option<Spanned<String>> {
        match (node.scalar_type(), node.scalar_text()) {
            (Some(ScalarType::String), Some(text)) => Some(Spanned { value: text.to_owned(), pos: node.pos }),
            _ => {
                self.wrong_type(node, path, "a string");
                None
            }
        }
    }

    /// A scalar read as text whatever its YAML type (label values, annotation values and map
    /// keys are strings in Kubernetes even when written unquoted as numbers).
    pub fn text(&mut self, node: &Node, path: &str) -> Option<Spanned<String>> {
        match (node.scalar_type(), node.scalar_text()) {
            (Some(ty), Some(text)) if ty != ScalarType::Null => Some(Spanned { value: text.to_owned(), pos: node.pos }),
            _ => {
                self.wrong_type(node, path, "a string");
                None
            }
        }
    }

    pub fn bool(&mut self, node: &Node, path: &str) -> Option<bool> {
        match (node.scalar_type(), node.scalar_text()) {
            (Some(ScalarType::Bool), Some(text)) => Some(text.eq_ignore_ascii_case("true")),
            _ => {
                self.wrong_type(node, path, "a boolean (true or false)");
                None
            }
        }
    }

    pub fn int(&mut self, node: &Node, path: &str) -> Option<i64> {
        match (node.scalar_type(), node.scalar_text()) {
            (Some(ScalarType::Int), Some(text)) => crate::yaml::parse_int(text),
            _ => {
                self.wrong_type(node, path, "an integer");
                None
            }
        }
    }

    /// A number (integer or decimal), such as a sampling percentage.
    pub fn number(&mut self, node: &Node, path: &str) -> Option<f64> {
        match (node.scalar_type(), node.scalar_text()) {
            (Some(ScalarType::Int | ScalarType::Float), Some(text)) => text.parse().ok(),
            _ => {
                self.wrong_type(node, path, "a number");
                None
            }
        }
    }

    pub fn port(&mut self, node: &Node, path: &str) -> Option<u16> {
        let value = self.int(node, path)?;
        match u16::try_from(value) {
            Ok(port) if port > 0 => Some(port),
            _ => {
                self.error(node.pos, path, format!("port {value} is out of range"), "use a port from 1 to 65535");
                None
            }
        }
    }

    /// A list of strings; bad elements are reported and skipped.
    pub fn strings(&mut self, node: &Node, path: &str) -> Option<Vec<Spanned<String>>> {
        let items = self.list(node, path)?;
        Some(items.iter().enumerate().filter_map(|(i, item)| self.string(item, &format!("{path}[{i}]"))).collect())
    }

    /// A map of string to string, such as labels or annotations.
    pub fn string_map(&mut self, node: &Node, path: &str) -> BTreeMap<String, String> {
        let Some(fields) = self.map(node, path) else {
            return BTreeMap::new();
        };
        let mut out = BTreeMap::new();
        for (key, value) in fields.entries {
            let key_text = key.scalar_text().unwrap_or_default().to_owned();
            let value_path = format!("{path}.{key_text}");
            let text = match value.scalar_type() {
                Some(ScalarType::String) => value.scalar_text().map(str::to_owned),
                _ => {
                    self.wrong_type(value, &value_path, "a string");
                    None
                }
            };
            if let Some(text) = text {
                out.insert(key_text, text);
            }
        }
        out
    }
}

/// The fields of one map, read one by one; whatever is not read is an unknown field.
#[derive(Debug)]
pub(crate) struct Fields<'n> {
    pub pos: Pos,
    entries: &'n [(Node, Node)],
    path: String,
    known: Vec<&'static str>,
}

impl<'n> Fields<'n> {
    /// The path of a field of this map.
    pub fn path(&self, key: &str) -> String {
        if self.path.is_empty() { key.to_owned() } else { format!("{}.{key}", self.path) }
    }

    /// The value of `key`; a null value counts as absent, as it does in Kubernetes.
    pub fn get(&mut self, key: &'static str) -> Option<(&'n Node, String)> {
        self.known.push(key);
        self.entries
            .iter()
            .find(|(k, _)| k.scalar_text() == Some(key))
            .filter(|(_, v)| !v.is_null())
            .map(|(_, v)| (v, self.path(key)))
    }

    /// Mark fields as known without reading them (accepted and ignored).
    pub fn ignore(&mut self, keys: &[&'static str]) {
        self.known.extend_from_slice(keys);
    }

    pub fn string(&mut self, ctx: &mut Ctx<'_>, key: &'static str) -> Option<Spanned<String>> {
        let (node, path) = self.get(key)?;
        ctx.string(node, &path)
    }

    pub fn strings(&mut self, ctx: &mut Ctx<'_>, key: &'static str) -> Option<Vec<Spanned<String>>> {
        let (node, path) = self.get(key)?;
        ctx.strings(node, &path)
    }

    pub fn bool(&mut self, ctx: &mut Ctx<'_>, key: &'static str) -> Option<bool> {
        let (node, path) = self.get(key)?;
        ctx.bool(node, &path)
    }

    pub fn int(&mut self, ctx: &mut Ctx<'_>, key: &'static str) -> Option<i64> {
        let (node, path) = self.get(key)?;
        ctx.int(node, &path)
    }

    pub fn map(&mut self, ctx: &mut Ctx<'_>, key: &'static str) -> Option<Fields<'n>> {
        let (node, path) = self.get(key)?;
        ctx.map(node, &path)
    }

    pub fn string_map(&mut self, ctx: &mut Ctx<'_>, key: &'static str) -> BTreeMap<String, String> {
        match self.get(key) {
            Some((node, path)) => ctx.string_map(node, &path),
            None => BTreeMap::new(),
        }
    }

    /// Each element of a list field with its path, for decoding lists of objects.
    pub fn items(&mut self, ctx: &mut Ctx<'_>, key: &'static str) -> Option<Vec<(&'n Node, String)>> {
        let (node, path) = self.get(key)?;
        let items = ctx.list(node, &path)?;
        Some(items.iter().enumerate().map(|(i, item)| (item, format!("{path}[{i}]"))).collect())
    }

    /// Every entry of a map field, for maps keyed by user data (labels, ports, tags).
    pub fn entries(&mut self, ctx: &mut Ctx<'_>, key: &'static str) -> Option<Vec<(&'n Node, &'n Node, String)>> {
        let (node, path) = self.get(key)?;
        let fields = ctx.map(node, &path)?;
        Some(
            fields
                .entries
                .iter()
                .map(|(k, v)| (k, v, format!("{path}.{}", k.scalar_text().unwrap_or_default())))
                .collect(),
        )
    }

    /// Report every field that no reader asked for, suggesting the nearest known one.
    pub fn finish(self, ctx: &mut Ctx<'_>) {
        for (key, _) in self.entries {
            let name = key.scalar_text().unwrap_or_default();
            if self.known.contains(&name) {
                continue;
            }
            let hint = match nearest(name, self.known.iter().copied()) {
                Some(suggestion) => format!("did you mean `{suggestion}`?"),
                None if self.known.is_empty() => "this object takes no fields".to_owned(),
                None => format!("known fields here: {}", self.known.join(", ")),
            };
            ctx.error(key.pos, &self.path(name), format!("unknown field `{name}`"), hint);
        }
    }
}
