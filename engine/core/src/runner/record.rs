//! One exchange, sent and recorded: the one place where a request's latency, service time,
//! check and error are counted, for engine requests and Python's alike.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use super::Ctx;
pub(crate) use crate::http::Keep;
use crate::http::TRACEPARENT;
use crate::http::{Client, Outgoing, Response};
use crate::measure::kept::{draw, Kept, TraceContext};
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
    /// The trace id it carried, if any.
    pub(crate) trace: Option<u128>,
    /// The connection it went on, and whether it was opened for it.
    pub(crate) connection: Option<u64>,
    pub(crate) new_connection: bool,
    /// How long connecting took, when a connection was opened for it.
    pub(crate) connecting: Option<std::time::Duration>,
}

/// Gives `req` a trace context when the plan's share says so: its trace id. A request that
/// set its own `traceparent` keeps it (and its trace id is the one recorded).
fn traced(ctx: &Ctx, req: &mut Outgoing) -> Option<u128> {
    if let Some((_, own)) = req.headers.iter().find(|(k, _)| *k == TRACEPARENT) {
        return TraceContext::parse(own.as_bytes());
    }
    // 2^64 as a float: the draw is below `trace` of it for that share of requests.
    const SPAN: f64 = 18_446_744_073_709_551_616.0;
    if ctx.trace <= 0.0 || (ctx.trace < 1.0 && draw() as f64 >= ctx.trace * SPAN) {
        return None;
    }
    let t = TraceContext::new();
    req.trace = Some(t);
    Some(t.trace_id)
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
    let mut trace = None;
    let mut connection = None;
    let new_connection = !client.has_connection();
    let mut connecting = None;
    let outcome = tokio::time::timeout(timeout, async {
        let opening = new_connection.then(Instant::now);
        client.ensure_connected().await?;
        connecting = opening.map(|t| t.elapsed());
        connection = client.connection();
        let mut built = build()?;
        trace = traced(ctx, &mut built);
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
        trace,
        connection,
        new_connection,
        connecting,
    }
}

impl Exchange {
    /// Records this exchange of entry `task` (and of its request name's `slot`, the pair) in the
    /// interval it ended in: latency from `from`, service time from the send, the check's
    /// verdict, or the error. `ends_iteration`: this exchange is its iteration's last. `url`
    /// gives the path and query it was sent to, asked for only if the request is kept among
    /// its name's slowest or sampled.
    pub(crate) fn record(
        &self,
        ctx: &Ctx,
        (task, slot): (usize, usize),
        check: &Check,
        values: &Values<'_>,
        ends_iteration: bool,
        url: impl FnOnce() -> String,
    ) {
        let ends = ends_iteration as u64;
        let latency = self.end.saturating_duration_since(self.from).as_micros() as u64;
        if let Some(log) = &ctx.request_log {
            use std::io::Write as _;
            let trace = self.trace.map(TraceContext::hex).unwrap_or_default();
            let answered = self.outcome.is_ok();
            let line = format!("{task}\t{slot}\t{latency}\t{answered}\t{trace}\n");
            let _ = log
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .write_all(line.as_bytes());
        }
        let kept = |key: u64, error: Option<&str>| {
            let rec = &ctx.recorder;
            let sent = self.outcome.as_ref().ok().map(|(s, _)| *s);
            Kept {
                latency_us: latency,
                service_us: sent.map(|s| self.end.saturating_duration_since(s).as_micros() as u64),
                due_s: rec.since_start(self.from),
                sent_s: sent.map(|s| rec.since_start(s)),
                end_s: rec.since_start(self.end),
                status: self.outcome.as_ref().ok().map(|(_, r)| r.status),
                error: error.map(str::to_string),
                url: url(),
                user: values.vu,
                iteration: values.iter,
                row: values.row.map(<[String]>::to_vec),
                connection: self.connection,
                new_connection: self.new_connection,
                connect_us: self.connecting.map(|d| d.as_micros() as u64),
                trace_id: self.trace.map(TraceContext::hex),
                agent: None,
                key,
            }
        };
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
                let kind = failure.map(|(f, _)| ErrorKind::from(f).name());
                ctx.recorder.record_request(
                    task,
                    slot,
                    self.end,
                    |d| {
                        d.response(resp.status, resp.bytes, corrected, service);
                        d.counts.redirects += u64::from(resp.redirects);
                        if let (Some((f, _)), Some(m)) = (failure, &message) {
                            d.failed(f.into(), m);
                        }
                        d.counts.iterations += ends;
                    },
                    latency,
                    |key| kept(key, kind),
                );
            }
            Err(failed) => ctx.recorder.record_request(
                task,
                slot,
                self.end,
                |d| {
                    d.unanswered(failed);
                    d.counts.iterations += ends;
                },
                latency,
                |key| kept(key, Some(failed.kind.name())),
            ),
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
            trace: Some(7),
            connection: Some(3),
            new_connection: true,
            connecting: Some(Duration::from_millis(20)),
        };
        ex.record(
            &ctx,
            (0, 1),
            &check(Expect::default()),
            &VALUES,
            true,
            || "/x?id=1".into(),
        );
        let taken = ctx.recorder.take(0, false);
        let d = &taken[0];
        // Kept with its context by its request name (slot 1), not by its entry.
        assert!(d.kept.is_empty());
        let k = &taken[1].kept.slowest[0];
        assert_eq!((k.latency_us, k.service_us), (300_000, Some(250_000)));
        assert_eq!((k.due_s, k.sent_s, k.end_s), (0.1, Some(0.15), 0.4));
        assert_eq!(
            (k.status, k.error.as_deref(), k.url.as_str()),
            (Some(200), None, "/x?id=1")
        );
        assert_eq!(
            (k.connection, k.new_connection, k.connect_us),
            (Some(3), true, Some(20_000))
        );
        assert_eq!(
            k.trace_id.as_deref(),
            Some("00000000000000000000000000000007")
        );
        assert_eq!(
            taken[1].kept.sample.len(),
            1,
            "and sampled: the first of its second"
        );
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
            trace: None,
            connection: None,
            new_connection: false,
            connecting: None,
        };
        answered.record(&ctx, (0, 1), &wanted, &VALUES, false, String::new);
        let refused = Exchange {
            from: t0,
            end: at,
            outcome: Err(ErrorKind::Connect.into()),
            trace: None,
            connection: None,
            new_connection: true,
            connecting: None,
        };
        refused.record(&ctx, (0, 1), &wanted, &VALUES, true, || "/".into());
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
        // Both kept (a slow failure is evidence too), each with why it failed.
        let errors: Vec<_> = taken[1]
            .kept
            .sorted_slowest()
            .iter()
            .map(|k| k.error.clone())
            .collect();
        assert!(errors.contains(&Some("status".to_string())), "{errors:?}");
        assert!(errors.contains(&Some("connect".to_string())), "{errors:?}");
    }
}
