//! The tracker's socket table: connections by cookie, the least recently used dropped first when it is full, stored in fixed-size chunks.
//!
//! Written for memory: an LRU crate that allocates each entry on its own
//! pays an allocation header and a pointer per socket, and one that keeps
//! entries inside its hash table doubles that table (and every entry's
//! space) on growth. Here an entry costs its slot, two links and one
//! index entry, and growth adds one chunk at a time.

use foldhash::{HashMap, HashMapExt as _};

/// Slots per chunk: big enough that chunk bookkeeping is nothing, small
/// enough that the last, partly used chunk is no waste.
const CHUNK: usize = 4096;

/// No slot (list ends).
const NIL: u32 = u32::MAX;

struct Slot<V> {
    key: u64,
    /// Towards the most recently used.
    prev: u32,
    /// Towards the least recently used; for a free slot, the next free one.
    next: u32,
    value: Option<V>,
}

pub struct LruTable<V> {
    index: HashMap<u64, u32>,
    chunks: Vec<Vec<Slot<V>>>,
    /// Most and least recently used.
    head: u32,
    tail: u32,
    /// Freed slots, linked through `next`.
    free: u32,
    cap: usize,
}

#[expect(
    clippy::trivially_copy_pass_by_ref,
    reason = "keys by reference, as the std maps take them"
)]
impl<V> LruTable<V> {
    /// A table of at most `cap` entries (nothing is allocated until used).
    pub fn new(cap: usize) -> Self {
        Self {
            index: HashMap::new(),
            chunks: Vec::new(),
            head: NIL,
            tail: NIL,
            free: NIL,
            cap: cap.clamp(1, NIL as usize),
        }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    fn slot(&self, i: u32) -> &Slot<V> {
        &self.chunks[i as usize / CHUNK][i as usize % CHUNK]
    }

    fn slot_mut(&mut self, i: u32) -> &mut Slot<V> {
        &mut self.chunks[i as usize / CHUNK][i as usize % CHUNK]
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next) = {
            let s = self.slot(i);
            (s.prev, s.next)
        };
        match prev {
            NIL => self.head = next,
            p => self.slot_mut(p).next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.slot_mut(n).prev = prev,
        }
    }

    fn link_front(&mut self, i: u32) {
        let head = self.head;
        {
            let s = self.slot_mut(i);
            s.prev = NIL;
            s.next = head;
        }
        match head {
            NIL => self.tail = i,
            h => self.slot_mut(h).prev = i,
        }
        self.head = i;
    }

    /// A slot for a new entry: a freed one, or the next in the last chunk.
    fn allocate(&mut self, key: u64, value: V) -> u32 {
        if self.free != NIL {
            let i = self.free;
            let s = self.slot_mut(i);
            let next_free = s.next;
            s.key = key;
            s.value = Some(value);
            self.free = next_free;
            return i;
        }
        if self.chunks.last().is_none_or(|c| c.len() == CHUNK) {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        let n = self.chunks.len() - 1;
        let chunk = &mut self.chunks[n];
        chunk.push(Slot {
            key,
            prev: NIL,
            next: NIL,
            value: Some(value),
        });
        #[expect(
            clippy::cast_possible_truncation,
            reason = "`cap` keeps slot numbers below NIL, a u32"
        )]
        let slot = (n * CHUNK + chunk.len() - 1) as u32;
        slot
    }

    /// Inserts or replaces `key`'s entry, making it the most recent. Returns
    /// what made room: the replaced entry, or the least recently used one
    /// when the table was full.
    pub fn push(&mut self, key: u64, value: V) -> Option<(u64, V)> {
        if let Some(&i) = self.index.get(&key) {
            self.promote_slot(i);
            let old = self.slot_mut(i).value.replace(value);
            return old.map(|v| (key, v));
        }
        let evicted = if self.index.len() >= self.cap {
            let tail = self.tail;
            let old_key = self.slot(tail).key;
            self.index.remove(&old_key);
            self.unlink(tail);
            let free = self.free;
            let s = self.slot_mut(tail);
            let old = s.value.take();
            s.next = free;
            self.free = tail;
            old.map(|v| (old_key, v))
        } else {
            None
        };
        let i = self.allocate(key, value);
        self.link_front(i);
        self.index.insert(key, i);
        evicted
    }

    fn promote_slot(&mut self, i: u32) {
        if self.head != i {
            self.unlink(i);
            self.link_front(i);
        }
    }

    /// Makes `key` the most recently used.
    pub fn promote(&mut self, key: &u64) {
        if let Some(&i) = self.index.get(key) {
            self.promote_slot(i);
        }
    }

    /// The entry, made the most recently used.
    pub fn get_mut(&mut self, key: &u64) -> Option<&mut V> {
        let i = *self.index.get(key)?;
        self.promote_slot(i);
        self.slot_mut(i).value.as_mut()
    }

    /// The entry, leaving the order alone.
    pub fn peek(&self, key: &u64) -> Option<&V> {
        let i = *self.index.get(key)?;
        self.slot(i).value.as_ref()
    }

    pub fn peek_mut(&mut self, key: &u64) -> Option<&mut V> {
        let i = *self.index.get(key)?;
        self.slot_mut(i).value.as_mut()
    }

    pub fn contains(&self, key: &u64) -> bool {
        self.index.contains_key(key)
    }

    /// Removes and returns the entry.
    pub fn pop(&mut self, key: &u64) -> Option<V> {
        let i = self.index.remove(key)?;
        self.unlink(i);
        let free = self.free;
        let s = self.slot_mut(i);
        s.next = free;
        let value = s.value.take();
        self.free = i;
        value
    }

    /// Every entry, most recently used first.
    pub fn iter(&self) -> impl Iterator<Item = (&u64, &V)> + '_ {
        let mut at = self.head;
        std::iter::from_fn(move || {
            while at != NIL {
                let s = self.slot(at);
                at = s.next;
                if let Some(v) = &s.value {
                    return Some((&s.key, v));
                }
            }
            None
        })
    }

    /// Applies `f` to every entry.
    pub fn for_each_mut(&mut self, mut f: impl FnMut(&u64, &mut V)) {
        for chunk in &mut self.chunks {
            for s in chunk.iter_mut() {
                if let Some(v) = &mut s.value {
                    f(&s.key, v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(t: &LruTable<u32>) -> Vec<u64> {
        t.iter().map(|(k, _)| *k).collect()
    }

    #[test]
    fn the_least_recently_used_goes_first_when_full() {
        let mut t = LruTable::new(3);
        for k in 1..=3 {
            assert_eq!(t.push(k, u32::try_from(k).unwrap() * 10), None);
        }
        assert_eq!(keys(&t), [3, 2, 1]);
        // A lookup counts as use; a peek does not.
        assert_eq!(t.get_mut(&1), Some(&mut 10));
        assert_eq!(t.peek(&2), Some(&20));
        assert_eq!(keys(&t), [1, 3, 2]);
        assert_eq!(t.push(4, 40), Some((2, 20)), "2 was the stalest");
        assert_eq!(keys(&t), [4, 1, 3]);
        assert_eq!(t.len(), 3);
        t.promote(&3);
        assert_eq!(t.push(5, 50), Some((1, 10)));
        assert_eq!(keys(&t), [5, 3, 4]);
    }

    #[test]
    fn replacing_returns_the_old_value_and_keeps_one_entry() {
        let mut t = LruTable::new(2);
        t.push(7, 1);
        t.push(8, 2);
        assert_eq!(t.push(7, 3), Some((7, 1)));
        assert_eq!(t.len(), 2);
        assert_eq!(keys(&t), [7, 8]);
        assert_eq!(t.peek(&7), Some(&3));
    }

    #[test]
    fn popped_slots_are_reused_and_links_stay_whole() {
        let mut t = LruTable::new(10_000);
        for k in 0..9_000u64 {
            t.push(k, u32::try_from(k).unwrap());
        }
        assert_eq!(t.chunks.len(), 3);
        // Pop from the middle, both ends, then fill again.
        for k in (0..9_000u64).step_by(3).chain([8_999, 1]) {
            assert_eq!(t.pop(&k), Some(u32::try_from(k).unwrap()), "{k}");
        }
        assert_eq!(t.pop(&0), None);
        assert!(!t.contains(&3) && t.contains(&2));
        let left = t.len();
        for k in 10_000..10_000 + (9_000 - left as u64) {
            t.push(k, 0);
        }
        assert_eq!(t.len(), 9_000);
        assert_eq!(t.chunks.len(), 3, "freed slots reused, no new chunk");
        // The list holds every entry exactly once, newest first.
        let listed = keys(&t);
        assert_eq!(listed.len(), 9_000);
        assert_eq!(listed[0], 10_000 + (9_000 - left as u64) - 1);
        let mut counted = 0;
        t.for_each_mut(|_, v| {
            *v += 1;
            counted += 1;
        });
        assert_eq!(counted, 9_000);
        assert_eq!(t.peek(&2), Some(&3));
    }

    #[test]
    fn a_table_emptied_and_refilled_works() {
        let mut t = LruTable::new(2);
        t.push(1, 1);
        assert_eq!(t.pop(&1), Some(1));
        assert_eq!(t.len(), 0);
        assert!(keys(&t).is_empty());
        t.push(2, 2);
        t.push(3, 3);
        assert_eq!(t.push(4, 4), Some((2, 2)));
        assert_eq!(keys(&t), [4, 3]);
    }
}
