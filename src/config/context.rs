//! The context every configuration check runs in: which file (for messages) and its folder (for relative
//! paths), with helpers for the checks every table repeats (durations, ranges, paths).

use super::model::ConfigError;
use super::values::parse_duration;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The longest duration any key takes: 100 years (36,500 days). Timeouts and intervals become deadlines
/// in nanoseconds on a `u64` (584 years) and `Instant`s; no sensible setting comes near.
pub(super) const MAX_DURATION: Duration = Duration::from_secs(36_500 * 86_400);

/// What every check needs: the file (for messages) and its folder (for relative paths).
pub(super) struct Ctx<'a> {
    pub(super) file: String,
    pub(super) base: &'a Path,
}

impl Ctx<'_> {
    /// A problem with `key`.
    pub(super) fn err(&self, key: &str, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            key: key.to_string(),
            problem: problem.into(),
        }
    }

    /// A duration key: `default` when absent; at most [`MAX_DURATION`] (larger values would overflow the
    /// clocks they are added to: deadlines in nanoseconds, instants).
    pub(super) fn duration(
        &self,
        key: &str,
        value: &Option<String>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match value {
            None => Ok(default),
            Some(s) => match parse_duration(s) {
                Ok(d) if d > MAX_DURATION => Err(self.err(
                    key,
                    format!("{s:?} is longer than the longest duration allowed, 100 years"),
                )),
                Ok(d) => Ok(d),
                Err(p) => Err(self.err(key, p)),
            },
        }
    }

    /// A duration key that must lie within `min..=max`.
    pub(super) fn duration_within(
        &self,
        key: &str,
        value: &Option<String>,
        default: Duration,
        (min, max): (Duration, Duration),
        range: &str,
    ) -> Result<Duration, ConfigError> {
        let d = self.duration(key, value, default)?;
        if d < min || d > max {
            return Err(self.err(key, format!("must be {range}")));
        }
        Ok(d)
    }

    /// A path relative to the config file's folder (absolute paths stay as they are).
    pub(super) fn path(&self, p: &str) -> PathBuf {
        let p = PathBuf::from(p);
        if p.is_absolute() {
            p
        } else {
            self.base.join(p)
        }
    }
}
