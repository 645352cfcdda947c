//! Reads every entry of the kernel's per-socket map in a few system calls (`BPF_MAP_LOOKUP_BATCH`), for the steps of live sockets not yet written to the ring.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::maps::MapData;
use tracer_common::SocketEntry;

/// `BPF_MAP_LOOKUP_BATCH` (include/uapi/linux/bpf.h, `enum bpf_cmd`).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Entries asked for per call: the map's buckets are walked in order and
/// one call returns whole buckets, so a bucket never holds more than this.
const BATCH: usize = 4096;

/// The batch member of `union bpf_attr`, as the kernel lays it out.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// The owner map, and buffers kept from read to read.
pub struct EntryReader {
    map: MapData,
    keys: Vec<u64>,
    values: Vec<u8>,
    /// Upper bound on calls per read: the map's entries over the batch,
    /// and some, so a map changing under the walk cannot keep it going.
    max_calls: usize,
}

impl EntryReader {
    pub fn new(map: MapData, max_entries: u32) -> Self {
        Self {
            map,
            keys: vec![0; BATCH],
            values: vec![0; BATCH * size_of::<SocketEntry>()],
            max_calls: usize::try_from(max_entries).unwrap_or(usize::MAX) / BATCH + 16,
        }
    }

    /// Hands every entry (cookie, raw value) to `each`; returns how many.
    pub fn read(&mut self, each: &mut dyn FnMut(u64, &[u8])) -> io::Result<usize> {
        let size = size_of::<SocketEntry>();
        let fd = self.map.fd().as_fd().as_raw_fd();
        // The walk's position: an opaque token (a bucket index for hash
        // maps) the kernel writes and is given back.
        let mut token = [0u8; 8];
        let mut next = [0u8; 8];
        let mut total = 0;
        for call in 0..self.max_calls {
            let mut attr = BatchAttr {
                in_batch: if call == 0 {
                    0
                } else {
                    token.as_mut_ptr() as u64
                },
                out_batch: next.as_mut_ptr() as u64,
                keys: self.keys.as_mut_ptr() as u64,
                values: self.values.as_mut_ptr() as u64,
                count: u32::try_from(BATCH).unwrap_or(u32::MAX),
                map_fd: u32::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?,
                ..BatchAttr::default()
            };
            // SAFETY: `attr` is the batch member of `union bpf_attr` with
            // its size; the kernel writes at most `count` keys and values
            // into the buffers, which hold `BATCH` of each, and 4 bytes of
            // token into `next`.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_MAP_LOOKUP_BATCH,
                    &raw mut attr,
                    size_of::<BatchAttr>(),
                )
            };
            let err = (rc < 0).then(io::Error::last_os_error);
            let got = usize::try_from(attr.count).unwrap_or(0).min(BATCH);
            for i in 0..got {
                each(self.keys[i], &self.values[i * size..(i + 1) * size]);
            }
            total += got;
            match err {
                None => token = next,
                // The walk is over.
                Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(total),
                Some(e) => return Err(e),
            }
        }
        Ok(total)
    }
}
