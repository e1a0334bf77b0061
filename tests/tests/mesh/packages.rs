//! The .deb packages, end to end on this machine: built from the suite's binaries, installed as root, their units accepted by systemd-analyze, their services started the way their units start them with the installed configuration, an edited conffile kept across a reinstall, and purged.
//!
//! systemd is not PID 1 here, so no unit can be started under systemd: each service is started
//! from its installed unit file by `ServiceUnit` (ExecStart as the unit's User, its Environment
//! and LoadCredential), which is what systemd would run. Everything is removed again when the
//! test ends, also when it fails (`SystemInstall`).

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use execmesh_tests::nats_accounts::SecuredMesh;
use execmesh_tests::packages::{self, Debs, ETC, PACKAGES, STATE, SystemInstall, run};
use execmesh_tests::process::ChildProcess;
use execmesh_tests::service_unit::{ServiceUnit, UnitError};
use execmesh_tests::{McpClient, eventually};
use serde_json::json;

/// The host the packaged agent serves.
const HOST: &str = "pkg-host";
/// How long a packaged service may take to be ready (debug binaries, a busy machine).
const READY: Duration = Duration::from_secs(60);
/// The installed units.
const UNITS: &str = "/usr/lib/systemd/system";

/// What each package must hold (beyond directories): path, mode, and whether it is a conffile.
const EXPECTED: &[(&str, &str, u32, bool)] = &[
    (
        "execmesh-gateway",
        "/usr/bin/execmesh-gateway",
        0o755,
        false,
    ),
    ("execmesh-gateway", "/usr/bin/execmeshctl", 0o755, false),
    (
        "execmesh-gateway",
        "/usr/lib/systemd/system/execmesh-gateway.service",
        0o644,
        false,
    ),
    (
        "execmesh-gateway",
        "/etc/execmesh/gateway.toml",
        0o640,
        true,
    ),
    ("execmesh-gateway", "/etc/execmesh/policy.toml", 0o640, true),
    (
        "execmesh-node-agent",
        "/usr/bin/execmesh-node-agent",
        0o755,
        false,
    ),
    (
        "execmesh-node-agent",
        "/usr/lib/systemd/system/execmesh-node-agent.service",
        0o644,
        false,
    ),
    (
        "execmesh-node-agent",
        "/etc/execmesh/node-agent.toml",
        0o640,
        true,
    ),
    (
        "execmesh-audit-sink",
        "/usr/bin/execmesh-audit-sink",
        0o755,
        false,
    ),
    (
        "execmesh-audit-sink",
        "/usr/lib/systemd/system/execmesh-audit-sink.service",
        0o644,
        false,
    ),
    (
        "execmesh-audit-sink",
        "/etc/execmesh/audit-sink.toml",
        0o640,
        true,
    ),
];

#[tokio::test(flavor = "multi_thread")]
async fn packages_install_start_as_their_units_keep_edited_config_and_purge() {
    // Declared first, dropped last: every service below is stopped before the purge.
    let system = SystemInstall::take();
    let debs = Debs::build();
    check_archives(&debs);

    let said = system.install(&debs);
    for step in [
        "execmeshctl nats-config",
        "/etc/execmesh/nats/gateway.nk",
        "user add alice --group admins",
        "token mint",
        "exec-signing.key.pub",
        "gateway_keys",
        "systemctl enable --now execmesh-node-agent",
    ] {
        assert!(
            said.contains(step),
            "install.sh's next steps lack `{step}`:\n{said}"
        );
    }
    check_installed();
    verify_units();

    // Unconfigured, a service does not start: its NATS seed is missing, and the start fails
    // naming the file the operator must put in place (systemd fails the unit the same way).
    let gateway_unit = installed_unit("execmesh-gateway");
    let scratch = tempfile::tempdir().expect("temp dir");
    match gateway_unit.command(&scratch.path().join("credentials"), &[]) {
        Err(UnitError::Credential { from, .. }) => {
            assert_eq!(from, Path::new("/etc/execmesh/nats/gateway.nk"));
        }
        other => panic!("an unconfigured gateway must not start: {other:?}"),
    }

    // The operator's next steps (deploy/install.sh prints them), on a test NATS with the
    // accounts `nats-config` generates.
    let mesh = SecuredMesh::generate(&[HOST]);
    let nats = mesh.start_nats().await;
    put_secret(&mesh.seed_file("gateway"), "/etc/execmesh/nats/gateway.nk");
    put_secret(
        &mesh.seed_file("audit-sink"),
        "/etc/execmesh/nats/audit-sink.nk",
    );
    put_secret(
        &mesh.seed_file(&format!("agent-{HOST}")),
        "/etc/execmesh/nats/agent.nk",
    );
    std::fs::copy(mesh.identities_file(), "/etc/execmesh/identities.toml")
        .expect("install identities.toml");
    let nats_url = format!("nats_url = \"{}\"", nats.url());
    let default_url = "nats_url = \"nats://127.0.0.1:4222\"";
    // Free ports rather than the defaults, which another mesh on this machine may hold.
    edit_conffile(
        "gateway.toml",
        &[
            (default_url, nats_url.as_str()),
            ("listen = \"127.0.0.1:8420\"", "listen = \"127.0.0.1:0\""),
            (
                "admin_addr = \"127.0.0.1:8421\"",
                "admin_addr = \"127.0.0.1:0\"",
            ),
        ],
    );
    edit_conffile("audit-sink.toml", &[(default_url, nats_url.as_str())]);
    let host_line = format!("host_id = \"{HOST}\"");
    edit_conffile(
        "node-agent.toml",
        &[
            (default_url, nats_url.as_str()),
            ("# host_id = \"web-1\"", host_line.as_str()),
            (
                "# gateway_keys = [\"/etc/execmesh/gateway.pub\"]",
                "gateway_keys = [\"/etc/execmesh/gateway.pub\"]",
            ),
        ],
    );

    // The gateway first: in a secured mesh only it may create the streams.
    let mut gateway = start(&gateway_unit, scratch.path(), "serving MCP at ").await;
    let url = after(&log_of(&gateway), "serving MCP at ");
    assert_runs_as(&gateway, "execmesh");
    for key in ["gateway.key", "exec-signing.key"] {
        assert_owned(&format!("{STATE}/gateway/{key}"), "execmesh", 0o600);
    }
    let sink = start(
        &installed_unit("execmesh-audit-sink"),
        scratch.path(),
        "ready: consuming AUDIT",
    )
    .await;
    assert_runs_as(&sink, "execmesh-audit");
    assert_owned(&format!("{STATE}/audit/audit.db"), "execmesh-audit", 0o600);
    std::fs::copy(
        format!("{STATE}/gateway/exec-signing.key.pub"),
        "/etc/execmesh/gateway.pub",
    )
    .expect("install the gateway's key for the agent");
    let agent_ready = format!("ready host={HOST}");
    let agent = start(
        &installed_unit("execmesh-node-agent"),
        scratch.path(),
        &agent_ready,
    )
    .await;
    assert_runs_as(&agent, "root");

    // The first user, with the installed binary and configuration, as root: the policy keeps
    // the owner the gateway needs to read it.
    let added = run(Command::new("/usr/bin/execmesh-gateway").args([
        "--config",
        "/etc/execmesh/gateway.toml",
        "user",
        "add",
        "alice",
        "--group",
        "admins",
    ]));
    assert!(added.status.success());
    assert_owned("/etc/execmesh/policy.toml", "root", 0o640);
    assert_eq!(group_of("/etc/execmesh/policy.toml"), "execmesh");
    // The running gateway, as its own user, reads the new policy (a root-owned file would be
    // refused: "policy reload failed").
    eventually(Duration::from_secs(20), || async {
        log_of(&gateway).contains("policy reloaded")
    })
    .await;
    let minted = run(Command::new("/usr/bin/execmesh-gateway").args([
        "--config",
        "/etc/execmesh/gateway.toml",
        "--public-url",
        &url,
        "token",
        "mint",
        "--user",
        "alice",
        "--scope",
        "mcp,admin",
    ]));
    let token = String::from_utf8_lossy(&minted.stdout).trim().to_string();

    // A command through the packaged mesh runs on the host as the packaged run-as account.
    let client = McpClient::new(&url, &token).await;
    let out = eventually(Duration::from_secs(30), || async {
        let out = client
            .call("bash", json!({"host": HOST, "cmd": "id -un", "wait": 20}))
            .await;
        (!out.is_error() && out.structured()["state"] == "exited").then_some(out)
    })
    .await;
    assert_eq!(
        out.text().lines().next(),
        Some("execmesh-run"),
        "{}",
        out.text()
    );

    // execmeshctl, from the package, over the admin API.
    let log = log_of(&gateway);
    let admin_line = log
        .lines()
        .find(|l| l.contains("serving the admin API"))
        .unwrap_or_else(|| panic!("the gateway does not serve the admin API:\n{log}"));
    let admin = after(admin_line, "addr=");
    let hosts =
        run(Command::new("/usr/bin/execmeshctl")
            .args(["--addr", &admin, "--token", &token, "hosts"]));
    assert!(
        String::from_utf8_lossy(&hosts.stdout).contains(HOST),
        "execmeshctl hosts: {}",
        String::from_utf8_lossy(&hosts.stdout)
    );
    client.close().await;
    drop((agent, sink));
    gateway.kill().await;

    // A reinstall (the path of an upgrade) keeps every edited conffile and the added user.
    system.install(&debs);
    let edited = std::fs::read_to_string("/etc/execmesh/gateway.toml").expect("gateway.toml");
    assert!(edited.contains(&nats_url), "the edit was lost:\n{edited}");
    let policy = std::fs::read_to_string("/etc/execmesh/policy.toml").expect("policy.toml");
    assert!(
        policy.contains("[users.alice]"),
        "the user was lost:\n{policy}"
    );
    assert!(
        !Path::new("/etc/execmesh/gateway.toml.dpkg-new").exists(),
        "dpkg offered a new gateway.toml over an unchanged packaged one"
    );

    // Purge: the packages' files and conffiles go; state and users stay, as their postrm says.
    system.purge();
    for (_, path, _, _) in EXPECTED {
        assert!(!Path::new(path).exists(), "{path} outlived the purge");
    }
    for package in PACKAGES {
        assert!(!packages::is_known(package), "dpkg still knows {package}");
    }
    let overrides = run(Command::new("dpkg-statoverride").arg("--list"));
    assert!(
        !String::from_utf8_lossy(&overrides.stdout).contains(ETC),
        "statoverrides outlived the purge"
    );
    assert!(Path::new(&format!("{STATE}/audit/audit.db")).exists());
    assert!(
        nix::unistd::User::from_name("execmesh")
            .ok()
            .flatten()
            .is_some()
    );
}

/// What dpkg-deb shows of the built packages: name, the workspace's version, dependencies, the
/// expected files with their modes, every /etc file a conffile, maintainer scripts whole.
fn check_archives(debs: &Debs) {
    for package in PACKAGES {
        assert_eq!(debs.field(package, "Package"), package);
        assert_eq!(
            debs.field(package, "Version"),
            env!("CARGO_PKG_VERSION"),
            "{package}: the version is the workspace's"
        );
        let depends = debs.field(package, "Depends");
        assert!(
            depends.contains("libc6 (>= 2."),
            "{package}: Depends: {depends}"
        );
        let contents = debs.contents(package);
        let conffiles = debs.control_member(package, "conffiles");
        for (owner, path, mode, conffile) in EXPECTED {
            if owner != &package {
                continue;
            }
            let (perms, ids, _) = contents
                .iter()
                .find(|(_, _, p)| p == path)
                .unwrap_or_else(|| panic!("{package} does not hold {path}: {contents:?}"));
            assert_eq!(ids, "root/root", "{path}");
            assert_eq!(perms, &mode_string(*mode), "{path}");
            assert_eq!(
                conffiles.lines().any(|l| l == *path),
                *conffile,
                "{path} in {package}'s conffiles:\n{conffiles}"
            );
        }
        for (_, _, path) in contents.iter().filter(|(p, _, _)| p.starts_with('-')) {
            if path.starts_with("/etc/") {
                assert!(
                    conffiles.lines().any(|l| l == path),
                    "{path} is not a conffile"
                );
            }
        }
        let postinst = debs.control_member(package, "postinst");
        assert!(
            !postinst.lines().any(|l| l == "#EXECMESH_COMMON#")
                && postinst.contains("execmesh_system_user()"),
            "{package}'s postinst lacks the common functions:\n{postinst}"
        );
    }
    assert!(debs.dir().is_dir());
}

/// The system after `dpkg --install`: users, configuration owners and modes, state, units.
fn check_installed() {
    for user in packages::SYSTEM_USERS {
        let account = nix::unistd::User::from_name(user)
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("no system user {user}"));
        assert!(account.uid.as_raw() < 1000, "{user} is not a system user");
        assert_eq!(account.shell, Path::new("/usr/sbin/nologin"), "{user}");
    }
    for (package, path, mode, _) in EXPECTED {
        let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{package}: {path}: {e}"));
        assert_eq!(meta.permissions().mode() & 0o7777, *mode, "{path}");
    }
    for (file, group) in [
        ("gateway.toml", "execmesh"),
        ("policy.toml", "execmesh"),
        ("audit-sink.toml", "execmesh-audit"),
        ("node-agent.toml", "root"),
    ] {
        let path = format!("{ETC}/{file}");
        assert_owned(&path, "root", 0o640);
        assert_eq!(group_of(&path), group, "{path}");
    }
    assert_owned("/etc/execmesh/nats", "root", 0o700);
    assert_owned(&format!("{STATE}/gateway"), "execmesh", 0o700);
    assert_owned(&format!("{STATE}/audit"), "execmesh-audit", 0o700);
    assert_owned(&format!("{STATE}/run"), "execmesh-run", 0o750);
    let conffiles = run(Command::new("dpkg-query").args([
        "--show",
        "--showformat=${Conffiles}",
        "execmesh-gateway",
    ]));
    let conffiles = String::from_utf8_lossy(&conffiles.stdout);
    assert!(
        conffiles.contains("/etc/execmesh/gateway.toml")
            && conffiles.contains("/etc/execmesh/policy.toml"),
        "{conffiles}"
    );
}

/// `systemd-analyze verify` accepts the installed units (their binaries in place), and says
/// nothing about them.
fn verify_units() {
    let units: Vec<String> = PACKAGES
        .iter()
        .map(|p| format!("{UNITS}/{p}.service"))
        .collect();
    let out = run(Command::new("systemd-analyze").arg("verify").args(&units));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !said.contains("execmesh"),
        "systemd-analyze verify has remarks on the units:\n{said}"
    );
}

/// The installed unit of `package`.
fn installed_unit(package: &str) -> ServiceUnit {
    ServiceUnit::load(Path::new(&format!("{UNITS}/{package}.service")))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Starts `unit` as systemd would, logging into `dir`, and waits until its log says `ready`.
async fn start(unit: &ServiceUnit, dir: &Path, ready: &str) -> ChildProcess {
    let name = unit
        .path
        .file_stem()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let credentials = dir.join(format!("credentials-{name}"));
    let command = unit
        .command(&credentials, &[])
        .unwrap_or_else(|e| panic!("{e}"));
    let log = dir.join(format!("{name}.log"));
    let mut process =
        ChildProcess::spawn(&name, command, &log).unwrap_or_else(|e| panic!("start {name}: {e}"));
    let deadline = tokio::time::Instant::now() + READY;
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains(ready)
    {
        process.check_starting(deadline, READY);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    process
}

fn log_of(process: &ChildProcess) -> String {
    std::fs::read_to_string(process.log_path()).unwrap_or_default()
}

/// The word after the first `marker` in `text`.
fn after(text: &str, marker: &str) -> String {
    text.split_once(marker)
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no `{marker}` in:\n{text}"))
        .trim_matches('"')
        .to_string()
}

/// Installs `from` at `to`, root's and 0600, as the operator installs a seed.
fn put_secret(from: &Path, to: &str) {
    run(Command::new("install")
        .args(["-m", "0600"])
        .arg(from)
        .arg(to));
}

/// Edits `/etc/execmesh/<file>` as an operator would: each `(old, new)` line replaced; each
/// `old` must be there.
fn edit_conffile(file: &str, edits: &[(&str, &str)]) {
    let path = format!("{ETC}/{file}");
    let mut text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    for (old, new) in edits {
        assert!(text.contains(old), "{path} has no `{old}`");
        text = text.replacen(old, new, 1);
    }
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{path}: {e}"));
}

/// Panics unless `path` belongs to `user` with `mode`.
fn assert_owned(path: &str, user: &str, mode: u32) {
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let owner = nix::unistd::User::from_uid(meta.uid().into())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| meta.uid().to_string());
    assert_eq!(owner, user, "owner of {path}");
    assert_eq!(meta.permissions().mode() & 0o7777, mode, "mode of {path}");
}

fn group_of(path: &str) -> String {
    let gid = std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .gid();
    nix::unistd::Group::from_gid(gid.into())
        .ok()
        .flatten()
        .map(|g| g.name)
        .unwrap_or_else(|| gid.to_string())
}

/// Panics unless `process` runs as `user` (its real and effective uid).
fn assert_runs_as(process: &ChildProcess, user: &str) {
    let status = std::fs::read_to_string(format!("/proc/{}/status", process.pid()))
        .expect("the service runs");
    let uid: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|id| id.parse().ok())
        .expect("a Uid line");
    let expected = nix::unistd::User::from_name(user)
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("no user {user}"))
        .uid
        .as_raw();
    assert_eq!(
        uid,
        expected,
        "{} runs as uid {uid}, not {user}",
        process.pid()
    );
}

/// `ls -l`'s mode string of a regular file with `mode`.
fn mode_string(mode: u32) -> String {
    let bits = "rwxrwxrwx";
    let mut s = String::from("-");
    for (i, c) in bits.chars().enumerate() {
        s.push(if mode & (0o400 >> i) != 0 { c } else { '-' });
    }
    s
}
