//! Helpers shared by the fuzz targets in `fuzz_targets/`.

/// Reads the chunking header of a streaming target's input: one byte `k` (the number of cuts,
/// modulo 8), then `k` little-endian `u16` cut positions (taken modulo the payload length),
/// then the payload. Returns the payload and its chunks in order; the chunks concatenate to
/// the payload. A too short input is a payload without cuts.
pub fn chunked(data: &[u8]) -> (&[u8], Vec<&[u8]>) {
    let Some((&k, rest)) = data.split_first() else {
        return (data, vec![data]);
    };
    let k = usize::from(k % 8);
    let Some((header, payload)) = rest.split_at_checked(2 * k) else {
        return (rest, vec![rest]);
    };
    let mut cuts: Vec<usize> = header
        .chunks_exact(2)
        .map(|c| match c {
            [a, b] => usize::from(u16::from_le_bytes([*a, *b])) % (payload.len() + 1),
            _ => 0,
        })
        .collect();
    cuts.sort_unstable();
    let mut chunks = Vec::with_capacity(k + 1);
    let mut start = 0;
    for cut in cuts {
        chunks.push(payload.get(start..cut).unwrap_or_default());
        start = cut;
    }
    chunks.push(payload.get(start..).unwrap_or_default());
    (payload, chunks)
}

#[cfg(test)]
mod tests {
    use super::chunked;

    #[test]
    fn chunks_concatenate_to_the_payload() {
        let (payload, chunks) = chunked(&[2, 3, 0, 1, 0, b'a', b'b', b'c', b'd']);
        assert_eq!(payload, b"abcd");
        assert_eq!(chunks, vec![&b"a"[..], b"bc", b"d"]);
        assert_eq!(chunked(&[]).1, vec![&b""[..]]);
        assert_eq!(chunked(&[1, 9]).0, &[9u8][..]);
    }
}
