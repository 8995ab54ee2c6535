//! The rules file: reading it (every problem reported at once, each at its file:line:column)
//! and deciding on a request with it.
//!
//! Decision flow: the rules are tried in order; the first whose `when` is true decides. An
//! expression that fails to evaluate, or yields anything but a boolean, denies the request on
//! the spot (fail closed) even if a later rule would allow it: a broken rule must never widen
//! access. When no rule matches, `default` decides, and it denies unless the file says otherwise.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use cel::{Context, Env, Program, Value};
use chrono_tz::Tz;
use http::{HeaderName, HeaderValue};
use zmesh_config::yaml::{self, Node, Pos, ScalarType};

use crate::attributes::{self, RequestAttributes};
use crate::expr;

/// What a matching rule (or the default) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
}

/// The response a rule gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub action: Action,
    /// The HTTP status of a deny (403 unless the rule says otherwise); 200 for an allow.
    pub status: u16,
    /// The body of a deny.
    pub body: String,
    /// On an allow, headers for the upstream request; on a deny, headers for the client.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Outcome {
    const fn deny() -> Outcome {
        Outcome { action: Action::Deny, status: 403, body: String::new(), headers: Vec::new() }
    }
}

/// The deny given when a rule cannot be evaluated or a check cannot be read.
static ERROR_OUTCOME: Outcome = Outcome::deny();

pub(crate) fn error_outcome() -> &'static Outcome {
    &ERROR_OUTCOME
}

/// Why a request got its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecidedBy<'a> {
    Rule(&'a str),
    /// No rule matched.
    Default,
    /// A rule's expression failed or did not yield a boolean; the request is denied.
    Error {
        rule: &'a str,
        message: String,
    },
}

impl fmt::Display for DecidedBy<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecidedBy::Rule(name) => write!(f, "rule {name}"),
            DecidedBy::Default => f.write_str("default"),
            DecidedBy::Error { rule, message } => write!(f, "rule {rule} failed ({message})"),
        }
    }
}

/// The answer for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<'a> {
    pub outcome: &'a Outcome,
    pub by: DecidedBy<'a>,
}

impl Decision<'_> {
    pub fn is_allowed(&self) -> bool {
        self.outcome.action == Action::Allow
    }
}

#[derive(Debug)]
struct Rule {
    name: String,
    when: Program,
    zone: Tz,
    outcome: Outcome,
}

/// A loaded, compiled rules file.
pub struct RuleSet {
    rules: Vec<Rule>,
    default: Outcome,
    env: Arc<Env>,
}

impl fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuleSet")
            .field("rules", &self.rules.iter().map(|rule| rule.name.as_str()).collect::<Vec<_>>())
            .field("default", &self.default)
            .finish_non_exhaustive()
    }
}

/// One problem in a rules file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    pub pos: Pos,
    /// The rule the problem is in, when it is in one.
    pub rule: Option<String>,
    /// The field, such as `when` or `headers.x-user`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    /// `file:line:col: rule <name>: <field>: <message>`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: ", self.file, self.pos)?;
        if let Some(rule) = &self.rule {
            write!(f, "rule {rule}: ")?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read the rules file {path}; check that it exists and is readable")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid { problems: Vec<Problem> },
}

/// Status codes a deny may use: a redirect (to a login page, with `location`) or an error.
const DENY_STATUSES: std::ops::RangeInclusive<i64> = 300..=599;

/// Headers that frame the message: set by a rule they would corrupt the response.
const FRAMING_HEADERS: &[&str] =
    &["connection", "content-length", "transfer-encoding", "keep-alive", "upgrade", "te", "trailer"];

impl RuleSet {
    /// Read and compile the rules file at `path`.
    pub fn load(path: &Path) -> Result<RuleSet, LoadError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| LoadError::Read { path: path.display().to_string(), source })?;
        RuleSet::parse(&path.display().to_string(), &text)
    }

    /// Compile rules from `text`; `file` names it in messages.
    pub fn parse(file: &str, text: &str) -> Result<RuleSet, LoadError> {
        let mut reader = Reader { file, text, problems: Vec::new(), rule: None, names: Vec::new() };
        let rules = reader.read(text);
        match rules {
            Some(rules) if reader.problems.is_empty() => Ok(rules),
            _ => Err(LoadError::Invalid { problems: reader.problems }),
        }
    }

    /// The rule names, in order.
    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|rule| rule.name.as_str())
    }

    /// Decide on `request` at the instant `now`. Pure: no I/O, no clock.
    pub fn decide(&self, request: &RequestAttributes, now: SystemTime) -> Decision<'_> {
        let now = chrono::DateTime::<chrono::Utc>::from(now);
        let mut context = Context::with_env(Arc::clone(&self.env));
        for (name, value) in attributes::variables(request) {
            context.add_variable_from_value(name, value);
        }
        for rule in &self.rules {
            let mut scope = context.new_inner_scope();
            scope.add_variable_from_value("now", Value::Timestamp(now.with_timezone(&rule.zone).fixed_offset()));
            match rule.when.execute(&scope) {
                Ok(Value::Bool(true)) => return Decision { outcome: &rule.outcome, by: DecidedBy::Rule(&rule.name) },
                Ok(Value::Bool(false)) => {}
                Ok(other) => {
                    let message = format!("`when` gave {} instead of a boolean", other.type_of());
                    return Decision { outcome: &ERROR_OUTCOME, by: DecidedBy::Error { rule: &rule.name, message } };
                }
                Err(error) => {
                    return Decision {
                        outcome: &ERROR_OUTCOME,
                        by: DecidedBy::Error { rule: &rule.name, message: error.to_string() },
                    };
                }
            }
        }
        Decision { outcome: &self.default, by: DecidedBy::Default }
    }
}

/// Reads the YAML tree, recording every problem.
struct Reader<'a> {
    file: &'a str,
    text: &'a str,
    problems: Vec<Problem>,
    /// The rule being read, for messages.
    rule: Option<String>,
    /// The names of the rules read so far, with the line of each.
    names: Vec<(String, usize)>,
}

impl Reader<'_> {
    fn problem(&mut self, pos: Pos, field: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            file: self.file.to_owned(),
            pos,
            rule: self.rule.clone(),
            field: field.to_owned(),
            message: message.into(),
        });
    }

    fn read(&mut self, text: &str) -> Option<RuleSet> {
        let documents = match yaml::parse_stream(text, &yaml::Limits::default()) {
            Ok(documents) => documents,
            Err(error) => {
                let pos = error.pos().unwrap_or(Pos { line: 1, column: 1 });
                // The YAML error carries its own position; keep only its message.
                let message = error.to_string();
                let message = message.strip_prefix(&format!("{pos}: ")).unwrap_or(&message).to_owned();
                self.problem(pos, "", message);
                return None;
            }
        };
        let mut roots = documents.into_iter().filter_map(|document| document.root);
        let Some(root) = roots.next() else {
            self.problem(Pos { line: 1, column: 1 }, "", "the rules file is empty; it needs a `rules:` list");
            return None;
        };
        if let Some(extra) = roots.next() {
            self.problem(
                extra.pos,
                "",
                "the rules file holds more than one YAML document; put every rule in one `rules:` list",
            );
        }
        let entries = self.map(&root, "")?;
        check_fields(self, entries, "", &["timeZone", "default", "rules"]);

        let file_zone = match field(entries, "timeZone") {
            Some(node) => self.zone(node, "timeZone"),
            None => Some(Tz::UTC),
        };
        let default = match field(entries, "default") {
            Some(node) => self.default(node),
            None => Some(Outcome::deny()),
        };
        let env = Arc::new(Env::stdlib());
        let mut rules = Vec::new();
        match field(entries, "rules") {
            None => self.problem(root.pos, "rules", "missing; list the rules under `rules:`"),
            Some(node) => match &node.value {
                yaml::Value::Seq(items) => {
                    for (index, item) in items.iter().enumerate() {
                        if let Some(rule) = self.rule(item, index, file_zone.unwrap_or(Tz::UTC), &env) {
                            rules.push(rule);
                        }
                    }
                }
                _ => self.problem(node.pos, "rules", format!("expected a list of rules, found {}", node.type_name())),
            },
        }
        Some(RuleSet { rules, default: default?, env })
    }

    fn map<'n>(&mut self, node: &'n Node, field: &str) -> Option<&'n [(Node, Node)]> {
        match &node.value {
            yaml::Value::Map(entries) => Some(entries),
            _ => {
                self.problem(node.pos, field, format!("expected a map, found {}", node.type_name()));
                None
            }
        }
    }

    fn string(&mut self, node: &Node, field: &str) -> Option<String> {
        match (node.scalar_type(), node.scalar_text()) {
            (Some(ty), Some(text)) if ty != ScalarType::Null => Some(text.to_owned()),
            _ => {
                self.problem(node.pos, field, format!("expected a string, found {}", node.type_name()));
                None
            }
        }
    }

    fn zone(&mut self, node: &Node, field: &str) -> Option<Tz> {
        let name = self.string(node, field)?;
        match name.parse::<Tz>() {
            Ok(zone) => Some(zone),
            Err(_) => {
                self.problem(
                    node.pos,
                    field,
                    format!("unknown time zone `{name}`; use an IANA name such as Europe/Berlin or UTC"),
                );
                None
            }
        }
    }

    fn action(&mut self, node: &Node, field: &str) -> Option<Action> {
        match self.string(node, field)?.as_str() {
            "allow" => Some(Action::Allow),
            "deny" => Some(Action::Deny),
            other => {
                self.problem(node.pos, field, format!("unknown action `{other}`; use allow or deny"));
                None
            }
        }
    }

    /// `default: deny`, or `default: {action, status, body, headers}`.
    fn default(&mut self, node: &Node) -> Option<Outcome> {
        if let yaml::Value::Map(entries) = &node.value {
            check_fields(self, entries, "default", &["action", "status", "body", "headers"]);
            let action = match field(entries, "action") {
                Some(action) => self.action(action, "default.action")?,
                None => {
                    self.problem(node.pos, "default.action", "missing; say allow or deny");
                    return None;
                }
            };
            return self.outcome(entries, action, "default.");
        }
        let action = self.action(node, "default")?;
        Some(Outcome { action, status: if action == Action::Allow { 200 } else { 403 }, ..Outcome::deny() })
    }

    /// The response fields shared by rules and the default.
    fn outcome(&mut self, entries: &[(Node, Node)], action: Action, prefix: &str) -> Option<Outcome> {
        let mut outcome =
            Outcome { action, status: if action == Action::Allow { 200 } else { 403 }, ..Outcome::deny() };
        let mut ok = true;
        if let Some(node) = field(entries, "status") {
            let name = format!("{prefix}status");
            let status = match (node.scalar_type(), node.scalar_text()) {
                (Some(ScalarType::Int), Some(text)) => yaml::parse_int(text),
                _ => None,
            };
            match status {
                _ if action == Action::Allow => {
                    self.problem(node.pos, &name, "an allow always answers 200; `status` is only for deny");
                    ok = false;
                }
                Some(code) if DENY_STATUSES.contains(&code) => outcome.status = u16::try_from(code).unwrap_or(403),
                _ => {
                    self.problem(
                        node.pos,
                        &name,
                        "expected an HTTP status from 300 to 599 (such as 403, 401 or a 302 redirect)",
                    );
                    ok = false;
                }
            }
        }
        if let Some(node) = field(entries, "body") {
            let name = format!("{prefix}body");
            if action == Action::Allow {
                self.problem(
                    node.pos,
                    &name,
                    "an allow forwards the request, so it has no body; `body` is only for deny",
                );
                ok = false;
            } else {
                outcome.body = self.string(node, &name).unwrap_or_default();
            }
        }
        if let Some(node) = field(entries, "headers") {
            let name = format!("{prefix}headers");
            match &node.value {
                yaml::Value::Map(headers) => {
                    for (key, value) in headers {
                        let header_field = format!("{name}.{}", key.scalar_text().unwrap_or_default());
                        match self.header(key, value, &header_field) {
                            Some(header) => outcome.headers.push(header),
                            None => ok = false,
                        }
                    }
                }
                _ => {
                    self.problem(
                        node.pos,
                        &name,
                        format!("expected a map of header name to value, found {}", node.type_name()),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(outcome)
    }

    fn header(&mut self, key: &Node, value: &Node, field: &str) -> Option<(HeaderName, HeaderValue)> {
        let name_text = key.scalar_text().unwrap_or_default();
        let name = match HeaderName::from_bytes(name_text.as_bytes()) {
            Ok(name) if FRAMING_HEADERS.contains(&name.as_str()) => {
                self.problem(key.pos, field, format!("`{name}` frames the HTTP message and cannot be set by a rule"));
                return None;
            }
            Ok(name) => name,
            Err(_) => {
                self.problem(key.pos, field, format!("`{name_text}` is not a valid HTTP header name"));
                return None;
            }
        };
        let text = self.string(value, field)?;
        match HeaderValue::from_str(&text) {
            Ok(value) => Some((name, value)),
            Err(_) => {
                self.problem(value.pos, field, "not a valid HTTP header value (control characters or a line break)");
                None
            }
        }
    }

    fn rule(&mut self, node: &Node, index: usize, file_zone: Tz, env: &Env) -> Option<Rule> {
        self.rule = None;
        let prefix = format!("rules[{index}]");
        let entries = self.map(node, &prefix)?;
        let name = match field(entries, "name") {
            Some(node) => {
                let name = self.string(node, &format!("{prefix}.name"));
                if let Some(name) = &name {
                    if let Some((_, line)) = self.names.iter().find(|(seen, _)| seen == name) {
                        let message = format!(
                            "another rule (line {line}) has this name; names must be unique so logs say which rule decided"
                        );
                        self.rule = Some(name.clone());
                        self.problem(node.pos, "name", message);
                    }
                    self.names.push((name.clone(), node.pos.line));
                }
                name
            }
            None => {
                self.problem(node.pos, &format!("{prefix}.name"), "missing; every rule needs a name, for the logs");
                None
            }
        };
        // From here on, messages name the rule rather than its index.
        self.rule = name.clone();
        let field_name = |field: &str| if name.is_some() { field.to_owned() } else { format!("{prefix}.{field}") };
        check_fields(
            self,
            entries,
            &if name.is_some() { String::new() } else { prefix.clone() },
            &["name", "when", "action", "status", "body", "headers", "timeZone"],
        );
        let zone = match field(entries, "timeZone") {
            Some(zone) => self.zone(zone, &field_name("timeZone")),
            None => Some(file_zone),
        };
        let action = match field(entries, "action") {
            Some(action) => self.action(action, &field_name("action")),
            None => {
                self.problem(node.pos, &field_name("action"), "missing; say allow or deny");
                None
            }
        };
        let outcome_prefix = if name.is_some() { String::new() } else { format!("{prefix}.") };
        let outcome = action.and_then(|action| self.outcome(entries, action, &outcome_prefix));
        let when = match field(entries, "when") {
            Some(when) => self.when(when, &field_name("when"), env),
            None => {
                self.problem(
                    node.pos,
                    &field_name("when"),
                    "missing; give a CEL expression, or `true` for a catch-all rule",
                );
                None
            }
        };
        let rule = Rule { name: name?, when: when?, zone: zone?, outcome: outcome? };
        self.rule = None;
        Some(rule)
    }

    fn when(&mut self, node: &Node, field: &str, env: &Env) -> Option<Program> {
        let source = self.string(node, field)?;
        match expr::compile(env, &source) {
            Ok(program) => Some(program),
            Err(problems) => {
                for problem in problems {
                    let pos = locate(self.text, node.pos, &source, problem.line, problem.column);
                    self.problem(pos, field, problem.message);
                }
                None
            }
        }
    }
}

fn field<'n>(entries: &'n [(Node, Node)], key: &str) -> Option<&'n Node> {
    entries.iter().find(|(k, _)| k.scalar_text() == Some(key)).map(|(_, v)| v).filter(|v| !v.is_null())
}

fn check_fields(reader: &mut Reader<'_>, entries: &[(Node, Node)], prefix: &str, known: &[&str]) {
    for (key, _) in entries {
        let name = key.scalar_text().unwrap_or_default();
        if !known.contains(&name) {
            let field = if prefix.is_empty() { name.to_owned() } else { format!("{prefix}.{name}") };
            reader.problem(
                key.pos,
                &field,
                format!("unknown field `{name}`; the fields here are {}", known.join(", ")),
            );
        }
    }
}

/// Where in the file a position inside an expression is. The expression's lines are found in
/// the file in order, from the value's position on: that covers an expression on the `when:`
/// line (plain or quoted) and a literal block (`when: |`). Where the text cannot be found as
/// written (a folded or escaped scalar), the value's own position is the best there is.
fn locate(file_text: &str, value_pos: Pos, expression: &str, line: usize, column: usize) -> Pos {
    let file_lines: Vec<&str> = file_text.lines().collect();
    let mut file_line = value_pos.line.saturating_sub(1);
    let mut first_column = value_pos.column.saturating_sub(1);
    for (index, expression_line) in expression.lines().enumerate() {
        let found = (file_line..file_lines.len()).find_map(|candidate| {
            let text = file_lines[candidate];
            let skip = if candidate == file_line { first_column } else { 0 };
            let start = text.char_indices().nth(skip).map_or(text.len(), |(byte, _)| byte);
            text[start..].find(expression_line).map(|byte| (candidate, skip + text[start..][..byte].chars().count()))
        });
        let Some((found_line, found_column)) = found else {
            return value_pos;
        };
        if index + 1 == line {
            return Pos { line: found_line + 1, column: found_column + column };
        }
        file_line = found_line + 1;
        first_column = 0;
    }
    value_pos
}

#[cfg(test)]
mod tests;
