//! Host selectors: the small language that names a set of hosts (`web-* and not role=db`), its
//! parser with column-accurate errors, and matching against what the mesh knows of a host.
//!
//! Grammar (keywords are case-insensitive, whitespace separates tokens):
//!
//! ```text
//! selector := or
//! or       := and ( "or" and )*
//! and      := unary ( "and" unary )*
//! unary    := "not" unary | "(" or ")" | atom
//! atom     := "*"                      every host
//!           | "@" name                 a named group from the gateway configuration
//!           | key op value             a label or fact match: op is = != < <= > >=
//!           | glob                     a host-id glob (`web-*`, `db-?`)
//! value    := glob | "quoted string"   `=`/`!=` compare with glob rules; < > compare numbers
//! ```
//!
//! A key names a label of the host, or one of the facts in [`FACT_KEYS`]. A label wins over a
//! fact of the same name. Multi-valued facts (`service`, `port`, `ip`, `mount`) match when any
//! value matches.

use std::collections::BTreeMap;
use std::fmt;

use execmesh_proto::pb;

use crate::core::hosts::HostState;

/// Fact names a selector can match, with what they read.
pub const FACT_KEYS: &[(&str, &str)] = &[
    ("host", "the host id"),
    ("hostname", "the machine's hostname"),
    (
        "os",
        "os-release PRETTY_NAME, e.g. \"Debian GNU/Linux 12 (bookworm)\"",
    ),
    ("os_id", "os-release ID, e.g. debian"),
    ("os_version", "os-release VERSION_ID, e.g. 12"),
    ("kernel", "kernel release"),
    ("arch", "CPU architecture, e.g. x86_64"),
    ("cpus", "online CPUs (number)"),
    ("memory_mb", "total memory in MiB (number)"),
    ("memory_available_mb", "available memory in MiB (number)"),
    ("load1", "1-minute load average (number)"),
    ("uptime_secs", "seconds since boot (number)"),
    ("packages", "installed package count (number)"),
    ("agent_version", "node-agent version"),
    ("service", "a running systemd service, e.g. nginx.service"),
    ("port", "a listening port (number)"),
    ("ip", "an interface address"),
    ("mount", "a mounted filesystem's mount point"),
    ("state", "online, stale or offline"),
];

/// Deepest nesting of groups and parentheses, so a hostile selector cannot exhaust the stack.
const MAX_DEPTH: usize = 32;
/// Longest selector accepted, in characters.
pub const MAX_LEN: usize = 4096;

/// Why a selector was refused. Columns count characters from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("empty selector: name hosts with a glob (`web-*`), `key=value`, `@group` or `*`")]
    Empty,
    #[error("selector is longer than {MAX_LEN} characters")]
    TooLong,
    #[error("unexpected {found} at column {column}; expected {expected}")]
    Unexpected {
        found: String,
        column: usize,
        expected: &'static str,
    },
    #[error("unterminated quoted value starting at column {column}")]
    Unterminated { column: usize },
    #[error("unknown group `@{name}` at column {column}; known groups: {known}")]
    UnknownGroup {
        name: String,
        column: usize,
        known: String,
    },
    #[error("group `@{name}` is invalid: {reason}")]
    BadGroup { name: String, reason: String },
    #[error("`{value}` at column {column} is not a number (`{op}` compares numbers)")]
    NotANumber {
        value: String,
        op: &'static str,
        column: usize,
    },
    #[error("selector nests deeper than {MAX_DEPTH} levels (groups included)")]
    TooDeep,
}

/// A comparison of a key's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        }
    }
}

/// A parsed selector.
#[derive(Debug, Clone, PartialEq)]
pub enum Selector {
    All,
    HostGlob(String),
    Match { key: String, op: Op, value: String },
    Not(Box<Selector>),
    And(Vec<Selector>),
    Or(Vec<Selector>),
}

/// Named groups (`@prod`) from the gateway configuration, as selector text.
pub type Groups = BTreeMap<String, String>;

/// What a selector is matched against.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub host: &'a str,
    pub facts: Option<&'a pb::HostFacts>,
    /// From the heartbeat: online, stale or offline.
    pub state: HostState,
}

// === impl Selector ===

impl Selector {
    /// Parses `text`, expanding `@group` references from `groups`.
    pub fn parse(text: &str, groups: &Groups) -> Result<Selector, SelectorError> {
        if text.chars().count() > MAX_LEN {
            return Err(SelectorError::TooLong);
        }
        let tokens = lex(text)?;
        if tokens.is_empty() {
            return Err(SelectorError::Empty);
        }
        let mut parser = Parser {
            tokens,
            pos: 0,
            groups,
            depth: 0,
            expanding: Vec::new(),
            len: text.chars().count(),
        };
        let selector = parser.or()?;
        if let Some(tok) = parser.peek() {
            return Err(SelectorError::Unexpected {
                found: tok.kind.describe(),
                column: tok.column,
                expected: "`and`, `or` or the end of the selector",
            });
        }
        Ok(selector)
    }

    /// Checks every group of a configuration parses (and references only known groups).
    pub fn check_groups(groups: &Groups) -> Result<(), SelectorError> {
        for (name, text) in groups {
            Selector::parse(text, groups).map_err(|e| SelectorError::BadGroup {
                name: name.clone(),
                reason: e.to_string(),
            })?;
        }
        Ok(())
    }

    /// True if the selector is the bare `*`.
    pub fn is_all(&self) -> bool {
        matches!(self, Selector::All)
    }

    /// Whether `candidate` is selected.
    pub fn matches(&self, candidate: &Candidate<'_>) -> bool {
        match self {
            Selector::All => true,
            Selector::HostGlob(glob) => glob_match(glob, candidate.host),
            Selector::Match { key, op, value } => match_key(candidate, key, *op, value),
            Selector::Not(inner) => !inner.matches(candidate),
            Selector::And(all) => all.iter().all(|s| s.matches(candidate)),
            Selector::Or(any) => any.iter().any(|s| s.matches(candidate)),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::All => f.write_str("*"),
            Selector::HostGlob(g) => f.write_str(g),
            Selector::Match { key, op, value } => {
                if value.chars().all(is_word_char) && !value.is_empty() {
                    write!(f, "{key}{}{value}", op.as_str())
                } else {
                    write!(f, "{key}{}{value:?}", op.as_str())
                }
            }
            Selector::Not(inner) => write!(f, "not {inner}"),
            Selector::And(all) => join(f, all, " and "),
            Selector::Or(any) => join(f, any, " or "),
        }
    }
}

fn join(f: &mut fmt::Formatter<'_>, parts: &[Selector], sep: &str) -> fmt::Result {
    f.write_str("(")?;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            f.write_str(sep)?;
        }
        write!(f, "{part}")?;
    }
    f.write_str(")")
}

// === matching ===

fn match_key(candidate: &Candidate<'_>, key: &str, op: Op, pattern: &str) -> bool {
    let values = values_of(candidate, key);
    match op {
        // `!=` is "no value matches", so a host without the key is selected by `role!=web`.
        Op::Ne => !values.iter().any(|v| glob_match(pattern, v)),
        Op::Eq => values.iter().any(|v| glob_match(pattern, v)),
        Op::Lt | Op::Le | Op::Gt | Op::Ge => {
            let Ok(bound) = pattern.parse::<f64>() else {
                return false;
            };
            values
                .iter()
                .filter_map(|v| v.parse::<f64>().ok())
                .any(|v| match op {
                    Op::Lt => v < bound,
                    Op::Le => v <= bound,
                    Op::Gt => v > bound,
                    _ => v >= bound,
                })
        }
    }
}

/// The values a key has on a host: its label, else the named fact (empty when unknown).
fn values_of(candidate: &Candidate<'_>, key: &str) -> Vec<String> {
    let facts = candidate.facts;
    if let Some(value) = facts.and_then(|f| f.labels.get(key)) {
        return vec![value.clone()];
    }
    let one = |s: &str| {
        if s.is_empty() {
            Vec::new()
        } else {
            vec![s.to_string()]
        }
    };
    let num = |n: Option<u64>| n.map(|n| vec![n.to_string()]).unwrap_or_default();
    match key {
        "host" => vec![candidate.host.to_string()],
        "state" => vec![candidate.state.to_string()],
        _ => {
            let Some(f) = facts else {
                return Vec::new();
            };
            match key {
                "hostname" => one(&f.hostname),
                "os" => one(&f.os),
                "os_id" => one(&f.os_id),
                "os_version" => one(&f.os_version),
                "kernel" => one(&f.kernel),
                "arch" => one(&f.arch),
                "agent_version" => one(&f.agent_version),
                "cpus" => num((f.cpus > 0).then_some(u64::from(f.cpus))),
                "memory_mb" => num((f.memory_bytes > 0).then_some(f.memory_bytes >> 20)),
                "memory_available_mb" => {
                    num((f.memory_available_bytes > 0).then_some(f.memory_available_bytes >> 20))
                }
                "uptime_secs" => num((f.uptime_secs > 0).then_some(f.uptime_secs)),
                "packages" => num((f.package_count > 0).then_some(f.package_count)),
                "load1" => vec![f.load1.to_string()],
                "service" => f.services.clone(),
                "port" => f
                    .listening_ports
                    .iter()
                    .map(|p| p.port.to_string())
                    .collect(),
                "ip" => f.ip_addresses.clone(),
                "mount" => f.disks.iter().map(|d| d.mount.clone()).collect(),
                _ => Vec::new(),
            }
        }
    }
}

/// Shell-style glob: `*` any run, `?` one character; everything else literal.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

// === lexer ===

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    LParen,
    RParen,
    And,
    Or,
    Not,
    Star,
    Group(String),
    /// A bare word: a host glob, or the key of a match when an operator follows.
    Word(String),
    Op(Op),
    Quoted(String),
}

impl Kind {
    fn describe(&self) -> String {
        match self {
            Kind::LParen => "`(`".into(),
            Kind::RParen => "`)`".into(),
            Kind::And => "`and`".into(),
            Kind::Or => "`or`".into(),
            Kind::Not => "`not`".into(),
            Kind::Star => "`*`".into(),
            Kind::Group(g) => format!("`@{g}`"),
            Kind::Word(w) => format!("`{w}`"),
            Kind::Op(op) => format!("`{}`", op.as_str()),
            Kind::Quoted(q) => format!("{q:?}"),
        }
    }
}

#[derive(Debug, Clone)]
struct Tok {
    kind: Kind,
    column: usize,
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | '*' | '?' | '/' | ':' | '+' | '~')
}

fn lex(text: &str) -> Result<Vec<Tok>, SelectorError> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let column = i + 1;
        let single = |kind| Tok { kind, column };
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                tokens.push(single(Kind::LParen));
                i += 1;
            }
            ')' => {
                tokens.push(single(Kind::RParen));
                i += 1;
            }
            '=' => {
                tokens.push(single(Kind::Op(Op::Eq)));
                i += 1;
            }
            '!' if chars.get(i + 1) == Some(&'=') => {
                tokens.push(single(Kind::Op(Op::Ne)));
                i += 2;
            }
            '<' | '>' => {
                let eq = chars.get(i + 1) == Some(&'=');
                let op = match (c, eq) {
                    ('<', false) => Op::Lt,
                    ('<', true) => Op::Le,
                    ('>', false) => Op::Gt,
                    _ => Op::Ge,
                };
                tokens.push(single(Kind::Op(op)));
                i += if eq { 2 } else { 1 };
            }
            '"' | '\'' => {
                let quote = c;
                let mut value = String::new();
                let mut j = i + 1;
                loop {
                    match chars.get(j) {
                        None => return Err(SelectorError::Unterminated { column }),
                        Some('\\') if chars.get(j + 1).is_some() => {
                            value.push(chars[j + 1]);
                            j += 2;
                        }
                        Some(ch) if *ch == quote => break,
                        Some(ch) => {
                            value.push(*ch);
                            j += 1;
                        }
                    }
                }
                tokens.push(single(Kind::Quoted(value)));
                i = j + 1;
            }
            '@' => {
                let start = i + 1;
                let mut j = start;
                while j < chars.len() && is_word_char(chars[j]) {
                    j += 1;
                }
                if j == start {
                    return Err(SelectorError::Unexpected {
                        found: "`@` without a name".into(),
                        column,
                        expected: "a group name after `@`",
                    });
                }
                tokens.push(single(Kind::Group(chars[start..j].iter().collect())));
                i = j;
            }
            c if is_word_char(c) => {
                let mut j = i;
                while j < chars.len() && is_word_char(chars[j]) {
                    j += 1;
                }
                let word: String = chars[i..j].iter().collect();
                let kind = match word.to_ascii_lowercase().as_str() {
                    "and" => Kind::And,
                    "or" => Kind::Or,
                    "not" => Kind::Not,
                    "*" => Kind::Star,
                    _ => Kind::Word(word),
                };
                tokens.push(single(kind));
                i = j;
            }
            other => {
                return Err(SelectorError::Unexpected {
                    found: format!("`{other}`"),
                    column,
                    expected: "a host glob, `key=value`, `@group`, `*`, `not` or `(`",
                });
            }
        }
    }
    Ok(tokens)
}

// === parser ===

struct Parser<'g> {
    tokens: Vec<Tok>,
    pos: usize,
    groups: &'g Groups,
    depth: usize,
    /// Groups being expanded, to refuse a group that refers to itself.
    expanding: Vec<String>,
    /// Characters in the text being parsed.
    len: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Tok> {
        let tok = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        tok
    }

    /// The column just past the text, where "the end of the selector" is reported.
    fn end_column(&self) -> usize {
        self.len + 1
    }

    fn or(&mut self) -> Result<Selector, SelectorError> {
        let mut parts = vec![self.and()?];
        while matches!(self.peek().map(|t| &t.kind), Some(Kind::Or)) {
            self.pos += 1;
            parts.push(self.and()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Selector::Or(parts)
        })
    }

    fn and(&mut self) -> Result<Selector, SelectorError> {
        let mut parts = vec![self.unary()?];
        while matches!(self.peek().map(|t| &t.kind), Some(Kind::And)) {
            self.pos += 1;
            parts.push(self.unary()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Selector::And(parts)
        })
    }

    fn unary(&mut self) -> Result<Selector, SelectorError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(SelectorError::TooDeep);
        }
        let result = self.unary_inner();
        self.depth -= 1;
        result
    }

    fn unary_inner(&mut self) -> Result<Selector, SelectorError> {
        const EXPECTED: &str = "a host glob, `key=value`, `@group`, `*`, `not` or `(`";
        let Some(tok) = self.next() else {
            return Err(SelectorError::Unexpected {
                found: "the end of the selector".into(),
                column: self.end_column(),
                expected: EXPECTED,
            });
        };
        match tok.kind {
            Kind::Not => Ok(Selector::Not(Box::new(self.unary()?))),
            Kind::LParen => {
                let inner = self.or()?;
                match self.next() {
                    Some(Tok {
                        kind: Kind::RParen, ..
                    }) => Ok(inner),
                    Some(other) => Err(SelectorError::Unexpected {
                        found: other.kind.describe(),
                        column: other.column,
                        expected: "`)`",
                    }),
                    None => Err(SelectorError::Unexpected {
                        found: "the end of the selector".into(),
                        column: self.end_column(),
                        expected: "`)` to close the `(`",
                    }),
                }
            }
            Kind::Star => Ok(Selector::All),
            Kind::Group(name) => self.group(name, tok.column),
            Kind::Word(word) => {
                let Some(Kind::Op(op)) = self.peek().map(|t| t.kind.clone()) else {
                    return Ok(Selector::HostGlob(word.to_ascii_lowercase()));
                };
                self.pos += 1;
                let value = match self.next() {
                    Some(Tok {
                        kind: Kind::Word(v) | Kind::Quoted(v),
                        column,
                    }) => (v, column),
                    Some(Tok {
                        kind: Kind::Star,
                        column,
                    }) => ("*".to_string(), column),
                    Some(other) => {
                        return Err(SelectorError::Unexpected {
                            found: other.kind.describe(),
                            column: other.column,
                            expected: "a value after the operator",
                        });
                    }
                    None => {
                        return Err(SelectorError::Unexpected {
                            found: "the end of the selector".into(),
                            column: self.end_column(),
                            expected: "a value after the operator",
                        });
                    }
                };
                if !matches!(op, Op::Eq | Op::Ne) && value.0.parse::<f64>().is_err() {
                    return Err(SelectorError::NotANumber {
                        value: value.0,
                        op: op.as_str(),
                        column: value.1,
                    });
                }
                Ok(Selector::Match {
                    key: word,
                    op,
                    value: value.0,
                })
            }
            other => Err(SelectorError::Unexpected {
                found: other.describe(),
                column: tok.column,
                expected: EXPECTED,
            }),
        }
    }

    fn group(&mut self, name: String, column: usize) -> Result<Selector, SelectorError> {
        let Some(text) = self.groups.get(&name) else {
            let known: Vec<String> = self.groups.keys().map(|k| format!("@{k}")).collect();
            return Err(SelectorError::UnknownGroup {
                name,
                column,
                known: if known.is_empty() {
                    "none configured".into()
                } else {
                    known.join(", ")
                },
            });
        };
        if self.expanding.contains(&name) || self.depth + self.expanding.len() > MAX_DEPTH {
            return Err(SelectorError::BadGroup {
                name,
                reason: "it refers to itself".into(),
            });
        }
        let tokens = lex(text).map_err(|e| SelectorError::BadGroup {
            name: name.clone(),
            reason: e.to_string(),
        })?;
        let mut inner = Parser {
            tokens,
            pos: 0,
            groups: self.groups,
            depth: self.depth,
            expanding: self.expanding.clone(),
            len: text.chars().count(),
        };
        inner.expanding.push(name.clone());
        let parsed = inner.or().and_then(|s| match inner.peek() {
            Some(tok) => Err(SelectorError::Unexpected {
                found: tok.kind.describe(),
                column: tok.column,
                expected: "`and`, `or` or the end of the selector",
            }),
            None => Ok(s),
        });
        parsed.map_err(|e| match e {
            e @ (SelectorError::BadGroup { .. } | SelectorError::TooDeep) => e,
            other => SelectorError::BadGroup {
                name,
                reason: other.to_string(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(labels: &[(&str, &str)]) -> pb::HostFacts {
        pb::HostFacts {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            os: "Debian GNU/Linux 12 (bookworm)".into(),
            os_id: "debian".into(),
            cpus: 4,
            memory_bytes: 8 << 30,
            services: vec!["nginx.service".into(), "ssh.service".into()],
            listening_ports: vec![pb::ListeningPort {
                protocol: "tcp".into(),
                address: "0.0.0.0".into(),
                port: 443,
            }],
            ..Default::default()
        }
    }

    fn sel(text: &str) -> Selector {
        let groups = Groups::from([
            ("prod".to_string(), "env=prod".to_string()),
            ("webprod".to_string(), "@prod and role=web".to_string()),
            ("loop".to_string(), "@loop or web-1".to_string()),
        ]);
        Selector::parse(text, &groups).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn err(text: &str) -> String {
        let groups = Groups::from([("loop".to_string(), "@loop".to_string())]);
        Selector::parse(text, &groups).expect_err(text).to_string()
    }

    #[test]
    fn matrix_of_selectors_and_hosts() {
        let web = facts(&[("role", "web"), ("env", "prod")]);
        let db = facts(&[("role", "db"), ("env", "prod")]);
        let mut dev = facts(&[("role", "web"), ("env", "dev")]);
        dev.os_id = "ubuntu".into();
        dev.os = "Ubuntu 24.04 LTS".into();
        dev.cpus = 2;
        let hosts = [("web-1", &web), ("db-1", &db), ("web-9", &dev)];
        let cases: &[(&str, &[&str])] = &[
            ("*", &["web-1", "db-1", "web-9"]),
            ("web-*", &["web-1", "web-9"]),
            ("WEB-?", &["web-1", "web-9"]),
            ("role=web", &["web-1", "web-9"]),
            ("role!=web", &["db-1"]),
            ("role=web and env=prod", &["web-1"]),
            ("role=db or env=dev", &["db-1", "web-9"]),
            ("not role=web", &["db-1"]),
            ("not (role=web or role=db)", &[]),
            ("(web-1 or db-1) and not env=dev", &["web-1", "db-1"]),
            ("os_id=debian", &["web-1", "db-1"]),
            ("os=\"Debian GNU/Linux 12*\"", &["web-1", "db-1"]),
            ("cpus>=4", &["web-1", "db-1"]),
            ("cpus<4", &["web-9"]),
            ("memory_mb>4096", &["web-1", "db-1", "web-9"]),
            ("service=nginx*", &["web-1", "db-1", "web-9"]),
            ("port=443 and role=db", &["db-1"]),
            ("@prod", &["web-1", "db-1"]),
            ("@webprod", &["web-1"]),
            ("@prod and not @webprod", &["db-1"]),
            ("state=online", &["web-1", "db-1", "web-9"]),
            ("missing=*", &[]),
            ("missing!=x", &["web-1", "db-1", "web-9"]),
            ("NOT role=web AND env=prod", &["db-1"]),
        ];
        for (text, expected) in cases {
            let selector = sel(text);
            let got: Vec<&str> = hosts
                .iter()
                .filter(|(host, f)| {
                    selector.matches(&Candidate {
                        host,
                        facts: Some(f),
                        state: HostState::Online,
                    })
                })
                .map(|(h, _)| *h)
                .collect();
            assert_eq!(&got, expected, "selector `{text}`");
        }
    }

    #[test]
    fn and_binds_tighter_than_or() {
        assert_eq!(
            sel("a or b and c"),
            Selector::Or(vec![
                Selector::HostGlob("a".into()),
                Selector::And(vec![
                    Selector::HostGlob("b".into()),
                    Selector::HostGlob("c".into())
                ])
            ])
        );
    }

    #[test]
    fn errors_name_the_column() {
        assert_eq!(
            err("role=web and db-1)"),
            "unexpected `)` at column 18; expected `and`, `or` or the end of the selector"
        );
        assert_eq!(
            err("(web-1 or"),
            "unexpected the end of the selector at column 10; expected a host glob, `key=value`, \
             `@group`, `*`, `not` or `(`"
        );
        assert_eq!(
            err("(web-1 db-1"),
            "unexpected `db-1` at column 8; expected `)`"
        );
        assert_eq!(
            err("role="),
            "unexpected the end of the selector at column 6; expected a value after the operator"
        );
        assert!(err("@nope").starts_with("unknown group `@nope` at column 1; known groups: @loop"));
        assert!(
            err("@loop").contains("refers to itself"),
            "{}",
            err("@loop")
        );
        assert!(err("cpus>many").contains("is not a number"));
        assert!(err("os=\"deb").contains("unterminated"));
        assert!(err("web-1 & db-1").contains("unexpected `&` at column 7"));
        assert_eq!(err("   "), SelectorError::Empty.to_string());
        assert!(err("and").contains("unexpected `and` at column 1"));
        let deep = format!("{}x{}", "(".repeat(40), ")".repeat(40));
        assert_eq!(err(&deep), SelectorError::TooDeep.to_string());
    }

    #[test]
    fn groups_are_checked_at_load() {
        let good = Groups::from([("a".to_string(), "role=web".to_string())]);
        assert!(Selector::check_groups(&good).is_ok());
        let bad = Groups::from([("a".to_string(), "role=".to_string())]);
        assert!(matches!(
            Selector::check_groups(&bad),
            Err(SelectorError::BadGroup { .. })
        ));
    }

    #[test]
    fn globs() {
        assert!(glob_match("*", "web-1"));
        assert!(glob_match("web-*", "web-12"));
        assert!(glob_match("db-?", "db-1"));
        assert!(!glob_match("db-?", "db-10"));
        assert!(glob_match("w*b*1", "web-1"));
        assert!(!glob_match("web-*", "db-1"));
    }
}
