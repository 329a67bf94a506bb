//! Wire encodings of header maps and property paths.
//!
//! A map is `u32 count`, then `count` pairs of `(u32 key_len, u32 value_len)`, then
//! every key and value followed by a NUL byte; all integers little-endian. This is
//! the format of the spec and of the SDK's `hostcalls::utils::serialize_map`.
//! Values are bytes: nothing here assumes UTF-8.

/// Decoded `(key, value)` pairs, both raw bytes.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// A decoding failure of a serialized map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapFormatError(pub String);

impl std::fmt::Display for MapFormatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed header map: {}", self.0)
    }
}

impl std::error::Error for MapFormatError {}

/// Serializes `(key, value)` pairs in the proxy-wasm map format.
pub fn serialize_pairs<K, V>(pairs: &[(K, V)]) -> Vec<u8>
where
    K: AsRef<[u8]>,
    V: AsRef<[u8]>,
{
    let payload: usize = pairs
        .iter()
        .map(|(k, v)| k.as_ref().len() + v.as_ref().len() + 10)
        .sum();
    let mut out = Vec::with_capacity(4 + payload);
    out.extend_from_slice(&len_u32(pairs.len()).to_le_bytes());
    for (key, value) in pairs {
        out.extend_from_slice(&len_u32(key.as_ref().len()).to_le_bytes());
        out.extend_from_slice(&len_u32(value.as_ref().len()).to_le_bytes());
    }
    for (key, value) in pairs {
        out.extend_from_slice(key.as_ref());
        out.push(0);
        out.extend_from_slice(value.as_ref());
        out.push(0);
    }
    out
}

/// Parses the proxy-wasm map format. An empty input is an empty map (the SDK does
/// the same); anything truncated or inconsistent is an error.
pub fn deserialize_pairs(bytes: &[u8]) -> Result<Pairs, MapFormatError> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let count = read_u32(bytes, 0)? as usize;
    let sizes_end = count
        .checked_mul(8)
        .and_then(|n| n.checked_add(4))
        .ok_or_else(|| MapFormatError(format!("count {count} overflows")))?;
    if sizes_end > bytes.len() {
        return Err(MapFormatError(format!(
            "{count} entries need {sizes_end} bytes of sizes, got {}",
            bytes.len()
        )));
    }
    let mut pairs = Vec::with_capacity(count);
    let mut cursor = sizes_end;
    for index in 0..count {
        let key_len = read_u32(bytes, 4 + index * 8)? as usize;
        let value_len = read_u32(bytes, 8 + index * 8)? as usize;
        let key = take_terminated(bytes, &mut cursor, key_len)?;
        let value = take_terminated(bytes, &mut cursor, value_len)?;
        pairs.push((key, value));
    }
    Ok(pairs)
}

/// Splits a property path (`["request", "path"]` is sent as `request\0path`).
pub fn split_property_path(bytes: &[u8]) -> Vec<String> {
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes
        .split(|b| *b == 0)
        .map(|part| String::from_utf8_lossy(part).into_owned())
        .collect()
}

/// Joins a property path the way the SDK sends it.
pub fn join_property_path<S: AsRef<str>>(parts: &[S]) -> Vec<u8> {
    let mut out = Vec::new();
    for (index, part) in parts.iter().enumerate() {
        if index > 0 {
            out.push(0);
        }
        out.extend_from_slice(part.as_ref().as_bytes());
    }
    out
}

fn len_u32(len: usize) -> u32 {
    // Linear memory is 32-bit; a longer value could not have come from the guest
    // and cannot be returned to it either.
    u32::try_from(len).unwrap_or(u32::MAX)
}

fn read_u32(bytes: &[u8], at: usize) -> Result<u32, MapFormatError> {
    bytes
        .get(at..at + 4)
        .and_then(|s| <[u8; 4]>::try_from(s).ok())
        .map(u32::from_le_bytes)
        .ok_or_else(|| MapFormatError(format!("truncated at offset {at}")))
}

fn take_terminated(
    bytes: &[u8],
    cursor: &mut usize,
    len: usize,
) -> Result<Vec<u8>, MapFormatError> {
    let start = *cursor;
    let end = start
        .checked_add(len)
        .ok_or_else(|| MapFormatError("length overflows".into()))?;
    let data = bytes
        .get(start..end)
        .ok_or_else(|| MapFormatError(format!("entry at {start} (len {len}) past the end")))?;
    if bytes.get(end) != Some(&0) {
        return Err(MapFormatError(format!(
            "entry at {start} is not NUL-terminated"
        )));
    }
    *cursor = end + 1;
    Ok(data.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte-level test vector of the SDK (`hostcalls.rs`, `utils::tests`).
    #[rustfmt::skip]
    const SDK_VECTOR: &[u8] = &[
        4, 0, 0, 0,
        7, 0, 0, 0, 3, 0, 0, 0,
        5, 0, 0, 0, 8, 0, 0, 0,
        10, 0, 0, 0, 11, 0, 0, 0,
        10, 0, 0, 0, 10, 0, 0, 0,
        58, 109, 101, 116, 104, 111, 100, 0,
        71, 69, 84, 0,
        58, 112, 97, 116, 104, 0,
        47, 98, 121, 116, 101, 115, 47, 49, 0,
        58, 97, 117, 116, 104, 111, 114, 105, 116, 121, 0,
        104, 116, 116, 112, 98, 105, 110, 46, 111, 114, 103, 0,
        80, 111, 119, 101, 114, 101, 100, 45, 66, 121, 0,
        112, 114, 111, 120, 121, 45, 119, 97, 115, 109, 0,
    ];

    const SDK_MAP: &[(&str, &str)] = &[
        (":method", "GET"),
        (":path", "/bytes/1"),
        (":authority", "httpbin.org"),
        ("Powered-By", "proxy-wasm"),
    ];

    #[test]
    fn serializes_like_the_sdk() {
        assert_eq!(serialize_pairs(SDK_MAP), SDK_VECTOR);
    }

    #[test]
    fn deserializes_the_sdk_vector() {
        let pairs = deserialize_pairs(SDK_VECTOR).unwrap();
        let expected: Vec<(Vec<u8>, Vec<u8>)> = SDK_MAP
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
        assert_eq!(pairs, expected);
    }

    #[test]
    fn empty_map_round_trips() {
        let empty: &[(&str, &str)] = &[];
        assert_eq!(serialize_pairs(empty), [0, 0, 0, 0]);
        assert!(deserialize_pairs(&[0, 0, 0, 0]).unwrap().is_empty());
        assert!(deserialize_pairs(&[]).unwrap().is_empty());
    }

    #[test]
    fn non_utf8_and_empty_values_round_trip() {
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (b"x-bin".to_vec(), vec![0xff, 0xfe, 0x00, 0x80]),
            (b"x-empty".to_vec(), Vec::new()),
            (Vec::new(), b"v".to_vec()),
        ];
        let bytes = serialize_pairs(&pairs);
        assert_eq!(deserialize_pairs(&bytes).unwrap(), pairs);
    }

    #[test]
    fn rejects_truncated_and_unterminated_input() {
        let bytes = serialize_pairs(&[("a", "b")]);
        for cut in 1..bytes.len() {
            assert!(deserialize_pairs(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = bytes.clone();
        let last = bad.len() - 1;
        bad[last] = b'x';
        assert!(deserialize_pairs(&bad).is_err());
        assert!(deserialize_pairs(&[255, 255, 255, 255]).is_err());
    }

    #[test]
    fn property_paths_use_nul_separators() {
        assert_eq!(join_property_path(&["request", "path"]), b"request\0path");
        assert_eq!(
            split_property_path(b"request\0path"),
            vec!["request", "path"]
        );
        assert_eq!(
            split_property_path(b"plugin_root_id"),
            vec!["plugin_root_id"]
        );
        assert!(split_property_path(b"").is_empty());
    }
}
