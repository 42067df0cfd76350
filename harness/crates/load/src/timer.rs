//! Microsecond-precise async sleeps for the open-loop schedule (a timerfd on Linux).
//!
//! tokio's timer wheel rounds every deadline up to the next whole millisecond,
//! which would add up to 1 ms to every open-loop latency (they count from the
//! intended send time). A timerfd armed with a relative nanosecond timeout
//! fires on time and wakes the generator thread's own event loop, so the
//! schedule needs no second thread and no cross-thread wake-up per request.

use std::time::Instant;

#[cfg(target_os = "linux")]
pub use linux::PreciseTimer;

#[cfg(not(target_os = "linux"))]
pub use fallback::PreciseTimer;

#[cfg(target_os = "linux")]
mod linux {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

    use tokio::io::unix::AsyncFd;

    use super::Instant;

    struct TimerFd(OwnedFd);

    impl AsRawFd for TimerFd {
        fn as_raw_fd(&self) -> RawFd {
            self.0.as_raw_fd()
        }
    }

    /// One timerfd registered with the current tokio runtime.
    pub struct PreciseTimer {
        fd: AsyncFd<TimerFd>,
    }

    impl PreciseTimer {
        /// Must be called inside a tokio runtime with I/O enabled.
        pub fn new() -> io::Result<PreciseTimer> {
            // SAFETY: plain syscall; the result is checked before use.
            let raw = unsafe {
                libc::timerfd_create(
                    libc::CLOCK_MONOTONIC,
                    libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
                )
            };
            if raw < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `raw` is a fresh descriptor this value now owns.
            let fd = TimerFd(unsafe { OwnedFd::from_raw_fd(raw) });
            // SAFETY: the AsyncFd owns the descriptor, so it stays open and
            // the same file for as long as it is registered.
            let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }?;
            Ok(PreciseTimer { fd })
        }

        /// Sleeps until `deadline`; returns at once when it has passed.
        pub async fn sleep_until(&mut self, deadline: Instant) -> io::Result<()> {
            loop {
                let now = Instant::now();
                if deadline <= now {
                    return Ok(());
                }
                let left = deadline - now;
                let spec = libc::itimerspec {
                    it_interval: libc::timespec {
                        tv_sec: 0,
                        tv_nsec: 0,
                    },
                    it_value: libc::timespec {
                        tv_sec: left.as_secs() as libc::time_t,
                        tv_nsec: left.subsec_nanos() as libc::c_long,
                    },
                };
                // Arming resets the expiry count, so the descriptor turns
                // readable (one epoll edge) exactly when this deadline passes:
                // no read() is needed to consume earlier expiries.
                // SAFETY: valid descriptor and pointers for the call's duration.
                let rc = unsafe {
                    libc::timerfd_settime(
                        self.fd.get_ref().as_raw_fd(),
                        0,
                        &spec,
                        std::ptr::null_mut(),
                    )
                };
                if rc < 0 {
                    return Err(io::Error::last_os_error());
                }
                let mut ready = self.fd.readable().await?;
                ready.clear_ready();
                // Loop: a stale readiness from an earlier arming is possible
                // after a cancelled sleep; the clock decides.
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod fallback {
    use std::io;

    use super::Instant;

    /// tokio's timer: millisecond resolution.
    pub struct PreciseTimer;

    impl PreciseTimer {
        pub fn new() -> io::Result<PreciseTimer> {
            Ok(PreciseTimer)
        }

        pub async fn sleep_until(&mut self, deadline: Instant) -> io::Result<()> {
            tokio::time::sleep_until(deadline.into()).await;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn wakes_after_the_deadline_and_returns_at_once_for_past_ones() {
        let mut t = PreciseTimer::new().unwrap();
        for us in [0u64, 50, 300, 1500] {
            let deadline = Instant::now() + Duration::from_micros(us);
            t.sleep_until(deadline).await.unwrap();
            assert!(Instant::now() >= deadline, "{us} us");
        }
        let past = Instant::now() - Duration::from_millis(5);
        t.sleep_until(past).await.unwrap();
    }
}
