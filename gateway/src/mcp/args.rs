//! A tool call's arguments parsed once, into the typed parameters that the tier check, the reach
//! and approval checks and the tool itself all read: there is one reading of `action`, not one
//! per check. Anything that is not the shape the tool's input schema documents is refused with
//! an invalid-arguments error naming the field.

use rmcp::model::JsonObject;
use serde::de::DeserializeOwned;

use super::bash::BashParams;
use super::facts::{FactsAction, FactsParams};
use super::file::FileParams;
use super::grep::GrepParams;
use super::hosts::HostsParams;
use super::job::JobParams;
use super::runbook::RunbookParams;
use super::whoami::WhoamiParams;
use crate::core::error::ToolError;

/// The parameters of one call, by tool.
#[derive(Debug)]
pub enum Params {
    Hosts(HostsParams),
    Bash(BashParams),
    Job(JobParams),
    File(FileParams),
    Grep(GrepParams),
    Facts(FactsParams),
    Whoami(WhoamiParams),
    Runbook(RunbookParams),
}

// === impl Params ===

impl Params {
    /// Parses the arguments of a call of `tool` (without `approval_id`, which the handler takes
    /// out first). An unknown tool is [`ToolError::UnknownTool`].
    pub fn parse(tool: &str, args: JsonObject) -> Result<Params, ToolError> {
        Ok(match tool {
            "hosts" => Params::Hosts(parse(tool, args)?),
            "bash" => Params::Bash(parse(tool, args)?),
            "job" => Params::Job(parse(tool, args)?),
            "file" => Params::File(parse(tool, args)?),
            "grep" => Params::Grep(parse(tool, args)?),
            "facts" => Params::Facts(parse(tool, args)?),
            "whoami" => Params::Whoami(parse(tool, args)?),
            "runbook" => Params::Runbook(parse(tool, args)?),
            other => return Err(ToolError::UnknownTool(other.to_string())),
        })
    }

    /// The action the call asks for, as the tier table names it; `None` for tools without
    /// actions. A `facts` call without `action` is a `get`.
    pub fn action(&self) -> Option<&'static str> {
        match self {
            Params::Job(p) => Some(p.action.as_str()),
            Params::File(p) => Some(p.action.as_str()),
            Params::Facts(p) => Some(p.action.unwrap_or(FactsAction::Get).as_str()),
            Params::Runbook(p) => Some(p.action.as_str()),
            Params::Hosts(_) | Params::Bash(_) | Params::Grep(_) | Params::Whoami(_) => None,
        }
    }
}

/// Deserializes `T` from `args`, naming the field that does not fit (`action`, `globs[1]`).
fn parse<T: DeserializeOwned>(tool: &str, args: JsonObject) -> Result<T, ToolError> {
    serde_path_to_error::deserialize(serde_json::Value::Object(args)).map_err(|e| {
        let path = e.path().to_string();
        let reason = e.into_inner().to_string();
        if path == "." || path.is_empty() {
            // Unknown and missing fields name themselves in the message.
            ToolError::invalid(tool, reason)
        } else {
            ToolError::invalid(tool, format!("`{path}`: {reason}"))
        }
    })
}

#[cfg(test)]
mod tests {
    //! The declared input schemas and the parser agree: every documented action parses and has
    //! its tier, every documented property is accepted in its documented type, and other
    //! shapes are refused naming the field.

    use serde_json::{Value, json};

    use super::*;
    use crate::core::tier::{self, Tier};

    fn object(value: Value) -> JsonObject {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    /// The schema of `tool`, with `$defs` for resolving references.
    fn schema(tool: &str) -> Value {
        let tool = crate::mcp::definitions()
            .into_iter()
            .find(|t| t.name == tool)
            .unwrap_or_else(|| panic!("{tool} is defined"));
        Value::Object((*tool.input_schema).clone())
    }

    /// `value` with a local `$ref` followed.
    fn resolve<'a>(value: &'a Value, schema: &'a Value) -> &'a Value {
        match value["$ref"].as_str().and_then(|r| r.rsplit('/').next()) {
            Some(name) => &schema["$defs"][name],
            None => value,
        }
    }

    /// The strings an `enum`/`oneOf` of `const`s allows, following `$ref`s and `anyOf` with null.
    fn enum_values(value: &Value, schema: &Value) -> Vec<String> {
        let value = resolve(value, schema);
        let mut out: Vec<String> = value["enum"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(String::from))
            .collect();
        if let Some(c) = value["const"].as_str() {
            out.push(c.to_string());
        }
        for key in ["oneOf", "anyOf"] {
            for variant in value[key].as_array().into_iter().flatten() {
                out.extend(enum_values(variant, schema));
            }
        }
        out
    }

    /// A value of the type the schema documents for a property.
    fn sample(value: &Value, schema: &Value) -> Value {
        let value = resolve(value, schema);
        if let Some(first) = enum_values(value, schema).into_iter().next() {
            return Value::String(first);
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(variants) = value[key].as_array() {
                let typed = variants
                    .iter()
                    .find(|v| resolve(v, schema)["type"] != "null")
                    .expect("a variant that is not null");
                return sample(typed, schema);
            }
        }
        let ty = match &value["type"] {
            Value::Array(types) => types
                .iter()
                .find(|t| *t != "null")
                .cloned()
                .unwrap_or(Value::Null),
            other => other.clone(),
        };
        match ty.as_str() {
            Some("string") => json!("/tmp"),
            Some("integer") => json!(1),
            Some("number") => json!(1.5),
            Some("boolean") => json!(true),
            Some("array") => json!([sample(&value["items"], schema)]),
            Some("object") => json!({"NAME": "value"}),
            other => panic!("no sample for type {other:?} in {value}"),
        }
    }

    /// The smallest valid arguments of `tool`: its required properties, sampled.
    fn required_args(tool: &str) -> JsonObject {
        let schema = schema(tool);
        let mut args = JsonObject::new();
        for name in schema["required"].as_array().into_iter().flatten() {
            let name = name.as_str().expect("a property name");
            args.insert(name.into(), sample(&schema["properties"][name], &schema));
        }
        args
    }

    /// The error `Params::parse` must answer for `args`.
    #[track_caller]
    fn refused(tool: &str, args: JsonObject, what: &str) -> ToolError {
        match Params::parse(tool, args) {
            Ok(params) => panic!("{tool} accepted {what}: {params:?}"),
            Err(e) => e,
        }
    }

    const TOOLS: [&str; 8] = [
        "hosts", "bash", "job", "file", "grep", "facts", "whoami", "runbook",
    ];

    #[test]
    fn every_documented_action_parses_with_the_tier_the_table_gives_it() {
        for tool in TOOLS {
            let schema = schema(tool);
            let documented = enum_values(&schema["properties"]["action"], &schema);
            let table = tier::allowed_actions(tool, Tier::Dangerous).unwrap_or_default();
            assert_eq!(
                documented, table,
                "{tool}: schema and tier table list the actions"
            );
            for action in documented {
                let mut args = required_args(tool);
                args.insert("action".into(), json!(action));
                let params = Params::parse(tool, args)
                    .unwrap_or_else(|e| panic!("{tool} action {action}: {e}"));
                assert_eq!(params.action(), Some(action.as_str()), "{tool}");
            }
        }
    }

    #[test]
    fn an_action_in_any_shape_but_its_name_is_refused_naming_the_field() {
        for tool in ["job", "file", "facts", "runbook"] {
            let schema = schema(tool);
            for action in enum_values(&schema["properties"]["action"], &schema) {
                for shape in [
                    json!({ action.clone(): null }),
                    json!({ action.clone(): {} }),
                    json!([action.clone()]),
                    json!(action.to_uppercase()),
                ] {
                    let mut args = required_args(tool);
                    args.insert("action".into(), shape.clone());
                    let err = refused(tool, args, &format!("action {shape}"));
                    assert_eq!(err.code(), "invalid_arguments");
                    assert!(err.to_string().contains("`action`"), "{err}");
                }
            }
        }
    }

    /// The properties of a tool's input schema (`whoami` takes no arguments: none).
    fn properties(schema: &Value) -> serde_json::Map<String, Value> {
        schema["properties"]
            .as_object()
            .cloned()
            .unwrap_or_default()
    }

    #[test]
    fn every_documented_property_is_accepted_in_its_documented_type() {
        for tool in TOOLS {
            let schema = schema(tool);
            let properties = properties(&schema);
            for (name, property) in &properties {
                // The handler takes `approval_id` out before the tool's parser sees the call.
                if name == crate::core::approvals::ARG {
                    continue;
                }
                let mut args = required_args(tool);
                args.insert(name.clone(), sample(property, &schema));
                if let Err(e) = Params::parse(tool, args.clone()) {
                    panic!("{tool}: {name} = {} refused: {e}", args[name]);
                }
            }
        }
    }

    #[test]
    fn every_enum_property_takes_its_name_only() {
        for tool in TOOLS {
            let schema = schema(tool);
            let properties = properties(&schema);
            for (name, property) in &properties {
                let Some(value) = enum_values(property, &schema).into_iter().next() else {
                    continue;
                };
                let mut args = required_args(tool);
                args.insert(name.clone(), json!({ value: null }));
                let err = refused(tool, args, &format!("a map for {name}"));
                assert!(err.to_string().contains(&format!("`{name}`")), "{err}");
            }
        }
    }

    #[test]
    fn undocumented_properties_and_missing_required_ones_are_refused_by_name() {
        for tool in TOOLS {
            let mut args = required_args(tool);
            args.insert("surprise".into(), json!(1));
            let err = refused(tool, args, "an unknown field");
            assert!(err.to_string().contains("`surprise`"), "{tool}: {err}");
            let schema = schema(tool);
            for name in schema["required"].as_array().into_iter().flatten() {
                let name = name.as_str().expect("a name");
                let mut args = required_args(tool);
                args.remove(name);
                let err = refused(tool, args, "a missing field");
                assert!(
                    err.to_string().contains(&format!("`{name}`")),
                    "{tool}: {err}"
                );
            }
        }
    }

    #[test]
    fn a_type_error_names_its_field() {
        let err = refused(
            "bash",
            object(json!({"cmd": "true", "bg": "yes"})),
            "a string for a bool",
        );
        assert!(err.to_string().contains("`bg`"), "{err}");
        let err = refused(
            "grep",
            object(json!({"hosts": "*", "pattern": "x", "globs": ["a", 2]})),
            "a number in a string list",
        );
        assert!(err.to_string().contains("`globs[1]`"), "{err}");
        assert!(matches!(
            Params::parse("rm", JsonObject::new()),
            Err(ToolError::UnknownTool(_))
        ));
    }
}
