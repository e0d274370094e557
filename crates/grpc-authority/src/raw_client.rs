//! A minimal HTTP/2 client that sends whatever pseudo-headers it is given — `:authority:
//! tmp%2Fcephvol.sock` included, which no Rust HTTP/2 client can produce because `http::Uri` refuses
//! it — so tests can speak like gRPC C-core without Python.
//!
//! Owns: one connection, one request at a time, small bodies (no flow control beyond the default
//! windows: request bodies must stay under 65,535 octets; header blocks under 16,384 octets, one
//! HEADERS frame), and an HPACK encoder that indexes like gRPC C-core. For tests only: the daemon
//! never calls it.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::frame::{
    put_frame_header, FLAG_END_HEADERS, FLAG_END_STREAM, FLAG_PADDED, FLAG_PRIORITY,
    FRAME_HEADER_LEN, PREFACE, TYPE_CONTINUATION, TYPE_HEADERS,
};

const TYPE_DATA: u8 = 0x0;
const TYPE_RST_STREAM: u8 = 0x3;
const TYPE_SETTINGS: u8 = 0x4;
const TYPE_PING: u8 = 0x6;
const TYPE_GOAWAY: u8 = 0x7;
const FLAG_ACK: u8 = 0x1;

/// An HPACK encoder that indexes like gRPC C-core: every field it has not sent before is a
/// literal with incremental indexing (`:authority` included), every field it has is a reference to
/// the dynamic table. Strings are raw. (`loona_hpack::Encoder` never indexes a field whose name is
/// in the static table, so it cannot produce references to an earlier authority.)
pub struct IndexingEncoder {
    table: std::collections::VecDeque<(Vec<u8>, Vec<u8>)>,
    size: usize,
    max: usize,
}

impl IndexingEncoder {
    /// An encoder with the protocol's initial table size (4,096).
    pub fn new() -> IndexingEncoder {
        IndexingEncoder {
            table: std::collections::VecDeque::new(),
            size: 0,
            max: 4096,
        }
    }

    /// Shrinks or grows the table; the caller sends the size update.
    pub fn set_max_table_size(&mut self, max: usize) {
        self.max = max;
        self.evict();
    }

    fn evict(&mut self) {
        while self.size > self.max {
            let Some((n, v)) = self.table.pop_back() else {
                break;
            };
            self.size -= n.len() + v.len() + 32;
        }
    }

    /// Encodes one header block.
    pub fn encode(&mut self, fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (n, v) in fields {
            if let Some(i) = self.table.iter().position(|(tn, tv)| tn == n && tv == v) {
                crate::hpack::encode_integer(&mut out, 62 + i, 7, 0x80);
                continue;
            }
            out.push(0x40);
            for s in [n, v] {
                crate::hpack::encode_integer(&mut out, s.len(), 7, 0);
                out.extend_from_slice(s);
            }
            self.size += n.len() + v.len() + 32;
            self.table.push_front((n.clone(), v.clone()));
            self.evict();
        }
        out
    }
}

impl Default for IndexingEncoder {
    fn default() -> IndexingEncoder {
        IndexingEncoder::new()
    }
}

/// A header list as sent or received.
pub type Headers = Vec<(String, String)>;

/// What came back for one request.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Response {
    /// The response headers (`:status` first).
    pub headers: Headers,
    /// The DATA payloads, concatenated.
    pub body: Vec<u8>,
    /// The trailers, if the stream ended with a second HEADERS frame.
    pub trailers: Headers,
    /// The error code of an RST_STREAM that ended the stream.
    pub reset: Option<u32>,
    /// The error code of a GOAWAY that ended the connection.
    pub goaway: Option<u32>,
}

impl Response {
    /// The value of header `name` in the headers or the trailers.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .chain(&self.trailers)
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A client connection (see the module docs).
pub struct RawClient<S> {
    io: S,
    encoder: IndexingEncoder,
    decoder: loona_hpack::Decoder<'static>,
    next_stream_id: u32,
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

impl<S: AsyncRead + AsyncWrite + Unpin> RawClient<S> {
    /// Sends the connection preface and an empty SETTINGS frame.
    pub async fn handshake(mut io: S) -> io::Result<RawClient<S>> {
        let mut out = PREFACE.to_vec();
        put_frame_header(&mut out, 0, TYPE_SETTINGS, 0, 0);
        io.write_all(&out).await?;
        Ok(RawClient {
            io,
            encoder: IndexingEncoder::new(),
            decoder: loona_hpack::Decoder::new(),
            next_stream_id: 1,
        })
    }

    /// Sends a request with `headers` (encoded with dynamic indexing, as C-core does) and `body`,
    /// then reads until its stream ends.
    pub async fn request(&mut self, headers: &[(&str, &str)], body: &[u8]) -> io::Result<Response> {
        let stream_id = self.next_stream_id;
        self.next_stream_id += 2;
        let fields: Vec<(Vec<u8>, Vec<u8>)> = headers
            .iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
        let block = self.encoder.encode(&fields);
        let mut out = Vec::new();
        let flags = FLAG_END_HEADERS | if body.is_empty() { FLAG_END_STREAM } else { 0 };
        put_frame_header(&mut out, block.len(), TYPE_HEADERS, flags, stream_id);
        out.extend_from_slice(&block);
        if !body.is_empty() {
            put_frame_header(&mut out, body.len(), TYPE_DATA, FLAG_END_STREAM, stream_id);
            out.extend_from_slice(body);
        }
        self.io.write_all(&out).await?;
        self.read_response(stream_id).await
    }

    /// A gRPC unary call: `message` framed as one uncompressed gRPC message on `path`.
    pub async fn grpc_unary(
        &mut self,
        authority: &str,
        path: &str,
        message: &[u8],
    ) -> io::Result<Response> {
        let len = u32::try_from(message.len()).map_err(|_| invalid("message too long"))?;
        let mut body = vec![0];
        body.extend_from_slice(&len.to_be_bytes());
        body.extend_from_slice(message);
        self.request(
            &[
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", authority),
                ("te", "trailers"),
                ("content-type", "application/grpc"),
            ],
            &body,
        )
        .await
    }

    async fn read_frame(&mut self) -> io::Result<(u8, u8, u32, Vec<u8>)> {
        let mut head = [0u8; FRAME_HEADER_LEN];
        self.io.read_exact(&mut head).await?;
        let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
        let stream_id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0; len];
        self.io.read_exact(&mut payload).await?;
        Ok((head[3], head[4], stream_id, payload))
    }

    fn decode(&mut self, block: &[u8]) -> io::Result<Headers> {
        let fields = self
            .decoder
            .decode(block)
            .map_err(|e| invalid(format!("HPACK: {e}")))?;
        Ok(fields
            .into_iter()
            .map(|(n, v)| {
                (
                    String::from_utf8_lossy(&n).into_owned(),
                    String::from_utf8_lossy(&v).into_owned(),
                )
            })
            .collect())
    }

    async fn read_response(&mut self, stream_id: u32) -> io::Result<Response> {
        let mut response = Response::default();
        loop {
            let (kind, flags, sid, payload) = self.read_frame().await?;
            match kind {
                TYPE_SETTINGS if flags & FLAG_ACK == 0 => {
                    let mut ack = Vec::new();
                    put_frame_header(&mut ack, 0, TYPE_SETTINGS, FLAG_ACK, 0);
                    self.io.write_all(&ack).await?;
                }
                TYPE_PING if flags & FLAG_ACK == 0 => {
                    let mut pong = Vec::new();
                    put_frame_header(&mut pong, payload.len(), TYPE_PING, FLAG_ACK, 0);
                    pong.extend_from_slice(&payload);
                    self.io.write_all(&pong).await?;
                }
                TYPE_GOAWAY => {
                    let code = payload
                        .get(4..8)
                        .map_or(0, |c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
                    response.goaway = Some(code);
                    return Ok(response);
                }
                TYPE_RST_STREAM if sid == stream_id => {
                    let code = payload
                        .get(..4)
                        .map_or(0, |c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
                    response.reset = Some(code);
                    return Ok(response);
                }
                TYPE_DATA if sid == stream_id => {
                    let data = strip_padding(flags, &payload)?;
                    response.body.extend_from_slice(data);
                    if flags & FLAG_END_STREAM != 0 {
                        return Ok(response);
                    }
                }
                TYPE_HEADERS if sid == stream_id => {
                    let mut block = strip_padding(flags, &payload)?.to_vec();
                    if flags & FLAG_PRIORITY != 0 {
                        block.drain(..5.min(block.len()));
                    }
                    let mut end_headers = flags & FLAG_END_HEADERS != 0;
                    while !end_headers {
                        let (kind, cflags, _, more) = self.read_frame().await?;
                        if kind != TYPE_CONTINUATION {
                            return Err(invalid("expected CONTINUATION"));
                        }
                        block.extend_from_slice(&more);
                        end_headers = cflags & FLAG_END_HEADERS != 0;
                    }
                    let fields = self.decode(&block)?;
                    if response.headers.is_empty() {
                        response.headers = fields;
                    } else {
                        response.trailers = fields;
                    }
                    if flags & FLAG_END_STREAM != 0 {
                        return Ok(response);
                    }
                }
                _ => {}
            }
        }
    }
}

fn strip_padding(flags: u8, payload: &[u8]) -> io::Result<&[u8]> {
    if flags & FLAG_PADDED == 0 {
        return Ok(payload);
    }
    let (&pad, rest) = payload
        .split_first()
        .ok_or_else(|| invalid("empty padded frame"))?;
    let keep = rest
        .len()
        .checked_sub(usize::from(pad))
        .ok_or_else(|| invalid("padding longer than the frame"))?;
    Ok(&rest[..keep])
}
