//! Compiling a rule's `when` expression, and finding at load what would only fail at run time.
//!
//! The `cel` crate has no type checker, so an undeclared variable would surface as an
//! evaluation error on every request (a deny for all, found in production). The expression's
//! syntax tree is walked instead: every free identifier must be one of the variables this
//! server provides, every field chain on them must exist, and a literal time-zone argument
//! (`now.getHours("Europe/Berlin")`) must name a real zone.

use cel::common::ast::{EntryExpr, Expr, LiteralValue};
use cel::{Env, IdedExpr, Program};

/// A problem in an expression, at a 1-based line and column of the expression's own text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExprProblem {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// The variables and their fields. A field that holds a map (`headers`, `query`, `claims`)
/// takes any key.
#[derive(Debug, Clone, Copy)]
enum Shape {
    Object(&'static [(&'static str, Shape)]),
    AnyKeys,
    Scalar,
}

const REQUEST: Shape = Shape::Object(&[
    ("method", Shape::Scalar),
    ("path", Shape::Scalar),
    ("host", Shape::Scalar),
    ("headers", Shape::AnyKeys),
    ("query", Shape::AnyKeys),
    ("auth", Shape::Object(&[("claims", Shape::AnyKeys)])),
]);
const SOURCE: Shape = Shape::Object(&[("principal", Shape::Scalar), ("address", Shape::Scalar)]);
const DESTINATION: Shape =
    Shape::Object(&[("principal", Shape::Scalar), ("address", Shape::Scalar), ("port", Shape::Scalar)]);

const VARIABLES: &[(&str, Shape)] =
    &[("request", REQUEST), ("source", SOURCE), ("destination", DESTINATION), ("now", Shape::Scalar)];

/// Type names an expression may use as values (`type(x) == string`).
const TYPE_NAMES: &[&str] = &[
    "bool",
    "bytes",
    "double",
    "duration",
    "dyn",
    "int",
    "list",
    "map",
    "null_type",
    "string",
    "timestamp",
    "type",
    "uint",
];

/// Timestamp accessors that take a time zone.
const ZONED_ACCESSORS: &[&str] = &[
    "getDate",
    "getDayOfMonth",
    "getDayOfWeek",
    "getDayOfYear",
    "getFullYear",
    "getHours",
    "getMilliseconds",
    "getMinutes",
    "getMonth",
    "getSeconds",
];

/// Parse `source` and check it against the variables. Every problem found is returned.
pub(crate) fn compile(env: &Env, source: &str) -> Result<Program, Vec<ExprProblem>> {
    let program = env.compile(source).map_err(|errors| {
        errors
            .errors
            .iter()
            .map(|error| ExprProblem {
                line: usize::try_from(error.pos.0).unwrap_or(1).max(1),
                // cel reports 1-based columns, in characters.
                column: usize::try_from(error.pos.1).unwrap_or(1).max(1),
                message: error.msg.clone(),
            })
            .collect::<Vec<_>>()
    })?;
    let mut checker = Checker { program: &program, source, bound: Vec::new(), problems: Vec::new() };
    checker.visit(program.expression());
    if checker.problems.is_empty() { Ok(program) } else { Err(checker.problems) }
}

struct Checker<'p> {
    program: &'p Program,
    source: &'p str,
    /// Variables bound by enclosing comprehensions (`exists(h, …)`), innermost last.
    bound: Vec<&'p str>,
    problems: Vec<ExprProblem>,
}

impl<'p> Checker<'p> {
    fn report(&mut self, at: &IdedExpr, message: String) {
        let offset = self.program.source_info().offset_for(at.id).map_or(0, |(start, _)| start as usize);
        let (line, column) = line_column(self.source, offset);
        self.problems.push(ExprProblem { line, column, message });
    }

    fn visit(&mut self, node: &'p IdedExpr) {
        match &node.expr {
            Expr::Ident(_) | Expr::Select(_) => self.visit_name(node),
            Expr::Call(call) => {
                if ZONED_ACCESSORS.contains(&call.func_name.as_str())
                    && call.target.is_some()
                    && let [argument] = call.args.as_slice()
                    && let Expr::Literal(LiteralValue::String(zone)) = &argument.expr
                    && let Err(message) = check_zone_argument(zone.inner())
                {
                    self.report(argument, message);
                }
                if let Some(target) = &call.target {
                    self.visit(target);
                }
                for argument in &call.args {
                    self.visit(argument);
                }
            }
            Expr::Comprehension(comprehension) => {
                self.visit(&comprehension.iter_range);
                self.visit(&comprehension.accu_init);
                let depth = self.bound.len();
                self.bound.push(&comprehension.iter_var);
                if let Some(second) = &comprehension.iter_var2 {
                    self.bound.push(second);
                }
                self.bound.push(&comprehension.accu_var);
                self.visit(&comprehension.loop_cond);
                self.visit(&comprehension.loop_step);
                self.visit(&comprehension.result);
                self.bound.truncate(depth);
            }
            Expr::List(list) => list.elements.iter().for_each(|element| self.visit(element)),
            Expr::Map(map) => {
                for entry in &map.entries {
                    match &entry.expr {
                        EntryExpr::MapEntry(entry) => {
                            self.visit(&entry.key);
                            self.visit(&entry.value);
                        }
                        EntryExpr::StructField(field) => self.visit(&field.value),
                    }
                }
            }
            Expr::Struct(structure) => {
                for entry in &structure.entries {
                    if let EntryExpr::StructField(field) = &entry.expr {
                        self.visit(&field.value);
                    }
                }
            }
            Expr::Literal(_) | Expr::Unspecified => {}
        }
    }

    /// An identifier, or a chain of field selections (`request.auth.claims.sub`, also inside
    /// `has(…)`) that ends in one: the name must be known and each field must exist.
    fn visit_name(&mut self, node: &'p IdedExpr) {
        let mut chain: Vec<&'p IdedExpr> = Vec::new();
        let mut current = node;
        while let Expr::Select(select) = &current.expr {
            chain.push(current);
            current = &select.operand;
        }
        let Expr::Ident(root) = &current.expr else {
            // Selections on something else (a call, a literal map): check that part on its own.
            self.visit(current);
            return;
        };
        if self.bound.contains(&root.as_str()) {
            return;
        }
        let Some(&(_, mut shape)) = VARIABLES.iter().find(|(name, _)| name == root) else {
            if !TYPE_NAMES.contains(&root.as_str()) {
                let known: Vec<&str> = VARIABLES.iter().map(|(name, _)| *name).collect();
                self.report(current, format!("unknown variable `{root}`; the variables are {}", known.join(", ")));
            }
            return;
        };
        let mut path = root.clone();
        for select_node in chain.iter().rev() {
            let Expr::Select(select) = &select_node.expr else { continue };
            match shape {
                Shape::AnyKeys => return,
                Shape::Scalar => {
                    self.report(select_node, format!("`{path}` has no fields, so `.{}` does not exist", select.field));
                    return;
                }
                Shape::Object(fields) => match fields.iter().find(|(name, _)| *name == select.field) {
                    Some((_, next)) => {
                        shape = *next;
                        path.push('.');
                        path.push_str(&select.field);
                    }
                    None => {
                        let known: Vec<&str> = fields.iter().map(|(name, _)| *name).collect();
                        self.report(
                            select_node,
                            format!("`{path}` has no field `{}`; its fields are {}", select.field, known.join(", ")),
                        );
                        return;
                    }
                },
            }
        }
    }
}

/// What cel accepts as a zone: an IANA name, or a `[+-]HH:MM` offset (checked by cel itself).
fn check_zone_argument(zone: &str) -> Result<(), String> {
    if zone.is_empty() || zone.contains(':') || zone.parse::<chrono_tz::Tz>().is_ok() {
        Ok(())
    } else {
        Err(format!("unknown time zone `{zone}`; use an IANA name such as Europe/Berlin, or an offset such as +01:00"))
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |index| index + 1);
    (line, before[line_start..].chars().count() + 1)
}
