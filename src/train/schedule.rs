//! The learning-rate schedule as a small state machine that lives in the checkpoint, so a
//! resumed run takes the same decisions as an uninterrupted one.

use serde::{Deserialize, Serialize};

use crate::config::training::Schedule;

/// Where the schedule stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleState {
    pub lr: f32,
    /// Best validation top-1 error so far (plateau schedule).
    pub best_top1_error: Option<f64>,
    /// Epochs since the best one.
    pub bad_epochs: u32,
    pub decreases: u32,
    /// The plateau after the last allowed decrease was reached: the run is over whatever its
    /// epoch count.
    #[serde(default)]
    pub stopped: bool,
}

/// What to do after an epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    Keep,
    Decrease {
        from: f32,
        to: f32,
    },
    /// The plateau after the last allowed decrease: the run is over.
    Stop,
}

impl ScheduleState {
    pub fn new(lr: f32) -> Self {
        ScheduleState {
            lr,
            best_top1_error: None,
            bad_epochs: 0,
            decreases: 0,
            stopped: false,
        }
    }

    /// Updates the state after `epoch` (counted from 0) ended with `val_top1_error` (None when
    /// there was no validation; the plateau schedule then keeps the rate).
    pub fn after_epoch(
        &mut self,
        schedule: &Schedule,
        epoch: u64,
        val_top1_error: Option<f64>,
    ) -> Decision {
        match *schedule {
            Schedule::Constant => Decision::Keep,
            Schedule::Step { every, factor } => {
                if (epoch + 1).is_multiple_of(every as u64) {
                    self.decrease(factor)
                } else {
                    Decision::Keep
                }
            }
            Schedule::Plateau {
                factor,
                patience,
                max_decreases,
                min_delta,
            } => {
                let Some(err) = val_top1_error.filter(|e| e.is_finite()) else {
                    return Decision::Keep;
                };
                let better = self.best_top1_error.is_none_or(|b| err < b - min_delta);
                if better {
                    self.best_top1_error = Some(err);
                    self.bad_epochs = 0;
                    return Decision::Keep;
                }
                self.bad_epochs += 1;
                if self.bad_epochs < patience {
                    return Decision::Keep;
                }
                self.bad_epochs = 0;
                if self.decreases >= max_decreases {
                    self.stopped = true;
                    return Decision::Stop;
                }
                self.decrease(factor)
            }
        }
    }

    fn decrease(&mut self, factor: f32) -> Decision {
        let from = self.lr;
        self.lr *= factor;
        self.decreases += 1;
        Decision::Decrease { from, to: self.lr }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plateau_divides_by_ten_three_times_then_stops() {
        let s = Schedule::default();
        let mut st = ScheduleState::new(0.01);
        // Improving: keep.
        assert_eq!(st.after_epoch(&s, 0, Some(0.9)), Decision::Keep);
        assert_eq!(st.after_epoch(&s, 1, Some(0.8)), Decision::Keep);
        // Stalls: decrease.
        assert_eq!(
            st.after_epoch(&s, 2, Some(0.8)),
            Decision::Decrease {
                from: 0.01,
                to: 0.01 * 0.1
            }
        );
        assert_eq!(st.after_epoch(&s, 3, Some(0.7)), Decision::Keep);
        assert!(matches!(
            st.after_epoch(&s, 4, Some(0.75)),
            Decision::Decrease { .. }
        ));
        assert!(matches!(
            st.after_epoch(&s, 5, Some(0.71)),
            Decision::Decrease { .. }
        ));
        assert_eq!(st.decreases, 3);
        assert!((st.lr - 1e-5).abs() < 1e-9);
        assert_eq!(st.after_epoch(&s, 6, Some(0.6)), Decision::Keep);
        assert!(!st.stopped);
        assert_eq!(st.after_epoch(&s, 7, Some(0.6)), Decision::Stop);
        assert!(st.stopped, "a stopped schedule stays stopped on resume");
        // No validation: nothing changes.
        let mut st = ScheduleState::new(0.01);
        assert_eq!(st.after_epoch(&s, 0, None), Decision::Keep);
        assert_eq!(st.after_epoch(&s, 1, Some(f64::NAN)), Decision::Keep);
    }

    #[test]
    fn patience_and_min_delta() {
        let s = Schedule::Plateau {
            factor: 0.5,
            patience: 2,
            max_decreases: 1,
            min_delta: 0.01,
        };
        let mut st = ScheduleState::new(1.0);
        st.after_epoch(&s, 0, Some(0.5));
        // 0.495 is not better by 0.01: a bad epoch, but patience is 2.
        assert_eq!(st.after_epoch(&s, 1, Some(0.495)), Decision::Keep);
        assert_eq!(
            st.after_epoch(&s, 2, Some(0.495)),
            Decision::Decrease { from: 1.0, to: 0.5 }
        );
        assert_eq!(st.after_epoch(&s, 3, Some(0.6)), Decision::Keep);
        assert_eq!(st.after_epoch(&s, 4, Some(0.6)), Decision::Stop);
    }

    #[test]
    fn step_schedule() {
        let s = Schedule::Step {
            every: 2,
            factor: 0.1,
        };
        let mut st = ScheduleState::new(1.0);
        assert_eq!(st.after_epoch(&s, 0, None), Decision::Keep);
        assert!(matches!(
            st.after_epoch(&s, 1, None),
            Decision::Decrease { .. }
        ));
        assert_eq!(st.after_epoch(&s, 2, None), Decision::Keep);
        assert!(matches!(
            st.after_epoch(&s, 3, None),
            Decision::Decrease { .. }
        ));
        assert!((st.lr - 0.01).abs() < 1e-7);
    }
}
