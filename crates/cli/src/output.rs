//! Output for scripts shared by the commands: the `-o text|json|yaml` choice, and JSON
//! documents written as YAML.

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    Text,
    Json,
    Yaml,
}

/// A JSON document as block YAML. Strings are written double-quoted with JSON's escapes, which
/// YAML reads the same, so no value can change type or meaning on the way.
pub(crate) fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(map) if !map.is_empty() => yaml_block(value, 0, &mut out),
        Value::Array(items) if !items.is_empty() => yaml_block(value, 0, &mut out),
        scalar => {
            out.push_str(&yaml_scalar(scalar));
            out.push('\n');
        }
    }
    out
}

fn yaml_scalar(value: &Value) -> String {
    match value {
        Value::Object(_) => "{}".to_owned(),
        Value::Array(_) => "[]".to_owned(),
        other => other.to_string(),
    }
}

fn is_block(value: &Value) -> bool {
    match value {
        Value::Object(map) => !map.is_empty(),
        Value::Array(items) => !items.is_empty(),
        _ => false,
    }
}

fn yaml_key(key: &str) -> String {
    let plain = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'));
    if plain { key.to_owned() } else { Value::from(key).to_string() }
}

fn yaml_block(value: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) => {
            for (key, item) in map {
                if is_block(item) {
                    out.push_str(&format!("{pad}{}:\n", yaml_key(key)));
                    yaml_block(item, indent + 2, out);
                } else {
                    out.push_str(&format!("{pad}{}: {}\n", yaml_key(key), yaml_scalar(item)));
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                if is_block(item) {
                    // The item's block, with its first line's indentation turned into "- ".
                    let mut inner = String::new();
                    yaml_block(item, indent + 2, &mut inner);
                    out.push_str(&pad);
                    out.push_str("- ");
                    out.push_str(&inner[indent + 2..]);
                } else {
                    out.push_str(&format!("{pad}- {}\n", yaml_scalar(item)));
                }
            }
        }
        scalar => out.push_str(&format!("{pad}{}\n", yaml_scalar(scalar))),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn yaml_output_nests_maps_and_lists_and_quotes_every_string() {
        let value = json!({"a": 1, "b": ["x", {"c": "y: z", "d": []}], "e": {}, "f": null});
        assert_eq!(to_yaml(&value), "a: 1\nb:\n  - \"x\"\n  - c: \"y: z\"\n    d: []\ne: {}\nf: null\n");
    }
}
