//! Precise release of due instants.
//!
//! tokio's timer counts in whole milliseconds and rounds every deadline up, so a request due at
//! `t` leaves between `t` and `t + 1 ms`, and latency measured from the due instant would carry
//! that lateness. `until(due)` sleeps on tokio's timer to within `COARSE` of the instant, then
//! hands the rest to one pacer thread per process that sleeps on the OS's high-resolution timer
//! (with its timer slack lowered to a microsecond) and wakes each waiting task when its instant
//! has passed, at most once per `QUANTUM` (at high rates, the instants of a quantum together).
//! The thread is started on first use and parks when nothing waits.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Left to the pacer: more than tokio's timer can be late by.
const COARSE: Duration = Duration::from_millis(2);

/// Sleeps until `due`, returning no earlier than `due` and, unless the process is starved of
/// CPU, a few tens of microseconds after it at most.
pub async fn until(due: Instant) {
    let now = Instant::now();
    if due <= now {
        return;
    }
    let Some(pacer) = pacer() else {
        // No thread for the pacer (the process is out of them): tokio's timer alone.
        return tokio::time::sleep_until(due.into()).await;
    };
    if due - now > COARSE * 2 {
        tokio::time::sleep_until((due - COARSE).into()).await;
    }
    Precise {
        due,
        pacer,
        slot: None,
    }
    .await
}

struct Slot {
    waker: Mutex<Waker>,
}

struct Precise {
    due: Instant,
    pacer: &'static Pacer,
    slot: Option<Arc<Slot>>,
}

impl Future for Precise {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.due {
            return Poll::Ready(());
        }
        match &self.slot {
            Some(slot) => {
                let mut w = super::lock(&slot.waker);
                if !w.will_wake(cx.waker()) {
                    w.clone_from(cx.waker());
                }
            }
            None => {
                let slot = Arc::new(Slot {
                    waker: Mutex::new(cx.waker().clone()),
                });
                self.pacer.add(self.due, slot.clone());
                self.slot = Some(slot);
            }
        }
        Poll::Pending
    }
}

struct Entry {
    due: Instant,
    slot: Arc<Slot>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.due == other.due
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    /// Reversed: the earliest instant is the heap's top.
    fn cmp(&self, other: &Self) -> Ordering {
        other.due.cmp(&self.due)
    }
}

struct Pacer {
    state: Mutex<State>,
    changed: Condvar,
}

struct State {
    heap: BinaryHeap<Entry>,
    /// When the pacer thread will look at the heap next; `None` while it waits for an entry.
    wakes_at: Option<Instant>,
    /// The pacer wakes at most once per `QUANTUM`: not before this instant.
    rests_until: Instant,
}

/// The pacer thread wakes at most this often. Each wake-up costs two thread switches (the
/// pacer's and the woken task's runtime thread), so at high rates the due instants of a quantum
/// are released together: at most this much later than due, instead of one wake-up each.
const QUANTUM: Duration = Duration::from_micros(200);

/// The process's pacer, started on first use; `None` if its thread could not be started.
fn pacer() -> Option<&'static Pacer> {
    static PACER: OnceLock<Option<&'static Pacer>> = OnceLock::new();
    *PACER.get_or_init(|| {
        let p: &'static Pacer = Box::leak(Box::new(Pacer {
            state: Mutex::new(State {
                heap: BinaryHeap::new(),
                wakes_at: None,
                rests_until: Instant::now(),
            }),
            changed: Condvar::new(),
        }));
        std::thread::Builder::new()
            .name("loadpilot-pacer".into())
            .spawn(move || p.run())
            .ok()
            .map(|_| p)
    })
}

impl Pacer {
    fn add(&self, due: Instant, slot: Arc<Slot>) {
        let mut state = super::lock(&self.state);
        state.heap.push(Entry { due, slot });
        // Wake the thread only if this instant needs it sooner than it would wake anyway.
        let needed = due.max(state.rests_until);
        let sooner = state.wakes_at.is_none_or(|w| needed < w);
        drop(state);
        if sooner {
            self.changed.notify_one();
        }
    }

    fn run(&self) {
        lower_timer_slack();
        let mut fire: Vec<Arc<Slot>> = Vec::new();
        let mut state = super::lock(&self.state);
        loop {
            let now = Instant::now();
            while state.heap.peek().is_some_and(|top| top.due <= now) {
                fire.extend(state.heap.pop().map(|e| e.slot));
            }
            if !fire.is_empty() {
                // Awake: entries added meanwhile are seen on the next turn, unannounced.
                state.wakes_at = Some(now);
                state.rests_until = now + QUANTUM;
                drop(state);
                for slot in fire.drain(..) {
                    super::lock(&slot.waker).wake_by_ref();
                }
                state = super::lock(&self.state);
                continue;
            }
            let next = state.heap.peek().map(|top| top.due.max(state.rests_until));
            state.wakes_at = next;
            state = match next {
                None => self.changed.wait(state).unwrap(),
                Some(at) => {
                    let wait = at.saturating_duration_since(now);
                    self.changed.wait_timeout(state, wait).unwrap().0
                }
            };
        }
    }
}

/// The pacer's sleeps end within about a microsecond of their deadline instead of Linux's
/// default 50 µs slack.
#[cfg(target_os = "linux")]
fn lower_timer_slack() {
    const PR_SET_TIMERSLACK: i32 = 29;
    extern "C" {
        fn prctl(option: i32, ...) -> i32;
    }
    // SAFETY: PR_SET_TIMERSLACK takes one unsigned long (nanoseconds) and only affects the
    // calling thread.
    unsafe {
        prctl(PR_SET_TIMERSLACK, 1_000u64);
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_timer_slack() {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Median lateness in µs of `wait` for 200 instants off tokio's millisecond grid, some
    /// near, some beyond the pacer's coarse sleep.
    async fn median_lateness<F: std::future::Future<Output = ()>>(
        wait: impl Fn(Instant) -> F,
    ) -> u64 {
        let mut late = Vec::new();
        for i in 0..200u64 {
            let due = Instant::now() + Duration::from_micros(300 + (i * 137) % 6_000);
            wait(due).await;
            let now = Instant::now();
            assert!(now >= due, "released before its instant");
            late.push((now - due).as_micros() as u64);
        }
        late.sort_unstable();
        late[late.len() / 2]
    }

    #[tokio::test(flavor = "current_thread")]
    async fn releases_at_the_instant_not_a_millisecond_later() {
        // Against tokio's own timer on the same instants, in the same test: whatever the
        // machine's load, the pacer must beat a timer that rounds up to whole milliseconds.
        // (Measured quiet here: tokio ~1,100 µs, the pacer ~80 µs; `make bench` reports the
        // figure the requests see.)
        let tokio_ms = median_lateness(|due| tokio::time::sleep_until(due.into())).await;
        let pacer = median_lateness(until).await;
        assert!(
            pacer * 2 < tokio_ms,
            "median lateness: pacer {pacer} µs, tokio's timer {tokio_ms} µs"
        );
    }

    /// Lateness (µs, sorted) of 50 waiters due 20 µs apart, registered latest first, so each
    /// new one is the earliest the waiting mechanism knows of. A waiter never released fails
    /// on the timeout; none may be released before its instant.
    async fn fifty_waiters<F, Fut>(wait: F) -> Vec<u64>
    where
        F: Fn(Instant) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let start = Instant::now();
        let mut handles = Vec::new();
        for i in (0..50u64).rev() {
            // All within reach of the pacer at once (no coarse sleep first).
            let due = start + Duration::from_millis(3) + Duration::from_micros(i * 20);
            let waiting = wait(due);
            handles.push(tokio::spawn(async move {
                waiting.await;
                (due, Instant::now())
            }));
            // Let it register before the next (earlier) one.
            tokio::task::yield_now().await;
        }
        let mut late = Vec::new();
        for h in handles {
            let (due, at) = tokio::time::timeout(Duration::from_secs(5), h)
                .await
                .expect("a waiter was never released")
                .unwrap();
            assert!(at >= due, "released before its instant");
            late.push((at - due).as_micros() as u64);
        }
        late.sort_unstable();
        late
    }

    #[tokio::test(flavor = "current_thread")]
    async fn many_waiters_released_together_soon_after_their_instants() {
        let pacer = fifty_waiters(until).await;
        let tokio = fifty_waiters(|due| tokio::time::sleep_until(due.into())).await;
        // Instants 20 µs apart are released a quantum (200 µs) at a time: well within the
        // millisecond tokio's timer rounds them up to. The same waiters on tokio's timer, in
        // the same test, are the yardstick when the machine is busy (other tests running).
        let (median, tokio_median) = (pacer[pacer.len() / 2], tokio[tokio.len() / 2]);
        assert!(
            median < 2_000 || median * 2 < tokio_median,
            "median lateness {median} µs (tokio's timer {tokio_median} µs); all: {pacer:?}"
        );
    }
}
