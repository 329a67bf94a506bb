//! An HTTP header map with Envoy's semantics.
//!
//! Envoy stores header names lower-cased (`Http::LowerCaseString`) and keeps pseudo
//! headers (`:method`, `:status`, ...) in front of regular ones; lookups return the
//! first value; `replace` (`setCopy`) drops every old value; values are arbitrary
//! bytes. Tests build maps for requests and call responses, and read the maps the
//! plugin left behind.

/// Ordered multimap of header name to byte value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderMap {
    entries: Vec<(String, Vec<u8>)>,
}

impl HeaderMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of entries (a repeated name counts once per value).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the map has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// All entries in order.
    pub fn entries(&self) -> &[(String, Vec<u8>)] {
        &self.entries
    }

    /// Iterates over `(name, value)` in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    /// The first value of `name` (case-insensitive), like Envoy's `getHeaderMapValue`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        let name = name.to_ascii_lowercase();
        self.entries
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The first value of `name` as UTF-8, or `None` if absent or not UTF-8.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Every value of `name` in order.
    pub fn get_all(&self, name: &str) -> Vec<&[u8]> {
        let name = name.to_ascii_lowercase();
        self.entries
            .iter()
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v.as_slice())
            .collect()
    }

    /// Whether `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Appends a value (`addCopy`); pseudo headers go after the existing pseudo headers.
    pub fn add(&mut self, name: impl AsRef<str>, value: impl AsRef<[u8]>) {
        let name = name.as_ref().to_ascii_lowercase();
        let value = value.as_ref().to_vec();
        if name.starts_with(':') {
            let at = self
                .entries
                .iter()
                .position(|(k, _)| !k.starts_with(':'))
                .unwrap_or(self.entries.len());
            self.entries.insert(at, (name, value));
        } else {
            self.entries.push((name, value));
        }
    }

    /// Replaces every value of `name` with one value (`setCopy`).
    pub fn replace(&mut self, name: impl AsRef<str>, value: impl AsRef<[u8]>) {
        self.remove(name.as_ref());
        self.add(name, value);
    }

    /// Removes every value of `name`.
    pub fn remove(&mut self, name: &str) {
        let name = name.to_ascii_lowercase();
        self.entries.retain(|(k, _)| *k != name);
    }

    /// Pairs with values decoded lossily, for assertions and messages.
    pub fn to_string_pairs(&self) -> Vec<(String, String)> {
        self.entries
            .iter()
            .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
            .collect()
    }
}

impl<K: AsRef<str>, V: AsRef<[u8]>> FromIterator<(K, V)> for HeaderMap {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut map = HeaderMap::new();
        for (k, v) in iter {
            map.add(k, v);
        }
        map
    }
}

impl<K: AsRef<str>, V: AsRef<[u8]>> From<Vec<(K, V)>> for HeaderMap {
    fn from(pairs: Vec<(K, V)>) -> Self {
        pairs.into_iter().collect()
    }
}

impl<K: AsRef<str>, V: AsRef<[u8]>, const N: usize> From<[(K, V); N]> for HeaderMap {
    fn from(pairs: [(K, V); N]) -> Self {
        pairs.into_iter().collect()
    }
}

impl<K: AsRef<str>, V: AsRef<[u8]>> From<&[(K, V)]> for HeaderMap {
    fn from(pairs: &[(K, V)]) -> Self {
        pairs
            .iter()
            .map(|(k, v)| (k.as_ref(), v.as_ref()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_lower_cased_and_pseudo_headers_stay_in_front() {
        let mut map = HeaderMap::from([("Content-Type", "a"), (":path", "/")]);
        map.add(":method", "GET");
        assert_eq!(
            map.to_string_pairs(),
            vec![
                (":path".to_string(), "/".to_string()),
                (":method".to_string(), "GET".to_string()),
                ("content-type".to_string(), "a".to_string()),
            ]
        );
        assert_eq!(map.get_str("CONTENT-TYPE"), Some("a"));
    }

    #[test]
    fn replace_drops_all_old_values_and_get_returns_the_first() {
        let mut map = HeaderMap::from([("x", "1"), ("x", "2"), ("y", "3")]);
        assert_eq!(map.get("x"), Some(&b"1"[..]));
        assert_eq!(map.get_all("x").len(), 2);
        map.replace("X", "9");
        assert_eq!(map.get_all("x"), vec![&b"9"[..]]);
        map.remove("y");
        assert!(!map.contains("y"));
    }

    #[test]
    fn values_may_be_binary() {
        let mut map = HeaderMap::new();
        map.add("x-bin", [0xffu8, 0x00]);
        assert_eq!(map.get("x-bin"), Some(&[0xffu8, 0x00][..]));
        assert_eq!(map.get_str("x-bin"), None);
    }
}
