//! Tests of the frame layer and the connection wrapper together: client byte streams built frame
//! by frame, read through [`NormalizeAuthority`] in arbitrary pieces, and the server's view parsed
//! back into frames and decoded header lists.

#![allow(clippy::unwrap_used)]

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use proptest::prelude::*;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::frame::{
    FLAG_END_HEADERS, FLAG_END_STREAM, FLAG_PADDED, FLAG_PRIORITY, MAX_FRAME_SIZE, PREFACE,
    TYPE_CONTINUATION, TYPE_HEADERS,
};
use crate::raw_client::IndexingEncoder;
use crate::{Config, Error, NormalizeAuthority};

const DATA: u8 = 0x0;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const WINDOW_UPDATE: u8 = 0x8;

fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    crate::frame::put_frame_header(&mut out, payload.len(), kind, flags, stream_id);
    out.extend_from_slice(payload);
    out
}

fn request_fields(authority: Option<&str>, path: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut f = vec![
        (b":method".to_vec(), b"POST".to_vec()),
        (b":scheme".to_vec(), b"http".to_vec()),
        (b":path".to_vec(), path.as_bytes().to_vec()),
    ];
    if let Some(a) = authority {
        f.push((b":authority".to_vec(), a.as_bytes().to_vec()));
    }
    f.push((b"te".to_vec(), b"trailers".to_vec()));
    f.push((b"content-type".to_vec(), b"application/grpc".to_vec()));
    f
}

fn encode(enc: &mut loona_hpack::Encoder<'static>, fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    enc.encode(fields.iter().map(|(n, v)| (&n[..], &v[..])))
}

/// How a header block is framed by the client.
#[derive(Debug, Clone, Default)]
struct Framing {
    pad: Option<u8>,
    priority: Option<[u8; 5]>,
    end_stream: bool,
    /// Sizes of the pieces the block is cut into (HEADERS, then CONTINUATION frames).
    cuts: Vec<usize>,
}

fn header_frames(stream_id: u32, block: &[u8], framing: &Framing) -> Vec<u8> {
    let mut pieces = Vec::new();
    let mut rest = block;
    for &c in &framing.cuts {
        let (a, b) = rest.split_at(c.min(rest.len()));
        pieces.push(a);
        rest = b;
    }
    pieces.push(rest);
    let mut out = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        let last = i + 1 == pieces.len();
        let end_headers = if last { FLAG_END_HEADERS } else { 0 };
        if i == 0 {
            let mut payload = Vec::new();
            let mut flags = end_headers;
            if framing.end_stream {
                flags |= FLAG_END_STREAM;
            }
            if let Some(pad) = framing.pad {
                flags |= FLAG_PADDED;
                payload.push(pad);
            }
            if let Some(p) = framing.priority {
                flags |= FLAG_PRIORITY;
                payload.extend_from_slice(&p);
            }
            payload.extend_from_slice(piece);
            payload.extend(std::iter::repeat_n(
                0u8,
                usize::from(framing.pad.unwrap_or(0)),
            ));
            out.extend(frame(TYPE_HEADERS, flags, stream_id, &payload));
        } else {
            out.extend(frame(TYPE_CONTINUATION, end_headers, stream_id, piece));
        }
    }
    out
}

/// A reader that hands out `data` in pieces of the given sizes (cycling), saying `Pending` before
/// every other piece.
struct Pieces {
    data: Vec<u8>,
    pos: usize,
    sizes: Vec<usize>,
    turn: usize,
    pending_next: bool,
    written: Vec<u8>,
}

impl Pieces {
    fn new(data: Vec<u8>, sizes: Vec<usize>) -> Pieces {
        Pieces {
            data,
            pos: 0,
            sizes,
            turn: 0,
            pending_next: true,
            written: Vec::new(),
        }
    }
}

impl AsyncRead for Pieces {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pending_next {
            self.pending_next = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.pending_next = true;
        let size = if self.sizes.is_empty() {
            usize::MAX
        } else {
            self.sizes[self.turn % self.sizes.len()].max(1)
        };
        self.turn += 1;
        let n = size.min(buf.remaining()).min(self.data.len() - self.pos);
        let pos = self.pos;
        buf.put_slice(&self.data[pos..pos + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Pieces {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.written.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Reads everything the server would read, with read buffers of the given sizes (cycling).
fn server_reads(
    input: Vec<u8>,
    pieces: Vec<usize>,
    buffers: &[usize],
    config: &Config,
) -> Result<Vec<u8>, io::Error> {
    let mut conn = NormalizeAuthority::with_config(Pieces::new(input, pieces), config);
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    let mut turn = 0;
    loop {
        let size = buffers[turn % buffers.len()].max(1);
        turn += 1;
        let mut storage = vec![0u8; size];
        let mut buf = ReadBuf::new(&mut storage);
        match Pin::new(&mut conn).poll_read(&mut cx, &mut buf) {
            Poll::Pending => continue,
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Ready(Ok(())) if buf.filled().is_empty() => return Ok(out),
            Poll::Ready(Ok(())) => out.extend_from_slice(buf.filled()),
        }
    }
}

fn read_all(input: Vec<u8>) -> Vec<u8> {
    server_reads(input, vec![], &[1 << 20], &Config::default()).unwrap()
}

/// A frame as the server reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Frame {
    kind: u8,
    flags: u8,
    stream_id: u32,
    payload: Vec<u8>,
}

fn parse_frames(bytes: &[u8]) -> Vec<Frame> {
    assert!(bytes.starts_with(PREFACE), "the preface comes first");
    let mut rest = &bytes[PREFACE.len()..];
    let mut frames = Vec::new();
    while !rest.is_empty() {
        let len = (usize::from(rest[0]) << 16) | (usize::from(rest[1]) << 8) | usize::from(rest[2]);
        frames.push(Frame {
            kind: rest[3],
            flags: rest[4],
            stream_id: u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]),
            payload: rest[9..9 + len].to_vec(),
        });
        rest = &rest[9 + len..];
    }
    frames
}

/// A header block as the server sees it: stream, END_STREAM, priority, decoded fields.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Block {
    stream_id: u32,
    end_stream: bool,
    priority: Option<Vec<u8>>,
    fields: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Everything the server sees, header blocks decoded (with one decoder for the connection).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Block(Block),
    Other(Frame),
}

fn server_view(bytes: &[u8]) -> Vec<Seen> {
    let mut decoder = loona_hpack::Decoder::new();
    let mut seen = Vec::new();
    let mut open: Option<(Block, Vec<u8>)> = None;
    for f in parse_frames(bytes) {
        assert!(
            f.payload.len() <= MAX_FRAME_SIZE,
            "frame over 16384: {}",
            f.payload.len()
        );
        match f.kind {
            TYPE_HEADERS => {
                assert!(open.is_none());
                assert_eq!(f.flags & FLAG_PADDED, 0, "padding is dropped");
                let (priority, fragment) = if f.flags & FLAG_PRIORITY != 0 {
                    (Some(f.payload[..5].to_vec()), f.payload[5..].to_vec())
                } else {
                    (None, f.payload.clone())
                };
                let block = Block {
                    stream_id: f.stream_id,
                    end_stream: f.flags & FLAG_END_STREAM != 0,
                    priority,
                    fields: Vec::new(),
                };
                open = Some((block, fragment));
            }
            TYPE_CONTINUATION => {
                let (block, fragment) = open.as_mut().unwrap();
                assert_eq!(block.stream_id, f.stream_id);
                fragment.extend_from_slice(&f.payload);
            }
            _ => {
                assert!(open.is_none(), "nothing between HEADERS and CONTINUATION");
                seen.push(Seen::Other(f.clone()));
            }
        }
        if matches!(f.kind, TYPE_HEADERS | TYPE_CONTINUATION) && f.flags & FLAG_END_HEADERS != 0 {
            let (mut block, fragment) = open.take().unwrap();
            block.fields = decoder.decode(&fragment).unwrap();
            seen.push(Seen::Block(block));
        }
    }
    assert!(open.is_none(), "no block left open");
    seen
}

fn settings() -> Vec<u8> {
    frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0xff, 0xff])
}

fn authority_of(block: &Block) -> Option<&[u8]> {
    block
        .fields
        .iter()
        .find(|(n, _)| n == b":authority")
        .map(|(_, v)| &v[..])
}

#[test]
fn the_preface_and_every_other_frame_pass_through_byte_for_byte() {
    let mut input = PREFACE.to_vec();
    input.extend(settings());
    input.extend(frame(SETTINGS, 0x1, 0, &[]));
    input.extend(frame(WINDOW_UPDATE, 0, 0, &[0, 1, 0, 0]));
    input.extend(frame(PING, 0, 0, &[1, 2, 3, 4, 5, 6, 7, 8]));
    input.extend(frame(PRIORITY, 0, 3, &[0, 0, 0, 1, 16]));
    input.extend(frame(DATA, FLAG_PADDED, 1, &[2, b'h', b'i', 0, 0]));
    input.extend(frame(DATA, FLAG_END_STREAM, 1, &vec![7u8; 40_000]));
    input.extend(frame(0xfa, 0xff, 9, b"an unknown frame type"));
    input.extend(frame(RST_STREAM, 0, 1, &[0, 0, 0, 8]));
    assert_eq!(read_all(input.clone()), input);
    for piece in [1, 2, 8, 9, 10, 4096] {
        let got = server_reads(input.clone(), vec![piece], &[3, 9, 100], &Config::default());
        assert_eq!(got.unwrap(), input, "pieces of {piece}");
    }
}

#[test]
fn a_percent_encoded_authority_becomes_localhost_and_the_request_is_otherwise_unchanged() {
    let mut enc = loona_hpack::Encoder::new();
    let fields = request_fields(Some("tmp%2Fcephvol.sock"), "/svc/Version");
    let mut input = PREFACE.to_vec();
    input.extend(settings());
    input.extend(header_frames(
        1,
        &encode(&mut enc, &fields),
        &Framing::default(),
    ));
    let data = frame(DATA, FLAG_END_STREAM, 1, &[0, 0, 0, 0, 0]);
    input.extend(&data);
    let seen = server_view(&read_all(input));
    let mut expected = fields.clone();
    expected[3].1 = b"localhost".to_vec();
    assert_eq!(
        seen,
        vec![
            Seen::Other(parse_frames(&[&PREFACE[..], &settings()].concat())[0].clone()),
            Seen::Block(Block {
                stream_id: 1,
                end_stream: false,
                priority: None,
                fields: expected,
            }),
            Seen::Other(parse_frames(&[&PREFACE[..], &data].concat())[0].clone()),
        ]
    );
}

#[test]
fn padding_is_dropped_priority_and_end_stream_are_kept() {
    let mut enc = loona_hpack::Encoder::new();
    let fields = request_fields(Some("/tmp/cephvol.sock"), "/svc/Status");
    let framing = Framing {
        pad: Some(17),
        priority: Some([0x80, 0, 0, 3, 200]),
        end_stream: true,
        cuts: vec![],
    };
    let mut input = PREFACE.to_vec();
    input.extend(header_frames(5, &encode(&mut enc, &fields), &framing));
    let seen = server_view(&read_all(input));
    let Seen::Block(block) = &seen[0] else {
        panic!("{seen:?}")
    };
    assert_eq!(block.stream_id, 5);
    assert!(block.end_stream);
    assert_eq!(block.priority.as_deref(), Some(&[0x80, 0, 0, 3, 200][..]));
    assert_eq!(authority_of(block), Some(&b"localhost"[..]));
}

#[test]
fn continuation_sequences_are_reassembled_and_cut_anew() {
    let mut enc = loona_hpack::Encoder::new();
    let fields = request_fields(Some("tmp%2Fcephvol.sock"), "/svc/CreateVolume");
    let block = encode(&mut enc, &fields);
    let framing = Framing {
        cuts: vec![1, 0, 7, 3],
        pad: Some(0),
        ..Framing::default()
    };
    let mut input = PREFACE.to_vec();
    input.extend(header_frames(1, &block, &framing));
    let out = read_all(input);
    let frames = parse_frames(&out);
    assert_eq!(frames.len(), 1, "a small block fits one HEADERS frame");
    assert_eq!(frames[0].flags, FLAG_END_HEADERS);
    let Seen::Block(b) = &server_view(&out)[0] else {
        panic!()
    };
    assert_eq!(authority_of(b), Some(&b"localhost"[..]));
}

#[test]
fn a_large_header_block_is_cut_into_continuation_frames_of_at_most_16384_octets() {
    let mut enc = loona_hpack::Encoder::new();
    let mut fields = request_fields(Some("tmp%2Fcephvol.sock"), "/svc/ListVolumes");
    fields.push((b"x-big".to_vec(), vec![b'b'; 40_000]));
    let block = encode(&mut enc, &fields);
    let framing = Framing {
        priority: Some([0, 0, 0, 0, 15]),
        end_stream: true,
        cuts: vec![16_000, 16_000],
        ..Framing::default()
    };
    let mut input = PREFACE.to_vec();
    input.extend(header_frames(1, &block, &framing));
    let out = read_all(input);
    let frames = parse_frames(&out);
    let kinds: Vec<u8> = frames.iter().map(|f| f.kind).collect();
    assert_eq!(
        kinds,
        vec![TYPE_HEADERS, TYPE_CONTINUATION, TYPE_CONTINUATION]
    );
    assert_eq!(frames[0].payload.len(), MAX_FRAME_SIZE);
    assert_eq!(frames[1].payload.len(), MAX_FRAME_SIZE);
    assert_eq!(frames[0].flags, FLAG_END_STREAM | FLAG_PRIORITY);
    assert_eq!(frames[1].flags, 0);
    assert_eq!(frames[2].flags, FLAG_END_HEADERS);
    let Seen::Block(b) = &server_view(&out)[0] else {
        panic!()
    };
    let mut expected = fields.clone();
    expected[3].1 = b"localhost".to_vec();
    assert_eq!(b.fields, expected);
}

#[test]
fn several_requests_on_one_connection_with_indexed_authorities_are_all_rewritten() {
    let mut enc = IndexingEncoder::new();
    let mut input = PREFACE.to_vec();
    let mut sent = Vec::new();
    for (i, path) in [
        "/svc/Version",
        "/svc/Status",
        "/svc/Version",
        "/svc/ListVolumes",
    ]
    .iter()
    .enumerate()
    {
        let fields = request_fields(Some("tmp%2Fcephvol.sock"), path);
        let block = enc.encode(&fields);
        if i > 0 {
            assert!(block.len() < 40, "later requests index the earlier fields");
        }
        let sid = 1 + 2 * i as u32;
        input.extend(header_frames(sid, &block, &Framing::default()));
        input.extend(frame(DATA, FLAG_END_STREAM, sid, &[0, 0, 0, 0, 0]));
        sent.push(fields);
    }
    let seen = server_view(&read_all(input));
    let blocks: Vec<&Block> = seen
        .iter()
        .filter_map(|s| match s {
            Seen::Block(b) => Some(b),
            Seen::Other(_) => None,
        })
        .collect();
    assert_eq!(blocks.len(), 4);
    for (b, fields) in blocks.iter().zip(&sent) {
        assert_eq!(authority_of(b), Some(&b"localhost"[..]));
        assert_eq!(b.fields.len(), fields.len());
        assert_eq!(b.fields[2], fields[2], "path");
    }
}

#[test]
fn dynamic_table_size_updates_between_requests_are_followed() {
    let mut enc = loona_hpack::Encoder::new();
    let fields = request_fields(Some("tmp%2Fcephvol.sock"), "/svc/Version");
    let mut input = PREFACE.to_vec();
    input.extend(header_frames(
        1,
        &encode(&mut enc, &fields),
        &Framing::default(),
    ));
    // The client shrinks its table to 0 (all entries evicted), then grows it again.
    enc.set_max_table_size(0);
    let mut block = Vec::new();
    crate::hpack::encode_integer(&mut block, 0, 5, 0x20);
    crate::hpack::encode_integer(&mut block, 4096, 5, 0x20);
    let mut enc2 = loona_hpack::Encoder::new();
    block.extend(encode(&mut enc2, &fields));
    input.extend(header_frames(3, &block, &Framing::default()));
    // Then indexes what the second block added.
    input.extend(header_frames(
        5,
        &encode(&mut enc2, &fields),
        &Framing::default(),
    ));
    let seen = server_view(&read_all(input));
    assert_eq!(seen.len(), 3);
    for s in &seen {
        let Seen::Block(b) = s else { panic!() };
        assert_eq!(authority_of(b), Some(&b"localhost"[..]));
    }
}

#[test]
fn a_valid_or_absent_authority_is_left_alone() {
    let mut enc = loona_hpack::Encoder::new();
    let mut input = PREFACE.to_vec();
    for (sid, authority) in [(1, Some("localhost")), (3, None), (5, Some("cephvol:8080"))] {
        let fields = request_fields(authority, "/svc/Version");
        input.extend(header_frames(
            sid,
            &encode(&mut enc, &fields),
            &Framing::default(),
        ));
    }
    let seen = server_view(&read_all(input));
    let authorities: Vec<Option<Vec<u8>>> = seen
        .iter()
        .map(|s| match s {
            Seen::Block(b) => authority_of(b).map(<[u8]>::to_vec),
            Seen::Other(_) => panic!(),
        })
        .collect();
    assert_eq!(
        authorities,
        vec![
            Some(b"localhost".to_vec()),
            None,
            Some(b"cephvol:8080".to_vec())
        ]
    );
}

#[test]
fn a_stream_that_is_not_http2_passes_through_untouched() {
    let input = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    assert_eq!(read_all(input.clone()), input);
    // Right up to the point where the preface goes wrong.
    let mut input = PREFACE[..10].to_vec();
    input.extend(b"garbage that is not a frame");
    assert_eq!(read_all(input.clone()), input);
}

#[test]
fn writes_go_straight_to_the_socket() {
    let mut conn = NormalizeAuthority::new(Pieces::new(Vec::new(), vec![]));
    let mut cx = Context::from_waker(Waker::noop());
    let n = Pin::new(&mut conn).poll_write(&mut cx, b"server frames");
    assert!(matches!(n, Poll::Ready(Ok(13))));
    assert_eq!(conn.get_ref().written, b"server frames");
}

fn error_of(input: Vec<u8>, config: &Config) -> io::Error {
    server_reads(input, vec![], &[1 << 20], config).unwrap_err()
}

fn inner_error(e: &io::Error) -> Error {
    e.get_ref()
        .and_then(|e| e.downcast_ref::<Error>())
        .cloned()
        .unwrap_or_else(|| panic!("not an adapter error: {e:?}"))
}

#[test]
fn streams_the_adapter_cannot_follow_fail_the_read_and_keep_failing() {
    let mut enc = loona_hpack::Encoder::new();
    let block = encode(&mut enc, &request_fields(Some("x"), "/p"));
    let open = frame(TYPE_HEADERS, 0, 1, &block[..4]);
    let cases: Vec<(Vec<u8>, Error)> = vec![
        (
            [open.clone(), frame(DATA, 0, 1, b"x")].concat(),
            Error::InterleavedFrame {
                frame_type: DATA,
                stream_id: 1,
                open_stream_id: 1,
            },
        ),
        (
            [
                open.clone(),
                frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 3, &block[4..]),
            ]
            .concat(),
            Error::InterleavedFrame {
                frame_type: TYPE_CONTINUATION,
                stream_id: 3,
                open_stream_id: 1,
            },
        ),
        (
            frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &block),
            Error::UnexpectedContinuation { stream_id: 1 },
        ),
        (
            frame(TYPE_HEADERS, FLAG_END_HEADERS | FLAG_PADDED, 1, &[9, 1, 2]),
            Error::BadPadding { stream_id: 1 },
        ),
        (
            frame(
                TYPE_HEADERS,
                FLAG_END_HEADERS | FLAG_PRIORITY,
                1,
                &[0, 0, 1],
            ),
            Error::BadPriority { stream_id: 1 },
        ),
        (
            frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &[0xff, 0xff]),
            Error::Truncated,
        ),
        (
            frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &[0xbe]),
            Error::Hpack("Header index out of bounds".into()),
        ),
    ];
    for (frames, want) in cases {
        let mut input = PREFACE.to_vec();
        input.extend(frames);
        input.extend(frame(PING, 0, 0, &[0; 8]));
        let mut conn = NormalizeAuthority::new(Pieces::new(input, vec![]));
        let mut cx = Context::from_waker(Waker::noop());
        let mut storage = vec![0u8; 1 << 16];
        let mut err = None;
        for _ in 0..10 {
            let mut buf = ReadBuf::new(&mut storage);
            if let Poll::Ready(Err(e)) = Pin::new(&mut conn).poll_read(&mut cx, &mut buf) {
                err = Some(e);
                break;
            }
        }
        let err = err.unwrap_or_else(|| panic!("no error for {want:?}"));
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(inner_error(&err), want);
        let mut buf = ReadBuf::new(&mut storage);
        let again = Pin::new(&mut conn).poll_read(&mut cx, &mut buf);
        assert!(matches!(again, Poll::Ready(Err(_))), "later reads fail too");
    }
}

#[test]
fn header_blocks_and_lists_over_the_limits_close_the_connection() {
    let config = Config {
        max_header_block: 1000,
        max_header_list_size: 2000,
        ..Config::default()
    };
    let mut enc = loona_hpack::Encoder::new();
    let mut big = request_fields(None, "/p");
    big.push((b"x-big".to_vec(), vec![b'b'; 1500]));
    let mut input = PREFACE.to_vec();
    input.extend(header_frames(
        1,
        &encode(&mut enc, &big),
        &Framing::default(),
    ));
    let e = error_of(input, &config);
    assert_eq!(
        inner_error(&e),
        Error::HeaderBlockTooLarge {
            stream_id: 1,
            limit: 1000
        }
    );

    let mut enc = loona_hpack::Encoder::new();
    let mut medium = request_fields(None, "/p");
    medium.push((b"x-m".to_vec(), vec![b'm'; 600]));
    let first = encode(&mut enc, &medium);
    let again = encode(
        &mut enc,
        &[medium.clone(), medium.clone(), medium.clone()].concat(),
    );
    let mut input = PREFACE.to_vec();
    input.extend(header_frames(1, &first, &Framing::default()));
    input.extend(header_frames(3, &again, &Framing::default()));
    let e = error_of(input, &config);
    assert_eq!(inner_error(&e), Error::HeaderListTooLarge { limit: 2000 });
}

/// One thing a client sends, for the property test.
#[derive(Debug, Clone)]
enum Sent {
    Request {
        authority: Option<&'static str>,
        framing: Framing,
        data: Vec<usize>,
    },
    Ping,
    WindowUpdate,
    TableSize(usize),
}

fn sent() -> impl Strategy<Value = Sent> {
    let authority = prop_oneof![
        Just(Some("tmp%2Fcephvol.sock")),
        Just(Some("/run/cephvol/cephvol.sock")),
        Just(Some("localhost")),
        Just(Some("")),
        Just(None),
    ];
    let framing = (
        proptest::option::of(any::<u8>()),
        proptest::option::of(any::<[u8; 5]>()),
        any::<bool>(),
        proptest::collection::vec(0usize..40, 0..4),
    )
        .prop_map(|(pad, priority, end_stream, cuts)| Framing {
            pad,
            priority,
            end_stream,
            cuts,
        });
    prop_oneof![
        6 => (authority, framing, proptest::collection::vec(0usize..3000, 0..3))
            .prop_map(|(authority, framing, data)| Sent::Request { authority, framing, data }),
        1 => Just(Sent::Ping),
        1 => Just(Sent::WindowUpdate),
        1 => prop_oneof![Just(0usize), Just(100), Just(4096)].prop_map(Sent::TableSize),
    ]
}

/// The client's bytes and what the server must see.
fn conversation(script: &[Sent]) -> (Vec<u8>, Vec<Seen>) {
    let mut enc = IndexingEncoder::new();
    let mut input = PREFACE.to_vec();
    let mut expected = Vec::new();
    let mut size_update = None;
    let mut sid = 1;
    let other =
        |bytes: &[u8]| Seen::Other(parse_frames(&[&PREFACE[..], bytes].concat())[0].clone());
    for s in script {
        match s {
            Sent::Ping => {
                let f = frame(PING, 0, 0, &[1; 8]);
                input.extend(&f);
                expected.push(other(&f));
            }
            Sent::WindowUpdate => {
                let f = frame(WINDOW_UPDATE, 0, 0, &[0, 0, 1, 0]);
                input.extend(&f);
                expected.push(other(&f));
            }
            Sent::TableSize(n) => {
                enc.set_max_table_size(*n);
                size_update = Some(*n);
            }
            Sent::Request {
                authority,
                framing,
                data,
            } => {
                let fields = request_fields(*authority, &format!("/svc/M{sid}"));
                let mut block = Vec::new();
                if let Some(n) = size_update.take() {
                    crate::hpack::encode_integer(&mut block, n, 5, 0x20);
                }
                block.extend(enc.encode(&fields));
                let mut framing = framing.clone();
                framing.end_stream = data.is_empty();
                input.extend(header_frames(sid, &block, &framing));
                let fields = fields
                    .into_iter()
                    .map(|(n, v)| {
                        if n == b":authority" && !crate::is_acceptable_authority(&v) {
                            (n, b"localhost".to_vec())
                        } else {
                            (n, v)
                        }
                    })
                    .collect();
                expected.push(Seen::Block(Block {
                    stream_id: sid,
                    end_stream: framing.end_stream,
                    priority: framing.priority.map(|p| p.to_vec()),
                    fields,
                }));
                for (i, &len) in data.iter().enumerate() {
                    let flags = if i + 1 == data.len() {
                        FLAG_END_STREAM
                    } else {
                        0
                    };
                    let f = frame(DATA, flags, sid, &vec![sid as u8; len]);
                    input.extend(&f);
                    expected.push(other(&f));
                }
                sid += 2;
            }
        }
    }
    (input, expected)
}

proptest! {
    #[test]
    fn any_conversation_read_in_any_pieces_reaches_the_server_rewritten_and_in_order(
        script in proptest::collection::vec(sent(), 1..12),
        pieces in proptest::collection::vec(1usize..200, 1..6),
        buffers in proptest::collection::vec(1usize..300, 1..6),
    ) {
        let (input, expected) = conversation(&script);
        let whole = read_all(input.clone());
        prop_assert_eq!(server_view(&whole), expected);
        let pieced = server_reads(input, pieces, &buffers, &Config::default()).unwrap();
        prop_assert_eq!(pieced, whole);
    }

    #[test]
    fn arbitrary_frames_after_the_preface_never_panic(
        frames in proptest::collection::vec(
            (0u8..12, any::<u8>(), 0u32..4, proptest::collection::vec(any::<u8>(), 0..48)),
            1..10,
        ),
        pieces in proptest::collection::vec(1usize..64, 1..4),
    ) {
        let mut input = PREFACE.to_vec();
        for (kind, flags, sid, payload) in frames {
            input.extend(frame(kind, flags, sid, &payload));
        }
        let _ = server_reads(input, pieces, &[7, 1000], &Config::default());
    }
}
