//! Frames: a big-endian `u32` length, then the postcard payload.

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{FrameError, Procedure, Request, Response, RpcError, RpcErrorKind, PROTOCOL_VERSION};

/// Encodes `value` as one frame (length prefix included).
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, FrameError> {
    // Reserve the prefix, serialize after it, then patch the length in: one
    // buffer, no copy of the payload.
    let buf = postcard::to_extend(value, vec![0u8; 4])
        .map_err(|e| FrameError::Malformed(format!("encode: {e}")))?;
    let len = u32::try_from(buf.len() - 4)
        .map_err(|_| FrameError::Malformed("frame longer than 4 GiB".into()))?;
    let mut buf = buf;
    if let Some(prefix) = buf.get_mut(..4) {
        prefix.copy_from_slice(&len.to_be_bytes());
    }
    Ok(buf)
}

/// Reads one frame's payload. `Ok(None)` is a clean end of stream before a
/// frame started.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: u32,
) -> Result<Option<Vec<u8>>, FrameError> {
    let mut prefix = [0u8; 4];
    let mut got = 0;
    while got < prefix.len() {
        let n = reader
            .read(prefix.get_mut(got..).unwrap_or_default())
            .await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated)
            };
        }
        got += n;
    }
    let len = u32::from_be_bytes(prefix);
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    // Within the limit; still, memory grows with the bytes that arrive,
    // not with what the prefix claims.
    let len = len as usize;
    let mut payload = Vec::with_capacity(len.min(64 * 1024));
    let got = (&mut *reader)
        .take(len as u64)
        .read_to_end(&mut payload)
        .await?;
    if got < len {
        return Err(FrameError::Truncated);
    }
    Ok(Some(payload))
}

/// Writes one already-encoded frame and flushes it.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    frame: &[u8],
) -> Result<(), FrameError> {
    writer.write_all(frame).await?;
    writer.flush().await?;
    Ok(())
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
        let last = postcard::to_allocvec(&Procedure::Health).unwrap();
        assert_eq!(u32::from(last[0]) + 1, Procedure::COUNT);
    }

    #[tokio::test]
    async fn oversized_length_is_refused_before_allocating() {
        let bytes = [0xffu8, 0xff, 0xff, 0xff];
        let mut reader = &bytes[..];
        match read_frame(&mut reader, 1024).await {
            Err(FrameError::TooLarge { len, max }) => assert_eq!((len, max), (u32::MAX, 1024)),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn truncated_frames_are_reported() {
        let mut reader = &[0u8, 0][..];
        assert!(matches!(
            read_frame(&mut reader, 1024).await,
            Err(FrameError::Truncated)
        ));
        let mut reader = &[0u8, 0, 0, 9, 1, 2][..];
        assert!(matches!(
            read_frame(&mut reader, 1024).await,
            Err(FrameError::Truncated)
        ));
        let mut reader = &[][..];
        assert!(matches!(read_frame(&mut reader, 1024).await, Ok(None)));
    }
}
