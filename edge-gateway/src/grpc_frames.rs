//! Length-prefixed gRPC messages (1 flag byte, 4-byte big-endian length, payload) scanned as a
//! stream passes through, without buffering payloads: the edge refuses a native gRPC message
//! larger than `max_body_bytes` with RESOURCE_EXHAUSTED, as the gRPC spec asks of a receiver
//! over its limit, before the message reaches the service.

/// A message over the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("gRPC message of {length} bytes exceeds the limit of {limit} bytes")]
pub struct MessageTooLarge {
    pub length: u64,
    pub limit: usize,
}

/// Where the scanner is in the frame sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting the 5-byte prefix; `have` bytes of it so far.
    Prefix { have: usize, length: u64 },
    /// Skipping `remaining` payload bytes.
    Payload { remaining: u64 },
}

#[derive(Debug, Clone)]
pub struct MessageSizeGuard {
    limit: usize,
    state: State,
}

impl MessageSizeGuard {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            state: State::Prefix { have: 0, length: 0 },
        }
    }

    /// Scans the next body chunk; fails at the first prefix announcing too large a message.
    pub fn push(&mut self, mut chunk: &[u8]) -> Result<(), MessageTooLarge> {
        while !chunk.is_empty() {
            match &mut self.state {
                State::Payload { remaining } => {
                    let skip = (*remaining).min(chunk.len() as u64);
                    *remaining -= skip;
                    chunk = &chunk[skip as usize..];
                    if *remaining == 0 {
                        self.state = State::Prefix { have: 0, length: 0 };
                    }
                }
                State::Prefix { have, length } => {
                    // Byte 0 is the compressed flag; bytes 1-4 the length.
                    if *have > 0 {
                        *length = (*length << 8) | u64::from(chunk[0]);
                    }
                    *have += 1;
                    chunk = &chunk[1..];
                    if *have == 5 {
                        let length = *length;
                        if length > self.limit as u64 {
                            return Err(MessageTooLarge {
                                length,
                                limit: self.limit,
                            });
                        }
                        self.state = if length == 0 {
                            State::Prefix { have: 0, length: 0 }
                        } else {
                            State::Payload { remaining: length }
                        };
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(length: usize) -> Vec<u8> {
        let mut frame = vec![0u8];
        frame.extend_from_slice(&(length as u32).to_be_bytes());
        frame.extend(std::iter::repeat_n(7u8, length));
        frame
    }

    #[test]
    fn messages_up_to_the_limit_pass_in_any_chunking() {
        let stream: Vec<u8> = [frame(0), frame(10), frame(100), frame(3)].concat();
        for chunk_size in [1, 2, 3, 5, 7, 64, stream.len()] {
            let mut guard = MessageSizeGuard::new(100);
            for chunk in stream.chunks(chunk_size) {
                guard.push(chunk).unwrap();
            }
        }
    }

    #[test]
    fn the_first_oversized_prefix_is_refused_even_split_across_chunks() {
        let stream: Vec<u8> = [frame(5), frame(101)].concat();
        for chunk_size in [1, 4, 6, 11] {
            let mut guard = MessageSizeGuard::new(100);
            let error = stream
                .chunks(chunk_size)
                .find_map(|chunk| guard.push(chunk).err())
                .expect("refused");
            assert_eq!(
                error,
                MessageTooLarge {
                    length: 101,
                    limit: 100
                }
            );
        }
        // A 4 GiB announcement is refused from its prefix alone.
        let mut guard = MessageSizeGuard::new(100);
        assert!(guard.push(&[1, 0xff, 0xff, 0xff, 0xff]).is_err());
    }
}
