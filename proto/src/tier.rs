//! Guard tiers: the one `Tier` every process speaks, its names, and its wire form (`pb::Tier`).
//!
//! Which tool or operation needs which tier is not contract: the gateway's tool table and the
//! agent's operation table say that. There is no default tier; each place that lacks one says
//! which it means (the gateway's readonly for a caller without one, the agent's dangerous cap).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::pb;

/// How much a caller may change on a host. Ordered: `Readonly < Standard < Dangerous`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Look only: list hosts, read files and output, grep, facts.
    Readonly,
    /// Also run commands, kill jobs, write and append files, refresh facts.
    Standard,
    /// Also move, delete and copy files.
    Dangerous,
}

/// A tier name that is not one of `readonly`, `standard`, `dangerous`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown tier `{0}`: the tiers are readonly, standard and dangerous")]
pub struct UnknownTier(pub String);

// === impl Tier ===

impl Tier {
    /// Every tier, lowest first.
    pub const ALL: [Tier; 3] = [Tier::Readonly, Tier::Standard, Tier::Dangerous];

    /// The tier's name as written in policies, tokens, configuration and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Readonly => "readonly",
            Tier::Standard => "standard",
            Tier::Dangerous => "dangerous",
        }
    }

    /// The tier in a message's `tier` field.
    pub fn to_wire(self) -> pb::Tier {
        match self {
            Tier::Readonly => pb::Tier::Readonly,
            Tier::Standard => pb::Tier::Standard,
            Tier::Dangerous => pb::Tier::Dangerous,
        }
    }

    /// The tier of a message's `tier` field; `None` for TIER_UNSPECIFIED and unknown values.
    pub fn from_wire(value: i32) -> Option<Tier> {
        match pb::Tier::try_from(value).ok()? {
            pb::Tier::Unspecified => None,
            pb::Tier::Readonly => Some(Tier::Readonly),
            pb::Tier::Standard => Some(Tier::Standard),
            pb::Tier::Dangerous => Some(Tier::Dangerous),
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Tier {
    type Err = UnknownTier;

    /// Case and surrounding space do not matter; `read-only` and `read_only` name readonly too.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "readonly" | "read-only" | "read_only" => Ok(Tier::Readonly),
            "standard" => Ok(Tier::Standard),
            "dangerous" => Ok(Tier::Dangerous),
            _ => Err(UnknownTier(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_are_ordered_lowest_first() {
        assert!(Tier::Readonly < Tier::Standard && Tier::Standard < Tier::Dangerous);
        let mut sorted = Tier::ALL;
        sorted.sort();
        assert_eq!(sorted, Tier::ALL);
        assert_eq!(Tier::ALL.iter().max(), Some(&Tier::Dangerous));
    }

    #[test]
    fn names_round_trip_through_text_and_serde() {
        for tier in Tier::ALL {
            assert_eq!(tier.as_str().parse::<Tier>(), Ok(tier));
            assert_eq!(tier.to_string(), tier.as_str());
            assert_eq!(
                serde_json::to_value(tier).unwrap(),
                serde_json::Value::from(tier.as_str())
            );
            assert_eq!(
                serde_json::from_value::<Tier>(tier.as_str().into()).unwrap(),
                tier
            );
        }
        assert_eq!(" Standard ".parse::<Tier>(), Ok(Tier::Standard));
        assert_eq!("read-only".parse::<Tier>(), Ok(Tier::Readonly));
        assert_eq!("READ_ONLY".parse::<Tier>(), Ok(Tier::Readonly));
        assert!(serde_json::from_value::<Tier>("Standard".into()).is_err());
    }

    #[test]
    fn an_unknown_name_says_which_names_there_are() {
        let err = "root".parse::<Tier>().unwrap_err();
        assert_eq!(err, UnknownTier("root".into()));
        assert_eq!(
            err.to_string(),
            "unknown tier `root`: the tiers are readonly, standard and dangerous"
        );
    }

    #[test]
    fn the_wire_form_round_trips_and_unspecified_is_no_tier() {
        for tier in Tier::ALL {
            assert_eq!(Tier::from_wire(tier.to_wire() as i32), Some(tier));
            assert_eq!(
                tier.to_wire().as_str_name(),
                format!("TIER_{}", tier.as_str().to_uppercase())
            );
        }
        assert_eq!(Tier::from_wire(pb::Tier::Unspecified as i32), None);
        assert_eq!(Tier::from_wire(0), None);
        assert_eq!(Tier::from_wire(99), None);
        assert_eq!(Tier::from_wire(-1), None);
    }
}
