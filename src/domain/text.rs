//! Free text from clients: never blank, never longer than its field allows.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A non-blank text of at most `MAX` characters, trimmed of surrounding white space.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Text<const MAX: usize>(String);

impl<const MAX: usize> Text<MAX> {
    /// The trimmed text, or why it is not acceptable.
    pub fn new(value: &str) -> Result<Self, String> {
        let value = value.trim();
        if value.is_empty() {
            return Err("must not be blank".to_owned());
        }
        let chars = value.chars().count();
        if chars > MAX {
            return Err(format!("must be at most {MAX} characters, got {chars}"));
        }
        Ok(Text(value.to_owned()))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<const MAX: usize> fmt::Display for Text<MAX> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de, const MAX: usize> Deserialize<'de> for Text<MAX> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = String::deserialize(d)?;
        Text::new(&value).map_err(serde::de::Error::custom)
    }
}

impl<const MAX: usize> JsonSchema for Text<MAX> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        format!("Text{MAX}").into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        // Trimmed, so at least one character that is not white space.
        schemars::json_schema!({ "type": "string", "minLength": 1, "maxLength": MAX, "pattern": "\\S" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_and_bounds() {
        assert_eq!(Text::<5>::new("  abc ").unwrap().as_str(), "abc");
        assert!(Text::<5>::new("   ").is_err());
        assert!(Text::<5>::new("abcdef").is_err());
        assert!(Text::<5>::new("ééééé").is_ok());
    }
}
