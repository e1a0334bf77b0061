//! A runbook's typed parameters: their declaration, the JSON schema a client sees, and the check
//! that turns a caller's JSON value into the one text that reaches the program.
//!
//! Every type refuses control characters (newline, NUL, escape): a value is one argv element or
//! one environment variable, and never a line of anything. A value that does not fit its type
//! is refused naming the parameter, before anything is sent.

use std::collections::BTreeMap;

use regex::Regex;
use serde::Deserialize;
use serde_json::{Value, json};

/// Longest string or path value accepted unless a parameter says less (`max_len`).
pub const MAX_VALUE_BYTES: usize = 1024;

/// A parameter as written in a runbook definition.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamEntry {
    #[serde(rename = "type")]
    pub kind: ParamType,
    #[serde(default)]
    pub description: Option<String>,
    /// `string`: a regular expression the whole value must match.
    #[serde(default)]
    pub pattern: Option<String>,
    /// `string` and `path`: the most bytes (default and ceiling [`MAX_VALUE_BYTES`]).
    #[serde(default)]
    pub max_len: Option<usize>,
    /// `enum`: the values allowed.
    #[serde(default)]
    pub values: Option<Vec<String>>,
    /// `integer` and `duration` (in seconds): the least value.
    #[serde(default)]
    pub min: Option<i64>,
    /// `integer` and `duration` (in seconds): the greatest value.
    #[serde(default)]
    pub max: Option<i64>,
    /// `path`: directories the normalised path must lie in (besides the host's file roots,
    /// which the agent checks).
    #[serde(default)]
    pub roots: Option<Vec<String>>,
    /// The value when the caller gives none, checked like a given value when the runbook loads.
    #[serde(default)]
    pub default: Option<toml::Value>,
    /// Whether the caller must give it; default: required unless it has a `default`.
    #[serde(default)]
    pub required: Option<bool>,
}

/// The type of a parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    String,
    Enum,
    Integer,
    Boolean,
    Path,
    Duration,
}

/// A checked parameter declaration.
#[derive(Debug, Clone)]
pub struct Param {
    pub name: String,
    pub description: String,
    pub kind: Kind,
    /// The default, already in its checked text form.
    pub default: Option<String>,
    pub required: bool,
}

/// What a value of a parameter may be.
#[derive(Debug, Clone)]
pub enum Kind {
    /// Matches `pattern` whole; `source` is the pattern as written.
    String {
        pattern: Option<Regex>,
        source: Option<String>,
        max_len: usize,
    },
    Enum(Vec<String>),
    Integer {
        min: Option<i64>,
        max: Option<i64>,
    },
    Boolean,
    /// An absolute path, normalised, inside one of `roots` when there are any.
    Path {
        roots: Vec<String>,
        max_len: usize,
    },
    /// `90s`, `15m`, `2h`, `1d` or a number of seconds; passed on as whole seconds.
    Duration {
        min: Option<i64>,
        max: Option<i64>,
    },
}

/// Why a value does not fit its parameter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("parameter `{param}`: {reason}")]
pub struct ParamError {
    pub param: String,
    pub reason: String,
}

// === impl Param ===

impl Param {
    /// Checks a declaration; `problems` collects what is wrong with it, naming it as `what`.
    pub fn from_entry(
        name: &str,
        entry: ParamEntry,
        what: &str,
        problems: &mut Vec<String>,
    ) -> Option<Param> {
        let before = problems.len();
        let mut problem =
            |text: String| problems.push(format!("{what}: parameter `{name}` {text}"));
        if !is_param_name(name) {
            problem("must be lower-case letters, digits and `_`, starting with a letter".into());
        }
        let max_len = entry.max_len.unwrap_or(MAX_VALUE_BYTES);
        if max_len == 0 || max_len > MAX_VALUE_BYTES {
            problem(format!("max_len must be 1..={MAX_VALUE_BYTES}"));
        }
        let unused = |field: &str, set: bool, problem: &mut dyn FnMut(String)| {
            if set {
                problem(format!("of type {:?} takes no `{field}`", entry.kind).to_lowercase());
            }
        };
        let kind = match entry.kind {
            ParamType::String => {
                let pattern = match entry
                    .pattern
                    .as_deref()
                    .map(|p| Regex::new(&format!("^(?:{p})$")))
                {
                    Some(Ok(re)) => Some(re),
                    Some(Err(e)) => {
                        problem(format!("has a pattern that does not compile: {e}"));
                        None
                    }
                    None => None,
                };
                Kind::String {
                    pattern,
                    source: entry.pattern.clone(),
                    max_len,
                }
            }
            ParamType::Enum => match &entry.values {
                Some(values) if !values.is_empty() => {
                    if values.iter().any(|v| has_control(v) || v.is_empty()) {
                        problem("has an empty value or one with a control character".into());
                    }
                    Kind::Enum(values.clone())
                }
                _ => {
                    problem("of type enum needs `values`, a non-empty list".into());
                    Kind::Enum(Vec::new())
                }
            },
            ParamType::Integer => Kind::Integer {
                min: entry.min,
                max: entry.max,
            },
            ParamType::Boolean => Kind::Boolean,
            ParamType::Path => {
                let roots = entry.roots.clone().unwrap_or_default();
                for root in &roots {
                    if normalise(root).as_deref() != Some(root.trim_end_matches('/')) && root != "/"
                    {
                        problem(format!(
                            "has root `{root}`, which is not a normalised absolute path"
                        ));
                    }
                }
                Kind::Path { roots, max_len }
            }
            ParamType::Duration => Kind::Duration {
                min: entry.min,
                max: entry.max,
            },
        };
        let kind_name = format!("{:?}", entry.kind).to_lowercase();
        unused(
            "pattern",
            entry.pattern.is_some() && entry.kind != ParamType::String,
            &mut problem,
        );
        unused(
            "values",
            entry.values.is_some() && entry.kind != ParamType::Enum,
            &mut problem,
        );
        unused(
            "roots",
            entry.roots.is_some() && entry.kind != ParamType::Path,
            &mut problem,
        );
        unused(
            "min/max",
            (entry.min.is_some() || entry.max.is_some())
                && !matches!(entry.kind, ParamType::Integer | ParamType::Duration),
            &mut problem,
        );
        if let (Some(min), Some(max)) = (entry.min, entry.max)
            && min > max
        {
            problem(format!("has min {min} above max {max}"));
        }
        let mut param = Param {
            name: name.to_string(),
            description: entry.description.unwrap_or_default(),
            kind,
            default: None,
            required: entry.required.unwrap_or(entry.default.is_none()),
        };
        if let Some(default) = entry.default {
            match toml_to_json(default).and_then(|v| param.check(&v).map_err(|e| e.reason)) {
                Ok(text) => param.default = Some(text),
                Err(reason) => problems.push(format!(
                    "{what}: parameter `{name}` has a default that does not fit its type {kind_name}: {reason}"
                )),
            }
        }
        (problems.len() == before).then_some(param)
    }

    /// The text `value` reaches the program as, or why it does not fit.
    pub fn check(&self, value: &Value) -> Result<String, ParamError> {
        let refuse = |reason: String| ParamError {
            param: self.name.clone(),
            reason,
        };
        let text = |value: &Value| -> Result<String, ParamError> {
            match value {
                Value::String(s) => Ok(s.clone()),
                other => Err(refuse(format!(
                    "must be a string, not {}",
                    json_type(other)
                ))),
            }
        };
        let clean = |s: &str, max_len: usize| -> Result<(), ParamError> {
            if let Some(c) = s.chars().find(|c| c.is_control()) {
                return Err(refuse(format!(
                    "contains the control character {:?}; values are single-line text",
                    c
                )));
            }
            if s.len() > max_len {
                return Err(refuse(format!("is longer than {max_len} bytes")));
            }
            Ok(())
        };
        match &self.kind {
            Kind::String {
                pattern,
                source,
                max_len,
            } => {
                let s = text(value)?;
                clean(&s, *max_len)?;
                if let Some(re) = pattern
                    && !re.is_match(&s)
                {
                    return Err(refuse(format!(
                        "{s:?} does not match the pattern `{}`",
                        source.as_deref().unwrap_or_default()
                    )));
                }
                Ok(s)
            }
            Kind::Enum(values) => {
                let s = text(value)?;
                if values.contains(&s) {
                    Ok(s)
                } else {
                    Err(refuse(format!("{s:?} is not one of {}", values.join(", "))))
                }
            }
            Kind::Integer { min, max } => {
                let n = value
                    .as_i64()
                    .ok_or_else(|| refuse(format!("must be an integer, not {value}")))?;
                within(n, *min, *max).map_err(refuse)?;
                Ok(n.to_string())
            }
            Kind::Boolean => match value {
                Value::Bool(b) => Ok(b.to_string()),
                other => Err(refuse(format!(
                    "must be true or false, not {}",
                    json_type(other)
                ))),
            },
            Kind::Path { roots, max_len } => {
                let s = text(value)?;
                clean(&s, *max_len)?;
                let path = normalise(&s).ok_or_else(|| {
                    refuse(format!(
                        "{s:?} must be an absolute path without `..` components"
                    ))
                })?;
                if !roots.is_empty() && !roots.iter().any(|root| inside(&path, root)) {
                    return Err(refuse(format!(
                        "{path} is outside the directories this runbook allows ({})",
                        roots.join(", ")
                    )));
                }
                Ok(path)
            }
            Kind::Duration { min, max } => {
                let secs = match value {
                    Value::Number(n) => n
                        .as_u64()
                        .ok_or_else(|| refuse(format!("{n} is not a whole number of seconds")))?,
                    Value::String(s) => {
                        clean(s, 32)?;
                        execmesh_proto::duration::parse(s)
                            .map_err(refuse)?
                            .as_secs()
                    }
                    other => {
                        return Err(refuse(format!(
                            "must be a duration like \"90s\" or \"2h\", not {}",
                            json_type(other)
                        )));
                    }
                };
                let n = i64::try_from(secs).map_err(|_| refuse("is too long".into()))?;
                within(n, *min, *max).map_err(|e| refuse(format!("{e} (seconds)")))?;
                Ok(secs.to_string())
            }
        }
    }

    /// The JSON schema of the parameter, as `runbook` action `list` shows it.
    pub fn schema(&self) -> Value {
        let mut schema = match &self.kind {
            Kind::String {
                source, max_len, ..
            } => {
                let mut s = json!({"type": "string", "maxLength": max_len});
                if let Some(p) = source {
                    s["pattern"] = json!(format!("^(?:{p})$"));
                }
                s
            }
            Kind::Enum(values) => json!({"type": "string", "enum": values}),
            Kind::Integer { min, max } => {
                let mut s = json!({"type": "integer"});
                if let Some(min) = min {
                    s["minimum"] = json!(min);
                }
                if let Some(max) = max {
                    s["maximum"] = json!(max);
                }
                s
            }
            Kind::Boolean => json!({"type": "boolean"}),
            Kind::Path { roots, max_len } => {
                let mut s = json!({"type": "string", "maxLength": max_len, "format": "path"});
                if !roots.is_empty() {
                    s["x-roots"] = json!(roots);
                }
                s
            }
            Kind::Duration { .. } => json!({
                "type": ["string", "integer"],
                "format": "duration",
            }),
        };
        let mut description = self.description.clone();
        if let Kind::Path { .. } = self.kind {
            description.push_str(" (an absolute path, no `..`; within the host's file roots)");
        }
        if let Kind::Duration { min, max } = self.kind {
            description.push_str(" (like \"90s\", \"15m\", \"2h\" or a number of seconds");
            if let Some(min) = min {
                description.push_str(&format!("; at least {min} s"));
            }
            if let Some(max) = max {
                description.push_str(&format!("; at most {max} s"));
            }
            description.push(')');
        }
        let description = description.trim().to_string();
        if !description.is_empty() {
            schema["description"] = json!(description);
        }
        if let Some(default) = &self.default {
            schema["default"] = json!(default);
        }
        schema
    }
}

/// The object schema of a runbook's parameters.
pub fn object_schema(params: &BTreeMap<String, Param>) -> Value {
    let properties: serde_json::Map<String, Value> = params
        .iter()
        .map(|(name, p)| (name.clone(), p.schema()))
        .collect();
    let required: Vec<&str> = params
        .values()
        .filter(|p| p.required)
        .map(|p| p.name.as_str())
        .collect();
    json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    })
}

/// `/a//b/./c/` → `/a/b/c`; `None` for a relative path or one with a `..` component, which a
/// runbook never takes (a `..` could climb out of a directory the pattern meant to keep it in).
pub fn normalise(path: &str) -> Option<String> {
    if !path.starts_with('/') {
        return None;
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            other => parts.push(other),
        }
    }
    Some(format!("/{}", parts.join("/")))
}

/// Whether normalised `path` is `root` or lies below it.
fn inside(path: &str, root: &str) -> bool {
    let root = root.trim_end_matches('/');
    root.is_empty() || path == root || path.starts_with(&format!("{root}/"))
}

fn within(n: i64, min: Option<i64>, max: Option<i64>) -> Result<(), String> {
    match (min, max) {
        (Some(min), _) if n < min => Err(format!("{n} is below the least value {min}")),
        (_, Some(max)) if n > max => Err(format!("{n} is above the greatest value {max}")),
        _ => Ok(()),
    }
}

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parameter names: `[a-z][a-z0-9_]{0,31}`. They become `RB_<NAME>` environment variables.
pub fn is_param_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn toml_to_json(value: toml::Value) -> Result<Value, String> {
    serde_json::to_value(value).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(entry: &str) -> Param {
        let entry: ParamEntry = toml::from_str(entry).expect("entry parses");
        let mut problems = Vec::new();
        let p = Param::from_entry("p", entry, "runbook `t`", &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        p.expect("valid")
    }

    #[test]
    fn strings_match_their_pattern_whole_and_refuse_control_characters() {
        let unit = param(
            r#"type = "string"
pattern = "[a-z0-9@._-]{1,64}\\.service""#,
        );
        assert_eq!(
            unit.check(&json!("nginx.service")).unwrap(),
            "nginx.service"
        );
        for bad in [
            "nginx.service; rm -rf /tmp/x",
            "$(reboot).service",
            "nginx.service\nrm -rf /",
            "x.service.bak",
        ] {
            let e = unit.check(&json!(bad)).unwrap_err();
            assert_eq!(e.param, "p", "{bad}");
        }
        let free = param(r#"type = "string""#);
        assert!(free.check(&json!("a; b $(c)")).is_ok());
        assert!(
            free.check(&json!("a\nb"))
                .unwrap_err()
                .reason
                .contains("control")
        );
        assert!(free.check(&json!(5)).unwrap_err().reason.contains("string"));
    }

    #[test]
    fn paths_are_normalised_absolute_and_never_climb() {
        let p = param(
            r#"type = "path"
roots = ["/etc/ssl", "/var/log"]"#,
        );
        assert_eq!(
            p.check(&json!("/etc/ssl//certs/./a.pem")).unwrap(),
            "/etc/ssl/certs/a.pem"
        );
        assert!(
            p.check(&json!("/etc/ssl/../shadow"))
                .unwrap_err()
                .reason
                .contains("..")
        );
        assert!(p.check(&json!("etc/ssl/a.pem")).is_err());
        assert!(
            p.check(&json!("/etc/sslx/a.pem"))
                .unwrap_err()
                .reason
                .contains("outside")
        );
        assert_eq!(p.check(&json!("/var/log")).unwrap(), "/var/log");
    }

    #[test]
    fn numbers_enums_booleans_and_durations() {
        let n = param("type = \"integer\"\nmin = 1\nmax = 500");
        assert_eq!(n.check(&json!(20)).unwrap(), "20");
        assert!(n.check(&json!(0)).is_err() && n.check(&json!(501)).is_err());
        assert!(n.check(&json!("20")).is_err());
        let e = param("type = \"enum\"\nvalues = [\"a\", \"b\"]");
        assert!(e.check(&json!("a")).is_ok() && e.check(&json!("c")).is_err());
        let b = param("type = \"boolean\"");
        assert_eq!(b.check(&json!(true)).unwrap(), "true");
        assert!(b.check(&json!("true")).is_err());
        let d = param("type = \"duration\"\nmax = 86400");
        assert_eq!(d.check(&json!("2h")).unwrap(), "7200");
        assert_eq!(d.check(&json!(90)).unwrap(), "90");
        assert!(d.check(&json!("2d")).is_err());
        assert!(d.check(&json!("-1h")).is_err());
    }

    #[test]
    fn defaults_are_checked_and_make_a_parameter_optional() {
        let p = param("type = \"integer\"\ndefault = 50\nmax = 100");
        assert_eq!((p.default.as_deref(), p.required), (Some("50"), false));
        let entry: ParamEntry =
            toml::from_str("type = \"integer\"\ndefault = 500\nmax = 100").unwrap();
        let mut problems = Vec::new();
        assert!(Param::from_entry("n", entry, "runbook `t`", &mut problems).is_none());
        assert!(problems[0].contains("default"), "{problems:?}");
        let entry: ParamEntry = toml::from_str("type = \"enum\"").unwrap();
        let mut problems = Vec::new();
        assert!(Param::from_entry("n", entry, "runbook `t`", &mut problems).is_none());
        assert!(problems[0].contains("values"), "{problems:?}");
    }
}
