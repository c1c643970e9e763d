//! Reassembly of one incoming MSRP message from its chunks (RFC 4975 section 7.1), sans-IO.
//!
//! ```text
//!   insert(start, bytes) -> [ pieces: start -> bytes, disjoint, never adjacent ] -> into_vec()
//! ```
//!
//! Memory follows the bytes actually received: a chunk announcing `1048576-1048576/1048576`
//! costs one byte and one piece, not a buffer of the announced total. A chunk that touches
//! held pieces merges with them at once, so a message sent in order (or in reverse, or
//! interleaved) stays one piece. Merging moves the smaller pieces into the largest one
//! (a `VecDeque` grows at either end), so a byte is moved only when the piece it is in at
//! least doubles: O(n log n) for n bytes however the peer slices them, plus O(log p) map
//! work per chunk for p pieces.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound::{Excluded, Included};

/// What one piece costs beyond its bytes (map node share, deque header, allocation), for
/// the session's budget: a peer that leaves a gap after every byte pays for the gaps.
pub const PIECE_COST: usize = 64;

#[derive(Debug, Default)]
pub struct Reassembly {
    /// Start offset (0-based) -> the bytes from there on.
    pieces: BTreeMap<usize, VecDeque<u8>>,
    /// Bytes held, the sum of the pieces' lengths.
    held: usize,
}

impl Reassembly {
    pub fn new() -> Reassembly {
        Reassembly::default()
    }

    /// Bytes held.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Disjoint ranges held.
    pub fn pieces(&self) -> usize {
        self.pieces.len()
    }

    /// What this message costs the session's reassembly budget.
    pub fn cost(&self) -> usize {
        self.held + self.pieces.len() * PIECE_COST
    }

    /// Adds `data` at offset `start`. Bytes already held stay as they are (a chunk sent
    /// again after an interruption carries the same bytes).
    pub fn insert(&mut self, start: usize, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let end = start.saturating_add(data.len());
        // The pieces that overlap [start, end) or touch it at either end.
        let mut touching: Vec<usize> = Vec::new();
        if let Some((&k, p)) = self.pieces.range(..=start).next_back() {
            if k + p.len() >= start {
                touching.push(k);
            }
        }
        touching.extend(
            self.pieces
                .range((Excluded(start), Included(end)))
                .map(|(&k, _)| k),
        );
        if touching.is_empty() {
            self.pieces.insert(start, VecDeque::from(data.to_vec()));
            self.held += data.len();
            return;
        }
        let parts: Vec<(usize, VecDeque<u8>)> = touching
            .into_iter()
            .filter_map(|k| self.pieces.remove(&k).map(|p| (k, p)))
            .collect();
        let union_start = parts[0].0.min(start);
        // The largest piece stays in place; everything else is copied into it.
        let base_at = parts
            .iter()
            .enumerate()
            .max_by_key(|(_, (_, p))| p.len())
            .map(|(i, _)| i)
            .unwrap_or(0);
        let mut before: Vec<Segment> = Vec::new();
        let mut after: Vec<Segment> = Vec::new();
        let mut base = VecDeque::new();
        let mut cursor = union_start;
        let mut added = 0;
        for (i, (k, p)) in parts.into_iter().enumerate() {
            if cursor < k {
                // A gap between held pieces: the new chunk covers it.
                let list = if i <= base_at {
                    &mut before
                } else {
                    &mut after
                };
                list.push(Segment::New(cursor - start, k - start));
                added += k - cursor;
            }
            cursor = k + p.len();
            match i.cmp(&base_at) {
                std::cmp::Ordering::Less => before.push(Segment::Held(p)),
                std::cmp::Ordering::Equal => base = p,
                std::cmp::Ordering::Greater => after.push(Segment::Held(p)),
            }
        }
        if cursor < end {
            after.push(Segment::New(cursor - start, end - start));
            added += end - cursor;
        }
        let front: usize = before.iter().map(|s| s.len()).sum();
        base.reserve(front + after.iter().map(|s| s.len()).sum::<usize>());
        for s in before.iter().rev() {
            match s {
                Segment::New(a, b) => data[*a..*b].iter().rev().for_each(|&x| base.push_front(x)),
                Segment::Held(p) => p.iter().rev().for_each(|&x| base.push_front(x)),
            }
        }
        for s in after {
            match s {
                Segment::New(a, b) => base.extend(&data[a..b]),
                Segment::Held(p) => base.extend(p),
            }
        }
        self.held += added;
        self.pieces.insert(union_start, base);
    }

    /// Whether bytes `0..len` are all held, and nothing else.
    pub fn is_whole(&self, len: usize) -> bool {
        if len == 0 {
            return self.pieces.is_empty();
        }
        self.pieces.len() == 1 && self.pieces.get(&0).is_some_and(|p| p.len() == len)
    }

    /// The bytes from offset 0 on, if they are one piece (see [`Reassembly::is_whole`]).
    pub fn into_vec(mut self) -> Vec<u8> {
        let mut v: Vec<u8> = self.pieces.remove(&0).map(Vec::from).unwrap_or_default();
        v.shrink_to_fit();
        v
    }
}

enum Segment {
    /// Bytes of the new chunk, as a range of its data.
    New(usize, usize),
    Held(VecDeque<u8>),
}

impl Segment {
    fn len(&self) -> usize {
        match self {
            Segment::New(a, b) => b - a,
            Segment::Held(p) => p.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bytes(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn a_byte_far_out_costs_a_byte_not_the_announced_total() {
        let mut r = Reassembly::new();
        r.insert(1024 * 1024 - 1, b"x");
        assert_eq!(r.held(), 1);
        assert_eq!(r.pieces(), 1);
        assert_eq!(r.cost(), 1 + PIECE_COST);
        assert!(!r.is_whole(1024 * 1024));
    }

    #[test]
    fn a_hundred_thousand_one_byte_chunks_in_reverse_order_stay_one_piece() {
        let n = 100_000;
        let body = bytes(n);
        let mut r = Reassembly::new();
        for i in (0..n).rev() {
            r.insert(i, &body[i..i + 1]);
            // Each chunk touches the piece after it: never more than one piece.
            assert_eq!(r.pieces(), 1);
        }
        assert_eq!(r.held(), n);
        assert!(r.is_whole(n));
        assert_eq!(r.into_vec(), body);
    }

    #[test]
    fn every_other_byte_first_then_the_gaps_merges_into_one_piece() {
        let n = 20_000;
        let body = bytes(n);
        let mut r = Reassembly::new();
        for i in (0..n).step_by(2) {
            r.insert(i, &body[i..i + 1]);
        }
        assert_eq!(r.pieces(), n / 2);
        assert_eq!(r.held(), n / 2);
        for i in (1..n).step_by(2) {
            r.insert(i, &body[i..i + 1]);
        }
        assert_eq!(r.pieces(), 1);
        assert_eq!(r.held(), n);
        assert_eq!(r.into_vec(), body);
    }

    #[test]
    fn one_chunk_over_many_pieces_joins_them_and_keeps_what_was_held() {
        let mut r = Reassembly::new();
        r.insert(2, b"CD");
        r.insert(6, b"GH");
        r.insert(10, b"K");
        // Overlaps all three; its own bytes at held offsets are not used.
        r.insert(0, b"abcdefghijkl");
        assert_eq!(r.pieces(), 1);
        assert_eq!(r.held(), 12);
        assert_eq!(r.into_vec(), b"abCDefGHijKl");
    }

    #[test]
    fn a_repeated_chunk_adds_nothing() {
        let mut r = Reassembly::new();
        r.insert(4, b"efgh");
        r.insert(4, b"efgh");
        r.insert(5, b"f");
        assert_eq!((r.held(), r.pieces()), (4, 1));
        r.insert(0, b"abcd");
        assert!(r.is_whole(8));
        assert_eq!(r.into_vec(), b"abcdefgh");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn any_slicing_in_any_order_reassembles_the_message(
            cuts in proptest::collection::vec(0usize..400, 0..40),
            order in proptest::collection::vec(any::<u32>(), 40),
            dup in proptest::collection::vec((0usize..400, 1usize..50), 0..10),
        ) {
            let body = bytes(400);
            let mut cuts = cuts;
            cuts.push(0);
            cuts.push(400);
            cuts.sort_unstable();
            cuts.dedup();
            let mut chunks: Vec<(usize, usize)> = cuts.windows(2).map(|w| (w[0], w[1])).collect();
            for &(s, l) in &dup {
                chunks.push((s, (s + l).min(400)));
            }
            let mut keyed: Vec<(u32, (usize, usize))> =
                chunks.into_iter().enumerate().map(|(i, c)| (order[i % order.len()] ^ i as u32, c)).collect();
            keyed.sort_unstable();
            let mut r = Reassembly::new();
            for (_, (s, e)) in keyed {
                r.insert(s, &body[s..e]);
                prop_assert!(r.held() <= 400);
            }
            prop_assert!(r.is_whole(400));
            prop_assert_eq!(r.into_vec(), body);
        }
    }
}
