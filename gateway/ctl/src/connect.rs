//! Where the admin API is and how to reach it: settings from flags, environment, config file and
//! the quickstart's state file; the channel (plaintext, TLS, mTLS) with the bearer token; and
//! connection and gRPC failures in words an operator can act on.

use std::error::Error as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::CtlError;
use crate::admin_client::{self, AdminClient, Bearer, ClientTls, ConnectError};
use crate::cli::Connection;

/// Where the admin API listens unless told otherwise (the gateway's default `admin_addr`).
pub const DEFAULT_ADDR: &str = "127.0.0.1:8421";
/// The config file read when `--config` is not given (under `$XDG_CONFIG_HOME` or `~/.config`).
const DEFAULT_CONFIG: &str = "execmesh/ctl.toml";
/// The quickstart's state file, looked for in the working directory and its parents.
const QUICKSTART_FILE: &str = ".execmesh/quickstart.json";
/// How long connecting (TCP and TLS) may take before we say the gateway cannot be reached.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How to get a token the admin API accepts, for messages.
const MINT_HINT: &str = "execmesh-gateway token mint --user NAME --scope admin";

/// The connection settings after every source was consulted.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The admin API's URL with its scheme (`http://…` or `https://…`).
    pub url: String,
    /// CA certificate(s) to verify the gateway with; `None`: the system's roots.
    pub ca: Option<PathBuf>,
    /// Client certificate and key for mTLS.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// The bearer token, if any source gave one.
    pub token: Option<String>,
    /// Where the token came from (`--token`, a file, the quickstart), for messages.
    pub token_source: Option<String>,
    /// Longest a unary request may take.
    pub timeout: Duration,
}

/// The optional config file (`~/.config/execmesh/ctl.toml`). Relative paths are relative to
/// the file's directory; `~/` is the home directory.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    addr: Option<String>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    token: Option<String>,
    token_file: Option<PathBuf>,
}

/// What `deploy/quickstart.sh` writes that the ctl uses (the file has more keys).
#[derive(Debug, Default, Deserialize)]
struct Quickstart {
    admin_addr: Option<String>,
    admin_token: Option<String>,
}

// === impl Settings ===

impl Settings {
    /// Resolves every setting: flags (and their `EXECMESH_ADMIN_*` variables, which clap reads)
    /// first, then the config file, then `.execmesh/quickstart.json`, then the defaults.
    pub fn resolve(flags: &Connection) -> Result<Self, CtlError> {
        let file = load_config(flags.config.as_deref())?;
        // The quickstart's token is only sent to the quickstart's own gateway.
        let quickstart = if flags.addr.is_none() && file.addr.is_none() {
            find_quickstart()?
        } else {
            None
        };

        let ca = flags.ca.clone().or(file.ca);
        let cert = flags.cert.clone().or(file.cert);
        let key = flags.key.clone().or(file.key);
        let identity = match (cert, key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => {
                return Err(CtlError::Usage(
                    "--cert and --key go together: give both (a client certificate and its key) \
                     or neither"
                        .into(),
                ));
            }
        };
        let tls_wanted = ca.is_some() || identity.is_some();

        let addr = flags
            .addr
            .clone()
            .or(file.addr)
            .or_else(|| quickstart.as_ref().and_then(|q| q.1.admin_addr.clone()))
            .unwrap_or_else(|| DEFAULT_ADDR.to_string());
        let url = admin_url(&addr, tls_wanted)?;

        let (token, token_source) = if let Some(token) = &flags.token {
            (
                Some(token.clone()),
                Some("--token / EXECMESH_ADMIN_TOKEN".to_string()),
            )
        } else if let Some(path) = &flags.token_file {
            (Some(read_token(path)?), Some(path.display().to_string()))
        } else if let Some(token) = file.token {
            (Some(token), Some("the config file's token".to_string()))
        } else if let Some(path) = file.token_file {
            let token = read_token(&path)?;
            (Some(token), Some(path.display().to_string()))
        } else if let Some((path, q)) = quickstart.filter(|(_, q)| q.admin_token.is_some()) {
            (q.admin_token, Some(path.display().to_string()))
        } else {
            (None, None)
        };
        let token = token
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());

        Ok(Self {
            url,
            ca,
            identity,
            token,
            token_source,
            timeout: Duration::from_secs(flags.timeout.max(1)),
        })
    }

    /// Connects to the admin API (TCP, TLS) now, so an unreachable gateway is reported before
    /// any request is made.
    pub async fn connect(self) -> Result<Admin, CtlError> {
        let bearer = Bearer::new(self.token.as_deref()).map_err(|_| {
            CtlError::Usage(format!(
                "the token from {} holds characters a token cannot have",
                self.token_source.as_deref().unwrap_or("the settings")
            ))
        })?;
        let tls = if self.url.starts_with("https://") {
            let identity = match &self.identity {
                Some((cert, key)) => Some((read_pem(cert, "--cert")?, read_pem(key, "--key")?)),
                None => None,
            };
            Some(ClientTls {
                ca: self
                    .ca
                    .as_deref()
                    .map(|ca| read_pem(ca, "--ca"))
                    .transpose()?,
                identity,
                domain: None,
            })
        } else {
            None
        };
        let channel = admin_client::connect(&self.url, tls.as_ref(), CONNECT_TIMEOUT)
            .await
            .map_err(|e| match e {
                ConnectError::Url { url, source } => {
                    CtlError::Usage(format!("--addr {url}: {source}"))
                }
                ConnectError::Tls(e) => CtlError::Usage(format!("TLS settings: {}", chain(&e))),
                ConnectError::Connect(e) => connect_error(&self.url, &e),
            })?;
        Ok(Admin {
            client: AdminClient::with_bearer(channel, bearer),
            settings: self,
        })
    }
}

/// `addr` as a URL: kept when it has a scheme, else `https://` when TLS settings are given,
/// `http://` otherwise.
fn admin_url(addr: &str, tls_wanted: bool) -> Result<String, CtlError> {
    let addr = addr.trim().trim_end_matches('/');
    if addr.is_empty() || addr == "off" {
        return Err(CtlError::Usage(format!(
            "the admin address `{addr}` is not an address: give --addr https://HOST:PORT (or \
             http://127.0.0.1:PORT)"
        )));
    }
    let url = if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_string()
    } else if addr.contains("://") {
        return Err(CtlError::Usage(format!(
            "--addr {addr}: the admin API speaks http:// or https://"
        )));
    } else if tls_wanted {
        format!("https://{addr}")
    } else {
        format!("http://{addr}")
    };
    match url.parse::<http::Uri>() {
        Ok(uri) if uri.host().is_some() => Ok(url),
        _ => Err(CtlError::Usage(format!(
            "--addr {addr} is not an address: give HOST:PORT or a URL such as \
             https://mesh-admin.example.com:8421"
        ))),
    }
}

/// The config file: `explicit` must exist; the default one is used when it does.
fn load_config(explicit: Option<&Path>) -> Result<FileSettings, CtlError> {
    let (path, required) = match explicit {
        Some(path) => (path.to_path_buf(), true),
        None => match default_config_path() {
            Some(path) => (path, false),
            None => return Ok(FileSettings::default()),
        },
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
            return Ok(FileSettings::default());
        }
        Err(e) => {
            return Err(CtlError::Usage(format!(
                "cannot read the config file {}: {e}",
                path.display()
            )));
        }
    };
    let mut file: FileSettings = toml::from_str(&text).map_err(|e| {
        CtlError::Usage(format!(
            "the config file {} is not valid (keys: addr, ca, cert, key, token, token_file): {e}",
            path.display()
        ))
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    for p in [
        &mut file.ca,
        &mut file.cert,
        &mut file.key,
        &mut file.token_file,
    ]
    .into_iter()
    .flatten()
    {
        *p = file_path(base, p);
    }
    Ok(file)
}

/// `~/.config/execmesh/ctl.toml`, or under `$XDG_CONFIG_HOME` when set.
fn default_config_path() -> Option<PathBuf> {
    let dir = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| home().map(|h| h.join(".config")))?;
    Some(dir.join(DEFAULT_CONFIG))
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

/// A path from the config file: `~/` expanded, relative ones taken from the file's directory.
fn file_path(base: &Path, path: &Path) -> PathBuf {
    if let Ok(rest) = path.strip_prefix("~")
        && let Some(home) = home()
    {
        return home.join(rest);
    }
    if path.is_relative() {
        base.join(path)
    } else {
        path.to_path_buf()
    }
}

/// The nearest `.execmesh/quickstart.json` from the working directory up, if any.
fn find_quickstart() -> Result<Option<(PathBuf, Quickstart)>, CtlError> {
    let Ok(cwd) = std::env::current_dir() else {
        return Ok(None);
    };
    for dir in cwd.ancestors() {
        let path = dir.join(QUICKSTART_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let quickstart = serde_json::from_slice(&bytes).map_err(|e| {
                    CtlError::Usage(format!("{} is not valid JSON: {e}", path.display()))
                })?;
                return Ok(Some((path, quickstart)));
            }
            // Unreadable (not ours, a directory): keep looking further up.
            Err(_) => continue,
        }
    }
    Ok(None)
}

fn read_token(path: &Path) -> Result<String, CtlError> {
    std::fs::read_to_string(path)
        .map(|t| t.trim().to_string())
        .map_err(|e| {
            CtlError::Usage(format!(
                "cannot read the token file {}: {e}",
                path.display()
            ))
        })
}

fn read_pem(path: &Path, flag: &str) -> Result<Vec<u8>, CtlError> {
    std::fs::read(path)
        .map_err(|e| CtlError::Usage(format!("cannot read {flag} {}: {e}", path.display())))
}

/// An error and its sources, innermost last, without repeats.
fn chain(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// The innermost `io::Error` of an error chain, if any.
fn io_kind(e: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut kind = None;
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            kind = Some(io.kind());
        }
        source = s.source();
    }
    kind
}

/// Why connecting failed, in words, with what to check.
fn connect_error(url: &str, e: &(dyn std::error::Error + 'static)) -> CtlError {
    let detail = chain(e);
    let lower = detail.to_ascii_lowercase();
    let reason = match io_kind(e) {
        Some(std::io::ErrorKind::ConnectionRefused) => {
            "connection refused (is the gateway running with admin_addr set?)".to_string()
        }
        Some(std::io::ErrorKind::TimedOut) => format!(
            "no answer within {} s (is the address right, and is a firewall in the way?)",
            CONNECT_TIMEOUT.as_secs()
        ),
        _ if lower.contains("timed out") => format!(
            "no answer within {} s (is the address right, and is a firewall in the way?)",
            CONNECT_TIMEOUT.as_secs()
        ),
        _ if lower.contains("certificate")
            || lower.contains("tls")
            || lower.contains("handshake") =>
        {
            tls_hint(&detail)
        }
        _ if lower.contains("dns") || lower.contains("lookup") || lower.contains("resolve") => {
            format!("{detail} (is the host name right?)")
        }
        _ => detail,
    };
    CtlError::Connect {
        url: url.to_string(),
        reason,
    }
}

/// A TLS failure with what usually fixes it.
fn tls_hint(detail: &str) -> String {
    let lower = detail.to_ascii_lowercase();
    let hint = if lower.contains("unknownissuer") || lower.contains("unknown issuer") {
        "the gateway's certificate is not signed by a CA you trust: pass it with --ca"
    } else if lower.contains("notvalidforname") || lower.contains("not valid for") {
        "the gateway's certificate does not name the host in --addr: use a name it was issued for"
    } else if lower.contains("certificaterequired") || lower.contains("certificate required") {
        "the gateway requires a client certificate: pass --cert and --key"
    } else if lower.contains("bad certificate")
        || lower.contains("badcertificate")
        || lower.contains("unknown ca")
        || lower.contains("unknownca")
        || lower.contains("decrypterror")
    {
        "the gateway refused your client certificate: use one signed by its admin_client_ca"
    } else if lower.contains("invalidcontenttype")
        || lower.contains("corrupt message")
        || lower.contains("invalid content type")
    {
        "the address does not speak TLS: try http:// (plaintext) instead"
    } else {
        "check --ca, --cert and --key"
    };
    format!("TLS failed: {detail} ({hint})")
}

/// The admin API's clients and the settings they were made with.
pub struct Admin {
    /// The five services over one connection, with the token.
    pub client: AdminClient,
    /// What the connection was made with, for requests' timeouts and error messages.
    pub settings: Settings,
}

// === impl Admin ===

impl Admin {
    /// Makes one unary `call` carrying `message` (limited to the configured timeout) and
    /// returns the answer, or the failure in words: every command asks the gateway this way,
    /// e.g. `admin.call(request, async |c, r| c.hosts.list(r).await)`.
    pub async fn call<Q, A>(
        &mut self,
        message: Q,
        call: impl AsyncFnOnce(&mut AdminClient, Request<Q>) -> Result<Response<A>, Status>,
    ) -> Result<A, CtlError> {
        let mut request = Request::new(message);
        request.set_timeout(self.settings.timeout);
        let reply = call(&mut self.client, request).await;
        self.answer(reply)
    }

    /// Opens a server stream with `open` carrying `message`, with no time limit (watches run
    /// until Ctrl-C), and returns the stream, or the failure in words.
    pub async fn open<Q, S>(
        &mut self,
        message: Q,
        open: impl AsyncFnOnce(&mut AdminClient, Request<Q>) -> Result<Response<S>, Status>,
    ) -> Result<S, CtlError> {
        let reply = open(&mut self.client, Request::new(message)).await;
        self.answer(reply)
    }

    /// A failed call in words: the gateway's refusals exit 1, a connection lost on the way
    /// exits 3.
    pub fn fail(&self, status: Status) -> CtlError {
        failure(&self.settings, status)
    }

    /// What a call made with [`Admin::unary`] or [`Admin::stream`] answered, or its failure in
    /// words.
    fn answer<R>(&self, reply: Result<Response<R>, Status>) -> Result<R, CtlError> {
        reply.map(Response::into_inner).map_err(|s| self.fail(s))
    }

    /// The next message of a server stream; `None` once the gateway ends it.
    pub async fn next<T>(&self, stream: &mut Streaming<T>) -> Result<Option<T>, CtlError> {
        stream.message().await.map_err(|s| self.fail(s))
    }

    /// The next event of a watch. Only the operator ends a watch, so the gateway ending it is a
    /// lost connection (exit 3).
    pub async fn next_event<T>(&self, stream: &mut Streaming<T>) -> Result<T, CtlError> {
        match self.next(stream).await? {
            Some(event) => Ok(event),
            None => {
                Err(self.ended("the gateway ended the watch (shutting down?); watch again".into()))
            }
        }
    }

    /// The gateway ended a stream before its end, for `reason` (exit 3).
    pub fn ended(&self, reason: String) -> CtlError {
        CtlError::Connect {
            url: self.settings.url.clone(),
            reason,
        }
    }
}

/// A gRPC status in words an operator can act on.
pub fn failure(settings: &Settings, status: Status) -> CtlError {
    let message = status.message().trim().to_string();
    // Statuses the gateway sent carry no source; those made on this side from a transport
    // failure do.
    if let Some(source) = status.source() {
        let detail = chain(source);
        let lower = detail.to_ascii_lowercase();
        let reason = if lower.contains("certificate") || lower.contains("tls") {
            tls_hint(&detail)
        } else if settings.url.starts_with("https://")
            && (lower.contains("closed") || lower.contains("reset") || lower.contains("canceled"))
        {
            // Under TLS 1.3 a server refuses a client certificate after the client considers
            // the handshake done, so the refusal arrives as a closed connection.
            let hint = if settings.identity.is_some() {
                "the gateway may have refused your client certificate: use one signed by its \
                 admin_client_ca"
            } else {
                "if the gateway requires client certificates (admin_client_ca), pass --cert and \
                 --key"
            };
            format!("{detail} ({hint})")
        } else if settings.url.starts_with("http://")
            && (lower.contains("frame") || lower.contains("protocol") || lower.contains("closed"))
        {
            format!("{message}: {detail} (does the gateway serve TLS? use https:// with --ca)")
        } else if message.is_empty() || detail.contains(&message) {
            detail
        } else {
            format!("{message}: {detail}")
        };
        return CtlError::Connect {
            url: settings.url.clone(),
            reason,
        };
    }
    let text = match status.code() {
        Code::Unauthenticated => match &settings.token_source {
            None => format!(
                "the gateway wants a token: {message}. Give one with --token-file, --token or \
                 EXECMESH_ADMIN_TOKEN (mint one with `{MINT_HINT}`)"
            ),
            Some(source) => format!(
                "the gateway did not accept the token from {source}: {message}. Mint a new one \
                 with `{MINT_HINT}`"
            ),
        },
        Code::PermissionDenied => format!("permission denied: {message}"),
        Code::NotFound => format!("not found: {message}"),
        Code::InvalidArgument => format!("the gateway refused the request: {message}"),
        Code::FailedPrecondition => format!("cannot do that now: {message}"),
        Code::AlreadyExists => format!("already exists: {message}"),
        Code::Unavailable => format!("unavailable: {message}"),
        Code::DeadlineExceeded => format!(
            "timed out: {message} (the gateway or the mesh took longer than --timeout {} s)",
            settings.timeout.as_secs()
        ),
        Code::Unimplemented => format!(
            "this gateway does not serve that call ({message}); is it older than execmeshctl?"
        ),
        Code::ResourceExhausted => format!("too much at once: {message}"),
        code => format!("{}: {message}", code.description()),
    };
    CtlError::Refused(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_without_scheme_is_https_only_with_tls_settings() {
        assert_eq!(
            admin_url("127.0.0.1:8421", false).expect("url"),
            "http://127.0.0.1:8421"
        );
        assert_eq!(
            admin_url("admin.example.com:8421", true).expect("url"),
            "https://admin.example.com:8421"
        );
        assert_eq!(
            admin_url("https://admin.example.com:8421/", false).expect("url"),
            "https://admin.example.com:8421"
        );
        assert!(matches!(admin_url("off", false), Err(CtlError::Usage(_))));
        assert!(matches!(
            admin_url("nats://127.0.0.1:4222", false),
            Err(CtlError::Usage(_))
        ));
    }

    #[test]
    fn config_file_paths_are_relative_to_the_file() {
        assert_eq!(
            file_path(Path::new("/etc/execmesh"), Path::new("ca.pem")),
            PathBuf::from("/etc/execmesh/ca.pem")
        );
        assert_eq!(
            file_path(Path::new("/etc/execmesh"), Path::new("/srv/ca.pem")),
            PathBuf::from("/srv/ca.pem")
        );
    }

    #[test]
    fn a_refusal_names_where_the_token_came_from() {
        let settings = Settings {
            url: "http://127.0.0.1:8421".into(),
            ca: None,
            identity: None,
            token: Some("x".into()),
            token_source: Some("/home/op/admin.token".into()),
            timeout: Duration::from_secs(60),
        };
        let e = failure(
            &settings,
            Status::unauthenticated("invalid bearer token: expired"),
        );
        let text = e.to_string();
        assert!(text.contains("/home/op/admin.token"), "{text}");
        assert!(text.contains("token mint"), "{text}");
        assert_eq!(e.exit_code(), 1);
    }
}
