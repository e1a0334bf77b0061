//! The NATS settings every service takes, declared once: one flag, one `EXECMESH_…` variable and one config-file key each, flattened into each service's settings.

use std::path::{Path, PathBuf};

/// Where NATS is when no `nats_url` is given.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// Where NATS is and how a service authenticates to it and verifies it. All optional here: a
/// flag wins over its environment variable, which wins over the file; each service resolves
/// the rest to its defaults.
#[derive(Debug, Default, Clone, PartialEq, clap::Args, serde::Deserialize)]
pub struct NatsSettings {
    /// NATS server URL; several URLs separated by commas are tried in turn
    /// [default: nats://127.0.0.1:4222].
    #[arg(long, global = true, env = "EXECMESH_NATS_URL", value_name = "URL")]
    pub nats_url: Option<String>,
    /// Credentials file (JWT + nkey seed, `.creds`) to authenticate to NATS with.
    #[arg(long, global = true, env = "EXECMESH_NATS_CREDS", value_name = "PATH")]
    pub nats_creds: Option<PathBuf>,
    /// File holding this service's NATS nkey seed (`SU…`) to authenticate with; the service
    /// also signs the records it writes with it.
    #[arg(
        long,
        global = true,
        env = "EXECMESH_NATS_NKEY_SEED",
        value_name = "PATH"
    )]
    pub nats_nkey_seed: Option<PathBuf>,
    /// CA certificate (PEM) to verify the NATS server with; setting it turns TLS on.
    #[arg(long, global = true, env = "EXECMESH_NATS_TLS_CA", value_name = "PATH")]
    pub nats_tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) to present to a NATS server that verifies clients
    /// (`verify: true`); needs `nats_tls_key`.
    #[arg(
        long,
        global = true,
        env = "EXECMESH_NATS_TLS_CERT",
        value_name = "PATH"
    )]
    pub nats_tls_cert: Option<PathBuf>,
    /// Private key (PEM) of `nats_tls_cert`.
    #[arg(
        long,
        global = true,
        env = "EXECMESH_NATS_TLS_KEY",
        value_name = "PATH"
    )]
    pub nats_tls_key: Option<PathBuf>,
    /// Refuse to talk to NATS without TLS [default: false].
    #[arg(long, global = true, env = "EXECMESH_NATS_TLS_REQUIRED", value_name = "BOOL",
          num_args = 0..=1, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub nats_tls_required: Option<bool>,
}

// === impl NatsSettings ===

impl NatsSettings {
    /// Each key from `self` when set there, else from `under` (flags and environment over the
    /// file).
    pub fn or(self, under: Self) -> Self {
        Self {
            nats_url: self.nats_url.or(under.nats_url),
            nats_creds: self.nats_creds.or(under.nats_creds),
            nats_nkey_seed: self.nats_nkey_seed.or(under.nats_nkey_seed),
            nats_tls_ca: self.nats_tls_ca.or(under.nats_tls_ca),
            nats_tls_cert: self.nats_tls_cert.or(under.nats_tls_cert),
            nats_tls_key: self.nats_tls_key.or(under.nats_tls_key),
            nats_tls_required: self.nats_tls_required.or(under.nats_tls_required),
        }
    }

    /// The settings resolved to the values a service connects with: the default URL where none
    /// is given, plain text allowed unless TLS is required.
    pub fn resolve(self) -> NatsConfig {
        NatsConfig {
            url: self
                .nats_url
                .unwrap_or_else(|| DEFAULT_NATS_URL.to_string()),
            creds: self.nats_creds,
            nkey_seed: self.nats_nkey_seed,
            tls_ca: self.nats_tls_ca,
            tls_cert: self.nats_tls_cert,
            tls_key: self.nats_tls_key,
            tls_required: self.nats_tls_required.unwrap_or(false),
        }
    }
}

/// Where NATS is and how a service authenticates to it and verifies it, resolved: the part of
/// every service's configuration that [`crate::nats_connection::connect`] reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsConfig {
    /// NATS server URL, or several separated by commas (tried in turn).
    pub url: String,
    /// `.creds` file (user JWT and nkey seed) to authenticate with.
    pub creds: Option<PathBuf>,
    /// File with an nkey seed to authenticate with (services also sign their records with it).
    pub nkey_seed: Option<PathBuf>,
    /// CA certificate that verifies the server; setting it turns TLS on.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate presented to a server that verifies clients; goes with `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// Private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Refuse a server that does not speak TLS.
    pub tls_required: bool,
}

// === impl NatsConfig ===

impl NatsConfig {
    /// `url` with no credentials and no TLS: a development mesh, or the start of a test's
    /// configuration.
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_string(),
            creds: None,
            nkey_seed: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            tls_required: false,
        }
    }

    /// The configured server URLs, split at commas.
    pub fn urls(&self) -> impl Iterator<Item = &str> {
        self.url.split(',').map(str::trim).filter(|u| !u.is_empty())
    }

    /// The client certificate and its key, when both are given.
    pub fn tls_client(&self) -> Option<(&Path, &Path)> {
        self.tls_cert.as_deref().zip(self.tls_key.as_deref())
    }

    /// Adds [`TLS_PAIR`] to `problems` when only one of the certificate and its key is given.
    pub fn check_tls_pair(&self, problems: &mut Vec<String>) {
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            problems.push(TLS_PAIR.to_string());
        }
    }
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self::new(DEFAULT_NATS_URL)
    }
}

/// The problem of a client certificate without its key, or a key without its certificate.
pub const TLS_PAIR: &str = "nats_tls_cert and nats_tls_key go together: give both or neither";
