//! One exchange, sent and recorded: the one place where a request's latency, service time,
//! check and error are counted, for engine requests and Python's alike.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use super::Ctx;
use crate::http::{Client, Outgoing, Response};
use crate::outcome::ErrorKind;
use crate::plan::check::Check;
use crate::plan::template::Values;

/// Sends one request on `client`, bounded by `timeout` (connecting included), and counts it
/// in flight meanwhile. Returns when it ended, and when it was sent with the response.
pub(crate) async fn exchange(
    ctx: &Ctx,
    client: &mut Client,
    timeout: Duration,
    keep_body: bool,
    keep_headers: bool,
    build: impl FnOnce() -> Result<Outgoing, ErrorKind>,
) -> (Instant, Result<(Instant, Response), ErrorKind>) {
    /// Counts a request in flight for as long as it lives, including when it is dropped
    /// (cancelled) before it ends.
    struct InFlight<'a>(&'a AtomicI64);
    impl Drop for InFlight<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::Relaxed);
        }
    }
    ctx.recorder.in_flight.fetch_add(1, Ordering::Relaxed);
    let _in_flight = InFlight(&ctx.recorder.in_flight);
    let result = tokio::time::timeout(timeout, async {
        client.ensure_connected().await?;
        let built = build()?;
        let sent = Instant::now();
        let resp = client.send(built, keep_body, keep_headers).await?;
        Ok::<_, ErrorKind>((sent, resp))
    })
    .await
    .unwrap_or_else(|_| {
        // The answer may still come later; the connection can no longer be trusted.
        client.timed_out(timeout);
        Err(ErrorKind::Timeout)
    });
    (Instant::now(), result)
}

/// Records an exchange of entry `task` that ended at `end`: latency from `from` (the
/// iteration's due instant for its first request), service time from the send, the check's
/// verdict, or the error. `ends_iteration`: this exchange is its iteration's last.
#[allow(clippy::too_many_arguments)]
pub(crate) fn record_exchange(
    ctx: &Ctx,
    task: usize,
    from: Instant,
    end: Instant,
    result: &Result<(Instant, Response), ErrorKind>,
    check: &Check,
    values: &Values<'_>,
    ends_iteration: bool,
) {
    let ends = ends_iteration as u64;
    match result {
        Ok((sent, resp)) => {
            let corrected = end.saturating_duration_since(from).as_micros() as u64;
            let service = end.saturating_duration_since(*sent).as_micros() as u64;
            let failure = check.evaluate(resp.status, &resp.body, corrected, values);
            ctx.recorder.record(task, end, |d| {
                d.response(resp.status, resp.bytes, corrected, service);
                if let Some(f) = failure {
                    d.error(f.into(), true);
                }
                d.counts.iterations += ends;
            });
        }
        Err(kind) => ctx.recorder.record(task, end, |d| {
            d.error(*kind, false);
            d.counts.iterations += ends;
        }),
    }
}
