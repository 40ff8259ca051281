//! Frames: a big-endian `u32` length, then the postcard payload.
//!
//! The framing is tokio-util's [`LengthDelimitedCodec`], wrapped in
//! [`FrameCodec`] so its errors speak [`FrameError`]: it checks the claimed
//! length against the limit before reserving anything for the payload, and
//! a stream that ends inside a frame is [`FrameError::Truncated`]. Within
//! the limit, it reserves the claimed length as soon as the prefix is read
//! (the hand-written reader it replaced grew with the bytes that arrived):
//! an admitted peer can make the daemon hold up to `--max-frame` per
//! connection, as a peer sending whole frames always could.

use bytes::{Bytes, BytesMut};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{
    Decoder, Encoder, Framed, LengthDelimitedCodec, LengthDelimitedCodecError,
};

use super::{FrameError, Procedure, Request, Response, RpcError, RpcErrorKind, PROTOCOL_VERSION};

/// Bytes of the length prefix.
const PREFIX: usize = 4;

/// The codec of both sides: [`LengthDelimitedCodec`] with a 4-byte
/// big-endian length. The limit is the reader's: frames are read up to
/// `max` bytes, and written up to what the prefix can say (the peer
/// answers a frame over its own limit with an error).
#[derive(Debug)]
pub struct FrameCodec {
    reader: LengthDelimitedCodec,
    writer: LengthDelimitedCodec,
    max: u32,
}

impl FrameCodec {
    /// A codec that refuses to read frames longer than `max` bytes.
    pub fn new(max: u32) -> Self {
        FrameCodec {
            reader: length_delimited(max),
            writer: length_delimited(u32::MAX),
            max,
        }
    }

    /// Turns the inner codec's error into ours: its "frame too big" is
    /// raised with the prefix still in `src`, so the claimed length can be
    /// reported.
    fn error(&self, src: &[u8], e: std::io::Error) -> FrameError {
        if e.get_ref()
            .is_some_and(|e| e.is::<LengthDelimitedCodecError>())
        {
            let mut prefix = [0u8; PREFIX];
            if let Some(head) = src.get(..PREFIX) {
                prefix.copy_from_slice(head);
            }
            return FrameError::TooLarge {
                len: u32::from_be_bytes(prefix),
                max: self.max,
            };
        }
        FrameError::Io(e)
    }
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
        self.reader.decode(src).map_err(|e| self.error(src, e))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(FrameError::Truncated),
        }
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, payload: Bytes, dst: &mut BytesMut) -> Result<(), FrameError> {
        if u32::try_from(payload.len()).is_err() {
            return Err(FrameError::Malformed("frame longer than 4 GiB".into()));
        }
        Ok(self.writer.encode(payload, dst)?)
    }
}

/// A 4-byte big-endian length, then `max` bytes at most.
fn length_delimited(max: u32) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_type::<u32>()
        .big_endian()
        .max_frame_length(max as usize)
        .new_codec()
}

/// Bytes each side of a connection's [`Framed`] starts with, for reading
/// and for writing. tokio-util's default is 8 KiB each, kept for as long as
/// the connection lives: twice the daemon's whole footprint of an idle
/// connection. Requests and replies are mostly far smaller, and a large
/// frame has its whole length reserved once its prefix is read.
pub const INITIAL_BUFFER: usize = 1024;

/// `io` carrying frames of at most `max` bytes either way.
pub fn framed<T: AsyncRead + AsyncWrite>(io: T, max: u32) -> Framed<T, FrameCodec> {
    Framed::with_capacity(io, FrameCodec::new(max), INITIAL_BUFFER)
}

/// A frame longer than this makes [`trim_buffers`] give the buffers back.
pub const TRIM_ABOVE: usize = 64 * 1024;

/// Gives back what a large frame made `framed`'s buffers grow to, after an
/// exchange whose longest frame was `longest` bytes: a `BytesMut` never
/// shrinks by itself (and its `capacity()` hides what was consumed), so a
/// connection that carried one large frame (an ssconf of 1,000 nodes is
/// ~300 KiB) and then stays open would otherwise hold that much for its
/// whole life. Nothing happens after small frames: no allocation on the
/// hot path.
pub fn trim_buffers<T>(framed: &mut Framed<T, FrameCodec>, longest: usize) {
    if longest <= TRIM_ABOVE {
        return;
    }
    let read = framed.read_buffer_mut();
    if read.is_empty() {
        *read = BytesMut::with_capacity(INITIAL_BUFFER);
    }
    let write = framed.write_buffer_mut();
    if write.is_empty() {
        *write = BytesMut::with_capacity(INITIAL_BUFFER);
    }
}

/// The postcard payload of `value`, without the prefix (what a
/// [`FrameCodec`] sends).
pub fn encode_payload<T: Serialize>(value: &T) -> Result<Bytes, FrameError> {
    postcard::to_allocvec(value)
        .map(Bytes::from)
        .map_err(|e| FrameError::Malformed(format!("encode: {e}")))
}

/// Encodes `value` as one whole frame, length prefix included.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, FrameError> {
    let payload = encode_payload(value)?;
    let mut frame = BytesMut::with_capacity(PREFIX + payload.len());
    FrameCodec::new(u32::MAX).encode(payload, &mut frame)?;
    Ok(frame.to_vec())
}

/// Decodes a request payload. On failure, returns the id (0 if even the
/// header was unreadable) with the error to send back.
pub fn decode_request(payload: &[u8]) -> Result<Request, (u64, RpcError)> {
    let (header, rest): ((u16, u64), &[u8]) = postcard::take_from_bytes(payload).map_err(|e| {
        (
            0,
            RpcError {
                kind: RpcErrorKind::Malformed,
                message: format!("malformed request header: {e}"),
            },
        )
    })?;
    let (version, id) = header;
    if version != PROTOCOL_VERSION {
        return Err((
            id,
            RpcError {
                kind: RpcErrorKind::UnsupportedVersion,
                message: format!(
                    "protocol version {version} is not supported (this daemon speaks {PROTOCOL_VERSION})"
                ),
            },
        ));
    }
    // The variant index leads the procedure's encoding (a varint, like a
    // u32): read it first so an unknown procedure is told apart from garbage.
    if let Ok((variant, _)) = postcard::take_from_bytes::<u32>(rest) {
        if variant >= Procedure::COUNT {
            return Err((
                id,
                RpcError {
                    kind: RpcErrorKind::UnknownProcedure,
                    message: format!(
                        "unknown procedure {variant}; the daemon may be older than this client"
                    ),
                },
            ));
        }
    }
    postcard::from_bytes::<Procedure>(rest)
        .map(|procedure| Request {
            version,
            id,
            procedure,
        })
        .map_err(|e| {
            (
                id,
                RpcError {
                    kind: RpcErrorKind::Malformed,
                    message: format!("malformed request: {e}"),
                },
            )
        })
}

/// Decodes a response payload.
pub fn decode_response(payload: &[u8]) -> Result<Response, FrameError> {
    postcard::from_bytes(payload).map_err(|e| FrameError::Malformed(format!("response: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_large_frame_leaves_no_large_buffer_behind() {
        use futures_util::{SinkExt, StreamExt};
        let (a, b) = tokio::io::duplex(1 << 20);
        let (mut a, mut b) = (framed(a, 1 << 24), framed(b, 1 << 24));
        let large = Bytes::from(vec![7u8; 300 * 1024]);
        let (sent, got) = tokio::join!(a.send(large.clone()), b.next());
        sent.unwrap();
        assert_eq!(got.unwrap().unwrap(), large);
        // What reading the frame left: the claimed length was reserved.
        assert!(b.read_buffer().capacity() + large.len() > TRIM_ABOVE);
        trim_buffers(&mut a, large.len());
        trim_buffers(&mut b, large.len());
        assert_eq!(a.write_buffer().capacity(), INITIAL_BUFFER);
        assert_eq!(b.read_buffer().capacity(), INITIAL_BUFFER);
        // Small frames keep their buffers.
        let small = Bytes::from_static(b"ping");
        let (sent, got) = tokio::join!(a.send(small.clone()), b.next());
        sent.unwrap();
        assert_eq!(got.unwrap().unwrap(), small);
    }

    #[test]
    fn request_round_trip_and_layout() -> Result<(), FrameError> {
        let req = Request {
            version: PROTOCOL_VERSION,
            id: 7,
            procedure: Procedure::Ping,
        };
        let frame = encode(&req)?;
        let len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
        assert_eq!(len, frame.len() - 4);
        assert_eq!(
            decode_request(&frame[4..]).map_err(|e| FrameError::Malformed(e.1.message))?,
            req
        );
        Ok(())
    }

    #[test]
    fn echo_payload_keeps_the_sequence_encoding() -> Result<(), FrameError> {
        let frame = encode(&Request {
            version: PROTOCOL_VERSION,
            id: 42,
            procedure: Procedure::Echo {
                payload: vec![7, 8, 9],
            },
        })?;
        // version, id, variant 3, length 3, then the bytes.
        assert_eq!(&frame[4..], &[1, 42, 3, 3, 7, 8, 9]);
        Ok(())
    }

    #[test]
    fn unknown_procedure_and_version_keep_the_id() {
        // version 1, id 9, variant 200 (varint 0xc8 0x01)
        let payload = [1u8, 9, 0xc8, 0x01];
        let (id, err) = decode_request(&payload).unwrap_err();
        assert_eq!((id, err.kind), (9, RpcErrorKind::UnknownProcedure));
        let payload = [2u8, 9, 0];
        let (id, err) = decode_request(&payload).unwrap_err();
        assert_eq!((id, err.kind), (9, RpcErrorKind::UnsupportedVersion));
        let (id, err) = decode_request(&[0xff]).unwrap_err();
        assert_eq!((id, err.kind), (0, RpcErrorKind::Malformed));
    }

    #[test]
    fn procedure_count_matches_the_enum() {
        let last = postcard::to_allocvec(&Procedure::PatchSsconfAndKeys {
            base_sha256: String::new(),
            patches: Vec::new(),
            sha256: String::new(),
            keys: Vec::new(),
        })
        .unwrap();
        assert_eq!(u32::from(last[0]) + 1, Procedure::COUNT);
    }

    #[test]
    fn oversized_length_is_refused_before_allocating() {
        let mut src = BytesMut::from(&[0xffu8, 0xff, 0xff, 0xff][..]);
        match FrameCodec::new(1024).decode(&mut src) {
            Err(FrameError::TooLarge { len, max }) => assert_eq!((len, max), (u32::MAX, 1024)),
            other => panic!("{other:?}"),
        }
        // Nothing was reserved for the claimed 4 GiB.
        assert!(src.capacity() < 1024, "{}", src.capacity());
    }

    #[test]
    fn truncated_frames_are_reported() {
        let mut codec = FrameCodec::new(1024);
        let mut src = BytesMut::from(&[0u8, 0][..]);
        assert!(matches!(
            codec.decode_eof(&mut src),
            Err(FrameError::Truncated)
        ));
        let mut codec = FrameCodec::new(1024);
        let mut src = BytesMut::from(&[0u8, 0, 0, 9, 1, 2][..]);
        assert!(matches!(
            codec.decode_eof(&mut src),
            Err(FrameError::Truncated)
        ));
        let mut src = BytesMut::new();
        assert!(matches!(
            FrameCodec::new(1024).decode_eof(&mut src),
            Ok(None)
        ));
    }

    #[test]
    fn frames_split_anywhere_are_reassembled() {
        let frame = encode(&Request {
            version: PROTOCOL_VERSION,
            id: 3,
            procedure: Procedure::Echo {
                payload: vec![1; 300],
            },
        })
        .unwrap();
        let mut codec = FrameCodec::new(1024);
        let mut src = BytesMut::new();
        let mut got = None;
        for byte in &frame {
            assert!(got.is_none());
            src.extend_from_slice(&[*byte]);
            got = codec.decode(&mut src).unwrap();
        }
        assert_eq!(got.unwrap()[..], frame[4..]);
        assert!(src.is_empty());
    }

    #[test]
    fn the_limit_is_the_readers() {
        // A writer sends what it has; the peer's reader refuses it.
        let mut codec = FrameCodec::new(8);
        let mut wire = BytesMut::new();
        codec
            .encode(Bytes::from(vec![5u8; 100]), &mut wire)
            .unwrap();
        assert_eq!(wire[..4], 100u32.to_be_bytes());
        assert!(matches!(
            codec.decode(&mut wire),
            Err(FrameError::TooLarge { len: 100, max: 8 })
        ));
    }
}
