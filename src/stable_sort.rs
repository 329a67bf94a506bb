//! One stable sort for the short lists the plugin orders (decisions, candidates, ballots,
//! weighted shares). `slice::sort_by` is generic over the element and the comparison, and each
//! use put 5 to 9 KB of code into the module; V8 compiles every byte of it when a VM starts, so
//! its memory and start time follow the module's size. Here the standard sort runs once, on
//! positions, and the items are moved into that order.

use std::cmp::Ordering;

/// Sorts `items` by `compare`; equal items keep their order.
pub fn sort_by<T>(items: &mut Vec<T>, compare: impl Fn(&T, &T) -> Ordering) {
    let order = {
        let view: &[T] = items;
        sorted_positions(view.len(), &|a, b| match (view.get(a), view.get(b)) {
            (Some(x), Some(y)) => compare(x, y),
            _ => Ordering::Equal,
        })
    };
    let mut slots: Vec<Option<T>> = items.drain(..).map(Some).collect();
    items.extend(
        order
            .iter()
            .filter_map(|&i| slots.get_mut(i).and_then(Option::take)),
    );
}

/// The positions `0..len`, stably ordered by `compare` on positions.
pub fn sorted_positions(len: usize, compare: &dyn Fn(usize, usize) -> Ordering) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    order.sort_by(|&a, &b| compare(a, b));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_and_keeps_equal_items_in_order() {
        let mut items = vec![(3, 'a'), (1, 'b'), (3, 'c'), (2, 'd'), (1, 'e')];
        sort_by(&mut items, |x, y| x.0.cmp(&y.0));
        assert_eq!(items, [(1, 'b'), (1, 'e'), (2, 'd'), (3, 'a'), (3, 'c')]);
    }

    #[test]
    fn matches_the_standard_stable_sort_on_many_lists() {
        // A fixed pseudo-random sequence: lists of every length up to 64 with many ties.
        let mut seed = 0x2545_f491_u64;
        for len in 0..64 {
            let items: Vec<(u8, usize)> = (0..len)
                .map(|i| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    ((seed % 5) as u8, i)
                })
                .collect();
            let mut ours = items.clone();
            sort_by(&mut ours, |x, y| y.0.cmp(&x.0));
            let mut std_sorted = items;
            std_sorted.sort_by_key(|y| std::cmp::Reverse(y.0));
            assert_eq!(ours, std_sorted, "length {len}");
        }
    }

    #[test]
    fn positions_are_a_permutation() {
        let keys = [5, 1, 4, 1];
        let order = sorted_positions(keys.len(), &|a, b| keys[a].cmp(&keys[b]));
        assert_eq!(order, [1, 3, 2, 0]);
        assert!(sorted_positions(0, &|_, _| Ordering::Equal).is_empty());
    }
}
