//! Strict readings of tool arguments: a unit-only enum (an `action`) from its name and nothing
//! else, so the parser and every check read an argument the same way.

use serde::de::{DeserializeOwned, IntoDeserializer};
use serde::{Deserialize, Deserializer};

/// Deserializes a unit-only enum from its name and nothing else. serde's derive also accepts a
/// one-key map (`{"write": null}`) for a unit variant; the schemas document a string, and a
/// value read one way by the parser and another by a check is how a check is skipped.
pub fn name<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    let name = String::deserialize(deserializer)?;
    T::deserialize(name.into_deserializer())
}

/// [`name`] for an optional field (`null` or absent is `None`).
pub fn optional_name<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    match Option::<String>::deserialize(deserializer)? {
        None => Ok(None),
        Some(name) => T::deserialize(name.into_deserializer()).map(Some),
    }
}
