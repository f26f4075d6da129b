//! `/metrics` (OpenMetrics text, which Prometheus scrapes natively) and `/healthz`, served
//! on threads of their own: one request per connection, read within [`CLIENT_DEADLINE`]
//! (so a client that never finishes its request, or never reads its answer, holds a thread
//! for seconds, not for ever), parsed by `httparse`. A request asks the event loop for a
//! [`Status`] snapshot through the same channel as the control socket and waits at most
//! [`LOOP_WAIT`]; the loop answers from what it already holds (the queue readings it makes
//! twice a second), so a scrape costs Redis nothing and a slow client stalls only its own
//! thread, never the loop.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

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
/// The whole time a client has to send its request and take its answer.
const CLIENT_DEADLINE: Duration = Duration::from_secs(5);
/// The longest request head accepted (a scrape's is a few hundred bytes).
const MAX_HEAD: usize = 8 * 1024;
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

type Labels = Vec<(&'static str, String)>;
type Gauges = Family<Labels, Gauge<f64, AtomicU64>>;
type Counters = Family<Labels, Counter<u64>>;

/// Binds `addr` and starts serving. Errors say why the address cannot be used.
pub fn serve(addr: SocketAddr, inputs: Sender<Input>) -> Result<(), String> {
    let listener = TcpListener::bind(addr).map_err(|e| {
        format!("cannot listen on {addr}: {e}; choose a free port, or stop what listens there")
    })?;
    log::info!("metrics on http://{addr}/metrics, health on http://{addr}/healthz");
    super::accept::serve(
        "metrics",
        MAX_REQUESTS,
        move || listener.accept().map(|(stream, _)| stream),
        |mut stream: TcpStream| {
            let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
            let _ = write_response(
                &mut stream,
                503,
                TEXT,
                "busy: too many requests at once\n",
                false,
            );
        },
        move |stream| respond(stream, &inputs),
    )
    .map_err(|e| format!("cannot start the metrics thread: {e}"))
}

/// Reads one request head within the client's deadline: its method and path.
fn read_request(stream: &mut TcpStream, deadline: Instant) -> Result<(String, String), u16> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return Err(408);
        }
        let n = match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return Err(408),
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                let method = req.method.unwrap_or_default().to_string();
                return Ok((method, req.path.unwrap_or_default().to_string()));
            }
            Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => {}
            Ok(httparse::Status::Partial) => return Err(431),
            Err(_) => return Err(400),
        }
    }
}

/// Writes a whole response; `head_only` for HEAD (the headers of the GET, no body).
fn write_response(
    stream: &mut TcpStream,
    code: u16,
    kind: &str,
    body: &str,
    head_only: bool,
) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    if !head_only {
        stream.write_all(body.as_bytes())?;
    }
    stream.flush()
}

fn respond(mut stream: TcpStream, inputs: &Sender<Input>) {
    let deadline = Instant::now() + CLIENT_DEADLINE;
    let (method, target) = match read_request(&mut stream, deadline) {
        Ok(r) => r,
        Err(408) => return,
        Err(code) => {
            let _ = stream.set_write_timeout(Some(CLIENT_DEADLINE));
            let _ = write_response(&mut stream, code, TEXT, "bad request\n", false);
            return;
        }
    };
    let _ = stream.set_write_timeout(Some(CLIENT_DEADLINE));
    let (code, kind, body) = answer(&method, &target, inputs);
    let _ = write_response(&mut stream, code, kind, &body, method == "HEAD");
}

/// The response to one request: status code, content type, body.
fn answer(method: &str, target: &str, inputs: &Sender<Input>) -> (u16, &'static str, String) {
    let path = target.split('?').next().unwrap_or_default();
    if path != "/metrics" && path != "/healthz" {
        return (404, TEXT, "not found: try /metrics or /healthz\n".into());
    }
    if method != "GET" && method != "HEAD" {
        return (405, TEXT, format!("{method} is not served: use GET\n"));
    }
    let Some(s) = ask_within(inputs, Request::Status, LOOP_WAIT).status else {
        return (
            503,
            TEXT,
            format!(
                "the supervisor's event loop did not answer within {}s\n",
                LOOP_WAIT.as_secs()
            ),
        );
    };
    if path == "/metrics" {
        return (200, OPENMETRICS, render(&s));
    }
    match problems(&s) {
        p if p.is_empty() => (
            200,
            TEXT,
            format!(
                "ok: {} pool(s), {} worker(s), Redis answers\n",
                s.pools.len(),
                s.workers.len()
            ),
        ),
        p => (503, TEXT, format!("{}\n", p.join("\n"))),
    }
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
                "Memory of the pool's workers (resident) and their work horses (each one's private memory)",
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
