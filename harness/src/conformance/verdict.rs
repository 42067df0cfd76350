//! Three verdicts: a promise HOLDS, is BROKEN, or is UNCHECKED (the harness could not observe
//! it). Only an explicit judgement says BROKEN (`broken!`, `promise!`); any other panic in a step
//! (a harness call that failed, an `expect`, a bug) is UNCHECKED, so a verdict never claims more
//! than the harness saw.

use serde::Serialize;

const BROKEN_MARK: &str = "BROKEN: ";
const UNCHECKED_MARK: &str = "UNCHECKED: ";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Verdict {
    Holds,
    Unchecked,
    Broken,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Holds => "HOLDS",
            Verdict::Unchecked => "UNCHECKED",
            Verdict::Broken => "BROKEN",
        }
    }

    /// The verdict of several: BROKEN if any is, else UNCHECKED if any is, else HOLDS (also
    /// when there are none: callers check for an empty run themselves).
    pub fn combine(verdicts: impl IntoIterator<Item = Verdict>) -> Verdict {
        verdicts.into_iter().max().unwrap_or(Verdict::Holds)
    }

    /// 0 holds, 1 broken, 3 unchecked (and nothing broken).
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Holds => crate::error::exit::OK,
            Verdict::Broken => crate::error::exit::FAILED,
            Verdict::Unchecked => crate::error::exit::UNCHECKED,
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a failed step's panic message means: BROKEN or UNCHECKED, and the message without its
/// mark. An unmarked panic is a harness problem, so UNCHECKED.
pub fn classify(message: &str) -> (Verdict, String) {
    if let Some(rest) = message.strip_prefix(BROKEN_MARK) {
        (Verdict::Broken, rest.to_string())
    } else if let Some(rest) = message.strip_prefix(UNCHECKED_MARK) {
        (Verdict::Unchecked, rest.to_string())
    } else {
        (Verdict::Unchecked, format!("harness error: {message}"))
    }
}

/// Ends the step: the mesh broke its promise. The message is the evidence.
#[macro_export]
macro_rules! broken {
    ($($arg:tt)+) => {
        panic!("BROKEN: {}", format_args!($($arg)+))
    };
}

/// Ends the step: the harness could not observe the promise (empty sample, proxy down, ...).
#[macro_export]
macro_rules! unchecked {
    ($($arg:tt)+) => {
        panic!("UNCHECKED: {}", format_args!($($arg)+))
    };
}

/// The promise holds if `cond`; otherwise BROKEN with the message.
#[macro_export]
macro_rules! promise {
    ($cond:expr, $($arg:tt)+) => {{
        let holds: bool = $cond;
        if !holds {
            $crate::broken!($($arg)+);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message_of(f: impl FnOnce() + std::panic::UnwindSafe) -> String {
        let payload = std::panic::catch_unwind(f).unwrap_err();
        payload
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_else(|| payload.downcast_ref::<&str>().unwrap().to_string())
    }

    #[test]
    fn only_marked_failures_are_broken() {
        let m = message_of(|| crate::broken!("got {}", 200));
        assert_eq!(classify(&m), (Verdict::Broken, "got 200".into()));
        let m = message_of(|| crate::unchecked!("no sample"));
        assert_eq!(classify(&m), (Verdict::Unchecked, "no sample".into()));
        let m = message_of(|| crate::promise!(1 + 1 == 3, "arithmetic"));
        assert_eq!(classify(&m).0, Verdict::Broken);
        let (v, msg) = classify("called `Option::unwrap()` on a `None` value");
        assert_eq!(v, Verdict::Unchecked);
        assert!(msg.starts_with("harness error"));
    }

    #[test]
    fn broken_wins_over_unchecked() {
        use Verdict::*;
        assert_eq!(Verdict::combine([Holds, Unchecked, Holds]), Unchecked);
        assert_eq!(Verdict::combine([Unchecked, Broken]), Broken);
        assert_eq!(Verdict::combine([]), Holds);
        assert_eq!(Unchecked.exit_code(), 3);
    }
}
