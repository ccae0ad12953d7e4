//! Token accounting and budgets for the inference gateway: token counts read
//! from provider responses (plain JSON and server-sent events, OpenAI and
//! Anthropic shapes), per-provider totals per UTC day, and the optional
//! caps (tokens per day, requests per minute). Guards against the cost
//! overrun of an unattended agent looping on a paid model: past the cap the
//! gateway answers 429 before anything reaches the provider.
#![forbid(unsafe_code)]
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// Optional caps; absent = unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens_per_day: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_minute: Option<u32>,
}

/// Totals of one provider for one day.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// What `usage.json` holds: today's totals per provider (route name).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub day: String,
    pub providers: BTreeMap<String, Counts>,
}

impl Usage {
    pub fn tokens_today(&self) -> u64 {
        self.providers.values().map(|c| c.input_tokens + c.output_tokens).sum()
    }
}

/// The meter: today's usage plus the request-rate window.
#[derive(Debug, Default)]
pub struct Meter {
    pub usage: Usage,
    recent: VecDeque<Instant>,
}

/// Why a request is refused before it is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverBudget(pub String);

pub fn today() -> String {
    let d = time::OffsetDateTime::now_utc().date();
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

impl Meter {
    pub fn new(usage: Usage) -> Meter {
        Meter { usage, recent: VecDeque::new() }
    }

    /// Admits one request under `budget` (and counts it against the rate).
    pub fn admit(&mut self, budget: &Budget, now: Instant) -> Result<(), OverBudget> {
        self.roll_day();
        if let Some(max) = budget.max_tokens_per_day {
            let used = self.usage.tokens_today();
            if used >= max {
                return Err(OverBudget(format!(
                    "daily token budget exhausted: {used} of {max} tokens used today (UTC); it resets at midnight UTC \
                     or an operator raises it with `moat inference set`"
                )));
            }
        }
        if let Some(max) = budget.max_requests_per_minute {
            while self.recent.front().is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60)) {
                self.recent.pop_front();
            }
            if self.recent.len() >= max as usize {
                return Err(OverBudget(format!("request rate limit: at most {max} requests per minute")));
            }
        }
        self.recent.push_back(now);
        Ok(())
    }

    /// Records a finished request.
    pub fn record(&mut self, provider: &str, input: u64, output: u64) {
        self.roll_day();
        let c = self.usage.providers.entry(provider.to_string()).or_default();
        c.requests += 1;
        c.input_tokens += input;
        c.output_tokens += output;
    }

    fn roll_day(&mut self) {
        let d = today();
        if self.usage.day != d {
            self.usage = Usage { day: d, providers: BTreeMap::new() };
        }
    }
}

/// Reads token counts from a response body as it streams past.
#[derive(Debug, Default)]
pub struct Tap {
    sse: bool,
    /// Non-streamed: the body (bounded); streamed: the current partial line.
    buf: Vec<u8>,
    overflow: bool,
    pub input: u64,
    pub output: u64,
}

const MAX_JSON: usize = 8 << 20;

impl Tap {
    pub fn new(content_type: &str) -> Tap {
        Tap { sse: content_type.to_ascii_lowercase().starts_with("text/event-stream"), ..Tap::default() }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        if !self.sse {
            if self.buf.len() + bytes.len() > MAX_JSON {
                self.overflow = true;
            } else {
                self.buf.extend_from_slice(bytes);
            }
            return;
        }
        for &b in bytes {
            if b == b'\n' {
                let line = std::mem::take(&mut self.buf);
                self.sse_line(&line);
            } else if self.buf.len() < MAX_JSON {
                self.buf.push(b);
            }
        }
    }

    pub fn finish(&mut self) {
        if self.sse {
            let line = std::mem::take(&mut self.buf);
            self.sse_line(&line);
        } else if !self.overflow {
            if let Ok(v) = serde_json::from_slice::<Value>(&self.buf) {
                self.take(&v);
            }
        }
    }

    fn sse_line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else { return };
        if let Ok(v) = serde_json::from_slice::<Value>(data.trim_ascii()) {
            self.take(&v);
        }
    }

    /// Takes the largest counts any usage object in `v` reports (streamed
    /// events repeat cumulative counts).
    fn take(&mut self, v: &Value) {
        for u in [&v["usage"], &v["message"]["usage"], &v["response"]["usage"]] {
            let n = |k: &str| u.get(k).and_then(Value::as_u64);
            if let Some(i) = n("prompt_tokens").or_else(|| n("input_tokens")) {
                self.input = self.input.max(i);
            }
            if let Some(o) = n("completion_tokens").or_else(|| n("output_tokens")) {
                self.output = self.output.max(o);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_openai_and_anthropic_usage_plain_and_streamed() {
        let mut t = Tap::new("application/json");
        t.feed(br#"{"id":"x","usage":{"prompt_tokens":12,"#);
        t.feed(br#""completion_tokens":30,"total_tokens":42}}"#);
        t.finish();
        assert_eq!((t.input, t.output), (12, 30));

        let mut t = Tap::new("text/event-stream; charset=utf-8");
        let stream = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n\
                      data: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"hi\"}}\n\n\
                      event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n\n";
        for piece in stream.as_bytes().chunks(7) {
            t.feed(piece);
        }
        t.finish();
        assert_eq!((t.input, t.output), (25, 15));

        let mut t = Tap::new("text/event-stream");
        t.feed(b"data: {\"choices\":[]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":7}}\n\ndata: [DONE]\n\n");
        t.finish();
        assert_eq!((t.input, t.output), (5, 7));
    }

    #[test]
    fn budgets_refuse_past_the_cap() {
        let mut m = Meter::new(Usage::default());
        let b = Budget { max_tokens_per_day: Some(100), max_requests_per_minute: Some(2) };
        let t0 = Instant::now();
        m.admit(&b, t0).unwrap();
        m.admit(&b, t0).unwrap();
        assert!(m.admit(&b, t0).unwrap_err().0.contains("per minute"));
        m.admit(&b, t0 + Duration::from_secs(61)).unwrap();
        m.record("p", 60, 50);
        assert!(m.admit(&b, t0 + Duration::from_secs(200)).unwrap_err().0.contains("110 of 100"));
        assert_eq!(m.usage.providers["p"], Counts { requests: 1, input_tokens: 60, output_tokens: 50 });
    }
}
