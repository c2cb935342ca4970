//! The audit ledger's layout on etcd: the entries one request appends are one key, a block.
//!
//! ```text
//!   {root}/ledger/{first:020}.{count}   a block: count × (u32 LE length ‖ prev hash ‖ hash ‖ payload)
//!   {root}/ledger/{seq:020}             one entry, as builds before blocks wrote it:
//!                                       prev hash ‖ hash ‖ payload
//! ```
//! A batch create of 100 claims, or a plan applier commit of 30 allocations, appends one entry
//! per object; as one key each they took half of etcd's `--max-txn-ops` (128) by themselves.
//! As a block they take one operation, so what fits a transaction is bounded by the objects
//! written, not by their audit. Keys sort by their first sequence number (fixed width; the
//! `.` of a block's key sorts before any digit that could follow), each sequence number is in
//! exactly one key, and both shapes are read, so a ledger written before blocks still reads.

use bytes::Bytes;

use crate::{LedgerEntry, LedgerHead};

/// The entries of one request, chained after the head they start from.
pub(super) struct LedgerBlock {
    first: u64,
    count: u64,
    /// The newest entry: the ledger head once the block is written.
    pub tip: LedgerHead,
    value: Vec<u8>,
}

impl LedgerBlock {
    pub fn after(head: &LedgerHead) -> LedgerBlock {
        LedgerBlock {
            first: head.seq + 1,
            count: 0,
            tip: head.clone(),
            value: Vec::new(),
        }
    }

    /// Chains one entry; returns its sequence number.
    pub fn push(&mut self, payload: &[u8]) -> u64 {
        let seq = self.tip.seq + 1;
        let hash = infraos_api::audit::chain_hash(seq, &self.tip.hash, payload);
        // A payload is bounded by the store's value limit (4 MiB), far below u32::MAX.
        let len = u32::try_from(64 + payload.len()).unwrap_or(u32::MAX);
        self.value.reserve(4 + 64 + payload.len());
        self.value.extend_from_slice(&len.to_le_bytes());
        self.value.extend_from_slice(&self.tip.hash);
        self.value.extend_from_slice(&hash);
        self.value.extend_from_slice(payload);
        self.tip = LedgerHead { seq, hash };
        self.count += 1;
        seq
    }

    /// The block's key suffix (after the ledger prefix) and value, if it holds any entry.
    pub fn finish(self) -> Option<(String, Vec<u8>)> {
        (self.count > 0).then(|| (format!("{:020}.{}", self.first, self.count), self.value))
    }
}

/// The suffix under the ledger prefix that every key holding `seq` or a later entry sorts at
/// or after, and that only keys of earlier entries (or of a block holding `seq`) sort before.
pub(super) fn range_end_for(seq: u64) -> String {
    // '/' sorts after '.', so this is past "{seq}" and "{seq}.{count}" and before "{seq + 1}".
    format!("{seq:020}/")
}

/// The entries of one key, from its suffix (after the ledger prefix) and value.
pub(super) fn decode(suffix: &str, raw: &[u8]) -> Result<Vec<LedgerEntry>, String> {
    let entry = |seq: u64, raw: &[u8]| -> Result<LedgerEntry, String> {
        if raw.len() < 64 {
            return Err("entry shorter than its two hashes".into());
        }
        let mut prev_hash = [0u8; 32];
        let mut hash = [0u8; 32];
        prev_hash.copy_from_slice(&raw[..32]);
        hash.copy_from_slice(&raw[32..64]);
        Ok(LedgerEntry {
            seq,
            prev_hash,
            hash,
            payload: Bytes::copy_from_slice(&raw[64..]),
        })
    };
    let number = |s: &str| s.parse::<u64>().map_err(|_| "not a ledger key".to_string());
    let Some((first, count)) = suffix.split_once('.') else {
        return Ok(vec![entry(number(suffix)?, raw)?]);
    };
    let (first, count) = (number(first)?, number(count)?);
    let mut out = Vec::new();
    let mut rest = raw;
    while !rest.is_empty() {
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            return Err("block ends inside an entry's length".into());
        };
        let len = u32::from_le_bytes(*len) as usize;
        if tail.len() < len {
            return Err("block ends inside an entry".into());
        }
        let (one, tail) = tail.split_at(len);
        out.push(entry(first + out.len() as u64, one)?);
        rest = tail;
    }
    if out.len() as u64 != count {
        return Err(format!(
            "block holds {} entries, its key says {count}",
            out.len()
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_reads_back_chained_and_numbered() {
        let head = LedgerHead {
            seq: 41,
            hash: [7; 32],
        };
        let mut block = LedgerBlock::after(&head);
        assert_eq!(block.push(b"one"), 42);
        assert_eq!(block.push(b""), 43);
        assert_eq!(block.push(b"three"), 44);
        let tip = block.tip.clone();
        let (suffix, value) = block.finish().expect("three entries");
        assert_eq!(suffix, "00000000000000000042.3");
        let entries = decode(&suffix, &value).expect("decodes");
        assert_eq!(
            entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [42, 43, 44]
        );
        assert_eq!(entries[0].prev_hash, [7; 32]);
        assert_eq!(entries[1].prev_hash, entries[0].hash);
        assert_eq!(entries[2].hash, tip.hash);
        assert_eq!(&entries[2].payload[..], b"three");
        assert_eq!(
            entries[1].hash,
            infraos_api::audit::chain_hash(43, &entries[0].hash, b"")
        );
    }

    #[test]
    fn an_empty_block_writes_nothing() {
        assert!(
            LedgerBlock::after(&LedgerHead::default())
                .finish()
                .is_none()
        );
    }

    #[test]
    fn a_single_entry_key_still_reads() {
        let mut raw = vec![1u8; 32];
        raw.extend_from_slice(&[2u8; 32]);
        raw.extend_from_slice(b"payload");
        let entries = decode("00000000000000000009", &raw).expect("decodes");
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].seq, 9);
        assert_eq!(&entries[0].payload[..], b"payload");
    }

    #[test]
    fn damaged_blocks_are_refused_with_a_reason() {
        let mut block = LedgerBlock::after(&LedgerHead::default());
        block.push(b"entry");
        block.push(b"another");
        let (suffix, value) = block.finish().expect("two entries");
        assert!(decode(&suffix, &value[..value.len() - 1]).is_err());
        assert!(decode("00000000000000000001.3", &value).is_err());
        assert!(decode("x.2", &value).is_err());
        assert!(decode("00000000000000000001", &[0u8; 10]).is_err());
    }

    #[test]
    fn keys_sort_by_first_entry_and_the_range_end_splits_them() {
        let keys = [
            "00000000000000000009".to_string(),
            "00000000000000000010.5".to_string(),
            range_end_for(10),
            "00000000000000000015".to_string(),
            "00000000000000000016.2".to_string(),
            range_end_for(99),
            "00000000000000000100.1".to_string(),
        ];
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(sorted, keys);
    }
}
