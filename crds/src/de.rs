//! Deserialization helpers for the loose typing of GOST's configuration files.

use serde::{Deserialize, Deserializer};

/// Reads a null as the field's default (an empty list or map, a default section), as GOST
/// does: its `-O json` prints `"services": null` for a command line with only `-F`, and a YAML
/// section whose entries are all commented out (`metadata:` alone) is a null. Any other value
/// must have the field's own type. Schemas ignore `deserialize_with`, so the CRDs are unchanged
/// (the API server drops nulls of non-nullable fields itself).
pub(crate) fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Option::<T>::deserialize(deserializer).map(Option::unwrap_or_default)
}
