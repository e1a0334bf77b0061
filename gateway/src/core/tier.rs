//! Guard tiers: the one table of which tool (and which action of a tool) needs which tier, and
//! the per-tier view of the tool list (hidden tools, narrowed `action` enums).
//!
//! Every check of a tier goes through here: the MCP layer (`tools/list` and `tools/call`), the
//! fan-out code and the signing hook, so one edit of [`TOOLS`] changes all of them.

use rmcp::model::{JsonObject, Tool};
use serde_json::Value;

pub use execmesh_proto::tier::{Tier, UnknownTier};

/// Why a call is outside the caller's tier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TierError {
    #[error(
        "`{tool}`{} needs tier {needed}; your tier is {have}. Ask an administrator for a higher tier, or use a tool your tier allows",
        action_suffix(.action)
    )]
    TooLow {
        tool: String,
        action: Option<String>,
        needed: Tier,
        have: Tier,
    },
}

fn action_suffix(action: &Option<String>) -> String {
    match action {
        Some(action) => format!(" action `{action}`"),
        None => String::new(),
    }
}

/// The tier each tool needs, per action for tools that take an `action` argument.
struct ToolTiers {
    tool: &'static str,
    /// The tier of a call without an `action` (or of a tool without actions).
    base: Tier,
    /// Every action of the tool with its tier. An action missing here needs
    /// [`Tier::Dangerous`]: a new action is refused to lower tiers until it is listed.
    actions: &'static [(&'static str, Tier)],
}

use Tier::{Dangerous, Readonly, Standard};

/// The table (DESIGN §4). Unknown tools need [`Tier::Dangerous`].
const TOOLS: &[ToolTiers] = &[
    ToolTiers {
        tool: "hosts",
        base: Readonly,
        actions: &[],
    },
    ToolTiers {
        tool: "whoami",
        base: Readonly,
        actions: &[],
    },
    ToolTiers {
        tool: "grep",
        base: Readonly,
        actions: &[],
    },
    ToolTiers {
        tool: "bash",
        base: Standard,
        actions: &[],
    },
    ToolTiers {
        tool: "job",
        base: Readonly,
        actions: &[
            ("poll", Readonly),
            ("list", Readonly),
            ("wait", Readonly),
            ("kill", Standard),
        ],
    },
    ToolTiers {
        tool: "file",
        base: Readonly,
        actions: &[
            ("read", Readonly),
            ("stat", Readonly),
            ("list", Readonly),
            ("grep", Readonly),
            ("write", Standard),
            ("append", Standard),
            ("move", Dangerous),
            ("delete", Dangerous),
            ("copy", Dangerous),
        ],
    },
    ToolTiers {
        tool: "facts",
        base: Readonly,
        actions: &[("get", Readonly), ("refresh", Standard)],
    },
];

fn entry(tool: &str) -> Option<&'static ToolTiers> {
    TOOLS.iter().find(|t| t.tool == tool)
}

/// Whether `tool` is in the table.
pub fn is_known_tool(tool: &str) -> bool {
    entry(tool).is_some()
}

/// The tier a call of `tool` with `action` needs. Unknown tools and unlisted actions need
/// [`Tier::Dangerous`].
pub fn required(tool: &str, action: Option<&str>) -> Tier {
    let Some(entry) = entry(tool) else {
        return Dangerous;
    };
    match action {
        None => entry.base,
        Some(action) if entry.actions.is_empty() => {
            // A tool without actions ignores the argument; its own parser refuses it.
            let _ = action;
            entry.base
        }
        Some(action) => entry
            .actions
            .iter()
            .find(|(name, _)| *name == action)
            .map(|(_, tier)| *tier)
            .unwrap_or(Dangerous),
    }
}

/// Checks that a caller of tier `have` may call `tool` with `action`: the action of the call's
/// parsed arguments (the MCP face parses them once, so this check and the tool read the
/// same value).
pub fn check(tool: &str, action: Option<&str>, have: Tier) -> Result<(), TierError> {
    let needed = required(tool, action);
    if needed <= have {
        Ok(())
    } else {
        Err(TierError::TooLow {
            tool: tool.to_string(),
            action: action.map(str::to_string),
            needed,
            have,
        })
    }
}

/// The actions of `tool` a caller of tier `have` may use, in table order; `None` for tools
/// without actions.
pub fn allowed_actions(tool: &str, have: Tier) -> Option<Vec<&'static str>> {
    let entry = entry(tool)?;
    if entry.actions.is_empty() {
        return None;
    }
    Some(
        entry
            .actions
            .iter()
            .filter(|(_, tier)| *tier <= have)
            .map(|(name, _)| *name)
            .collect(),
    )
}

/// Whether a caller of tier `have` can use `tool` at all (some action of it).
pub fn visible(tool: &str, have: Tier) -> bool {
    match allowed_actions(tool, have) {
        Some(actions) => !actions.is_empty(),
        None => required(tool, None) <= have,
    }
}

/// The tool list a caller of tier `have` sees: tools they cannot use are left out, and the
/// `action` enum of the others lists only the actions their tier allows.
pub fn tools_for(tools: Vec<Tool>, have: Tier) -> Vec<Tool> {
    tools
        .into_iter()
        .filter(|tool| visible(&tool.name, have))
        .map(|tool| narrow(tool, have))
        .collect()
}

/// Narrows the `action` enum of `tool`'s input schema to the actions `have` allows. A tool
/// left with read actions only is annotated read-only.
pub fn narrow(mut tool: Tool, have: Tier) -> Tool {
    let Some(allowed) = allowed_actions(&tool.name, have) else {
        return tool;
    };
    let all = entry(&tool.name).map(|e| e.actions.len()).unwrap_or(0);
    if allowed.len() == all {
        return tool;
    }
    let mut schema = (*tool.input_schema).clone();
    narrow_action_schema(&mut schema, &allowed);
    tool.input_schema = std::sync::Arc::new(schema);
    let read_only = allowed
        .iter()
        .all(|action| required(&tool.name, Some(action)) == Readonly);
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
    fn tiers_are_ordered_and_parsed() {
        assert!(Readonly < Standard && Standard < Dangerous);
        assert_eq!("Standard".parse::<Tier>().unwrap(), Standard);
        assert!("root".parse::<Tier>().is_err());
        assert_eq!(
            serde_json::to_value(Dangerous).unwrap(),
            Value::from("dangerous")
        );
    }

    #[test]
    fn table_matches_the_design() {
        assert_eq!(required("hosts", None), Readonly);
        assert_eq!(required("bash", None), Standard);
        assert_eq!(required("job", Some("poll")), Readonly);
        assert_eq!(required("job", Some("kill")), Standard);
        assert_eq!(required("file", Some("read")), Readonly);
        assert_eq!(required("file", Some("append")), Standard);
        assert_eq!(required("file", Some("delete")), Dangerous);
        assert_eq!(required("facts", Some("refresh")), Standard);
        assert_eq!(
            required("file", Some("chmod")),
            Dangerous,
            "unlisted action"
        );
        assert_eq!(required("rm-rf", None), Dangerous, "unknown tool");
    }

    #[test]
    fn calls_outside_the_tier_name_the_tier_needed() {
        let err = check("file", Some("delete"), Standard).unwrap_err();
        assert!(err.to_string().contains("needs tier dangerous"), "{err}");
        assert!(err.to_string().contains("your tier is standard"), "{err}");
        assert!(check("file", Some("delete"), Dangerous).is_ok());
    }

    #[test]
    fn readonly_list_hides_bash_and_narrows_action_enums() {
        let tools = tools_for(crate::mcp::definitions(), Readonly);
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

        let tools = tools_for(crate::mcp::definitions(), Standard);
        let file = tools.iter().find(|t| t.name == "file").unwrap();
        assert_eq!(
            action_values(file),
            ["read", "stat", "list", "grep", "write", "append"]
        );
        let all = tools_for(crate::mcp::definitions(), Dangerous);
        assert_eq!(all.len(), crate::mcp::definitions().len());
    }
}
