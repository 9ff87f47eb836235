//! Puts the JSON error body into the few HTTP/1.1 answers hyper writes by itself.
//!
//! hyper answers a request head it cannot parse before any service sees it: 400 for a malformed
//! head, 431 past `max_buf_size` or `max_headers`, 414 for a request target over 65 534 bytes
//! (a limit of the `http` crate's `Uri`, which no setting raises). Those answers carry no body.
//! The tracker raises hyper's settable limits above its own (enforced with JSON answers in
//! `app::request_limits`), but the URI bound and anything beyond the raised limits still end
//! here. This writer recognises such an answer — a 4xx head with `content-length: 0`, which the
//! tracker's own handlers never send since every error of theirs has a body — and sends the same
//! status with the documented body instead. hyper closes the connection after it either way.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use torrentguard_protocol::api::{ErrorBody, ErrorDetail};

use crate::error::ApiError;

/// An HTTP/1.1 connection's stream, with hyper's bodiless error answers given a JSON body.
pub struct JsonBareErrors<T> {
    inner: T,
    pending: Option<Replacement>,
}

/// The answer sent in place of hyper's, and how much of hyper's buffer it stands for.
struct Replacement {
    bytes: Vec<u8>,
    written: usize,
    replaces: usize,
}

impl<T> JsonBareErrors<T> {
    pub fn new(inner: T) -> Self {
        JsonBareErrors {
            inner,
            pending: None,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonBareErrors<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonBareErrors<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.pending.is_none() {
            this.pending = with_json_body(buf).map(|bytes| Replacement {
                bytes,
                written: 0,
                replaces: buf.len(),
            });
        }
        let Some(pending) = this.pending.as_mut() else {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        };
        // hyper offers the same buffer again after `Pending`, so it is claimed only once the
        // whole replacement is out.
        while pending.written < pending.bytes.len() {
            let n = ready!(
                Pin::new(&mut this.inner).poll_write(cx, &pending.bytes[pending.written..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            pending.written += n;
        }
        let replaces = pending.replaces;
        this.pending = None;
        Poll::Ready(Ok(replaces))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    // Not vectored, so hyper hands over each response head whole in one buffer (its "flatten"
    // strategy); TLS buffers records anyway, so nothing is lost.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

const EMPTY_LENGTH: &[u8] = b"content-length: 0\r\n";

/// hyper's bodiless 4xx answer in `head`, rewritten with a JSON body; `None` for anything else.
fn with_json_body(head: &[u8]) -> Option<Vec<u8>> {
    let rest = head
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| head.strip_prefix(b"HTTP/1.0 "))?;
    let status = std::str::from_utf8(rest.get(..3)?).ok()?;
    let error = match status {
        "400" => ApiError::BadRequest("malformed HTTP request".into()),
        "414" => ApiError::UriTooLong,
        "431" => ApiError::HeaderFieldsTooLarge,
        _ => return None,
    };
    if !head.ends_with(b"\r\n\r\n") {
        return None;
    }
    let at = head
        .windows(EMPTY_LENGTH.len())
        .position(|w| w.eq_ignore_ascii_case(EMPTY_LENGTH))?;
    let body = ErrorBody {
        error: ErrorDetail {
            code: error.code().to_string(),
            message: error.to_string(),
        },
    };
    // Serialising two strings cannot fail.
    let body = serde_json::to_vec(&body).ok()?;
    let mut out = Vec::with_capacity(head.len() + body.len() + 64);
    out.extend_from_slice(&head[..at]);
    out.extend_from_slice(
        format!(
            "content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(&head[at + EMPTY_LENGTH.len()..]);
    out.extend_from_slice(&body);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYPER_414: &[u8] =
        b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\ndate: Thu, 01 Jan 2026 00:00:00 GMT\r\n\r\n";

    fn split(answer: &[u8]) -> (String, ErrorBody) {
        let text = String::from_utf8(answer.to_vec()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        (head.to_string(), serde_json::from_str(body).unwrap())
    }

    #[test]
    fn a_bodiless_414_gets_the_json_body_and_a_matching_length() {
        let out = with_json_body(HYPER_414).unwrap();
        let (head, body) = split(&out);
        assert!(head.starts_with("HTTP/1.1 414 URI Too Long\r\n"));
        assert!(head.contains("content-type: application/json"));
        assert!(head.contains("date: Thu"));
        assert_eq!(body.error.code, "uri_too_long");
        let length = serde_json::to_vec(&body).unwrap().len();
        assert!(head.contains(&format!("content-length: {length}\r\n")));
    }

    #[test]
    fn a_431_and_a_400_are_rewritten_too() {
        for (status, code) in [("431", "header_fields_too_large"), ("400", "bad_request")] {
            let head = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
            let (_, body) = split(&with_json_body(head.as_bytes()).unwrap());
            assert_eq!(body.error.code, code);
        }
    }

    #[test]
    fn other_writes_pass_untouched() {
        // An answer with a body, a 5xx, a body chunk, an h2 frame.
        assert!(with_json_body(b"HTTP/1.1 404 Not Found\r\ncontent-length: 12\r\n\r\n").is_none());
        assert!(
            with_json_body(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
                .is_none()
        );
        assert!(with_json_body(b"{\"error\":{}}").is_none());
        assert!(with_json_body(&[0, 0, 18, 4, 0, 0, 0, 0, 0]).is_none());
    }

    #[tokio::test]
    async fn the_writer_claims_hyper_s_buffer_and_sends_the_replacement() {
        use tokio::io::AsyncWriteExt as _;
        let mut sink = JsonBareErrors::new(Vec::new());
        let n = sink.write(HYPER_414).await.unwrap();
        assert_eq!(n, HYPER_414.len());
        sink.write_all(b"more").await.unwrap();
        let written = sink.inner;
        assert!(written.ends_with(b"}more"));
        assert!(written.starts_with(b"HTTP/1.1 414"));
    }
}
