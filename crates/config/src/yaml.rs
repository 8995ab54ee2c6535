//! A small YAML document tree with source positions, built from saphyr's event stream.
//!
//! Why not a serde deserializer: diagnostics must name the line, column and field path of
//! every problem in a document at once, and suggest the nearest known field for a typo. A tree
//! whose every node knows where it came from makes that straightforward.
//!
//! Untrusted input is bounded: the input size, the nesting depth and the number of nodes
//! (aliases included, as they expand) are capped, so an alias bomb or a huge file is refused
//! with an error instead of exhausting memory.

use std::fmt;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

/// Where a node starts: 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

impl From<Span> for Pos {
    fn from(span: Span) -> Self {
        Pos { line: span.start.line(), column: span.start.col() + 1 }
    }
}

/// How a scalar was written; a quoted scalar is always a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quoting {
    Plain,
    Quoted,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Scalar {
        text: String,
        quoting: Quoting,
    },
    Seq(Vec<Node>),
    /// Keys keep their order and position; duplicates are refused while building.
    Map(Vec<(Node, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
}

/// The resolved type of a plain scalar under the YAML 1.2 core schema (what Kubernetes'
/// YAML→JSON conversion produces for the values Istio configs use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScalarType {
    Null,
    Bool,
    Int,
    Float,
    String,
}

impl Node {
    pub fn scalar_type(&self) -> Option<ScalarType> {
        match &self.value {
            Value::Scalar { quoting: Quoting::Quoted, .. } => Some(ScalarType::String),
            Value::Scalar { text, quoting: Quoting::Plain } => Some(plain_scalar_type(text)),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        self.scalar_type() == Some(ScalarType::Null)
    }

    /// The scalar text, whatever its type.
    pub fn scalar_text(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// A short name of what this node is, for "expected X, found Y" messages.
    pub fn type_name(&self) -> &'static str {
        match (&self.value, self.scalar_type()) {
            (Value::Seq(_), _) => "a list",
            (Value::Map(_), _) => "a map",
            (_, Some(ScalarType::Null)) => "null",
            (_, Some(ScalarType::Bool)) => "a boolean",
            (_, Some(ScalarType::Int)) => "an integer",
            (_, Some(ScalarType::Float)) => "a number",
            _ => "a string",
        }
    }

    /// Look up a key of a map node.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|(k, _)| k.scalar_text() == Some(key)).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The node as JSON, resolving plain scalars with the core schema. Used for test data and
    /// for passing free-form objects (such as inline JWKS) on.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => J::Object(
                entries.iter().map(|(k, v)| (k.scalar_text().unwrap_or_default().to_owned(), v.to_json())).collect(),
            ),
            Value::Scalar { text, .. } => match self.scalar_type() {
                Some(ScalarType::Null) => J::Null,
                Some(ScalarType::Bool) => J::Bool(matches!(text.as_str(), "true" | "True" | "TRUE")),
                Some(ScalarType::Int) => parse_int(text).map_or_else(|| J::String(text.clone()), J::from),
                Some(ScalarType::Float) => text
                    .parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                    .map_or_else(|| J::String(text.clone()), J::Number),
                _ => J::String(text.clone()),
            },
        }
    }
}

fn plain_scalar_type(text: &str) -> ScalarType {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => ScalarType::Null,
        "true" | "True" | "TRUE" | "false" | "False" | "FALSE" => ScalarType::Bool,
        _ if parse_int(text).is_some() => ScalarType::Int,
        _ if is_float(text) => ScalarType::Float,
        _ => ScalarType::String,
    }
}

/// Integers of the YAML 1.2 core schema: decimal with optional sign, `0o` octal, `0x` hex.
pub fn parse_int(text: &str) -> Option<i64> {
    let (negative, digits) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let magnitude = if let Some(hex) = digits.strip_prefix("0x") {
        i64::from_str_radix(hex, 16).ok()?
    } else if let Some(octal) = digits.strip_prefix("0o") {
        i64::from_str_radix(octal, 8).ok()?
    } else if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse::<i64>().ok()?
    } else {
        return None;
    };
    Some(if negative { -magnitude } else { magnitude })
}

fn is_float(text: &str) -> bool {
    let body = text.strip_prefix(['-', '+']).unwrap_or(text);
    matches!(body, ".inf" | ".Inf" | ".INF")
        || matches!(text, ".nan" | ".NaN" | ".NAN")
        || (body.bytes().next().is_some_and(|b| b.is_ascii_digit() || b == b'.')
            && body.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
            && text.parse::<f64>().is_ok())
}

/// Bounds on untrusted YAML.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: usize,
    pub max_depth: usize,
    /// Nodes in the whole stream, counting every expansion of an alias.
    pub max_nodes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_bytes: 16 << 20, max_depth: 64, max_nodes: 1_000_000 }
    }
}

/// A YAML stream that could not be read; nothing from it is used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum YamlError {
    #[error("{pos}: YAML syntax error: {message}")]
    Syntax { pos: Pos, message: String },
    #[error("the file is {size} bytes, over the {max}-byte limit; split it into smaller files")]
    TooLarge { size: usize, max: usize },
    #[error("{pos}: nesting is deeper than {max} levels; flatten the document")]
    TooDeep { pos: Pos, max: usize },
    #[error(
        "{pos}: the document expands to more than {max} nodes (aliases included); this looks like an alias bomb, so it is refused"
    )]
    TooManyNodes { pos: Pos, max: usize },
    #[error(
        "{pos}: duplicate key `{key}` (first at line {first_line}); Kubernetes rejects duplicate keys, so remove one"
    )]
    DuplicateKey { pos: Pos, key: String, first_line: usize },
    #[error("{pos}: map keys must be plain strings, found {found}")]
    ComplexKey { pos: Pos, found: &'static str },
    #[error("{pos}: merge keys (`<<`) are not supported; write the fields out in full")]
    MergeKey { pos: Pos },
    #[error("{pos}: alias refers to an unknown anchor")]
    UnknownAnchor { pos: Pos },
}

impl YamlError {
    /// Where the problem is, when it has a position.
    pub fn pos(&self) -> Option<Pos> {
        match self {
            YamlError::TooLarge { .. } => None,
            YamlError::Syntax { pos, .. }
            | YamlError::TooDeep { pos, .. }
            | YamlError::TooManyNodes { pos, .. }
            | YamlError::DuplicateKey { pos, .. }
            | YamlError::ComplexKey { pos, .. }
            | YamlError::MergeKey { pos }
            | YamlError::UnknownAnchor { pos } => Some(*pos),
        }
    }
}

/// One document of a stream; `root` is `None` for an empty document (only comments).
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub pos: Pos,
    pub root: Option<Node>,
}

enum Frame {
    Seq { pos: Pos, anchor: usize, items: Vec<Node> },
    Map { pos: Pos, anchor: usize, entries: Vec<(Node, Node)>, key: Option<Node> },
}

/// Parse a whole YAML stream into documents. On any error, no document is returned: a stream
/// is used whole or not at all.
pub fn parse_stream(input: &str, limits: &Limits) -> Result<Vec<Document>, YamlError> {
    if input.len() > limits.max_bytes {
        return Err(YamlError::TooLarge { size: input.len(), max: limits.max_bytes });
    }
    let mut documents = Vec::new();
    let mut anchors: std::collections::HashMap<usize, (Node, usize)> = Default::default();
    let mut stack: Vec<Frame> = Vec::new();
    let mut nodes = 0usize;
    let mut current: Option<Document> = None;

    for event in Parser::new_from_str(input) {
        let (event, span) = event.map_err(|error| YamlError::Syntax {
            pos: Pos { line: error.marker().line(), column: error.marker().col() + 1 },
            message: error.info().to_owned(),
        })?;
        let pos = Pos::from(span);
        let finished: Option<(Node, usize, usize)> = match event {
            Event::StreamStart | Event::StreamEnd | Event::Nothing => None,
            Event::DocumentStart(_) => {
                current = Some(Document { pos, root: None });
                anchors.clear();
                None
            }
            Event::DocumentEnd => {
                documents.extend(current.take());
                None
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if stack.len() >= limits.max_depth {
                    return Err(YamlError::TooDeep { pos, max: limits.max_depth });
                }
                stack.push(match event {
                    Event::SequenceStart(..) => Frame::Seq { pos, anchor, items: Vec::new() },
                    _ => Frame::Map { pos, anchor, entries: Vec::new(), key: None },
                });
                None
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Frame::Seq { pos, anchor, items }) => {
                    let size = 1 + items.iter().map(count_nodes).sum::<usize>();
                    Some((Node { pos, value: Value::Seq(items) }, anchor, size))
                }
                Some(Frame::Map { pos, anchor, entries, .. }) => {
                    let size = 1 + entries.iter().map(|(k, v)| count_nodes(k) + count_nodes(v)).sum::<usize>();
                    Some((Node { pos, value: Value::Map(entries) }, anchor, size))
                }
                None => None,
            },
            Event::Scalar(text, style, anchor, _) => {
                let quoting = if style == ScalarStyle::Plain { Quoting::Plain } else { Quoting::Quoted };
                nodes += 1;
                Some((Node { pos, value: Value::Scalar { text: text.into_owned(), quoting } }, anchor, 0))
            }
            Event::Alias(anchor) => {
                let (node, size) = anchors.get(&anchor).cloned().ok_or(YamlError::UnknownAnchor { pos })?;
                // An alias repeats the whole anchored subtree: count it again so nested aliases
                // cannot multiply their way past the limit.
                nodes = nodes.saturating_add(size.max(1));
                if nodes > limits.max_nodes {
                    return Err(YamlError::TooManyNodes { pos, max: limits.max_nodes });
                }
                Some((Node { pos, ..node }, 0, 0))
            }
        };
        let Some((node, anchor, collection_size)) = finished else {
            continue;
        };
        if collection_size > 0 {
            nodes += 1;
        }
        if nodes > limits.max_nodes {
            return Err(YamlError::TooManyNodes { pos, max: limits.max_nodes });
        }
        if anchor != 0 {
            let size = count_nodes(&node);
            anchors.insert(anchor, (node.clone(), size));
        }
        attach(&mut stack, &mut current, node)?;
    }
    documents.extend(current.take());
    Ok(documents)
}

fn count_nodes(node: &Node) -> usize {
    match &node.value {
        Value::Scalar { .. } => 1,
        Value::Seq(items) => 1 + items.iter().map(count_nodes).sum::<usize>(),
        Value::Map(entries) => 1 + entries.iter().map(|(k, v)| count_nodes(k) + count_nodes(v)).sum::<usize>(),
    }
}

fn attach(stack: &mut [Frame], current: &mut Option<Document>, node: Node) -> Result<(), YamlError> {
    match stack.last_mut() {
        Some(Frame::Seq { items, .. }) => items.push(node),
        Some(Frame::Map { entries, key, .. }) => match key.take() {
            None => {
                let text = match &node.value {
                    Value::Scalar { text, .. } => text,
                    _ => {
                        return Err(YamlError::ComplexKey { pos: node.pos, found: node.type_name() });
                    }
                };
                if text == "<<" && node.scalar_type() == Some(ScalarType::String) {
                    return Err(YamlError::MergeKey { pos: node.pos });
                }
                if let Some((first, _)) = entries.iter().find(|(k, _)| k.scalar_text() == Some(text)) {
                    return Err(YamlError::DuplicateKey {
                        pos: node.pos,
                        key: text.clone(),
                        first_line: first.pos.line,
                    });
                }
                *key = Some(node);
            }
            Some(k) => entries.push((k, node)),
        },
        None => {
            // An empty document (comments only) arrives as a null scalar.
            if let Some(document) = current {
                document.root = (!node.is_null()).then_some(node);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
