//! The NATS protocol spoken by hand, for what a well-behaved client library never sends:
//! malformed header blocks, pipelined requests. And the server's HTTP monitoring endpoint.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A reply as it arrived: the subject it was sent to, its header block and payload.
#[derive(Debug, Clone)]
pub struct RawMessage {
    pub subject: String,
    pub headers: Option<String>,
    pub payload: Vec<u8>,
}

/// A raw protocol connection subscribed to `_RAW.>` for replies.
pub struct RawClient {
    reader: BufReader<tokio::io::ReadHalf<TcpStream>>,
    writer: tokio::io::WriteHalf<TcpStream>,
}

impl RawClient {
    pub async fn connect(port: u16) -> RawClient {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let (read, writer) = tokio::io::split(stream);
        let mut client = RawClient {
            reader: BufReader::new(read),
            writer,
        };
        let info = client.line().await;
        assert!(info.starts_with("INFO"), "{info}");
        client
            .send(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,\"no_responders\":true}\r\nSUB _RAW.> 1\r\nPING\r\n")
            .await;
        while client.line().await != "PONG" {}
        client
    }

    async fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).await.expect("read");
        line.trim_end().to_owned()
    }

    /// Sends bytes as they are (several frames at once are delivered back to back).
    pub async fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.expect("write");
        self.writer.flush().await.expect("flush");
    }

    /// The frame of a request with a raw header block (`NATS/1.0\r\n…\r\n\r\n`) and a reply
    /// subject.
    pub fn hpub(subject: &str, reply: &str, header_block: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut frame = format!(
            "HPUB {subject} {reply} {} {}\r\n",
            header_block.len(),
            header_block.len() + payload.len()
        )
        .into_bytes();
        frame.extend_from_slice(header_block);
        frame.extend_from_slice(payload);
        frame.extend_from_slice(b"\r\n");
        frame
    }

    pub fn publish(subject: &str, reply: &str, payload: &[u8]) -> Vec<u8> {
        let mut frame = format!("PUB {subject} {reply} {}\r\n", payload.len()).into_bytes();
        frame.extend_from_slice(payload);
        frame.extend_from_slice(b"\r\n");
        frame
    }

    /// The messages that arrive within `wait`.
    pub async fn replies(&mut self, wait: Duration) -> Vec<RawMessage> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let line = match tokio::time::timeout_at(deadline, self.line()).await {
                Ok(line) => line,
                Err(_) => return out,
            };
            let parts: Vec<&str> = line.split(' ').collect();
            match parts.first().copied() {
                Some("PING") => self.send(b"PONG\r\n").await,
                Some("MSG") => {
                    let len: usize = parts.last().unwrap().parse().unwrap();
                    let body = self.body(len).await;
                    out.push(RawMessage {
                        subject: parts[1].to_owned(),
                        headers: None,
                        payload: body,
                    });
                }
                Some("HMSG") => {
                    let total: usize = parts[parts.len() - 1].parse().unwrap();
                    let header: usize = parts[parts.len() - 2].parse().unwrap();
                    let body = self.body(total).await;
                    out.push(RawMessage {
                        subject: parts[1].to_owned(),
                        headers: Some(String::from_utf8_lossy(&body[..header]).into_owned()),
                        payload: body[header..].to_vec(),
                    });
                }
                _ => {}
            }
        }
    }

    async fn body(&mut self, len: usize) -> Vec<u8> {
        let mut body = vec![0; len + 2];
        self.reader.read_exact(&mut body).await.expect("body");
        body.truncate(len);
        body
    }
}

/// `GET path` on the server's HTTP monitoring port, parsed as JSON (`/connz`, `/varz`, …).
pub async fn monitor(port: u16, path: &str) -> serde_json::Value {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("monitoring port");
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("monitoring {path}: {e}: {response}"))
}
