//! Top-1 / top-5 counting on class scores: the one definition of "correct" that the trainer's
//! validation and the evaluator's protocols share, with ties broken by class index (as ONNX
//! TopK) and NaN scores counted wrong.

/// Rank of the true class (0 = best): the number of classes with a strictly higher score, plus
/// the number of classes tied with it at a lower index. Ties are thus broken by class index, as
/// ONNX TopK specifies (and torch.topk does in practice). Top-k is correct iff `rank < k`.
///
/// If any score is NaN the ranking is undefined and the result is `usize::MAX`, so the image is
/// wrong for every k.
///
/// # Panics
///
/// If `label` is not a class index of `scores`.
pub fn rank_of(scores: &[f32], label: usize) -> usize {
    assert!(
        label < scores.len(),
        "label {label} out of range for {} classes",
        scores.len()
    );
    if scores.iter().any(|s| s.is_nan()) {
        return usize::MAX;
    }
    let t = scores[label];
    scores
        .iter()
        .enumerate()
        .filter(|&(i, &s)| s > t || (s == t && i < label))
        .count()
}

/// Top-1 / top-5 counters.
///
/// An image whose scores contain a NaN is counted, and counted wrong (never correct), for both.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct TopK {
    /// Images scored.
    pub images: u64,
    /// Images whose true class ranks first.
    pub top1_correct: u64,
    /// Images whose true class is among the five best.
    pub top5_correct: u64,
}

impl TopK {
    /// Scores one image (see [`rank_of`] for ties and NaN).
    ///
    /// # Panics
    ///
    /// If `label` is not a class index of `scores`.
    pub fn add(&mut self, scores: &[f32], label: usize) {
        let rank = rank_of(scores, label);
        self.images += 1;
        self.top1_correct += u64::from(rank < 1);
        self.top5_correct += u64::from(rank < 5);
    }

    /// Adds another counter's images (e.g. from another worker).
    pub fn merge(&mut self, other: TopK) {
        self.images += other.images;
        self.top1_correct += other.top1_correct;
        self.top5_correct += other.top5_correct;
    }

    /// Top-1 error as a fraction in 0..=1. With no images it is 0.0 (not NaN, which JSON
    /// cannot carry); check [`TopK::images`].
    pub fn top1_error(&self) -> f64 {
        Self::error(self.top1_correct, self.images)
    }

    /// Top-5 error as a fraction in 0..=1; 0.0 with no images, as [`TopK::top1_error`].
    pub fn top5_error(&self) -> f64 {
        Self::error(self.top5_correct, self.images)
    }

    fn error(correct: u64, images: u64) -> f64 {
        if images == 0 {
            0.0
        } else {
            (images - correct) as f64 / images as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_breaks_ties_by_index() {
        assert_eq!(rank_of(&[0.5, 0.5, 0.1], 1), 1);
        assert_eq!(rank_of(&[0.5, 0.5, 0.1], 0), 0);
        assert_eq!(rank_of(&[0.1, 0.2, 0.7], 0), 2);
        assert_eq!(rank_of(&[0.1, f32::NAN, 0.7], 2), usize::MAX);
    }

    #[test]
    fn topk_counts() {
        let mut t = TopK::default();
        // Correct at top-1.
        t.add(&[0.1, 0.6, 0.1, 0.1, 0.05, 0.05], 1);
        // Tie at 5th place: label 4 ties with class 5 and has the lower index -> rank 4, top-5.
        t.add(&[0.3, 0.25, 0.2, 0.15, 0.05, 0.05], 4);
        // Same scores, label 5 ties with class 4 at a higher index -> rank 5, not top-5.
        t.add(&[0.3, 0.25, 0.2, 0.15, 0.05, 0.05], 5);
        // NaN anywhere: wrong for both, even though the label scores highest.
        t.add(&[0.9, f32::NAN, 0.0, 0.0, 0.0, 0.0], 0);
        assert_eq!(
            t,
            TopK {
                images: 4,
                top1_correct: 1,
                top5_correct: 2
            }
        );
        assert_eq!(t.top1_error(), 0.75);
        assert_eq!(t.top5_error(), 0.5);
        let mut u = TopK::default();
        assert_eq!(u.top1_error(), 0.0);
        assert_eq!(u.top5_error(), 0.0);
        u.add(&[1.0, 0.0], 0);
        u.merge(t);
        assert_eq!((u.images, u.top1_correct, u.top5_correct), (5, 2, 3));
    }
}
