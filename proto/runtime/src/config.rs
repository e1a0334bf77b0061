//! The configuration seam every service shares: reading the config file key by key so every bad value and unknown key is named, collecting problems, rendering them, and the exit code of a bad configuration.
//!
//! Precedence is the same everywhere: flags, then `EXECMESH_…` environment variables (clap reads
//! both), then the file, then defaults. Each service checks its own keys; this module only
//! collects and reports.

use std::fmt;
use std::path::Path;
use std::process::ExitCode;

use serde::de::DeserializeOwned;

/// Exit code of a bad command line or configuration (sysexits `EX_USAGE`).
pub const EXIT_USAGE: u8 = 64;

/// Parses the command line, or says how to exit: `--help` and `--version` print and exit 0, a
/// bad command line prints clap's message and exits [`EXIT_USAGE`].
pub fn parse_cli<P: clap::Parser>() -> Result<P, ExitCode> {
    P::try_parse().map_err(|e| {
        let _ = e.print();
        if e.use_stderr() {
            ExitCode::from(EXIT_USAGE)
        } else {
            ExitCode::SUCCESS
        }
    })
}

/// Parses the command line and loads the configuration with `load`, or says how to exit: as
/// [`parse_cli`], then a configuration that cannot be used is reported by [`invalid`].
pub fn parse_and_load<P: clap::Parser, C, E: fmt::Display>(
    load: impl FnOnce(&P) -> Result<C, E>,
) -> Result<(P, C), ExitCode> {
    let cli = parse_cli::<P>()?;
    match load(&cli) {
        Ok(config) => Ok((cli, config)),
        Err(e) => Err(invalid(&e)),
    }
}

/// Reports a configuration that cannot be used, every problem named, and gives the exit code.
pub fn invalid(error: &dyn fmt::Display) -> ExitCode {
    eprintln!("invalid configuration: {error}");
    ExitCode::from(EXIT_USAGE)
}

/// Why a configuration is unusable: every problem, one sentence each, not just the first.
#[derive(Debug, Default, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", Rendered(problems))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

// === impl ConfigError ===

impl ConfigError {
    /// A configuration with this one problem.
    pub fn one(problem: impl Into<String>) -> Self {
        Self {
            problems: vec![problem.into()],
        }
    }

    /// `value` when no problem was found, else every problem.
    pub fn or_ok<T>(problems: Vec<String>, value: T) -> Result<T, Self> {
        if problems.is_empty() {
            Ok(value)
        } else {
            Err(Self { problems })
        }
    }
}

/// Problems as an operator reads them: one alone as it is, several as a counted list.
pub struct Rendered<'a>(pub &'a [String]);

impl fmt::Display for Rendered<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            [one] => f.write_str(one),
            many => {
                write!(f, "{} bad values:", many.len())?;
                for p in many {
                    write!(f, "\n  - {p}")?;
                }
                Ok(())
            }
        }
    }
}

/// The settings whose every key comes from `over` when set there, else from `under` (flags and
/// environment over the file): `config`, the flag naming the file, from `over`; the flattened
/// NATS settings key by key; then each listed key. Written in the settings' own `impl`.
#[macro_export]
macro_rules! layered {
    ($over:ident over $under:ident: $($field:ident),* $(,)?) => {
        Self {
            config: $over.config,
            nats: $over.nats.or($under.nats),
            telemetry: $over.telemetry.or($under.telemetry),
            $($field: $over.$field.or($under.$field)),*
        }
    };
}

/// The keys a settings struct takes from a file: the ids of its flags (clap names each after
/// its field, flattened ones included), so a key is declared once, where its flag is.
pub fn keys_of<A: clap::Args>() -> Vec<String> {
    A::augment_args(clap::Command::new("keys"))
        .get_arguments()
        .map(|arg| arg.get_id().to_string())
        .collect()
}

/// Reads a config file as a TOML table.
pub fn read_table(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::one(format!("cannot read config file {}: {e}", path.display()))
    })?;
    text.parse::<toml::Table>()
        .map_err(|e| ConfigError::one(format!("config file {}: {e}", path.display())))
}

/// Reads the settings `T` from the config file at `path`: its keys are those of `T`'s flags
/// (but `config`, the flag that names the file) and `file_only`, the keys no flag sets. Every
/// bad value and unknown key is a problem; only a file that cannot be read or parsed at all is
/// an error.
pub fn read_file<T: clap::Args + DeserializeOwned + Default>(
    path: &Path,
    file_only: &[&str],
    problems: &mut Vec<String>,
) -> Result<T, ConfigError> {
    let table = read_table(path)?;
    let mut known = keys_of::<T>();
    known.retain(|key| key != "config");
    known.extend(file_only.iter().map(|key| key.to_string()));
    Ok(from_table(table, &known, path, problems))
}

/// Reads `T` from the `file`'s table key by key: a key not in `known` and a value of the wrong
/// type are each a problem naming the key (serde would stop at the first, and cannot refuse
/// unknown keys of a flattened struct); the good keys make up `T`.
pub fn from_table<T: DeserializeOwned + Default>(
    table: toml::Table,
    known: &[String],
    file: &Path,
    problems: &mut Vec<String>,
) -> T {
    let mut good = toml::Table::new();
    for (key, value) in table {
        if !known.contains(&key) {
            problems.push(format!("unknown key `{key}` in {}", file.display()));
            continue;
        }
        let alone = toml::Table::from_iter([(key.clone(), value.clone())]);
        match toml::Value::Table(alone).try_into::<T>() {
            Ok(_) => {
                good.insert(key, value);
            }
            Err(e) => problems.push(format!(
                "{key} in {}: {}",
                file.display(),
                e.message().trim()
            )),
        }
    }
    toml::Value::Table(good).try_into().unwrap_or_else(|e| {
        problems.push(format!("config file {}: {e}", file.display()));
        T::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nats_settings::NatsSettings;

    #[derive(Debug, Default, clap::Args, serde::Deserialize)]
    struct Settings {
        #[arg(long)]
        batch: Option<u64>,
        #[command(flatten)]
        #[serde(flatten)]
        nats: NatsSettings,
    }

    #[test]
    fn every_bad_and_unknown_key_of_a_file_is_named_and_the_good_ones_are_read() {
        let table: toml::Table = "batch = \"many\"\nnats_url = \"nats://a:4222\"\n\
                                  nats_tls_ca = 3\nnats_ulr = \"x\"\n"
            .parse()
            .expect("toml");
        let known = keys_of::<Settings>();
        assert!(
            known.contains(&"nats_tls_required".to_string()),
            "{known:?}"
        );
        let mut problems = Vec::new();
        let settings: Settings = from_table(table, &known, Path::new("s.toml"), &mut problems);
        assert_eq!(settings.nats.nats_url.as_deref(), Some("nats://a:4222"));
        assert_eq!(settings.batch, None);
        assert_eq!(problems.len(), 3, "{problems:#?}");
        let text = ConfigError { problems }.to_string();
        for needle in [
            "3 bad values",
            "batch in s.toml",
            "nats_tls_ca in s.toml",
            "`nats_ulr`",
        ] {
            assert!(text.contains(needle), "`{needle}` missing from:\n{text}");
        }
    }
}
