//! Reading a JSON object's keys while skimming it: a key is compared with the names the
//! reader wants without being allocated, so the fields it skips cost no allocation at all.

use serde::de::{DeserializeSeed, Deserializer, Error, Visitor};
use std::fmt;

/// Deserialises an object key into the one of these names it equals (escapes already
/// undone by the parser), or `None`.
#[derive(Clone, Copy)]
pub struct KeyAmong(pub &'static [&'static str]);

impl<'de> DeserializeSeed<'de> for KeyAmong {
    type Value = Option<&'static str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for KeyAmong {
    type Value = Option<&'static str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self.0.iter().copied().find(|name| *name == key))
    }
}
