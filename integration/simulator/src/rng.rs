//! Stable hashing and a tiny PRNG.
//!
//! Everything the simulator "decides" (answer words, logprobs, latency jitter,
//! injected faults) is drawn from [`SplitMix64`] seeded with an [`Fnv64`] hash
//! of the inputs, so the same config and request always produce the same
//! output, on every platform and in every process. `std`'s `RandomState` is
//! never used for anything that affects output.

use serde_json::Value;

/// 64-bit FNV-1a. Not cryptographic; only needs to be stable and cheap.
/// Its output is always fed through [`SplitMix64`], which fixes its weak
/// avalanche behaviour.
#[derive(Debug, Clone)]
pub struct Fnv64(u64);

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

impl Default for Fnv64 {
    fn default() -> Self {
        Self::new()
    }
}

impl Fnv64 {
    pub fn new() -> Self {
        Fnv64(FNV_OFFSET)
    }

    pub fn bytes(&mut self, data: &[u8]) -> &mut Self {
        for &b in data {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
        self
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }

    /// Hashes a string with a length prefix, so `("ab","c")` and `("a","bc")`
    /// hash differently.
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64).bytes(s.as_bytes())
    }

    /// Hashes a JSON value canonically: object keys are visited in sorted
    /// order whatever order they had on the wire (and whatever serde_json's
    /// `preserve_order` feature says), so semantically equal requests hash
    /// equally.
    pub fn json(&mut self, v: &Value) -> &mut Self {
        match v {
            Value::Null => self.bytes(b"n"),
            Value::Bool(b) => self.bytes(if *b { b"t" } else { b"f" }),
            Value::Number(n) => self.bytes(b"#").str(&n.to_string()),
            Value::String(s) => self.bytes(b"s").str(s),
            Value::Array(items) => {
                self.bytes(b"[").u64(items.len() as u64);
                for item in items {
                    self.json(item);
                }
                self
            }
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                self.bytes(b"{").u64(keys.len() as u64);
                for key in keys {
                    self.str(key);
                    if let Some(val) = map.get(key) {
                        self.json(val);
                    }
                }
                self
            }
        }
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

/// SplitMix64 (Steele, Lea & Flood): tiny, fast, and good enough for
/// simulation. Every seed, including 0, gives a full-quality stream.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 bits of precision.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[0, n)`; returns 0 when `n == 0`.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `[0, max]` (inclusive).
    pub fn up_to(&mut self, max: u64) -> u64 {
        if max == u64::MAX {
            self.next_u64()
        } else {
            self.below(max + 1)
        }
    }
}

/// The seed of a request that names its own `seed`: the config's seed and the request's,
/// mixed so that neighbouring request seeds give unrelated samples.
pub fn mix_seed(config_seed: u64, request_seed: u64) -> u64 {
    Fnv64::new()
        .bytes(b"looper-sim/request-seed")
        .u64(config_seed)
        .u64(request_seed)
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_known_vector() {
        // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c.
        assert_eq!(Fnv64::new().bytes(b"a").finish(), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn json_hash_ignores_key_order() {
        let a: Value = serde_json::from_str(r#"{"x":1,"y":[true,null,"s"]}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"y":[true,null,"s"],"x":1}"#).unwrap();
        let c: Value = serde_json::from_str(r#"{"y":[true,null,"t"],"x":1}"#).unwrap();
        assert_eq!(
            Fnv64::new().json(&a).finish(),
            Fnv64::new().json(&b).finish()
        );
        assert_ne!(
            Fnv64::new().json(&a).finish(),
            Fnv64::new().json(&c).finish()
        );
    }

    #[test]
    fn splitmix_is_stable_and_in_range() {
        // Reference values for seed 0 from the published algorithm.
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(r.next_u64(), 0x6e78_9e6a_a1b9_65f4);
        for _ in 0..1000 {
            let f = r.next_f64();
            assert!((0.0..1.0).contains(&f));
            assert!(r.below(7) < 7);
            assert!(r.up_to(3) <= 3);
        }
        assert_eq!(r.below(0), 0);
    }
}
