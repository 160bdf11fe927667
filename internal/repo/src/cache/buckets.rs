//! Stock buckets: a hot sale's stock split over several sets of keys, each on its own hash
//! tag, so that one sale's reservations spread over the masters of a Redis Cluster.
//!
//! Bucket 0 keeps the sale's own tag `{sale:<id>}` (a sale of one bucket is exactly what it
//! was before buckets). Bucket `k > 0` gets the tag `{sale:<id>:<k>:<j>}` with the smallest
//! `j` whose slot falls in a window of 256 slots placed after bucket 0's slot by the
//! bit-reversed `k` (a van der Corput sequence): the first `n` buckets of any sale sit
//! evenly around the 16384 slots whatever `n` is, so `n` buckets over `m` equal masters put
//! at most `ceil(n / m)` (about) on one master. The tags are computed, never stored.

use uuid::Uuid;

/// The number of Redis Cluster hash slots.
pub const SLOTS: u16 = 16384;
/// At most this many buckets per sale.
pub const MAX_BUCKETS: u16 = 64;

/// One bucket of a sale split into `of` buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bucket {
    pub index: u16,
    pub of: u16,
}

impl Bucket {
    /// The bucket of a sale that has one.
    pub const ONLY: Bucket = Bucket { index: 0, of: 1 };

    /// A buyer's home bucket: where they reserve, so that their per-user limit and their
    /// `Idempotency-Key` stay in one script. A stable hash of the user id (its last eight
    /// bytes), never a per-process randomized one.
    pub fn home(user_id: Uuid, of: u16) -> Bucket {
        let of = of.max(1);
        let bytes = user_id.as_bytes();
        let low = u64::from_be_bytes(bytes[8..16].try_into().expect("eight bytes"));
        Bucket { index: (low % u64::from(of)) as u16, of }
    }

    /// Every bucket of a sale split into `of`.
    pub fn all(of: u16) -> impl Iterator<Item = Bucket> {
        let of = of.max(1);
        (0..of).map(move |index| Bucket { index, of })
    }
}

/// `stock` split over `of` buckets as evenly as possible (the first ones get the extra unit).
pub fn split(stock: i32, of: u16) -> Vec<i32> {
    let of = i32::from(of.max(1));
    (0..of).map(|k| stock / of + i32::from(k < stock % of)).collect()
}

/// The hash tag (without braces) of bucket `index` of a sale.
pub fn tag(sale_id: Uuid, index: u16) -> String {
    let base = format!("sale:{sale_id}");
    if index == 0 {
        return base;
    }
    let window = SLOTS / MAX_BUCKETS;
    let start = (slot(base.as_bytes()) + reverse6(index) * window) % SLOTS;
    (0u32..)
        .map(|j| format!("{base}:{index}:{j}"))
        .find(|tag| (slot(tag.as_bytes()) + SLOTS - start) % SLOTS < window)
        .expect("some j lands in any window of 256 slots")
}

/// `index`'s six bits reversed: 1 -> 32, 2 -> 16, 3 -> 48, ...
fn reverse6(index: u16) -> u16 {
    (0..6).fold(0, |acc, bit| acc | (((index >> bit) & 1) << (5 - bit)))
}

/// The Redis Cluster slot of a hash tag: CRC16 (XMODEM) mod 16384.
pub fn slot(tag: &[u8]) -> u16 {
    crc16(tag) % SLOTS
}

fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slot_is_redis_clusters() {
        // The Redis Cluster specification's own example: CRC16 of "123456789" is 0x31C3.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot(b"123456789"), 12739);
        assert_eq!(slot(b"foo"), 12182);
    }

    #[test]
    fn eight_buckets_spread_over_three_masters_three_three_two() {
        let masters = |slot: u16| match slot {
            0..=5460 => 0,
            5461..=10922 => 1,
            _ => 2,
        };
        for _ in 0..200 {
            let sale = Uuid::new_v4();
            let mut per_master = [0; 3];
            for k in 0..8 {
                per_master[masters(slot(tag(sale, k).as_bytes()))] += 1;
            }
            per_master.sort_unstable();
            assert_eq!(per_master, [2, 3, 3], "sale {sale}");
        }
    }

    #[test]
    fn bucket_zero_keeps_the_sales_tag() {
        let sale = Uuid::new_v4();
        assert_eq!(tag(sale, 0), format!("sale:{sale}"));
        assert_eq!(tag(sale, 5), tag(sale, 5), "computed the same every time");
    }

    #[test]
    fn a_home_bucket_is_stable() {
        let user: Uuid = "0190a3c2-7d1e-7abc-9def-0123456789ab".parse().unwrap();
        // The last eight bytes 0x9def0123456789ab mod 8 = 3, mod 5 = 1: fixed, not hashed per run.
        assert_eq!(Bucket::home(user, 8), Bucket { index: 3, of: 8 });
        assert_eq!(Bucket::home(user, 5).index, (0x9def_0123_4567_89ab_u64 % 5) as u16);
        assert_eq!(Bucket::home(user, 1), Bucket::ONLY);
        let mut seen = [0; 8];
        for _ in 0..800 {
            seen[Bucket::home(Uuid::now_v7(), 8).index as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 40), "every bucket is someone's home: {seen:?}");
    }

    #[test]
    fn the_split_is_even() {
        assert_eq!(split(10, 1), vec![10]);
        assert_eq!(split(10, 4), vec![3, 3, 2, 2]);
        assert_eq!(split(8, 8), vec![1; 8]);
        assert_eq!(split(1000, 64).iter().sum::<i32>(), 1000);
        let parts = split(1000, 64);
        assert!(parts.iter().max().unwrap() - parts.iter().min().unwrap() <= 1);
    }
}
