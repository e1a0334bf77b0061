//! Guard tiers: the one table of which tool (and which action of a tool) needs which tier.
//!
//! Every check of a tier goes through here: the MCP layer (`tools/list` and `tools/call`), the
//! fan-out code and the signing hook, so one edit of [`TOOLS`] changes all of them.

pub use execmesh_proto::tier::{Tier, UnknownTier};

/// Why a call is outside the caller's tier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TierError {
    #[error(
        "`{tool}`{} needs tier {needed}; your tier is {have}. Ask an administrator for a higher tier, or use a tool your tier allows",
        action_suffix(.action)
    )]
    TooLow {
        tool: String,
        action: Option<String>,
        needed: Tier,
        have: Tier,
    },
    #[error(
        "runbook `{runbook}` needs tier {needed}; your tier is {have}. `runbook` action `list` shows the runbooks you may run"
    )]
    Runbook {
        runbook: String,
        needed: Tier,
        have: Tier,
    },
}

fn action_suffix(action: &Option<String>) -> String {
    match action {
        Some(action) => format!(" action `{action}`"),
        None => String::new(),
    }
}

/// The tier each tool needs, per action for tools that take an `action` argument.
struct ToolTiers {
    tool: &'static str,
    /// The tier of a call without an `action` (or of a tool without actions).
    base: Tier,
    /// Every action of the tool with its tier. An action missing here needs
    /// [`Tier::Dangerous`]: a new action is refused to lower tiers until it is listed.
    actions: &'static [(&'static str, Tier)],
}

use Tier::{Dangerous, Readonly, Standard};

/// The table (DESIGN §4). Unknown tools need [`Tier::Dangerous`].
const TOOLS: &[ToolTiers] = &[
    ToolTiers {
        tool: "hosts",
        base: Readonly,
        actions: &[],
    },
    ToolTiers {
        tool: "whoami",
        base: Readonly,
        actions: &[],
    },
    ToolTiers {
        tool: "grep",
        base: Readonly,
        actions: &[],
    },
    ToolTiers {
        tool: "bash",
        base: Standard,
        actions: &[],
    },
    ToolTiers {
        tool: "job",
        base: Readonly,
        actions: &[
            ("poll", Readonly),
            ("list", Readonly),
            ("wait", Readonly),
            ("kill", Standard),
        ],
    },
    ToolTiers {
        tool: "file",
        base: Readonly,
        actions: &[
            ("read", Readonly),
            ("stat", Readonly),
            ("list", Readonly),
            ("grep", Readonly),
            ("write", Standard),
            ("append", Standard),
            ("move", Dangerous),
            ("delete", Dangerous),
            ("copy", Dangerous),
        ],
    },
    // Listing and running need only readonly here: each runbook's own `tier` is checked when it
    // is run (see `check_runbook`), so a lower tier may run what policy allows it.
    ToolTiers {
        tool: "runbook",
        base: Readonly,
        actions: &[("list", Readonly), ("run", Readonly)],
    },
    ToolTiers {
        tool: "facts",
        base: Readonly,
        actions: &[("get", Readonly), ("refresh", Standard)],
    },
];

fn entry(tool: &str) -> Option<&'static ToolTiers> {
    TOOLS.iter().find(|t| t.tool == tool)
}

/// Whether `tool` is in the table.
pub fn is_known_tool(tool: &str) -> bool {
    entry(tool).is_some()
}

/// The tier a call of `tool` with `action` needs. Unknown tools and unlisted actions need
/// [`Tier::Dangerous`].
pub fn required(tool: &str, action: Option<&str>) -> Tier {
    let Some(entry) = entry(tool) else {
        return Dangerous;
    };
    match action {
        None => entry.base,
        Some(action) if entry.actions.is_empty() => {
            // A tool without actions ignores the argument; its own parser refuses it.
            let _ = action;
            entry.base
        }
        Some(action) => entry
            .actions
            .iter()
            .find(|(name, _)| *name == action)
            .map(|(_, tier)| *tier)
            .unwrap_or(Dangerous),
    }
}

/// Checks that a caller of tier `have` may call `tool` with `action`: the action of the call's
/// parsed arguments (the MCP face parses them once, so this check and the tool read the
/// same value).
pub fn check(tool: &str, action: Option<&str>, have: Tier) -> Result<(), TierError> {
    let needed = required(tool, action);
    if needed <= have {
        Ok(())
    } else {
        Err(TierError::TooLow {
            tool: tool.to_string(),
            action: action.map(str::to_string),
            needed,
            have,
        })
    }
}

/// Checks that a caller of tier `have` may run a runbook that declares tier `needed`.
pub fn check_runbook(runbook: &str, needed: Tier, have: Tier) -> Result<(), TierError> {
    if needed <= have {
        Ok(())
    } else {
        Err(TierError::Runbook {
            runbook: runbook.to_string(),
            needed,
            have,
        })
    }
}

/// The actions of `tool` a caller of tier `have` may use, in table order; `None` for tools
/// without actions.
pub fn allowed_actions(tool: &str, have: Tier) -> Option<Vec<&'static str>> {
    let entry = entry(tool)?;
    if entry.actions.is_empty() {
        return None;
    }
    Some(
        entry
            .actions
            .iter()
            .filter(|(_, tier)| *tier <= have)
            .map(|(name, _)| *name)
            .collect(),
    )
}

/// Whether a caller of tier `have` can use `tool` at all (some action of it).
pub fn visible(tool: &str, have: Tier) -> bool {
    match allowed_actions(tool, have) {
        Some(actions) => !actions.is_empty(),
        None => required(tool, None) <= have,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn tiers_are_ordered_and_parsed() {
        assert!(Readonly < Standard && Standard < Dangerous);
        assert_eq!("Standard".parse::<Tier>().unwrap(), Standard);
        assert!("root".parse::<Tier>().is_err());
        assert_eq!(
            serde_json::to_value(Dangerous).unwrap(),
            Value::from("dangerous")
        );
    }

    #[test]
    fn table_matches_the_design() {
        assert_eq!(required("hosts", None), Readonly);
        assert_eq!(required("bash", None), Standard);
        assert_eq!(required("job", Some("poll")), Readonly);
        assert_eq!(required("job", Some("kill")), Standard);
        assert_eq!(required("file", Some("read")), Readonly);
        assert_eq!(required("file", Some("append")), Standard);
        assert_eq!(required("file", Some("delete")), Dangerous);
        assert_eq!(required("facts", Some("refresh")), Standard);
        assert_eq!(
            required("file", Some("chmod")),
            Dangerous,
            "unlisted action"
        );
        assert_eq!(required("rm-rf", None), Dangerous, "unknown tool");
    }

    #[test]
    fn calls_outside_the_tier_name_the_tier_needed() {
        let err = check("file", Some("delete"), Standard).unwrap_err();
        assert!(err.to_string().contains("needs tier dangerous"), "{err}");
        assert!(err.to_string().contains("your tier is standard"), "{err}");
        assert!(check("file", Some("delete"), Dangerous).is_ok());
    }
}
