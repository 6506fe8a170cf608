//! Content-defined chunking (FastCDC, 2020 variant): cut points depend on the bytes around them,
//! so an edit in the middle of a file changes the chunks near it and no others, and the rest
//! deduplicates against the previous version.
//!
//! The reader keeps one window of [`WINDOW`] bytes and cuts inside it; only the tail shorter
//! than a maximum chunk is moved when the window is refilled. Memory is the window, whatever
//! the file's size.

use std::io::Read;

/// Smallest chunk (but a file's last).
pub const MIN_CHUNK: usize = 512 * 1024;
/// Average chunk, the target of the cut-point mask.
pub const AVG_CHUNK: usize = 1024 * 1024;
/// Largest chunk: a cut is forced here.
pub const MAX_CHUNK: usize = 8 * 1024 * 1024;
/// The read window: two maximum chunks. Cuts never depend on it (a cut always sees a whole
/// maximum chunk, or the file's end), and moving the tail (under 8 MiB, at memory speed) costs
/// less than a larger window per file being read would cost in memory.
pub const WINDOW: usize = 2 * MAX_CHUNK;

/// Cuts a stream into chunks and hands each to a callback, in order.
pub struct Chunker {
    window: Vec<u8>,
    masks: (u64, u64),
}

impl Default for Chunker {
    fn default() -> Self {
        Self::new()
    }
}

impl Chunker {
    pub fn new() -> Self {
        // As fastcdc's normalisation level 1: a harder mask before the average, an easier
        // one after it, which narrows the spread of chunk sizes.
        let bits = (AVG_CHUNK as f64).log2().round() as usize;
        Chunker {
            window: vec![0; WINDOW],
            masks: (
                fastcdc::v2020::MASKS[bits + 1],
                fastcdc::v2020::MASKS[bits - 1],
            ),
        }
    }

    /// Reads `source` to its end, calling `each` with every chunk. Returns the bytes read.
    pub fn chunks<R: Read, E: From<std::io::Error>>(
        &mut self,
        mut source: R,
        mut each: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<u64, E> {
        let (mask_s, mask_l) = self.masks;
        let mut len = 0; // bytes in the window
        let mut eof = false;
        let mut total = 0u64;
        loop {
            while !eof && len < self.window.len() {
                match source.read(&mut self.window[len..]) {
                    Ok(0) => eof = true,
                    Ok(n) => len += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                }
            }
            let mut start = 0;
            // Cut while a whole maximum chunk is in the window (or the rest is all there is).
            while start < len && (eof || len - start >= MAX_CHUNK) {
                let (_, count) = fastcdc::v2020::cut(
                    &self.window[start..len],
                    MIN_CHUNK,
                    AVG_CHUNK,
                    MAX_CHUNK,
                    mask_s,
                    mask_l,
                    mask_s << 1,
                    mask_l << 1,
                );
                let count = count.max(1).min(len - start);
                each(&self.window[start..start + count])?;
                start += count;
                total += count as u64;
            }
            if eof && start >= len {
                return Ok(total);
            }
            self.window.copy_within(start..len, 0);
            len -= start;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn cut(data: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        Chunker::new()
            .chunks::<_, std::io::Error>(data, |c| {
                out.push(c.to_vec());
                Ok(())
            })
            .unwrap();
        out
    }

    #[test]
    fn chunks_put_back_together_are_the_input_and_respect_the_bounds() {
        let data = noise(40 * 1024 * 1024 + 12345, 1);
        let chunks = cut(&data);
        assert_eq!(chunks.concat(), data);
        let (last, rest) = chunks.split_last().unwrap();
        assert!(
            rest.iter()
                .all(|c| c.len() >= MIN_CHUNK && c.len() <= MAX_CHUNK)
        );
        assert!(last.len() <= MAX_CHUNK);
        assert!(
            chunks.len() > 20,
            "about one chunk per MiB: {}",
            chunks.len()
        );
    }

    #[test]
    fn an_edit_in_the_middle_changes_only_the_chunks_near_it() {
        let data = noise(24 * 1024 * 1024, 2);
        let mut edited = data.clone();
        for b in &mut edited[12 * 1024 * 1024..12 * 1024 * 1024 + 1000] {
            *b = !*b;
        }
        let before = cut(&data);
        let after = cut(&edited);
        let shared = after.iter().filter(|c| before.contains(c)).count();
        assert!(
            shared + 3 >= after.len(),
            "{shared} of {} shared",
            after.len()
        );
    }

    #[test]
    fn empty_and_tiny_inputs() {
        assert!(cut(&[]).is_empty());
        assert_eq!(cut(b"abc"), vec![b"abc".to_vec()]);
    }
}
