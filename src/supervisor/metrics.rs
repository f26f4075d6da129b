//! `/metrics` (OpenMetrics text, which Prometheus scrapes natively) and `/healthz`, served
//! by `tiny_http` on threads of their own. A request asks the event loop for a
//! [`Status`] snapshot through the same channel as the control socket and waits at most
//! [`LOOP_WAIT`]; the loop answers from what it already holds (the queue readings it makes
//! twice a second), so a scrape costs Redis nothing and a slow client stalls only its own
//! thread, never the loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crossbeam_channel::Sender;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::control::{Request, ask_within};
use super::input::Input;
use super::status::{PoolStatus, Status, WORKER_STATES};

/// How long a request waits for the event loop before it answers 503.
const LOOP_WAIT: Duration = Duration::from_secs(2);
/// Requests served at once; more get 503 at once.
const MAX_REQUESTS: usize = 8;
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(&'static str, String)>;
type Gauges = Family<Labels, Gauge<f64, AtomicU64>>;
type Counters = Family<Labels, Counter<u64>>;

/// Binds `addr` and starts serving. Errors say why the address cannot be used.
pub fn serve(addr: SocketAddr, inputs: Sender<Input>) -> Result<(), String> {
    let server = tiny_http::Server::http(addr).map_err(|e| {
        format!("cannot listen on {addr}: {e}; choose a free port, or stop what listens there")
    })?;
    log::info!("metrics on http://{addr}/metrics, health on http://{addr}/healthz");
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                if active.fetch_add(1, Ordering::SeqCst) >= MAX_REQUESTS {
                    active.fetch_sub(1, Ordering::SeqCst);
                    let _ = request.respond(text(503, "busy: too many requests at once\n"));
                    continue;
                }
                let inputs = inputs.clone();
                let mine = Arc::clone(&active);
                let spawned = std::thread::Builder::new()
                    .name("metrics-client".into())
                    .spawn(move || {
                        respond(request, &inputs);
                        mine.fetch_sub(1, Ordering::SeqCst);
                    });
                if spawned.is_err() {
                    // The request went with the closure; only the count is left to fix.
                    active.fetch_sub(1, Ordering::SeqCst);
                }
            }
        })
        .map_err(|e| format!("cannot start the metrics thread: {e}"))?;
    Ok(())
}

fn text(code: u16, body: &str) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    tiny_http::Response::from_string(body)
        .with_status_code(code)
        .with_header(header("Content-Type", "text/plain; charset=utf-8"))
}

fn header(name: &str, value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("a valid header")
}

fn respond(request: tiny_http::Request, inputs: &Sender<Input>) {
    let path = request
        .url()
        .split('?')
        .next()
        .unwrap_or_default()
        .to_string();
    if path != "/metrics" && path != "/healthz" {
        let _ = request.respond(text(404, "not found: try /metrics or /healthz\n"));
        return;
    }
    let status = ask_within(inputs, Request::Status, LOOP_WAIT).status;
    let response = match (path.as_str(), status) {
        (_, None) => text(
            503,
            &format!(
                "the supervisor's event loop did not answer within {}s\n",
                LOOP_WAIT.as_secs()
            ),
        ),
        ("/metrics", Some(s)) => tiny_http::Response::from_string(render(&s))
            .with_header(header("Content-Type", OPENMETRICS)),
        (_, Some(s)) => match problems(&s) {
            p if p.is_empty() => text(
                200,
                &format!(
                    "ok: {} pool(s), {} worker(s), Redis answers\n",
                    s.pools.len(),
                    s.workers.len()
                ),
            ),
            p => text(503, &format!("{}\n", p.join("\n"))),
        },
    };
    let _ = request.respond(response);
}

/// Why `/healthz` is not 200: degraded pools, Redis not answering, a shutdown.
pub fn problems(s: &Status) -> Vec<String> {
    let mut out: Vec<String> = s
        .pools
        .iter()
        .filter_map(|p| {
            Some(format!(
                "pool {} is degraded: {}",
                p.name,
                p.degraded.as_ref()?
            ))
        })
        .collect();
    if !s.redis.ok {
        out.push(format!(
            "Redis at {} does not answer: {}",
            s.redis.url,
            s.redis.error.as_deref().unwrap_or("no reading yet")
        ));
    }
    if s.phase != "running" {
        out.push(format!("rq-supervisor is {}", s.phase));
    }
    out
}

fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

/// A gauge family registered under `name`, and a setter for it.
fn gauges(r: &mut Registry, name: &str, help: &str) -> Gauges {
    let family = Gauges::default();
    r.register(name, help, family.clone());
    family
}

fn counters(r: &mut Registry, name: &str, help: &str) -> Counters {
    let family = Counters::default();
    r.register(name, help, family.clone());
    family
}

/// Every family of the page, registered once per scrape.
struct Families {
    workers: Gauges,
    desired: Gauges,
    min: Gauges,
    max: Gauges,
    degraded: Gauges,
    paused: Gauges,
    backlog: Gauges,
    rss: Gauges,
    restarts: Counters,
    jobs: Counters,
    length: Gauges,
    oldest: Gauges,
    redis_up: Gauge<f64, AtomicU64>,
}

impl Families {
    fn register(r: &mut Registry) -> Families {
        let redis_up = Gauge::<f64, AtomicU64>::default();
        r.register(
            "rq_supervisor_redis_up",
            "1 when the latest reading of Redis got an answer",
            redis_up.clone(),
        );
        Families {
            workers: gauges(
                r,
                "rq_supervisor_workers",
                "Workers by pool and state (starting, idle, busy, paused, retiring)",
            ),
            desired: gauges(
                r,
                "rq_supervisor_pool_desired_workers",
                "The worker count the supervisor keeps each pool at now",
            ),
            min: gauges(
                r,
                "rq_supervisor_pool_min_workers",
                "An autoscaled pool's lower bound",
            ),
            max: gauges(
                r,
                "rq_supervisor_pool_max_workers",
                "An autoscaled pool's upper bound",
            ),
            degraded: gauges(
                r,
                "rq_supervisor_pool_degraded",
                "1 while the pool is degraded (its workers cannot start or keep failing)",
            ),
            paused: gauges(r, "rq_supervisor_pool_paused", "1 while the pool is paused"),
            backlog: gauges(
                r,
                "rq_supervisor_pool_backlog_jobs",
                "Jobs queued on the pool's queues",
            ),
            rss: gauges(
                r,
                "rq_supervisor_pool_rss_bytes",
                "Resident memory of the pool's workers and their work horses",
            ),
            restarts: counters(
                r,
                "rq_supervisor_restarts",
                "Workers replaced, by pool and reason",
            ),
            jobs: counters(
                r,
                "rq_supervisor_jobs",
                "Jobs the pool's workers ended, by outcome (finished, failed)",
            ),
            length: gauges(r, "rq_queue_length", "Jobs waiting in the queue"),
            oldest: gauges(
                r,
                "rq_queue_oldest_job_age_seconds",
                "How long the job at the head of the queue has waited",
            ),
            redis_up,
        }
    }

    fn pool(&self, s: &Status, p: &PoolStatus) {
        let name = p.name.as_str();
        let pool = labels(&[("pool", name)]);
        for state in WORKER_STATES {
            let n = s
                .workers
                .iter()
                .filter(|w| w.pool == name && w.state == state)
                .count();
            self.workers
                .get_or_create(&labels(&[("pool", name), ("state", state)]))
                .set(n as f64);
        }
        self.desired.get_or_create(&pool).set(f64::from(p.desired));
        if let Some(a) = &p.autoscale {
            self.min.get_or_create(&pool).set(f64::from(a.min));
            self.max.get_or_create(&pool).set(f64::from(a.max));
        }
        let flag = |on: bool| if on { 1.0 } else { 0.0 };
        self.degraded
            .get_or_create(&pool)
            .set(flag(p.degraded.is_some()));
        self.paused.get_or_create(&pool).set(flag(p.paused));
        self.backlog.get_or_create(&pool).set(p.backlog as f64);
        self.rss.get_or_create(&pool).set(p.rss_bytes as f64);
        for (reason, n) in &p.restarts {
            self.restarts
                .get_or_create(&labels(&[("pool", name), ("reason", reason)]))
                .inc_by(*n);
        }
        for (outcome, n) in [("finished", p.jobs_finished), ("failed", p.jobs_failed)] {
            self.jobs
                .get_or_create(&labels(&[("pool", name), ("outcome", outcome)]))
                .inc_by(n);
        }
    }
}

/// The snapshot in OpenMetrics text. Each family is listed in docs/supervisor.md.
pub fn render(s: &Status) -> String {
    let mut r = Registry::default();
    let f = Families::register(&mut r);
    for p in &s.pools {
        f.pool(s, p);
    }
    for q in &s.queues {
        let queue = labels(&[("queue", &q.name)]);
        f.length.get_or_create(&queue).set(q.length as f64);
        f.oldest
            .get_or_create(&queue)
            .set(q.oldest_job_age_seconds.unwrap_or(0.0));
    }
    f.redis_up.set(if s.redis.ok { 1.0 } else { 0.0 });
    let mut out = String::new();
    encode(&mut out, &r).expect("writing to a String cannot fail");
    out
}
