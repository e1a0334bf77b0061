//! Runbooks: named, reviewed operations with typed parameters, defined in the policy
//! (`[runbooks.<name>]`) or as `<name>.toml` files in the `runbooks/` directory next to it, and
//! resolved here into the exact argv (or script and environment) a host runs.
//!
//! ```toml
//! description = "Restart one systemd unit and show its status"
//! command = ["systemctl", "restart", "{unit}"]       # argv, never a shell string
//! then = ["systemctl", "status", "--no-pager", "{unit}"]
//! params.unit = { type = "string", pattern = "[a-z0-9@._-]{1,64}\\.service" }
//! tier = "readonly"                                  # the least tier that may run it
//! hosts = "role=web"                                 # where it may run (on top of the caller's reach)
//! approval = false                                   # true: every run waits for an approval
//! timeout = "60s"
//! ```
//!
//! A `{name}` in an argv element is replaced by the parameter's checked value inside that one
//! element (`--since=-{since}s` stays one argument); `{{` and `}}` are literal braces. An element
//! that names an optional parameter the caller left out (and that has no default) is dropped.
//! A `script` runbook instead runs its short script with the agent's shell, every parameter in
//! the environment as `RB_<NAME>` (`$RB_UNIT`), never in the script's text.
//!
//! The hash (`sha256:<hex>`) is over the runbook's definition as written (the file's bytes, or
//! the policy table re-serialised), so any edit gives a new one; a host that pins runbooks
//! names the hashes it accepts.

pub mod param;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use execmesh_proto::{Token, pb};

use crate::core::tier::Tier;
use param::{Param, ParamEntry, ParamError};

/// Most runbook files read from the directory.
const MAX_FILES: usize = 1000;
/// Largest runbook file read.
const MAX_FILE_BYTES: u64 = 64 * 1024;
/// Longest script.
const MAX_SCRIPT_BYTES: usize = 16 * 1024;
/// Prefix of the environment variables that carry parameters.
pub const ENV_PREFIX: &str = "RB_";

/// A runbook as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunbookEntry {
    description: String,
    #[serde(default)]
    command: Option<Vec<String>>,
    #[serde(default)]
    then: Option<Vec<String>>,
    #[serde(default)]
    script: Option<String>,
    #[serde(default)]
    params: BTreeMap<String, ParamEntry>,
    #[serde(default)]
    tier: Option<String>,
    #[serde(default)]
    hosts: Option<String>,
    #[serde(default)]
    approval: bool,
    #[serde(default)]
    timeout: Option<String>,
}

/// A checked runbook.
#[derive(Debug, Clone)]
pub struct Runbook {
    pub name: Token,
    pub description: String,
    pub body: Body,
    /// By name.
    pub params: BTreeMap<String, Param>,
    /// The least tier that may run it (default `standard`).
    pub tier: Tier,
    /// A selector narrowing where it may run; `None`: wherever the caller reaches.
    pub hosts: Option<String>,
    /// Every run waits for an approval.
    pub approval: bool,
    /// The per-host time limit; `None`: the caller's or the host's default.
    pub timeout: Option<Duration>,
    /// `sha256:<64 hex>` of the definition as written.
    pub hash: String,
    /// Where it is defined, for listings: `policy` or the file's path.
    pub source: String,
}

/// What a runbook runs.
#[derive(Debug, Clone)]
pub enum Body {
    /// An argv, and optionally a second one run after it.
    Command {
        argv: Vec<Template>,
        then: Vec<Template>,
    },
    /// A short script for the agent's shell, with the parameters in its environment.
    Script(String),
}

/// One argv element with `{param}` placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
    /// As written, for listings.
    text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Param(String),
}

/// A runbook resolved for one call: what is sent to every host.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub name: Token,
    pub hash: String,
    pub tier: Tier,
    /// Empty for a script runbook.
    pub argv: Vec<String>,
    pub then: Vec<String>,
    pub script: Option<String>,
    pub env: BTreeMap<String, String>,
    /// The values of `path` parameters, which the agent checks against its file roots.
    pub paths: Vec<String>,
    /// The argv as shell-quoted text (or the script), for job listings and approvals.
    pub display: String,
}

/// Why a call of a runbook cannot go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunbookError {
    #[error("no runbook `{name}` you may run; yours are: {}", list_or_none(.known))]
    Unknown { name: String, known: Vec<String> },
    #[error("runbook `{runbook}` has no parameter `{param}`; its parameters are: {}", list_or_none(.known))]
    UnknownParam {
        runbook: String,
        param: String,
        known: Vec<String>,
    },
    #[error("runbook `{runbook}` needs parameter `{param}`")]
    Missing { runbook: String, param: String },
    #[error("runbook `{runbook}`: {source}")]
    Param {
        runbook: String,
        #[source]
        source: ParamError,
    },
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(", ")
    }
}

// === impl Runbook ===

impl Runbook {
    /// Parses one runbook definition (`text` is what its hash covers); `problems` collects what
    /// is wrong with it, each naming it.
    pub fn parse(
        name: &str,
        table: toml::Table,
        text: &[u8],
        source: &str,
        problems: &mut Vec<String>,
    ) -> Option<Runbook> {
        let what = format!("runbook `{name}` ({source})");
        let before = problems.len();
        let name = match Token::parse("runbook name", name) {
            Ok(name) => Some(name),
            Err(e) => {
                problems.push(format!("{what}: {e}"));
                None
            }
        };
        let entry: RunbookEntry = match toml::Value::Table(table).try_into() {
            Ok(entry) => entry,
            Err(e) => {
                problems.push(format!("{what}: {}", e.to_string().trim()));
                return None;
            }
        };
        let mut params = BTreeMap::new();
        for (param_name, entry) in entry.params {
            if let Some(p) = Param::from_entry(&param_name, entry, &what, problems) {
                params.insert(param_name, p);
            }
        }
        let templates = |argv: &[String], key: &str, problems: &mut Vec<String>| {
            argv.iter()
                .filter_map(|element| match Template::parse(element) {
                    Ok(t) => {
                        for used in t.params() {
                            if !params.contains_key(used) {
                                problems.push(format!(
                                    "{what}: `{key}` names parameter `{used}`, which is not declared under params"
                                ));
                            }
                        }
                        Some(t)
                    }
                    Err(e) => {
                        problems.push(format!("{what}: `{key}` element {element:?}: {e}"));
                        None
                    }
                })
                .collect::<Vec<_>>()
        };
        let body = match (&entry.command, &entry.script) {
            (Some(command), None) => {
                let argv = templates(command, "command", problems);
                let then = templates(entry.then.as_deref().unwrap_or_default(), "then", problems);
                match argv.first() {
                    None => problems.push(format!("{what}: `command` is empty")),
                    Some(first) if !first.params().is_empty() => problems.push(format!(
                        "{what}: the program (the first element of `command`) cannot be a parameter"
                    )),
                    Some(_) => {}
                }
                if then.first().is_some_and(|t| !t.params().is_empty()) {
                    problems.push(format!(
                        "{what}: the program of `then` cannot be a parameter"
                    ));
                }
                Some(Body::Command { argv, then })
            }
            (None, Some(script)) => {
                if entry.then.is_some() {
                    problems.push(format!("{what}: `then` goes with `command`, not `script`"));
                }
                if script.trim().is_empty()
                    || script.len() > MAX_SCRIPT_BYTES
                    || script.contains('\0')
                {
                    problems.push(format!(
                        "{what}: `script` must be 1 to {MAX_SCRIPT_BYTES} bytes of text"
                    ));
                }
                Some(Body::Script(script.clone()))
            }
            _ => {
                problems.push(format!(
                    "{what}: give exactly one of `command` (an argv list) or `script`"
                ));
                None
            }
        };
        let tier = match entry.tier.as_deref().map(str::parse::<Tier>) {
            None => Tier::Standard,
            Some(Ok(tier)) => tier,
            Some(Err(e)) => {
                problems.push(format!("{what}: {e}"));
                Tier::Standard
            }
        };
        if entry.hosts.as_deref().is_some_and(|h| h.trim().is_empty()) {
            problems.push(format!("{what}: `hosts` is an empty selector"));
        }
        let timeout = match entry
            .timeout
            .as_deref()
            .map(execmesh_proto::duration::parse)
        {
            None => None,
            Some(Ok(t)) if !t.is_zero() => Some(t),
            Some(Ok(_)) => {
                problems.push(format!("{what}: `timeout` must be more than 0"));
                None
            }
            Some(Err(e)) => {
                problems.push(format!("{what}: timeout {e}"));
                None
            }
        };
        if entry.description.trim().is_empty() {
            problems.push(format!("{what}: `description` is empty"));
        }
        if problems.len() != before {
            return None;
        }
        Some(Runbook {
            name: name?,
            description: entry.description,
            body: body?,
            params,
            tier,
            hosts: entry.hosts,
            approval: entry.approval,
            timeout,
            hash: hash(text),
            source: source.to_string(),
        })
    }

    /// What it runs, as text: the argv template (and `then`), or `script`.
    pub fn command_text(&self) -> String {
        match &self.body {
            Body::Command { argv, then } => {
                let words = |t: &[Template]| {
                    t.iter()
                        .map(|t| quote(&t.text))
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                if then.is_empty() {
                    words(argv)
                } else {
                    format!("{}; then {}", words(argv), words(then))
                }
            }
            Body::Script(_) => "script".to_string(),
        }
    }

    /// The JSON schema of its parameters.
    pub fn params_schema(&self) -> Value {
        param::object_schema(&self.params)
    }

    /// Checks `given` against the parameters and resolves the runbook: every value checked by
    /// its type, each placed as one argv element (or one environment variable), none ever
    /// spliced into text a shell parses.
    pub fn resolve(&self, given: &Map<String, Value>) -> Result<Resolved, RunbookError> {
        let runbook = self.name.to_string();
        if let Some(unknown) = given.keys().find(|k| !self.params.contains_key(*k)) {
            return Err(RunbookError::UnknownParam {
                runbook,
                param: unknown.clone(),
                known: self.params.keys().cloned().collect(),
            });
        }
        let mut values = BTreeMap::new();
        for (name, param) in &self.params {
            let value = match given.get(name) {
                Some(Value::Null) | None => None,
                Some(value) => Some(param.check(value).map_err(|source| RunbookError::Param {
                    runbook: runbook.clone(),
                    source,
                })?),
            };
            match value.or_else(|| param.default.clone()) {
                Some(v) => {
                    values.insert(name.as_str(), v);
                }
                None if param.required => {
                    return Err(RunbookError::Missing {
                        runbook,
                        param: name.clone(),
                    });
                }
                None => {}
            }
        }
        let paths = self
            .params
            .iter()
            .filter(|(_, p)| matches!(p.kind, param::Kind::Path { .. }))
            .filter_map(|(name, _)| values.get(name.as_str()).cloned())
            .collect();
        let fill = |templates: &[Template]| -> Vec<String> {
            templates.iter().filter_map(|t| t.fill(&values)).collect()
        };
        let (argv, then, script, env) = match &self.body {
            Body::Command { argv, then } => (fill(argv), fill(then), None, BTreeMap::new()),
            Body::Script(script) => {
                let env = values
                    .iter()
                    .map(|(k, v)| (format!("{ENV_PREFIX}{}", k.to_ascii_uppercase()), v.clone()))
                    .collect();
                (Vec::new(), Vec::new(), Some(script.clone()), env)
            }
        };
        let display = match &script {
            Some(script) => script.clone(),
            None if then.is_empty() => quote_argv(&argv),
            None => format!("{}; {}", quote_argv(&argv), quote_argv(&then)),
        };
        Ok(Resolved {
            name: self.name.clone(),
            hash: self.hash.clone(),
            tier: self.tier,
            argv,
            then,
            script,
            env,
            paths,
            display,
        })
    }
}

// === impl Resolved ===

impl Resolved {
    /// The run request every host gets (the caller's timing fields still to be set): argv with
    /// no shell, or the script with the parameters as environment.
    pub fn request(&self) -> pb::RunRequest {
        pb::RunRequest {
            cmd: self.display.clone(),
            env: self.env.clone().into_iter().collect(),
            title: format!("runbook {}", self.name),
            argv: self.argv.clone(),
            then_argv: self.then.clone(),
            runbook: Some(pb::RunbookRef {
                name: self.name.to_string(),
                hash: self.hash.clone(),
                tier: self.tier.to_wire() as i32,
                paths: self.paths.clone(),
            }),
            ..Default::default()
        }
    }
}

// === impl Template ===

impl Template {
    /// Parses `{param}` placeholders; `{{` and `}}` are literal braces.
    pub fn parse(text: &str) -> Result<Template, String> {
        if text.contains('\0') {
            return Err("contains a NUL byte".into());
        }
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => return Err("has a `{` without its `}`".into()),
                        }
                    }
                    if !param::is_param_name(&name) {
                        return Err(format!("`{{{name}}}` is not a parameter name"));
                    }
                    if !literal.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut literal)));
                    }
                    pieces.push(Piece::Param(name));
                }
                '}' => return Err("has a `}` without its `{` (write `}}` for a brace)".into()),
                c => literal.push(c),
            }
        }
        if !literal.is_empty() || pieces.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        Ok(Template {
            pieces,
            text: text.to_string(),
        })
    }

    /// The parameters it names.
    pub fn params(&self) -> Vec<&str> {
        self.pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Param(name) => Some(name.as_str()),
                Piece::Text(_) => None,
            })
            .collect()
    }

    /// The element with `values` in place; `None` when it names a parameter without a value.
    fn fill(&self, values: &BTreeMap<&str, String>) -> Option<String> {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Param(name) => out.push_str(values.get(name.as_str())?),
            }
        }
        Some(out)
    }
}

/// The runbook files of `dir` (`<name>.toml`), sorted by name, with their bytes; an absent
/// directory has none.
pub fn read_dir(dir: &Path) -> Result<Vec<(String, std::path::PathBuf, Vec<u8>)>, String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(format!(
                "cannot read runbook directory {}: {e}",
                dir.display()
            ));
        }
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry =
            entry.map_err(|e| format!("cannot read runbook directory {}: {e}", dir.display()))?;
        let path = entry.path();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".toml"))
            .filter(|n| !n.starts_with('.'))
        else {
            continue;
        };
        let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
        if len > MAX_FILE_BYTES {
            return Err(format!(
                "runbook file {} is larger than {MAX_FILE_BYTES} bytes",
                path.display()
            ));
        }
        let bytes = std::fs::read(&path)
            .map_err(|e| format!("cannot read runbook file {}: {e}", path.display()))?;
        files.push((name.to_string(), path, bytes));
        if files.len() > MAX_FILES {
            return Err(format!(
                "runbook directory {} holds more than {MAX_FILES} files",
                dir.display()
            ));
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(files)
}

/// Parses runbook file `bytes` named `name` (from `path`).
pub fn parse_file(
    name: &str,
    path: &Path,
    bytes: &[u8],
    problems: &mut Vec<String>,
) -> Option<Runbook> {
    let source = path.display().to_string();
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(_) => {
            problems.push(format!("runbook file {source} is not UTF-8"));
            return None;
        }
    };
    match toml::from_str::<toml::Table>(text) {
        Ok(table) => Runbook::parse(name, table, bytes, &source, problems),
        Err(e) => {
            problems.push(format!(
                "runbook file {source} is not valid TOML: {}",
                e.to_string().trim()
            ));
            None
        }
    }
}

/// `sha256:<hex>` of `bytes`.
fn hash(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// `word` as one shell word (for display only: nothing runs this text).
fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "@%+=:,./_-{}".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

fn quote_argv(argv: &[String]) -> String {
    argv.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const RESTART: &str = r#"
description = "Restart one systemd unit and show its status"
command = ["systemctl", "restart", "{unit}"]
then = ["systemctl", "status", "--no-pager", "{unit}"]
params.unit = { type = "string", pattern = "[a-z0-9@._-]{1,64}\\.service" }
tier = "readonly"
hosts = "role=web"
timeout = "60s"
"#;

    pub fn runbook(name: &str, text: &str) -> Runbook {
        let mut problems = Vec::new();
        let rb = parse_file(name, Path::new("t.toml"), text.as_bytes(), &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        rb.expect("parses")
    }

    fn args(value: Value) -> Map<String, Value> {
        value.as_object().cloned().expect("object")
    }

    #[test]
    fn a_runbook_resolves_to_argv_elements() {
        let rb = runbook("restart-service", RESTART);
        assert_eq!(
            (rb.tier, rb.timeout),
            (Tier::Readonly, Some(Duration::from_secs(60)))
        );
        assert!(
            rb.hash.starts_with("sha256:") && rb.hash.len() == 71,
            "{}",
            rb.hash
        );
        let r = rb.resolve(&args(json!({"unit": "nginx.service"}))).unwrap();
        assert_eq!(r.argv, ["systemctl", "restart", "nginx.service"]);
        assert_eq!(
            r.then,
            ["systemctl", "status", "--no-pager", "nginx.service"]
        );
        let req = r.request();
        assert_eq!(
            req.runbook.as_ref().unwrap().tier,
            pb::Tier::Readonly as i32
        );
    }

    #[test]
    fn breakout_values_are_refused_naming_the_parameter() {
        let rb = runbook("restart-service", RESTART);
        for bad in [
            "nginx.service; rm -rf /tmp/x",
            "$(id).service",
            "a.service\nid",
            "`id`.service",
        ] {
            let e = rb.resolve(&args(json!({"unit": bad}))).unwrap_err();
            assert!(
                matches!(&e, RunbookError::Param { source, .. } if source.param == "unit"),
                "{bad}: {e}"
            );
        }
        let e = rb.resolve(&args(json!({}))).unwrap_err();
        assert!(matches!(e, RunbookError::Missing { .. }), "{e}");
        let e = rb
            .resolve(&args(json!({"unit": "a.service", "x": 1})))
            .unwrap_err();
        assert!(e.to_string().contains("no parameter `x`"), "{e}");
    }

    #[test]
    fn a_value_stays_one_element_whatever_it_holds() {
        let rb = runbook(
            "echo",
            "description = \"echo\"\ncommand = [\"echo\", \"--x={text}\", \"{n}\"]\nparams.text = { type = \"string\" }\nparams.n = { type = \"integer\", required = false }\n",
        );
        let r = rb
            .resolve(&args(json!({"text": "a; rm -rf /tmp/x $(id)"})))
            .unwrap();
        // The optional `n` has no value: its element is left out.
        assert_eq!(r.argv, ["echo", "--x=a; rm -rf /tmp/x $(id)"]);
        assert_eq!(r.display, "echo '--x=a; rm -rf /tmp/x $(id)'");
    }

    #[test]
    fn scripts_get_their_parameters_as_environment() {
        let rb = runbook(
            "s",
            "description = \"d\"\nscript = \"du -sh \\\"$RB_DIR\\\"\"\nparams.dir = { type = \"path\", default = \"/var/log\" }\n",
        );
        let r = rb.resolve(&Map::new()).unwrap();
        assert!(r.argv.is_empty());
        assert_eq!(r.env.get("RB_DIR").map(String::as_str), Some("/var/log"));
        assert_eq!(r.paths, ["/var/log"]);
    }

    #[test]
    fn bad_definitions_name_every_problem() {
        let mut problems = Vec::new();
        let text = "description = \"\"\ncommand = [\"{prog}\", \"{nope\"]\ntier = \"root\"\nparams.prog = { type = \"string\" }\n";
        assert!(
            parse_file(
                "Bad.Name",
                Path::new("b.toml"),
                text.as_bytes(),
                &mut problems
            )
            .is_none()
        );
        let all = problems.join("\n");
        for expected in [
            "runbook name",
            "program",
            "without its `}`",
            "unknown tier",
            "description",
        ] {
            assert!(all.contains(expected), "{expected} missing in {all}");
        }
        let mut problems = Vec::new();
        let text = "description = \"d\"\ncommand = [\"echo\", \"{x}\"]\n";
        assert!(parse_file("a", Path::new("a.toml"), text.as_bytes(), &mut problems).is_none());
        assert!(problems[0].contains("not declared"), "{problems:?}");
    }

    #[test]
    fn an_edit_changes_the_hash() {
        let a = runbook("r", RESTART);
        let b = runbook("r", &RESTART.replace("60s", "90s"));
        assert_ne!(a.hash, b.hash);
    }

    /// The starter catalogue shipped in `deploy/runbooks/`.
    fn starter() -> BTreeMap<String, Runbook> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/runbooks");
        let files = read_dir(&dir).expect("readable");
        let mut problems = Vec::new();
        let all: BTreeMap<String, Runbook> = files
            .iter()
            .filter_map(|(name, path, bytes)| parse_file(name, path, bytes, &mut problems))
            .map(|rb| (rb.name.to_string(), rb))
            .collect();
        assert!(problems.is_empty(), "{problems:?}");
        all
    }

    #[test]
    fn the_starter_catalogue_parses_and_checks_its_parameters() {
        let all = starter();
        let names: Vec<&str> = all.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "cert-expiry",
                "disk-usage",
                "journal-tail",
                "package-version",
                "recent-logins",
                "service-restart",
                "service-status"
            ]
        );
        let resolve = |name: &str, given: Value| all[name].resolve(&args(given));
        let ok = |name: &str, given: Value| {
            resolve(name, given).unwrap_or_else(|e| panic!("{name}: {e}"))
        };
        let refused = |name: &str, given: Value, param: &str| match resolve(name, given) {
            Err(RunbookError::Param { source, .. }) => assert_eq!(source.param, param, "{name}"),
            Err(RunbookError::Missing { param: p, .. }) => assert_eq!(p, param, "{name}"),
            other => panic!("{name}: expected a refusal of `{param}`, got {other:?}"),
        };

        let r = ok("service-status", json!({"unit": "nginx.service"}));
        assert_eq!(
            r.argv,
            [
                "systemctl",
                "status",
                "--no-pager",
                "--lines=10",
                "nginx.service"
            ]
        );
        refused(
            "service-status",
            json!({"unit": "nginx.service; rm -rf /tmp/x"}),
            "unit",
        );
        refused("service-status", json!({"unit": "nginx"}), "unit");
        refused(
            "service-status",
            json!({"unit": "a.service", "lines": 201}),
            "lines",
        );

        let r = ok("service-restart", json!({"unit": "nginx.service"}));
        assert_eq!(r.argv, ["systemctl", "restart", "nginx.service"]);
        assert_eq!(
            r.then,
            ["systemctl", "status", "--no-pager", "nginx.service"]
        );
        assert_eq!(all["service-restart"].tier, Tier::Standard);
        refused(
            "service-restart",
            json!({"unit": "$(reboot).service"}),
            "unit",
        );
        refused("service-restart", json!({}), "unit");

        assert_eq!(ok("disk-usage", json!({})).argv, ["df", "-hP"]);
        let r = ok("disk-usage", json!({"path": "/var//log/"}));
        assert_eq!(
            (r.argv[2].as_str(), r.paths.clone()),
            ("/var/log", vec!["/var/log".to_string()])
        );
        refused("disk-usage", json!({"path": "/var/log/../../etc"}), "path");
        refused("disk-usage", json!({"path": "relative"}), "path");

        let r = ok(
            "journal-tail",
            json!({"unit": "ssh.service", "since": "2h"}),
        );
        assert_eq!(
            r.argv,
            [
                "journalctl",
                "--no-pager",
                "--output=short-iso",
                "--unit=ssh.service",
                "--lines=100",
                "--since=-7200s"
            ]
        );
        let r = ok("journal-tail", json!({"unit": "ssh.service", "lines": 5}));
        assert!(
            !r.argv.iter().any(|a| a.starts_with("--since")),
            "{:?}",
            r.argv
        );
        refused("journal-tail", json!({"unit": "ssh.service\n-f"}), "unit");
        refused(
            "journal-tail",
            json!({"unit": "ssh.service", "lines": 0}),
            "lines",
        );
        refused(
            "journal-tail",
            json!({"unit": "ssh.service", "since": "40d"}),
            "since",
        );

        let r = ok("package-version", json!({"package": "openssl"}));
        assert!(r.argv.is_empty() && r.script.is_some());
        assert_eq!(r.env.get("RB_PACKAGE").map(String::as_str), Some("openssl"));
        refused(
            "package-version",
            json!({"package": "openssl; id"}),
            "package",
        );
        refused("package-version", json!({"package": "$(id)"}), "package");

        let r = ok(
            "cert-expiry",
            json!({"path": "/etc/ssl/certs/ca-certificates.crt"}),
        );
        assert_eq!(r.argv[6], "2592000");
        assert_eq!(r.argv[8], "/etc/ssl/certs/ca-certificates.crt");
        refused("cert-expiry", json!({"path": "/etc/shadow"}), "path");
        refused("cert-expiry", json!({"path": "/etc/ssl/../shadow"}), "path");

        assert_eq!(
            ok("recent-logins", json!({})).argv,
            ["last", "-F", "-w", "-n", "20"]
        );
        refused("recent-logins", json!({"count": "20; id"}), "count");
        refused("recent-logins", json!({"count": 1001}), "count");
    }

    #[test]
    fn templates_escape_braces() {
        let t = Template::parse("{{x}}-{unit}").unwrap();
        assert_eq!(t.params(), ["unit"]);
        let values = BTreeMap::from([("unit", "u".to_string())]);
        assert_eq!(t.fill(&values).as_deref(), Some("{x}-u"));
        assert!(Template::parse("a}b").is_err());
    }
}
