//! The generator's own live metrics in Prometheus' text format (`--metrics-listen ADDR`), so a
//! game day's dashboards show the harness beside the mesh: requests and errors so far, the
//! asked rate, latency quantiles (corrected for coordinated omission, as the report is) and
//! whether the generator is saturated.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::lane::{Lane, any_saturated};
use crate::record::new_histogram;

/// Serves `GET /metrics` until dropped.
pub struct Exporter {
    task: tokio::task::JoinHandle<()>,
    pub addr: SocketAddr,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What an exporter serves: the metrics text as of the request.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

impl Exporter {
    /// A load run's metrics.
    pub async fn start(
        listen: SocketAddr,
        name: String,
        lanes: Vec<Arc<Lane>>,
        asked: Option<f64>,
    ) -> std::io::Result<Exporter> {
        Exporter::serve(listen, Arc::new(move || render(&name, &lanes, asked))).await
    }

    /// Serves whatever `render` returns (`meshtest chaos` serves its live view this way).
    pub async fn serve(listen: SocketAddr, render: Render) -> std::io::Result<Exporter> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                };
                let body = render();
                tokio::spawn(async move {
                    // One request per connection; the request itself is not needed beyond its
                    // first line.
                    let mut buf = [0u8; 1024];
                    let n = stream.read(&mut buf).await.unwrap_or(0);
                    let head = String::from_utf8_lossy(&buf[..n]);
                    let response = if head.starts_with("GET /metrics") {
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        )
                    } else {
                        "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                            .to_string()
                    };
                    let _ = stream.write_all(response.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Ok(Exporter { task, addr })
    }
}

/// One metric family in Prometheus' text format.
pub fn family(kind: &str, metric: &str, help: &str, samples: &[String]) -> String {
    let mut out = format!("# HELP {metric} {help}\n# TYPE {metric} {kind}\n");
    for s in samples {
        out.push_str(s);
        out.push('\n');
    }
    out
}

/// A label value as Prometheus' text format allows it.
pub fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn render(name: &str, lanes: &[Arc<Lane>], asked: Option<f64>) -> String {
    let (mut total, mut failed) = (0u64, 0u64);
    let mut latency = new_histogram();
    for lane in lanes {
        let r = lane.lock();
        total += r.rec.total();
        failed += r.rec.failed();
        let _ = latency.add(&r.rec.latency);
    }
    let label = format!("name=\"{}\"", label_value(name));
    let mut out = String::new();
    let mut metric = |kind: &str, metric: &str, help: &str, lines: Vec<String>| {
        out.push_str(&family(kind, metric, help, &lines));
    };
    metric(
        "counter",
        "meshtest_load_requests_total",
        "Requests completed so far (any outcome).",
        vec![format!("meshtest_load_requests_total{{{label}}} {total}")],
    );
    metric(
        "counter",
        "meshtest_load_errors_total",
        "Requests that failed (no response, or a 5xx).",
        vec![format!("meshtest_load_errors_total{{{label}}} {failed}")],
    );
    if let Some(rate) = asked {
        metric(
            "gauge",
            "meshtest_load_asked_rate",
            "The open loop's asked rate, requests per second.",
            vec![format!("meshtest_load_asked_rate{{{label}}} {rate}")],
        );
    }
    let quantiles = [0.5, 0.9, 0.99, 0.999]
        .iter()
        .map(|q| {
            let seconds = latency.value_at_quantile(*q) as f64 / 1e6;
            format!("meshtest_load_latency_seconds{{{label},quantile=\"{q}\"}} {seconds}")
        })
        .collect();
    metric(
        "gauge",
        "meshtest_load_latency_seconds",
        "Latency quantiles so far, from each request's intended send time.",
        quantiles,
    );
    metric(
        "gauge",
        "meshtest_load_generator_saturated",
        "1 while the generator cannot keep its schedule (its latencies are then its own).",
        vec![format!(
            "meshtest_load_generator_saturated{{{label}}} {}",
            u8::from(any_saturated(lanes))
        )],
    );
    out
}
