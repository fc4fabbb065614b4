//! DETR's Hungarian matcher: the one-to-one assignment of targets to queries of least total
//! cost, solved exactly with `pathfinding`'s Kuhn-Munkres.

use pathfinding::kuhn_munkres::kuhn_munkres_min;
use pathfinding::matrix::Matrix;

/// Costs are scaled to integers with this many steps per unit before solving: Kuhn-Munkres
/// needs exact arithmetic, and f32 costs carry no more precision than this.
const COST_SCALE: f64 = 1e6;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MatchError {
    #[error("matching cost of query {query} and target {target} is {value}: costs must be finite")]
    NonFinite { query: usize, target: usize, value: f32 },
    #[error("{targets} targets but only {queries} queries: each target needs its own query")]
    TooManyTargets { queries: usize, targets: usize },
}

/// Minimal-cost matching of a cost matrix `[queries][targets]` (row-major): returns
/// `(query, target)` pairs, one per target, sorted by query (as scipy's
/// `linear_sum_assignment` returns them). Needs at least as many queries as targets.
pub fn hungarian_match(cost: &[f32], queries: usize, targets: usize) -> Result<Vec<(usize, usize)>, MatchError> {
    assert_eq!(cost.len(), queries * targets, "cost matrix length does not match its shape");
    if targets == 0 {
        return Ok(vec![]);
    }
    if targets > queries {
        return Err(MatchError::TooManyTargets { queries, targets });
    }
    if let Some(i) = cost.iter().position(|c| !c.is_finite()) {
        return Err(MatchError::NonFinite { query: i / targets, target: i % targets, value: cost[i] });
    }
    // Kuhn-Munkres wants rows <= columns: targets are the rows, queries the columns.
    let weights =
        Matrix::from_fn(targets, queries, |(t, q)| (cost[q * targets + t] as f64 * COST_SCALE).round() as i64);
    let (_, query_of_target) = kuhn_munkres_min(&weights);
    let mut pairs: Vec<(usize, usize)> = query_of_target.into_iter().enumerate().map(|(t, q)| (q, t)).collect();
    pairs.sort_unstable();
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Least total cost over every injective assignment of targets to queries.
    fn brute_force(cost: &[f32], queries: usize, targets: usize) -> f64 {
        fn go(cost: &[f32], queries: usize, targets: usize, t: usize, used: &mut Vec<bool>) -> f64 {
            if t == targets {
                return 0.0;
            }
            let mut best = f64::INFINITY;
            for q in 0..queries {
                if !used[q] {
                    used[q] = true;
                    best = best.min(cost[q * targets + t] as f64 + go(cost, queries, targets, t + 1, used));
                    used[q] = false;
                }
            }
            best
        }
        go(cost, queries, targets, 0, &mut vec![false; queries])
    }

    #[test]
    fn matches_brute_force_on_random_matrices() {
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..200 {
            let queries = rng.random_range(1..7);
            let targets = rng.random_range(0..=queries);
            let cost: Vec<f32> = (0..queries * targets).map(|_| rng.random_range(-3.0..10.0)).collect();
            let pairs = hungarian_match(&cost, queries, targets).unwrap();
            assert_eq!(pairs.len(), targets);
            let mut seen = vec![false; queries];
            for &(q, _) in &pairs {
                assert!(!seen[q], "query {q} used twice");
                seen[q] = true;
            }
            let total: f64 = pairs.iter().map(|&(q, t)| cost[q * targets + t] as f64).sum();
            let best = brute_force(&cost, queries, targets);
            assert!((total - best).abs() < 1e-4, "{queries}x{targets}: {total} vs best {best}");
        }
    }

    #[test]
    fn bad_costs_are_errors_not_hangs() {
        assert_eq!(hungarian_match(&[], 3, 0).unwrap(), vec![]);
        let err = hungarian_match(&[1.0, f32::NAN, 2.0, 3.0], 2, 2).unwrap_err();
        assert!(matches!(err, MatchError::NonFinite { query: 0, target: 1, .. }), "{err}");
        assert!(matches!(hungarian_match(&[1.0, 2.0], 1, 2), Err(MatchError::TooManyTargets { .. })));
        assert!(matches!(hungarian_match(&[f32::INFINITY], 1, 1), Err(MatchError::NonFinite { .. })));
    }
}
