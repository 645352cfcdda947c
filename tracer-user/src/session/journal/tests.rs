//! Recordings written through [`Recorder`] and read back through [`ReplayHost`]: the same answers in the same order, windows, damaged and old files.

use std::{collections::HashMap, fs::File};

use super::{replay::decode_entries, *};
use crate::host::recording_file::{Header, RecordingWriter};
use crate::session::host::Host as _;

fn recording_of(blocks: &[(u8, Vec<u8>)], name: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!(
        "tcplinger-unit-journal-{}-{name}",
        std::process::id()
    ));
    let file = File::create(&path).unwrap();
    let mut w = RecordingWriter::new(Box::new(file), &Header::default(), None).unwrap();
    for (tag, payload) in blocks {
        w.push(*tag, payload).unwrap();
    }
    w.finish().unwrap();
    path
}

/// A recording cut short inside a read of the entries still answers
/// the count of entries made and freed as last recorded: (0, 0) would
/// count every entry ever made as recycled.
#[test]
fn a_turnover_missing_at_the_cut_is_the_last_one_recorded() {
    let turnover = serde_json::to_vec(&Timed {
        now_ns: 5,
        value: &(40u64, 38u64),
    })
    .unwrap();
    let path = recording_of(&[(tag::TURNOVER, turnover)], "turnover");
    let mut host = ReplayHost::open(&path).unwrap();
    assert_eq!(host.entry_turnover(), (40, 38));
    assert_eq!(host.entry_turnover(), (40, 38), "the file ends here");
    let _ = std::fs::remove_file(&path);
}

fn entries_block(entries: &[(u64, Option<&[u8]>)]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&7u64.to_le_bytes());
    b.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for (cookie, bytes) in entries {
        b.extend_from_slice(&cookie.to_le_bytes());
        match bytes {
            Some(bytes) => {
                b.extend_from_slice(&u32::try_from(bytes.len()).unwrap().to_le_bytes());
                b.extend_from_slice(bytes);
            }
            None => b.extend_from_slice(&SAME_ENTRY.to_le_bytes()),
        }
    }
    b
}

#[test]
fn entries_blocks_take_only_entries_and_known_references() {
    let entry = vec![3u8; size_of::<tracer_common::SocketEntry>()];
    let none = HashMap::new();
    let (now, n, read) = decode_entries(&entries_block(&[(1, Some(&entry))]), &none).unwrap();
    assert_eq!((now, n, read.len()), (7, 1, 1));
    let last: HashMap<u64, Rc<[u8]>> = read.into_iter().collect();
    let (_, _, again) = decode_entries(&entries_block(&[(1, None)]), &last).unwrap();
    assert_eq!(&*again[0].1, &entry[..], "a reference is the entry before");
    // A reference to a socket not read before, an entry of another
    // size, a block cut inside an entry: damage, not a panic.
    assert!(decode_entries(&entries_block(&[(2, None)]), &last).is_none());
    assert!(decode_entries(&entries_block(&[(1, Some(&[1, 2, 3]))]), &none).is_none());
    let cut = entries_block(&[(1, Some(&entry))]);
    assert!(decode_entries(&cut[..cut.len() - 1], &none).is_none());
}
