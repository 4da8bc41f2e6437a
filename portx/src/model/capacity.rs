//! How many source ports a connect() toward one destination can count on.
//!
//! `__inet_hash_connect` scans `remaining = high - low + 1` ports, rounded down to even
//! when larger than one, starting at a per-destination offset that moves after each
//! allocation (`table_perturb`), and skips `ip_local_reserved_ports`
//! (<https://elixir.bootlin.com/linux/v6.12/source/net/ipv4/inet_hashtables.c#L1000>).
//! So with an odd-sized range one port may or may not be reachable depending on the
//! offset: connects are guaranteed the even-rounded window, and may get one more.
//! portx reports the guaranteed figure; `used` can exceed it by one on odd ranges.

/// Inclusive port ranges, as `ip_local_reserved_ports` lists them.
pub type Reserved = [(u16, u16)];

/// Number of ports of `[lo, hi]` that are in `reserved`.
pub fn reserved_in_range(lo: u16, hi: u16, reserved: &Reserved) -> u32 {
    // Ranges may overlap in what the user wrote; count each port once.
    let mut ranges: Vec<(u16, u16)> = reserved
        .iter()
        .filter_map(|&(a, b)| {
            let (a, b) = (a.max(lo), b.min(hi));
            (a <= b).then_some((a, b))
        })
        .collect();
    ranges.sort_unstable();
    let mut count = 0u32;
    let mut next = lo as u32; // first port not yet counted
    for (a, b) in ranges {
        let start = (a as u32).max(next);
        if start <= b as u32 {
            count += b as u32 - start + 1;
            next = b as u32 + 1;
        }
    }
    count
}

/// Source ports guaranteed toward one destination (see the module comment).
pub fn capacity(lo: u16, hi: u16, reserved: &Reserved) -> u32 {
    if lo > hi {
        return 0;
    }
    let size = u32::from(hi) - u32::from(lo) + 1;
    let usable = size - reserved_in_range(lo, hi, reserved);
    if size > 1 && size % 2 == 1 {
        usable.saturating_sub(1)
    } else {
        usable
    }
}

/// Whether `port` can be handed out as an ephemeral port in this namespace.
pub fn is_ephemeral(port: u16, lo: u16, hi: u16, reserved: &Reserved) -> bool {
    (lo..=hi).contains(&port) && !reserved.iter().any(|&(a, b)| (a..=b).contains(&port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_ranges_are_all_usable() {
        assert_eq!(capacity(32768, 60999, &[]), 28232);
        assert_eq!(capacity(20000, 20003, &[]), 4);
        assert_eq!(capacity(20000, 20001, &[]), 2);
    }

    #[test]
    fn odd_ranges_guarantee_one_less() {
        assert_eq!(capacity(3306, 3310, &[]), 4);
        assert_eq!(capacity(20001, 20005, &[]), 4);
        // A single port is never rounded away.
        assert_eq!(capacity(20000, 20000, &[]), 1);
    }

    #[test]
    fn reserved_ports_are_removed_once() {
        assert_eq!(capacity(20000, 20005, &[(20002, 20002)]), 5);
        assert_eq!(capacity(20000, 20005, &[(20000, 20001), (20001, 20003)]), 2);
        assert_eq!(capacity(20000, 20005, &[(1, 100), (30000, 40000)]), 6);
        assert_eq!(reserved_in_range(20000, 20005, &[(19990, 20001)]), 2);
        assert_eq!(capacity(20000, 20005, &[(0, 65535)]), 0);
        assert_eq!(capacity(5, 4, &[]), 0);
    }

    #[test]
    fn ephemeral_ports() {
        assert!(is_ephemeral(3306, 3306, 3310, &[]));
        assert!(!is_ephemeral(3306, 3306, 3310, &[(3306, 3306)]));
        assert!(!is_ephemeral(3311, 3306, 3310, &[]));
    }
}
