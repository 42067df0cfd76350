//! Prometheus' HTTP API, as the steps need it: instant queries and the alerts in force.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;

use crate::client::{self, Dial, Request};

/// A Prometheus server's API at `http://HOST:PORT`.
#[derive(Debug, Clone)]
pub struct PrometheusApi {
    addr: SocketAddr,
}

/// One sample of an instant query's vector: its labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: std::collections::BTreeMap<String, String>,
    pub value: f64,
}

/// An alert Prometheus holds (pending or firing).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    pub labels: std::collections::BTreeMap<String, String>,
    pub state: String,
    #[serde(default)]
    pub active_at: Option<String>,
}

impl PrometheusApi {
    /// `url` is `http://IP:PORT` (the address `meshtest status` prints).
    pub fn new(url: &str) -> Result<PrometheusApi> {
        let hostport = url
            .strip_prefix("http://")
            .ok_or_else(|| anyhow!("Prometheus URL {url} is not http://IP:PORT"))?
            .trim_end_matches('/');
        let addr = hostport
            .parse()
            .with_context(|| format!("Prometheus URL {url} is not http://IP:PORT"))?;
        Ok(PrometheusApi { addr })
    }

    async fn get(&self, path: &str) -> Result<String> {
        let mut req = Request::get(&self.addr.to_string(), path);
        req.timeout = Duration::from_secs(5);
        let out = client::send(&Dial::Tcp(self.addr), &req).await;
        match (out.status(), out.body()) {
            (Some(200), Some(body)) => Ok(body.to_string()),
            _ => bail!("Prometheus at {} {path}: {}", self.addr, out.summary()),
        }
    }

    pub async fn ready(&self) -> bool {
        self.get("/-/ready").await.is_ok()
    }

    /// An instant query's vector result.
    pub async fn query(&self, promql: &str) -> Result<Vec<Sample>> {
        let body = self
            .get(&format!("/api/v1/query?query={}", encode(promql)))
            .await?;
        parse_vector(&body).with_context(|| format!("query {promql}"))
    }

    /// An instant query's vector result at Unix time `at`.
    pub async fn query_at(&self, promql: &str, at: f64) -> Result<Vec<Sample>> {
        let body = self
            .get(&format!(
                "/api/v1/query?query={}&time={at:.3}",
                encode(promql)
            ))
            .await?;
        parse_vector(&body).with_context(|| format!("query {promql} at {at:.3}"))
    }

    /// Every alert Prometheus holds now, pending or firing.
    pub async fn alerts(&self) -> Result<Vec<Alert>> {
        #[derive(Deserialize)]
        struct Data {
            alerts: Vec<Alert>,
        }
        #[derive(Deserialize)]
        struct Body {
            data: Data,
        }
        let body = self.get("/api/v1/alerts").await?;
        let b: Body = serde_json::from_str(&body).context("Prometheus /api/v1/alerts")?;
        Ok(b.data.alerts)
    }
}

/// Percent-encodes a query parameter value.
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn parse_vector(body: &str) -> Result<Vec<Sample>> {
    #[derive(Deserialize)]
    struct Item {
        metric: std::collections::BTreeMap<String, String>,
        value: (f64, String),
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Data {
        result_type: String,
        result: Vec<Item>,
    }
    #[derive(Deserialize)]
    struct Body {
        status: String,
        data: Option<Data>,
        error: Option<String>,
    }
    let b: Body = serde_json::from_str(body).context("Prometheus query response")?;
    if b.status != "success" {
        bail!("Prometheus: {}", b.error.unwrap_or(b.status));
    }
    let data = b.data.context("Prometheus query response without data")?;
    if data.result_type != "vector" {
        bail!("expected a vector, got a {}", data.result_type);
    }
    data.result
        .into_iter()
        .map(|i| {
            let value = i.value.1.parse::<f64>().context("sample value")?;
            Ok(Sample {
                labels: i.metric,
                value,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_an_instant_vector() {
        let body = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"response_code":"200"},"value":[1.5,"42"]}]}}"#;
        let v = parse_vector(body).unwrap();
        assert_eq!(v[0].value, 42.0);
        assert_eq!(v[0].labels["response_code"], "200");
        assert!(parse_vector(r#"{"status":"error","error":"bad query"}"#).is_err());
    }

    #[test]
    fn encodes_promql() {
        assert_eq!(encode("a{b=\"c\"}"), "a%7Bb%3D%22c%22%7D");
    }
}
