//! The client→server byte stream of one connection, frame by frame: the connection preface and
//! every frame other than HEADERS/CONTINUATION pass through as they are; a header block (a HEADERS
//! frame and its CONTINUATION frames) is collected, rewritten by [`crate::hpack`] and framed anew.
//!
//! Owns: HTTP/2 framing (RFC 9113 section 4.1: 9-octet frame headers; section 6.2: HEADERS with
//! PADDED and PRIORITY; section 6.10: CONTINUATION sequences) and the ordering of what the server
//! reads. Must not: do I/O ([`crate::NormalizeAuthority`] does) or look inside a header block.
//!
//! [`Rewriter::feed`] takes any slice of the stream — split anywhere — and says of a prefix of it
//! either "pass these bytes on as they are" or "taken": held back, to come out later rewritten in
//! [`Rewriter::pending`]. Passing bytes on is only allowed while nothing is pending, so the server
//! reads everything in the client's order.

use crate::hpack::HeaderRewriter;
use crate::{Config, Error};

/// The client connection preface (RFC 9113 section 3.4).
pub(crate) const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Octets in a frame header.
pub(crate) const FRAME_HEADER_LEN: usize = 9;
/// The largest frame payload every HTTP/2 peer accepts (`SETTINGS_MAX_FRAME_SIZE` can only raise
/// it), so rewritten header blocks are cut at this size whatever the server advertised.
pub(crate) const MAX_FRAME_SIZE: usize = 16_384;

/// HEADERS frame type.
pub(crate) const TYPE_HEADERS: u8 = 0x1;
/// CONTINUATION frame type.
pub(crate) const TYPE_CONTINUATION: u8 = 0x9;
/// END_STREAM flag (HEADERS, DATA).
pub(crate) const FLAG_END_STREAM: u8 = 0x1;
/// END_HEADERS flag (HEADERS, CONTINUATION).
pub(crate) const FLAG_END_HEADERS: u8 = 0x4;
/// PADDED flag (HEADERS, DATA).
pub(crate) const FLAG_PADDED: u8 = 0x8;
/// PRIORITY flag (HEADERS).
pub(crate) const FLAG_PRIORITY: u8 = 0x20;

/// What [`Rewriter::feed`] did with a prefix of its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// These bytes go to the server unchanged, now.
    Pass(usize),
    /// These bytes were taken; what comes of them appears in [`Rewriter::pending`].
    Took(usize),
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy)]
struct FrameHeader {
    len: usize,
    kind: u8,
    flags: u8,
    stream_id: u32,
}

impl FrameHeader {
    fn parse(b: &[u8]) -> FrameHeader {
        FrameHeader {
            len: (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]),
            kind: b[3],
            flags: b[4],
            stream_id: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }
}

/// Appends a frame header.
pub(crate) fn put_frame_header(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream_id: u32) {
    let len = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
    out.extend_from_slice(&len[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
}

#[derive(Debug)]
enum State {
    /// Matching the connection preface; this many octets matched so far.
    Preface(usize),
    /// Not HTTP/2 with prior knowledge: everything passes through (the server answers it).
    Raw,
    /// Reading a frame header into `Rewriter::head`.
    Head,
    /// Passing this many more payload octets through.
    PassPayload(usize),
    /// Collecting the payload of a HEADERS or CONTINUATION frame into `Rewriter::payload`.
    Collect(FrameHeader),
}

/// A header block being collected.
#[derive(Debug)]
struct OpenBlock {
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragments: Vec<u8>,
}

/// The rewriting state machine of one connection (see the module docs).
pub(crate) struct Rewriter {
    state: State,
    head: [u8; FRAME_HEADER_LEN],
    head_len: usize,
    payload: Vec<u8>,
    block: Option<OpenBlock>,
    hpack: HeaderRewriter,
    max_header_block: usize,
    pending: Vec<u8>,
    pending_pos: usize,
    replaced: u64,
}

impl Rewriter {
    /// A rewriter for a new connection (expects the connection preface first).
    pub fn new(config: &Config) -> Rewriter {
        Rewriter {
            state: State::Preface(0),
            head: [0; FRAME_HEADER_LEN],
            head_len: 0,
            payload: Vec::new(),
            block: None,
            hpack: HeaderRewriter::new(config.header_table_size, config.max_header_list_size),
            max_header_block: config.max_header_block,
            pending: Vec::new(),
            pending_pos: 0,
            replaced: 0,
        }
    }

    /// Rewritten bytes the server must read before anything else.
    pub fn pending(&self) -> &[u8] {
        &self.pending[self.pending_pos..]
    }

    /// Marks `n` pending bytes as read by the server.
    pub fn consume_pending(&mut self, n: usize) {
        self.pending_pos += n;
        if self.pending_pos >= self.pending.len() {
            self.pending.clear();
            self.pending_pos = 0;
        }
    }

    /// How many `:authority` values were replaced so far.
    pub fn replaced(&self) -> u64 {
        self.replaced
    }

    /// Processes a prefix of `input` (at least one octet of a non-empty input). Must only be called
    /// while [`pending`](Self::pending) is empty.
    pub fn feed(&mut self, input: &[u8]) -> Result<Step, Error> {
        debug_assert!(self.pending().is_empty(), "pending bytes go first");
        if input.is_empty() {
            return Ok(Step::Pass(0));
        }
        match self.state {
            State::Preface(matched) => {
                let want = &PREFACE[matched..];
                let n = want.iter().zip(input).take_while(|(a, b)| a == b).count();
                if n == 0 {
                    self.state = State::Raw;
                    return Ok(Step::Pass(input.len()));
                }
                self.state = if matched + n == PREFACE.len() {
                    State::Head
                } else {
                    State::Preface(matched + n)
                };
                Ok(Step::Pass(n))
            }
            State::Raw => Ok(Step::Pass(input.len())),
            State::PassPayload(remaining) => {
                let n = remaining.min(input.len());
                self.state = if n == remaining {
                    State::Head
                } else {
                    State::PassPayload(remaining - n)
                };
                Ok(Step::Pass(n))
            }
            State::Collect(header) => {
                let want = header.len - self.payload.len();
                let n = want.min(input.len());
                self.payload.extend_from_slice(&input[..n]);
                if self.payload.len() == header.len {
                    self.state = State::Head;
                    self.finish_frame(header)?;
                }
                Ok(Step::Took(n))
            }
            State::Head => {
                if self.head_len == 0 && input.len() >= FRAME_HEADER_LEN {
                    // The whole header is here: a pass-through frame's header passes in place.
                    let header = FrameHeader::parse(&input[..FRAME_HEADER_LEN]);
                    return Ok(if self.start_frame(header)? {
                        Step::Pass(FRAME_HEADER_LEN)
                    } else {
                        Step::Took(FRAME_HEADER_LEN)
                    });
                }
                let n = (FRAME_HEADER_LEN - self.head_len).min(input.len());
                self.head[self.head_len..self.head_len + n].copy_from_slice(&input[..n]);
                self.head_len += n;
                if self.head_len == FRAME_HEADER_LEN {
                    self.head_len = 0;
                    let header = FrameHeader::parse(&self.head);
                    if self.start_frame(header)? {
                        // Taken piecemeal, so it goes out through `pending`.
                        self.pending.extend_from_slice(&self.head);
                    }
                }
                Ok(Step::Took(n))
            }
        }
    }

    /// Decides what to do with a frame whose header was just read: `true` if it passes through.
    fn start_frame(&mut self, header: FrameHeader) -> Result<bool, Error> {
        let collect = match (header.kind, &self.block) {
            (TYPE_HEADERS, None) => true,
            (TYPE_CONTINUATION, Some(open)) if open.stream_id == header.stream_id => true,
            (TYPE_CONTINUATION, None) => {
                return Err(Error::UnexpectedContinuation {
                    stream_id: header.stream_id,
                })
            }
            (_, Some(open)) => {
                return Err(Error::InterleavedFrame {
                    frame_type: header.kind,
                    stream_id: header.stream_id,
                    open_stream_id: open.stream_id,
                })
            }
            (_, None) => false,
        };
        if !collect {
            self.state = if header.len == 0 {
                State::Head
            } else {
                State::PassPayload(header.len)
            };
            return Ok(true);
        }
        let collected = self.block.as_ref().map_or(0, |b| b.fragments.len());
        if collected.saturating_add(header.len) > self.max_header_block + 256 + 5 {
            // Checked again without padding and priority once the payload is in.
            return Err(Error::HeaderBlockTooLarge {
                stream_id: header.stream_id,
                limit: self.max_header_block,
            });
        }
        self.payload.clear();
        self.payload.reserve(header.len);
        self.state = State::Collect(header);
        if header.len == 0 {
            self.state = State::Head;
            self.finish_frame(header)?;
        }
        Ok(false)
    }

    /// A HEADERS or CONTINUATION payload is complete in `self.payload`.
    fn finish_frame(&mut self, header: FrameHeader) -> Result<(), Error> {
        let payload = std::mem::take(&mut self.payload);
        let mut body = &payload[..];
        if header.kind == TYPE_HEADERS {
            if header.flags & FLAG_PADDED != 0 {
                let (&pad, rest) = body.split_first().ok_or(Error::BadPadding {
                    stream_id: header.stream_id,
                })?;
                let keep = rest
                    .len()
                    .checked_sub(usize::from(pad))
                    .ok_or(Error::BadPadding {
                        stream_id: header.stream_id,
                    })?;
                body = &rest[..keep];
            }
            let priority = if header.flags & FLAG_PRIORITY != 0 {
                let p: [u8; 5] =
                    body.get(..5)
                        .and_then(|p| p.try_into().ok())
                        .ok_or(Error::BadPriority {
                            stream_id: header.stream_id,
                        })?;
                body = &body[5..];
                Some(p)
            } else {
                None
            };
            self.block = Some(OpenBlock {
                stream_id: header.stream_id,
                end_stream: header.flags & FLAG_END_STREAM != 0,
                priority,
                fragments: Vec::new(),
            });
        }
        let Some(open) = self.block.as_mut() else {
            return Err(Error::UnexpectedContinuation {
                stream_id: header.stream_id,
            });
        };
        if open.fragments.len() + body.len() > self.max_header_block {
            return Err(Error::HeaderBlockTooLarge {
                stream_id: header.stream_id,
                limit: self.max_header_block,
            });
        }
        open.fragments.extend_from_slice(body);
        self.payload = payload;
        self.payload.clear();
        if header.flags & FLAG_END_HEADERS != 0 {
            if let Some(block) = self.block.take() {
                self.emit(block)?;
            }
        }
        Ok(())
    }

    /// Rewrites a complete header block and queues its frames.
    fn emit(&mut self, block: OpenBlock) -> Result<(), Error> {
        let rewritten = self.hpack.rewrite(&block.fragments)?;
        for original in &rewritten.replaced {
            tracing::debug!(
                stream_id = block.stream_id,
                authority = %String::from_utf8_lossy(original),
                "replaced an :authority the server would refuse with `localhost`"
            );
        }
        self.replaced += rewritten.replaced.len() as u64;
        write_header_block(
            &mut self.pending,
            block.stream_id,
            block.end_stream,
            block.priority,
            &rewritten.block,
        );
        Ok(())
    }
}

/// Frames `block` as one HEADERS frame (with END_STREAM and the priority fields as given, no
/// padding) and as many CONTINUATION frames as needed, each payload at most [`MAX_FRAME_SIZE`].
pub(crate) fn write_header_block(
    out: &mut Vec<u8>,
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    block: &[u8],
) {
    let priority_len = priority.map_or(0, |p| p.len());
    let first = block.len().min(MAX_FRAME_SIZE - priority_len);
    let (head, mut rest) = block.split_at(first);
    let mut flags = 0;
    if end_stream {
        flags |= FLAG_END_STREAM;
    }
    if priority.is_some() {
        flags |= FLAG_PRIORITY;
    }
    if rest.is_empty() {
        flags |= FLAG_END_HEADERS;
    }
    put_frame_header(
        out,
        priority_len + head.len(),
        TYPE_HEADERS,
        flags,
        stream_id,
    );
    if let Some(p) = priority {
        out.extend_from_slice(&p);
    }
    out.extend_from_slice(head);
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME_SIZE));
        rest = tail;
        let flags = if rest.is_empty() { FLAG_END_HEADERS } else { 0 };
        put_frame_header(out, chunk.len(), TYPE_CONTINUATION, flags, stream_id);
        out.extend_from_slice(chunk);
    }
}
