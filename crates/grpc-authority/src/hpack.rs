//! One header block in, one header block out: HPACK-decodes a client's header block with a decoder
//! that mirrors the client's dynamic table, replaces an `:authority` the server would reject, and
//! re-encodes every field as a literal that the server does not index.
//!
//! Owns: the connection's HPACK decoding context (`loona_hpack::Decoder`), the scan that finds
//! where each field representation ends, and the literal encoder. Must not: look at frames (that
//! is [`crate::frame`]) or keep any state for the server side — the server's dynamic table stays
//! empty because nothing sent to it is indexed, so there is nothing to mirror.
//!
//! Decoding is `loona_hpack`'s (Huffman, dynamic table, eviction). Two small pieces are ours,
//! because its decoder takes a whole block and reports names and values but not how each field was
//! represented:
//! * a scan over the block's structure (RFC 7541 section 6: the first octet's pattern, prefix
//!   integers, string lengths) that finds each field's extent and representation, so each field is
//!   decoded on its own (the header-list limit can stop a block early) and a field the client sent
//!   as *never indexed* is sent on as never indexed, as RFC 7541 section 6.2.3 requires of
//!   intermediaries; dynamic table size updates, which may only open a block, are applied here;
//! * the encoder: a literal with a literal name, raw (non-Huffman) strings, one prefix integer
//!   routine. Nothing more is needed when nothing is indexed.

use std::borrow::Cow;

use loona_hpack::Decoder;

use crate::{Error, REPLACEMENT_AUTHORITY};

/// Literal header field representations a client may use (RFC 7541 section 6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Representation {
    /// `1xxxxxxx`: a table entry.
    Indexed,
    /// `01xxxxxx`: a literal the decoder adds to its table.
    IncrementalIndexing,
    /// `0000xxxx`: a literal left out of the table.
    WithoutIndexing,
    /// `0001xxxx`: a literal that no hop may index.
    NeverIndexed,
}

/// Longest HPACK integer accepted, in octets after the prefix octet (as `loona_hpack`, so that the
/// scan and the decoder never disagree on a valid block): values stay below 2^28.
const MAX_INTEGER_CONTINUATION_OCTETS: usize = 4;

/// Decodes an HPACK prefix integer (RFC 7541 section 5.1) at the start of `buf`: the value and the
/// octets it took.
pub(crate) fn decode_integer(buf: &[u8], prefix_bits: u8) -> Result<(usize, usize), Error> {
    let first = *buf.first().ok_or(Error::Truncated)?;
    let max_prefix = (1usize << prefix_bits) - 1;
    let mut value = usize::from(first) & max_prefix;
    if value < max_prefix {
        return Ok((value, 1));
    }
    for (i, &octet) in buf[1..].iter().enumerate() {
        if i == MAX_INTEGER_CONTINUATION_OCTETS {
            return Err(Error::IntegerTooLong);
        }
        value += usize::from(octet & 0x7f) << (7 * i);
        if octet & 0x80 == 0 {
            return Ok((value, i + 2));
        }
    }
    Err(Error::Truncated)
}

/// Appends `value` as an HPACK prefix integer; `first_bits` are the bits above the prefix.
pub(crate) fn encode_integer(out: &mut Vec<u8>, mut value: usize, prefix_bits: u8, first_bits: u8) {
    let max_prefix = (1usize << prefix_bits) - 1;
    if value < max_prefix {
        // value < 2^prefix_bits <= 128, so it fits the octet.
        out.push(first_bits | value as u8);
        return;
    }
    out.push(first_bits | max_prefix as u8);
    value -= max_prefix;
    while value >= 0x80 {
        out.push(0x80 | (value & 0x7f) as u8);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends a raw (not Huffman-coded) string literal.
fn encode_string(out: &mut Vec<u8>, s: &[u8]) {
    encode_integer(out, s.len(), 7, 0);
    out.extend_from_slice(s);
}

/// Appends a literal field with a literal name that the server does not index: *never indexed*
/// (`0001 0000`) when the client sent it so, else *without indexing* (`0000 0000`).
fn encode_field(out: &mut Vec<u8>, name: &[u8], value: &[u8], never_indexed: bool) {
    out.push(if never_indexed { 0x10 } else { 0x00 });
    encode_string(out, name);
    encode_string(out, value);
}

/// Octets taken by the string literal at the start of `buf`.
fn string_extent(buf: &[u8]) -> Result<usize, Error> {
    let (len, head) = decode_integer(buf, 7)?;
    let end = head.checked_add(len).ok_or(Error::Truncated)?;
    if end > buf.len() {
        return Err(Error::Truncated);
    }
    Ok(end)
}

/// The representation of the field at the start of `buf` and the octets it takes. A dynamic table
/// size update here (after a field) is an error: it may only open a block (RFC 7541 section 4.2).
fn field_extent(buf: &[u8]) -> Result<(Representation, usize), Error> {
    let first = *buf.first().ok_or(Error::Truncated)?;
    let (representation, prefix_bits) = match first {
        f if f & 0x80 != 0 => (Representation::Indexed, 7),
        f if f & 0xc0 == 0x40 => (Representation::IncrementalIndexing, 6),
        f if f & 0xe0 == 0x20 => return Err(Error::SizeUpdateAfterField),
        f if f & 0xf0 == 0x10 => (Representation::NeverIndexed, 4),
        _ => (Representation::WithoutIndexing, 4),
    };
    let (index, mut len) = decode_integer(buf, prefix_bits)?;
    if representation == Representation::Indexed {
        return Ok((representation, len));
    }
    if index == 0 {
        len += string_extent(&buf[len..])?;
    }
    len += string_extent(&buf[len..])?;
    Ok((representation, len))
}

/// Whether `value` is an authority the server's HTTP/2 layer accepts: h2 parses `:authority` with
/// `http::uri::Authority` and refuses the request as malformed otherwise (a `%` outside userinfo, a
/// `/`, an empty value, ...). The same parser decides here, so exactly those values are replaced.
pub fn is_acceptable_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// What [`HeaderRewriter::rewrite`] did to one block.
#[derive(Debug, Default)]
pub(crate) struct Rewritten {
    /// The block for the server.
    pub block: Vec<u8>,
    /// The `:authority` values that were replaced.
    pub replaced: Vec<Vec<u8>>,
}

/// The HPACK side of one connection (see the module docs).
pub(crate) struct HeaderRewriter {
    decoder: Decoder<'static>,
    table_size_limit: usize,
    max_header_list_size: usize,
}

impl HeaderRewriter {
    /// A decoder whose dynamic table may grow to `table_size_limit` octets (the server's
    /// `SETTINGS_HEADER_TABLE_SIZE`); a block whose header list (RFC 7540 section 6.5.2 accounting)
    /// exceeds `max_header_list_size` is refused.
    pub fn new(table_size_limit: usize, max_header_list_size: usize) -> HeaderRewriter {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(table_size_limit);
        HeaderRewriter {
            decoder,
            table_size_limit,
            max_header_list_size,
        }
    }

    /// Decodes `block` (a complete header block: the fragments of a HEADERS frame and its
    /// CONTINUATION frames, padding and priority removed) and returns the block for the server.
    pub fn rewrite(&mut self, block: &[u8]) -> Result<Rewritten, Error> {
        let mut pos = 0;
        while let Some(&first) = block.get(pos) {
            if first & 0xe0 != 0x20 {
                break;
            }
            let (size, len) = decode_integer(&block[pos..], 5)?;
            if size > self.table_size_limit {
                return Err(Error::TableSizeUpdate {
                    size,
                    limit: self.table_size_limit,
                });
            }
            // Cannot panic: the decoder's allowed maximum is `table_size_limit` (set in `new`).
            self.decoder.set_max_table_size(size);
            pos += len;
        }

        let mut out = Rewritten {
            block: Vec::with_capacity(block.len() + 64),
            replaced: Vec::new(),
        };
        let mut list_size = 0usize;
        while pos < block.len() {
            let (representation, len) = field_extent(&block[pos..])?;
            let field = &block[pos..pos + len];
            pos += len;
            let never_indexed = representation == Representation::NeverIndexed;
            let mut fields = 0;
            self.decoder
                .decode_with_cb(field, |name: Cow<'_, [u8]>, value: Cow<'_, [u8]>| {
                    fields += 1;
                    list_size = list_size.saturating_add(name.len() + value.len() + 32);
                    if name.as_ref() == b":authority" && !is_acceptable_authority(&value) {
                        out.replaced.push(value.into_owned());
                        encode_field(
                            &mut out.block,
                            &name,
                            REPLACEMENT_AUTHORITY.as_bytes(),
                            never_indexed,
                        );
                    } else {
                        encode_field(&mut out.block, &name, &value, never_indexed);
                    }
                })
                .map_err(|e| Error::Hpack(e.to_string()))?;
            if fields != 1 {
                return Err(Error::Hpack(format!(
                    "a field representation decoded to {fields} fields"
                )));
            }
            if list_size > self.max_header_list_size {
                return Err(Error::HeaderListTooLarge {
                    limit: self.max_header_list_size,
                });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    type Fields = Vec<(Vec<u8>, Vec<u8>)>;

    fn decode_all(block: &[u8]) -> Fields {
        Decoder::new().decode(block).unwrap()
    }

    fn rewriter() -> HeaderRewriter {
        HeaderRewriter::new(4096, 65536)
    }

    fn fields(list: &[(&str, &str)]) -> Fields {
        list.iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn integers_round_trip_at_every_prefix_and_the_rfc_examples_decode() {
        // RFC 7541 C.1.1-C.1.3: 10 in a 5-bit prefix, 1337 in a 5-bit prefix, 42 at an octet.
        assert_eq!(decode_integer(&[0x0a], 5).unwrap(), (10, 1));
        assert_eq!(decode_integer(&[0x1f, 0x9a, 0x0a], 5).unwrap(), (1337, 3));
        assert_eq!(decode_integer(&[0x2a], 8).unwrap(), (42, 1));
        for prefix in 1..=8u8 {
            for value in [
                0usize,
                1,
                30,
                31,
                126,
                127,
                128,
                255,
                1337,
                65_535,
                (1 << 28) - 1,
            ] {
                let mut out = Vec::new();
                encode_integer(&mut out, value, prefix, 0);
                assert_eq!(decode_integer(&out, prefix).unwrap(), (value, out.len()));
            }
        }
    }

    #[test]
    fn truncated_and_overlong_integers_are_errors_not_panics() {
        assert!(matches!(decode_integer(&[], 7), Err(Error::Truncated)));
        assert!(matches!(decode_integer(&[0x7f], 7), Err(Error::Truncated)));
        assert!(matches!(
            decode_integer(&[0x7f, 0x80, 0x80], 7),
            Err(Error::Truncated)
        ));
        assert!(matches!(
            decode_integer(&[0x7f, 0xff, 0xff, 0xff, 0xff, 0x01], 7),
            Err(Error::IntegerTooLong)
        ));
    }

    #[test]
    fn the_rfc_huffman_request_example_keeps_its_valid_authority() {
        // RFC 7541 C.4.1: GET http://www.example.com/ with Huffman-coded strings.
        let block = [
            0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab,
            0x90, 0xf4, 0xff,
        ];
        let out = rewriter().rewrite(&block).unwrap();
        assert!(out.replaced.is_empty());
        assert_eq!(
            decode_all(&out.block),
            fields(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
            ])
        );
    }

    #[test]
    fn a_percent_encoded_socket_path_becomes_localhost() {
        let mut enc = loona_hpack::Encoder::new();
        let sent = fields(&[
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/volume.v1alpha1.VolumeRuntime/Version"),
            (":authority", "tmp%2Fcephvol.sock"),
            ("te", "trailers"),
        ]);
        let block = enc.encode(sent.iter().map(|(n, v)| (&n[..], &v[..])));
        let out = rewriter().rewrite(&block).unwrap();
        assert_eq!(out.replaced, vec![b"tmp%2Fcephvol.sock".to_vec()]);
        let mut expected = sent.clone();
        expected[3].1 = b"localhost".to_vec();
        assert_eq!(decode_all(&out.block), expected);
    }

    #[test]
    fn raw_paths_and_empty_authorities_are_replaced_and_valid_ones_kept() {
        for (authority, replaced) in [
            ("/tmp/cephvol.sock", true),
            ("tmp%2Fcephvol.sock", true),
            ("%2Frun%2Fcephvol%2Fcephvol.sock", true),
            ("", true),
            ("localhost", false),
            ("localhost:50051", false),
            ("[::1]:8080", false),
            ("cephvol.sock", false),
        ] {
            let mut out = Vec::new();
            encode_field(&mut out, b":authority", authority.as_bytes(), false);
            let r = rewriter().rewrite(&out).unwrap();
            assert_eq!(r.replaced.len(), usize::from(replaced), "{authority:?}");
            let want = if replaced { "localhost" } else { authority };
            assert_eq!(
                decode_all(&r.block),
                fields(&[(":authority", want)]),
                "{authority:?}"
            );
        }
    }

    #[test]
    fn indexed_references_to_an_earlier_authority_are_replaced_in_every_block() {
        let mut enc = crate::raw_client::IndexingEncoder::new();
        let mut rw = rewriter();
        let request = fields(&[(":method", "POST"), (":authority", "tmp%2Fcephvol.sock")]);
        let first = enc.encode(&request);
        let second = enc.encode(&request);
        assert_eq!(
            second,
            vec![0xbf, 0xbe],
            "the second block indexes the first"
        );
        for block in [first, second] {
            let out = rw.rewrite(&block).unwrap();
            assert_eq!(out.replaced, vec![b"tmp%2Fcephvol.sock".to_vec()]);
            assert_eq!(
                decode_all(&out.block),
                fields(&[(":method", "POST"), (":authority", "localhost")])
            );
        }
    }

    #[test]
    fn never_indexed_fields_stay_never_indexed_and_nothing_is_indexed() {
        let mut block = Vec::new();
        block.push(0x10);
        encode_string(&mut block, b"authorization");
        encode_string(&mut block, b"secret");
        block.push(0x40); // with incremental indexing, literal name
        encode_string(&mut block, b"x-a");
        encode_string(&mut block, b"1");
        let out = rewriter().rewrite(&block).unwrap();
        let mut expected = Vec::new();
        encode_field(&mut expected, b"authorization", b"secret", true);
        encode_field(&mut expected, b"x-a", b"1", false);
        assert_eq!(out.block, expected);
    }

    #[test]
    fn size_updates_open_a_block_evict_entries_and_are_bounded() {
        let mut rw = rewriter();
        let mut enc = loona_hpack::Encoder::new();
        let first = enc.encode([(&b"x-a"[..], &b"1"[..])]);
        assert_eq!(first[0], 0x40, "indexed by the client");
        rw.rewrite(&first).unwrap();
        // Size update to 0 (evicts everything), then back to 4096, then the old index: gone.
        let mut block = Vec::new();
        encode_integer(&mut block, 0, 5, 0x20);
        encode_integer(&mut block, 4096, 5, 0x20);
        block.push(0xbe);
        assert!(matches!(rw.rewrite(&block), Err(Error::Hpack(_))));

        let mut rw = rewriter();
        rw.rewrite(&first).unwrap();
        assert_eq!(
            decode_all(&rw.rewrite(&[0xbe]).unwrap().block),
            fields(&[("x-a", "1")])
        );
        let mut too_big = Vec::new();
        encode_integer(&mut too_big, 4097, 5, 0x20);
        assert!(matches!(
            rw.rewrite(&too_big),
            Err(Error::TableSizeUpdate {
                size: 4097,
                limit: 4096
            })
        ));
        let mut late = vec![0x82];
        encode_integer(&mut late, 100, 5, 0x20);
        assert!(matches!(
            rewriter().rewrite(&late),
            Err(Error::SizeUpdateAfterField)
        ));
        // A block of nothing but a size update is an empty header list.
        let mut only = Vec::new();
        encode_integer(&mut only, 100, 5, 0x20);
        assert!(rewriter().rewrite(&only).unwrap().block.is_empty());
    }

    #[test]
    fn a_header_list_over_the_limit_is_refused_early() {
        let mut enc = loona_hpack::Encoder::new();
        let big = vec![b'v'; 3000];
        let mut rw = HeaderRewriter::new(4096, 10_000);
        let first = enc.encode([(&b"x-big"[..], &big[..])]);
        rw.rewrite(&first).unwrap();
        // 1 byte per field, 3037 bytes of header list each.
        assert!(matches!(
            rw.rewrite(&[0xbe; 4]),
            Err(Error::HeaderListTooLarge { limit: 10_000 })
        ));
    }

    fn header() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
        let name = prop_oneof![
            Just(b":authority".to_vec()),
            Just(b":path".to_vec()),
            Just(b"content-type".to_vec()),
            "[a-z-]{1,12}".prop_map(String::into_bytes),
        ];
        let value = prop_oneof![
            Just(b"tmp%2Fcephvol.sock".to_vec()),
            Just(b"/run/cephvol.sock".to_vec()),
            Just(b"localhost".to_vec()),
            Just(Vec::new()),
            proptest::collection::vec(any::<u8>(), 0..40),
        ];
        (name, value)
    }

    proptest! {
        #[test]
        fn any_header_lists_come_out_equal_but_for_replaced_authorities(
            blocks in proptest::collection::vec(proptest::collection::vec(header(), 0..8), 1..6),
            table in prop_oneof![Just(0usize), Just(64), Just(4096)],
        ) {
            let mut enc = crate::raw_client::IndexingEncoder::new();
            enc.set_max_table_size(table);
            let mut rw = rewriter();
            let mut server = Decoder::new();
            let mut first = true;
            for list in blocks {
                let mut block = Vec::new();
                if first && table != 4096 {
                    encode_integer(&mut block, table, 5, 0x20);
                }
                first = false;
                block.extend(enc.encode(&list));
                let out = rw.rewrite(&block).unwrap();
                let expected: Fields = list
                    .iter()
                    .map(|(n, v)| {
                        if n == b":authority" && !is_acceptable_authority(v) {
                            (n.clone(), b"localhost".to_vec())
                        } else {
                            (n.clone(), v.clone())
                        }
                    })
                    .collect();
                prop_assert_eq!(server.decode(&out.block).unwrap(), expected);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_rewriter(
            blocks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..4),
        ) {
            let mut rw = rewriter();
            for b in blocks {
                let _ = rw.rewrite(&b);
            }
        }
    }
}
