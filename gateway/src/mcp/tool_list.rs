//! The tool list a caller sees: tools their guard tier cannot use are left out, and the
//! `action` enum of the others lists only the actions their tier allows.

use rmcp::model::{JsonObject, Tool};
use serde_json::Value;

use crate::core::tier::{Tier, allowed_actions, required, visible};

/// The tool list a caller of tier `have` sees: tools they cannot use are left out, and the
/// `action` enum of the others lists only the actions their tier allows.
pub fn for_tier(tools: Vec<Tool>, have: Tier) -> Vec<Tool> {
    tools
        .into_iter()
        .filter(|tool| visible(&tool.name, have))
        .map(|tool| narrow(tool, have))
        .collect()
}

/// Narrows the `action` enum of `tool`'s input schema to the actions `have` allows. A tool
/// left with read actions only is annotated read-only.
fn narrow(mut tool: Tool, have: Tier) -> Tool {
    let Some(allowed) = allowed_actions(&tool.name, have) else {
        return tool;
    };
    let all = allowed_actions(&tool.name, Tier::Dangerous).map_or(0, |all| all.len());
    if allowed.len() == all {
        return tool;
    }
    let mut schema = (*tool.input_schema).clone();
    narrow_action_schema(&mut schema, &allowed);
    tool.input_schema = std::sync::Arc::new(schema);
    let read_only = allowed
        .iter()
        .all(|action| required(&tool.name, Some(action)) == Tier::Readonly);
    if read_only && let Some(annotations) = tool.annotations.as_mut() {
        annotations.read_only_hint = Some(true);
        annotations.destructive_hint = Some(false);
    }
    tool
}

/// Filters the enum of `properties.action` to `allowed`. Local `$ref`s are inlined (so other
/// properties sharing a definition keep it whole), and the shapes schemars writes are handled:
/// `enum: [..]`, `oneOf`/`anyOf` of `const` (or one-value `enum`) variants with descriptions,
/// and an optional action (`anyOf: [{$ref}, {type: null}]`).
fn narrow_action_schema(schema: &mut JsonObject, allowed: &[&str]) {
    let Some(mut action) = schema
        .get("properties")
        .and_then(|p| p.get("action"))
        .cloned()
    else {
        return;
    };
    let defs = schema
        .get("$defs")
        .or_else(|| schema.get("definitions"))
        .cloned()
        .unwrap_or(Value::Null);
    narrow_value(&mut action, &defs, allowed, 0);
    if let Some(Value::Object(properties)) = schema.get_mut("properties") {
        properties.insert("action".into(), action);
    }
}

fn narrow_value(value: &mut Value, defs: &Value, allowed: &[&str], depth: usize) {
    // Definitions may refer to each other; a schema this deep is not an action enum.
    if depth > 8 {
        return;
    }
    let Value::Object(object) = value else {
        return;
    };
    if let Some(name) = object.get("$ref").and_then(Value::as_str).and_then(|r| {
        r.strip_prefix("#/$defs/")
            .or(r.strip_prefix("#/definitions/"))
    }) && let Some(Value::Object(def)) = defs.get(name)
    {
        object.remove("$ref");
        for (key, v) in def {
            // The property's own description wins over the definition's.
            object.entry(key.clone()).or_insert_with(|| v.clone());
        }
    }
    let keep = |v: &Value| v.as_str().is_some_and(|s| allowed.contains(&s));
    if let Some(Value::Array(values)) = object.get_mut("enum") {
        values.retain(keep);
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(Value::Array(variants)) = object.get_mut(key) {
            variants.retain(|variant| {
                match (variant.get("const"), variant.get("enum")) {
                    (Some(c), _) => keep(c),
                    (None, Some(Value::Array(values))) if values.iter().all(Value::is_string) => {
                        values.iter().any(keep)
                    }
                    // `{type: null}`, or a nested schema narrowed below.
                    _ => true,
                }
            });
            for variant in variants.iter_mut() {
                if variant.get("const").is_none() {
                    narrow_value(variant, defs, allowed, depth + 1);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Tier::{Dangerous, Readonly, Standard};

    fn action_values(tool: &Tool) -> Vec<String> {
        let schema = Value::Object((*tool.input_schema).clone());
        let mut out = Vec::new();
        collect(&schema["properties"]["action"], &schema, &mut out);
        out
    }

    /// Every string an `enum`/`const` under `value` allows, following local `$ref`s.
    fn collect(value: &Value, schema: &Value, out: &mut Vec<String>) {
        if let Some(name) = value["$ref"].as_str().and_then(|r| r.rsplit('/').next()) {
            collect(&schema["$defs"][name], schema, out);
        }
        for v in value["enum"].as_array().into_iter().flatten() {
            out.extend(v.as_str().map(String::from));
        }
        if let Some(c) = value["const"].as_str() {
            out.push(c.to_string());
        }
        for key in ["oneOf", "anyOf"] {
            for variant in value[key].as_array().into_iter().flatten() {
                collect(variant, schema, out);
            }
        }
    }

    #[test]
    fn readonly_list_hides_bash_and_narrows_action_enums() {
        let tools = for_tier(crate::mcp::definitions(), Readonly);
        let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
        assert!(!names.contains(&"bash"), "{names:?}");
        assert!(
            names.contains(&"hosts") && names.contains(&"file"),
            "{names:?}"
        );
        let file = tools.iter().find(|t| t.name == "file").unwrap();
        assert_eq!(action_values(file), ["read", "stat", "list", "grep"]);
        assert_eq!(
            file.annotations.as_ref().unwrap().read_only_hint,
            Some(true)
        );
        let job = tools.iter().find(|t| t.name == "job").unwrap();
        assert_eq!(action_values(job), ["poll", "list", "wait"]);
        if let Some(facts) = tools.iter().find(|t| t.name == "facts") {
            assert_eq!(action_values(facts), ["get"]);
        }

        let tools = for_tier(crate::mcp::definitions(), Standard);
        let file = tools.iter().find(|t| t.name == "file").unwrap();
        assert_eq!(
            action_values(file),
            ["read", "stat", "list", "grep", "write", "append"]
        );
        let all = for_tier(crate::mcp::definitions(), Dangerous);
        assert_eq!(all.len(), crate::mcp::definitions().len());
    }
}
