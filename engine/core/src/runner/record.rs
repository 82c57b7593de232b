//! One exchange, sent and recorded: the one place where a request's latency, service time,
//! check and error are counted, for engine requests and Python's alike.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use super::Ctx;
pub(crate) use crate::http::Keep;
use crate::http::{Client, Outgoing, Response};
use crate::outcome::{ErrorKind, Failed};
use crate::plan::check::{Check, Failure};
use crate::plan::template::Values;

/// One exchange as it ended: what its latency is measured from, when it ended, and when it
/// was sent with its response, or why there was none. What `record` counts.
pub(crate) struct Exchange {
    /// The iteration's due instant for its first request; the start of the exchange for the
    /// next ones (they start when the previous one answered).
    pub(crate) from: Instant,
    pub(crate) end: Instant,
    pub(crate) outcome: Result<(Instant, Response), Failed>,
}

/// Sends one request on `client` and follows up to `max_redirects` redirects, bounded by
/// `timeout` (connecting and every hop included), and counts it in flight meanwhile; latency
/// will count from `from`.
pub(crate) async fn exchange(
    ctx: &Ctx,
    client: &mut Client,
    from: Instant,
    timeout: Duration,
    keep: Keep,
    max_redirects: u32,
    build: impl FnOnce() -> Result<Outgoing, ErrorKind>,
) -> Exchange {
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
    let outcome = tokio::time::timeout(timeout, async {
        client.ensure_connected().await?;
        let built = build()?;
        let sent = Instant::now();
        let resp = client.fetch(built, keep, max_redirects).await?;
        Ok::<_, Failed>((sent, resp))
    })
    .await
    .unwrap_or_else(|_| {
        // The answer may still come later; the connection can no longer be trusted.
        client.timed_out(timeout);
        Err(ErrorKind::Timeout.into())
    });
    Exchange {
        from,
        end: Instant::now(),
        outcome,
    }
}

impl Exchange {
    /// Records this exchange of entry `task` (and of its request name's `slot`) in the
    /// interval it ended in: latency from `from`, service time from the send, the check's
    /// verdict, or the error. `ends_iteration`: this exchange is its iteration's last.
    pub(crate) fn record(
        &self,
        ctx: &Ctx,
        task: usize,
        slot: usize,
        check: &Check,
        values: &Values<'_>,
        ends_iteration: bool,
    ) {
        let ends = ends_iteration as u64;
        match &self.outcome {
            Ok((sent, resp)) => {
                let corrected = self.end.saturating_duration_since(self.from).as_micros() as u64;
                let service = self.end.saturating_duration_since(*sent).as_micros() as u64;
                let failure = check.evaluate_why(resp.status, &resp.body, corrected, values);
                // The failures table's line: the status, or which check failed.
                let message = failure.map(|(f, why)| match f {
                    Failure::Status => format!("HTTP {}", resp.status),
                    Failure::Check => why.to_string(),
                });
                ctx.recorder.record_both(task, slot, self.end, |d| {
                    d.response(resp.status, resp.bytes, corrected, service);
                    d.counts.redirects += u64::from(resp.redirects);
                    if let (Some((f, _)), Some(m)) = (failure, &message) {
                        d.failed(f.into(), m);
                    }
                    d.counts.iterations += ends;
                });
            }
            Err(failed) => ctx.recorder.record_both(task, slot, self.end, |d| {
                d.unanswered(failed);
                d.counts.iterations += ends;
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::template::Scope;
    use crate::plan::{Expect, Plan};

    /// A run's context compiled from a plan (nothing is sent), its clock started at `start`.
    fn ctx(start: Instant) -> Ctx {
        let plan = Plan::from_json(
            r#"{"target": "http://127.0.0.1:1",
                "load": {"model": "open", "stages": [{"kind": "constant", "rate": 1, "duration_s": 3}]},
                "tasks": [{"name": "a", "requests": [{"path": "/"}]}]}"#,
        )
        .unwrap();
        let ctx = super::super::compile::compile(&plan, 1).unwrap().ctx;
        ctx.recorder.begin(start);
        ctx
    }

    fn check(e: Expect) -> Check {
        let scope = Scope::new(&[], &[], &Default::default());
        Check::compile(&e, &scope, "expect").unwrap()
    }

    fn response(status: u16) -> Response {
        Response {
            status,
            bytes: 5,
            body: bytes::Bytes::from_static(b"hello"),
            headers: Vec::new(),
            location: None,
            redirects: 0,
            url: None,
            elapsed: std::time::Duration::ZERO,
        }
    }

    const VALUES: Values<'static> = Values {
        vu: 0,
        iter: 0,
        row: None,
        user: None,
    };

    #[test]
    fn an_exchange_counts_latency_from_its_due_instant_and_service_time_from_the_send() {
        let t0 = Instant::now();
        let ctx = ctx(t0);
        let ms = |n: u64| t0 + Duration::from_millis(n);
        // Due at 100 ms, sent at 150 ms (late: the generator's own wait), answered at 400 ms.
        let ex = Exchange {
            from: ms(100),
            end: ms(400),
            outcome: Ok((ms(150), response(200))),
        };
        ex.record(&ctx, 0, 1, &check(Expect::default()), &VALUES, true);
        let d = &ctx.recorder.take(0, false)[0];
        assert_eq!((d.counts.requests, d.counts.iterations), (1, 1));
        assert_eq!((d.counts.status[1], d.counts.bytes_in), (1, 5));
        assert_eq!(d.corrected.max(), d.corrected.highest_equivalent(300_000));
        assert_eq!(d.service.max(), d.service.highest_equivalent(250_000));
        assert_eq!(d.counts.error_total(), 0);
    }

    #[test]
    fn a_failed_check_and_a_failed_exchange_are_errors_of_their_kind() {
        let t0 = Instant::now();
        let ctx = ctx(t0);
        let at = t0 + Duration::from_millis(1200);
        let wanted = check(Expect {
            status: Some(vec![201]),
            ..Expect::default()
        });
        let answered = Exchange {
            from: t0,
            end: at,
            outcome: Ok((t0, response(200))),
        };
        answered.record(&ctx, 0, 1, &wanted, &VALUES, false);
        let refused = Exchange {
            from: t0,
            end: at,
            outcome: Err(ErrorKind::Connect.into()),
        };
        refused.record(&ctx, 0, 1, &wanted, &VALUES, true);
        let taken = ctx.recorder.take(1, false);
        let d = &taken[0];
        // The failed check's line for the failures table, in the task and in its name.
        assert_eq!(d.messages, [("HTTP 200".to_string(), 1)]);
        assert_eq!(taken[1].messages, d.messages);
        // Both in the interval they ended in (the second), neither in the first.
        assert_eq!(d.counts.requests, 2);
        assert_eq!(d.counts.errors[ErrorKind::Status as usize], 1);
        assert_eq!(d.counts.errors[ErrorKind::Connect as usize], 1);
        assert_eq!(
            d.counts.iterations, 1,
            "only the last exchange ends its iteration"
        );
        assert_eq!(
            d.corrected.len(),
            1,
            "a request with no response has no latency"
        );
    }
}
