//! Helpers shared by the fuzz targets in `fuzz_targets/`.

/// Reads the chunking header of a streaming target's input: one byte whose low three bits
/// `k` say how the payload is cut, then the payload. For `k` below 7, `k` little-endian `u16`
/// cut positions (taken modulo the payload length) follow the first byte; for 7, one byte
/// `s`, and the payload comes in chunks of `s % 64 + 1` bytes (a stream dripped in small
/// pieces). Returns the payload and its chunks in order; the chunks concatenate to the
/// payload. A too short input is a payload without cuts.
pub fn chunked(data: &[u8]) -> (&[u8], Vec<&[u8]>) {
    let Some((&first, rest)) = data.split_first() else {
        return (data, vec![data]);
    };
    let k = usize::from(first % 8);
    if k == 7 {
        let Some((&size, payload)) = rest.split_first() else {
            return (rest, vec![rest]);
        };
        let chunks = payload.chunks(usize::from(size % 64) + 1).collect();
        return (payload, chunks);
    }
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
        let (payload, chunks) = chunked(&[0x0f, 65, 1, 2, 3, 4, 5]);
        assert_eq!(payload, &[1, 2, 3, 4, 5][..]);
        assert_eq!(chunks, vec![&[1u8, 2][..], &[3, 4], &[5]]);
        assert!(chunked(&[7, 0]).1.is_empty());
    }
}
