//! Counter-based randomness: every random choice in the toolkit is a pure function of
//! `(seed, stream, epoch, index)`.
//!
//! A shared, stateful generator makes results depend on thread scheduling; deriving a fresh
//! generator per sample from its coordinates makes them depend on nothing else. The mixer is
//! SplitMix64 (Steele, Lea & Flood, 2014), which passes BigCrush and is more than enough for
//! augmentation parameters and synthetic data.

/// Independent random streams, so that e.g. the crop position and the flip of one sample never
/// share bits. Add new streams at the end; never renumber, or old runs stop reproducing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Stream {
    /// Synthetic dataset generation.
    Synthetic = 1,
    /// Epoch order (shuffles).
    Order = 2,
    /// Per-sample training augmentation.
    Augment = 3,
    /// Parameter initialisation.
    Init = 4,
    /// Dropout masks.
    Dropout = 5,
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A small SplitMix64 generator positioned by its coordinates.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// The generator for one `(seed, stream, epoch, index)` coordinate.
    pub fn new(seed: u64, stream: Stream, epoch: u64, index: u64) -> Self {
        let mut h = mix(seed ^ GOLDEN);
        h = mix(h ^ (stream as u64).wrapping_mul(GOLDEN));
        h = mix(h ^ epoch.wrapping_add(0x51_7CC1_B727_220A));
        h = mix(h ^ index.wrapping_add(0x2545_F491_4F6C_DD1D));
        Rng { state: h }
    }

    /// A generator seeded directly (for sequential use inside one coordinate).
    pub fn from_seed(seed: u64) -> Self {
        Rng { state: mix(seed) }
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix(self.state)
    }

    /// Uniform in `[0, 1)` with 53 bits of precision.
    #[inline]
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[0, 1)` with 24 bits of precision.
    #[inline]
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    /// Uniform in `[lo, hi)`.
    #[inline]
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next_f64()
    }

    /// Uniform integer in `[0, n)`, without modulo bias (Lemire's method). `n` must be > 0.
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "Rng::below(0)");
        let mut m = (self.next_u64() as u128) * (n as u128);
        if (m as u64) < n {
            let t = n.wrapping_neg() % n;
            while (m as u64) < t {
                m = (self.next_u64() as u128) * (n as u128);
            }
        }
        (m >> 64) as u64
    }

    /// Uniform integer in `[lo, hi]` (inclusive).
    #[inline]
    pub fn range_inclusive(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi, "empty range");
        lo + self.below(hi - lo + 1)
    }

    /// `true` with probability `p`.
    #[inline]
    pub fn bernoulli(&mut self, p: f64) -> bool {
        self.next_f64() < p
    }

    /// Standard normal sample (Box-Muller; one value per call, the pair's twin is dropped so the
    /// generator stays a pure function of the number of draws).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.next_f64(); // (0, 1]
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coordinates_decide_the_stream() {
        let a = Rng::new(7, Stream::Augment, 3, 11).next_u64();
        assert_eq!(a, Rng::new(7, Stream::Augment, 3, 11).next_u64());
        assert_ne!(a, Rng::new(7, Stream::Augment, 3, 12).next_u64());
        assert_ne!(a, Rng::new(7, Stream::Augment, 4, 11).next_u64());
        assert_ne!(a, Rng::new(8, Stream::Augment, 3, 11).next_u64());
        assert_ne!(a, Rng::new(7, Stream::Order, 3, 11).next_u64());
    }

    #[test]
    fn uniform_and_normal_moments() {
        let mut r = Rng::from_seed(1);
        let n = 200_000;
        let (mut s, mut s2, mut u) = (0.0, 0.0, 0.0);
        for _ in 0..n {
            let x = r.normal();
            s += x;
            s2 += x * x;
            u += r.next_f64();
        }
        let mean = s / n as f64;
        let var = s2 / n as f64 - mean * mean;
        assert!(mean.abs() < 0.01, "normal mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "normal variance {var}");
        assert!((u / n as f64 - 0.5).abs() < 0.005);
    }

    #[test]
    fn below_is_unbiased_and_in_range() {
        let mut r = Rng::from_seed(2);
        let mut counts = [0u32; 3];
        for _ in 0..30_000 {
            counts[r.below(3) as usize] += 1;
        }
        for c in counts {
            assert!((9_500..10_500).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut v: Vec<u32> = (0..1000).collect();
        Rng::from_seed(3).shuffle(&mut v);
        assert_ne!(v, (0..1000).collect::<Vec<_>>());
        let mut sorted = v.clone();
        sorted.sort();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
    }
}
