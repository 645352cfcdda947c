//! The recording file's framing (`tcplinger record`): a versioned header, then zstd-compressed chunks of tagged blocks, each chunk checked by a CRC-32 so a file cut short or damaged is read up to its last good chunk. What the blocks hold is the session's business; RECORDING.md is the contract.

use std::{
    fs::File,
    io::{self, BufReader, BufWriter, Read, Write},
    path::Path,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

/// The first bytes of every recording.
pub const MAGIC: [u8; 8] = *b"TCPLREC\n";
/// The format this build writes, and the newest it reads.
pub const VERSION: u32 = 4;
const CHUNK_MAGIC: [u8; 4] = *b"CHNK";
/// A chunk is written once its blocks reach this size, or once a second:
/// a crash loses at most that much.
const CHUNK_RAW_BYTES: usize = 256 * 1024;
const CHUNK_EVERY: Duration = Duration::from_secs(1);
/// Larger figures in a chunk's frame mean damage, not data (a start-up
/// snapshot of a million sockets is about 200 MB of blocks). Memory is
/// taken as bytes arrive, never on a frame's word alone.
const MAX_CHUNK_BYTES: u32 = 1 << 30;
const MAX_HEADER_BYTES: u32 = 1 << 20;
/// zstd's fastest levels keep up with the ring at full churn.
const ZSTD_LEVEL: i32 = 1;
/// Bytes of a chunk's frame before its compressed bytes.
const CHUNK_FRAME: usize = 16;

/// What a reader needs to interpret a recording, written first.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Header {
    /// The tcplinger version that wrote it.
    pub tool_version: String,
    pub hostname: String,
    /// `uname -r` of the traced kernel.
    pub kernel: String,
    /// When the kernel booted (seconds since the epoch, /proc/stat btime).
    pub boot_time_s: Option<u64>,
    /// `net.ipv4.tcp_fin_timeout` of the recorder's network namespace.
    pub tcp_fin_timeout_s: Option<u64>,
    /// When recording started: boot-clock ns, and the wall clock then
    /// (ns since the epoch).
    pub started_boot_ns: u64,
    pub started_unix_ns: u64,
    /// The command line `record` ran with.
    pub args: Vec<String>,
    /// `record --cgroup`: replays report only owners under this path.
    #[serde(default)]
    pub cgroup: Option<String>,
    /// `record --comm` and `--remote`: the selection replays default to.
    #[serde(default)]
    pub comm: Vec<String>,
    #[serde(default)]
    pub remote: Vec<String>,
}

impl Header {
    /// This host and kernel, now, for a recording made with `args`.
    pub fn of_this_host(args: Vec<String>) -> Self {
        let read = |path: &str| {
            std::fs::read_to_string(path)
                .map(|s| s.trim().to_string())
                .ok()
        };
        let btime = read("/proc/stat").and_then(|stat| {
            stat.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse().ok())
        });
        let unix_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        Self {
            tool_version: env!("CARGO_PKG_VERSION").into(),
            hostname: read("/proc/sys/kernel/hostname").unwrap_or_default(),
            kernel: read("/proc/sys/kernel/osrelease").unwrap_or_default(),
            boot_time_s: btime,
            tcp_fin_timeout_s: read("/proc/sys/net/ipv4/tcp_fin_timeout")
                .and_then(|v| v.parse().ok()),
            started_boot_ns: super::clock::boot_ns(),
            started_unix_ns: unix_ns,
            args,
            cgroup: None,
            comm: Vec::new(),
            remote: Vec::new(),
        }
    }
}

/// Writes a recording: blocks are gathered into chunks, each compressed
/// and written whole, so the file is readable up to its last chunk
/// whenever the writer stops.
pub struct RecordingWriter {
    out: BufWriter<Box<dyn Write>>,
    raw: Vec<u8>,
    /// One compression context for every chunk, and the buffer its output
    /// goes to: made once, not per chunk (a context is hundreds of KiB of
    /// tables to allocate and clear).
    compressor: zstd::bulk::Compressor<'static>,
    compressed: Vec<u8>,
    last_chunk: Instant,
    written: u64,
    max_bytes: Option<u64>,
    /// `max_bytes` was reached: nothing more is written.
    full: bool,
    /// Blocks not written because the file reached `max_bytes`.
    pub blocks_left_out: u64,
}

impl RecordingWriter {
    /// Starts a recording in `file` (created by the caller, empty) with
    /// `header`; the file grows to at most `max_bytes`.
    pub fn new(file: Box<dyn Write>, header: &Header, max_bytes: Option<u64>) -> io::Result<Self> {
        let header = serde_json::to_vec(header).map_err(io::Error::other)?;
        let mut out = BufWriter::new(file);
        out.write_all(&MAGIC)?;
        out.write_all(&VERSION.to_le_bytes())?;
        out.write_all(&len_u32(header.len())?.to_le_bytes())?;
        out.write_all(&header)?;
        out.flush()?;
        Ok(Self {
            out,
            raw: Vec::with_capacity(CHUNK_RAW_BYTES + 4096),
            compressor: zstd::bulk::Compressor::new(ZSTD_LEVEL)?,
            compressed: Vec::new(),
            last_chunk: Instant::now(),
            written: (MAGIC.len() + 8 + header.len()) as u64,
            max_bytes,
            full: false,
            blocks_left_out: 0,
        })
    }

    /// Adds a block; the chunk goes out when it is large or old enough.
    pub fn push(&mut self, tag: u8, payload: &[u8]) -> io::Result<()> {
        if self.raw.len() + 5 + payload.len() > MAX_CHUNK_BYTES as usize {
            return Err(io::Error::other("a block too large for a recording"));
        }
        if self.full {
            self.blocks_left_out += 1;
            return Ok(());
        }
        self.raw.push(tag);
        self.raw
            .extend_from_slice(&len_u32(payload.len())?.to_le_bytes());
        self.raw.extend_from_slice(payload);
        if self.raw.len() >= CHUNK_RAW_BYTES || self.last_chunk.elapsed() >= CHUNK_EVERY {
            self.flush_chunk()?;
        }
        Ok(())
    }

    /// Adds a block whose payload `fill` writes in place (no copy of a
    /// payload built elsewhere); `fill` returning false drops the block.
    /// `fill` runs whether the file is full or not.
    pub fn push_with(
        &mut self,
        tag: u8,
        fill: impl FnOnce(&mut Vec<u8>) -> bool,
    ) -> io::Result<()> {
        if self.full {
            let mut scratch = Vec::new();
            if fill(&mut scratch) {
                self.blocks_left_out += 1;
            }
            return Ok(());
        }
        let start = self.raw.len();
        self.raw.push(tag);
        self.raw.extend_from_slice(&[0; 4]);
        if !fill(&mut self.raw) {
            self.raw.truncate(start);
            return Ok(());
        }
        if self.raw.len() > MAX_CHUNK_BYTES as usize {
            self.raw.truncate(start);
            return Err(io::Error::other("a block too large for a recording"));
        }
        let len = len_u32(self.raw.len() - start - 5)?;
        self.raw[start + 1..start + 5].copy_from_slice(&len.to_le_bytes());
        if self.raw.len() >= CHUNK_RAW_BYTES || self.last_chunk.elapsed() >= CHUNK_EVERY {
            self.flush_chunk()?;
        }
        Ok(())
    }

    /// Writes the blocks gathered so far as one chunk, unless the file
    /// would then exceed its limit (the writer is then full).
    pub fn flush_chunk(&mut self) -> io::Result<()> {
        self.last_chunk = Instant::now();
        if self.raw.is_empty() || self.full {
            return Ok(());
        }
        self.compressed.clear();
        self.compressed
            .reserve(zstd::zstd_safe::compress_bound(self.raw.len()));
        self.compressor
            .compress_to_buffer(&self.raw, &mut self.compressed)?;
        let compressed = &self.compressed;
        let size = (CHUNK_FRAME + compressed.len()) as u64;
        if self
            .max_bytes
            .is_some_and(|max| self.written.saturating_add(size) > max)
        {
            self.full = true;
            self.blocks_left_out += count_blocks(&self.raw);
            self.raw.clear();
            return Ok(());
        }
        self.out.write_all(&CHUNK_MAGIC)?;
        self.out
            .write_all(&len_u32(self.raw.len())?.to_le_bytes())?;
        self.out
            .write_all(&len_u32(compressed.len())?.to_le_bytes())?;
        self.out
            .write_all(&crc32fast::hash(compressed).to_le_bytes())?;
        self.out.write_all(compressed)?;
        // Each chunk reaches the file whole: a crash after it keeps it.
        self.out.flush()?;
        self.written += size;
        self.raw.clear();
        Ok(())
    }

    /// The last chunk out, and the file flushed; returns its size.
    pub fn finish(&mut self) -> io::Result<u64> {
        self.flush_chunk()?;
        self.out.flush()?;
        Ok(self.written)
    }

    /// Bytes in the file so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// `max_bytes` was reached.
    pub fn is_full(&self) -> bool {
        self.full
    }
}

fn count_blocks(mut raw: &[u8]) -> u64 {
    let mut n = 0;
    while raw.len() >= 5 {
        let len = u32::from_le_bytes([raw[1], raw[2], raw[3], raw[4]]) as usize;
        raw = raw.get(5 + len..).unwrap_or_default();
        n += 1;
    }
    n
}

fn len_u32(len: usize) -> io::Result<u32> {
    u32::try_from(len).map_err(|_| io::Error::other("block too large for a recording"))
}

/// Why a recording cannot be read (further).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReadError {
    #[error("not a tcplinger recording")]
    NotARecording,
    #[error(
        "recorded in format version {found}, newer than this tcplinger reads (version {VERSION}): use a newer tcplinger"
    )]
    Newer { found: u32 },
    #[error("damaged header: {0}")]
    Header(String),
    /// The file stops or is damaged in chunk `chunk` (counted from 1), at
    /// byte `offset`; what came before it was read.
    #[error("{what} at byte {offset} (chunk {chunk}); read up to there")]
    Damaged {
        what: &'static str,
        chunk: u64,
        offset: u64,
    },
    #[error("{0}")]
    Io(String),
}

/// Reads a recording block by block.
pub struct RecordingReader<R> {
    input: R,
    /// The format version the file was written in.
    pub version: u32,
    pub header: Header,
    /// Blocks of the chunk being read, and where the next one starts.
    raw: Vec<u8>,
    at: usize,
    /// Chunks read whole.
    pub chunks: u64,
    /// Bytes of the file read so far.
    pub offset: u64,
}

impl RecordingReader<BufReader<File>> {
    /// Opens `path` and reads its header.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let file = File::open(path)?;
        Ok(Self::new(BufReader::new(file))?)
    }
}

impl<R: Read> RecordingReader<R> {
    pub fn new(mut input: R) -> Result<Self, ReadError> {
        let mut magic = [0; 8];
        read_full(&mut input, &mut magic).map_err(|_| ReadError::NotARecording)?;
        if magic != MAGIC {
            return Err(ReadError::NotARecording);
        }
        let mut word = [0; 4];
        read_full(&mut input, &mut word).map_err(|_| ReadError::NotARecording)?;
        let version = u32::from_le_bytes(word);
        if version > VERSION {
            return Err(ReadError::Newer { found: version });
        }
        if version == 0 {
            return Err(ReadError::Header(format!("unknown version {version}")));
        }
        read_full(&mut input, &mut word).map_err(|e| ReadError::Header(e.to_string()))?;
        let len = u32::from_le_bytes(word);
        if len > MAX_HEADER_BYTES {
            return Err(ReadError::Header(format!("{len} bytes long")));
        }
        let mut header = vec![0; len as usize];
        read_full(&mut input, &mut header).map_err(|e| ReadError::Header(e.to_string()))?;
        let header: Header =
            serde_json::from_slice(&header).map_err(|e| ReadError::Header(e.to_string()))?;
        Ok(Self {
            input,
            version,
            header,
            raw: Vec::new(),
            at: 0,
            chunks: 0,
            offset: 16 + u64::from(len),
        })
    }

    /// The next block (tag, payload); `None` at a clean end.
    pub fn next_block(&mut self) -> Result<Option<(u8, Vec<u8>)>, ReadError> {
        if self.at >= self.raw.len() && !self.next_chunk()? {
            return Ok(None);
        }
        let damaged = |offset| ReadError::Damaged {
            what: "a malformed block",
            chunk: self.chunks,
            offset,
        };
        let rest = &self.raw[self.at..];
        if rest.len() < 5 {
            return Err(damaged(self.offset));
        }
        let tag = rest[0];
        let len = u32::from_le_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let Some(payload) = rest.get(5..5 + len) else {
            return Err(damaged(self.offset));
        };
        let payload = payload.to_vec();
        self.at += 5 + len;
        Ok(Some((tag, payload)))
    }

    /// Reads the next chunk; false at a clean end of file.
    fn next_chunk(&mut self) -> Result<bool, ReadError> {
        let chunk = self.chunks + 1;
        let offset = self.offset;
        let damaged = |what| ReadError::Damaged {
            what,
            chunk,
            offset,
        };
        let mut frame = [0; CHUNK_FRAME];
        match read_some(&mut self.input, &mut frame) {
            Ok(0) => return Ok(false),
            Ok(n) if n < frame.len() => return Err(damaged("the file ends inside a chunk")),
            Ok(_) => {}
            Err(e) => return Err(ReadError::Io(e.to_string())),
        }
        let word =
            |i: usize| u32::from_le_bytes([frame[i], frame[i + 1], frame[i + 2], frame[i + 3]]);
        if frame[..4] != CHUNK_MAGIC {
            return Err(damaged("a damaged chunk frame"));
        }
        let (raw_len, comp_len, crc) = (word(4), word(8), word(12));
        if raw_len > MAX_CHUNK_BYTES || comp_len > MAX_CHUNK_BYTES {
            return Err(damaged("a damaged chunk frame"));
        }
        let mut compressed = Vec::new();
        match (&mut self.input)
            .take(u64::from(comp_len))
            .read_to_end(&mut compressed)
        {
            Ok(n) if n == comp_len as usize => {}
            Ok(_) => return Err(damaged("the file ends inside a chunk")),
            Err(e) => return Err(ReadError::Io(e.to_string())),
        }
        if crc32fast::hash(&compressed) != crc {
            return Err(damaged("a chunk that fails its checksum"));
        }
        let mut raw = Vec::new();
        zstd::stream::read::Decoder::new(compressed.as_slice())
            .and_then(|d| d.take(u64::from(raw_len) + 1).read_to_end(&mut raw))
            .map_err(|_| damaged("a chunk that does not decompress"))?;
        if raw.len() != raw_len as usize {
            return Err(damaged("a chunk of the wrong size"));
        }
        self.raw = raw;
        self.at = 0;
        self.chunks = chunk;
        self.offset += (CHUNK_FRAME as u64) + u64::from(comp_len);
        Ok(true)
    }
}

/// Reads as much of `buf` as the input has; the count read.
fn read_some(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn read_full(input: &mut impl Read, buf: &mut [u8]) -> io::Result<()> {
    if read_some(input, buf)? == buf.len() {
        Ok(())
    } else {
        Err(io::ErrorKind::UnexpectedEof.into())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use proptest::prelude::*;

    use super::*;

    fn header() -> Header {
        Header {
            tool_version: "test".into(),
            hostname: "h".into(),
            kernel: "6.18".into(),
            started_boot_ns: 5,
            ..Header::default()
        }
    }

    /// A recording in memory of `blocks`, a chunk after every `per_chunk`.
    fn recording(blocks: &[(u8, Vec<u8>)], per_chunk: usize, max: Option<u64>) -> Vec<u8> {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "tcplinger-unit-rec-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let file = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut w = RecordingWriter::new(Box::new(file), &header(), max).unwrap();
        for (i, (tag, payload)) in blocks.iter().enumerate() {
            w.push(*tag, payload).unwrap();
            if (i + 1) % per_chunk == 0 {
                w.flush_chunk().unwrap();
            }
        }
        w.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        bytes
    }

    /// The blocks read, and how the reading ended.
    type Read = (Vec<(u8, Vec<u8>)>, Result<(), ReadError>);

    fn read_all(bytes: &[u8]) -> Read {
        let mut r = match RecordingReader::new(Cursor::new(bytes)) {
            Ok(r) => r,
            Err(e) => return (Vec::new(), Err(e)),
        };
        let mut out = Vec::new();
        loop {
            match r.next_block() {
                Ok(Some(block)) => out.push(block),
                Ok(None) => return (out, Ok(())),
                Err(e) => return (out, Err(e)),
            }
        }
    }

    fn blocks(n: usize) -> Vec<(u8, Vec<u8>)> {
        (0..n)
            .map(|i| {
                (
                    u8::try_from(i % 7).unwrap(),
                    vec![u8::try_from(i % 251).unwrap(); i % 300],
                )
            })
            .collect()
    }

    #[test]
    fn blocks_come_back_as_written_with_the_header() {
        let written = blocks(100);
        let bytes = recording(&written, 10, None);
        let r = RecordingReader::new(Cursor::new(&bytes)).unwrap();
        assert_eq!(r.header, header());
        let (read, end) = read_all(&bytes);
        assert_eq!(end, Ok(()));
        assert_eq!(read, written);
    }

    #[test]
    fn a_file_cut_short_is_read_up_to_its_last_whole_chunk() {
        let written = blocks(100);
        let bytes = recording(&written, 10, None);
        // Cut inside the last chunk: the nine before it are read.
        let (read, end) = read_all(&bytes[..bytes.len() - 3]);
        assert_eq!(read, written[..90]);
        let Err(ReadError::Damaged { what, chunk, .. }) = end else {
            panic!("{end:?}")
        };
        assert_eq!((what, chunk), ("the file ends inside a chunk", 10));
    }

    #[test]
    fn a_damaged_chunk_stops_the_reading_there() {
        let written = blocks(40);
        let mut bytes = recording(&written, 10, None);
        let last = bytes.len() - 2;
        bytes[last] ^= 0xff;
        let (read, end) = read_all(&bytes);
        assert_eq!(read, written[..30]);
        assert!(
            matches!(
                end,
                Err(ReadError::Damaged {
                    what: "a chunk that fails its checksum",
                    chunk: 4,
                    ..
                })
            ),
            "{end:?}"
        );
    }

    #[test]
    fn a_newer_version_and_other_files_are_refused_by_name() {
        let mut bytes = recording(&blocks(3), 1, None);
        bytes[8..12].copy_from_slice(&(VERSION + 1).to_le_bytes());
        let Err(err) = RecordingReader::new(Cursor::new(&bytes)) else {
            panic!("accepted")
        };
        assert_eq!(err, ReadError::Newer { found: VERSION + 1 });
        let text = err.to_string();
        assert!(
            text.contains(&format!("version {}", VERSION + 1))
                && text.contains(&format!("version {VERSION}")),
            "{text}"
        );
        // Every earlier version is read.
        bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
        assert!(RecordingReader::new(Cursor::new(&bytes)).is_ok());
        assert!(matches!(
            RecordingReader::new(Cursor::new(b"#!/bin/sh\necho hi\n")),
            Err(ReadError::NotARecording)
        ));
        assert!(matches!(
            RecordingReader::new(Cursor::new(b"")),
            Err(ReadError::NotARecording)
        ));
    }

    #[test]
    fn the_size_limit_keeps_the_file_under_it_and_counts_what_was_left_out() {
        let written = blocks(200);
        let unlimited = recording(&written, 10, None);
        let max = unlimited.len() as u64 / 2;
        let bytes = recording(&written, 10, Some(max));
        assert!(bytes.len() as u64 <= max, "{} > {max}", bytes.len());
        let (read, end) = read_all(&bytes);
        assert_eq!(end, Ok(()));
        assert!(!read.is_empty() && read.len() < written.len());
        assert_eq!(read, written[..read.len()]);
    }

    proptest! {
        /// Whatever the bytes, reading ends in blocks and an error or a
        /// clean end, never a panic.
        #[test]
        fn any_bytes_are_read_without_panicking(cut in 0usize..4000, flips in proptest::collection::vec((0usize..4000, any::<u8>()), 0..8)) {
            let mut bytes = recording(&blocks(60), 7, None);
            for (at, x) in flips {
                let at = at % bytes.len();
                bytes[at] ^= x;
            }
            bytes.truncate(cut.min(bytes.len()));
            let _ = read_all(&bytes);
        }

        #[test]
        fn random_input_is_refused_or_read_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut with_magic = MAGIC.to_vec();
            with_magic.extend_from_slice(&bytes);
            let _ = read_all(&with_magic);
            let _ = read_all(&bytes);
        }
    }
}
