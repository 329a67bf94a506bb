//! The few distributions the error model needs, drawn from [`SplitMix64`]
//! so they are as deterministic as everything else: standard normals
//! (Box–Muller), Gamma (Marsaglia–Tsang) and Beta draws, the logistic
//! function and the standard normal CDF Φ.

use crate::rng::SplitMix64;

/// Uniform in `(0, 1]` (never 0, so its logarithm is finite).
fn open_uniform(rng: &mut SplitMix64) -> f64 {
    1.0 - rng.next_f64()
}

/// A standard normal draw (Box–Muller, using two uniforms).
pub fn normal(rng: &mut SplitMix64) -> f64 {
    let u1 = open_uniform(rng);
    let u2 = rng.next_f64();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// The logarithm of a Gamma(`shape`, 1) draw, by Marsaglia and Tsang's
/// method (with the `U^(1/shape)` boost for shapes below 1). Working in
/// logs keeps tiny shapes from underflowing to 0. `shape` must be > 0.
pub fn ln_gamma_draw(rng: &mut SplitMix64, shape: f64) -> f64 {
    if shape < 1.0 {
        let boost = open_uniform(rng).ln() / shape;
        return ln_gamma_draw(rng, shape + 1.0) + boost;
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    // The acceptance rate is above 95%; the cap only guards the loop.
    for _ in 0..1000 {
        let x = normal(rng);
        let v = 1.0 + c * x;
        if v <= 0.0 {
            continue;
        }
        let v = v * v * v;
        let u = open_uniform(rng);
        if u < 1.0 - 0.0331 * x.powi(4) || u.ln() < 0.5 * x * x + d * (1.0 - v + v.ln()) {
            return (d * v).ln();
        }
    }
    d.ln()
}

/// A Beta(`a`, `b`) draw, `X / (X + Y)` with `X ~ Gamma(a)` and
/// `Y ~ Gamma(b)` (in that order from `rng`). `a`, `b` must be > 0.
pub fn beta(rng: &mut SplitMix64, a: f64, b: f64) -> f64 {
    let lx = ln_gamma_draw(rng, a);
    let ly = ln_gamma_draw(rng, b);
    // X / (X + Y) = 1 / (1 + Y/X), computed in logs.
    sigmoid(lx - ly)
}

/// The logistic function `1 / (1 + e^-x)`.
pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// `ln(p / (1 - p))`.
pub fn logit(p: f64) -> f64 {
    (p / (1.0 - p)).ln()
}

/// The complementary error function, with fractional error below 1.2e-7
/// everywhere (the Chebyshev fit of Numerical Recipes, `erfcc`).
pub fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

/// The standard normal CDF, Φ(z) = erfc(−z/√2) / 2.
pub fn phi(z: f64) -> f64 {
    0.5 * erfc(-z / std::f64::consts::SQRT_2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phi_matches_reference_values() {
        for (z, want) in [
            (0.0, 0.5),
            (1.0, 0.841_344_746_068_542_9),
            (-1.0, 0.158_655_253_931_457_05),
            (-1.96, 0.024_997_895_148_220_435),
            (2.5, 0.993_790_334_674_223_8),
            (3.0, 0.998_650_101_968_369_9),
            (-4.0, 3.167_124_183_311_992e-5),
            (0.3, 0.617_911_422_188_952_7),
        ] {
            let got = phi(z);
            assert!((got - want).abs() < 2e-7, "phi({z}) = {got}, want {want}");
        }
        assert!(phi(-40.0) >= 0.0 && phi(40.0) <= 1.0);
    }

    fn mean_var(xs: &[f64]) -> (f64, f64) {
        let n = xs.len() as f64;
        let m = xs.iter().sum::<f64>() / n;
        (m, xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n)
    }

    #[test]
    fn normal_has_mean_0_and_variance_1() {
        let mut rng = SplitMix64::new(5);
        let xs: Vec<f64> = (0..20_000).map(|_| normal(&mut rng)).collect();
        let (m, v) = mean_var(&xs);
        assert!(m.abs() < 0.03, "{m}");
        assert!((v - 1.0).abs() < 0.05, "{v}");
        let below = xs.iter().filter(|x| **x < 1.0).count() as f64 / 20_000.0;
        assert!((below - phi(1.0)).abs() < 0.015, "{below}");
    }

    #[test]
    fn beta_has_the_right_moments() {
        let mut rng = SplitMix64::new(9);
        for (a, b) in [(2.0, 2.0), (0.4, 3.6), (3.9, 0.1), (20.0, 5.0), (1e-4, 4.0)] {
            let xs: Vec<f64> = (0..20_000).map(|_| beta(&mut rng, a, b)).collect();
            assert!(xs.iter().all(|x| (0.0..=1.0).contains(x)));
            let (m, v) = mean_var(&xs);
            let want_m = a / (a + b);
            let want_v = a * b / ((a + b).powi(2) * (a + b + 1.0));
            assert!(
                (m - want_m).abs() < 0.01,
                "Beta({a},{b}) mean {m} vs {want_m}"
            );
            assert!(
                (v - want_v).abs() < 0.1 * want_v + 1e-3,
                "Beta({a},{b}) var {v} vs {want_v}"
            );
        }
    }

    #[test]
    fn sigmoid_and_logit_invert() {
        for p in [0.001, 0.2, 0.5, 0.9, 0.999] {
            assert!((sigmoid(logit(p)) - p).abs() < 1e-12);
        }
        assert_eq!(sigmoid(-1000.0), 0.0);
        assert_eq!(sigmoid(1000.0), 1.0);
    }
}
