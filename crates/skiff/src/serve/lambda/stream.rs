//! Response streaming: a runtime client that posts its result with
//! `Lambda-Runtime-Function-Response-Mode: streaming` sends it in chunks
//! as it makes them (up to 20 MB), with a mid-stream error in the
//! `Lambda-Runtime-Function-Error-Type`/`-Body` trailers. The chunks go on
//! to the caller as they come: through `InvokeWithResponseStream` as AWS
//! event-stream messages, through a function URL as the HTTP body (after
//! the `http-integration-response` prelude: status, headers, cookies, then
//! eight NUL bytes), or buffered for a plain `Invoke`.

use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::body::{Bytes, Frame, SizeHint};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::{Reply, MAX_PAYLOAD};
use crate::serve::BoxError;

/// Lambda's limit on a streamed response.
pub const MAX_STREAM: usize = 20 << 20;
/// The content type of a stream that starts with an HTTP prelude.
pub const HTTP_INTEGRATION: &str = "application/vnd.awslambda.http-integration-response";

/// A response on its way from the runtime.
#[derive(Debug)]
pub struct Streamed {
    pub content_type: Option<String>,
    pub chunks: mpsc::Receiver<Result<Bytes, Failure>>,
}

/// A stream that ended in an error: AWS's error type and message.
#[derive(Debug, Clone)]
pub struct Failure {
    pub kind: String,
    pub message: String,
}

impl Failure {
    pub fn payload(&self) -> Bytes {
        Bytes::from(json!({ "errorType": self.kind, "errorMessage": self.message }).to_string())
    }
}

/// A streamed reply as a whole one, for callers that cannot stream (a
/// plain Invoke, an Event): the body after any HTTP prelude, within
/// Lambda's 6 MB.
pub async fn buffer(mut s: Streamed) -> Reply {
    let mut all = Vec::new();
    while let Some(chunk) = s.chunks.recv().await {
        match chunk {
            Ok(b) => {
                all.extend_from_slice(&b);
                if all.len() > MAX_PAYLOAD + 64 * 1024 {
                    let f = Failure {
                        kind: "Function.ResponseSizeTooLarge".into(),
                        message: format!("Response payload size exceeded maximum allowed payload size ({MAX_PAYLOAD} bytes)."),
                    };
                    return Reply::Error {
                        kind: "Unhandled".into(),
                        body: f.payload(),
                    };
                }
            }
            Err(f) => {
                return Reply::Error {
                    kind: "Unhandled".into(),
                    body: f.payload(),
                }
            }
        }
    }
    let body = match s.content_type.as_deref() {
        Some(HTTP_INTEGRATION) => {
            split_prelude(&all).map_or(all.clone(), |(_, rest)| rest.to_vec())
        }
        _ => all,
    };
    Reply::Response(Bytes::from(body))
}

/// The prelude's JSON and the bytes after its eight NULs.
pub fn split_prelude(data: &[u8]) -> Option<(Value, &[u8])> {
    let end = data.windows(8).position(|w| w == [0u8; 8])?;
    let prelude = serde_json::from_slice(&data[..end]).ok()?;
    Some((prelude, &data[end + 8..]))
}

/// Reads chunks until the prelude is complete (at most 64 KB of it):
/// the prelude, and the body bytes that came with it.
pub async fn read_prelude(s: &mut Streamed) -> Result<(Value, Bytes), Failure> {
    let mut head = Vec::new();
    loop {
        if let Some((prelude, rest)) = split_prelude(&head) {
            return Ok((prelude, Bytes::copy_from_slice(rest)));
        }
        if head.len() > 64 * 1024 {
            break;
        }
        match s.chunks.recv().await {
            Some(Ok(b)) => head.extend_from_slice(&b),
            Some(Err(f)) => return Err(f),
            None => break,
        }
    }
    Err(Failure {
        kind: "Runtime.StreamError".into(),
        message: "the response stream has no http-integration-response prelude".into(),
    })
}

/// The stream as an HTTP body: `first`, then the chunks as they come; an
/// error ends the body abruptly (the client sees a truncated response).
pub struct ChunkBody {
    first: Option<Bytes>,
    chunks: mpsc::Receiver<Result<Bytes, Failure>>,
}

impl ChunkBody {
    pub fn new(first: Bytes, s: Streamed) -> ChunkBody {
        ChunkBody {
            first: (!first.is_empty()).then_some(first),
            chunks: s.chunks,
        }
    }
}

impl hyper::body::Body for ChunkBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        match self.chunks.poll_recv(cx) {
            Poll::Ready(Some(Ok(b))) => Poll::Ready(Some(Ok(Frame::data(b)))),
            Poll::Ready(Some(Err(f))) => {
                Poll::Ready(Some(Err(format!("{}: {}", f.kind, f.message).into())))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// One AWS event-stream message (`application/vnd.amazon.eventstream`):
/// total and header lengths, their CRC32, string headers, the payload,
/// the message's CRC32.
pub fn event_message(event_type: &str, content_type: &str, payload: &[u8]) -> Bytes {
    let mut headers = Vec::new();
    for (name, value) in [
        (":event-type", event_type),
        (":content-type", content_type),
        (":message-type", "event"),
    ] {
        headers.push(name.len() as u8);
        headers.extend_from_slice(name.as_bytes());
        headers.push(7); // a string
        headers.extend_from_slice(&(value.len() as u16).to_be_bytes());
        headers.extend_from_slice(value.as_bytes());
    }
    let total = 12 + headers.len() + payload.len() + 4;
    let mut msg = Vec::with_capacity(total);
    msg.extend_from_slice(&(total as u32).to_be_bytes());
    msg.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    let prelude_crc = crc32fast::hash(&msg);
    msg.extend_from_slice(&prelude_crc.to_be_bytes());
    msg.extend_from_slice(&headers);
    msg.extend_from_slice(payload);
    let crc = crc32fast::hash(&msg);
    msg.extend_from_slice(&crc.to_be_bytes());
    Bytes::from(msg)
}

/// `InvokeWithResponseStream`'s body: the reply's bytes as `PayloadChunk`
/// events as they come, then `InvokeComplete` (with the error, if any).
pub fn event_stream(reply: Reply, log: Option<String>) -> ChunkBody {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let complete = |error: Option<(String, String)>| {
            let mut done = json!({});
            if let Some((code, details)) = error {
                done["ErrorCode"] = Value::from(code);
                done["ErrorDetails"] = Value::from(details);
            }
            if let Some(l) = &log {
                done["LogResult"] = Value::from(super::invoke::encode_base64(l.as_bytes()));
            }
            event_message(
                "InvokeComplete",
                "application/json",
                done.to_string().as_bytes(),
            )
        };
        let chunk = |b: &[u8]| event_message("PayloadChunk", "application/octet-stream", b);
        match reply {
            Reply::Response(b) => {
                let _ = tx.send(Ok(chunk(&b))).await;
                let _ = tx.send(Ok(complete(None))).await;
            }
            Reply::Error { body, .. } => {
                let v: Value = serde_json::from_slice(&body).unwrap_or_default();
                let code = v["errorType"].as_str().unwrap_or("Unhandled").to_string();
                let details = String::from_utf8_lossy(&body).into_owned();
                let _ = tx.send(Ok(complete(Some((code, details))))).await;
            }
            Reply::Stream(mut s) => {
                let mut error = None;
                while let Some(c) = s.chunks.recv().await {
                    match c {
                        Ok(b) => {
                            if tx.send(Ok(chunk(&b))).await.is_err() {
                                return;
                            }
                        }
                        Err(f) => {
                            error = Some((
                                f.kind.clone(),
                                String::from_utf8_lossy(&f.payload()).into_owned(),
                            ));
                            break;
                        }
                    }
                }
                let _ = tx.send(Ok(complete(error))).await;
            }
        }
    });
    ChunkBody {
        first: None,
        chunks: rx,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preludes_split_at_eight_nuls() {
        let mut data = br#"{"statusCode":201,"headers":{"x":"1"}}"#.to_vec();
        data.extend_from_slice(&[0; 8]);
        data.extend_from_slice(b"body");
        let (p, rest) = split_prelude(&data).unwrap();
        assert_eq!(p["statusCode"], 201);
        assert_eq!(rest, b"body");
        assert!(split_prelude(b"no prelude").is_none());
    }

    #[test]
    fn event_messages_are_framed_with_crcs() {
        let m = event_message("PayloadChunk", "application/octet-stream", b"hello");
        let total = u32::from_be_bytes(m[0..4].try_into().unwrap()) as usize;
        let headers = u32::from_be_bytes(m[4..8].try_into().unwrap()) as usize;
        assert_eq!(total, m.len());
        assert_eq!(
            u32::from_be_bytes(m[8..12].try_into().unwrap()),
            crc32fast::hash(&m[..8])
        );
        assert_eq!(&m[12 + headers..total - 4], b"hello");
        assert_eq!(
            u32::from_be_bytes(m[total - 4..].try_into().unwrap()),
            crc32fast::hash(&m[..total - 4])
        );
        // The first header: `:event-type`, a string.
        assert_eq!(m[12] as usize, ":event-type".len());
        assert_eq!(&m[13..24], b":event-type");
        assert_eq!(m[24], 7);
    }

    #[tokio::test]
    async fn buffered_streams_drop_the_prelude() {
        let (tx, rx) = mpsc::channel(4);
        let mut first = br#"{"statusCode":200}"#.to_vec();
        first.extend_from_slice(&[0; 8]);
        tx.send(Ok(Bytes::from(first))).await.unwrap();
        tx.send(Ok(Bytes::from_static(b"a"))).await.unwrap();
        tx.send(Ok(Bytes::from_static(b"b"))).await.unwrap();
        drop(tx);
        let s = Streamed {
            content_type: Some(HTTP_INTEGRATION.into()),
            chunks: rx,
        };
        match buffer(s).await {
            Reply::Response(b) => assert_eq!(&b[..], b"ab"),
            other => panic!("{other:?}"),
        }
    }
}
