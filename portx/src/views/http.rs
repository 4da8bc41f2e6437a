//! `portx serve`'s HTTP endpoint (hyper 1, HTTP/1.1 only): `/metrics`, `/healthz`
//! and a landing page at `/`.
//!
//! The HTTP side never touches the model: for `/metrics` it asks the event loop for a
//! body through a channel, and the loop answers between ring-buffer drains, so a
//! scrape never stalls the event stream. Everything a client controls is bounded:
//! time to send the request head ([`Limits::header_timeout`]), its size
//! ([`Limits::max_header_bytes`], else 431), a connection's whole life
//! ([`Limits::connection_timeout`]), and connections at once
//! ([`Limits::max_connections`]; the rest wait in the listen backlog). One request
//! per connection (no keep-alive), so an idle client cannot hold a slot.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::TcpListener,
    sync::{Semaphore, mpsc, oneshot},
};

/// A scrape's request to the event loop: send the metrics text back.
pub type ScrapeRequest = oneshot::Sender<String>;

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub header_timeout: Duration,
    pub connection_timeout: Duration,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    /// How long a scrape waits for the loop's answer.
    pub scrape_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(30),
            max_connections: 64,
            // hyper's smallest read buffer is 8 KiB; a scrape's head is a few hundred bytes.
            max_header_bytes: 16 * 1024,
            scrape_timeout: Duration::from_secs(10),
        }
    }
}

/// What the handlers share.
#[derive(Clone)]
struct State {
    scrapes: mpsc::Sender<ScrapeRequest>,
    /// Programs attached and baseline taken.
    ready: Arc<AtomicBool>,
    scrape_timeout: Duration,
}

const LANDING: &str = "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>portx serve</title></head>\n<body><h1>portx serve</h1>\n<p>Ephemeral port use per destination, from eBPF.</p>\n<ul><li><a href=\"/metrics\">/metrics</a> (Prometheus text format)</li>\n<li><a href=\"/healthz\">/healthz</a> (200 once the programs are attached and the baseline is taken)</li></ul>\n</body></html>\n";

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn route(st: State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let ready = st.ready.load(Ordering::Acquire);
    match req.uri().path() {
        "/" => {
            let mut r = text(StatusCode::OK, LANDING);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/html; charset=utf-8"),
            );
            r
        }
        "/healthz" if ready => text(StatusCode::OK, "ok\n"),
        "/healthz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "starting: attaching or taking the baseline\n",
        ),
        "/metrics" if !ready => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "starting: the baseline is not taken yet\n",
        ),
        "/metrics" => {
            let (tx, rx) = oneshot::channel();
            if st.scrapes.send(tx).await.is_err() {
                return text(StatusCode::SERVICE_UNAVAILABLE, "stopping\n");
            }
            match tokio::time::timeout(st.scrape_timeout, rx).await {
                Ok(Ok(body)) => {
                    let mut r = text(StatusCode::OK, body);
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        header::HeaderValue::from_static(crate::views::metrics::CONTENT_TYPE),
                    );
                    r
                }
                _ => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the event loop did not answer in time\n",
                ),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found: try /metrics\n"),
    }
}

/// Serves `listener` until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    scrapes: mpsc::Sender<ScrapeRequest>,
    ready: Arc<AtomicBool>,
    limits: Limits,
) {
    let st = State {
        scrapes,
        ready,
        scrape_timeout: limits.scrape_timeout,
    };
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        // Take a slot before accepting: beyond the limit, clients wait in the kernel's
        // listen backlog instead of costing us memory.
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(_) => {
                // EMFILE and friends: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let st = st.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let svc = service_fn(move |req| {
                let st = st.clone();
                async move { Ok::<_, Infallible>(route(st, req).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(limits.max_header_bytes)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), svc);
            // Errors are the client's (malformed request, reset): nothing to report.
            let _ = tokio::time::timeout(limits.connection_timeout, conn).await;
        });
    }
}
