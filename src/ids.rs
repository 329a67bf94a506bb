//! Response ids: unique per VM without a clock of second resolution. Each VM starts from a
//! random seed (the adapter draws it from the host's randomness) and counts up; the mix makes
//! ids from different VMs and restarts unlikely to collide and hard to guess.

use std::cell::Cell;

pub struct IdGenerator {
    seed: u64,
    /// Nonces come from a stream of their own, so the response ids a client sees say nothing
    /// about the nonces in prompts.
    nonce_seed: u64,
    counter: Cell<u64>,
}

/// SplitMix64: a bijective 64-bit mixer, so distinct inputs always give distinct outputs.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl IdGenerator {
    /// `seed` and `nonce_seed` must be independent random values.
    pub fn new(seed: u64, nonce_seed: u64) -> Self {
        Self {
            seed,
            nonce_seed,
            counter: Cell::new(0),
        }
    }

    /// 16 hex digits nobody outside the VM can predict (for tags in the gateway's prompts).
    pub fn nonce(&self) -> String {
        let n = self.counter.get().wrapping_add(1);
        self.counter.set(n);
        format!(
            "{:016x}",
            mix(mix(n ^ self.nonce_seed).rotate_left(29) ^ self.nonce_seed)
        )
    }

    /// `chatcmpl-` followed by 32 hex digits.
    pub fn completion_id(&self) -> String {
        let n = self.counter.get().wrapping_add(1);
        self.counter.set(n);
        // The counter goes through a bijection keyed by the seed, so ids never repeat within
        // a VM; the second word adds seed-dependent bits against cross-VM collisions.
        let a = mix(n ^ self.seed);
        let b = mix(self.seed.rotate_left(17) ^ a);
        format!("chatcmpl-{a:016x}{b:016x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_unique_and_well_formed() {
        let ids = IdGenerator::new(7, 8);
        let mut seen = HashSet::new();
        for _ in 0..10_000 {
            let id = ids.completion_id();
            assert!(id.starts_with("chatcmpl-"));
            assert_eq!(id.len(), "chatcmpl-".len() + 32);
            assert!(seen.insert(id));
        }
    }

    #[test]
    fn nonces_do_not_follow_from_ids() {
        let a = IdGenerator::new(1, 2);
        let b = IdGenerator::new(1, 3);
        assert_eq!(
            a.completion_id(),
            b.completion_id(),
            "same id seed, same ids"
        );
        assert_ne!(a.nonce(), b.nonce(), "but independent nonces");
    }

    #[test]
    fn different_seeds_give_different_ids() {
        assert_ne!(
            IdGenerator::new(1, 9).completion_id(),
            IdGenerator::new(2, 9).completion_id()
        );
    }
}
