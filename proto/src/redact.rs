//! The one redactor: secrets in command lines, argument summaries, job records and (when a host asks for it) job output, replaced by a marker before anything is stored or shown.
//!
//! Every place that records or shows what a caller asked for uses a [`Redactor`]: the gateway's
//! audit events and approval requests, the agent's job status in `mesh_jobs` and its audit
//! events, job listings of the MCP `job` tool, the admin API and `execmeshctl`, and — with the
//! agent's `output_redaction` — the output a job publishes. Redaction replaces only the secret,
//! so the command stays readable: `mysql -u root -p[redacted] shop`.
//!
//! A secret is found three ways, all on the same text, and every span found is replaced once:
//!
//! - **Shapes and contexts** ([`RULES`]): private key blocks, `Authorization:`/`Cookie:` headers,
//!   `Bearer`/`Basic` credentials, credentials in URLs (`postgres://user:[redacted]@db`), the
//!   password options of common clients (`curl -u`, `mysql -p`, `redis-cli -a`, `docker login
//!   -p`, `sshpass -p`, `htpasswd -b`, `openssl -k`, `ldapsearch -w`, `smbclient -U user%pw`, …),
//!   text piped into `sudo -S`/`chpasswd`/`--password-stdin`, and well-known token formats (AWS,
//!   GitHub, GitLab, Slack, Stripe, Google, npm, PyPI, Vault, SendGrid, `sk-` keys, JWTs).
//! - **Names** ([`is_secret_name`]): the value of an assignment, option or field whose name says
//!   it is secret — `DB_PASS=…`, `export TOKEN=…`, `--password=…`, `--api-key …`, `-storepass …`,
//!   `"client_secret": "…"`, `pass:…`, `?access_token=…` — unless the value is a reference
//!   rather than the secret itself (`$VAR`, `${VAR}`, `$(…)`, `<placeholder>`, `env:NAME`,
//!   `file:/path`, a key file path).
//! - **Entropy** ([`is_token`]): a run of 20 or more token characters (`A-Za-z0-9+/_.~-`) that
//!   looks random: letters and digits, one piece of at least 16 without a separator, frequent
//!   changes between upper case, lower case and digits, and few vowels (identifiers and slugs
//!   made of words have many). Hexadecimal strings of 32 digits or more are secrets too unless a
//!   hash names them: a hash word just before (`sha256:`, `md5=`, `commit`, `digest`, …) or a
//!   hash-minded command on the line (`git`, `docker`, `sha256sum`, …). UUIDs, ordinary paths
//!   (their components are judged one by one, and only mixed-case tokens count there), version
//!   strings, host names and pod names stay readable.
//!
//! What it cannot find: a short or word-like password in a position no rule knows
//! (`mycli hunter2`), a secret computed at run time, and secrets split by the shell (`"pa""ss"`).
//! Redaction is a safety net for records, not a vault: pass secrets through files or the
//! environment of the host, never on the command line.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::LazyLock;

use regex::bytes::{Captures, Regex, RegexSet};
use serde_json::{Map, Value};

use crate::pb;

/// What replaces a secret.
pub const REDACTED: &str = "[redacted]";
/// Longest string kept whole in an argument summary.
const MAX_VALUE_CHARS: usize = 256;
/// Items kept of an array in an argument summary.
const MAX_ITEMS: usize = 32;
/// Longest argument summary.
const MAX_SUMMARY_BYTES: usize = 8 * 1024;

/// Shortest run of token characters the entropy test looks at.
pub const MIN_TOKEN_LEN: usize = 20;
/// Longest piece (between `-`, `_`, `.`, `~`) a run needs to be a token: slugs
/// made of short words and ids (`kubernetes-dashboard-7d9f8b5c4-x2h8k`) have none.
const MIN_PIECE_LEN: usize = 16;
/// Shortest hexadecimal string taken for a secret (an MD5 is 32 digits; abbreviated commit ids
/// and container ids are shorter).
const MIN_HEX_LEN: usize = 32;
/// Share of adjacent characters that change class (upper, lower, digit, other) a token has at
/// least: random base62 changes about 60% of the time, `CamelCase2` identifiers rarely.
const MIN_TRANSITIONS: f64 = 0.3;
/// Share of class changes above which a piece is random whatever its vowels.
const CLEAR_TRANSITIONS: f64 = 0.45;
/// Share of vowels among a token's letters at most: random letters have about 20%, words 35–45%.
const MAX_VOWELS: f64 = 0.35;
/// Shannon entropy (bits per character) a token has at least; keeps `aaaa1111…` readable.
const MIN_ENTROPY: f64 = 3.0;
/// Bytes before a hexadecimal string searched for a word that names it a hash.
const HASH_LOOKBACK: usize = 48;

/// Argument names whose values are secrets whatever they look like.
const SECRET_KEYS: &str = r"(?i)(passw|passwd|secret|token|api[_-]?key|apikey|credential|private[_-]?key|cookie|authorization|bearer)";

/// Where a rule's secret is, relative to its match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Take {
    /// The group named `secret`.
    Group,
    /// The shell word that starts where the match ends.
    WordAfter,
    /// The part after the first `:` of the word that starts where the match ends (`user:pw`).
    UserPassAfter,
    /// The last positional argument in the group named `args`, when a flag cluster there holds
    /// `b` (`htpasswd -b file user pw`).
    HtpasswdArgs,
}

/// What a rule's candidate must also satisfy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Any,
    /// The group named `name` (or the name the match starts with) is a secret name
    /// ([`is_secret_name`]).
    SecretName,
    /// As [`Check::SecretName`], for an option: the match starts a word (at the start, or after
    /// whitespace, a quote or a parenthesis), so `some-thing` is not an option `-thing`.
    SecretOption,
    /// The value looks like a credential, not a word (`Basic authentication` stays).
    Credential,
    /// The value is `name=value` (a cookie), not a cookie jar file.
    Cookie,
}

/// One built-in rule: a name for tests and docs, the pattern, where its secret is, and what the
/// secret must satisfy. `\b` in a pattern is an ASCII word boundary.
struct Spec(&'static str, &'static str, Take, Check);

/// The rest of a simple command, lazily: up to the next `|`, `;`, `&` or newline.
macro_rules! cmd {
    () => {
        r"[^|;&\n]*?"
    };
}

/// The armour line that opens a private key block.
macro_rules! key_begin {
    () => {
        r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
    };
}

/// The armour line that closes a private key block.
macro_rules! key_end {
    () => {
        r"-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
    };
}

/// The built-in rules.
const RULES: &[Spec] = &[
    // Private keys: the body between the armour lines (or to the end when it was cut off).
    Spec(
        "private-key",
        concat!(
            key_begin!(),
            r"(?P<secret>(?s:.)*?)(?:",
            key_end!(),
            r"|\z)"
        ),
        Take::Group,
        Check::Any,
    ),
    // HTTP credentials: `Authorization: Bearer x`, `-H 'Proxy-Authorization: Basic x'`,
    // `"authorization": "token x"`.
    Spec(
        "authorization-header",
        r#"(?i)\b(?:proxy-)?authorization"?[ \t]*[:=][ \t]*"?(?:(?:bearer|basic|token|digest|negotiate|ntlm|apikey|sso-key|aws4-hmac-sha256)[ \t]+)?"#,
        Take::WordAfter,
        Check::Any,
    ),
    Spec(
        "bearer-or-basic",
        r"(?i)\b(?:bearer|basic)[ \t]+",
        Take::WordAfter,
        Check::Credential,
    ),
    Spec(
        "cookie-header",
        r#"(?i)\b(?:set-)?cookie"?[ \t]*:[ \t]*"?(?P<secret>[^'"\r\n]+)"#,
        Take::Group,
        Check::Any,
    ),
    Spec(
        "curl-cookie",
        concat!(r"\bcurl\b", cmd!(), r"\s(?:-b|--cookie)(?:[ \t]+|=)"),
        Take::WordAfter,
        Check::Cookie,
    ),
    // Assignments, fields and query parameters with a secret name: `DB_PASS=x`,
    // `export TOKEN=x`, `--password=x`, `"api_key": "x"`, `password: x`, `pass:x`, `?token=x`.
    Spec(
        "secret-assignment",
        r#"(?i)[a-z0-9_.-]*[a-z0-9_]"?[ \t]*[:=][ \t]*"#,
        Take::WordAfter,
        Check::SecretName,
    ),
    // Options with a secret name and a separate value: `--password x`, `--api-key x`,
    // `-storepass x`.
    Spec(
        "secret-option",
        r#"(?i)--?[a-z][a-z0-9_.-]*[ \t]+"#,
        Take::WordAfter,
        Check::SecretOption,
    ),
    // `curl -u user:pw`, `curl --proxy-user user:pw`, httpie's `http -a user:pw`.
    Spec(
        "curl-user",
        concat!(
            r"\bcurl\b",
            cmd!(),
            r"\s(?:-u|--user|-U|--proxy-user)(?:[ \t]*|=)"
        ),
        Take::UserPassAfter,
        Check::Any,
    ),
    Spec(
        "httpie-auth",
        concat!(r"\bhttps?\b", cmd!(), r"\s(?:-a|--auth)(?:[ \t]+|=)"),
        Take::UserPassAfter,
        Check::Any,
    ),
    // `mysql -pX` (the password is attached; a lone `-p` prompts).
    Spec(
        "mysql-password",
        concat!(
            r"(?i:\b(?:mysql|mysqldump|mysqladmin|mysqlimport|mysqlshow|mysqlcheck|mysqlslap|mysqlbinlog|mariadb|mariadb-dump|mariadb-admin))\b",
            cmd!(),
            r"\s-p"
        ),
        Take::WordAfter,
        Check::Any,
    ),
    Spec(
        "redis-cli-password",
        concat!(r"\bredis-cli\b", cmd!(), r"\s-a[ \t]*"),
        Take::WordAfter,
        Check::Any,
    ),
    Spec(
        "redis-cli-auth",
        concat!(
            r"\bredis-cli\b",
            cmd!(),
            r"\s(?i:auth)[ \t]+(?P<secret>[^|;&\n]+)"
        ),
        Take::Group,
        Check::Any,
    ),
    // `docker login -u me -p pw registry` (also podman, nerdctl, buildah, skopeo, helm, oras).
    Spec(
        "registry-login",
        concat!(
            r"\b(?:docker|podman|nerdctl|buildah|skopeo|helm|oras|crane)\b",
            cmd!(),
            r"\blogin\b",
            cmd!(),
            r"\s-p(?:[ \t]+|=)?"
        ),
        Take::WordAfter,
        Check::Any,
    ),
    Spec(
        "sshpass",
        concat!(r"\bsshpass\b", cmd!(), r"\s-p[ \t]*"),
        Take::WordAfter,
        Check::Any,
    ),
    // `openssl enc -k pw`, `openssl passwd -6 pw` (`-passin pass:x` is an assignment).
    Spec(
        "openssl-k",
        concat!(r"\bopenssl\b", cmd!(), r"\s-k[ \t]+"),
        Take::WordAfter,
        Check::Any,
    ),
    Spec(
        "openssl-passwd",
        r"\bopenssl[ \t]+passwd[ \t]+(?P<secret>[^|;&\n]+)",
        Take::Group,
        Check::Any,
    ),
    Spec(
        "htpasswd",
        r"\bhtpasswd\b(?P<args>[^|;&\n]*)",
        Take::HtpasswdArgs,
        Check::Any,
    ),
    // `echo pw | sudo -S …`, `printf 'u:pw' | chpasswd`, `echo pw | docker login --password-stdin`.
    Spec(
        "piped-password",
        concat!(
            r"\b(?:echo|printf)[ \t]+(?P<secret>[^|;&\n]+?)[ \t]*\|[ \t]*(?:\S*/)?",
            r"(?:sudo\b",
            cmd!(),
            r"\s(?:-[A-Za-z]*S\b|--stdin\b)|chpasswd\b|passwd\b",
            cmd!(),
            r"--stdin\b|smbpasswd\b|kinit\b|cryptsetup\b|",
            r"[^|;&\n]*?--password-stdin\b|[^|;&\n]*?--passphrase-fd\b)"
        ),
        Take::Group,
        Check::Any,
    ),
    Spec(
        "here-string-password",
        concat!(
            r"\b(?:sudo|chpasswd|passwd|smbpasswd|kinit|cryptsetup)\b",
            cmd!(),
            r"<<<[ \t]*"
        ),
        Take::WordAfter,
        Check::Any,
    ),
    Spec(
        "ldap-password",
        concat!(
            r"\bldap(?:search|add|modify|delete|passwd|whoami|compare|modrdn|exop|url)\b",
            cmd!(),
            r"\s-w[ \t]*"
        ),
        Take::WordAfter,
        Check::Any,
    ),
    Spec(
        "mongo-password",
        concat!(
            r"\bmongo(?:sh|dump|restore|import|export|stat|top)?\b",
            cmd!(),
            r"\s-p[ \t]*"
        ),
        Take::WordAfter,
        Check::Any,
    ),
    Spec(
        "sqlcmd-password",
        concat!(r"\b(?:sqlcmd|bcp)\b", cmd!(), r"\s-P[ \t]*"),
        Take::WordAfter,
        Check::Any,
    ),
    // `smbclient -U user%pw`.
    Spec(
        "smb-user",
        concat!(
            r"\b(?:smbclient|rpcclient|smbcacls|smbget|smbmap|net|winexe)\b",
            cmd!(),
            r"\s(?:-U[ \t]*|--user[ \t=])[^\s%'|;&]+%"
        ),
        Take::WordAfter,
        Check::Any,
    ),
    Spec(
        "zip-password",
        concat!(
            r"\b(?:zip|unzip|zipcloak)\b",
            cmd!(),
            r"\s(?:-P|--password)[ \t]+"
        ),
        Take::WordAfter,
        Check::Any,
    ),
    Spec(
        "7z-password",
        concat!(r"\b7z[a-z]?\b", cmd!(), r"\s-p"),
        Take::WordAfter,
        Check::Any,
    ),
    Spec(
        "useradd-password",
        concat!(r"\b(?:useradd|usermod)\b", cmd!(), r"\s-p[ \t]+"),
        Take::WordAfter,
        Check::Any,
    ),
    // `aws configure set aws_secret_access_key X`.
    Spec(
        "aws-configure",
        r"\baws[ \t]+configure[ \t]+set[ \t]+(?P<name>[A-Za-z0-9_.-]+)[ \t]+",
        Take::WordAfter,
        Check::SecretName,
    ),
    // `vault login s.xxxx` (a token as the positional argument).
    Spec(
        "vault-login",
        r"\bvault[ \t]+login(?:[ \t]+-[^\s]+)*[ \t]+",
        Take::WordAfter,
        Check::Any,
    ),
    // Credentials in URLs: `https://user:pass@host`, `redis://:pass@host`.
    Spec(
        "url-userinfo",
        r#"(?i)\b[a-z][a-z0-9+.-]*://[^/\s:@'"]*:(?P<secret>[^\s@/'"]+)@"#,
        Take::Group,
        Check::Any,
    ),
    // Well-known token formats.
    Spec(
        "aws-access-key-id",
        r"\b(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[0-9A-Z]{16}\b",
        Take::Group,
        Check::Any,
    ),
    Spec(
        "github-token",
        r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})",
        Take::Group,
        Check::Any,
    ),
    Spec(
        "gitlab-token",
        r"\bgl(?:pat|dt|ptt|rt|cbt|soat|ft|imt|agent)-[A-Za-z0-9_-]{20,}",
        Take::Group,
        Check::Any,
    ),
    Spec(
        "slack-token",
        r"\bxox[abposr]-[A-Za-z0-9-]{10,}",
        Take::Group,
        Check::Any,
    ),
    Spec(
        "slack-webhook",
        r"hooks\.slack\.com/services/(?P<secret>[A-Za-z0-9/]{20,})",
        Take::Group,
        Check::Any,
    ),
    Spec(
        "stripe-key",
        r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}",
        Take::Group,
        Check::Any,
    ),
    Spec(
        "sk-api-key",
        r"\bsk-[A-Za-z0-9_-]{20,}",
        Take::Group,
        Check::Any,
    ),
    Spec(
        "google-api-key",
        r"\bAIza[0-9A-Za-z_-]{35}",
        Take::Group,
        Check::Any,
    ),
    Spec(
        "npm-token",
        r"\bnpm_[A-Za-z0-9]{36}",
        Take::Group,
        Check::Any,
    ),
    Spec(
        "pypi-token",
        r"\bpypi-[A-Za-z0-9_-]{50,}",
        Take::Group,
        Check::Any,
    ),
    Spec(
        "vault-token",
        r"\bhv[sbr]\.[A-Za-z0-9_-]{20,}",
        Take::Group,
        Check::Any,
    ),
    Spec(
        "sendgrid-key",
        r"\bSG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}",
        Take::Group,
        Check::Any,
    ),
    Spec(
        "digitalocean-token",
        r"\bdo[por]_v1_[a-f0-9]{64}",
        Take::Group,
        Check::Any,
    ),
    Spec(
        "jwt",
        r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*",
        Take::Group,
        Check::Any,
    ),
];

/// Name segments that make a name secret wherever they stand (`x-auth`, `SESSION_COOKIE`),
/// besides the [`STRONG_SEGMENTS`] (`DB_PASS`, `x-auth-token`), which make it strongly secret.
const SECRET_SEGMENTS: &[&str] = &[
    "auth",
    "apikey",
    "cookie",
    "credential",
    "credentials",
    "sig",
    "signature",
    "privatekey",
    "authkey",
    "accesskey",
    "secretkey",
];
/// Parts of a name (separators removed) that make it secret (`PGPASSWORD`, `clientSecret`).
const SECRET_INFIXES: &[&str] = &[
    "password",
    "passwd",
    "passphrase",
    "secret",
    "apikey",
    "accesskey",
    "privatekey",
    "credential",
];
/// Endings of a name (separators removed) that make it secret (`GITHUB_TOKEN`, `-storepass`).
const SECRET_SUFFIXES: &[&str] = &["token", "pass"];
/// Segments that make a name *strongly* secret: its value is redacted even when it looks like
/// a path or is short.
const STRONG_SEGMENTS: &[&str] = &[
    "pass",
    "passwd",
    "password",
    "passphrase",
    "pwd",
    "pw",
    "pswd",
    "secret",
    "token",
];
/// Last segments that make a name about a secret rather than the secret (`TOKEN_FILE`,
/// `password_min_length`, `--token-ttl`, `--password-stdin`).
const REFERENCE_SEGMENTS: &[&str] = &[
    "file",
    "files",
    "path",
    "dir",
    "directory",
    "id",
    "ids",
    "name",
    "type",
    "length",
    "len",
    "size",
    "count",
    "ttl",
    "expiry",
    "expires",
    "lifetime",
    "timeout",
    "url",
    "uri",
    "endpoint",
    "host",
    "port",
    "user",
    "username",
    "stdin",
    "fd",
    "env",
    "prompt",
    "policy",
    "method",
    "mode",
    "format",
    "algorithm",
    "algo",
    "cmd",
    "command",
    "helper",
    "store",
    "min",
    "max",
    "required",
    "enabled",
    "disabled",
    "version",
    "scope",
    "scopes",
    "audience",
    "issuer",
    "kind",
    "location",
    "source",
    "header",
    "field",
    "rotation",
];
/// First segments that make a name a flag about a secret (`--no-password`, `--ask-pass`).
const FLAG_SEGMENTS: &[&str] = &["no", "ask", "prompt", "read", "show", "use"];
/// Words that, just before a hexadecimal string, name it a hash.
const HASH_WORDS: &[&str] = &[
    "sha",
    "md5",
    "blake",
    "hash",
    "digest",
    "checksum",
    "commit",
    "rev",
    "object",
    "etag",
    "fingerprint",
    "tree",
    "parent",
    "integrity",
];
/// Commands whose hexadecimal arguments are hashes or object ids.
const HASH_TOOLS: &[&str] = &[
    "git",
    "docker",
    "podman",
    "nerdctl",
    "crictl",
    "ctr",
    "kubectl",
    "sha1sum",
    "sha224sum",
    "sha256sum",
    "sha384sum",
    "sha512sum",
    "md5sum",
    "b2sum",
    "shasum",
    "cksum",
    "restic",
    "borg",
    "nix",
    "nix-store",
    "ostree",
    "ipfs",
];

/// A redaction pattern that does not compile.
#[derive(Debug, thiserror::Error)]
#[error("redaction pattern `{pattern}`: {source}")]
pub struct PatternError {
    /// The pattern as configured.
    pub pattern: String,
    /// Why it does not compile.
    pub source: regex::Error,
}

/// Longest text whose rules are first picked with one search for all of them
/// ([`Redactor::prefilter`]): command lines, arguments and job fields, not output chunks.
const PREFILTER_MAX_BYTES: usize = 4 * 1024;

/// Replaces secrets by [`REDACTED`] in command lines, argument summaries, job records and
/// output. Cheap to share: build one per process (or use [`Redactor::builtin`]).
#[derive(Debug, Clone)]
pub struct Redactor {
    /// The built-in rules and the configured patterns.
    rules: Vec<Rule>,
    /// Every rule's pattern, in the order of `rules`, as one set: a short text is searched
    /// once for all of them, and only the rules that match it are run for their spans. Most
    /// texts (a host id, `true`, a path) match none, and one search costs less than one per
    /// rule. Long texts (output) go rule by rule: one automaton for every pattern would outgrow
    /// the lazy DFA's cache on them.
    prefilter: RegexSet,
    /// Names of JSON arguments whose values are always secret.
    secret_keys: regex::Regex,
}

#[derive(Debug, Clone)]
struct Rule {
    regex: Regex,
    take: Take,
    check: Check,
    /// Whether the pattern has groups to read. Those that match often (every `name=`) have
    /// none, so they are found by the fast engines without capturing.
    captures: bool,
}

/// Where private key blocks open and close, for [`ends_inside_private_key`].
static KEY_ARMOUR: LazyLock<(Regex, Regex)> = LazyLock::new(|| {
    // Both are literals of this file, tested to compile.
    let armour = |pattern| compile(pattern).unwrap_or_else(|e| panic!("key armour: {e}"));
    (armour(key_begin!()), armour(key_end!()))
});

/// Whether `data` ends inside a private key block: its last opening armour line has no closing
/// one after it. A block is redacted whole only when it is seen whole, so output read a line at a
/// time is held back while this holds (see the agent's output readers).
pub fn ends_inside_private_key(data: &[u8]) -> bool {
    let (begin, end) = &*KEY_ARMOUR;
    match begin.find_iter(data).last() {
        Some(opened) => !end.is_match(&data[opened.end()..]),
        None => false,
    }
}

static BUILTIN: LazyLock<Redactor> = LazyLock::new(|| {
    // The built-in rules are tested to compile.
    Redactor::compile_builtin().unwrap_or_else(|e| panic!("built-in redaction rules: {e}"))
});

// === impl Redactor ===

impl Redactor {
    /// The built-in rules plus `extra`: regular expressions whose group named `secret` (or the
    /// whole match, without one) is redacted. The built-in rules are compiled once per process
    /// and shared (a clone shares the compiled programs); only `extra` is compiled here.
    pub fn new(extra: &[String]) -> Result<Redactor, PatternError> {
        let mut redactor = BUILTIN.clone();
        if extra.is_empty() {
            return Ok(redactor);
        }
        redactor.rules.reserve(extra.len());
        for pattern in extra {
            let regex = compile(pattern)?;
            redactor.rules.push(Rule {
                captures: regex.captures_len() > 1,
                regex,
                take: Take::Group,
                check: Check::Any,
            });
        }
        redactor.prefilter = prefilter(&redactor.rules)?;
        Ok(redactor)
    }

    /// Compiles the built-in rules: once, for [`BUILTIN`].
    fn compile_builtin() -> Result<Redactor, PatternError> {
        let mut rules = Vec::with_capacity(RULES.len());
        for Spec(name, pattern, take, check) in RULES {
            // ASCII word boundaries: the lazy DFA keeps them on any input, Unicode ones not.
            let pattern = pattern.replace(r"\b", r"(?-u:\b)");
            let regex = compile(&pattern).map_err(|e| PatternError {
                pattern: format!("{name}: {}", e.pattern),
                source: e.source,
            })?;
            rules.push(Rule {
                captures: regex.captures_len() > 1,
                regex,
                take: *take,
                check: *check,
            });
        }
        let secret_keys = regex::Regex::new(SECRET_KEYS).map_err(|source| PatternError {
            pattern: SECRET_KEYS.to_string(),
            source,
        })?;
        let prefilter = prefilter(&rules)?;
        Ok(Redactor {
            rules,
            prefilter,
            secret_keys,
        })
    }

    /// The redactor with the built-in rules only, for places without configuration
    /// (`execmeshctl`, job views).
    pub fn builtin() -> &'static Redactor {
        &BUILTIN
    }

    /// `text` with every secret replaced by [`REDACTED`].
    pub fn text(&self, text: &str) -> String {
        match self.bytes(text.as_bytes()) {
            Cow::Borrowed(_) => text.to_string(),
            // Secrets start and end at character boundaries (the rules match whole characters
            // and split only at ASCII bytes), so this is UTF-8; a configured pattern that
            // splits a character is repaired rather than trusted.
            Cow::Owned(bytes) => String::from_utf8(bytes)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
        }
    }

    /// `data` (any bytes: job output need not be UTF-8) with every secret replaced.
    pub fn bytes<'a>(&self, data: &'a [u8]) -> Cow<'a, [u8]> {
        let spans = self.spans(data);
        if spans.is_empty() {
            return Cow::Borrowed(data);
        }
        let mut out = Vec::with_capacity(data.len() + spans.len() * REDACTED.len());
        let mut at = 0;
        for span in spans {
            out.extend_from_slice(&data[at..span.start]);
            out.extend_from_slice(REDACTED.as_bytes());
            at = span.end;
        }
        out.extend_from_slice(&data[at..]);
        Cow::Owned(out)
    }

    /// Redacts what a job status shows of the request: command, title, directory and reason.
    pub fn job_status(&self, status: &mut pb::JobStatus) {
        for field in [
            &mut status.cmd,
            &mut status.title,
            &mut status.cwd,
            &mut status.reason,
        ] {
            if !field.is_empty() {
                *field = self.text(field);
            }
        }
    }

    /// The arguments of a call as a JSON summary: secret-named arguments and every `env` value
    /// replaced, file content reduced to its length, secrets redacted in every string, long
    /// strings and arrays shortened, the whole capped at 8 KiB.
    pub fn args(&self, args: &Map<String, Value>) -> String {
        let summary = Value::Object(self.object(args));
        let mut text = summary.to_string();
        if text.len() > MAX_SUMMARY_BYTES {
            let cut = floor_char_boundary(&text, MAX_SUMMARY_BYTES);
            text = serde_json::json!({ "truncated": &text[..cut] }).to_string();
        }
        text
    }

    /// The arguments redacted as for [`Redactor::args`], as JSON (not size-capped): what an
    /// approver is shown.
    pub fn args_value(&self, args: &Map<String, Value>) -> Value {
        Value::Object(self.object(args))
    }

    /// The spans of `data` to replace, sorted and merged.
    fn spans(&self, data: &[u8]) -> Vec<Range<usize>> {
        let matching = (data.len() <= PREFILTER_MAX_BYTES).then(|| self.prefilter.matches(data));
        self.spans_of_rules(data, |rule| {
            matching.as_ref().is_none_or(|m| m.matched(rule))
        })
    }

    /// The spans of `data` found by the rules `runs` lets run (by index), and by entropy.
    fn spans_of_rules(&self, data: &[u8], runs: impl Fn(usize) -> bool) -> Vec<Range<usize>> {
        let mut spans = Vec::new();
        for (index, rule) in self.rules.iter().enumerate() {
            if !runs(index) {
                continue;
            }
            if rule.captures {
                for caps in rule.regex.captures_iter(data) {
                    if let Some(whole) = caps.get(0) {
                        spans.extend(rule.secret(data, whole.range(), Some(&caps)));
                    }
                }
            } else {
                for m in rule.regex.find_iter(data) {
                    spans.extend(rule.secret(data, m.range(), None));
                }
            }
        }
        entropy_spans(data, &mut spans);
        merge(spans)
    }

    fn object(&self, args: &Map<String, Value>) -> Map<String, Value> {
        args.iter()
            .map(|(key, value)| {
                let value = if self.secret_keys.is_match(key) {
                    Value::String(REDACTED.to_string())
                } else if key == "env" {
                    match value {
                        Value::Object(env) => Value::Object(
                            env.keys()
                                .map(|k| (k.clone(), Value::String(REDACTED.to_string())))
                                .collect(),
                        ),
                        _ => Value::String(REDACTED.to_string()),
                    }
                } else if matches!(key.as_str(), "content" | "data") {
                    match value {
                        Value::String(s) => Value::String(format!("[{} bytes]", s.len())),
                        _ => Value::String("[content]".to_string()),
                    }
                } else {
                    self.value(value)
                };
                (key.clone(), value)
            })
            .collect()
    }

    fn value(&self, value: &Value) -> Value {
        match value {
            Value::String(s) => Value::String(shorten(&self.text(s))),
            Value::Array(items) => {
                let mut out: Vec<Value> = items
                    .iter()
                    .take(MAX_ITEMS)
                    .map(|v| self.value(v))
                    .collect();
                if items.len() > MAX_ITEMS {
                    out.push(Value::String(format!("[{} more]", items.len() - MAX_ITEMS)));
                }
                Value::Array(out)
            }
            Value::Object(map) => Value::Object(self.object(map)),
            other => other.clone(),
        }
    }
}

/// The rules' patterns as one set, in their order.
fn prefilter(rules: &[Rule]) -> Result<RegexSet, PatternError> {
    RegexSet::new(rules.iter().map(|rule| rule.regex.as_str())).map_err(|source| PatternError {
        pattern: "the set of every redaction pattern".to_string(),
        source,
    })
}

fn compile(pattern: &str) -> Result<Regex, PatternError> {
    Regex::new(pattern).map_err(|source| PatternError {
        pattern: pattern.to_string(),
        source,
    })
}

// === impl Rule ===

impl Rule {
    /// The span of `data` this match says is secret, if any.
    /// The span of `data` this match (`whole`, with its groups when the rule reads them)
    /// says is secret, if any.
    fn secret(
        &self,
        data: &[u8],
        whole: Range<usize>,
        caps: Option<&Captures<'_>>,
    ) -> Option<Range<usize>> {
        let group = |name: &str| caps.and_then(|c| c.name(name));
        let span = match self.take {
            Take::Group => group("secret").map_or(whole.clone(), |m| m.range()),
            Take::WordAfter => word_at(data, whole.end)?,
            Take::UserPassAfter => {
                let word = word_at(data, whole.end)?;
                let colon = data[word.clone()].iter().position(|&b| b == b':')?;
                word.start + colon + 1..word.end
            }
            Take::HtpasswdArgs => htpasswd_secret(data, group("args")?.range())?,
        };
        let span = if matches!(self.take, Take::Group | Take::HtpasswdArgs) {
            unquote(data, span)
        } else {
            span
        };
        let value = &data[span.clone()];
        if value.is_empty() || !is_literal(data, span.clone()) {
            return None;
        }
        let ok = match self.check {
            Check::Any => true,
            Check::SecretOption
                if whole.start > 0
                    && !matches!(
                        data[whole.start - 1],
                        b' ' | b'\t' | b'\n' | b'\'' | b'"' | b'('
                    ) =>
            {
                false
            }
            Check::SecretName | Check::SecretOption => {
                let name = group("name")
                    .map_or_else(|| leading_name(&data[whole.clone()]), |m| m.as_bytes());
                match secret_name_strength(name) {
                    Some(Strength::Strong) => true,
                    Some(Strength::Weak) => !looks_like_path(value) && value.len() > 3,
                    None => false,
                }
            }
            Check::Credential => looks_like_credential(value),
            Check::Cookie => value.contains(&b'='),
        };
        ok.then_some(span)
    }
}

/// The name a match starts with, without leading dashes: `--api-key ` → `api-key`,
/// `DB_PASS=` → `DB_PASS`.
fn leading_name(matched: &[u8]) -> &[u8] {
    let start = matched.iter().take_while(|&&b| b == b'-').count();
    let len = matched[start..]
        .iter()
        .take_while(|&&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        .count();
    &matched[start..start + len]
}

/// The shell word starting at `at`: the inside of a quoted string (to its closing quote, or
/// the end of the line when it has none) or a bare word up to whitespace, a quote or a shell
/// operator. `None` when there is none, or it is another option.
fn word_at(data: &[u8], at: usize) -> Option<Range<usize>> {
    let first = *data.get(at)?;
    match first {
        b'"' | b'\'' => {
            let mut i = at + 1;
            while i < data.len() && data[i] != first && data[i] != b'\n' {
                // A backslash escapes the next character inside double quotes (and JSON).
                if data[i] == b'\\' && first == b'"' {
                    i += 1;
                }
                i += 1;
            }
            Some(at + 1..i.min(data.len()))
        }
        b'-' | b'=' => None,
        _ => {
            let end = data[at..]
                .iter()
                .position(|&b| {
                    b.is_ascii_whitespace()
                        || matches!(b, b'"' | b'\'' | b'|' | b';' | b'&' | b'<' | b'>' | b'`')
                })
                .map_or(data.len(), |n| at + n);
            (end > at).then_some(at..end)
        }
    }
}

/// `span` without the quotes around it, when it is quoted at both ends.
fn unquote(data: &[u8], span: Range<usize>) -> Range<usize> {
    match &data[span.clone()] {
        [q @ (b'"' | b'\''), .., last] if last == q => span.start + 1..span.end - 1,
        _ => span,
    }
}

/// Whether the value at `span` is a literal, not a reference to a secret kept elsewhere:
/// `$VAR`, `${VAR}`, `$(cmd)` and backticks (unless single-quoted), `<placeholder>`, `***`,
/// `env:NAME`, `file:/path`, `fd:3`, `stdin`, `-`, or the marker itself.
fn is_literal(data: &[u8], span: Range<usize>) -> bool {
    let single_quoted = span.start > 0 && data[span.start - 1] == b'\'';
    let v = &data[span];
    if !single_quoted && matches!(v.first(), Some(b'$' | b'`')) {
        return false;
    }
    if v.first() == Some(&b'<') && v.last() == Some(&b'>') {
        return false;
    }
    if v.len() >= 3 && v.iter().all(|&b| matches!(b, b'*' | b'x' | b'X' | b'.')) {
        return false;
    }
    if v.starts_with(b"env:") || v.starts_with(b"file:") || v.starts_with(b"fd:") {
        return false;
    }
    !matches!(v, b"-" | b"stdin") && v != REDACTED.as_bytes()
}

/// Whether a value looks like a file path (a reference to a key, not the key).
fn looks_like_path(v: &[u8]) -> bool {
    (v.starts_with(b"/") || v.starts_with(b"./") || v.starts_with(b"../") || v.starts_with(b"~/"))
        && !v.iter().any(u8::is_ascii_whitespace)
}

/// Whether the word after `Bearer`/`Basic` is a credential rather than prose.
fn looks_like_credential(v: &[u8]) -> bool {
    let token_chars = v
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b"._~+/=-".contains(&b));
    let digit = v.iter().any(u8::is_ascii_digit);
    let upper = v.iter().any(u8::is_ascii_uppercase);
    let lower = v.iter().any(u8::is_ascii_lowercase);
    let symbol = v.iter().any(|b| b"._~+/=-".contains(b));
    v.len() >= 8 && token_chars && (digit || (upper && lower) || symbol)
}

/// How sure a name is to hold a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strength {
    /// `password`, `secret`, `token`: whatever the value looks like.
    Strong,
    /// `key`, `credentials`, `auth`, `cookie`: unless the value is a path or very short.
    Weak,
}

/// Whether `name` (an environment variable, an option without its dashes, a JSON field, a
/// query parameter) names a secret: `DB_PASS`, `PGPASSWORD`, `--api-key`, `client_secret`,
/// `X-Auth-Token`, `aws_secret_access_key`, `-storepass`, `sig`. Names about a secret rather
/// than of it are not: `TOKEN_FILE`, `--password-stdin`, `--no-password`, `max_tokens`,
/// `PWD`.
pub fn is_secret_name(name: &str) -> bool {
    secret_name_strength(name.as_bytes()).is_some()
}

fn secret_name_strength(name: &[u8]) -> Option<Strength> {
    let name = String::from_utf8_lossy(name)
        .trim_start_matches('-')
        .trim_matches('"')
        .to_ascii_lowercase();
    if name.is_empty() || name == "pwd" || name == "oldpwd" {
        return None;
    }
    let segments: Vec<&str> = name
        .split(['_', '-', '.'])
        .filter(|s| !s.is_empty())
        .collect();
    let (first, last) = (*segments.first()?, *segments.last()?);
    if FLAG_SEGMENTS.contains(&first) && segments.len() > 1 {
        return None;
    }
    if REFERENCE_SEGMENTS.contains(&last) && segments.len() > 1 {
        return None;
    }
    let squashed: String = segments.concat();
    let strong = segments.iter().any(|s| STRONG_SEGMENTS.contains(s))
        || ["password", "passwd", "passphrase", "secret"]
            .iter()
            .any(|w| squashed.contains(w))
        || SECRET_SUFFIXES.iter().any(|w| squashed.ends_with(w));
    if strong {
        return Some(Strength::Strong);
    }
    let weak = segments.iter().any(|s| SECRET_SEGMENTS.contains(s))
        || last == "key"
        || SECRET_INFIXES.iter().any(|w| squashed.contains(w));
    weak.then_some(Strength::Weak)
}

/// The password of an `htpasswd` call whose flags include `b` (batch mode: the password is the
/// last argument).
fn htpasswd_secret(data: &[u8], args: Range<usize>) -> Option<Range<usize>> {
    let mut words = Vec::new();
    let mut at = args.start;
    while at < args.end {
        if data[at].is_ascii_whitespace() {
            at += 1;
            continue;
        }
        let end = match data[at] {
            q @ (b'"' | b'\'') => data[at + 1..args.end]
                .iter()
                .position(|&b| b == q)
                .map_or(args.end, |n| at + 1 + n + 1),
            _ => data[at..args.end]
                .iter()
                .position(u8::is_ascii_whitespace)
                .map_or(args.end, |n| at + n),
        };
        words.push(at..end);
        at = end;
    }
    let mut batch = false;
    let mut positional = Vec::new();
    let mut skip_next = false;
    for word in words {
        let w = &data[word.clone()];
        if skip_next {
            skip_next = false;
        } else if w.len() > 1 && w[0] == b'-' {
            batch |= w[1..].contains(&b'b');
            // `-C cost` and `-r rounds` take a value.
            skip_next = matches!(w, b"-C" | b"-r");
        } else {
            positional.push(word);
        }
    }
    batch.then(|| positional.pop()).flatten()
}

// === entropy ===

/// Whether `b` may be part of a token: base64 (both alphabets), hex, and the separators of
/// dotted and dashed tokens.
fn is_token_byte(b: u8) -> bool {
    // Not `=`: it separates a name from its value far more often than it pads base64.
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'_' | b'.' | b'~' | b'-')
}

/// Adds the spans of random-looking tokens in `data`.
fn entropy_spans(data: &[u8], spans: &mut Vec<Range<usize>>) {
    let mut i = 0;
    while i < data.len() {
        if !is_token_byte(data[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < data.len() && is_token_byte(data[i]) {
            i += 1;
        }
        if i - start >= MIN_TOKEN_LEN {
            run_spans(data, start..i, spans);
        }
    }
}

/// The token spans of one run of token characters.
fn run_spans(data: &[u8], run: Range<usize>, spans: &mut Vec<Range<usize>>) {
    let s = &data[run.clone()];
    // A path, absolute or relative (`.git/objects/…`, `src/main.rs`): base64 has slashes too,
    // but hardly a component that is a lower-case word.
    let is_path = s.starts_with(b"/")
        || s.starts_with(b"./")
        || s.starts_with(b"../")
        || s.starts_with(b"~/")
        || (s.contains(&b'/')
            && s.split(|&b| b == b'/')
                .any(|c| c.len() >= 3 && c.iter().all(u8::is_ascii_lowercase)));
    if !is_path {
        match shape(s) {
            Shape::Token => {
                spans.push(trim_run(data, run));
                return;
            }
            Shape::Hex(piece) => {
                let piece = run.start + piece.start..run.start + piece.end;
                if !named_as_hash(data, piece.start) {
                    spans.push(piece);
                }
                return;
            }
            Shape::Plain => {}
        }
    }
    // A path (or a relative one): each component on its own, and only mixed-case tokens, so
    // content hashes (`.git/objects/…`, `/nix/store/…`) stay readable.
    let mut at = run.start;
    for component in s.split(|&b| b == b'/') {
        let range = at..at + component.len();
        at = range.end + 1;
        if component.len() >= MIN_TOKEN_LEN
            && shape(component) == Shape::Token
            && is_mixed_case(component)
        {
            spans.push(range);
        }
    }
}

/// A run without the punctuation around it (`.`, `-`, `/` at its ends).
fn trim_run(data: &[u8], run: Range<usize>) -> Range<usize> {
    let s = &data[run.clone()];
    let start = s
        .iter()
        .position(|&b| b.is_ascii_alphanumeric())
        .unwrap_or(0);
    let end = s
        .iter()
        .rposition(|&b| b.is_ascii_alphanumeric())
        .map_or(s.len(), |i| i + 1);
    run.start + start..run.start + end
}

/// What a run of token characters is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Shape {
    /// Random-looking: a secret.
    Token,
    /// A hexadecimal piece (its range in the run) of [`MIN_HEX_LEN`] digits or more: a secret
    /// unless a hash names it.
    Hex(Range<usize>),
    /// Words, numbers, slugs, identifiers, UUIDs.
    Plain,
}

/// Whether `s` is a token, as the entropy test judges it (see the module docs).
pub fn is_token(s: &str) -> bool {
    shape(s.as_bytes()) != Shape::Plain
}

fn shape(s: &[u8]) -> Shape {
    let trimmed = {
        let start = s.iter().position(|&b| b.is_ascii_alphanumeric());
        let end = s.iter().rposition(|&b| b.is_ascii_alphanumeric());
        match (start, end) {
            (Some(a), Some(b)) => &s[a..=b],
            _ => return Shape::Plain,
        }
    };
    if trimmed.len() < MIN_TOKEN_LEN {
        return Shape::Plain;
    }
    let offset = trimmed.as_ptr() as usize - s.as_ptr() as usize;
    let mut longest = 0..0;
    let mut at = 0;
    for piece in trimmed.split(|b| matches!(b, b'-' | b'_' | b'.' | b'~')) {
        if piece.len() > longest.len() {
            longest = at..at + piece.len();
        }
        at += piece.len() + 1;
    }
    if longest.len() < MIN_PIECE_LEN {
        return Shape::Plain;
    }
    let piece = &trimmed[longest.clone()];
    if piece.len() >= MIN_HEX_LEN
        && piece.iter().all(u8::is_ascii_hexdigit)
        && piece.iter().any(u8::is_ascii_digit)
        && entropy(piece) >= MIN_ENTROPY
    {
        return Shape::Hex(offset + longest.start..offset + longest.end);
    }
    // The longest piece decides: a token is random throughout, while a run that only carries
    // one long part (`backup-20240101T120000Z.tar.gz`) is judged by that part.
    let digits = piece.iter().filter(|b| b.is_ascii_digit()).count();
    let letters: Vec<u8> = piece
        .iter()
        .copied()
        .filter(u8::is_ascii_alphabetic)
        .collect();
    if digits == 0 || letters.is_empty() {
        return Shape::Plain;
    }
    let vowels =
        letters.iter().filter(|b| b"aeiouAEIOU".contains(b)).count() as f64 / letters.len() as f64;
    // Changes of class alone tell random strings (about 60%) from identifiers (below 30%);
    // in between, few vowels decide.
    let changes = transitions(piece);
    let random = changes >= MIN_TRANSITIONS
        && (vowels <= MAX_VOWELS || changes >= CLEAR_TRANSITIONS)
        && entropy(piece) >= MIN_ENTROPY;
    // Without mixed case a token has fewer tells: ask for more length.
    let long_enough = is_mixed_case(piece) || piece.len() >= 24;
    if random && long_enough {
        Shape::Token
    } else {
        Shape::Plain
    }
}

fn is_mixed_case(s: &[u8]) -> bool {
    s.iter().any(u8::is_ascii_uppercase) && s.iter().any(u8::is_ascii_lowercase)
}

/// Share of adjacent character pairs whose class (upper, lower, digit, other) differs.
fn transitions(s: &[u8]) -> f64 {
    let class = |b: u8| match b {
        b'A'..=b'Z' => 0,
        b'a'..=b'z' => 1,
        b'0'..=b'9' => 2,
        _ => 3,
    };
    if s.len() < 2 {
        return 0.0;
    }
    let changes = s.windows(2).filter(|w| class(w[0]) != class(w[1])).count();
    changes as f64 / (s.len() - 1) as f64
}

/// Shannon entropy of the bytes of `s`, in bits per byte.
fn entropy(s: &[u8]) -> f64 {
    let mut counts = [0u32; 256];
    for &b in s {
        counts[b as usize] += 1;
    }
    let n = s.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

/// Whether the hexadecimal string at `at` is named a hash: a hash word shortly before it on
/// its line, or a command on its line that works with hashes and object ids.
fn named_as_hash(data: &[u8], at: usize) -> bool {
    let line_start = data[..at]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let line_end = data[at..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(data.len(), |i| at + i);
    let before =
        String::from_utf8_lossy(&data[line_start.max(at.saturating_sub(HASH_LOOKBACK))..at])
            .to_ascii_lowercase();
    if HASH_WORDS.iter().any(|w| before.contains(w)) {
        return true;
    }
    data[line_start..line_end]
        .split(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'/' | b'.')))
        .map(|word| word.rsplit(|&b| b == b'/').next().unwrap_or(word))
        .any(|word| HASH_TOOLS.iter().any(|t| t.as_bytes() == word))
}

/// Sorts spans and merges overlapping or touching ones.
fn merge(mut spans: Vec<Range<usize>>) -> Vec<Range<usize>> {
    spans.retain(|s| s.start < s.end);
    spans.sort_by_key(|s| (s.start, s.end));
    let mut merged: Vec<Range<usize>> = Vec::with_capacity(spans.len());
    for span in spans {
        match merged.last_mut() {
            Some(last) if span.start <= last.end => last.end = last.end.max(span.end),
            _ => merged.push(span),
        }
    }
    merged
}

/// `s` cut to [`MAX_VALUE_CHARS`] characters, saying how much was left out.
fn shorten(s: &str) -> String {
    match s.char_indices().nth(MAX_VALUE_CHARS) {
        None => s.to_string(),
        Some((cut, _)) => format!("{}…[+{} bytes]", &s[..cut], s.len() - cut),
    }
}

fn floor_char_boundary(s: &str, at: usize) -> usize {
    (0..=at.min(s.len()))
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
