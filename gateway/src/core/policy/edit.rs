//! `execmesh-gateway user add`: writes a user into the policy file, keeping every other line,
//! comment and key as it was, and only if the result is a valid policy.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use toml_edit::{Array, DocumentMut, Item, Table, value};

use super::{Policy, PolicyError, password};
use crate::core::tier::Tier;

/// A user to add (or, with `replace`, to change).
#[derive(Debug, Clone)]
pub struct NewUser {
    pub name: String,
    pub password: String,
    /// The user's own tier; left out, the groups decide.
    pub tier: Option<Tier>,
    pub groups: Vec<String>,
    /// Change an existing user: the password always, groups and tier when given.
    pub replace: bool,
}

/// What a new policy file starts with.
const HEADER: &str = "\
# execmesh policy: who may do what. Keep it identical on every gateway replica;
# a running gateway reloads it on change and on SIGHUP. See docs/configuration.md, \"Policy\".

";

/// Adds `user` to the policy at `path` (created, mode 0600, if missing) and returns the new
/// policy. Nothing is written if the result would not be a valid policy.
pub fn add_user(path: &Path, user: &NewUser) -> Result<Policy, PolicyError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => HEADER.to_string(),
        Err(source) => {
            return Err(PolicyError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let mut doc: DocumentMut =
        text.parse()
            .map_err(|e: toml_edit::TomlError| PolicyError::Syntax {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
    if user.password.is_empty() {
        return Err(PolicyError::Invalid {
            path: path.to_path_buf(),
            problems: vec![format!("user `{}`: the password is empty", user.name)],
        });
    }
    let users = doc
        .entry("users")
        .or_insert_with(|| {
            let mut table = Table::new();
            table.set_implicit(true);
            Item::Table(table)
        })
        .as_table_mut()
        .ok_or_else(|| PolicyError::Invalid {
            path: path.to_path_buf(),
            problems: vec!["`users` is not a table".to_string()],
        })?;
    let exists = users.contains_key(&user.name);
    if exists && !user.replace {
        return Err(PolicyError::UserExists(user.name.clone()));
    }
    let hash = password::hash(&user.password).map_err(PolicyError::Hash)?;
    let entry = users
        .entry(&user.name)
        .or_insert_with(|| Item::Table(Table::new()))
        .as_table_mut()
        .ok_or_else(|| PolicyError::Invalid {
            path: path.to_path_buf(),
            problems: vec![format!("users.{} is not a table", user.name)],
        })?;
    entry.insert("password_hash", value(hash));
    if !user.groups.is_empty() || !exists {
        let groups: Array = user.groups.iter().map(String::as_str).collect();
        entry.insert("groups", value(groups));
    }
    if let Some(tier) = user.tier {
        entry.insert("tier", value(tier.as_str()));
    }
    let text = doc.to_string();
    let policy = Policy::parse(&text, path)?;
    write_atomically(path, &text)?;
    Ok(policy)
}

/// Writes `text` to a temporary file next to `path` and renames it over `path`, so a gateway
/// polling the file never reads half of it. The file keeps its mode (0600 when new): it holds
/// password hashes. It keeps its owner and group too: a packaged gateway runs as its own user and
/// reads a policy that root edits (`root:execmesh`, 0640), which a file renamed into place as
/// root's would lock it out of.
fn write_atomically(path: &Path, text: &str) -> Result<(), PolicyError> {
    let err = |source| PolicyError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let existing = std::fs::metadata(path).ok();
    let mode = existing
        .as_ref()
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0o600);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "policy.toml".to_string());
    let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&temp)
        .map_err(err)?;
    let written = file
        .write_all(text.as_bytes())
        .and_then(|()| keep_owner(&file, existing.as_ref()))
        .and_then(|()| file.set_permissions(std::fs::Permissions::from_mode(mode)))
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&temp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(err(e));
    }
    Ok(())
}

/// Gives `file` the owner and group of the file it replaces, when they differ from its own (only
/// root can give a file away; anyone else editing another's file gets an error, not a silent
/// change of owner).
fn keep_owner(file: &std::fs::File, replaced: Option<&std::fs::Metadata>) -> std::io::Result<()> {
    let Some(replaced) = replaced else {
        return Ok(());
    };
    let own = file.metadata()?;
    if (own.uid(), own.gid()) == (replaced.uid(), replaced.gid()) {
        return Ok(());
    }
    std::os::unix::fs::fchown(file, Some(replaced.uid()), Some(replaced.gid()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_user(name: &str, groups: &[&str], tier: Option<Tier>) -> NewUser {
        NewUser {
            name: name.to_string(),
            password: "s3cret-pass".to_string(),
            tier,
            groups: groups.iter().map(|g| g.to_string()).collect(),
            replace: false,
        }
    }

    #[test]
    fn adding_a_user_keeps_the_rest_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        let before =
            "# our policy\n[groups.ops] # the ops team\ntier = \"standard\"\nhosts = [\"*\"]\n";
        std::fs::write(&path, before).unwrap();
        let policy = add_user(&path, &new_user("alice", &["ops"], None)).unwrap();
        let after = std::fs::read_to_string(&path).unwrap();
        assert!(after.starts_with(before), "{after}");
        assert!(after.contains("[users.alice]"), "{after}");
        assert_eq!(policy.grant("alice").unwrap().tier, Tier::Standard);
        let hash = policy.user("alice").unwrap().password_hash.clone();
        assert!(password::verify(hash.as_deref(), "s3cret-pass"));

        assert!(matches!(
            add_user(&path, &new_user("alice", &[], None)),
            Err(PolicyError::UserExists(_))
        ));
        let mut change = new_user("alice", &[], Some(Tier::Dangerous));
        change.replace = true;
        let policy = add_user(&path, &change).unwrap();
        assert_eq!(policy.grant("alice").unwrap().tier, Tier::Dangerous);
        assert_eq!(policy.grant("alice").unwrap().groups, ["ops"]);
    }

    #[test]
    fn a_new_file_is_private_and_a_bad_user_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etc/policy.toml");
        add_user(&path, &new_user("bob", &[], Some(Tier::Readonly))).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let before = std::fs::read_to_string(&path).unwrap();
        let err = add_user(&path, &new_user("carol", &["nope"], None)).unwrap_err();
        assert!(err.to_string().contains("`nope`"), "{err}");
        let err = add_user(&path, &new_user("Carol", &[], None)).unwrap_err();
        assert!(err.to_string().contains("Carol"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
    }

    #[test]
    fn an_edited_file_keeps_its_owner_group_and_mode() {
        // A packaged policy is root:execmesh 0640, and root adds a user.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::write(
            &path,
            "[groups.ops]\ntier = \"standard\"\nhosts = [\"*\"]\n",
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        // nobody's uid and group, a pair root would not get by default; only root may give the
        // file away, so elsewhere the owner stays the test's own.
        let owner = match std::os::unix::fs::chown(&path, Some(65534), Some(65534)) {
            Ok(()) => (65534, 65534),
            Err(_) => {
                let m = std::fs::metadata(&path).unwrap();
                (m.uid(), m.gid())
            }
        };
        add_user(&path, &new_user("alice", &["ops"], None)).unwrap();
        let m = std::fs::metadata(&path).unwrap();
        assert_eq!((m.uid(), m.gid()), owner);
        assert_eq!(m.permissions().mode() & 0o777, 0o640);
    }
}
