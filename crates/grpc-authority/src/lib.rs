//! Lets every conformant gRPC client talk to a Rust HTTP/2 server on a unix socket.
//!
//! # The problem
//!
//! gRPC C-core (the Python, C++, Ruby and PHP clients), grpc-java and grpc-swift send the unix
//! socket path, percent-encoded, as the HTTP/2 `:authority` pseudo-header: a client of
//! `unix:/tmp/cephvol.sock` sends `:authority: tmp%2Fcephvol.sock`. The `h2` crate under
//! hyper/tonic parses `:authority` with `http::uri::Authority`, which refuses a `%` outside the
//! userinfo, and resets every such stream with `PROTOCOL_ERROR` ("malformed headers") before the
//! service sees it. grpc-go and tonic clients send `localhost` and never notice.
//!
//! # The mechanism
//!
//! [`NormalizeAuthority`] wraps each accepted connection and rewrites the client→server byte
//! stream on its way to the server:
//! * the connection preface and every frame other than HEADERS and CONTINUATION — DATA, SETTINGS,
//!   WINDOW_UPDATE, PING, RST_STREAM, PRIORITY, GOAWAY, unknown types — pass through unchanged, and
//!   in place in the server's read buffer (`stream.rs` says how);
//! * a header block — a HEADERS frame (PADDED and PRIORITY handled) and its CONTINUATION frames —
//!   is collected, HPACK-decoded by a decoder that mirrors the client's dynamic table
//!   (`hpack.rs`), its `:authority` replaced with [`REPLACEMENT_AUTHORITY`] if the server's own
//!   parser would refuse it (a `%`, a `/`, an empty value; [`is_acceptable_authority`]), and every
//!   field re-encoded as a literal that the server does not index, so the server's dynamic table
//!   stays empty and can never disagree with ours. The block is framed anew (`frame.rs`): one
//!   HEADERS frame (END_STREAM and the priority fields kept, padding dropped) and CONTINUATION
//!   frames, each payload at most 16,384 octets, which every HTTP/2 peer accepts whatever it
//!   advertised in `SETTINGS_MAX_FRAME_SIZE`;
//! * server→client bytes pass through untouched.
//!
//! A valid `:authority` and an absent one are left as they are (the block is still re-encoded).
//! Something that does not start with the HTTP/2 connection preface passes through untouched, for
//! the server to answer.
//!
//! **Flow control is unaffected.** Only DATA frames are flow-controlled (RFC 9113 section 5.2); a
//! re-encoded header block may be longer or shorter than the client's, and neither side's windows
//! count it. Dropping HEADERS padding is allowed: padding carries no meaning, and it only hides
//! sizes on the hop between the client and the socket, which the adapter is the end of.
//!
//! **Errors close the connection.** A stream the adapter cannot follow — a frame between a HEADERS
//! frame and its CONTINUATION frames, a CONTINUATION with nothing open, padding longer than the
//! payload, a header block that does not decode, a header block or header list over the limits in
//! [`Config`] — makes every read fail with `InvalidData`; the server then closes the connection, as
//! it would for such a client itself (most of these are connection errors in HTTP/2 anyway).
//! Nothing in the adapter panics on what a client sends.
//!
//! # Why these pieces
//!
//! HPACK decoding is the `loona-hpack` crate's: it passes h2spec's HPACK cases and is the newest of
//! the Rust HPACK codecs on crates.io (last release November 2024). It decodes a Huffman string by
//! building its code table first, about 50 µs per string in release builds, which the limits in
//! [`Config`] bound and a control-plane socket does not feel. The others were ruled out:
//! `httlib-hpack` 0.1.3 panics (index out of bounds) on a truncated integer such as `[0x7f]`;
//! `hpack` 0.3 has had no release since 2016 and is the code `loona-hpack` forked and fixed;
//! `fluke-hpack` is `loona-hpack`'s former name. The HPACK encoder and the scan of a block's field
//! boundaries are ours (a few dozen lines in `hpack.rs`, whose docs say why). HTTP/2 framing is ours:
//! `h2`'s codec is private and a whole HTTP/2 implementation would terminate the connection
//! instead of passing it through.
//!
//! # Use
//!
//! Wrap each accepted stream before the server sees it; with tonic (feature `tonic`, which
//! implements `Connected` by the wrapped stream's connect info):
//!
//! ```ignore
//! let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener)
//!     .map(|conn| conn.map(grpc_authority::NormalizeAuthority::new));
//! tonic::transport::Server::builder().add_service(svc).serve_with_incoming(incoming).await?;
//! ```
//!
//! The default [`Config`] fits a hyper/tonic server with its default settings; a server that
//! advertises a larger `SETTINGS_HEADER_TABLE_SIZE` needs `header_table_size` raised to match.
//!
//! The crate is named for what it is for rather than `h2-…`: log filters match targets by prefix,
//! and a filter that quiets the `h2` crate would quiet this one too.
//!
//! Modules: `frame.rs` (framing), `hpack.rs` (header blocks), `stream.rs` (the connection
//! wrapper), [`raw_client`] (for tests: a minimal HTTP/2 client that can send any `:authority`).

mod frame;
mod hpack;
pub mod raw_client;
mod stream;

pub use hpack::is_acceptable_authority;
pub use stream::NormalizeAuthority;

/// What an `:authority` the server would refuse is replaced with.
pub const REPLACEMENT_AUTHORITY: &str = "localhost";

/// Limits of one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The largest HPACK dynamic table the client may select with a size update: the server's
    /// `SETTINGS_HEADER_TABLE_SIZE`. Default 4,096, the protocol default, which hyper and tonic
    /// keep.
    pub header_table_size: usize,
    /// The largest header block (fragments of a HEADERS frame and its CONTINUATION frames,
    /// without padding and priority), in octets. Default 65,536.
    pub max_header_block: usize,
    /// The largest decoded header list (names, values and 32 octets per field, as
    /// `SETTINGS_MAX_HEADER_LIST_SIZE` counts). Default 65,536: four times what hyper accepts by
    /// default, so only a client the server would refuse anyway meets it.
    pub max_header_list_size: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            header_table_size: 4096,
            max_header_block: 65_536,
            max_header_list_size: 65_536,
        }
    }
}

/// Why a connection cannot be rewritten (and is closed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A frame other than CONTINUATION arrived inside a header block.
    #[error("frame of type {frame_type:#x} on stream {stream_id} inside the header block of stream {open_stream_id}")]
    InterleavedFrame {
        /// The frame's type.
        frame_type: u8,
        /// The frame's stream.
        stream_id: u32,
        /// The stream whose header block is open.
        open_stream_id: u32,
    },
    /// A CONTINUATION frame arrived with no header block open.
    #[error("CONTINUATION on stream {stream_id} with no header block open")]
    UnexpectedContinuation {
        /// The frame's stream.
        stream_id: u32,
    },
    /// A HEADERS frame's padding is longer than its payload.
    #[error("HEADERS on stream {stream_id}: padding longer than the payload")]
    BadPadding {
        /// The frame's stream.
        stream_id: u32,
    },
    /// A HEADERS frame with the PRIORITY flag has no room for the priority fields.
    #[error("HEADERS on stream {stream_id}: too short for its priority fields")]
    BadPriority {
        /// The frame's stream.
        stream_id: u32,
    },
    /// A header block exceeds [`Config::max_header_block`].
    #[error("header block of stream {stream_id} exceeds {limit} octets")]
    HeaderBlockTooLarge {
        /// The block's stream.
        stream_id: u32,
        /// The limit.
        limit: usize,
    },
    /// A decoded header list exceeds [`Config::max_header_list_size`].
    #[error("header list exceeds {limit} octets")]
    HeaderListTooLarge {
        /// The limit.
        limit: usize,
    },
    /// A dynamic table size update above [`Config::header_table_size`].
    #[error("HPACK dynamic table size update to {size} above the limit of {limit}")]
    TableSizeUpdate {
        /// The size asked for.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A dynamic table size update after the first field of a block.
    #[error("HPACK dynamic table size update after a header field")]
    SizeUpdateAfterField,
    /// A header block ends inside a field representation.
    #[error("HPACK header block truncated")]
    Truncated,
    /// An HPACK integer longer than any valid one.
    #[error("HPACK integer too long")]
    IntegerTooLong,
    /// The HPACK decoder refused the block.
    #[error("HPACK: {0}")]
    Hpack(String),
}

#[cfg(test)]
mod tests;
