//! Container logs as `kubectl logs` wants them: CRI log files (`TIME STREAM TAG text`)
//! decoded, with timestamps, tailLines, sinceSeconds/sinceTime, limitBytes and follow.

use crate::error::ParseError;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

/// The `kubectl logs` options (the PodLogOptions query).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Options {
    /// Keep streaming as the container writes.
    pub follow: bool,
    /// Prefix each line with its RFC 3339 time.
    pub timestamps: bool,
    /// Only the last lines.
    pub tail_lines: Option<usize>,
    /// Only lines at or after this time (ns since the epoch).
    pub since_nanos: Option<i64>,
    /// At most this many bytes.
    pub limit_bytes: Option<usize>,
}

impl Options {
    /// From the query string (upstream's parameter names); errors name the bad parameter.
    pub fn from_query(q: &[(String, String)]) -> Result<Options, ParseError> {
        let mut o = Options::default();
        let truthy = |v: &str| v.is_empty() || v == "true" || v == "1";
        for (k, v) in q {
            match k.as_str() {
                "follow" => o.follow = truthy(v),
                "timestamps" => o.timestamps = truthy(v),
                "tailLines" => {
                    let n: i64 = v
                        .parse()
                        .map_err(|_| format!("tailLines: invalid value {v:?}"))?;
                    o.tail_lines = Some(n.max(0) as usize);
                }
                "limitBytes" => {
                    let n: i64 = v
                        .parse()
                        .map_err(|_| format!("limitBytes: invalid value {v:?}"))?;
                    if n < 1 {
                        return Err("limitBytes: must be greater than 0".into());
                    }
                    o.limit_bytes = Some(n as usize);
                }
                "sinceSeconds" => {
                    let n: i64 = v
                        .parse()
                        .map_err(|_| format!("sinceSeconds: invalid value {v:?}"))?;
                    if n < 1 {
                        return Err("sinceSeconds: must be greater than 0".into());
                    }
                    let now = jiff::Timestamp::now().as_nanosecond() as i64;
                    o.since_nanos = Some(now - n * 1_000_000_000);
                }
                "sinceTime" => {
                    let t: jiff::Timestamp = v
                        .parse()
                        .map_err(|_| format!("sinceTime: invalid value {v:?}"))?;
                    o.since_nanos = Some(t.as_nanosecond() as i64);
                }
                _ => {}
            }
        }
        Ok(o)
    }
}

/// One decoded log record.
#[derive(Debug, PartialEq)]
struct Record<'a> {
    time: &'a str,
    nanos: i64,
    partial: bool,
    text: &'a [u8],
}

/// Parses `2016-10-06T00:17:09.669794202Z stdout F text` (None for malformed lines).
fn parse(line: &[u8]) -> Option<Record<'_>> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?;
    let _stream = parts.next()?;
    let tag = parts.next()?;
    let text = parts.next().unwrap_or(b"");
    let nanos = time.parse::<jiff::Timestamp>().ok()?.as_nanosecond() as i64;
    Some(Record {
        time,
        nanos,
        partial: tag.first() == Some(&b'P'),
        text,
    })
}

/// Turns complete file lines into output, keeping partial records joined.
struct Decoder {
    opts: Options,
    /// A partial record's text waiting for its end.
    pending: Vec<u8>,
    pending_time: Option<String>,
    sent: usize,
}

impl Decoder {
    /// Output for one file line; None once limitBytes is reached.
    fn line(&mut self, raw: &[u8], out: &mut Vec<u8>) -> bool {
        let Some(r) = parse(raw) else { return true };
        if self.opts.since_nanos.is_some_and(|s| r.nanos < s) {
            return true;
        }
        if self.pending_time.is_none() {
            self.pending_time = Some(r.time.to_string());
        }
        self.pending.extend_from_slice(r.text);
        if r.partial {
            return true;
        }
        let time = self.pending_time.take().unwrap_or_default();
        let mut line = Vec::with_capacity(self.pending.len() + 40);
        if self.opts.timestamps {
            line.extend_from_slice(time.as_bytes());
            line.push(b' ');
        }
        line.append(&mut self.pending);
        line.push(b'\n');
        self.emit(&line, out)
    }

    fn emit(&mut self, line: &[u8], out: &mut Vec<u8>) -> bool {
        match self.opts.limit_bytes {
            Some(limit) => {
                let room = limit.saturating_sub(self.sent);
                let n = room.min(line.len());
                out.extend_from_slice(&line[..n]);
                self.sent += n;
                self.sent < limit
            }
            None => {
                out.extend_from_slice(line);
                true
            }
        }
    }
}

/// Where the log lines begin for tailLines: the byte offset of the record that starts
/// the Nth line from the end (a partial record continues into the next one).
fn tail_offset(data: &[u8], lines: usize) -> usize {
    if lines == 0 {
        return data.len();
    }
    let mut starts = Vec::new();
    let mut prev_partial = false;
    let mut off = 0;
    for rec in data.split_inclusive(|b| *b == b'\n') {
        if !rec.ends_with(b"\n") {
            break;
        }
        let partial = parse(&rec[..rec.len() - 1]).is_some_and(|r| r.partial);
        if !prev_partial {
            starts.push(off);
        }
        prev_partial = partial;
        off += rec.len();
    }
    starts
        .len()
        .checked_sub(lines)
        .map(|i| starts[i])
        .unwrap_or(0)
}

/// Streams a container's log into `tx` until done; with follow, until `running` says the
/// container stopped and the file is drained, or the receiver goes away.
pub async fn stream<F, Fut>(path: PathBuf, opts: Options, tx: mpsc::Sender<Bytes>, mut running: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut dec = Decoder {
        opts: opts.clone(),
        pending: Vec::new(),
        pending_time: None,
        sent: 0,
    };
    let mut file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(_) => return,
    };
    let mut data = Vec::new();
    let _ = file.read_to_end(&mut data);
    let start = opts.tail_lines.map(|n| tail_offset(&data, n)).unwrap_or(0);
    let mut pos = data.len() as u64;
    let mut carry: Vec<u8> = data[start..].to_vec();
    let mut idle_checks = 0u32;
    loop {
        let mut out = Vec::new();
        let mut more = true;
        while let Some(nl) = carry.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = carry.drain(..=nl).collect();
            if !dec.line(&line[..line.len() - 1], &mut out) {
                more = false;
                break;
            }
        }
        if !out.is_empty() && tx.send(Bytes::from(out)).await.is_err() {
            return;
        }
        if !more || !opts.follow {
            return;
        }
        // Follow: wait for the file to grow.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut grew = false;
        if let Ok(mut f) = std::fs::File::open(&path) {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            if len < pos {
                // Rotated or truncated: start over from its beginning.
                pos = 0;
            }
            if len > pos && f.seek(SeekFrom::Start(pos)).is_ok() {
                let mut buf = Vec::new();
                let _ = f.read_to_end(&mut buf);
                pos += buf.len() as u64;
                carry.extend_from_slice(&buf);
                grew = true;
            }
        }
        if tx.is_closed() {
            return;
        }
        if !grew {
            idle_checks += 1;
            // Every second of quiet, ask whether the container still runs.
            if idle_checks.is_multiple_of(10) && !running().await {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "2024-01-01T00:00:01.000000001Z stdout F one\n\
2024-01-01T00:00:02.000000000Z stderr P tw\n\
2024-01-01T00:00:02.500000000Z stderr F o\n\
2024-01-01T00:00:03.000000000Z stdout F three\n";

    fn run(opts: Options) -> String {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("0.log");
        std::fs::write(&p, LOG).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (tx, mut rx) = mpsc::channel(16);
            stream(p, opts, tx, || async { false }).await;
            let mut s = String::new();
            while let Ok(b) = rx.try_recv() {
                s.push_str(&String::from_utf8_lossy(&b));
            }
            s
        })
    }

    #[test]
    fn decodes_partial_records_and_options() {
        assert_eq!(run(Options::default()), "one\ntwo\nthree\n");
        let ts = run(Options {
            timestamps: true,
            ..Default::default()
        });
        assert!(
            ts.starts_with(
                "2024-01-01T00:00:01.000000001Z one\n2024-01-01T00:00:02.000000000Z two\n"
            ),
            "{ts}"
        );
        assert_eq!(
            run(Options {
                tail_lines: Some(2),
                ..Default::default()
            }),
            "two\nthree\n"
        );
        assert_eq!(
            run(Options {
                tail_lines: Some(0),
                ..Default::default()
            }),
            ""
        );
        assert_eq!(
            run(Options {
                tail_lines: Some(10),
                ..Default::default()
            }),
            "one\ntwo\nthree\n"
        );
        assert_eq!(
            run(Options {
                limit_bytes: Some(6),
                ..Default::default()
            }),
            "one\ntw"
        );
        let since = "2024-01-01T00:00:02.750Z"
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_nanosecond() as i64;
        assert_eq!(
            run(Options {
                since_nanos: Some(since),
                ..Default::default()
            }),
            "three\n"
        );
    }

    #[test]
    fn query_options() {
        let q = |s: &[(&str, &str)]| {
            Options::from_query(
                &s.iter()
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect::<Vec<_>>(),
            )
        };
        let o = q(&[("follow", "true"), ("tailLines", "5"), ("timestamps", "1")]).unwrap();
        assert!(o.follow && o.timestamps && o.tail_lines == Some(5));
        assert!(q(&[("limitBytes", "0")]).is_err());
        assert!(q(&[("sinceTime", "yesterday")]).is_err());
    }
}
